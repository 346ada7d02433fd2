"""Tonal balance of a track and its stems, and EQ proposals that match one track's balance to another (auto-EQ).

A track's tonal balance is its long-term average spectrum in 28 third-octave bands (31.5 Hz - 16 kHz, levels in
dB of mean-square power, i.e. dBFS; 186 ms Hann frames), measured so that the arrangement does not read as tone:
each band is averaged only over the frames where that band sounds (within a gate of its own loud level, the 95th
percentile), so a band missing from a section does not pull that band's level down.

- **Stems** (gate :data:`STEM_GATE_DB`): each stem is measured alone, and the track's :data:`ARRANGEMENT` balance
  is the power sum of its stems': the full arrangement, each stem as it sounds when it plays. A breakdown without
  drums, or an intro of drums and bass only, changes how often a stem plays, not how it sounds. On a generated
  3-minute track with drums and bass muted over 40 % of it, the bands move by 0.17 dB on average (a plain
  long-term average: 1.36 dB); with vocals and other muted over its first half, 0.13 dB (plain: 0.79 dB).
- **The mix** (gate :data:`BAND_GATE_DB`; every track has this row): same tests 0.46 and 0.44 dB. The mix cannot
  do as well, since where an instrument is absent the others still fill its bands.

Two tracks are compared through their arrangements when both have stems, else through their mixes (the two
measures are not alike). A crate-wide target is the per-band median of the crate's balances, with their spread.

The engine's DJ EQ (``engine/dsp.py``, :class:`engine.dsp.DjEq`) is an isolator whose three bands are real,
non-negative fractions ``a_low(f) + a_mid(f) + a_high(f) = 1`` of the signal with one common allpass phase, so its
magnitude response is exactly ``|sum_i g_i a_i(f)|`` for linear band gains ``g_i`` (checked against the engine's
impulse response to 1e-6 dB). :func:`eq_response_db` evaluates it from the EQ's own coefficients, averaged over
each band, and :func:`match_eq` fits the three gains, bounded to what the EQ can do (:data:`MATCH_FLOOR_DB` to
+6 dB), to the level difference between the reference and the incoming track brought to the same loudness (as the
engine's auto-gain does), then shifts them together, as far as the range allows, so that the incoming track's
K-weighted loudness is kept.

The automix planner calls::

    from prep.tonal import crate_target, propose_eq, track_bands
    out, inc = track_bands(crate, outgoing_hash), track_bands(crate, incoming_hash)
    eq = propose_eq(out, inc, strength=0.7)        # {"eq_low_db": ..., "eq_mid_db": ..., "eq_high_db": ...}

and sends each value as a ``set`` command on the incoming deck. The prep step ``tonal`` (:data:`TONAL_STEP`)
stores the balances in the crate's ``tonal`` table; ``ate autoeq A B`` prints a proposal. docs/tonal.md has the
details and the figures of ``ate bench autoeq``.
"""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np

from prep.audio import SAMPLE_RATE
from prep.steps import PrepStep, register

__all__ = [
    "ARRANGEMENT",
    "BAND_CENTRES_HZ",
    "EQ_PARAMS",
    "TONAL_STEP",
    "TONAL_VERSION",
    "Balance",
    "EqMatch",
    "combine_balances",
    "crate_target",
    "eq_band_fractions",
    "eq_response_db",
    "fit_gains",
    "frame_band_power",
    "match_eq",
    "match_weights",
    "median_balance",
    "mix_balance",
    "propose_eq",
    "register_cli",
    "stem_balance",
    "store_track_bands",
    "tonal_done",
    "track_balance",
    "track_bands",
    "with_arrangement",
]

TONAL_VERSION = 1
"""Version of the tonal rows; the prep step redoes rows of an older version."""

N_FFT = 8192
"""Frame length, samples (186 ms at 44.1 kHz; 5.4 Hz bins, so the 31.5 Hz band holds a bin)."""

BANDS_PER_OCTAVE = 3
"""Band resolution (third octaves: 28 bands from 31.5 Hz to 16 kHz; finer bands measured no better)."""
LOWEST_HZ, HIGHEST_HZ = 1000.0 * 2.0 ** (-15.5 / 3.0), 1000.0 * 2.0 ** (12.5 / 3.0)
"""Edges of the analysed range, Hz: the outer edges of the third-octave bands 31.5 Hz and 16 kHz."""


