"""Live audio output: the engine on a sound card through python-sounddevice.

:class:`AudioOutput` opens a :class:`sounddevice.OutputStream` whose callback
is the audio thread of ATE. The callback does as little as possible, because
everything it does counts against the block deadline (5.8 ms at 256 frames,
2.9 ms at 128 frames, 44.1 kHz):

1. count the xruns that PortAudio reports in its status flags (one counter per
   flag: ``output_underflow``, ``output_overflow``, ...);
2. call :meth:`engine.core.Engine.process` on the output buffer;
3. optionally copy the block into a capture buffer allocated up front (tests
   compare live output with :meth:`Engine.render <engine.core.Engine.render>`);
4. store its own duration (``time.perf_counter`` before and after) in a ring
   of per-callback costs, also allocated up front.

It never logs, locks, does I/O or allocates numpy arrays; every other thread
talks to the engine through :meth:`Engine.send <engine.core.Engine.send>`.
:meth:`AudioOutput.report` turns the counters into a JSON-ready dict: xruns by
flag, callbacks, frames, the latency PortAudio reports for the stream, and the
callback cost (median, 99th percentile and maximum, in ms and as a fraction of
the block's duration).

The ``numba`` kernels of the engine compile on first use (or load from their
on-disk cache); :func:`warm_up` renders half a second with a throwaway engine
so that the first callbacks do not pay for it.

Other helpers: :func:`find_device` picks an output device by host API and
name, :func:`play_commands` plays a timed command list live (``ate play``),
:class:`JackDummyServer` runs a private JACK server on its dummy backend (a
sound card that is a timer: tests and benchmarks run the real PortAudio path
on machines without audio hardware), and :func:`bench_live` measures the
engine in its own process (:class:`engine.process.EngineProcess`) while
another process floods it with commands (``ate bench live``).

PortAudio enumerates devices when it initialises (at ``import sounddevice``);
a JACK server started later is seen only after :func:`rescan_devices`.
"""

from __future__ import annotations

import gc
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from time import perf_counter, thread_time

import numba
import numpy as np

from engine.core import Engine, block_peak

__all__ = ["AudioOutput", "raise_helper_threads", "warm_up", "find_device", "rescan_devices", "play_commands",
           "JackDummyServer", "bench_live", "XRUN_FLAGS", "COST_HISTORY", "DEFAULT_AHEAD_BLOCKS"]

XRUN_FLAGS = ("output_underflow", "output_overflow", "input_underflow", "input_overflow")
"""PortAudio status flags that mean lost or late audio (``priming_output`` is counted but is not an xrun)."""
_STATUS_FLAGS = XRUN_FLAGS + ("priming_output",)
COST_HISTORY = 1 << 18
"""Callbacks whose cost is kept (a ring): 12.7 minutes at 128 frames, 44.1 kHz."""

DEFAULT_AHEAD_BLOCKS = 2 if sys.platform.startswith("linux") else 0
"""Blocks rendered ahead of the device callback unless told otherwise (see :class:`AudioOutput`); 0 off Linux,
where the ring's semaphore (glibc's ``sem_t``) is not known to work."""

XRUN_WINDOW_CALLBACKS = 2
"""Callbacks before a flagged one that may have been the late one (PortAudio flags the next callback, or the
one after when the late one overran by more than a period)."""


@numba.njit(nogil=True, cache=True)
def _copy_block(dst, pos, src):
    """``dst[pos:pos + n] = src[:n]`` for as many frames as fit; returns the new ``pos``."""
    n = min(src.shape[0], dst.shape[0] - pos)
    for i in range(n):
        for c in range(src.shape[1]):
            dst[pos + i, c] = src[i, c]
    return pos + n


REALTIME_PRIORITY = 60
"""``SCHED_FIFO`` priority asked for the audio thread when the device's thread is not real-time itself: over
everything that runs at normal priority."""


def _raise_thread_priority(priority: int = REALTIME_PRIORITY, thread_id: int = 0) -> bool:
    """Put a thread (``thread_id``, a native id; 0: the calling one) under ``SCHED_FIFO`` at ``priority`` unless
    it is real-time already (a real-time JACK runs its clients' process threads under its own, at 5 with Debian's
    default ``-P 10``: that one stays); whether the thread now runs real-time."""
    try:
        # On Linux a pid names one thread: 0 is the calling thread, not the process.
        if os.sched_getscheduler(thread_id) in (os.SCHED_FIFO, os.SCHED_RR):
            return True
        os.sched_setscheduler(thread_id, os.SCHED_FIFO, os.sched_param(priority))
    except (AttributeError, OSError):
        return False
    return True


def _thread_priority() -> int | None:
    """The calling thread's ``SCHED_FIFO``/``SCHED_RR`` priority (None: not real-time)."""
    try:
        if os.sched_getscheduler(0) in (os.SCHED_FIFO, os.SCHED_RR):
            return os.sched_getparam(0).sched_priority
    except (AttributeError, OSError):
        pass
    return None


def raise_helper_threads(output: AudioOutput, thread_ids: list[int], timeout_s: float = 2.0) -> int | None:
    """Run the threads of the engine's process that take the GIL (``thread_ids``: native ids) real-time, one
    priority under the audio thread, once it plays; returns that priority (None: the audio thread is not
    real-time, or did not start within ``timeout_s``, and nothing was changed).

    The audio thread needs the GIL for every block. A thread of normal priority that holds it (a request being
    parsed) can be preempted by any other process's thread, and the audio thread then waits for a thread that is
    not even running: a priority inversion, and on a busy 2-core machine the main cause of late blocks under a
    command flood. Real-time, the holder runs until it lets the GIL go; under the audio thread, it never delays it
    otherwise.
    """
    deadline = perf_counter() + timeout_s
    while output.audio_thread_priority is None and output.active and perf_counter() < deadline:
        time.sleep(0.005)
    audio = output.audio_thread_priority
    if audio is None:
        return None
    priority = max(1, audio - 1)
    for thread_id in thread_ids:
        if not _raise_thread_priority(priority, thread_id):
            return None
    return priority


