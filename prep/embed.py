"""Similarity embeddings: one fixed-layout float32 vector per track, from its stems, its analysis and its audio.

The vector describes how a track *sounds and moves*, for "play something like this next" and for
playlists (:mod:`prep.similarity`). It is made of named parts, each a few hand-made features:

========  ====  ======  ==================================================================================
part      dims  weight  features (raw values, before standardisation)
========  ====  ======  ==================================================================================
drums       28    1.0   timbre of the drums stem: MFCC 1-12 mean and std, log2 spectral centroid mean and
bass        28    0.8   std, spectral flatness (dB) mean, level (dB relative to the mix); the same for
vocals      28    0.6   each stem, over the frames where that stem plays in full (within 12 dB of its
other       28    0.7   own 95th percentile). A stem that never sounds has only its level (-60 dB)
rhythm      81    1.4   onset pattern per bar: 16 slots (four per beat) of the drums stem's low
                        (kick, < 150 Hz), mid (snare, 150-2500 Hz) and high (hats, > 5 kHz) bands, the bass
                        stem and the vocals + other stems (comping), each averaged over every bar of the
                        beat grid and divided by its mean (tempo- and level-invariant); then drum density
                        (share of the slots above 0.6 of the mean)
tempo       13    0.8   tempo as a soft histogram: 12 Gaussian bumps 1/6 octave apart from 60 to 214 BPM
                        (σ 1/6 octave), so nearby tempos agree smoothly and far ones not at all; triple
                        meter (1 for 3/4). Not standardised (already on a common scale)
harmony     14    0.8   chroma profile of the pitched stems (bass, vocals, other), **key-relative** (index
                        0 is the tonic of the analysed key), L1-normalised; minor (1) or major (0); chroma
                        entropy (bits)
energy       6    0.5   peak-to-loudness ratio (true peak - LUFS, dB: how hard it is mastered), dynamics
                        (10th to 90th percentile of frame level, dB), share of the power below 150 Hz,
                        150-2500 Hz and above 2500 Hz (dB), onset strength (mean spectral flux, dB per
                        frame). All gain-invariant: the same recording at another level is the same track
vocal        3    0.5   from the analysis' vocal regions: share of the track with vocals, regions per
                        minute, log2(1 + mean region length in seconds)
========  ====  ======  ==================================================================================

Harmony is key-relative on purpose: whether two keys mix is the Camelot term of the suggestions
(:mod:`prep.similarity`), so the embedding describes the harmonic colour (mode, chord vocabulary,
how chromatic) and two tracks of one style in different keys stay close.

Each raw feature is standardised with fixed reference statistics (:mod:`prep.embed_reference`,
fitted by :func:`fit_reference` on generated music; a missing feature becomes 0, the reference
mean), clipped to ±5, each part is scaled by ``weight / sqrt(dims)`` so that its share of the vector
follows its weight and not its size, and the whole vector is L2-normalised. The dot product of two
embeddings is then their cosine similarity, a sum of the parts' agreements weighted as in the table,
and :func:`part_similarity` says which parts agree.

Stems of the DSP separator (what prep uses without demucs weights) leak into each other, which shifts
every stem feature: they have their own reference statistics (``features["source"] == "dsp"``), as
does the mix alone. Without stems (a crate prepared with ``--separator none``) each stem part
describes the mix, and the vocal
part is missing; such embeddings use their own reference statistics and compare well with each other,
less well with ones made from stems (``features["source"]`` says which).

The prep step ``embed`` (:data:`STEP`, on by default) stores one row per track in the crate's
``embeddings`` table: the vector as a float32 blob, the raw features as JSON by part, and
:data:`EMBED_VERSION`. It costs about a fifth of the analysis' CPU time (``ate bench similarity``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from prep.audio import SAMPLE_RATE, resample
from prep.steps import PrepStep, TrackInput, register
from prep.stems import STEM_NAMES

__all__ = ["EMBED_VERSION", "PARTS", "DIM", "PART_SLICES", "Embedding", "embed_audio", "embed_track",
           "standardise", "part_similarity", "slice_analysis", "bar_pattern", "store_embedding",
           "embedded_hashes", "load_embeddings", "get_embedding", "embeddings_fingerprint", "fit_reference", "STEP",
           "tempo_features"]

EMBED_VERSION = 1
"""Bumped when the layout or the features change: ``ate prep`` then re-embeds every track."""

PARTS: tuple[tuple[str, int, float, str], ...] = (
    ("drums", 28, 1.0, "drums"),
    ("bass", 28, 0.8, "bass"),
    ("vocals", 28, 0.6, "vocals"),
    ("other", 28, 0.7, "instruments"),
    ("rhythm", 81, 1.4, "rhythm"),
    ("tempo", 13, 0.8, "tempo"),
    ("harmony", 14, 0.8, "harmony"),
    ("energy", 6, 0.5, "energy"),
    ("vocal", 3, 0.5, "vocal presence"),
)
"""The layout: ``(name, dims, weight, words for a reason)`` in vector order."""

DIM = sum(p[1] for p in PARTS)
"""Length of an embedding (229)."""

PART_SLICES: dict[str, slice] = {}
_start = 0
for _name, _dims, _, _ in PARTS:
    PART_SLICES[_name] = slice(_start, _start + _dims)
    _start += _dims
del _start, _name, _dims

FEATURE_SR = 22050
"""Sample rate the features are computed at, in Hz (timbre above 11 kHz adds little and costs double)."""
N_FFT = 2048
HOP = 512
"""STFT hop, in samples at :data:`FEATURE_SR` (23 ms: four slots per beat stay apart up to 320 BPM)."""
N_MELS = 64
N_MFCC = 12
SLOTS = 16
"""Onset-pattern slots per bar: four per beat of a 4/4 bar (a 3/4 bar fills the first twelve)."""
ACTIVE_DB = 40.0
"""A stem sounds in a frame whose power is within this many dB of the mix's 95th percentile frame."""
STEM_ACTIVE_DB = 12.0
"""A stem's timbre is taken over its frames within this many dB of its own 95th percentile: where it plays in full."""
FLOOR_DB = -60.0
"""Level given to a stem that never sounds, in dB relative to the mix."""
CLIP_Z = 5.0
"""Standardised features are clipped to ±this: one extreme value must not decide a whole part."""

