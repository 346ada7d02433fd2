"""A track's beat grid as MIDI sees it, and quantization of note times in beat space.

:class:`BeatGrid` turns the analysis' ``beats``, ``downbeats`` and
``beats_per_bar`` (docs/analysis.md) into the beat positions a MIDI file
counts: beat 0 is audio time 0 (so a MIDI file dropped at the start of the
audio lines up with it), every beat of the analysis is a whole beat of the
file, and the first downbeat starts a bar. Music that does not start on its
first downbeat gets a *pickup* bar before it: the analysis' beats before the
first downbeat, extended back towards time 0 with the first beat's length,
in a bar of that many beats (a 3/4 pickup before a 4/4 track, say). When the
first downbeat is less than half a beat after time 0 there is no pickup: the
file's first beat is stretched to reach the second beat and bar 1 begins at 0.
After the last beat the grid goes on with the last beat's length.

Times and beats map piecewise linearly between grid beats (the same rule as
the engine's :mod:`engine.grid`, which works in frames inside the audio
thread), so a grid whose tempo drifts is followed beat by beat, never with a
constant BPM.

:func:`quantize_times` moves times towards the nearest point of a grid of
``1/division`` beat steps, optionally swung; :func:`measure_swing` finds the
swing a track already has, so that quantizing keeps it.

>>> grid = BeatGrid.from_analysis(analysis["beats"], analysis["downbeats"], analysis["beats_per_bar"])
>>> swing = measure_swing(onsets_s, grid, division=4)          # 0.5 = straight
>>> onsets_q = quantize_times(onsets_s, grid, division=4, strength=1.0, swing=swing)
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction

import numpy as np

__all__ = ["MAX_SWING", "STRAIGHT", "BeatGrid", "measure_swing", "parse_division", "quantize_times"]

STRAIGHT = 0.5
"""Swing ratio of a straight grid: the first step of each pair takes half of the pair."""

MAX_SWING = 0.75
"""The hardest swing measured or applied (a dotted-16th feel); a triplet shuffle is 2/3."""

_MIN_SWING_ONSETS = 8
_MIN_SWING_SHIFT = 0.02  # pair fraction under which a measured swing is taken as straight


@dataclass(frozen=True)
class BeatGrid:
    """Beat positions of a MIDI file laid over the audio.

    Attributes
    ----------
    beats_s : ndarray
        float64 audio time of every grid beat, in seconds, strictly increasing; ``beats_s[0] == 0``.
    downbeat_index : int
        Index in ``beats_s`` of the audio's first downbeat: the number of pickup beats before it.
    beats_per_bar : int
        Beats in a bar from the first downbeat on.
    """

    beats_s: np.ndarray
    downbeat_index: int
    beats_per_bar: int

    @classmethod
    def from_analysis(cls, beats: object, downbeats: object = None, beats_per_bar: int = 4) -> BeatGrid:
        """The grid of an analysis record's ``beats``, ``downbeats`` and ``beats_per_bar`` (seconds).

        Raises
        ------
        ValueError
            Fewer than two beats, or beats that do not increase.
        """
        beats = np.asarray(beats, dtype=np.float64).ravel()
        if beats.size < 2 or not np.all(np.isfinite(beats)) or np.any(np.diff(beats) <= 0):
            raise ValueError("a beat grid needs at least two strictly increasing beats")
        beats = beats[beats > -1e-9]
        if beats.size < 2:
            raise ValueError("a beat grid needs at least two beats at or after time 0")
        downbeats = np.asarray(downbeats if downbeats is not None else [], dtype=np.float64).ravel()
        first = 0
        if downbeats.size:
            # The first downbeat is one of the beats (the analysis picks bar phase on its beats).
            first = int(np.argmin(np.abs(beats - downbeats[0])))
        period = beats[1] - beats[0]
        before = list(beats[:first])
        t = beats[0] - period
        while t > 0:  # extend the grid back towards 0 with the first beat's length
            before.insert(0, t)
            t -= period
        d0 = beats[first]
        if d0 < 0.5 * period:
            # Bar 1 starts at 0: the file's first beat stretches to the audio's second beat.
            return cls(np.concatenate([[0.0], beats[first + 1:]]), 0, int(beats_per_bar))
        pickup = [b for b in before if b >= 0.5 * period]
        grid = np.concatenate([[0.0], pickup, beats[first:]])
        return cls(grid, len(pickup) + 1, int(beats_per_bar))

    @property
    def pickup_beats(self) -> int:
        """Beats in the pickup bar before the first downbeat (0: bar 1 is the first downbeat)."""
        return self.downbeat_index

    def beat_of(self, times_s: object) -> np.ndarray:
        """Grid beat (float, 0 at audio time 0) of audio times in seconds."""
        t = np.asarray(times_s, dtype=np.float64)
        g = self.beats_s
        inside = np.interp(t, g, np.arange(g.size, dtype=np.float64))
        last = g.size - 1 + (t - g[-1]) / (g[-1] - g[-2])
        first = (t - g[0]) / (g[1] - g[0])
        return np.where(t > g[-1], last, np.where(t < g[0], first, inside))

    def time_of(self, beats: object) -> np.ndarray:
        """Audio time in seconds of grid beats (float); the inverse of :meth:`beat_of`."""
        b = np.asarray(beats, dtype=np.float64)
        g = self.beats_s
        n = g.size
        i = np.clip(np.floor(b).astype(np.int64), 0, n - 2)
        return g[i] + (b - i) * (g[i + 1] - g[i])

    def bar_beat_of(self, beats: object) -> tuple[np.ndarray, np.ndarray]:
        """``(bar, beat in bar)`` of grid beats: bar 1 starts at the first downbeat (bar 0 is the pickup)."""
        b = np.asarray(beats, dtype=np.float64) - self.downbeat_index
        bar = np.floor(b / self.beats_per_bar)
        return bar.astype(np.int64) + 1, b - bar * self.beats_per_bar

    def downbeats_s(self) -> np.ndarray:
        """Audio times of the grid's bar starts from the first downbeat on, within the grid."""
        return self.beats_s[self.downbeat_index::self.beats_per_bar]