class AudioOutput:
    """An engine playing on an output device (see the module docstring).

    Parameters
    ----------
    engine : Engine
        The engine to play; its ``sample_rate`` and ``channels`` set the stream's.
    device : int or str, optional
        PortAudio output device (index or name substring, as sounddevice takes
        it; see :func:`find_device`). Default: PortAudio's default output.
    block_frames : int
        Frames per callback (PortAudio ``blocksize``); 0 lets the host choose
        (only with ``ahead_blocks=0``).
    latency : float or str, optional
        Suggested output latency, seconds, or "low"/"high" (PortAudio's
        suggestion; the real one is in :meth:`report`).
    capture_seconds : float
        Length of the capture buffer, seconds (0: no capture). The first
        ``capture_seconds`` of output are copied there; see :meth:`captured`.
    realtime : bool
        Ask, once, for real-time scheduling of the audio thread (``SCHED_FIFO``
        at :data:`REALTIME_PRIORITY`) so that other processes (a flood of
        commands, a UI) cannot hold it off; refused when the user may not (no
        ``rtprio`` limit, not root): then it plays on at the priority it has.
        :meth:`report` says which (``realtime_priority``).
    ahead_blocks : int, optional
        Default :data:`DEFAULT_AHEAD_BLOCKS` (0 when ``block_frames`` is 0).
        0: the engine renders inside PortAudio's callback (a Python callback:
        it needs the GIL). 1 or more: PortAudio calls the GIL-free
        :data:`engine.ring.device_callback`, and a render thread (the audio
        thread then) keeps a :class:`engine.ring.FrameRing` filled this many
        blocks ahead: it may be held off for up to that many block periods
        without a gap, and the output latency grows by as much
        (``ahead_blocks * block_frames`` frames; :meth:`report`'s
        ``latency_s`` includes it).

    Attributes
    ----------
    blocks : int
        Engine blocks rendered so far (the index of :meth:`costs_s` and ``since``).
    callbacks : int
        Device callbacks so far (the same as ``blocks`` with ``ahead_blocks=0``).
    frames : int
        Frames rendered so far.
    xrun_callbacks : int
        Callbacks whose status had an xrun flag.
    xruns : dict
        Count per PortAudio status flag.
    """

    def __init__(self, engine: Engine, device: int | str | None = None, block_frames: int = 256,
                 latency: float | str | None = None, capture_seconds: float = 0.0, realtime: bool = True,
                 ahead_blocks: int | None = None):
        if engine.stretcher != "engine":
            raise ValueError(f"output: the {engine.stretcher} stretcher is for offline renders (it allocates in "
                             "the audio thread); play live with the engine's own")
        if ahead_blocks is None:
            ahead_blocks = DEFAULT_AHEAD_BLOCKS if block_frames >= 1 else 0
        if ahead_blocks < 0 or (ahead_blocks and block_frames < 1):
            raise ValueError(f"output: ahead_blocks={ahead_blocks} needs a fixed block_frames >= 1 "
                             f"(got {block_frames})")
        self.engine = engine
        self.realtime = realtime
        self.realtime_priority: bool | None = None    # None: not asked yet
        self.device = device
        self.block_frames = int(block_frames)
        self.latency = latency
        self.ahead_blocks = int(ahead_blocks)
        self.sample_rate = engine.sample_rate
        self.channels = engine.channels
        self.blocks = 0
        self.callbacks = 0
        self.frames = 0
        self.irregular_blocks = 0
        self.xrun_callbacks = 0
        self._xrun_at = np.zeros(64, np.int64)   # indices of the first xrun callbacks (diagnosis)
        self.block_frames_min = 0
        self.block_frames_max = 0
        self.errors = 0
        self.first_error: str | None = None
        self.xruns = {name: 0 for name in _STATUS_FLAGS}
        self._costs = np.zeros(COST_HISTORY, np.float64)
        self._starts = np.zeros(COST_HISTORY, np.float64)   # perf_counter() at each block's start
        self._peaks = np.zeros(COST_HISTORY, np.float64)    # peak of each block's output
        self._cpu = np.zeros(COST_HISTORY, np.float64)
        self._cost_mask = COST_HISTORY - 1
        n_capture = int(round(capture_seconds * self.sample_rate))
        self._capture = np.zeros((n_capture, self.channels), np.float32) if n_capture > 0 else None
        self._capture_len = n_capture
        self._capture_pos = 0
        if self._capture is not None:
            # Compile (or load) the copy kernel now, not in the first callback.
            _copy_block(self._capture, n_capture, np.zeros((max(self.block_frames, 1), self.channels), np.float32))
        self._ring = None
        self._ring_block = None
        self._render_thread = None
        self.audio_thread_priority: int | None = None   # its SCHED_FIFO priority, once it runs (None: not RT)
        self._rendering = False
        if self.ahead_blocks:
            from engine.ring import FrameRing

            try:
                # Exactly the blocks ahead: the render thread tops the ring up to full after every callback.
                self._ring = FrameRing(self.ahead_blocks * self.block_frames, self.channels, self.block_frames)
            except OSError as err:
                raise ValueError(f"output: rendering ahead of the device needs POSIX semaphores ({err}); "
                                 "play with ahead_blocks=0 (--ahead-blocks 0)") from err
            self._ring_block = np.zeros((self.block_frames, self.channels), np.float32)
        self._stream = None
        self._info: dict = {}

    # ------------------------------------------------------------------ the audio thread

    def _render(self, out: np.ndarray) -> None:
        """One block of the engine into ``out``, with its cost, peak and capture recorded."""
        t0 = perf_counter()
        c0 = thread_time()
        try:
            self.engine.process(out)
        except Exception as err:  # noqa: BLE001 -- an exception would stop the stream: play silence instead
            out.fill(0.0)
            self.errors += 1
            if self.first_error is None:
                self.first_error = f"{type(err).__name__}: {err}"
        if self._capture_pos < self._capture_len:
            self._capture_pos = _copy_block(self._capture, self._capture_pos, out)
        frames = out.shape[0]
        self.frames += frames
        n = self.blocks
        self._peaks[n & self._cost_mask] = block_peak(out, frames)
        self._cpu[n & self._cost_mask] = thread_time() - c0
        self._costs[n & self._cost_mask] = perf_counter() - t0
        self._starts[n & self._cost_mask] = t0
        self.blocks = n + 1

    def _callback(self, outdata, frames, time_info, status) -> None:
        if self.realtime_priority is None:
            self.realtime_priority = self.realtime and _raise_thread_priority()
            self.audio_thread_priority = _thread_priority()
        if status:
            if status.output_underflow or status.output_overflow or status.input_underflow or status.input_overflow:
                if self.xrun_callbacks < len(self._xrun_at):
                    self._xrun_at[self.xrun_callbacks] = self.callbacks
                self.xrun_callbacks += 1
            for name in _STATUS_FLAGS:
                if getattr(status, name):
                    self.xruns[name] += 1
        self._render(outdata)
        if frames != self.block_frames:
            self.irregular_blocks += 1
        if frames < self.block_frames_min or self.callbacks == 0:
            self.block_frames_min = frames
        if frames > self.block_frames_max:
            self.block_frames_max = frames
        self.callbacks += 1

    def _fill_ring(self) -> None:
        """Render blocks into the ring until it is full (``ahead_blocks`` of them)."""
        ring, block = self._ring, self._ring_block
        while ring.fill_frames() + self.block_frames <= ring.capacity_frames:
            self._render(block)
            ring.write(block)

    def _render_loop(self) -> None:
        """The audio thread with ``ahead_blocks``: refill the ring each time the device callback takes from it."""
        ring = self._ring
        ring.wait()       # the first callback: the ring was filled before the stream started
        device = ring.device_priority()
        # Under the device's thread, which must never wait for this one, over everything not real-time.
        self.realtime_priority = self.realtime and _raise_thread_priority(
            REALTIME_PRIORITY if device is None else max(1, device - 1))
        self.audio_thread_priority = _thread_priority()
        while self._rendering:
            self._fill_ring()
            ring.wait()

    # ------------------------------------------------------------------ control

    def start(self) -> None:
        """Open the stream and start playing (a no-op if already started)."""
        if self._stream is not None:
            return
        import sounddevice as sd

        if self._ring is None:
            stream = sd.OutputStream(samplerate=self.sample_rate, channels=self.channels, dtype="float32",
                                     blocksize=self.block_frames, device=self.device, latency=self.latency,
                                     callback=self._callback)
        else:
            from engine.ring import device_callback

            self._fill_ring()
            # sounddevice's base stream takes a C callback and its userData as they are (as python-rtmixer does).
            stream = sd._StreamBase(kind="output", samplerate=self.sample_rate, channels=self.channels,
                                    dtype="float32", blocksize=self.block_frames, device=self.device,
                                    latency=self.latency, callback=device_callback.address,
                                    userdata=sd._ffi.cast("void *", self._ring.address))
            self._rendering = True
            self._render_thread = threading.Thread(target=self._render_loop, name="ate-render", daemon=True)
            self._render_thread.start()
        info = sd.query_devices(stream.device)
        ahead_s = self.ahead_blocks * self.block_frames / self.sample_rate
        self._info = {"device": info["name"], "device_index": int(stream.device),
                      "host_api": sd.query_hostapis(info["hostapi"])["name"],
                      "latency_s": float(stream.latency) + ahead_s, "device_latency_s": float(stream.latency),
                      "stream_sample_rate": float(stream.samplerate)}
        self._stream = stream
        stream.start()

    def stop(self) -> None:
        """Stop and close the stream (pending callbacks finish first); counters are kept."""
        stream, self._stream = self._stream, None
        if stream is not None:
            stream.stop()
            stream.close()
        thread, self._render_thread = self._render_thread, None
        if thread is not None:
            self._rendering = False
            self._ring.wake()
            thread.join()

    @property
    def active(self) -> bool:
        """Whether the stream is running."""
        return self._stream is not None and self._stream.active

    def __enter__(self) -> AudioOutput:
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    # ------------------------------------------------------------------ results

    def captured(self) -> np.ndarray:
        """A copy of the captured output so far, float32 ``(frames, channels)``."""
        if self._capture is None:
            return np.zeros((0, self.channels), np.float32)
        return self._capture[:self._capture_pos].copy()

    def _history(self, ring: np.ndarray, since: int) -> np.ndarray:
        n = self.blocks
        first = max(since, n - COST_HISTORY, 0)
        idx = np.arange(first, n) & self._cost_mask
        return ring[idx]

    def peaks_since(self, since: int = 0) -> np.ndarray:
        """Peak sample of each block's output (blocks ``since`` on, within the last :data:`COST_HISTORY`)."""
        return self._history(self._peaks, since)

    def starts_s(self, since: int = 0) -> np.ndarray:
        """``time.perf_counter()`` at the start of each block's rendering (blocks ``since`` on, within the last
        :data:`COST_HISTORY`), seconds: with the ``latency_s`` of :meth:`report` it tells when a block was heard."""
        return self._history(self._starts, since)

    def costs_s(self, since: int = 0) -> np.ndarray:
        """Per-block rendering costs (blocks ``since`` on, within the last :data:`COST_HISTORY`), seconds."""
        return self._history(self._costs, since)

    def cpu_s(self, since: int = 0) -> np.ndarray:
        """Per-block CPU time of the audio thread (``time.thread_time``), seconds; next to :meth:`costs_s`
        it tells work from waiting (preemption by other processes, the GIL)."""
        return self._history(self._cpu, since)

    def report(self, since: int = 0) -> dict:
        """JSON-ready summary of the run so far.

        Keys: ``device``, ``host_api``, ``latency_s`` (output latency:
        PortAudio's for the open stream, ``device_latency_s``, plus the
        ring's ``ahead_blocks``, seconds), ``sample_rate``, ``channels``,
        ``block_frames`` (requested), ``ahead_blocks``, ``block_frames_min``/``max``
        (what the callbacks received), ``irregular_blocks`` (callbacks that did
        not get ``block_frames``), ``callbacks``, ``blocks`` (engine blocks
        rendered), ``frames``, ``seconds``, ``xruns`` (callbacks with any of
        :data:`XRUN_FLAGS`: PortAudio's JACK host raises both
        ``output_underflow`` and ``input_overflow`` for one xrun; with
        ``ahead_blocks``, plus the ring's ``underruns``: callbacks that found
        the ring short and played silence), ``xruns_by_flag`` (count per flag),
        ``xrun_callbacks_at`` (indices of the first 64 flagged callbacks; the
        flag arrives with the callback *after* the late one), ``xrun_cpu_ms``
        (without ``ahead_blocks``: for each of those, the largest CPU time of
        the audio thread in the flagged callback and the two before it, ms: a
        cheap window means the thread was held off, not that the engine's work
        was late), ``cost_ms`` and ``cost_fraction`` (median, p99, max of a
        block's rendering, ms and as a fraction of one block's duration),
        ``cpu_ms`` (the same for the audio thread's CPU time: where ``cost_ms``
        is much larger, the thread waited, for the CPU or the GIL),
        ``errors``/``first_error`` (exceptions the audio thread caught),
        ``commands_applied``, ``active``; with ``ahead_blocks``, ``ring``
        (:meth:`engine.ring.FrameRing.counters`).

        Without ``ahead_blocks`` the cost is measured inside the callback: time
        the audio thread spent waiting for the GIL before PortAudio could
        enter the Python callback is not in it (it shows up as an xrun with a
        cheap callback).

        Parameters
        ----------
        since : int
            Block index from which the cost statistics are taken (a phase of
            a run: a previous report's ``blocks``); counters are always totals.
        """
        block_s = (self.block_frames or max(self.block_frames_max, 1)) / self.sample_rate
        stats, cpu = _stats(self.costs_s(since)), _stats(self.cpu_s(since))
        report = {**self._info, "sample_rate": self.sample_rate, "channels": self.channels,
                  "block_frames": self.block_frames, "ahead_blocks": self.ahead_blocks,
                  "cost_ms": {k: round(v * 1e3, 4) for k, v in stats.items()},
                  "cost_fraction": {k: round(v / block_s, 4) for k, v in stats.items()},
                  "cpu_ms": {k: round(v * 1e3, 4) for k, v in cpu.items()},
                  "blocks": self.blocks, "frames": self.frames, "seconds": self.frames / self.sample_rate,
                  "errors": self.errors, "first_error": self.first_error,
                  "commands_applied": self.engine.commands_applied, "active": self.active,
                  "realtime_priority": self.realtime_priority, "audio_thread_priority": self.audio_thread_priority}
        if self._ring is None:
            xrun_at = [int(i) for i in self._xrun_at[:min(self.xrun_callbacks, len(self._xrun_at))]]
            report.update({"block_frames_min": self.block_frames_min, "block_frames_max": self.block_frames_max,
                           "irregular_blocks": self.irregular_blocks, "callbacks": self.callbacks,
                           "xruns": self.xrun_callbacks, "xruns_by_flag": dict(self.xruns)})
        else:
            ring = self._ring.counters()
            flags = {name: ring["flags"][name] for name in _STATUS_FLAGS}
            xrun_at = sorted(ring["xrun_callbacks_at"] + ring["underrun_callbacks_at"])[:len(self._xrun_at)]
            report.update({"block_frames_min": ring["frames_per_callback_min"],
                           "block_frames_max": ring["frames_per_callback_max"],
                           "irregular_blocks": ring["irregular_callbacks"], "callbacks": ring["callbacks"],
                           "xruns": ring["xrun_callbacks"] + ring["underruns"],
                           "xruns_by_flag": {**flags, "ring_underrun": ring["underruns"]},
                           "ring": ring, "device_thread_priority": self._ring.device_priority()})
        # Callback i plays block i (the ring never skips), so the same window of block costs serves both modes.
        report.update({"xrun_callbacks_at": xrun_at, "xrun_cpu_ms": [self._window_cpu_ms(i) for i in xrun_at]})
        return report

    def _window_cpu_ms(self, callback: int, before: int = XRUN_WINDOW_CALLBACKS) -> float | None:
        first = max(callback - before, self.blocks - COST_HISTORY, 0)
        if first > callback:
            return None
        return round(float(self._cpu[np.arange(first, callback + 1) & self._cost_mask].max()) * 1e3, 4)


