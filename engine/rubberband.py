"""Rubber Band R3 as a deck's stretcher, for high-quality offline renders.

The engine's own keylock (:mod:`engine.stretch`) is built for the audio
thread: numba kernels over preallocated state, cheap restarts, stem-coherent.
For a render that may take longer — an automix redone at the best quality
(``ate automix --render OUT --stretcher rubberband``) — a deck can stretch
with Rubber Band's finer engine (R3, librubberband 3 through ``pylibrb``,
the library pyrubberband drives through its command line) instead.
Realtime mode is used, as Mixxx does, because the engine changes the ratio
every block (sync corrections, tempo drifts between tracks); one stereo
stretcher per stem.

:class:`RubberBandStretcher` stands where a deck's
:class:`engine.stretch.Stretcher` stands (``bind``, ``reset``, ``set_loop``,
``position_frames``, ``lead_frames``, ``prefetch``, ``handle``) and
:func:`render_block` where the deck calls :func:`engine.deck.render_block`.
It is not for the audio thread: it allocates per block and calls into C++ through Python, so
:class:`engine.core.Engine` accepts it for offline renders only.

Alignment: a restart feeds Rubber Band's preferred start pad from the source
*before* the restart position (not zeros), then drops its start delay, so the
first output frame is the restart position, and the position the deck reports
(the ratio integrated over output frames) is what is heard. Rubber Band
consumes input at the ratio it was given, so the two do not drift apart.
"""

from __future__ import annotations

import numpy as np

from engine.deck import mix_stems, post_block

__all__ = ["RubberBandStretcher", "render_block", "available"]

_SLACK_FRAMES = 256
"""Input fed when R3 asks for none while it has no output yet (Mixxx's kRubberBandBlockSize)."""
_MIN_RATIO = 1.0 / 8.0
"""Slowest speed handed to Rubber Band; slower (a stopping jog, a scratch) renders silence."""


def available() -> str:
    """Why Rubber Band cannot be used here ("" when it can)."""
    try:
        import pylibrb  # noqa: F401
    except Exception as err:  # noqa: BLE001 - a broken binary wheel raises anything
        return f"pylibrb does not import ({err})"
    return ""


