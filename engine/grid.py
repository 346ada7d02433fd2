"""Beat grids: mapping between a deck's source position (frames) and its beat count.

A grid is a float64 array of beat positions in source frames, strictly
increasing, as the analysis found them (not a constant BPM: a track whose
tempo drifts keeps its real beats). Beat ``b`` (a float) lies at
``beats_frames[floor(b)]`` plus the fraction ``b - floor(b)`` of that beat's
length; before the first and after the last beat the grid is extended with the
length of the nearest beat, so every position has a beat count and the two
maps are exact inverses of each other.

The functions are ``numba`` kernels (``nogil``, no allocation) because the
engine calls them from the audio thread every block.
"""

from __future__ import annotations

import numba
import numpy as np

__all__ = ["beat_at", "beat_at_many", "position_at", "frames_per_beat", "check_grid"]

_JIT = dict(nogil=True, cache=True)


@numba.njit(**_JIT)
def _segment(beats_frames, position_frames):
    """Index ``i`` such that ``beats[i] <= position < beats[i + 1]``, clamped to ``0 .. n - 2``."""
    n = beats_frames.shape[0]
    lo = 0
    hi = n - 1
    if position_frames <= beats_frames[0]:
        return 0
    if position_frames >= beats_frames[n - 1]:
        return n - 2
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if beats_frames[mid] <= position_frames:
            lo = mid
        else:
            hi = mid
    return lo


@numba.njit(**_JIT)
def beat_at(beats_frames: np.ndarray, position_frames: float) -> float:
    """Beat count (0 = first beat of the grid, fractional) at a source position in frames."""
    i = _segment(beats_frames, position_frames)
    a = beats_frames[i]
    b = beats_frames[i + 1]
    return i + (position_frames - a) / (b - a)


def beat_at_many(beats_frames: np.ndarray, positions_frames: np.ndarray) -> np.ndarray:
    """:func:`beat_at` of each position (downbeats, phrase starts), float64; for the control side, not kernels."""
    return np.array([beat_at(beats_frames, float(p)) for p in positions_frames], dtype=np.float64)


@numba.njit(**_JIT)
def position_at(beats_frames: np.ndarray, beat: float) -> float:
    """Source position in frames of a (fractional) beat count; the inverse of :func:`beat_at`."""
    n = beats_frames.shape[0]
    i = int(np.floor(beat))
    if i < 0:
        i = 0
    elif i > n - 2:
        i = n - 2
    a = beats_frames[i]
    b = beats_frames[i + 1]
    return a + (beat - i) * (b - a)


@numba.njit(**_JIT)
def frames_per_beat(beats_frames: np.ndarray, position_frames: float) -> float:
    """Length in source frames of the beat that contains ``position_frames``."""
    i = _segment(beats_frames, position_frames)
    return beats_frames[i + 1] - beats_frames[i]


def check_grid(beats_frames: np.ndarray, where: str) -> np.ndarray:
    """Validate a beat grid and return it as C-contiguous float64.

    Raises ``ValueError`` naming ``where`` when it has fewer than two beats or
    is not strictly increasing.
    """
    grid = np.ascontiguousarray(beats_frames, dtype=np.float64)
    if grid.ndim != 1 or grid.shape[0] < 2:
        raise ValueError(f"{where}: a beat grid needs at least two beats, got {grid.shape}")
    if not np.all(np.isfinite(grid)) or np.any(np.diff(grid) <= 0):
        raise ValueError(f"{where}: beat positions must be finite and strictly increasing")
    return grid