def _stats(x: np.ndarray) -> dict:
    if not len(x):
        return {"median": 0.0, "p99": 0.0, "max": 0.0}
    return {"median": float(np.median(x)), "p99": float(np.percentile(x, 99)), "max": float(x.max())}


# ====================================================================== warm-up and devices

WARM_UP_TRACK = "synth:bpm=124,seed=0,bars=2"
"""The track :func:`warm_up` plays (short: it is generated in about a second)."""


def warm_up(channels: int = 2, block_frames: int = 256, seconds: float = 0.5) -> float:
    """Compile (or load from cache) the engine's numba kernels before a stream starts.

    Renders ``seconds`` with a throwaway two-deck :class:`Engine` playing
    :data:`WARM_UP_TRACK` on both decks, synced, with keylock, a key shift, EQ,
    filter, stem mutes, a loop, the crossfader, PFL and every installed deck
    effect touched, then a little more with keylock off (the vinyl resampler)
    and with odd block sizes.

    Parameters
    ----------
    channels : int
        2 or 4 (4 also warms the headphone cue path).
    block_frames : int
        Block size to render with, frames.
    seconds : float
        Length rendered, seconds.

    Returns
    -------
    float
        Time it took, seconds.
    """
    from engine.track import load_track

    t0 = perf_counter()
    engine = Engine(n_decks=2, channels=channels)
    track = load_track(WARM_UP_TRACK)
    engine.load(0, track)
    engine.load(1, track)
    half = int(seconds * engine.sample_rate / 2)
    commands = [
        {"cmd": "set", "deck": 0, "param": "pitch", "value": 0.04},
        {"cmd": "keylock", "deck": 0, "on": True}, {"cmd": "keylock", "deck": 1, "on": True},
        {"cmd": "sync", "deck": 0, "on": True}, {"cmd": "sync", "deck": 1, "on": True},
        {"cmd": "play", "deck": 0}, {"cmd": "play", "deck": 1, "at": {"frame": 64}},
        {"cmd": "set", "deck": 1, "param": "key_shift", "value": 1.0},
        {"cmd": "set", "deck": 0, "param": "eq_low_db", "value": -80.0},
        {"cmd": "set", "deck": 0, "param": "eq_mid_db", "value": 3.0},
        {"cmd": "set", "deck": 1, "param": "eq_high_db", "value": -6.0},
        {"cmd": "set", "deck": 0, "param": "filter", "value": -0.5},
        {"cmd": "set", "deck": 1, "param": "filter", "value": 0.5, "ramp": {"seconds": seconds / 2}},
        {"cmd": "set", "param": "crossfader", "value": 1.0, "ramp": {"beats": 1}},
        {"cmd": "mute", "deck": 1, "stem": "vocals", "on": True},
        {"cmd": "pfl", "deck": 0, "on": True},
        {"cmd": "nudge", "deck": 1, "amount": 0.02},
        {"cmd": "loop", "deck": 1, "beats": 0.5, "at": {"frame": 4096}},
        {"cmd": "bass_swap", "from_deck": 0, "to_deck": 1, "at": {"beat": 1}},
        {"cmd": "keylock", "deck": 0, "on": False, "at": {"frame": half}},
        {"cmd": "nudge", "deck": 1, "amount": 0.0, "at": {"frame": half}},
    ]
    # Every installed effect once, one after another in deck 0's slots: their kernels compile here, not
    # in the first `fx` command of a set (which runs beside the audio thread).
    from engine.commands import FX_SLOTS
    from engine.effects.registry import effect_names

    for i, name in enumerate(effect_names()):
        commands.append({"cmd": "fx", "deck": 0, "slot": i % FX_SLOTS, "effect": name})
    for message in commands:
        reply = engine.send(message)
        if not reply["ok"]:
            raise RuntimeError(f"warm_up: {reply['error']}")
    engine.render(2 * half, block_frames)
    engine.render(1000, 100)
    engine.render(3000, 1500)
    return perf_counter() - t0


