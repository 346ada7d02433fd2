"""Music structure for DJs: sections, phrases and mix points on a known beat grid.

:func:`analyze_structure` runs after the beat grid is known. Everything is
computed per bar, with bars taken from the downbeats, so boundaries, phrases
and mix points all fall on downbeats.

Method
------
1. **Bar-synchronous features.** One STFT gives log-mel timbre (MFCC), chroma,
   per-band levels, loudness and onset strength. They are averaged per beat
   (timbre, chroma) or per sixteenth (onset pattern) inside each bar, so a bar
   vector also describes its rhythm.
2. **Self-similarity.** Per feature group (timbre, harmony, rhythm, energy) a
   bar-by-bar distance matrix is turned into a similarity in [0, 1] with a
   scale set by the track's own median distance (floored in natural units, so
   a static track does not have its noise amplified). The groups are averaged.
3. **Novelty.** Two curves, in similarity units, are added:

   * block novelty (Foote 2000): a Gaussian-tapered checkerboard kernel
     slides along the diagonal of the combined matrix at bar boundaries, at
     2, 4 and 8 bars each side; the scales are averaged. It sees changes of
     sound: drums or bass in or out, a filter opening, a breakdown.
   * repetition novelty on the harmony matrix: inside a looping section some
     lag (up to 8 bars) pairs every bar with a similar one; at a section
     change no lag pairs bars *across* the boundary as well as it pairs bars
     on either side. It sees a verse turning into a chorus when the sound
     stays the same but the progression and melody change.
4. **Boundaries.** Novelty is weighted by a phrase prior favouring multiples
   of 8 and 4 bars (the phase of the 4/8-bar grid is taken from the first
   downbeat unless the novelty itself clearly prefers another phase). Peaks
   are picked greedily, strongest first, at least ``MIN_SEGMENT_BARS`` apart
   and above a threshold relative to the strongest peak. A boundary off the
   grid survives when the music clearly changes there (its novelty beats the
   on-grid neighbours by more than the prior's margin).
5. **Labels.** Two segments are compared bar by bar, aligned at their starts
   and at their ends (a repeated chorus repeats bar for bar), separately for
   harmony and for sound (timbre, rhythm, energy); the lower of the two is
   their similarity, so a repeat must match in both. Average-linkage
   clustering with a fixed threshold gives the labels ``A``, ``B``, ... in
   order of first appearance.
6. **Phrases.** Each segment splits into 8-bar phrases from its start (16-bar
   phrases in segments of 32 bars or more); the last phrase of a segment may
   be shorter. Bars before the first downbeat form no phrase.

Mix points
----------
``mix_in``
    The start of the first phrase whose bars are audible (within
    ``SILENT_DB`` of the loudest bar): normally the first downbeat, later when
    the track opens with near-silence.
``mix_out``
    Where the outgoing transition should begin. The outro is the run of
    outro-like segments at the end of the track (mean band level at least
    ``OUTRO_DROP_DB`` below the most intense segment: quieter, or fewer
    elements playing), grown backwards from the last segment only until it
    spans ``MIX_OUT_BARS`` (16) bars. If such a run exists, ``mix_out`` is its
    start. Otherwise it is the latest phrase start that leaves at least 16
    bars before the end of the grid. When ``vocal_regions`` is given and that
    point lies inside a vocal (or one starts within half a beat after it), the
    nearest phrase start outside every vocal region is taken instead, looking
    from 32 bars before the point to 8 bars before the end (earlier on a tie);
    if there is none, the point stays.

All times are seconds from the start of the signal given.
"""

from __future__ import annotations

import string
from dataclasses import dataclass, field

import numpy as np

PHRASE_BARS = 8
"""Phrase length in bars."""

LONG_PHRASE_BARS = 16
"""Phrase length in bars inside segments of at least ``LONG_SEGMENT_BARS``."""

LONG_SEGMENT_BARS = 32

MIN_SEGMENT_BARS = 4
"""Shortest segment (in bars) that boundary picking creates."""

NOVELTY_SCALES = (2, 4, 8)
"""Half-widths of the checkerboard kernels, in bars."""

REPETITION_MAX_LAG = 8
"""Longest loop, in bars, that :func:`repetition_novelty` looks for."""

PEAK_REL_THRESHOLD = 0.3
"""A boundary's weighted novelty must reach this fraction of the strongest peaks' (mean of three)."""

PEAK_ABS_THRESHOLD = 0.08
"""...and this absolute novelty (similarity units), so a static track stays one segment."""