def parse_division(text: str | float) -> int | Fraction:
    """Steps per beat of a grid written as a fraction of a beat: ``"1/4"`` -> 4, ``"1/3"`` -> 3, ``"1"`` -> 1.

    ``"1/4"`` is a quarter of a beat (a 16th note in 4/4), ``"1/3"`` an 8th-note triplet, ``"1/6"`` a
    16th triplet, ``"1/2"`` an 8th note. Decimals (``"0.25"``) work too.

    Raises
    ------
    ValueError
        Not a positive fraction of at most one bar's worth (1/64 .. 4 beats).
    """
    try:
        step = Fraction(str(text).strip())
    except (ValueError, ZeroDivisionError):
        raise ValueError(f"grid {text!r}: want a fraction of a beat such as 1/4, 1/3 or 1/8") from None
    if not Fraction(1, 64) <= step <= 4:
        raise ValueError(f"grid {text!r}: the step must be between 1/64 and 4 beats")
    per_beat = 1 / step
    return int(per_beat) if per_beat.denominator == 1 else per_beat


def _swung_nearest(pos_steps: np.ndarray, swing: float) -> np.ndarray:
    """Nearest point, in grid steps, of a grid whose odd steps sit at ``2 * swing`` of each pair of steps."""
    pair = np.floor(pos_steps / 2.0)
    candidates = np.stack([2 * pair, 2 * pair + 2 * swing, 2 * pair + 2])
    best = np.argmin(np.abs(candidates - pos_steps[None]), axis=0)
    return np.take_along_axis(candidates, best[None], axis=0)[0]


def quantize_times(times_s: object, grid: BeatGrid, division: float = 4, strength: float = 1.0,
                   swing: float = STRAIGHT) -> np.ndarray:
    """Move times towards the nearest step of a (swung) grid, in beat space.

    Parameters
    ----------
    times_s : array_like
        Audio times, in seconds.
    grid : BeatGrid
        The track's beats.
    division : float
        Grid steps per beat: 4 = 1/4 beat (default), 2 = 1/2, 3 = triplets, 8 = 1/8 beat.
    strength : float
        0 leaves the times, 1 puts them on the grid, 0.5 halfway (in beats).
    swing : float
        Where the second step of each pair of steps sits, as a share of the pair: 0.5 straight,
        2/3 a triplet shuffle (see :func:`measure_swing`).

    Returns
    -------
    ndarray
        float64 quantized times, in seconds.
    """
    if not 0.0 <= strength <= 1.0:
        raise ValueError(f"quantize strength must be within 0..1, got {strength}")
    if not STRAIGHT <= swing <= MAX_SWING:
        raise ValueError(f"swing must be within {STRAIGHT}..{MAX_SWING}, got {swing}")
    t = np.asarray(times_s, dtype=np.float64)
    if t.size == 0 or strength == 0.0:
        return t.copy()
    division = float(division)
    b = grid.beat_of(t)
    if swing == STRAIGHT:
        target = np.round(b * division) / division
    else:
        target = _swung_nearest(b * division, swing) / division
    return grid.time_of(b + strength * (target - b))


def measure_swing(times_s: object, grid: BeatGrid, division: float = 4) -> float:
    """The swing of onsets on a grid of ``1/division`` beat steps: where the off-steps fall in each pair.

    Onsets are folded into pairs of steps (an 8th note for the 1/4-beat grid); those in the middle of a
    pair (0.35..0.85 of it) are off-steps. The swing is the median share of the off-steps in their
    densest cluster (±0.06 of a pair), so a few onsets finer than the grid do not drag it. Fewer than 8
    off-steps, or a swing within 0.02 of straight, is straight. Measure at the grid you quantize to.

    Returns
    -------
    float
        0.5 (straight) .. :data:`MAX_SWING`.
    """
    t = np.asarray(times_s, dtype=np.float64)
    if t.size == 0:
        return STRAIGHT
    phase = np.mod(grid.beat_of(t) * float(division), 2.0) / 2.0
    off = phase[(phase > 0.35) & (phase < 0.85)]
    if off.size < _MIN_SWING_ONSETS:
        return STRAIGHT
    # The densest cluster of off-steps, so that a few onsets finer than the grid (at 0.75 of a pair)
    # do not drag a straight or lightly swung grid.
    hist, edges = np.histogram(off, bins=25, range=(0.35, 0.85))
    smooth = np.convolve(hist, np.ones(3), mode="same")
    centre = 0.5 * (edges[np.argmax(smooth)] + edges[np.argmax(smooth) + 1])
    near = off[np.abs(off - centre) <= 0.06]
    swing = float(np.median(near))
    if abs(swing - STRAIGHT) < _MIN_SWING_SHIFT:
        return STRAIGHT
    return float(np.clip(swing, STRAIGHT, MAX_SWING))