def rescan_devices() -> None:
    """Make PortAudio enumerate devices again (a JACK server started after ``import sounddevice``).

    Closes every open PortAudio stream of this process: call it only while none plays.
    """
    import sounddevice as sd

    sd._terminate()
    sd._initialize()


def _device_list(sd) -> list[tuple[int, str, str]]:
    hostapis = sd.query_hostapis()
    return [(d["index"], d["name"], hostapis[d["hostapi"]]["name"]) for d in sd.query_devices()
            if d["max_output_channels"] > 0]


def find_device(host_api: str | None = None, name: str | None = None) -> int:
    """Index of the first output device whose host API and name contain the given strings (case-insensitive).

    If nothing matches, PortAudio is re-initialised once (:func:`rescan_devices`)
    to see servers started since, then a :class:`ValueError` lists the devices.

    Parameters
    ----------
    host_api : str, optional
        Part of the host API's name ("JACK", "ALSA", "Core Audio", "WASAPI").
    name : str, optional
        Part of the device's name.
    """
    import sounddevice as sd

    def match() -> int | None:
        for index, dev_name, api in _device_list(sd):
            if (host_api is None or host_api.lower() in api.lower()) and (name is None or name.lower() in dev_name.lower()):
                return index
        return None

    found = match()
    if found is None:
        rescan_devices()
        found = match()
    if found is None:
        listing = "; ".join(f"{i} {n!r} ({a})" for i, n, a in _device_list(sd)) or "none"
        raise ValueError(f"find_device: no output device with host_api={host_api!r} name={name!r}; available: {listing}")
    return found