class RubberBandStretcher:
    """Keylock, key shift and vinyl-style speed for one deck's stems with Rubber Band R3.

    Parameters
    ----------
    n_stems : int
        Stems per deck (one stereo Rubber Band stretcher each).
    channels : int
        Channels per stem (2).
    sample_rate : int
        Sample rate, Hz.
    max_block_frames : int
        Largest ``n_frames`` of :func:`render_block`.
    record_positions : bool
        Accepted for :class:`engine.stretch.Stretcher`'s signature: no per-frame positions are kept.
    """

    hop_frames = 512
    """What the engine's vocoder scheduling reads; unused here (:attr:`lead_frames` is -1)."""

    def __init__(self, n_stems: int, channels: int, sample_rate: int, max_block_frames: int,
                 record_positions: bool = False):
        from pylibrb import Option, RubberBandStretcher as _RB

        self.n_stems, self.channels, self.sample_rate = n_stems, channels, sample_rate
        self.max_block_frames = max_block_frames
        options = Option.PROCESS_REALTIME | Option.ENGINE_FINER | Option.CHANNELS_TOGETHER
        self._rb = [_RB(sample_rate, channels, options, 1.0, 1.0) for _ in range(n_stems)]
        for rb in self._rb:
            rb.set_max_process_size(max(4096, max_block_frames))
        self._source: np.ndarray | None = None
        self._loop = (0, 0)
        self._reads = [0] * n_stems   # per stem: virtual source frame of its next input frame
        self._position = 0.0      # virtual source frame audible at the next output frame
        self._restart = True
        self._restart_at = 0.0
        self._ratio = 1.0
        self._pitch = 1.0
        self._drop = [0] * n_stems   # start-delay frames still to discard, per stem
        self.handle = self    # what the deck hands to its kernel

    # ------------------------------------------------------------------ the deck's stretcher interface

    def bind(self, source: np.ndarray) -> None:
        """Adopt ``source``: int16 or float32 ``(n_stems, frames, channels)``."""
        if source.ndim != 3 or source.shape[0] != self.n_stems or source.shape[2] != self.channels:
            raise ValueError(f"engine/rubberband.py: source must be ({self.n_stems}, frames, {self.channels}), "
                             f"got {source.shape}")
        self._source = source
        self._restart = True

    def reset(self, position_frames: float, crossfade: bool = True) -> None:
        """Restart at ``position_frames`` on the next block (no crossfade: Rubber Band starts afresh)."""
        self._restart_at = float(position_frames)
        self._restart = True

    def set_loop(self, start_frames: int, end_frames: int) -> bool:
        """Play ``[start, end)`` periodically (``end <= start``: no loop); always asks for a restart."""
        self._loop = (int(start_frames), int(end_frames))
        return True

    @property
    def lead_frames(self) -> float:
        return -1.0          # nothing for the engine to schedule ahead

    def prefetch(self, source: np.ndarray, lead_frames: float) -> bool:
        return False

    @property
    def position_frames(self) -> float:
        """Source position audible at the next output frame (virtual: past a loop end it keeps growing)."""
        return self._restart_at if self._restart else self._position

    # ------------------------------------------------------------------ rendering

    def _read_source(self, start: int, n: int) -> np.ndarray:
        """float32 ``(n_stems, channels, n)`` from virtual frame ``start``: loops wrapped, outside is silence,
        int16 read as value / 32768."""
        src = self._source
        frames = src.shape[1]
        idx = np.arange(start, start + n)
        lo, hi = self._loop
        if hi > lo:
            past = idx >= hi
            idx[past] = lo + (idx[past] - lo) % (hi - lo)
        inside = (idx >= 0) & (idx < frames)
        out = np.zeros((self.n_stems, self.channels, n), np.float32)
        out[:, :, inside] = np.transpose(src[:, idx[inside], :], (0, 2, 1))
        if src.dtype == np.int16:
            out *= 1.0 / 32768.0          # as the engine's own kernels read int16 stems
        return out

    def _start(self, ratio: float, pitch: float) -> None:
        at = self._restart_at
        first = int(np.floor(at))
        for rb in self._rb:
            rb.reset()
        self._set_rate(ratio, pitch)
        pad = self._rb[0].get_preferred_start_pad()
        # What precedes the restart point feeds the pad: no fade-in from zeros, no start transient.
        pre = self._read_source(first - pad, pad)
        for s, rb in enumerate(self._rb):
            rb.process(np.ascontiguousarray(pre[s]))
            self._drop[s] = rb.get_start_delay()
        self._reads = [first] * self.n_stems
        self._position = at
        self._restart = False

    def _set_rate(self, ratio: float, pitch: float) -> None:
        """Speed (source frames per output frame) and pitch scale for every stem's stretcher."""
        for rb in self._rb:
            rb.time_ratio = 1.0 / ratio
            rb.pitch_scale = pitch
        self._ratio, self._pitch = ratio, pitch

    def _pull(self, s: int, out: np.ndarray, n: int) -> None:
        """``n`` output frames of stem ``s`` into ``out[s, :n]``."""
        rb = self._rb[s]
        filled = 0
        read = self._reads[s]
        while filled < n:
            got = rb.available()
            if got > 0 and self._drop[s] > 0:
                drop = min(got, self._drop[s])
                rb.retrieve(drop)
                self._drop[s] -= drop
                continue
            if got > 0:
                take = min(got, n - filled)
                out[s, filled:filled + take, :] = rb.retrieve(take).T
                filled += take
                continue
            need = rb.get_samples_required() or _SLACK_FRAMES
            rb.process(np.ascontiguousarray(self._read_source(read, need)[s]))
            read += need
        self._reads[s] = read

    def process_block(self, out: np.ndarray, n_frames: int, ratio: float, keylock: bool, semitones: float) -> float:
        """Render ``n_frames`` of every stem into ``out[:, :n_frames]``; returns the virtual position after."""
        if self._source is None or ratio < _MIN_RATIO:
            out[:, :n_frames] = 0.0
            position = self.position_frames + n_frames * ratio
            self.reset(position)
            return position
        pitch = 2.0 ** (semitones / 12.0) if keylock else ratio
        if self._restart:
            self._start(ratio, pitch)
        elif ratio != self._ratio or pitch != self._pitch:
            self._set_rate(ratio, pitch)
        for s in range(self.n_stems):
            self._pull(s, out, n_frames)
        self._position += n_frames * ratio
        return self._position


def render_block(handle: RubberBandStretcher, stems: np.ndarray, stem_buf: np.ndarray, n_frames: int, ratio: float,
                 keylock: bool, key_shift: float, gains_start: np.ndarray, gains_end: np.ndarray, scale: float,
                 block: np.ndarray, trim_start: float, trim_end: float, eq: tuple, filt: tuple,
                 filter_knob: float) -> float:
    """:func:`engine.deck.render_block` for a deck stretched by a :class:`RubberBandStretcher`: stretch,
    stem mix, trim/EQ/filter; returns the virtual source position after the block."""
    virtual = handle.process_block(stem_buf, n_frames, ratio, keylock, key_shift)
    mix_stems(stem_buf, n_frames, gains_start, gains_end, scale, block, 0)
    post_block(block, n_frames, trim_start, trim_end, eq, filt, filter_knob)
    return virtual