GRID_PRIOR = {8: 1.0, 4: 0.9, 2: 0.7, 1: 0.6}
"""Novelty weight of a boundary by the coarsest bar grid it lies on (relative to the phrase phase)."""

LABEL_SIMILARITY = 0.6
"""Aligned bar-by-bar similarity above which two segments share a label."""

MIX_OUT_BARS = 16
"""Bars a DJ needs for the outgoing transition."""

OUTRO_DROP_DB = 3.0
"""How far (dB, mean over bands) an outro sits below the most intense segment."""

SILENT_DB = 40.0
"""Bars this far (dB) below the loudest bar count as silent for ``mix_in`` and ``energy``."""

SILENCE_DBFS = -70.0
"""Bars quieter than this (dBFS) are silent whatever the rest of the track does."""

_N_BANDS = 6
_REFERENCE_SR = 22050


@dataclass
class Segment:
    """A section of the track. ``start``/``end`` in seconds; repeats share ``label``."""

    start: float
    end: float
    label: str

    def to_dict(self) -> dict:
        return {"start": round(float(self.start), 4), "end": round(float(self.end), 4), "label": self.label}


@dataclass
class Phrase:
    """A run of ``bars`` bars starting on a downbeat. ``start``/``end`` in seconds."""

    start: float
    end: float
    bars: int

    def to_dict(self) -> dict:
        return {"start": round(float(self.start), 4), "end": round(float(self.end), 4), "bars": int(self.bars)}


@dataclass
class Structure:
    """Result of :func:`analyze_structure`.

    Attributes
    ----------
    segments : list of Segment
        Contiguous, covering ``[0, duration]``.
    phrases : list of Phrase
        Contiguous from the first downbeat to the end of the last bar.
    mix_in, mix_out : float
        Phrase starts, in seconds (see the module docstring for the rules).
    bar_starts : np.ndarray
        ``(n_bars,)`` start time of each bar of the grid, in seconds.
    energy : np.ndarray
        ``(n_bars,)`` per-bar intensity in [0, 1]: the mean over six bands of
        each band's level relative to its own loud level (so it drops both
        when the track gets quieter and when elements stop), 1 at the most
        intense bar, 0 at ``SILENT_DB`` below it and for bars under
        ``SILENCE_DBFS``.
    novelty : np.ndarray
        ``(n_bars,)`` boundary novelty at each bar start in [0, 1] (1 at the
        strongest change).
    """

    segments: list[Segment]
    phrases: list[Phrase]
    mix_in: float
    mix_out: float
    bar_starts: np.ndarray = field(default_factory=lambda: np.zeros(0))
    energy: np.ndarray = field(default_factory=lambda: np.zeros(0))
    novelty: np.ndarray = field(default_factory=lambda: np.zeros(0))

    def to_dict(self) -> dict:
        """Plain JSON-ready dict; times rounded to 0.1 ms, curves to 0.001."""
        return {
            "segments": [s.to_dict() for s in self.segments],
            "phrases": [p.to_dict() for p in self.phrases],
            "mix_in": round(float(self.mix_in), 4),
            "mix_out": round(float(self.mix_out), 4),
            "bar_starts": [round(float(t), 4) for t in self.bar_starts],
            "energy": [round(float(e), 3) for e in self.energy],
            "novelty": [round(float(n), 3) for n in self.novelty],
        }


# --------------------------------------------------------------------------- grid


def bar_edges(downbeats: np.ndarray, duration_s: float) -> tuple[np.ndarray, int, int]:
    """Bar edges from downbeats, padded with whole bars of the median bar length.

    Parameters
    ----------
    downbeats : np.ndarray
        Downbeat times in seconds, increasing.
    duration_s : float
        Signal length in seconds.

    Returns
    -------
    edges : np.ndarray
        ``(n + 1,)`` bar edges in seconds. Bars before the first downbeat and
        after the last are extrapolated at the median bar length, whole bars
        only, so that lead-ins and tails take part in the features.
    first, last : int
        Indices into ``edges`` of the first downbeat and of the end of the
        last bar that starts on a real downbeat.
    """
    db = np.unique(np.asarray(downbeats, dtype=float))
    db = db[(db >= 0) & (db < duration_s)]
    period = float(np.median(np.diff(db)))
    end = min(duration_s, db[-1] + period)
    grid = db
    if end - db[-1] >= 0.5 * period:
        grid = np.append(db, end)
    # A final partial bar shorter than half a bar is folded into the tail.
    n_before = int(np.floor(db[0] / period + 1e-6))
    before = db[0] - period * np.arange(n_before, 0, -1)
    n_after = int(np.floor((duration_s - grid[-1]) / period + 1e-6))
    after = grid[-1] + period * np.arange(1, n_after + 1)
    edges = np.concatenate([before, grid, after])
    return edges, n_before, n_before + len(grid) - 1