# ====================================================================== live playback of a script

def play_commands(commands: list[dict], seconds: float, *, device: int | str | None = None, block_frames: int = 256,
                  channels: int = 2, latency: float | str | None = None, capture: bool = False,
                  n_decks: int = 4, ahead_blocks: int | None = None) -> dict:
    """Play a timed command list live for ``seconds`` and return the output's report.

    Every command is sent before the stream starts (their ``at`` times place
    them), so the live output is sample-identical to
    ``Engine.render(n, block_frames)`` of the same commands when the host
    delivers ``block_frames`` per callback.

    Parameters
    ----------
    commands : list of dict
        Engine commands (see :mod:`engine.commands`), usually with ``at`` times.
    seconds : float
        How long to play, seconds.
    device, block_frames, latency, ahead_blocks
        As for :class:`AudioOutput`.
    channels : int
        2 or 4.
    capture : bool
        Return the output in ``"audio"`` (float32 ``(frames, channels)``).
    n_decks : int
        Decks of the engine.

    Returns
    -------
    dict
        :meth:`AudioOutput.report`, plus ``"command_errors"`` (the replies that
        were errors, with the index of their command) and ``"warm_up_s"``,
        plus ``"audio"`` if ``capture``.
    """
    engine = Engine(n_decks=n_decks, channels=channels)
    errors = []
    for i, message in enumerate(commands):
        reply = engine.send(message)
        if not reply["ok"]:
            errors.append({"index": i, **reply})
    warm_s = warm_up(channels, block_frames)
    output = AudioOutput(engine, device=device, block_frames=block_frames, latency=latency,
                         capture_seconds=seconds + 1.0 if capture else 0.0, ahead_blocks=ahead_blocks)
    # A collection walks the whole heap with the GIL held (milliseconds with numba, scipy and librosa loaded);
    # everything that exists now lives for the whole run, so keep it out of the collector's sight meanwhile.
    gc.collect()
    gc.freeze()
    try:
        with output:
            deadline = time.monotonic() + seconds
            while (left := deadline - time.monotonic()) > 0:
                time.sleep(min(left, 0.1))
    finally:
        gc.unfreeze()
    report = output.report()
    report["command_errors"] = errors
    report["warm_up_s"] = round(warm_s, 3)
    if capture:
        report["audio"] = output.captured()
    return report


