"""The frame ring and the GIL-free device callback (engine.ring), called as PortAudio calls it, without a device.

The callback is the ``cfunc`` PortAudio gets; here ``ctypes`` calls it at its
C address with an interleaved float32 output buffer, as PortAudio's buffer
processor does. The live path (a real stream on JACK's dummy backend) is in
tests/test_output.py.
"""

from __future__ import annotations

import ctypes
import threading

import numpy as np
import pytest

from engine.ring import CALLBACK_FLAGS, FrameRing, device_callback

_CALLBACK = ctypes.CFUNCTYPE(ctypes.c_int32, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_uint64, ctypes.c_void_p,
                             ctypes.c_uint64, ctypes.c_void_p)
CALL = _CALLBACK(device_callback.address)


def frames(first: int, n: int, channels: int = 2) -> np.ndarray:
    """Frames numbered ``first``... with channel c holding ``frame + c / 10``: order and interleaving are checkable."""
    index = np.arange(first, first + n, dtype=np.float32)[:, None]
    return (index + np.arange(channels, dtype=np.float32)[None, :] / 10).astype(np.float32)


def pull(ring: FrameRing, n: int, flags: int = 0) -> np.ndarray:
    out = np.full(n * ring.channels, np.nan, np.float32)
    assert CALL(None, out.ctypes.data, n, None, flags, ring.address) == 0     # paContinue
    return out.reshape(n, ring.channels)


def test_frames_come_out_in_order_across_the_wrap():
    ring = FrameRing(capacity_frames=10, channels=2, block_frames=4)
    written = 0
    played = []
    for _ in range(12):                      # 48 frames through a 10-frame ring
        while ring.fill_frames() + 4 <= 10:
            ring.write(frames(written, 4))
            written += 4
        played.append(pull(ring, 4))
    played = np.concatenate(played)
    assert np.array_equal(played, frames(0, 48))
    counters = ring.counters()
    assert counters["callbacks"] == 12 and counters["underruns"] == 0 and counters["frames_played"] == 48
    assert counters["min_fill_frames"] == 8          # it was kept two blocks ahead
    assert counters["irregular_callbacks"] == 0
    assert 0 < counters["callback_us_mean"] <= counters["callback_us_max"] < 10_000   # it timed itself
    assert counters["frames_per_callback_min"] == counters["frames_per_callback_max"] == 4


def test_a_short_ring_plays_silence_and_loses_nothing():
    ring = FrameRing(capacity_frames=16, channels=2, block_frames=4)
    ring.write(frames(0, 4))
    assert np.array_equal(pull(ring, 4), frames(0, 4))
    ring.write(frames(4, 2))                 # half a block: the next callback finds too little
    assert np.array_equal(pull(ring, 4), np.zeros((4, 2), np.float32))
    ring.write(frames(6, 2))
    # The frames that were short are played next, not skipped: the engine's stream stays whole.
    assert np.array_equal(pull(ring, 4), frames(4, 4))
    counters = ring.counters()
    assert counters["underruns"] == 1 and counters["underrun_callbacks_at"] == [1]
    assert counters["frames_played"] == 8 and counters["min_fill_frames"] == 2


def test_portaudio_status_flags_are_counted():
    ring = FrameRing(capacity_frames=8, channels=2, block_frames=4)
    ring.write(frames(0, 8))
    pull(ring, 4, flags=0)
    pull(ring, 4, flags=0b00101)             # input_underflow | output_underflow: one xrun callback
    pull(ring, 3, flags=0b10000)             # priming_output is not an xrun; 3 frames is irregular
    counters = ring.counters()
    assert counters["xrun_callbacks"] == 1 and counters["xrun_callbacks_at"] == [1]
    assert counters["flags"] == dict(zip(CALLBACK_FLAGS, [1, 0, 1, 0, 1]))
    assert counters["irregular_callbacks"] == 1 and counters["frames_per_callback_min"] == 3
    assert counters["underruns"] == 1        # the third found nothing left


def test_writes_past_the_capacity_are_refused():
    ring = FrameRing(capacity_frames=8, channels=2)
    ring.write(frames(0, 6))
    with pytest.raises(ValueError, match="do not fit"):
        ring.write(frames(6, 4))
    with pytest.raises(ValueError):
        FrameRing(capacity_frames=0, channels=2)


def test_a_callback_wakes_the_render_thread():
    ring = FrameRing(capacity_frames=8, channels=2, block_frames=4)
    ring.write(frames(0, 8))
    woken = threading.Event()

    def render_thread() -> None:
        ring.wait()
        woken.set()

    thread = threading.Thread(target=render_thread, daemon=True)
    thread.start()
    assert not woken.wait(0.2)               # nothing taken yet: it sleeps (without the GIL: this thread runs)
    pull(ring, 4)
    assert woken.wait(5.0)
    thread.join(5.0)


def test_the_callback_reports_its_thread_priority():
    ring = FrameRing(capacity_frames=8, channels=2)
    assert ring.device_priority() is None   # no callback yet
    ring.write(frames(0, 4))
    pull(ring, 4)                            # from this (not real-time) thread
    assert ring.device_priority() is None