_DRUM_BANDS_HZ = {"kick": (0.0, 150.0), "snare": (150.0, 2500.0), "hats": (5000.0, FEATURE_SR / 2)}
_ENERGY_BANDS_HZ = ((0.0, 150.0), (150.0, 2500.0), (2500.0, FEATURE_SR / 2))
_CHUNK_FRAMES = 2048  # STFT frames per chunk: bounded memory for long tracks


@dataclass(frozen=True)
class Embedding:
    """One track's embedding.

    Attributes
    ----------
    vector : ndarray
        float32 ``(DIM,)``, unit length.
    raw : ndarray
        float64 ``(DIM,)``, the features before standardisation (NaN where missing).
    source : str
        ``"stems"``, ``"dsp"`` (stems of the DSP separator) or ``"mix"`` (no stems: the stem parts describe
        the mix).
    """

    vector: np.ndarray
    raw: np.ndarray
    source: str

    def features(self) -> dict:
        """JSON-ready record: version, source and the raw features by part (None where missing)."""
        parts = {name: [None if not math.isfinite(v) else round(float(v), 5) for v in self.raw[sl]]
                 for name, sl in PART_SLICES.items()}
        return {"version": EMBED_VERSION, "source": self.source, "dim": DIM, "parts": parts}


# --------------------------------------------------------------------------- spectra


_filters: dict[str, np.ndarray] = {}

CHROMA_BAND_HZ = (100.0, 5000.0)
"""Spectral peaks that count for the chroma, in Hz: below 100 Hz a 2048-point STFT cannot tell semitones apart."""
CHROMA_PEAK_DB = 40.0
"""Peaks more than this below their frame's strongest one are left out of the chroma (leakage, noise)."""


def _filterbanks() -> tuple[np.ndarray, np.ndarray]:
    """Mel filterbank ``(N_MELS, bins)`` and the mel bands' centre frequencies (Hz)."""
    if not _filters:
        import librosa

        _filters["mel"] = librosa.filters.mel(sr=FEATURE_SR, n_fft=N_FFT, n_mels=N_MELS, fmin=30.0).astype(np.float32)
        _filters["mel_hz"] = librosa.mel_frequencies(n_mels=N_MELS + 2, fmin=30.0, fmax=FEATURE_SR / 2)[1:-1]
    return _filters["mel"], _filters["mel_hz"]


