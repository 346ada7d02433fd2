"""``bench_autoeq``: recovering a known equalisation from the audio alone, ATE's tonal matching against a naive peer.

Each case takes a generated track (:func:`prep.synth.standard_set`, clean stems that sum to the mix) and
equalises every stem with the same three RBJ-cookbook biquads at random gains, uniform in +-10 dB:

- a low shelf at 100 Hz (shelf slope S = 1), a peaking filter at 1 kHz (Q = 0.707, about two octaves wide) and a
  high shelf at 10 kHz (S = 1); a shelf's gain is its plateau. These filters are exactly inverted by the same
  filters at the opposite gains, so the correcting gains are minus the applied ones: the truth.

A predictor sees the equalised audio and a reference, never the gains, and knows the family of filters (as a
network trained for the task does). It estimates the applied gains by fitting the family's response (averaged
over ATE's bands) to the level difference between the two balances (:func:`prep.tonal.fit_gains`). References:

- ``self``: the same track before equalisation (the outgoing/incoming case when both share a master);
- ``crate``: the crate-wide target, the per-band median of the *other* tracks of the set, unequalised
  (leave-one-out; the set's tracks are peak-normalised to -1 dBFS by the generator, so their levels are
  comparable and the equalised track is not renormalised).

Predictors: ``ate_stems`` (the arrangement: the power sum of the stems' balances), ``ate_stems_joint`` (the four
stems fitted together, crate target only), ``ate_mix`` (the mix, band-gated), and the peer ``naive``: the energy ratio in three plain FFT bands (20-300 Hz, 300 Hz-4 kHz,
4-20 kHz, the DJ EQ's bands) of the whole-track average spectrum, taken as the gain of the filter in that band.
Errors are mean absolute errors of the correcting gains, dB, per band and overall; ``shape`` errors remove each
case's mean gain from truth and prediction (the part a loudness-matched mix hears).

``dj_eq`` checks the proposal the automix gets (:func:`prep.tonal.propose_eq`, loudness kept) through the real
engine EQ (:class:`engine.dsp.DjEq`): on the equalised tracks against themselves unequalised, and on pairs of
different unequalised tracks (track i+1 matched to track i), the shape error of the three DJ EQ band levels before
and after, measured again on the output. ``cost`` compares the tonal step's CPU time with the analysis'.
"""

from __future__ import annotations

import itertools
import math
import time
from dataclasses import replace

import numpy as np

from prep.audio import SAMPLE_RATE

FILTERS = (("lowshelf", 100.0), ("peaking", 1000.0), ("highshelf", 10000.0))
"""The equalisation applied: kind and frequency, Hz."""
GAIN_RANGE_DB = 10.0
PEAK_Q = 1.0 / math.sqrt(2.0)
SHELF_SLOPE = 1.0
NAIVE_EDGES_HZ = (20.0, 300.0, 4000.0, 20000.0)


