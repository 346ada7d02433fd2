"""``ate bench transcribe``: note F-measure of the stem transcription against transcribing the full mix.

Every track of the set (:func:`prep.synth.standard_set`, 32 bars each; six
tracks; one of four bars in ``--quick``) is transcribed three ways in the same run:

- ``stems_oracle``: from the generator's true stems, the ceiling a perfect separator would reach;
- ``stems_dsp``: from the DSP separator's stems (:mod:`prep.dsp_separate`), what a machine without demucs gets;
- ``mix``: basic-pitch on the full mix, the peer. Its activations are turned into notes twice: with
  basic-pitch's own defaults (``mix_defaults``, what ``basic-pitch song.wav`` gives) and with each stem's
  settings of :data:`prep.transcribe.STEM_SETTINGS` (``mix_stem_settings``: the bass range and one note at
  a time for the bass, and so on), which is the fairest the mix can do. Drums are transcribed from the mix
  as well.

Scores (mir_eval.transcription, against the generator's notes of each stem):
``f_onset`` matches onset (±50 ms) and pitch; ``f_offset`` also the offset
(±20 % of the note or ±50 ms). Drums: onset F-measure (±50 ms) per General MIDI
class; ``ate_dsp_auto`` is what ``ate transcribe`` does with DSP stems (drums
from the mix, ``drums_from="auto"``). ``quantized``: the DSP-stem notes before
(``raw``) and after quantizing to the grid the analysis found (1/4 beat,
strength 1), as ``ate transcribe`` writes them: onset F-measure and the median
onset error of the matched notes (ms; the generator's notes lie on the grid).

Speed is audio seconds per CPU second (process time, one onnxruntime thread):
``peer_basic_pitch_mix`` is basic-pitch on the full mix (inference and its
note creation, defaults), ``ate_track`` the whole transcription of a track
from its stems (three basic-pitch passes, drums, quantization, MIDI files),
``drums`` the drum transcription alone. basic-pitch's authors give about 10x
realtime on a laptop CPU as a published anchor.
"""

from __future__ import annotations

import tempfile
import time

import mir_eval
import numpy as np

from prep.audio import SAMPLE_RATE
from prep.drums_transcribe import transcribe_drums
from prep.midi_file import GM_DRUM_NOTES
from prep.stems import STEM_NAMES
from prep.synth import TrackSpec, generate, standard_set
from prep.transcribe import (
    BASIC_PITCH_DEFAULTS,
    PITCHED_STEMS,
    STEM_SETTINGS,
    BasicPitch,
    TranscribeOptions,
    notes_from_activations,
    transcribe_track,
    write_transcription,
)

__all__ = ["bench_transcribe", "drum_scores", "note_scores"]

SOURCES = ("stems_oracle", "stems_dsp", "mix_stem_settings", "mix_defaults")
ONSET_TOLERANCE_S = 0.05


def _hz(pitch: np.ndarray) -> np.ndarray:
    return 440.0 * 2.0 ** ((np.asarray(pitch, dtype=np.float64) - 69.0) / 12.0)


def note_scores(notes: np.ndarray, truth: list) -> dict:
    """F-measures of notes against ``truth`` (:class:`prep.synth.Note` list): onset only, and with offsets."""
    if not truth:
        return {"f_onset": None, "f_offset": None, "notes": int(notes.size), "truth": 0}
    ref_iv = np.array([[n.start_s, n.end_s] for n in truth])
    ref_p = _hz([n.pitch for n in truth])
    if notes.size == 0:
        return {"f_onset": 0.0, "f_offset": 0.0, "notes": 0, "truth": len(truth)}
    est_iv = np.stack([notes["onset_s"], notes["offset_s"]], axis=1)
    est_p = _hz(notes["pitch"])
    f_on = mir_eval.transcription.precision_recall_f1_overlap(ref_iv, ref_p, est_iv, est_p,
                                                              onset_tolerance=ONSET_TOLERANCE_S,
                                                              offset_ratio=None)[2]
    f_off = mir_eval.transcription.precision_recall_f1_overlap(ref_iv, ref_p, est_iv, est_p,
                                                               onset_tolerance=ONSET_TOLERANCE_S)[2]
    matched = mir_eval.transcription.match_notes(ref_iv, ref_p, est_iv, est_p, onset_tolerance=ONSET_TOLERANCE_S,
                                                 offset_ratio=None)
    error_ms = (float(np.median([abs(est_iv[j, 0] - ref_iv[i, 0]) for i, j in matched])) * 1000
                if matched else None)
    return {"f_onset": round(float(f_on), 4), "f_offset": round(float(f_off), 4), "notes": int(notes.size),
            "truth": len(truth), "onset_error_ms": None if error_ms is None else round(error_ms, 2)}


def drum_scores(notes: np.ndarray, hits: list[tuple[float, str]]) -> dict:
    """Onset F-measure (±50 ms) per drum class of drum notes against the generator's hits."""
    out = {}
    for kind, pitch in GM_DRUM_NOTES.items():
        ref = np.array(sorted(t for t, k in hits if k == kind))
        est = np.sort(notes["onset_s"][notes["pitch"] == pitch])
        if ref.size == 0:
            out[kind] = None  # nothing to find: a false alarm count alone says little
            continue
        out[kind] = round(float(mir_eval.onset.f_measure(ref, est, ONSET_TOLERANCE_S)[0]), 4) if est.size else 0.0
    return out