def _peak_chroma(power: np.ndarray) -> np.ndarray:
    """Chroma ``(12, frames)`` (0 = C) from the spectral peaks of ``power`` ``(frames, bins)``.

    Each local maximum of a frame's spectrum within :data:`CHROMA_BAND_HZ` and :data:`CHROMA_PEAK_DB`
    of the frame's strongest peak adds its magnitude to the pitch class of its frequency (refined by
    parabolic interpolation, equal temperament at A = 440 Hz). Much sharper than a filterbank chroma,
    which smears every partial over its neighbours.
    """
    lo = max(1, int(CHROMA_BAND_HZ[0] * N_FFT / FEATURE_SR) - 1)
    hi = min(power.shape[1] - 1, int(CHROMA_BAND_HZ[1] * N_FFT / FEATURE_SR) + 2)
    p = power[:, lo - 1:hi + 1]
    a, b, c = p[:, :-2], p[:, 1:-1], p[:, 2:]
    peak = (b > a) & (b >= c) & (b > p.max(axis=1, keepdims=True) * 10 ** (-CHROMA_PEAK_DB / 10))
    rows, cols = np.nonzero(peak)
    la, lb, lc = (np.log(np.maximum(x[rows, cols], 1e-30)) for x in (a, b, c))
    den = la - 2 * lb + lc
    delta = np.clip(0.5 * (la - lc) / np.where(np.abs(den) > 1e-9, den, -1e-9), -0.5, 0.5)
    freq = (cols + lo + delta) * (FEATURE_SR / N_FFT)
    keep = (freq >= CHROMA_BAND_HZ[0]) & (freq <= CHROMA_BAND_HZ[1])
    rows, cols, freq = rows[keep], cols[keep], freq[keep]
    pc = (np.round(12 * np.log2(freq / 440.0)).astype(int) + 9) % 12
    n = power.shape[0]
    chroma = np.bincount(pc * n + rows, weights=np.sqrt(b[rows, cols]), minlength=12 * n)
    return chroma.reshape(12, n).astype(np.float32)


def _spectra(y: np.ndarray, chroma: bool) -> tuple[np.ndarray, np.ndarray | None]:
    """Mel power ``(N_MELS, frames)`` and, if asked, chroma ``(12, frames)`` of mono ``y`` at FEATURE_SR.

    Frame ``f`` is centred on sample ``f * HOP``; computed in chunks so a long track needs little memory.
    """
    from scipy.fft import rfft

    mel_fb, _ = _filterbanks()
    pad = N_FFT // 2
    yp = np.pad(np.asarray(y, np.float32), (pad, pad))
    n_frames = 1 + (len(yp) - N_FFT) // HOP if len(yp) >= N_FFT else 0
    window = np.hanning(N_FFT + 1)[:-1].astype(np.float32)
    frames = np.lib.stride_tricks.sliding_window_view(yp, N_FFT)[::HOP][:n_frames]
    mel = np.empty((n_frames, N_MELS), np.float32)
    chr_ = np.empty((12, n_frames), np.float32) if chroma else None
    for f0 in range(0, n_frames, _CHUNK_FRAMES):
        spec = rfft(frames[f0:f0 + _CHUNK_FRAMES] * window, axis=1)
        power = spec.real ** 2
        power += spec.imag ** 2
        mel[f0:f0 + _CHUNK_FRAMES] = power @ mel_fb.T
        if chr_ is not None:
            chr_[:, f0:f0 + _CHUNK_FRAMES] = _peak_chroma(power)
    return np.ascontiguousarray(mel.T), chr_


def _db(x: np.ndarray) -> np.ndarray:
    return 10.0 * np.log10(np.maximum(x, 1e-12))


def _flux(mel: np.ndarray, rows: np.ndarray | None = None) -> np.ndarray:
    """Onset envelope: positive change of the log-mel spectrum per frame, summed over ``rows`` (dB per frame)."""
    m = mel if rows is None else mel[rows]
    if m.shape[0] == 0 or m.shape[1] < 2:
        return np.zeros(m.shape[1], np.float32)
    level = _db(m)
    level = np.maximum(level, level.max() - 80.0)   # below -80 dB of the peak only noise changes
    flux = np.zeros(m.shape[1], np.float32)
    flux[1:] = np.maximum(np.diff(level, axis=1), 0.0).sum(axis=0)
    return flux


# --------------------------------------------------------------------------- rhythm


def _beat_positions(beats: np.ndarray, downbeats: np.ndarray, beats_per_bar: int) -> np.ndarray:
    """Position of each beat in its bar (0 = downbeat), from the analysis' downbeats; -1 where irregular."""
    n = len(beats)
    if n == 0:
        return np.zeros(0, int)
    if len(downbeats) == 0:
        return np.arange(n) % beats_per_bar
    # Downbeats are beats of the grid: the nearest beat of each.
    idx = np.unique(np.clip(np.searchsorted(beats, downbeats - 1e-3), 0, n - 1))
    last = np.searchsorted(idx, np.arange(n), side="right") - 1
    pos = np.where(last >= 0, np.arange(n) - idx[np.maximum(last, 0)], (np.arange(n) - idx[0]) % beats_per_bar)
    return np.where(pos < beats_per_bar, pos, -1)


