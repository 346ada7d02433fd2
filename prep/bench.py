"""``ate bench analysis``: ATE's analysis against librosa's defaults, same run.

Both sides see the same generated tracks (:func:`prep.synth.standard_set`:
tempos 70–180 BPM, 4/4 and 3/4, major and minor keys, drum-less sections,
drifting tempos, a lead-in) and are scored with mir_eval:

- beats: F-measure (±70 ms), first 5 s trimmed as mir_eval recommends;
- tempo: accuracy within 4 % (``acc1``) and allowing ×2, ×½, ×3, ×⅓
  octave errors (``acc2``);
- downbeats: F-measure (±70 ms);
- key: MIREX weighted score (exact 1, fifth 0.5, relative 0.3, parallel 0.2);
- speed: audio seconds per CPU second (process time, so a multithreaded
  library cannot look faster than it is on one core).

The stem-aware path is scored on the same tracks twice: with stems from the
DSP separator (:mod:`prep.dsp_separate`, what a machine without demucs
weights gets; its separation time is reported apart) and with the
generator's true stems (``stems_oracle``: the ceiling a perfect separator
would reach). Both add vocal activity, scored by frame F-measure against the
generator's vocal regions with breaths bridged as :mod:`prep.vocals` does.

The peer is what a developer gets from librosa without tuning:
``librosa.beat.beat_track`` with its defaults, downbeats by the classic
shortcut (4/4 assumed, the bar phase whose beats sum the most onset strength)
and :func:`prep.key.estimate_key_baseline` (mean ``chroma_cqt`` against the
Krumhansl–Kessler profiles).
"""

from __future__ import annotations

import time

import librosa
import mir_eval
import numpy as np

from prep.analyze import ANALYSIS_SR, analyze_audio
from prep.audio import SAMPLE_RATE, resample, to_mono
from prep.dsp_separate import DspSeparator
from prep.key import estimate_key_baseline
from prep.separate import separate_track
from prep.stems import STEM_NAMES
from prep.synth import generate, standard_set
from prep.vocals import merge_regions, region_f_measure

SIDES = ("ate", "ate_stems_dsp", "ate_stems_oracle", "librosa")


def _tempo_scores(est_bpm: float, ref_bpm: float) -> tuple[float, float]:
    acc1 = abs(est_bpm - ref_bpm) <= 0.04 * ref_bpm
    acc2 = any(abs(est_bpm * f - ref_bpm) <= 0.04 * ref_bpm for f in (1, 2, 0.5, 3, 1 / 3))
    return float(acc1), float(acc2)


def _beat_f(ref: np.ndarray, est: np.ndarray) -> float:
    return float(mir_eval.beat.f_measure(mir_eval.beat.trim_beats(np.asarray(ref)),
                                         mir_eval.beat.trim_beats(np.asarray(est))))


def librosa_defaults(y: np.ndarray, sr: int) -> dict:
    """The peer: librosa's default beat tracker, modulo-4 downbeats, template key."""
    onset = librosa.onset.onset_strength(y=y, sr=sr)
    tempo, frames = librosa.beat.beat_track(onset_envelope=onset, sr=sr)
    beats = librosa.frames_to_time(frames, sr=sr)
    strength = onset[frames] if len(frames) else np.zeros(0)
    phase = int(np.argmax([strength[p::4].sum() for p in range(4)])) if len(frames) >= 4 else 0
    key = estimate_key_baseline(y, sr)
    return {"bpm": float(np.atleast_1d(tempo)[0]), "beats": beats, "downbeats": beats[phase::4], "key": key.name}