def _specs(quick: bool) -> list[TrackSpec]:
    if quick:
        return [TrackSpec(bpm=124.0, style="house", structure=[["verse", 2], ["chorus", 2]], seed=7,
                          title="quick house 124")]
    return standard_set(12, duration_bars=32)[:6]


def _cpu(fn, *args, **kwargs):
    t0 = time.process_time()
    out = fn(*args, **kwargs)
    return out, time.process_time() - t0


def _mean(values) -> float | None:
    values = [v for v in values if v is not None]
    return round(float(np.mean(values)), 4) if values else None


def bench_transcribe(quick: bool = False) -> dict:
    """Score stem transcription against the full mix, and time it.

    Parameters
    ----------
    quick : bool
        One 4-bar track (9 s) instead of six 32-bar ones: a check that it runs, not a measurement.

    Returns
    -------
    dict
        ``pitched`` (per stem and source: mean ``f_onset``, ``f_offset``), ``drums`` (per class and source),
        ``quantized``, ``speed`` and ``tracks`` (per-track figures).
    """
    from prep.analyze import analyze_audio
    from prep.dsp_separate import DspSeparator
    from prep.separate import separate_track

    model = BasicPitch(threads=1)
    separator = DspSeparator()
    rows = []
    cpu = {"peer": 0.0, "ate_track": 0.0, "drums": 0.0, "separation": 0.0}
    audio_s = 0.0
    for spec in _specs(quick):
        track = generate(spec)
        truth = track.truth
        duration_s = track.mix.shape[0] / SAMPLE_RATE
        audio_s += duration_s
        dsp, sep_s = _cpu(separate_track, track.mix, separator)
        cpu["separation"] += sep_s
        dsp_stems = {name: dsp[i] for i, name in enumerate(STEM_NAMES)}

        # The peer: basic-pitch on the mix, inference plus its default note creation.
        mix_acts, infer_s = _cpu(model.activations, track.mix)
        mix_default_notes, notes_s = _cpu(notes_from_activations, mix_acts, BASIC_PITCH_DEFAULTS)
        cpu["peer"] += infer_s + notes_s

        row: dict = {"title": spec.title, "duration_s": round(duration_s, 1), "pitched": {}, "drums": {}}
        for stem in PITCHED_STEMS:
            settings = STEM_SETTINGS[stem]
            row["pitched"][stem] = {
                "stems_oracle": note_scores(notes_from_activations(model.activations(track.stems[stem]), settings),
                                            truth.notes[stem]),
                "stems_dsp": note_scores(notes_from_activations(model.activations(dsp_stems[stem]), settings),
                                         truth.notes[stem]),
                "mix_stem_settings": note_scores(notes_from_activations(mix_acts, settings), truth.notes[stem]),
                "mix_defaults": note_scores(mix_default_notes, truth.notes[stem]),
            }
        oracle_drums, drums_s = _cpu(transcribe_drums, track.stems["drums"])
        cpu["drums"] += drums_s
        row["drums"] = {"stems_oracle": drum_scores(oracle_drums, truth.drum_hits),
                        "stems_dsp": drum_scores(transcribe_drums(dsp_stems["drums"]), truth.drum_hits),
                        "mix": drum_scores(transcribe_drums(track.mix), truth.drum_hits)}

        # What `ate transcribe` writes: the DSP stems on the analysis' grid, timed end to end.
        analysis = analyze_audio(track.mix, stems=dsp).to_dict()
        t0 = time.process_time()
        result = transcribe_track(dsp_stems, analysis, TranscribeOptions(), model=model, stems_model="dsp",
                                  mix=track.mix)
        with tempfile.TemporaryDirectory() as tmp:
            write_transcription(result, tmp)
        cpu["ate_track"] += time.process_time() - t0
        row["drums"]["ate_dsp_auto"] = drum_scores(result.raw["drums"], truth.drum_hits)
        row["quantized"] = {s: note_scores(result.notes[s], truth.notes[s]) for s in PITCHED_STEMS}
        row["raw"] = {s: note_scores(result.raw[s], truth.notes[s]) for s in PITCHED_STEMS}
        rows.append(row)

    pitched = {stem: {src: {m: _mean(r["pitched"][stem][src][m] for r in rows) for m in ("f_onset", "f_offset")}
                      for src in SOURCES} for stem in PITCHED_STEMS}
    drums = {src: {kind: _mean(r["drums"][src][kind] for r in rows) for kind in GM_DRUM_NOTES}
             for src in ("stems_oracle", "stems_dsp", "mix", "ate_dsp_auto")}
    speed = {name: round(audio_s / max(s, 1e-9), 1) for name, s in cpu.items()}
    speed["ate_track_vs_peer"] = round(speed["ate_track"] / max(speed["peer"], 1e-9), 3)
    return {
        "benchmark": "transcribe",
        "set": {"tracks": len(rows), "audio_s": round(audio_s, 1),
                "generator": "prep.synth.standard_set(12, duration_bars=32)[:6]" if not quick else "one 4-bar track"},
        "pitched": pitched,
        "drums": drums,
        "quantized": {side: {s: {m: _mean(r[side][s][m] for r in rows) for m in ("f_onset", "onset_error_ms")}
                             for s in PITCHED_STEMS} for side in ("raw", "quantized")},
        "speed": speed,
        "speed_unit": "audio seconds per CPU second (process time, one onnxruntime thread); ate_track: three "
                      "basic-pitch stems, drums, quantization and MIDI files from given stems; separation apart",
        "anchor": "basic-pitch paper/README: about 10x realtime on a laptop CPU",
        "tracks": rows,
    }