def _make_bands(sample_rate: int = 44100) -> np.ndarray:
    """Band edges, Hz: a 1/BANDS_PER_OCTAVE-octave series over LOWEST_HZ..HIGHEST_HZ, where a band narrower than
    an FFT bin is merged into the next one (so every band holds a bin)."""
    n = round(math.log2(HIGHEST_HZ / LOWEST_HZ) * BANDS_PER_OCTAVE)
    series = LOWEST_HZ * 2.0 ** (np.arange(n + 1) / BANDS_PER_OCTAVE)
    freqs = np.fft.rfftfreq(N_FFT, 1.0 / sample_rate)
    edges = [series[0]]
    for e in series[1:]:
        if np.any((freqs >= edges[-1]) & (freqs < e)):
            edges.append(e)
    edges[-1] = series[-1]
    return np.asarray(edges)


BAND_EDGES_HZ = _make_bands()
"""Edges of the bands, Hz."""
BAND_CENTRES_HZ = np.sqrt(BAND_EDGES_HZ[:-1] * BAND_EDGES_HZ[1:])
"""Centres (geometric) of the bands, Hz."""

STEM_GATE_DB = 20.0
"""A stem's band is averaged over the frames where it is within this many dB of its loud level (95th percentile)."""
BAND_GATE_DB = 10.0
"""The mix: a band is averaged over the frames where it is within this many dB of its loud level (95th percentile)."""
SILENCE_DB = -90.0
"""Frames (and bands) below this power, dBFS, are silence."""
EMPTY_DB = -120.0
"""Level given to a band with no content, dB."""
CONTENT_RANGE_DB = 60.0
"""A band takes part in a match when it is within this many dB of its balance's loudest band, in both balances."""
SPREAD_FLOOR_DB = 0.5
"""Added to a crate target's spread before weighting by its inverse, dB (no band gets an unbounded weight)."""
MATCH_FLOOR_DB = -24.0
"""Deepest cut a match proposes, dB: a band that needs more is missing from the reference, and killing it is a
DJ's choice, not a tonal match."""

EQ_BANDS = ("low", "mid", "high")
EQ_PARAMS = ("eq_low_db", "eq_mid_db", "eq_high_db")
"""The engine's deck parameters (engine/commands.py DECK_PARAMS) that a proposal sets, low to high."""

_LOUD_PERCENTILE = 95.0


# --------------------------------------------------------------------------- measuring


@dataclass(frozen=True)
class Balance:
    """The tonal balance of one signal (a stem, or a mix).

    Attributes
    ----------
    levels_db : np.ndarray
        Level of each band of :data:`BAND_CENTRES_HZ`, dB of mean-square power (dBFS; a full-scale sine is -3 dB);
        :data:`EMPTY_DB` where there is nothing.
    active_s : float
        Seconds of audio the levels were averaged over (for a mix from stems: the longest stem's).
    source : str
        "stem" (a stem, gated by :data:`STEM_GATE_DB`), "mix" (a mix, gated by :data:`BAND_GATE_DB`), "stems" (a
        track's arrangement: the power sum of its stems' balances), "median" (a crate target).
    spread_db : np.ndarray or None
        A crate target's spread per band (1.4826 x the median absolute deviation of the tracks' levels), dB; a
        match weights each band by ``1 / (spread_db + SPREAD_FLOOR_DB)``. None for one track's balance.
    """

    levels_db: np.ndarray
    active_s: float = 0.0
    source: str = "mix"
    spread_db: np.ndarray | None = None

    @property
    def eq_levels_db(self) -> dict[str, float]:
        """Power in each band of the engine's DJ EQ (the LR4 split at 300 Hz / 4 kHz), dB."""
        power = 10.0 ** (np.asarray(self.levels_db) / 10.0)
        diag = np.einsum("bii->bi", eq_band_fractions())
        return {name: float(_db(power @ diag[:, i])) for i, name in enumerate(EQ_BANDS)}

    def to_dict(self) -> dict:
        """JSON-ready form (what the crate's ``tonal.bands`` column holds)."""
        d = {"centres_hz": [round(float(f), 2) for f in BAND_CENTRES_HZ],
             "levels_db": [round(float(v), 3) for v in self.levels_db],
             "eq_db": {k: round(v, 3) for k, v in self.eq_levels_db.items()},
             "active_s": round(float(self.active_s), 3), "source": self.source}
        if self.spread_db is not None:
            d["spread_db"] = [round(float(v), 3) for v in self.spread_db]
        return d

    @classmethod
    def from_dict(cls, d: Mapping) -> Balance:
        """Inverse of :meth:`to_dict`; ``ValueError`` when the bands are not this version's."""
        levels = np.asarray(d["levels_db"], dtype=np.float64)
        if levels.shape != BAND_CENTRES_HZ.shape:
            raise ValueError(f"tonal bands: want {len(BAND_CENTRES_HZ)} levels, got {levels.shape}")
        if "centres_hz" in d and not np.allclose(d["centres_hz"], BAND_CENTRES_HZ, rtol=1e-3):
            raise ValueError("tonal bands: band centres differ from this version's")
        spread = d.get("spread_db")
        return cls(levels, float(d.get("active_s", 0.0)), str(d.get("source", "mix")),
                   None if spread is None else np.asarray(spread, dtype=np.float64))