# ====================================================================== a private JACK server

class JackDummyServer:
    """``jackd --no-realtime -d dummy`` under a private server name: a sound card that is a timer.

    On :meth:`start` it sets ``JACK_DEFAULT_SERVER`` (libjack's server name,
    which PortAudio's JACK host API and child processes inherit) and
    ``JACK_NO_START_SERVER`` in ``os.environ``, waits until the server answers
    and, if sounddevice is imported, re-scans PortAudio's devices;
    :meth:`stop` kills the server and restores the environment.

    Parameters
    ----------
    name : str, optional
        Server name (default ``ate-<pid>-<n>``).
    sample_rate : int
        Hz.
    period_frames : int
        JACK period (the block every client callback gets), frames.
    realtime : bool
        Run the server (and so its clients' process threads, PortAudio's
        callback included) with real-time scheduling (``SCHED_FIFO``), if the
        system allows it; default ``--no-realtime``.
    """

    _count = 0

    def __init__(self, name: str | None = None, sample_rate: int = 44100, period_frames: int = 256,
                 realtime: bool = False):
        JackDummyServer._count += 1
        self.name = name or f"ate-{os.getpid()}-{JackDummyServer._count}"
        self.sample_rate = int(sample_rate)
        self.period_frames = int(period_frames)
        self.realtime = bool(realtime)
        self.process: subprocess.Popen | None = None
        self.log_path = ""
        self._saved_env: dict = {}

    @staticmethod
    def realtime_allowed() -> bool:
        """Whether this process may use real-time scheduling (``SCHED_FIFO``), as jackd ``--realtime`` needs."""
        try:
            return subprocess.run(["chrt", "-f", "10", "true"], capture_output=True).returncode == 0
        except OSError:
            return False

    @staticmethod
    def available() -> bool:
        """Whether ``jackd`` is installed."""
        return shutil.which("jackd") is not None

    def start(self, timeout_s: float = 15.0) -> JackDummyServer:
        """Start the server and wait for it; raises RuntimeError (with the server's log) if it does not come up."""
        jackd = shutil.which("jackd")
        if jackd is None:
            raise RuntimeError("JackDummyServer: jackd is not installed")
        env = dict(os.environ, JACK_DEFAULT_SERVER=self.name, JACK_NO_START_SERVER="1")
        fd, self.log_path = tempfile.mkstemp(prefix=f"jackd-{self.name}-", suffix=".log")
        with os.fdopen(fd, "w") as log:
            self.process = subprocess.Popen(
                [jackd, "--realtime" if self.realtime else "--no-realtime", "-n", self.name, "-d", "dummy",
                 "-r", str(self.sample_rate),
                 "-p", str(self.period_frames)], stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                env=env)
        deadline = time.monotonic() + timeout_s
        ready = False
        while time.monotonic() < deadline and self.process.poll() is None:
            probe = subprocess.run(["jack_wait", "-c"] if shutil.which("jack_wait") else ["jack_lsp"], env=env,
                                   capture_output=True, text=True)
            if probe.returncode == 0 and "not running" not in probe.stdout:
                ready = True
                break
            time.sleep(0.1)
        if not ready:
            self.stop()
            raise RuntimeError(f"JackDummyServer: {self.name} did not start: {self.log()[-500:]!r}")
        for key in ("JACK_DEFAULT_SERVER", "JACK_NO_START_SERVER"):
            self._saved_env[key] = os.environ.get(key)
            os.environ[key] = env[key]
        if "sounddevice" in sys.modules:
            rescan_devices()
        return self

    def log(self) -> str:
        """What the server printed so far."""
        try:
            with open(self.log_path) as f:
                return f.read()
        except OSError:
            return ""

    def xruns_logged(self) -> dict:
        """JACK's own xrun count from its log, independent of PortAudio's: ``{"driver": n, "client": n}``.

        ``driver``: the dummy backend's timer woke late (the machine, not the clients: PortAudio still reports
        these as underflows to every client); ``client``: a client had not finished its cycle in time.
        """
        lines = self.log().splitlines()
        return {"driver": sum("JackTimedDriver" in line and "XRun" in line for line in lines),
                "client": sum("JackEngine::XRun" in line or "was not finished" in line for line in lines)}

    def stop(self) -> None:
        """Kill the server (our own process, by its id) and restore the environment.

        PortAudio's JACK client is closed first (libportaudio aborts the process if it closes a client whose
        server is gone), and PortAudio re-initialised after: stop every stream before calling this.
        """
        proc, self.process = self.process, None
        sd = sys.modules.get("sounddevice") if proc is not None else None
        if sd is not None:
            sd._terminate()
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(5.0)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5.0)
        for key, value in self._saved_env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        self._saved_env = {}
        if sd is not None:
            sd._initialize()

    def remove_log(self) -> None:
        if self.log_path and os.path.exists(self.log_path):
            os.remove(self.log_path)

    def __enter__(self) -> JackDummyServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
        self.remove_log()