def bar_pattern(envelope: np.ndarray, frame_rate_hz: float, beats_s: np.ndarray, downbeats_s: np.ndarray,
                beats_per_bar: int, slots_per_beat: int = 4) -> np.ndarray:
    """The average onset pattern of one bar, sampled on the beat grid.

    Each beat is cut into ``slots_per_beat`` equal slots (so the pattern does not depend on the tempo,
    and a drifting tempo is followed); a slot takes the envelope's maximum over its width, centred
    on its nominal time; slots are averaged over every bar and the pattern is divided by its mean.

    Parameters
    ----------
    envelope : ndarray
        Onset strength per frame.
    frame_rate_hz : float
        Frames per second of ``envelope``.
    beats_s, downbeats_s : ndarray
        Beat and downbeat times, in seconds.
    beats_per_bar : int
        3 or 4 (at most ``SLOTS / slots_per_beat``).
    slots_per_beat : int
        Slots per beat.

    Returns
    -------
    ndarray
        ``(SLOTS,)``: mean 1 over the bar's ``beats_per_bar * slots_per_beat`` slots, 0 after them; all
        NaN when the grid has no whole beat or the envelope is silent on it.
    """
    out = np.full(SLOTS, np.nan)
    beats = np.asarray(beats_s, np.float64)
    bpb = int(min(max(beats_per_bar, 1), SLOTS // slots_per_beat))
    if len(beats) < 2 or len(envelope) == 0:
        return out
    pos = _beat_positions(beats, np.asarray(downbeats_s, np.float64), bpb)
    sums = np.zeros(bpb * slots_per_beat)
    counts = np.zeros(bpb * slots_per_beat)
    n = len(envelope)
    for j in range(len(beats) - 1):
        if pos[j] < 0:
            continue
        width_s = (beats[j + 1] - beats[j]) / slots_per_beat
        for k in range(slots_per_beat):
            centre = beats[j] + k * width_s
            a = int(math.floor((centre - width_s / 2) * frame_rate_hz))
            b = int(math.ceil((centre + width_s / 2) * frame_rate_hz))
            a, b = max(a, 0), min(b, n)
            if b > a:
                slot = pos[j] * slots_per_beat + k
                sums[slot] += float(envelope[a:b].max())
                counts[slot] += 1
    if not counts.any():
        return out
    pattern = np.where(counts > 0, sums / np.maximum(counts, 1), 0.0)
    mean = pattern.mean()
    if mean <= 1e-9:
        return out
    out[:] = 0.0
    out[: len(pattern)] = pattern / mean
    return out


# --------------------------------------------------------------------------- the features

TEMPO_CENTRES_BPM = 60.0 * 2.0 ** (np.arange(12) / 6.0)
"""Centres of the tempo histogram's bumps, in BPM (60 ... 214)."""
TEMPO_SIGMA_OCTAVES = 1.0 / 6.0


def tempo_features(bpm: float, beats_per_bar: int) -> np.ndarray:
    """The tempo part: 12 Gaussian bumps over log2 tempo and a triple-meter flag (NaN bumps when unknown)."""
    out = np.zeros(13)
    if bpm > 0 and math.isfinite(bpm):
        out[:12] = np.exp(-0.5 * ((np.log2(bpm / TEMPO_CENTRES_BPM)) / TEMPO_SIGMA_OCTAVES) ** 2)
    else:
        out[:12] = np.nan
    out[12] = float(beats_per_bar == 3)
    return out



def _timbre(mel: np.ndarray, active: np.ndarray, level_db: float) -> np.ndarray:
    """28 timbre features of one stem over its active frames (NaN but the level when it never sounds)."""
    from scipy.fft import dct

    out = np.full(28, np.nan)
    out[27] = level_db
    if active.sum() < 4:
        return out
    m = mel[:, active]
    level = _db(m)
    level = np.maximum(level, level.max() - 80.0)
    cep = dct(level, type=2, norm="ortho", axis=0)[1:N_MFCC + 1]
    out[0:12] = cep.mean(axis=1)
    out[12:24] = cep.std(axis=1)
    _, mel_hz = _filterbanks()
    total = np.maximum(m.sum(axis=0), 1e-12)
    centroid = np.log2(np.maximum((mel_hz[:, None] * m).sum(axis=0) / total, 1.0))
    out[24] = centroid.mean()
    out[25] = centroid.std()
    flatness = np.exp(np.log(np.maximum(m, 1e-12)).mean(axis=0)) / (total / m.shape[0])
    out[26] = _db(flatness).mean()
    return out


def _key_tonic(analysis: dict) -> tuple[int, float]:
    """Tonic pitch class (0 when unknown) and minor flag (NaN when unknown) of the analysed key."""
    from prep.key import parse_key

    try:
        tonic, mode = parse_key(analysis.get("key") or "")
    except ValueError:
        return 0, math.nan
    return tonic, float(mode == "minor")


def _vocal_features(analysis: dict, duration_s: float) -> np.ndarray:
    regions = analysis.get("vocal_regions")
    if regions is None or duration_s <= 0:
        return np.full(3, np.nan)
    lengths = np.array([max(0.0, float(b) - float(a)) for a, b in regions])
    share = float(lengths.sum() / duration_s) if len(lengths) else 0.0
    per_minute = len(lengths) / (duration_s / 60.0)
    mean_len = float(lengths.mean()) if len(lengths) else 0.0
    return np.array([min(share, 1.0), per_minute, math.log2(1.0 + mean_len)])


def _source(stems: np.ndarray | None, stems_model: str) -> str:
    """Which reference statistics fit: ``"mix"`` (no stems), ``"dsp"`` (the DSP separator's rough stems, whose
    leakage shifts every stem feature) or ``"stems"`` (demucs, imported or true stems)."""
    if stems is None:
        return "mix"
    return "dsp" if stems_model == "dsp" else "stems"


def _raw_features(mix: np.ndarray, stems: np.ndarray | None, analysis: dict) -> np.ndarray:
    """The ``(DIM,)`` raw feature vector (NaN where missing)."""
    sources = [stems[i] for i in range(len(STEM_NAMES))] if stems is not None else [mix] * len(STEM_NAMES)
    mono = {}
    for name, x in zip(STEM_NAMES, sources):
        key = id(x)
        if key not in mono:
            # Not to_mono: numpy's mean over a 2-wide axis is several times slower than this.
            mono[key] = resample((0.5 * (x[:, 0] + x[:, 1]))[:, None], SAMPLE_RATE, FEATURE_SR)[:, 0]
    spectra: dict[int, tuple] = {}
    for name, x in zip(STEM_NAMES, sources):
        if id(x) not in spectra:
            spectra[id(x)] = _spectra(mono[id(x)], chroma=name != "drums" or stems is None)
    mels = {name: spectra[id(x)][0] for name, x in zip(STEM_NAMES, sources)}
    chromas = {name: spectra[id(x)][1] for name, x in zip(STEM_NAMES, sources)}
    n = min(m.shape[1] for m in mels.values())
    mels = {k: v[:, :n] for k, v in mels.items()}
    # The mix's power as the stems' (they sum to the mix; phases aside, powers add).
    mix_mel = mels["drums"] if stems is None else sum(mels.values())
    mix_power = mix_mel.sum(axis=0)
    mix_db = _db(mix_power)
    ref_db = float(np.percentile(mix_db, 95)) if n else 0.0
    mix_total = float(mix_power.sum()) + 1e-12
    raw = np.full(DIM, np.nan)
    for name in STEM_NAMES:
        power = mels[name].sum(axis=0)
        # A stem's timbre where it plays in full: not its fade-ins, nor the leakage a rough separator leaves
        # where it is silent, nor (the mix alone) the thinner intro and breakdown.
        power_db = _db(power)
        active = (power_db > ref_db - ACTIVE_DB) & (power_db > np.percentile(power_db, 95) - STEM_ACTIVE_DB)
        level_db = max(FLOOR_DB, float(_db(np.array(power.sum() / mix_total))))
        raw[PART_SLICES[name]] = _timbre(mels[name], active, level_db)

    # Rhythm: onset patterns on the beat grid.
    _, mel_hz = _filterbanks()
    frame_rate = FEATURE_SR / HOP
    beats = np.asarray(analysis.get("beats") or [], np.float64)
    downbeats = np.asarray(analysis.get("downbeats") or [], np.float64)
    bpb = int(analysis.get("beats_per_bar") or 4)
    envelopes = [_flux(mels["drums"], np.flatnonzero((mel_hz >= lo) & (mel_hz < hi)))
                 for lo, hi in _DRUM_BANDS_HZ.values()]
    envelopes.append(_flux(mels["bass"]))
    envelopes.append(_flux(mels["other"] if stems is None else mels["vocals"] + mels["other"]))
    patterns = [bar_pattern(e, frame_rate, beats, downbeats, bpb) for e in envelopes]
    rhythm = np.concatenate(patterns + [np.full(1, np.nan)])
    drums = np.nanmean(np.stack(patterns[:3]), axis=0) if np.isfinite(patterns[0]).any() else None
    if drums is not None:
        used = drums[: min(bpb, 4) * 4]
        rhythm[-1] = float((used > 0.6 * used.mean()).mean()) if used.mean() > 0 else np.nan
    raw[PART_SLICES["rhythm"]] = rhythm

    raw[PART_SLICES["tempo"]] = tempo_features(float(analysis.get("bpm") or 0.0), bpb)

    # Harmony: key-relative chroma of the pitched stems.
    chroma = sum(chromas[k][:, :n] for k in ("bass", "vocals", "other")) if stems is not None else chromas["drums"]
    pitched_db = _db(chroma.sum(axis=0))
    active = pitched_db > ref_db - ACTIVE_DB
    tonic, minor = _key_tonic(analysis)
    harmony = np.full(14, np.nan)
    if active.sum() >= 4:
        profile = chroma[:, active].sum(axis=1)
        profile = np.roll(profile / max(profile.sum(), 1e-12), -tonic)
        harmony[:12] = profile
        p = profile[profile > 0]
        harmony[13] = float(-(p * np.log2(p)).sum())
    harmony[12] = minor
    raw[PART_SLICES["harmony"]] = harmony

    # Energy: how hard it is mastered, dynamics, spectral balance, how much happens.
    active = mix_db > ref_db - ACTIVE_DB
    dynamics = float(np.percentile(mix_db[active], 90) - np.percentile(mix_db[active], 10)) if active.any() else np.nan
    bands = [float(_db(np.array(mix_mel[(mel_hz >= lo) & (mel_hz < hi)].sum() / (mix_mel.sum() + 1e-12))))
             for lo, hi in _ENERGY_BANDS_HZ]
    lufs, peak = analysis.get("lufs"), analysis.get("true_peak_dbtp")
    plr = float(peak) - float(lufs) if lufs is not None and peak is not None else np.nan
    flux = _flux(mix_mel)
    raw[PART_SLICES["energy"]] = [plr if math.isfinite(plr) else np.nan, dynamics, *bands,
                                  float(flux[active].mean()) if active.any() else np.nan]
    raw[PART_SLICES["vocal"]] = _vocal_features(analysis, len(mix) / SAMPLE_RATE) if stems is not None \
        else np.full(3, np.nan)
    return raw


def standardise(raw: np.ndarray, source: str = "stems") -> np.ndarray:
    """Raw features ``(..., DIM)`` to unit-length float32 embeddings (see the module docstring).

    Parameters
    ----------
    raw : ndarray
        Raw feature vectors (NaN where missing).
    source : str
        ``"stems"``, ``"dsp"`` or ``"mix"``: which reference statistics to use.
    """
    from prep.embed_reference import REFERENCE

    ref = REFERENCE.get(source) or REFERENCE["stems"]
    mean = np.asarray(ref["mean"], np.float64)
    std = np.asarray(ref["std"], np.float64)
    if mean.shape != (DIM,) or std.shape != (DIM,):
        raise RuntimeError(f"prep/embed_reference.py holds {mean.shape[0]} features, the layout {DIM}: "
                           "refit it with `python -m prep.embed --fit-reference`")
    z = (np.asarray(raw, np.float64) - mean) / std
    z = np.clip(np.nan_to_num(z, nan=0.0), -CLIP_Z, CLIP_Z)
    for name, dims, weight, _ in PARTS:
        z[..., PART_SLICES[name]] *= weight / math.sqrt(dims)
    norm = np.linalg.norm(z, axis=-1, keepdims=True)
    return (z / np.maximum(norm, 1e-12)).astype(np.float32)


def embed_audio(mix: np.ndarray, stems: np.ndarray | None, analysis: dict, stems_model: str = "") -> Embedding:
    """The embedding of a track.

    Parameters
    ----------
    mix : ndarray
        float32 ``(frames, 2)`` at 44.1 kHz.
    stems : ndarray or None
        float32 ``(4, frames, 2)`` in :data:`prep.stems.STEM_NAMES` order, or None (the stem parts then
        describe the mix).
    analysis : dict
        The analysis record (docs/analysis.md): beats, downbeats, beats_per_bar, bpm, key, lufs,
        true_peak_dbtp, vocal_regions are used.
    stems_model : str
        What made the stems (``"dsp"``, ``"demucs:htdemucs"``, ...): picks the reference statistics.
    """
    if stems is not None and (stems.shape[0] != len(STEM_NAMES) or stems.shape[1] != mix.shape[0]):
        raise ValueError(f"stems of shape {stems.shape} do not match audio of {mix.shape[0]} frames")
    if mix.shape[0] < N_FFT * 2:
        raise ValueError(f"too short to embed ({mix.shape[0]} frames)")
    source = _source(stems, stems_model)
    raw = _raw_features(mix, stems, analysis)
    return Embedding(standardise(raw, source), raw, source)


def embed_track(track: TrackInput) -> Embedding:
    """:func:`embed_audio` of a prep step's track input."""
    return embed_audio(track.mix, track.stems, track.analysis, track.stems_model)


def part_similarity(a: np.ndarray, b: np.ndarray) -> dict[str, float]:
    """Cosine similarity of two embeddings part by part: ``{part name: -1..1}`` (0 where a part is empty)."""
    out = {}
    for name, sl in PART_SLICES.items():
        x, y = a[sl], b[sl]
        d = float(np.linalg.norm(x) * np.linalg.norm(y))
        out[name] = float(x @ y) / d if d > 1e-12 else 0.0
    return out


def slice_analysis(analysis: dict, start_s: float, end_s: float) -> dict:
    """The analysis of a track restricted to ``[start_s, end_s)`` and shifted to start at 0, for an excerpt.

    Beats, downbeats and vocal regions are cut and shifted; tempo, key, meter and loudness are kept.
    """
    def cut(times: list) -> list[float]:
        return [float(t) - start_s for t in times or [] if start_s <= float(t) < end_s]

    out = dict(analysis)
    out["beats"] = cut(analysis.get("beats"))
    out["downbeats"] = cut(analysis.get("downbeats"))
    regions = analysis.get("vocal_regions")
    if regions is not None:
        out["vocal_regions"] = [[max(a, start_s) - start_s, min(b, end_s) - start_s] for a, b in regions
                                if b > start_s and a < end_s]
    out["duration"] = end_s - start_s
    return out


# --------------------------------------------------------------------------- the crate's embeddings table


def store_embedding(crate, content_hash: str, result: dict) -> None:
    """Write (or replace) a track's embedding row; called inside a crate transaction."""
    import json

    from prep.crate import now_iso

    vector = np.ascontiguousarray(result["vector"], dtype="<f4")
    if vector.shape != (DIM,):
        raise ValueError(f"{content_hash}: embedding of shape {vector.shape}, expected ({DIM},)")
    row = crate.connection.execute("SELECT id FROM tracks WHERE content_hash = ?", (content_hash,)).fetchone()
    if row is None:
        raise KeyError(f"{content_hash}: not in the crate")
    track_id = row[0]
    crate.connection.execute(
        "INSERT INTO embeddings (track_id, version, dim, vector, features, created_at) VALUES (?, ?, ?, ?, ?, ?) "
        "ON CONFLICT(track_id) DO UPDATE SET version = excluded.version, dim = excluded.dim, "
        "vector = excluded.vector, features = excluded.features, created_at = excluded.created_at",
        (track_id, EMBED_VERSION, DIM, vector.tobytes(), json.dumps(result["features"], allow_nan=False), now_iso()))


def embedded_hashes(crate) -> set[str]:
    """Content hashes of tracks with a current embedding (this version and layout)."""
    rows = crate.connection.execute("SELECT t.content_hash FROM embeddings e JOIN tracks t ON e.track_id = t.id "
                                    "WHERE e.version = ? AND e.dim = ?", (EMBED_VERSION, DIM))
    return {r[0] for r in rows}


def load_embeddings(crate) -> tuple[list[str], np.ndarray]:
    """Every current embedding of the crate: content hashes and float32 ``(n, DIM)`` vectors, by track id."""
    rows = crate.connection.execute("SELECT t.content_hash, e.vector FROM embeddings e JOIN tracks t "
                                    "ON e.track_id = t.id WHERE e.version = ? AND e.dim = ? ORDER BY t.id",
                                    (EMBED_VERSION, DIM)).fetchall()
    hashes = [r[0] for r in rows]
    vectors = np.frombuffer(b"".join(r[1] for r in rows), dtype="<f4").reshape(len(rows), DIM).astype(np.float32)
    return hashes, vectors


def get_embedding(crate, content_hash: str) -> tuple[np.ndarray, dict] | None:
    """A track's current embedding vector and features record, or None."""
    import json

    row = crate.connection.execute("SELECT e.vector, e.features FROM embeddings e JOIN tracks t ON e.track_id = t.id "
                                   "WHERE t.content_hash = ? AND e.version = ? AND e.dim = ?",
                                   (content_hash, EMBED_VERSION, DIM)).fetchone()
    if row is None:
        return None
    return np.frombuffer(row[0], dtype="<f4").astype(np.float32), json.loads(row[1])


def embeddings_fingerprint(crate) -> str:
    """A digest of which tracks have which current embedding: it changes when any is added, redone or removed."""
    import hashlib

    digest = hashlib.blake2b(f"{EMBED_VERSION}:{DIM}".encode(), digest_size=16)
    for h, created in crate.connection.execute(
            "SELECT t.content_hash, e.created_at FROM embeddings e JOIN tracks t ON e.track_id = t.id "
            "WHERE e.version = ? AND e.dim = ? ORDER BY t.id", (EMBED_VERSION, DIM)):
        digest.update(f"{h}{created}".encode())
    return digest.hexdigest()


# --------------------------------------------------------------------------- the prep step


def _run(track: TrackInput) -> dict:
    emb = embed_track(track)
    return {"vector": emb.vector, "features": emb.features()}


STEP = PrepStep("embed", run=_run, store=store_embedding, done=embedded_hashes, default=True,
                description="similarity embedding per track (timbre per stem, rhythm, harmony, energy, vocals)")
register(STEP)


# --------------------------------------------------------------------------- reference statistics


def fit_specs(n: int = 60, seed: int = 1000) -> list:
    """Varied generated tracks (every style, tempo range, key and mode) for :func:`fit_reference`."""
    from prep.synth import TrackSpec

    styles = {"house": (118, 130, 4), "breakbeat": (128, 150, 4), "dnb": (165, 178, 4), "hiphop": (70, 98, 4),
              "waltz": (90, 160, 3)}
    rng = np.random.default_rng(seed)
    specs = []
    names = list(styles)
    for i in range(n):
        style = names[i % len(names)]
        lo, hi, bpb = styles[style]
        structure = [["intro", 4], ["verse", 8], ["chorus", 8], ["breakdown", 4], ["outro", 4]]
        specs.append(TrackSpec(bpm=float(rng.uniform(lo, hi)), beats_per_bar=bpb, tonic=int(rng.integers(12)),
                               mode=("minor", "major")[int(rng.integers(2))], style=style, structure=structure,
                               swing=float(rng.choice([0.5, 0.5, 0.58])), seed=int(rng.integers(2 ** 31))))
    return specs


def fit_reference(n: int = 60, seed: int = 1000) -> dict:
    """Mean and standard deviation of every raw feature over generated music, per source.

    Tracks from :func:`fit_specs` are analysed and embedded as prep does three times: with their true
    stems (standing in for demucs), with stems of the DSP separator, and from the mix alone. A standard
    deviation is floored at a tenth of its part's median (a feature
    that barely varies in the reference must not be blown up by noise). ``python -m prep.embed
    --fit-reference`` writes the result to ``prep/embed_reference.py``.
    """
    from prep.analyze import analyze_audio
    from prep.dsp_separate import DspSeparator
    from prep.separate import separate_track
    from prep.synth import generate

    separator = DspSeparator()
    raws: dict[str, list[np.ndarray]] = {"stems": [], "dsp": [], "mix": []}
    for spec in fit_specs(n, seed):
        g = generate(spec)
        for source, stems in (("stems", np.stack([g.stems[k] for k in STEM_NAMES])),
                              ("dsp", separate_track(g.mix, separator)), ("mix", None)):
            raws[source].append(_raw_features(g.mix, stems, analyze_audio(g.mix, stems=stems).to_dict()))
    return reference_stats(raws)


def reference_stats(raws: dict[str, list[np.ndarray]]) -> dict:
    """``{source: {"mean": [...], "std": [...]}}`` of raw feature vectors by source (see :func:`fit_reference`)."""
    import warnings

    out = {}
    for source, rows in raws.items():
        x = np.stack(rows)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)   # the vocal part is all missing without stems
            mean = np.nan_to_num(np.nanmean(x, axis=0), nan=0.0)
            std = np.nan_to_num(np.nanstd(x, axis=0), nan=0.0)
        # The tempo part is on its own scale already: standardising the bumps would blow up the empty ones.
        mean[PART_SLICES["tempo"]], std[PART_SLICES["tempo"]] = 0.0, 1.0
        for name, sl in PART_SLICES.items():
            part = std[sl]
            floor = max(0.1 * float(np.median(part[part > 0])) if (part > 0).any() else 1.0, 1e-6)
            std[sl] = np.maximum(part, floor)
        out[source] = {"mean": [round(float(v), 6) for v in mean], "std": [round(float(v), 6) for v in std]}
    return out


def _write_reference(ref: dict, n: int, seed: int) -> None:
    from pathlib import Path

    lines = ['"""Reference statistics of the raw embedding features (prep/embed.py); generated, do not edit.',
             "",
             f"Written by ``python -m prep.embed --fit-reference`` (fit_reference(n={n}, seed={seed})): mean and",
             "standard deviation of each feature over generated music, per source (true stems, DSP stems,",
             "the mix alone).",
             f"Layout version {EMBED_VERSION}, {DIM} features.", '"""', "",
             "REFERENCE = {"]
    for source, stats in ref.items():
        lines.append(f"    {source!r}: {{")
        for key in ("mean", "std"):
            values = stats[key]
            lines.append(f"        {key!r}: [")
            for i in range(0, len(values), 8):
                lines.append("            " + ", ".join(repr(v) for v in values[i:i + 8]) + ",")
            lines.append("        ],")
        lines.append("    },")
    lines.append("}")
    Path(__file__).with_name("embed_reference.py").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description="maintenance of the similarity embedding")
    parser.add_argument("--fit-reference", action="store_true", help="refit prep/embed_reference.py")
    parser.add_argument("-n", type=int, default=60)
    parser.add_argument("--seed", type=int, default=1000)
    args = parser.parse_args()
    if args.fit_reference:
        _write_reference(fit_reference(args.n, args.seed), args.n, args.seed)