def _db(power):
    return 10.0 * np.log10(np.maximum(power, 10.0 ** (EMPTY_DB / 10.0)))


@lru_cache(maxsize=4)
def _band_bins(sample_rate: int) -> tuple[np.ndarray, np.ndarray]:
    """FFT bin frequencies (Hz) and the ``(bins, bands)`` 0/1 matrix assigning bins to bands."""
    freqs = np.fft.rfftfreq(N_FFT, 1.0 / sample_rate)
    lo, hi = BAND_EDGES_HZ[:-1], BAND_EDGES_HZ[1:]
    member = ((freqs[:, None] >= lo[None]) & (freqs[:, None] < hi[None])).astype(np.float32)
    if hi[-1] >= sample_rate / 2 or not member.sum(axis=0).all():
        raise ValueError(f"tonal bands need a sample rate of at least {2 * hi[-1]:.0f} Hz, got {sample_rate}")
    return freqs, member


def frame_band_power(x: np.ndarray, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """Power per third-octave band of consecutive frames.

    Parameters
    ----------
    x : np.ndarray
        Audio, ``(samples,)`` or ``(samples, channels)``.
    sample_rate : int
        Hz.

    Returns
    -------
    np.ndarray
        float64 ``(frames, bands)``: mean-square power of each band in each non-overlapping Hann frame of
        :data:`N_FFT` samples, averaged over the channels (a partial last frame is dropped). Summed over every
        band of a full spectrum it would be the frame's mean-square value.
    """
    a = np.asarray(x, dtype=np.float32)
    if a.ndim == 1:
        a = a[:, None]
    n_frames = a.shape[0] // N_FFT
    _, member = _band_bins(int(sample_rate))
    out = np.zeros((n_frames, member.shape[1]))
    if n_frames == 0:
        return out
    window = np.hanning(N_FFT + 1)[:N_FFT].astype(np.float32)
    # One-sided power spectrum scaled so that Parseval holds for the Hann-windowed frame (both channels averaged).
    scale = 2.0 / (N_FFT * float(np.sum(window.astype(np.float64) ** 2)) * a.shape[1])
    # scipy's pocketfft keeps float32 as float32: 3x numpy's rfft here
    from scipy.fft import rfft

    frames = np.ascontiguousarray(a[:n_frames * N_FFT].T).reshape(a.shape[1], n_frames, N_FFT)
    chunk = 64  # frames per FFT call: bounds the temporary arrays to a few MB
    for start in range(0, n_frames, chunk):
        spec = rfft(frames[:, start:start + chunk] * window, axis=-1, workers=1)
        power = (spec.real ** 2 + spec.imag ** 2).sum(axis=0)
        out[start:start + chunk] = (power @ member) * scale
    return out


def _band_gated(power: np.ndarray, gate_db: float, sample_rate: int, source: str) -> Balance:
    """Each band's power averaged over the frames where that band is within ``gate_db`` of its loud level."""
    levels = np.full(len(BAND_CENTRES_HZ), EMPTY_DB)
    if len(power) == 0:
        return Balance(levels, 0.0, source)
    band_db = _db(power)
    sounding = band_db > SILENCE_DB
    counts = np.zeros(power.shape[1])
    for b in np.flatnonzero(sounding.any(axis=0)):
        loud_db = np.percentile(band_db[sounding[:, b], b], _LOUD_PERCENTILE)
        active = band_db[:, b] >= max(loud_db - gate_db, SILENCE_DB)
        levels[b] = _db(power[active, b].mean())
        counts[b] = active.sum()
    return Balance(levels, float(np.median(counts) * N_FFT / sample_rate), source)


def stem_balance(x: np.ndarray, sample_rate: int = SAMPLE_RATE) -> Balance:
    """Balance of one stem: each band averaged where it is within :data:`STEM_GATE_DB` of its loud level."""
    return _band_gated(frame_band_power(x, sample_rate), STEM_GATE_DB, sample_rate, "stem")


def mix_balance(x: np.ndarray, sample_rate: int = SAMPLE_RATE) -> Balance:
    """Balance of a mix without stems: each band averaged where it is within :data:`BAND_GATE_DB` of its loud level."""
    return _band_gated(frame_band_power(x, sample_rate), BAND_GATE_DB, sample_rate, "mix")


def combine_balances(balances: Iterable[Balance], source: str = "stems") -> Balance:
    """Power sum of balances (the full arrangement's spectrum from its stems')."""
    items = list(balances)
    power = sum(10.0 ** (np.asarray(b.levels_db) / 10.0) for b in items)
    return Balance(_db(power), max((b.active_s for b in items), default=0.0), source)


ARRANGEMENT = "stems"
"""Key of the derived balance of the full arrangement (the power sum of the four stems') in a track's balances."""


def with_arrangement(balances: Mapping[str, Balance]) -> dict[str, Balance]:
    """``balances`` plus :data:`ARRANGEMENT`, the power sum of the four stems', when all four are there."""
    from prep.stems import STEM_NAMES

    out = {k: v for k, v in balances.items() if k != ARRANGEMENT}
    if all(name in out for name in STEM_NAMES):
        out[ARRANGEMENT] = combine_balances(out[name] for name in STEM_NAMES)
    return out


def track_balance(mix: np.ndarray | None, stems: np.ndarray | Mapping[str, np.ndarray] | None = None,
                  sample_rate: int = SAMPLE_RATE) -> dict[str, Balance]:
    """Balances of a track: ``"mix"`` and, with stems, one per stem and their sum.

    Parameters
    ----------
    mix : np.ndarray or None
        ``(samples, 2)``; None: the sum of the stems.
    stems : np.ndarray or mapping, optional
        ``(4, samples, 2)`` in :data:`prep.stems.STEM_NAMES` order, or ``{name: (samples, 2)}``.

    Returns
    -------
    dict
        ``{"mix": Balance}`` (the mix, band-gated: every track has one, so any two compare), and with stems
        ``"drums"``, ``"bass"``, ``"vocals"``, ``"other"`` and :data:`ARRANGEMENT` (their power sum).
    """
    from prep.stems import STEM_NAMES

    if stems is None:
        if mix is None:
            raise ValueError("track_balance needs a mix or stems")
        return {"mix": mix_balance(mix, sample_rate)}
    named = dict(stems) if isinstance(stems, Mapping) else dict(zip(STEM_NAMES, stems))
    if mix is None:
        mix = sum(named.values())
    out = {"mix": mix_balance(mix, sample_rate)}
    out.update({name: stem_balance(x, sample_rate) for name, x in named.items()})
    return with_arrangement(out)


def median_balance(balances: Sequence[Balance]) -> Balance:
    """Per-band median of several balances (a crate-wide target), with their spread (from three balances on)."""
    if not balances:
        raise ValueError("median_balance needs at least one balance")
    stacked = np.stack([np.asarray(b.levels_db) for b in balances])
    levels = np.median(stacked, axis=0)
    spread = 1.4826 * np.median(np.abs(stacked - levels), axis=0) if len(balances) >= 3 else None
    return Balance(levels, float(np.median([b.active_s for b in balances])), "median", spread)


# --------------------------------------------------------------------------- the engine's EQ


@lru_cache(maxsize=4)
def _bin_responses(sample_rate: int) -> tuple[np.ndarray, np.ndarray]:
    """The DJ EQ's band fractions ``a_i(f)`` (3, bins) and the K-weighting power response (bins,), on the FFT bins."""
    from scipy.signal import freqz, sosfreqz

    from engine.dsp import DjEq
    from prep.loudness import k_weighting_sos

    freqs, _ = _band_bins(sample_rate)
    eq = DjEq(sample_rate)

    def response(row: int) -> np.ndarray:
        c = eq.coef[row]
        return freqz(c[:3], np.r_[1.0, c[3:]], worN=freqs, fs=sample_rate)[1]

    lp1, hp1, ap2, lp2, hp2 = (response(i) for i in range(5))
    bands = np.stack([lp1 ** 2 * ap2, hp1 ** 2 * lp2 ** 2, hp1 ** 2 * hp2 ** 2])
    # Every band has the phase of AP(f1) AP(f2): dividing by it leaves real fractions that sum to 1.
    fractions = np.clip((bands / bands.sum(axis=0)).real, 0.0, 1.0)
    k_power = np.abs(sosfreqz(k_weighting_sos(sample_rate), worN=freqs, fs=sample_rate)[1]) ** 2
    return fractions, k_power


@lru_cache(maxsize=4)
def eq_band_fractions(sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """``(bands, 3, 3)``: the mean over each third-octave band's bins of ``a_i(f) a_j(f)``.

    The DJ EQ at linear gains ``g`` passes ``g @ M[b] @ g`` of a band's power (for a spectrum flat within the
    band); the diagonal ``M[b, i, i]`` is the share of band ``b``'s power that EQ band ``i`` carries.
    """
    fractions, _ = _bin_responses(sample_rate)
    _, member = _band_bins(sample_rate)
    counts = member.sum(axis=0)
    prod = fractions[:, None, :] * fractions[None, :, :]          # (3, 3, bins)
    return np.einsum("ijk,kb->bij", prod, member.astype(np.float64)) / counts[:, None, None]


@lru_cache(maxsize=4)
def _k_band_power(sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    _, k_power = _bin_responses(sample_rate)
    _, member = _band_bins(sample_rate)
    return (k_power @ member) / member.sum(axis=0)


def eq_response_db(gains_db: Sequence[float], sample_rate: int = SAMPLE_RATE, clamp: bool = True) -> np.ndarray:
    """The DJ EQ's power response at band gains ``gains_db`` (low, mid, high), averaged over each band, dB.

    Gains at or below -80 dB are kills (0), as in the engine; with ``clamp`` gains above +6 dB are clamped, as in
    the engine (without, the response is the EQ's formula extended past its range, for fitting).
    """
    from engine.dsp import MAX_EQ_DB, db_to_gain

    g = np.array([db_to_gain(min(float(v), MAX_EQ_DB) if clamp else float(v)) for v in gains_db])
    return _db(np.einsum("i,bij,j->b", g, eq_band_fractions(sample_rate), g))


# --------------------------------------------------------------------------- fitting


def match_weights(reference: Balance, incoming: Balance) -> np.ndarray:
    """Weight of each band in a match: 0 where either balance has no content (below :data:`SILENCE_DB`, or more
    than :data:`CONTENT_RANGE_DB` under its loudest band), else 1, divided by the reference's spread plus
    :data:`SPREAD_FLOOR_DB` when it is a crate target (bands on which the crate's tracks disagree say less)."""
    def has(levels):
        levels = np.asarray(levels)
        return (levels > levels.max() - CONTENT_RANGE_DB) & (levels > SILENCE_DB)
    w = (has(reference.levels_db) & has(incoming.levels_db)).astype(np.float64)
    if reference.spread_db is not None:
        w = w / (np.asarray(reference.spread_db) + SPREAD_FLOOR_DB)
    return w


def fit_gains(target_db: np.ndarray, weights: np.ndarray, model: Callable[[np.ndarray], np.ndarray], n_gains: int,
              bounds_db: tuple[float, float] = (-40.0, 40.0)) -> tuple[np.ndarray, float]:
    """Gains whose response ``model(gains_db)`` best matches a level difference, weighted least squares in dB.

    Parameters
    ----------
    target_db : np.ndarray
        ``(bands,)`` or ``(rows, bands)``: wanted response (reference minus incoming levels), dB. Several rows
        (e.g. one per stem) are fitted by the same gains.
    weights : np.ndarray
        Same shape: weight of each band (0 leaves it out).
    model : callable
        ``model(gains_db) -> (bands,)`` response, dB.
    n_gains : int
        Number of gains.
    bounds_db : (float, float)
        Bounds of each gain, dB.

    Returns
    -------
    (np.ndarray, float)
        The gains, dB, and the weighted RMS of the residual, dB.
    """
    from scipy.optimize import least_squares

    t = np.atleast_2d(np.asarray(target_db, dtype=np.float64))
    w = np.broadcast_to(np.atleast_2d(np.asarray(weights, dtype=np.float64)), t.shape)
    if not (w.sum(axis=1) > 0).any():
        raise ValueError("the two balances share no band with content")
    sw = np.sqrt(w)

    def residual(x):
        return (sw * (t - model(x)[None, :])).ravel()

    lo, hi = bounds_db
    fit = least_squares(residual, np.zeros(n_gains), bounds=(np.full(n_gains, lo), np.full(n_gains, hi)),
                        x_scale=10.0, diff_step=1e-4)
    return fit.x, float(np.sqrt(np.sum(residual(fit.x) ** 2) / w.sum()))


@dataclass(frozen=True)
class EqMatch:
    """A DJ EQ proposal and what it does.

    Attributes
    ----------
    gains_db : tuple of float
        Low, mid, high band gains for the incoming deck, dB, within the EQ's range.
    level_db : float
        Change of the incoming track's K-weighted loudness that the gains make, dB (0 unless the EQ's range
        stopped the loudness-keeping shift, or with ``level="absolute"``).
    error_before_db, error_after_db : float
        RMS over the bands with content of the shape difference (levels minus their mean) between the reference
        and the incoming track, before and after the EQ, dB.
    """

    gains_db: tuple[float, float, float]
    level_db: float
    error_before_db: float
    error_after_db: float
    params: dict = field(default_factory=dict)


def _as_balance(b) -> Balance:
    if isinstance(b, Balance):
        return b
    if isinstance(b, Mapping) and "levels_db" in b:
        return Balance.from_dict(b)
    raise TypeError(f"want a Balance, its dict, or a track's balances; got {type(b).__name__}")


def _pair(reference, incoming) -> tuple[Balance, Balance]:
    """The balances to compare: both tracks' :data:`ARRANGEMENT` when both have stems, else both mixes (a
    balance from stems and one from a mix are not measured alike)."""
    def rows(x):
        if isinstance(x, Mapping) and "levels_db" not in x:
            return x
        return {"mix": _as_balance(x)}
    ref, inc = rows(reference), rows(incoming)
    key = ARRANGEMENT if ARRANGEMENT in ref and ARRANGEMENT in inc else "mix"
    if key not in ref or key not in inc:
        raise ValueError("a track's balances need a 'mix' entry")
    return _as_balance(ref[key]), _as_balance(inc[key])


def _shape_rms(diff_db: np.ndarray, weights: np.ndarray) -> float:
    err = diff_db - (weights * diff_db).sum() / weights.sum()
    return float(np.sqrt((weights * err ** 2).sum() / weights.sum()))


def match_eq(reference, incoming, strength: float = 1.0, level: str = "loudness") -> EqMatch:
    """Fit the engine's DJ EQ gains that bring ``incoming``'s balance to ``reference``'s.

    Parameters
    ----------
    reference : Balance, its dict, or a :func:`track_bands` mapping (its "mix" is used)
        The balance to match: the outgoing track, or a crate target.
    incoming : same
        The track the EQ will be set on.
    strength : float
        0..1: fraction of the match to apply (the fitted gains in dB are scaled by it).
    level : str
        "loudness" (default): match the shape only and keep the incoming track's K-weighted loudness, which the
        engine's auto-gain has already matched; "absolute": match the levels too (a reference at the same gain
        staging, such as the same track before it was equalised).

    Returns
    -------
    EqMatch
    """
    if level not in ("loudness", "absolute"):
        raise ValueError(f"level must be 'loudness' or 'absolute', got {level!r}")
    if not 0.0 <= float(strength) <= 1.0:
        raise ValueError(f"strength must be within 0..1, got {strength}")
    from engine.dsp import MAX_EQ_DB

    ref, inc = _pair(reference, incoming)
    k_band = _k_band_power()

    def k_power_db(levels_db, response_db=0.0):
        return float(_db((10.0 ** ((np.asarray(levels_db) + response_db) / 10.0) * k_band).sum()))

    inc_db = np.asarray(inc.levels_db, dtype=np.float64)
    loudness = level == "loudness"
    if loudness:  # as the engine's auto-gain does: both tracks at the same (K-weighted) loudness
        inc_db = inc_db + k_power_db(ref.levels_db) - k_power_db(inc_db)
    diff = np.asarray(ref.levels_db) - inc_db
    w = match_weights(ref, inc)
    # Bounded to what the EQ can do, so that the fit itself finds the best compromise at the limits.
    gains, _ = fit_gains(diff, w, lambda g: eq_response_db(g, clamp=False), 3, bounds_db=(MATCH_FLOOR_DB, MAX_EQ_DB))
    gains = gains * float(strength)

    def loudness_change(g):
        return k_power_db(inc_db, eq_response_db(g, clamp=False)) - k_power_db(inc_db)

    if loudness:
        # A least-squares fit matches the bands' mean level, not the loudness: shift the gains (a common shift of
        # the isolator is flat, so this is exact) to keep the loudness, as far as the EQ's range allows.
        shift = -loudness_change(gains)
        gains = gains + min(max(shift, MATCH_FLOOR_DB - gains.min()), MAX_EQ_DB - gains.max())
    after = diff - eq_response_db(gains)
    g = tuple(round(float(v), 2) for v in gains)
    return EqMatch(g, round(loudness_change(gains), 2), round(_shape_rms(diff, w), 2), round(_shape_rms(after, w), 2),
                   dict(zip(EQ_PARAMS, (round(float(v), 1) for v in gains))))


def propose_eq(outgoing, incoming, strength: float = 1.0, level: str = "loudness") -> dict[str, float]:
    """EQ settings for the incoming deck that match its tonal balance to the outgoing track's.

    Parameters
    ----------
    outgoing, incoming : Balance, its dict, or a :func:`track_bands` mapping
        The reference (the outgoing track, or :func:`crate_target`) and the track to equalise.
    strength : float
        0..1, how much of the match to apply.
    level : str
        "loudness" (keep the incoming's loudness; the engine's auto-gain matched it) or "absolute".

    Returns
    -------
    dict
        ``{"eq_low_db": ..., "eq_mid_db": ..., "eq_high_db": ...}``, dB (0.1 dB steps), within the engine's
        EQ range (-24 .. +6 here), ready for ``{"cmd": "set", "deck": D, "param": name, "value": v}``.

    Raises
    ------
    ValueError
        The two balances share no band with content, or ``strength`` / ``level`` is out of range.
    """
    return dict(match_eq(outgoing, incoming, strength, level).params)


# --------------------------------------------------------------------------- the crate


def _current_rows(crate, where: str = "", params: tuple = ()) -> list[tuple[str, str, str]]:
    sql = ("SELECT t.content_hash, x.stem, x.bands FROM tonal x JOIN tracks t ON t.id = x.track_id "
           f"WHERE x.version = ? {where}")
    return crate.connection.execute(sql, (TONAL_VERSION, *params)).fetchall()


def track_bands(crate, content_hash: str) -> dict[str, Balance] | None:
    """The stored balances of one track, ``{"mix": Balance, "drums": ...}``, or None if the step has not run."""
    rows = _current_rows(crate, "AND t.content_hash = ?", (content_hash,))
    found = {stem: Balance.from_dict(json.loads(bands)) for _, stem, bands in rows}
    return with_arrangement(found) if "mix" in found else None


def crate_target(crate, exclude: Iterable[str] = ()) -> dict[str, Balance]:
    """The crate-wide target: per-band medians of the stored balances (tracks in ``exclude`` left out).

    Returns
    -------
    dict
        ``{"mix": median of the mixes}``, plus :data:`ARRANGEMENT` (median of the tracks' arrangements) and each
        stem's median when tracks have stems: a reference for :func:`propose_eq` like a track's balances.
        ``ValueError`` when no track has a balance.
    """
    skip = set(exclude)
    tracks: dict[str, dict[str, Balance]] = {}
    for h, stem, bands in _current_rows(crate):
        if h not in skip:
            tracks.setdefault(h, {})[stem] = Balance.from_dict(json.loads(bands))
    per_track = [with_arrangement(t) for t in tracks.values() if "mix" in t]
    if not per_track:
        raise ValueError(f"{crate.db_path}: no tonal balance stored; run `ate prep` first")
    names = {k for t in per_track for k in t}
    return {k: median_balance([t[k] for t in per_track if k in t]) for k in sorted(names)}


def store_track_bands(crate, content_hash: str, result: Mapping[str, Mapping]) -> None:
    """Replace a track's rows in the ``tonal`` table (inside the caller's transaction)."""
    from prep.crate import now_iso

    row = crate.connection.execute("SELECT id FROM tracks WHERE content_hash = ?", (content_hash,)).fetchone()
    if row is None:
        raise KeyError(f"{content_hash}: not in the crate")
    crate.connection.execute("DELETE FROM tonal WHERE track_id = ?", (row[0],))
    created = now_iso()
    crate.connection.executemany("INSERT INTO tonal (track_id, stem, version, bands, created_at) "
                                 "VALUES (?, ?, ?, ?, ?)",
                                 [(row[0], stem, TONAL_VERSION, json.dumps(bands), created)
                                  for stem, bands in result.items() if stem != ARRANGEMENT])  # derived, not stored


def tonal_done(crate) -> set[str]:
    """Content hashes whose current tonal rows are stored."""
    return {h for h, _, _ in _current_rows(crate, "AND x.stem = 'mix'")}


def _run_step(track) -> dict[str, dict]:
    return {name: b.to_dict() for name, b in track_balance(track.mix, track.stems).items()}


TONAL_STEP = PrepStep("tonal", run=_run_step, store=store_track_bands, done=tonal_done, default=True,
                      description="tonal balance per track and stem (third-octave bands), for auto-EQ")
register(TONAL_STEP)


# --------------------------------------------------------------------------- ate autoeq


def register_cli(subparsers) -> None:
    """``ate autoeq TRACK_A TRACK_B``: the EQ that matches B (incoming) to A (outgoing)."""
    p = subparsers.add_parser("autoeq", help="propose the DJ EQ that matches one track's tonal balance to another's")
    p.add_argument("outgoing", metavar="TRACK_A", help="the reference: an audio file, a crate track (with --crate), "
                   "or ':crate' for the crate's median balance")
    p.add_argument("incoming", metavar="TRACK_B", help="the track to equalise: an audio file or a crate track")
    p.add_argument("--crate", metavar="CRATE", help="a prepared crate: tracks are looked up in it (path, hash prefix "
                   "or title) and their stored balances used")
    p.add_argument("--strength", type=float, default=1.0, help="0..1, how much of the match to apply (default 1)")
    p.add_argument("--json", action="store_true", help="one JSON object")
    p.set_defaults(func=_cmd_autoeq)


class _InputError(Exception):
    pass


def _balance_for(query: str, crate) -> tuple[str, dict[str, Balance]]:
    """(name, balances) of a track given on the command line."""
    from pathlib import Path

    from prep.crate import TrackNotFound

    from prep.audio import AudioError, load_audio

    if crate is not None:
        if query == ":crate":
            return "crate median", crate_target(crate)
        try:
            row = crate.find_track(query)
        except TrackNotFound as err:
            raise _InputError(str(err)) from None
        h = row["content_hash"]
        stored = track_bands(crate, h)
        if stored is not None:
            return row["title"], stored
        from prep.steps import load_track_input
        try:
            track = load_track_input(crate, h)
        except (AudioError, OSError, ValueError) as err:
            raise _InputError(str(err)) from None
        return row["title"] + " (measured now)", track_balance(track.mix, track.stems)
    if query == ":crate":
        raise _InputError(":crate needs --crate CRATE")
    try:
        mix = load_audio(query, min_duration_s=N_FFT / SAMPLE_RATE)
    except AudioError as err:
        raise _InputError(str(err)) from None
    return Path(query).stem, track_balance(mix)


def _cmd_autoeq(args) -> int:
    from pathlib import Path

    from prep.crate import Crate, CrateError, default_db_path

    if not 0.0 <= args.strength <= 1.0:
        print(f"error: --strength must be within 0..1, got {args.strength}", file=sys.stderr)
        return 2
    crate = None
    try:
        if args.crate:
            db = default_db_path(Path(args.crate))
            if not db.exists():
                print(f"error: {args.crate}: not a prepared crate (no {db}); run `ate prep {args.crate}` first",
                      file=sys.stderr)
                return 2
            crate = Crate(db, readonly=True, root=args.crate)
        try:
            name_a, bands_a = _balance_for(args.outgoing, crate)
            name_b, bands_b = _balance_for(args.incoming, crate)
            match = match_eq(bands_a, bands_b, strength=args.strength)
        except (_InputError, ValueError) as err:
            print(f"error: {err}", file=sys.stderr)
            return 1
    except CrateError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    finally:
        if crate is not None:
            crate.close()
    a, b = _pair(bands_a, bands_b)
    if args.json:
        print(json.dumps({"outgoing": {"track": name_a, "source": a.source, "eq_db": a.to_dict()["eq_db"]},
                          "incoming": {"track": name_b, "source": b.source, "eq_db": b.to_dict()["eq_db"]},
                          "proposal": match.params, "strength": args.strength, "level_db": match.level_db,
                          "error_before_db": match.error_before_db, "error_after_db": match.error_after_db}))
        return 0
    for label, name, bal in (("outgoing", name_a, a), ("incoming", name_b, b)):
        bands = "  ".join(f"{k} {v:6.1f}" for k, v in bal.eq_levels_db.items())
        print(f"{label}: {name} [{bal.source}]  {bands} dB")
    settings = "  ".join(f"{k} {v:+.1f}" for k, v in match.params.items())
    print(f"proposal for the incoming deck: {settings} dB")
    print(f"tonal shape difference {match.error_before_db:.1f} dB -> {match.error_after_db:.1f} dB RMS over "
          f"third-octave bands; loudness change {match.level_db:+.1f} dB")
    return 0