# ====================================================================== benchmark

BENCH_TRACKS = ((120.0, 0.02), (124.0, 0.0), (126.0, 0.0), (128.0, 0.0))
"""Decks of :func:`bench_live`: (track BPM, pitch of the leader); deck 0 leads at 122.4 BPM."""


def _bench_setup(n_decks: int = 4) -> list[dict]:
    """Commands of the live benchmark: synced keylocked decks on 32-beat loops, EQ and filter moved."""
    cmds: list[dict] = [{"cmd": "quantize", "on": True}]
    for deck, (bpm, pitch) in enumerate(BENCH_TRACKS[:n_decks]):
        cmds += [{"cmd": "load", "deck": deck, "track": f"synth:bpm={bpm:g},seed={deck},bars=12"},
                 {"cmd": "keylock", "deck": deck, "on": True}, {"cmd": "sync", "deck": deck, "on": True},
                 {"cmd": "set", "deck": deck, "param": "pitch", "value": pitch},
                 {"cmd": "set", "deck": deck, "param": "eq_mid_db", "value": -3.0 * deck},
                 {"cmd": "set", "deck": deck, "param": "filter", "value": 0.1 * (deck - 1.5)},
                 {"cmd": "play", "deck": deck, "at": {"frame": 0}},
                 {"cmd": "loop", "deck": deck, "beats": 32, "at": {"frame": 1}}]
    return cmds