# ----------------------------------------------------------------------- features


def _slice_means(frames: np.ndarray, frame_times: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Mean of ``frames`` ``(d, t)`` between consecutive ``edges`` (s): ``(d, len(edges) - 1)``."""
    idx = np.searchsorted(frame_times, edges)
    idx = np.clip(idx, 0, frames.shape[1] - 1)
    lo, hi = idx[:-1], idx[1:]
    hi = np.maximum(hi, lo + 1)  # an empty slice takes its nearest frame
    csum = np.concatenate([np.zeros((frames.shape[0], 1)), np.cumsum(frames, axis=1, dtype=float)], axis=1)
    hi = np.minimum(hi, frames.shape[1])
    lo = np.minimum(lo, hi - 1)
    return (csum[:, hi] - csum[:, lo]) / (hi - lo)


def _sub_edges(edges: np.ndarray, n_sub: int) -> np.ndarray:
    """Split each bar into ``n_sub`` equal slices: ``(n_bars * n_sub + 1,)`` edges."""
    starts = edges[:-1, None] + np.diff(edges)[:, None] * (np.arange(n_sub) / n_sub)[None, :]
    return np.append(starts.ravel(), edges[-1])


def _filterbank(sr: int, n_fft: int) -> tuple[np.ndarray, dict[str, slice]]:
    """Stacked mel, chroma and band filters, so one matrix product gives them all."""
    import librosa

    fmax = min(sr / 2, 11025.0)
    freqs = librosa.fft_frequencies(sr=sr, n_fft=n_fft)
    mel = librosa.filters.mel(sr=sr, n_fft=n_fft, n_mels=64, fmax=fmax)
    # Tuning is constant within a track, so estimating it buys nothing for self-similarity.
    chroma = librosa.filters.chroma(sr=sr, n_fft=n_fft, tuning=0.0)
    band_edges = np.geomspace(30.0, fmax, _N_BANDS + 1)
    bands = np.stack([(freqs >= lo) & (freqs < hi) for lo, hi in zip(band_edges[:-1], band_edges[1:])])
    low = ((freqs >= 20.0) & (freqs < 150.0))[None, :]
    total = np.ones((1, len(freqs)))
    rows = {"mel": mel, "chroma": chroma, "bands": bands, "low": low, "total": total}
    index, start = {}, 0
    for name, m in rows.items():
        index[name] = slice(start, start + len(m))
        start += len(m)
    return np.vstack(list(rows.values())).astype(np.float32), index


def bar_features(y: np.ndarray, sr: int, edges: np.ndarray, beats_per_bar: int) -> dict[str, np.ndarray]:
    """Bar-synchronous features.

    Parameters
    ----------
    y : np.ndarray
        Mono signal.
    sr : int
        Sample rate in Hz.
    edges : np.ndarray
        ``(n + 1,)`` bar edges in seconds.
    beats_per_bar : int
        Beats per bar; timbre and chroma are averaged per beat.

    Returns
    -------
    dict of np.ndarray, each ``(n, d)``
        ``timbre`` (MFCC 1-12 per beat), ``harmony`` (chroma per beat),
        ``rhythm`` (onset strength per sixteenth, normalised per bar),
        ``energy`` (level in dBFS, level below 150 Hz in dBFS, onset density)
        and ``bands`` (level in dBFS of ``_N_BANDS`` log-spaced bands, 30 Hz up).
    """
    import librosa
    import scipy.fft

    # ~93 ms windows at any rate: enough resolution for chroma down to ~100 Hz.
    n_fft = int(2 ** np.round(np.log2(sr * 2048 / _REFERENCE_SR)))
    hop = n_fft // 4
    fb, rows = _filterbank(sr, n_fft)
    x = np.pad(np.asarray(y, dtype=np.float32), n_fft // 2)
    frames = np.lib.stride_tricks.sliding_window_view(x, n_fft)[::hop]
    spec = scipy.fft.rfft(frames * np.hanning(n_fft + 1)[:-1].astype(np.float32), axis=1)
    power = (spec.real ** 2 + spec.imag ** 2).astype(np.float32)  # (frames, bins)
    filtered = (power @ fb.T).T  # (rows, frames)
    times = (np.arange(power.shape[0]) * hop) / sr

    log_mel = 10.0 * np.log10(np.maximum(filtered[rows["mel"]], 1e-10))
    mfcc = scipy.fft.dct(log_mel, axis=0, type=2, norm="ortho")[1:13]
    chroma = filtered[rows["chroma"]]
    chroma = chroma / np.maximum(chroma.max(axis=0, keepdims=True), 1e-10)
    # Spectral flux of the log-mel spectrogram (positive part), as librosa's onset_strength.
    flux = np.maximum(np.diff(log_mel, axis=1, prepend=log_mel[:, :1]), 0.0).mean(axis=0, keepdims=True)

    n_bars = len(edges) - 1
    # Parseval: one-sided power summed over bins -> mean square of the signal,
    # so levels read in dBFS (a full-scale sine is -3 dBFS).
    to_ms = 2.0 / (n_fft * np.sum(np.hanning(n_fft + 1)[:-1] ** 2))

    def per_bar(frames_: np.ndarray, n_sub: int) -> np.ndarray:
        m = _slice_means(frames_, times, _sub_edges(edges, n_sub))  # (d, n_bars * n_sub)
        return m.reshape(m.shape[0], n_bars, n_sub).transpose(1, 2, 0).reshape(n_bars, -1)

    def db(v: np.ndarray) -> np.ndarray:
        return 10.0 * np.log10(np.maximum(v, 1e-12))

    rhythm = per_bar(flux, beats_per_bar * 4)
    rhythm = rhythm / np.maximum(rhythm.max(axis=1, keepdims=True), 1e-6)
    level = _slice_means(np.vstack([filtered[rows["total"]], filtered[rows["low"]], flux,
                                    filtered[rows["bands"]]]), times, edges).T
    level[:, np.r_[0, 1, 3:3 + _N_BANDS]] *= to_ms
    return {
        "timbre": per_bar(mfcc, beats_per_bar),
        "harmony": per_bar(chroma, beats_per_bar),
        "rhythm": rhythm,
        "energy": np.column_stack([db(level[:, 0]), db(level[:, 1]), level[:, 2]]),
        "bands": db(level[:, 3:]),
    }


# ------------------------------------------------------------------ similarity


_DISTANCE_FLOOR = {"timbre": 1.0, "harmony": 0.05, "rhythm": 0.05, "energy": 0.5}
"""Smallest distance scale per group, as RMS difference per dimension in the group's
units (MFCC, chroma, normalised onset strength, standardised energy): below it,
differences are treated as noise rather than structure."""

_ENERGY_UNITS = np.array([1.5, 2.0])
"""Smallest standard deviation (dB) of loudness and low-band level used to standardise them."""


def _pairwise(x: np.ndarray) -> np.ndarray:
    sq = np.sum(x * x, axis=1)
    d2 = sq[:, None] + sq[None, :] - 2.0 * (x @ x.T)
    return np.sqrt(np.maximum(d2, 0.0))


def group_similarity(features: dict[str, np.ndarray], name: str) -> np.ndarray:
    """Bar-by-bar similarity in [0, 1] for one feature group.

    Euclidean distances (RMS per dimension) are divided by the track's median
    distance, at least ``_DISTANCE_FLOOR[name]``, and mapped through
    ``exp(-d)``. The energy group is standardised per dimension first, since
    its dimensions have different units.

    Returns
    -------
    np.ndarray
        ``(n, n)`` symmetric, ones on the diagonal.
    """
    x = np.asarray(features[name], dtype=float)
    if name == "energy":
        units = np.append(_ENERGY_UNITS, 0.1 * abs(np.median(x[:, 2])) + 1e-6)
        x = (x - x.mean(axis=0)) / np.maximum(x.std(axis=0), units)
    d = _pairwise(x) / np.sqrt(x.shape[1])
    off = d[~np.eye(len(d), dtype=bool)]
    scale = max(float(np.median(off)) if off.size else 0.0, _DISTANCE_FLOOR[name])
    return np.exp(-d / scale)


def self_similarity(features: dict[str, np.ndarray]) -> np.ndarray:
    """Bar-by-bar similarity in [0, 1]: the mean of :func:`group_similarity` over all groups."""
    return np.mean([group_similarity(features, name) for name in _DISTANCE_FLOOR], axis=0)


def novelty_curve(sim: np.ndarray, scales: tuple[int, ...] = NOVELTY_SCALES) -> np.ndarray:
    """Foote checkerboard novelty at every bar boundary.

    Parameters
    ----------
    sim : np.ndarray
        ``(n, n)`` bar similarity in [0, 1].
    scales : tuple of int
        Kernel half-widths in bars. Kernels are Gaussian-tapered and truncated
        at the edges of the matrix; a scale needs at least two bars (or its
        half-width, if smaller) on each side of a boundary to count there.

    Returns
    -------
    np.ndarray
        ``(n + 1,)``; entry ``b`` is the novelty of the boundary before bar
        ``b``: weighted mean distance ``1 - sim`` across the boundary minus
        the mean distance within each side, in similarity units, averaged over
        the scales that fit; 0 at the ends and wherever it would be negative.
    """
    n = len(sim)
    total = np.zeros(n + 1)
    count = np.zeros(n + 1)
    b = np.arange(n + 1)
    for w in scales:
        pad = np.full((n + 2 * w, n + 2 * w), np.nan)
        pad[w:w + n, w:w + n] = 1.0 - sim
        # The window of boundary b spans bars b-w .. b+w-1, i.e. padded rows b .. b+2w-1.
        win = np.lib.stride_tricks.sliding_window_view(pad, (2 * w, 2 * w))[b, b]  # (n+1, 2w, 2w)
        g = np.exp(-0.5 * ((np.arange(2 * w) - w + 0.5) / (0.5 * w)) ** 2)
        weight = np.outer(g, g) * ~np.isnan(win)
        np.einsum("kii->ki", weight)[:] = 0.0  # a bar's distance to itself says nothing
        d = np.nan_to_num(win)

        def block(rs: slice, cs: slice) -> np.ndarray:
            wsum = weight[:, rs, cs].sum(axis=(1, 2))
            return (weight[:, rs, cs] * d[:, rs, cs]).sum(axis=(1, 2)) / np.maximum(wsum, 1e-12)

        lo, hi = slice(0, w), slice(w, 2 * w)
        value = block(lo, hi) - 0.5 * (block(lo, lo) + block(hi, hi))
        need = min(2, w)
        ok = (b >= need) & (n - b >= need)
        total[ok] += value[ok]
        count[ok] += 1
    out = np.where(count > 0, total / np.maximum(count, 1), 0.0)
    out[0] = out[-1] = 0.0
    return np.maximum(out, 0.0)


def repetition_novelty(sim: np.ndarray, max_lag: int = REPETITION_MAX_LAG) -> np.ndarray:
    """Novelty from broken repetition: does the music after a boundary continue the loop before it?

    Within a looping section (a 2-, 4- or 8-bar progression), some lag ``d``
    makes bar ``i`` and bar ``i + d`` alike wherever the pair sits. At a
    section change, no lag pairs bars across the boundary as well as bars
    inside either side. Foote's block novelty misses this when a section's
    bars differ from one another (a chord progression) but repeat.

    Parameters
    ----------
    sim : np.ndarray
        ``(n, n)`` bar similarity in [0, 1].
    max_lag : int
        Longest loop considered, in bars; also the window on each side.

    Returns
    -------
    np.ndarray
        ``(n + 1,)``: for the boundary before bar ``b``, the mean over both
        sides of the best within-side lag similarity minus the best
        across-boundary lag similarity, clipped at 0 (similarity units).
    """
    n = len(sim)
    b = np.arange(n + 1)
    across = np.full(n + 1, -np.inf)
    left = np.full(n + 1, -np.inf)
    right = np.full(n + 1, -np.inf)
    for d in range(1, min(max_lag, n - 1) + 1):
        diag = np.diagonal(sim, d)  # diag[i] = sim[i, i + d], i < n - d
        csum = np.concatenate([[0.0], np.cumsum(diag)])

        def mean(lo: np.ndarray, hi: np.ndarray, min_pairs: int) -> np.ndarray:
            lo, hi = np.clip(lo, 0, len(diag)), np.clip(hi, 0, len(diag))
            cnt = hi - lo
            return np.where(cnt >= min_pairs, (csum[hi] - csum[lo]) / np.maximum(cnt, 1), -np.inf)

        across = np.maximum(across, mean(b - d, b, 1))  # pairs (i, i + d) with i < b <= i + d
        left = np.maximum(left, mean(b - max_lag, b - d, 2))  # both bars before b
        right = np.maximum(right, mean(b, b + max_lag - d, 2))  # both bars from b on
    ok = np.isfinite(left) & np.isfinite(right) & np.isfinite(across)
    out = np.zeros(n + 1)
    out[ok] = 0.5 * (left[ok] + right[ok]) - across[ok]
    return np.maximum(out, 0.0)


# ------------------------------------------------------------------ boundaries


def grid_prior(n_edges: int, first: int, novelty: np.ndarray) -> np.ndarray:
    """Weight of each bar boundary by the phrase grid it lies on.

    The grid's phase is the first downbeat (edge ``first``) unless another
    phase of the 4-bar grid collects at least 1.5x as much novelty, as
    happens when the tracker's first downbeat is not a phrase start.
    """
    idx = np.arange(n_edges)
    real = idx >= first
    mass = np.array([novelty[real & ((idx - first) % 4 == k)].sum() for k in range(4)])
    phase = first
    if mass.max() > 1.5 * mass[0]:
        phase = first + int(np.argmax(mass))
    rel = idx - phase
    prior = np.full(n_edges, GRID_PRIOR[1])
    for step in (2, 4, 8):
        prior[rel % step == 0] = GRID_PRIOR[step]
    return prior


def pick_boundaries(score: np.ndarray, candidates: np.ndarray, novelty: np.ndarray | None = None,
                    min_bars: int = MIN_SEGMENT_BARS) -> list[int]:
    """Greedy peak picking: strongest first, at least ``min_bars`` apart.

    Parameters
    ----------
    score : np.ndarray
        Weighted novelty per bar edge.
    candidates : np.ndarray
        Edge indices that may become boundaries.
    novelty : np.ndarray, optional
        Raw novelty for the absolute threshold (defaults to ``score``).
    min_bars : int
        Smallest distance between two chosen boundaries, in bars.

    Returns
    -------
    list of int
        Sorted edge indices. A boundary is taken only if it is the highest
        score within two bars, reaches ``PEAK_REL_THRESHOLD`` times the mean
        of the three strongest peaks of ``score`` and has a raw novelty of at
        least ``PEAK_ABS_THRESHOLD``.
    """
    raw = score if novelty is None else novelty
    cand = np.asarray(candidates, dtype=int)
    peaks = score[1:-1][(score[1:-1] >= score[:-2]) & (score[1:-1] >= score[2:]) & (score[1:-1] > 0)]
    if cand.size == 0 or peaks.size == 0:
        return []
    # The reference is the mean of the three strongest peaks, not the single
    # strongest, so one extreme change (a silent break) does not mute the rest.
    top = float(np.mean(np.sort(peaks)[-3:]))
    chosen: list[int] = []
    for b in cand[np.argsort(-score[cand], kind="stable")]:
        if score[b] < PEAK_REL_THRESHOLD * top or raw[b] < PEAK_ABS_THRESHOLD:
            break
        # A peak must dominate its neighbourhood, else it is the shoulder of
        # a boundary already taken or about to be.
        if score[b] < score[max(0, b - 2):b + 3].max():
            continue
        if any(abs(b - c) < min_bars for c in chosen):
            continue
        chosen.append(int(b))
    return sorted(chosen)


# ---------------------------------------------------------------------- labels


def segment_similarity(sim: np.ndarray, bounds: list[int]) -> np.ndarray:
    """Similarity between segments: mean bar-by-bar similarity, aligned at starts or ends.

    Parameters
    ----------
    sim : np.ndarray
        ``(n, n)`` bar similarity.
    bounds : list of int
        Segment edges in bars, ``[0, ..., n]``.

    Returns
    -------
    np.ndarray
        ``(k, k)`` with ones on the diagonal.
    """
    k = len(bounds) - 1
    out = np.eye(k)
    for i in range(k):
        for j in range(i + 1, k):
            a0, a1, b0, b1 = bounds[i], bounds[i + 1], bounds[j], bounds[j + 1]
            m = min(a1 - a0, b1 - b0)
            start = np.mean(sim[np.arange(a0, a0 + m), np.arange(b0, b0 + m)])
            end = np.mean(sim[np.arange(a1 - m, a1), np.arange(b1 - m, b1)])
            out[i, j] = out[j, i] = max(start, end)
    return out


def label_similarity(features: dict[str, np.ndarray], bounds: list[int]) -> np.ndarray:
    """Segment similarity for labelling: the lower of harmony and sound similarity.

    Two segments are the same section only if they play the same chords and
    melody (``harmony``) *and* sound the same (``timbre``, ``rhythm`` and
    ``energy`` averaged). Loop-based tracks often keep one progression
    through every section, so harmony alone would merge a breakdown with a
    drop; a verse and a chorus often share their sound, so sound alone would
    merge those.

    Returns
    -------
    np.ndarray
        ``(k, k)`` with ones on the diagonal.
    """
    harmony = segment_similarity(group_similarity(features, "harmony"), bounds)
    sound = np.mean([group_similarity(features, g) for g in ("timbre", "rhythm", "energy")], axis=0)
    return np.minimum(harmony, segment_similarity(sound, bounds))


def cluster_labels(seg_sim: np.ndarray, threshold: float = LABEL_SIMILARITY) -> list[str]:
    """Average-linkage clustering of segments; labels ``A``, ``B``, ... by first appearance."""
    k = len(seg_sim)
    if k == 1:
        return ["A"]
    from scipy.cluster.hierarchy import fcluster, linkage
    from scipy.spatial.distance import squareform

    dist = squareform(1.0 - seg_sim, checks=False)
    ids = fcluster(linkage(dist, method="average"), t=1.0 - threshold, criterion="distance")
    names: dict[int, str] = {}
    letters = string.ascii_uppercase
    for c in ids:
        if c not in names:
            n = len(names)
            names[c] = letters[n] if n < 26 else letters[n // 26 - 1] + letters[n % 26]
    return [names[c] for c in ids]


# --------------------------------------------------------------------- phrases


def split_phrases(seg_bounds: list[int]) -> list[tuple[int, int]]:
    """Phrase edges in bars: each segment ``[s, e)`` split from ``s`` into 8 bars (16 if ≥ 32 bars)."""
    out = []
    for s, e in zip(seg_bounds[:-1], seg_bounds[1:]):
        step = LONG_PHRASE_BARS if e - s >= LONG_SEGMENT_BARS else PHRASE_BARS
        for p in range(s, e, step):
            out.append((p, min(p + step, e)))
    return out


def _inside(t: float, regions: list[tuple[float, float]], tol: float) -> bool:
    """True when ``t`` lies in a region, or a region starts less than ``tol`` s after it."""
    return any(s - tol <= t < e for s, e in regions)


def _regions(vocal_regions) -> list[tuple[float, float]]:
    out = []
    for r in vocal_regions:
        if hasattr(r, "start"):
            out.append((float(r.start), float(r.end)))
        else:
            out.append((float(r[0]), float(r[1])))
    return out


# ------------------------------------------------------------------------ main


def analyze_structure(y: np.ndarray, sr: int, beats: np.ndarray, downbeats: np.ndarray, beats_per_bar: int,
                      duration_s: float | None = None, vocal_regions=None) -> Structure:
    """Segments, phrases and mix points of a track with a known beat grid.

    Parameters
    ----------
    y : np.ndarray
        Mono float signal (stereo ``(frames, 2)`` is averaged).
    sr : int
        Sample rate of ``y`` in Hz (any; 22050 is what the pipeline passes).
    beats : np.ndarray
        Beat times in seconds; used only when there are too few downbeats.
    downbeats : np.ndarray
        Downbeat (bar start) times in seconds.
    beats_per_bar : int
        Beats per bar of the grid.
    duration_s : float, optional
        Track length in seconds; defaults to ``len(y) / sr``.
    vocal_regions : sequence of (start, end) or objects with ``.start``/``.end``, optional
        Vocal activity in seconds; ``mix_out`` avoids starting inside one.

    Returns
    -------
    Structure
    """
    y = np.asarray(y, dtype=np.float32)
    if y.ndim == 2:  # (frames, channels) or (channels, frames)
        y = y.mean(axis=int(np.argmin(y.shape)))
    duration = float(duration_s) if duration_s is not None else len(y) / sr
    bpb = max(1, int(beats_per_bar))
    db = np.unique(np.asarray(downbeats, dtype=float))
    db = db[(db >= 0) & (db < duration)]
    if len(db) < 2:
        bt = np.unique(np.asarray(beats, dtype=float))
        bt = bt[(bt >= 0) & (bt < duration)]
        db = bt[::bpb]
    if len(db) < 2 or len(y) < sr:
        return _trivial(db, duration)

    edges, first, last = bar_edges(db, duration)
    n = len(edges) - 1
    feats = bar_features(y, sr, edges, bpb)
    sim = self_similarity(feats)
    nov = novelty_curve(sim) + repetition_novelty(group_similarity(feats, "harmony"))
    score = nov * grid_prior(n + 1, first, nov)

    # Boundaries only at real downbeats (extrapolated bars only give context),
    # leaving MIN_SEGMENT_BARS to either end of the signal. A lead-in of two
    # bars or more may become a segment of its own, when it differs from what
    # follows.
    cand = np.arange(max(first + 1, MIN_SEGMENT_BARS), min(last, n - MIN_SEGMENT_BARS + 1))
    if first >= 2:
        cand = np.concatenate([[first], cand])
    cuts = [0] + [b for b in pick_boundaries(score, cand, novelty=nov) if b > 0] + [n]
    labels = cluster_labels(label_similarity(feats, cuts))

    seg_times = [edges[c] for c in cuts]
    seg_times[0], seg_times[-1] = 0.0, duration
    segments = [Segment(float(a), float(b), lab) for a, b, lab in zip(seg_times[:-1], seg_times[1:], labels)]

    # Phrases live on real bars [first, last); segment starts before the first
    # downbeat are clamped to it.
    phrase_bounds = sorted({min(max(c, first), last) for c in cuts})
    phrase_bars = split_phrases(phrase_bounds)
    phrases = [Phrase(float(edges[a]), float(edges[b]), b - a) for a, b in phrase_bars]

    bands = feats["bands"]
    band_rel = np.clip(bands - np.percentile(bands, 95, axis=0), -SILENT_DB, 0.0)
    intensity = band_rel.mean(axis=1)  # dB, 0 = every band at its loud level
    loud = feats["energy"][:, 0]

    mix_in = _mix_in(phrase_bars, edges, loud)
    mix_out = _mix_out(phrase_bars, cuts, edges, first, last, intensity, bpb, vocal_regions)
    real = slice(first, last)
    energy = np.clip(1.0 + (intensity - intensity[real].max()) / SILENT_DB, 0.0, 1.0)
    energy[loud < SILENCE_DBFS] = 0.0
    energy = energy[real]
    novelty = nov[first:last] / max(nov[first:last + 1].max(), 1e-9)
    return Structure(segments, phrases, mix_in, mix_out, bar_starts=edges[first:last].copy(),
                     energy=energy, novelty=novelty)


def _trivial(db: np.ndarray, duration: float) -> Structure:
    """One segment and no usable grid: phrases only if there are downbeats at all."""
    start = float(db[0]) if len(db) else 0.0
    phrases = [Phrase(start, duration, len(db))] if len(db) else []
    return Structure([Segment(0.0, duration, "A")], phrases, start, start)


def _mix_in(phrase_bars: list[tuple[int, int]], edges: np.ndarray, loud: np.ndarray) -> float:
    audible = (loud >= loud.max() - SILENT_DB) & (loud >= SILENCE_DBFS)
    for a, b in phrase_bars:
        if audible[a:b].any():
            return float(edges[a])
    return float(edges[phrase_bars[0][0]])


def _mix_out(phrase_bars: list[tuple[int, int]], cuts: list[int], edges: np.ndarray, first: int, last: int,
             intensity: np.ndarray, bpb: int, vocal_regions) -> float:
    """``mix_out`` by the rule of the module docstring; bar indices are edge indices."""
    starts = np.array([a for a, _ in phrase_bars])
    level = np.array([intensity[a:b].mean() for a, b in zip(cuts[:-1], cuts[1:])])
    outro_like = level <= level.max() - OUTRO_DROP_DB
    # The outro is the run of outro-like segments at the end, grown backwards
    # only until it is long enough: an earlier quiet part (a breakdown) is no outro.
    out = None
    k = len(level) - 1
    while k > 0 and outro_like[k]:
        start = max(cuts[k], first)
        if last - start >= MIX_OUT_BARS:
            out = start
            break
        k -= 1
    if out is None:
        ok = starts[last - starts >= MIX_OUT_BARS]
        out = int(ok.max()) if ok.size else int(starts[0])
    if vocal_regions is not None:
        regions = _regions(vocal_regions)
        tol = 0.5 * float(np.median(np.diff(edges))) / bpb  # half a beat
        if _inside(edges[out], regions, tol):
            cand = starts[(starts >= out - 2 * MIX_OUT_BARS) & (last - starts >= PHRASE_BARS) & (starts > starts[0])]
            free = [int(p) for p in cand if not _inside(edges[p], regions, tol)]
            if free:
                # Nearest first; on a tie the earlier start leaves more room.
                out = min(free, key=lambda p: (abs(p - out), p))
    return float(edges[out])
