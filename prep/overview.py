"""Waveform overviews: a small per-stem picture of a whole track.

A deck in the TUI shows, per stem, the track's loudness from start to end;
prep computes it once and stores it in the crate, so drawing never touches the
audio. An overview is a ``uint8`` array ``(n_lanes, n_points)``: lane ``i``
is stem ``i`` (or the mix when there are no stems), point ``j`` covers
``1 / points_per_second`` seconds, and the value is that stretch's peak
absolute sample on a square-root scale (``255 * sqrt(peak)``, peak clipped to
1). The square root is what makes quiet passages visible without a dB scale's
noisy floor; Mixxx's overview waveform bends its peaks the same way.
"""

from __future__ import annotations

import numpy as np

POINTS_PER_SECOND = 20.0
"""Overview resolution: 20 points per second is 7200 points for a 6-minute track,
finer than any terminal row and a few kilobytes per stem."""

LEVELS = " ▁▂▃▄▅▆▇█"
"""Characters for drawing an overview, from silence to full scale."""


def waveform_overview(audio: np.ndarray, sample_rate: int,
                      points_per_second: float = POINTS_PER_SECOND) -> np.ndarray:
    """Peak overview of stems or a mix.

    Parameters
    ----------
    audio : np.ndarray
        Stems ``(n_stems, frames, channels)`` or one signal ``(frames, channels)``
        or ``(frames,)``, float.
    sample_rate : int
        Hz.
    points_per_second : float
        Overview points per second of audio.

    Returns
    -------
    np.ndarray
        ``uint8`` ``(n_lanes, n_points)``; ``n_points = ceil(seconds * points_per_second)``.
    """
    x = np.asarray(audio)
    if x.ndim == 1:
        x = x[None, :, None]
    elif x.ndim == 2:
        x = x[None]
    n_lanes, frames = x.shape[0], x.shape[1]
    hop = sample_rate / points_per_second
    n_points = max(1, int(np.ceil(frames / hop)))
    edges = np.minimum(np.round(np.arange(n_points + 1) * hop).astype(np.int64), frames)
    edges[-1] = frames
    out = np.zeros((n_lanes, n_points), dtype=np.uint8)
    for lane in range(n_lanes):
        peak_per_frame = np.abs(x[lane]).max(axis=1)
        starts = edges[:-1]
        nonempty = edges[1:] > starts
        peaks = np.zeros(n_points, dtype=np.float32)
        if frames:
            peaks[nonempty] = np.maximum.reduceat(peak_per_frame, starts[nonempty])
        out[lane] = np.round(255.0 * np.sqrt(np.clip(peaks, 0.0, 1.0)))
    return out


def draw_overview(overview: np.ndarray, width: int = 64, names: tuple[str, ...] | None = None) -> list[str]:
    """Text lines picturing an overview, one per lane, ``width`` columns wide.

    Each column shows the loudest point it covers, so short peaks stay visible.
    """
    n_lanes, n_points = overview.shape
    edges = np.linspace(0, n_points, width + 1).astype(int)
    lines = []
    label_width = max((len(n) for n in names), default=0) if names else 0
    for lane in range(n_lanes):
        chars = []
        for a, b in zip(edges[:-1], edges[1:]):
            v = int(overview[lane, a:max(b, a + 1)].max()) if a < n_points else 0
            # Rounded, but anything above silence shows at least the lowest block.
            level = int(round(v / 255 * (len(LEVELS) - 1)))
            chars.append(LEVELS[max(level, 1 if v else 0)])
        label = f"{names[lane]:<{label_width}} " if names else ""
        lines.append(label + "".join(chars))
    return lines