def _flood_messages(n_decks: int, seed: int = 0) -> list:
    """A cycle of valid parameter changes and malformed commands for the flood."""
    rng = np.random.default_rng(seed)
    out: list = []
    for i in range(512):
        deck = int(rng.integers(n_decks))
        kind = i % 8
        if kind == 0:
            out.append({"cmd": "set", "deck": deck, "param": "eq_low_db", "value": float(rng.uniform(-30, 6))})
        elif kind == 1:
            out.append({"cmd": "set", "deck": deck, "param": "eq_high_db", "value": float(rng.uniform(-30, 6))})
        elif kind == 2:
            out.append({"cmd": "set", "deck": deck, "param": "filter", "value": float(rng.uniform(-0.6, 0.6))})
        elif kind == 3:
            out.append({"cmd": "nudge", "deck": deck, "amount": float(rng.choice([-0.02, 0.0, 0.02]))})
        elif kind == 4:
            out.append({"cmd": "set", "param": "crossfader", "value": float(rng.uniform(-1, 1)),
                        "ramp": {"seconds": 0.1}})
        elif kind == 5:
            out.append({"cmd": "set", "deck": deck, "param": "eq_low_db", "value": "loud"})   # malformed
        elif kind == 6:
            malformed = [{"cmd": "explode"}, {"cmd": "set", "deck": 99, "param": "filter", "value": 0},
                         {"cmd": "nudge", "deck": deck, "amount": 7.0}, ["not", "a", "dict"], {"request": "nonsense"}]
            out.append(malformed[i // 8 % len(malformed)])
        else:
            out.append({"cmd": "set", "deck": deck, "param": "stem.vocals", "value": float(rng.uniform(0, 1))})
    return out


def _steal_s() -> float | None:
    """CPU time the hypervisor gave to other guests so far, all cores, seconds (``steal`` in ``/proc/stat``)."""
    try:
        with open("/proc/stat") as f:
            fields = f.readline().split()
        return int(fields[8]) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return None


def bench_live(quick: bool = False, ahead_blocks: int | None = None, seconds: float | None = None) -> dict:
    """Four synced keylocked decks at 128-frame blocks in an :class:`EngineProcess` under a command flood.

    Starts a private JACK dummy server with a 128-frame period (real-time
    scheduling where allowed), runs :class:`engine.process.EngineProcess` on it
    (4 decks of synth tracks at 120, 124, 126 and 128 BPM, all stems, keylock,
    sync to a leader at 122.4 BPM, 32-beat loops, EQ and filter moved). First
    a quiet phase (no requests; 5 s, quick: 3 s) measures the peer figures;
    then for 600 s (quick: 20 s) the benchmark's own process -- not the
    engine's -- sends valid ``set``/EQ/filter/nudge/crossfader changes and
    malformed commands back to back, as fast as the replies come, while a
    second thread polls ``state()`` ten times a second like a display would.

    Parameters
    ----------
    quick : bool
        20 s of flood instead of 600 s.
    seconds : float, optional
        Length of the flood, seconds, instead of either (for paired runs).
    ahead_blocks : int, optional
        As for :class:`AudioOutput` (default :data:`DEFAULT_AHEAD_BLOCKS`; 0:
        the engine renders inside a Python device callback).

    Returns
    -------
    dict
        ``quiet`` and ``flood`` phase figures (``xruns``: ``device_xruns``
        flagged by PortAudio plus ``ring_underruns``; block cost ``cost_ms``
        and ``cpu_ms`` median/p99/max, ``cost_fraction`` of the 2.9 ms block),
        ``flood_vs_quiet`` (flood p99 and median cost over the quiet phase's),
        ``commands`` (sent, ok and error replies, ``rate_per_s``,
        ``applied``), ``jack_xruns_logged`` (late cycles of JACK's own dummy
        driver: the machine, not a client), ``steal_s`` (CPU time the
        hypervisor took from this virtual machine during the flood, seconds,
        all cores), ``flood_by_minute`` (each whole minute of the flood
        as a phase, with its ``steal_s``) and the configuration.
    """
    from engine.process import EngineProcess

    if seconds is None:
        seconds = 20.0 if quick else 600.0
    quiet_s = 3.0 if quick else 5.0
    block = 128
    n_decks = 4
    flood = _flood_messages(n_decks)
    realtime = JackDummyServer.realtime_allowed()

    def phase(r: dict, before: dict) -> dict:
        underruns = r["xruns_by_flag"].get("ring_underrun", 0) - before["xruns_by_flag"].get("ring_underrun", 0)
        return {"callbacks": r["callbacks"] - before["callbacks"], "xruns": r["xruns"] - before["xruns"],
                "ring_underruns": underruns, "device_xruns": r["xruns"] - before["xruns"] - underruns,
                "cost_ms": r["cost_ms"], "cpu_ms": r["cpu_ms"], "cost_fraction": r["cost_fraction"]}

    with JackDummyServer(period_frames=block, realtime=realtime) as server:
        with EngineProcess(n_decks=n_decks, block_frames=block, host_api="JACK", ahead_blocks=ahead_blocks) as engine:
            helper_priority = engine.helper_thread_priority
            setup_errors = [r for r in (engine.send(m) for m in _bench_setup(n_decks)) if not r["ok"]]
            time.sleep(0.5)   # the decks' first blocks (keylock start-up) are not part of either phase
            start = engine.report()
            time.sleep(quiet_s)
            quiet = engine.report(since=start["blocks"])
            stop = threading.Event()
            polls = [0]

            def poll_state() -> None:
                while not stop.wait(0.1):
                    engine.state()
                    polls[0] += 1

            poller = threading.Thread(target=poll_state, daemon=True)
            poller.start()
            sent = ok = 0
            steal0 = _steal_s()
            t0 = time.monotonic()
            deadline = t0 + seconds
            minutes: list[dict] = []
            mark = (t0 + 60.0, engine.report(since=quiet["blocks"]), steal0)
            while time.monotonic() < deadline:
                reply = engine.send(flood[sent % len(flood)])
                sent += 1
                ok += bool(reply.get("ok"))
                if time.monotonic() >= mark[0]:
                    now, steal = engine.report(since=mark[1]["blocks"]), _steal_s()
                    minutes.append({**phase(now, mark[1]), "steal_s": None if steal is None or mark[2] is None
                                    else round(steal - mark[2], 2)})
                    mark = (mark[0] + 60.0, now, steal)
            flood_s = time.monotonic() - t0
            steal1 = _steal_s()
            stop.set()
            poller.join()
            state = engine.state()
            loud = engine.report(since=quiet["blocks"])
        jack_xruns = server.xruns_logged()

    def ratio(a: float, b: float) -> float:
        return round(a / b, 3) if b > 0 else float("nan")

    return {"seconds": seconds, "quiet_seconds": quiet_s, "block_frames": block, "block_ms": round(block / 44.1, 3),
            "n_decks": n_decks, "quick": quick, "ahead_blocks": loud["ahead_blocks"], "jack_realtime": realtime,
            "audio_thread_priority": loud["audio_thread_priority"], "helper_thread_priority": helper_priority,
            "tracks_bpm": [b for b, _ in BENCH_TRACKS],
            "setup_errors": setup_errors, "decks_playing": sum(d["playing"] for d in state["decks"]),
            "device": loud.get("device"), "host_api": loud.get("host_api"), "latency_s": loud.get("latency_s"),
            "xruns_total": loud["xruns"], "xruns_at_start": start["xruns"],
            "quiet": phase(quiet, start), "flood": phase(loud, quiet),
            "flood_vs_quiet": {"cost_p99": ratio(loud["cost_ms"]["p99"], quiet["cost_ms"]["p99"]),
                               "cost_median": ratio(loud["cost_ms"]["median"], quiet["cost_ms"]["median"])},
            "commands": {"sent": sent, "ok": ok, "errors": sent - ok, "rate_per_s": round(sent / flood_s, 1),
                         "applied": loud["commands_applied"], "state_polls": polls[0]},
            "block_frames_min": loud["block_frames_min"], "block_frames_max": loud["block_frames_max"],
            "jack_xruns_logged": jack_xruns,
            "steal_s": None if steal0 is None or steal1 is None else round(steal1 - steal0, 2),
            "flood_by_minute": minutes}