def rbj_biquad(kind: str, freq_hz: float, gain_db: float, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """RBJ-cookbook biquad as one second-order section ``[b0, b1, b2, 1, a1, a2]``.

    Parameters
    ----------
    kind : str
        "lowshelf", "peaking" or "highshelf".
    freq_hz : float
        Centre (peaking) or mid-slope (shelves) frequency, Hz.
    gain_db : float
        Peak or plateau gain, dB.
    """
    a = 10.0 ** (gain_db / 40.0)
    w0 = 2.0 * math.pi * freq_hz / sample_rate
    cw, sw = math.cos(w0), math.sin(w0)
    if kind == "peaking":
        alpha = sw / (2.0 * PEAK_Q)
        b = (1.0 + alpha * a, -2.0 * cw, 1.0 - alpha * a)
        den = (1.0 + alpha / a, -2.0 * cw, 1.0 - alpha / a)
    elif kind in ("lowshelf", "highshelf"):
        alpha = sw / 2.0 * math.sqrt((a + 1.0 / a) * (1.0 / SHELF_SLOPE - 1.0) + 2.0)
        r = 2.0 * math.sqrt(a) * alpha
        s = 1.0 if kind == "lowshelf" else -1.0
        b = (a * ((a + 1) - s * (a - 1) * cw + r), s * 2 * a * ((a - 1) - s * (a + 1) * cw),
             a * ((a + 1) - s * (a - 1) * cw - r))
        den = ((a + 1) + s * (a - 1) * cw + r, -s * 2 * ((a - 1) + s * (a + 1) * cw), (a + 1) + s * (a - 1) * cw - r)
    else:
        raise ValueError(f"unknown biquad kind {kind!r}")
    return np.array([b[0], b[1], b[2], den[0], den[1], den[2]]) / den[0]


def equalise(x: np.ndarray, gains_db) -> np.ndarray:
    """``x`` (samples, channels) through the :data:`FILTERS` at ``gains_db``, float32."""
    from scipy.signal import sosfilt

    sos = np.stack([rbj_biquad(kind, f, g) for (kind, f), g in zip(FILTERS, gains_db)])
    return sosfilt(sos, np.asarray(x, dtype=np.float64), axis=0).astype(np.float32)


class FilterModel:
    """Response of the :data:`FILTERS` at given gains, averaged over ATE's bands, dB (for :func:`fit_gains`)."""

    def __init__(self, sample_rate: int = SAMPLE_RATE):
        from prep.tonal import _band_bins

        freqs, member = _band_bins(sample_rate)
        used = member.sum(axis=1) > 0
        self.member = member[used].astype(np.float64) / member.sum(axis=0)
        z1 = np.exp(-2j * np.pi * freqs[used] / sample_rate)
        self.z1, self.z2 = z1, z1 * z1

    def _response(self, c: np.ndarray) -> np.ndarray:
        # Complex, not |.|^2 expanded in cosines: near DC a 100 Hz shelf's polynomials nearly cancel, and the
        # expanded form loses the digits a numerical derivative needs.
        return c[0] + c[1] * self.z1 + c[2] * self.z2

    def __call__(self, gains_db) -> np.ndarray:
        power = np.ones(self.z1.shape)
        for (kind, f), g in zip(FILTERS, gains_db):
            c = rbj_biquad(kind, f, float(g))
            power *= np.abs(self._response(c[:3]) / self._response(c[3:])) ** 2
        return 10.0 * np.log10(power @ self.member)


def _naive_bands_db(x: np.ndarray) -> np.ndarray:
    """Whole-track power in the plain FFT bands :data:`NAIVE_EDGES_HZ`, dB."""
    from prep.tonal import N_FFT, _db

    a = np.asarray(x, dtype=np.float64)
    n = a.shape[0] // N_FFT
    frames = a[:n * N_FFT].reshape(n, N_FFT, a.shape[1]).transpose(0, 2, 1)
    power = (np.abs(np.fft.rfft(frames * np.hanning(N_FFT), axis=-1)) ** 2).mean(axis=(0, 1))
    freqs = np.fft.rfftfreq(N_FFT, 1.0 / SAMPLE_RATE)
    return np.array([_db(power[(freqs >= lo) & (freqs < hi)].sum())
                     for lo, hi in itertools.pairwise(NAIVE_EDGES_HZ)])


def _mae(errors: list) -> dict:
    e = np.abs(np.asarray(errors))
    return {**{name: round(float(v), 3) for name, v in zip(("low", "mid", "high"), e.mean(axis=0))},
            "overall": round(float(e.mean()), 3)}


def _shape(g: np.ndarray) -> np.ndarray:
    return g - g.mean()


def _eq_shape_error(ref: dict, out: dict) -> float:
    """Mean absolute difference of the DJ EQ band levels, dB, their mean removed."""
    d = np.array([out[k] - ref[k] for k in ("low", "mid", "high")])
    return float(np.abs(_shape(d)).mean())


def _dj_eq_apply(x: np.ndarray, params: dict) -> np.ndarray:
    from engine.dsp import DjEq

    eq = DjEq(SAMPLE_RATE, smoothing_s=0.0)
    y = np.ascontiguousarray(x, dtype=np.float32).copy()
    eq.process(y, params["eq_low_db"], params["eq_mid_db"], params["eq_high_db"])
    return y


def bench_autoeq(quick: bool = False) -> dict:
    """Error of the correcting gains predicted from equalised audio, ATE against a naive FFT-band ratio.

    Returns
    -------
    dict
        ``cases``, ``filters``, ``mae_db`` and ``shape_mae_db`` (per predictor and reference: low/mid/high/overall),
        ``naive_over_ate`` (MAE ratios, > 1: ATE is better), ``dj_eq`` (shape errors before/after the proposal,
        measured through the engine's EQ), ``cost`` (tonal step CPU seconds per audio second, and its share of the
        analysis' time in the full run).
    """
    from prep.stems import STEM_NAMES
    from prep.synth import generate, standard_set
    from prep.tonal import (
        ARRANGEMENT,
        fit_gains,
        match_eq,
        match_weights,
        median_balance,
        mix_balance,
        propose_eq,
        track_balance,
    )

    n_tracks, bars, draws = (3, 32, 1) if quick else (12, 48, 4)
    specs = standard_set(n_tracks, seed=0, duration_bars=bars)
    if quick:  # a smoke test: ten bars a track, every kind of section still there
        specs = [replace(spec, structure=[["intro", 2], ["chorus", 4], ["breakdown", 2], ["outro", 2]])
                 for spec in specs]
    rng = np.random.default_rng(7)
    model = FilterModel()
    tracks = []
    tonal_cpu = audio_s = 0.0
    for spec in specs:
        g = generate(spec)
        stems = np.stack([g.stems[name] for name in STEM_NAMES])
        t0 = time.process_time()
        bal = track_balance(None, stems)
        tonal_cpu += time.process_time() - t0
        audio_s += stems.shape[1] / SAMPLE_RATE
        tracks.append({"stems": stems, "mix": g.mix, "bal": bal, "mix_bal": bal["mix"],
                       "naive": _naive_bands_db(g.mix)})

    errors: dict[str, list] = {}
    shape_errors: dict[str, list] = {}

    def record(name: str, truth_fix: np.ndarray, estimate_applied: np.ndarray) -> None:
        fix = -np.asarray(estimate_applied)
        errors.setdefault(name, []).append(fix - truth_fix)
        shape_errors.setdefault(name, []).append(_shape(fix) - _shape(truth_fix))

    def estimate(refs, incs) -> np.ndarray:
        """Applied gains fitted to incoming minus reference (several pairs: one fit for all)."""
        d = np.stack([np.asarray(i.levels_db) - np.asarray(r.levels_db) for r, i in zip(refs, incs)])
        w = np.stack([match_weights(r, i) for r, i in zip(refs, incs)])
        return fit_gains(d, w, model, 3, bounds_db=(-30.0, 30.0))[0]

    dj_self_before, dj_self_after = [], []
    for i, t in enumerate(tracks):
        others = [u for j, u in enumerate(tracks) if j != i]
        target_mix = median_balance([u["mix_bal"] for u in others])
        target = {s: median_balance([u["bal"][s] for u in others]) for s in (ARRANGEMENT, *STEM_NAMES)}
        target_naive = np.median([u["naive"] for u in others], axis=0)
        for _ in range(draws):
            applied = rng.uniform(-GAIN_RANGE_DB, GAIN_RANGE_DB, 3)
            truth_fix = -applied
            alt_stems = np.stack([equalise(s, applied) for s in t["stems"]])
            alt_mix = alt_stems.sum(axis=0)
            alt_bal = track_balance(None, alt_stems)
            alt_mix_bal = alt_bal["mix"]
            # References: the track itself before equalisation ...
            record("ate_stems/self", truth_fix, estimate([t["bal"][ARRANGEMENT]], [alt_bal[ARRANGEMENT]]))
            record("ate_mix/self", truth_fix, estimate([t["mix_bal"]], [alt_mix_bal]))
            record("naive/self", truth_fix, _naive_bands_db(alt_mix) - t["naive"])
            # ... and the crate-wide target (the other tracks).
            record("ate_mix/crate", truth_fix, estimate([target_mix], [alt_mix_bal]))
            record("ate_stems/crate", truth_fix, estimate([target[ARRANGEMENT]], [alt_bal[ARRANGEMENT]]))
            record("ate_stems_joint/crate", truth_fix,
                   estimate([target[s] for s in STEM_NAMES], [alt_bal[s] for s in STEM_NAMES]))
            record("naive/crate", truth_fix, _naive_bands_db(alt_mix) - target_naive)
            # The automix's proposal through the real engine EQ, measured again on its output.
            params = propose_eq(t["bal"], alt_bal)
            fixed = mix_balance(_dj_eq_apply(alt_mix, params))
            dj_self_before.append(_eq_shape_error(t["mix_bal"].eq_levels_db, alt_mix_bal.eq_levels_db))
            dj_self_after.append(_eq_shape_error(t["mix_bal"].eq_levels_db, fixed.eq_levels_db))

    pair_before, pair_after = [], []
    for a, b in itertools.pairwise(tracks):
        match = match_eq(a["bal"], b["bal"])
        fixed = mix_balance(_dj_eq_apply(b["mix"], match.params))
        pair_before.append(_eq_shape_error(a["mix_bal"].eq_levels_db, b["mix_bal"].eq_levels_db))
        pair_after.append(_eq_shape_error(a["mix_bal"].eq_levels_db, fixed.eq_levels_db))

    mae = {k: _mae(v) for k, v in errors.items()}
    shape = {k: _mae(v) for k, v in shape_errors.items()}
    def ratio(ref: str, ate: str) -> float:
        return round(mae[f"naive/{ref}"]["overall"] / mae[f"{ate}/{ref}"]["overall"], 2)

    ratios = {ref: {"naive_over_ate_stems": ratio(ref, "ate_stems"), "naive_over_ate_mix": ratio(ref, "ate_mix")}
              for ref in ("self", "crate")}
    ratios["crate"]["naive_over_ate_stems_joint"] = ratio("crate", "ate_stems_joint")
    cost = {"tonal_cpu_s_per_audio_s": round(tonal_cpu / audio_s, 5), "audio_s": round(audio_s, 1)}
    if not quick:
        from prep.analyze import analyze_audio

        t = tracks[0]
        t0 = time.process_time()
        analyze_audio(t["mix"], stems=t["stems"])
        analysis_cpu = time.process_time() - t0
        t0 = time.process_time()
        track_balance(None, t["stems"])
        tonal_one = time.process_time() - t0
        cost.update({"analysis_cpu_s": round(analysis_cpu, 3), "tonal_cpu_s": round(tonal_one, 3),
                     "tonal_over_analysis": round(tonal_one / analysis_cpu, 4),
                     "track_s": round(t["stems"].shape[1] / SAMPLE_RATE, 1)})
    return {
        "bench": "autoeq", "quick": quick, "tracks": n_tracks, "cases": len(errors["naive/self"]),
        "filters": [{"kind": k, "hz": f} for k, f in FILTERS], "gain_range_db": GAIN_RANGE_DB,
        "published_anchor_mae_db": 3.3,
        "mae_db": mae, "shape_mae_db": shape, "naive_over_ate": ratios,
        "dj_eq": {
            "self_shape_error_db": {"before": round(float(np.mean(dj_self_before)), 3),
                                    "after": round(float(np.mean(dj_self_after)), 3)},
            "pairs_shape_error_db": {"before": round(float(np.mean(pair_before)), 3),
                                     "after": round(float(np.mean(pair_after)), 3), "pairs": len(pair_before)},
        },
        "cost": cost,
    }