def bench_analysis(quick: bool = False) -> dict:
    """Score ATE and librosa's defaults on the generated set.

    Parameters
    ----------
    quick : bool
        Four tracks instead of twelve.

    Returns
    -------
    dict
        ``{"set": ..., "ate": metrics, "librosa": metrics, "tracks": [...]}``;
        metrics are means over tracks.
    """
    specs = standard_set()
    if quick:
        specs = specs[:4]
    rows = []
    separator = DspSeparator()
    for spec in specs:
        track = generate(spec)
        truth = track.truth
        duration_s = track.mix.shape[0] / SAMPLE_RATE

        t0 = time.process_time()
        ate = analyze_audio(track.mix)
        ate_cpu_s = time.process_time() - t0

        t0 = time.process_time()
        dsp_stems = separate_track(track.mix, separator)
        separation_cpu_s = time.process_time() - t0
        t0 = time.process_time()
        ate_dsp = analyze_audio(track.mix, stems=dsp_stems)
        dsp_cpu_s = time.process_time() - t0
        true_stems = np.stack([track.stems[name] for name in STEM_NAMES])
        t0 = time.process_time()
        ate_oracle = analyze_audio(track.mix, stems=true_stems)
        oracle_cpu_s = time.process_time() - t0

        t0 = time.process_time()
        y = resample(to_mono(track.mix)[:, None], SAMPLE_RATE, ANALYSIS_SR)[:, 0]
        peer = librosa_defaults(y, ANALYSIS_SR)
        peer_cpu_s = time.process_time() - t0

        row = {"title": spec.title, "bpm": spec.bpm, "beats_per_bar": spec.beats_per_bar, "key": truth.key,
               "style": spec.style, "drift_bpm": spec.tempo_drift_bpm, "duration_s": round(duration_s, 1)}
        for name, est_bpm, beats, downbeats, key, cpu_s in (
            ("ate", ate.bpm, ate.beats, ate.downbeats, ate.key, ate_cpu_s),
            ("ate_stems_dsp", ate_dsp.bpm, ate_dsp.beats, ate_dsp.downbeats, ate_dsp.key, dsp_cpu_s),
            ("ate_stems_oracle", ate_oracle.bpm, ate_oracle.beats, ate_oracle.downbeats, ate_oracle.key,
             oracle_cpu_s),
            ("librosa", peer["bpm"], peer["beats"], peer["downbeats"], peer["key"], peer_cpu_s),
        ):
            acc1, acc2 = _tempo_scores(est_bpm, truth.bpm)
            row[name] = {
                "bpm": round(est_bpm, 2),
                "beat_f": round(_beat_f(truth.beats, beats), 4),
                "tempo_acc1": acc1,
                "tempo_acc2": acc2,
                "downbeat_f": round(_beat_f(truth.downbeats, downbeats), 4),
                "key": key,
                "key_mirex": float(mir_eval.key.weighted_score(truth.key, key)),
                "realtime_x": round(duration_s / max(cpu_s, 1e-9), 1),
            }
        for name, result in (("ate", ate), ("ate_stems_dsp", ate_dsp), ("ate_stems_oracle", ate_oracle)):
            row[name]["beats_per_bar"] = result.beats_per_bar
        reference = merge_regions(truth.vocal_regions, duration_s)
        for name, result in (("ate_stems_dsp", ate_dsp), ("ate_stems_oracle", ate_oracle)):
            row[name]["vocal_f"] = round(region_f_measure(reference, result.vocal_regions or [], duration_s), 4)
        row["ate_stems_dsp"]["separation_realtime_x"] = round(duration_s / max(separation_cpu_s, 1e-9), 1)
        rows.append(row)

    def mean(side: str, metric: str) -> float:
        return round(float(np.mean([r[side][metric] for r in rows])), 4)

    metrics = ("beat_f", "tempo_acc1", "tempo_acc2", "downbeat_f", "key_mirex", "realtime_x")
    summary = {side: {m: mean(side, m) for m in metrics} for side in SIDES}
    for side in ("ate", "ate_stems_dsp", "ate_stems_oracle"):
        summary[side]["meter_acc"] = round(float(np.mean([r[side]["beats_per_bar"] == r["beats_per_bar"]
                                                          for r in rows])), 4)
    for side in ("ate_stems_dsp", "ate_stems_oracle"):
        summary[side]["vocal_f"] = mean(side, "vocal_f")
    summary["ate_stems_dsp"]["separation_realtime_x"] = mean("ate_stems_dsp", "separation_realtime_x")
    return {
        "benchmark": "analysis",
        "set": {"tracks": len(rows), "audio_s": round(sum(r["duration_s"] for r in rows), 1),
                "generator": "prep.synth.standard_set"},
        "speed_unit": "audio seconds per CPU second (process time, includes loudness and structure for ATE; "
                      "the stem paths exclude separation, reported as separation_realtime_x)",
        **summary,
        "tracks": rows,
    }
