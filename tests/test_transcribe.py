"""MIDI transcription (prep/transcribe.py, drums_transcribe.py, quantize.py, midi_file.py) on generated truth."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pretty_midi
import pytest

from prep.bench_transcribe import drum_scores, note_scores
from prep.crate import Crate, default_db_path
from prep.midi_file import DRUM_CHANNEL, GM_DRUM_NOTES, PPQ, make_notes, read_midi, tempo_map, write_midi
from prep.quantize import BeatGrid, measure_swing, parse_division, quantize_times
from prep.synth import TrackSpec, generate, write_track
from prep.transcribe import BasicPitch, TranscribeOptions, transcribe_track, transcriptions, write_transcription


def _analysis(truth) -> dict:
    """An analysis record carrying the generator's exact grid."""
    return {"beats": [float(t) for t in truth.beats], "downbeats": [float(t) for t in truth.downbeats],
            "beats_per_bar": truth.beats_per_bar, "key": truth.key,
            "segments": [{"start": s.start_s, "end": s.end_s, "label": s.name} for s in truth.sections]}


@pytest.fixture(scope="module")
def model() -> BasicPitch:
    return BasicPitch(threads=2)


@pytest.fixture(scope="module")
def house():
    """16.5 s of house (verse, then chorus with open hats), 124 BPM, its true stems transcribed unquantized."""
    track = generate(TrackSpec(bpm=124.0, style="house", structure=[["verse", 4], ["chorus", 4]], seed=7))
    return track


@pytest.fixture(scope="module")
def house_raw(house, model):
    return transcribe_track(house.stems, _analysis(house.truth), TranscribeOptions(strength=0.0), model=model)


# --------------------------------------------------------------------------- notes

# Measured on this track: bass 0.94, vocals 1.00, other 0.79 (onset F); drums kick 0.98, snare 0.97,
# closed hat 0.75, open hat 0.91. The thresholds leave a margin of about 0.1.
def test_pitched_stems_notes_are_found(house, house_raw):
    scores = {s: note_scores(house_raw.raw[s], house.truth.notes[s]) for s in ("bass", "vocals", "other")}
    assert scores["bass"]["f_onset"] >= 0.85, scores
    assert scores["vocals"]["f_onset"] >= 0.9, scores
    assert scores["vocals"]["f_offset"] >= 0.8, scores
    assert scores["other"]["f_onset"] >= 0.65, scores
    # Bass notes stay in the bass range and one at a time.
    bass = house_raw.raw["bass"]
    assert bass["pitch"].min() >= 28 and bass["pitch"].max() <= 67
    assert np.all(bass["onset_s"][1:] >= bass["offset_s"][:-1] - 1e-9)
    assert np.all((house_raw.raw["bass"]["velocity"] > 0) & (house_raw.raw["bass"]["velocity"] <= 1))


def test_drum_classes_are_right(house, house_raw):
    drums = house_raw.raw["drums"]
    assert set(np.unique(drums["pitch"])) <= set(GM_DRUM_NOTES.values())
    scores = drum_scores(drums, house.truth.drum_hits)
    assert scores["kick"] >= 0.9 and scores["snare"] >= 0.85, scores
    assert scores["closed_hat"] >= 0.6 and scores["open_hat"] >= 0.75, scores
    # Kicks in 4/4 house are on every beat: each transcribed kick sits on one.
    kicks = drums["onset_s"][drums["pitch"] == 36]
    assert np.max(np.min(np.abs(kicks[:, None] - house.truth.beats[None]), axis=1)) < 0.012


# --------------------------------------------------------------------------- quantization

@pytest.fixture(scope="module")
def drifting_grid() -> BeatGrid:
    # 118 -> 126 BPM over 40 beats, the first downbeat on the second beat (one pickup beat) at 0.9 s.
    periods = 60.0 / np.linspace(118.0, 126.0, 40)
    beats = 0.4 + np.concatenate([[0.0], np.cumsum(periods)])
    return BeatGrid.from_analysis(beats, beats[1::4], 4)


def test_grid_has_a_pickup_and_maps_both_ways(drifting_grid):
    g = drifting_grid
    assert g.beats_s[0] == 0.0 and g.downbeat_index == 2   # 0 -> 0.4 s, then the pickup beat 0.4 -> 0.9 s
    assert g.beats_s[2] == pytest.approx(0.4 + 60 / 118)
    t = np.linspace(0.0, 25.0, 1001)
    np.testing.assert_allclose(g.time_of(g.beat_of(t)), t, atol=1e-9)
    bar, beat = g.bar_beat_of(g.beat_of(g.downbeats_s()[:3]))
    assert list(bar) == [1, 2, 3] and np.allclose(beat, 0)


def test_quantize_strength_one_is_exact_and_half_is_halfway(drifting_grid):
    g = drifting_grid
    rng = np.random.default_rng(3)
    t = np.sort(rng.uniform(1.0, 18.0, 200))
    b = g.beat_of(t)
    full = g.beat_of(quantize_times(t, g, division=4, strength=1.0))
    np.testing.assert_allclose(full * 4, np.round(full * 4), atol=1e-9)  # on the 1/4-beat grid
    assert np.max(np.abs(full - b)) <= 0.125 + 1e-9                        # to the nearest step
    half = g.beat_of(quantize_times(t, g, division=4, strength=0.5))
    np.testing.assert_allclose(half, (b + full) / 2, atol=1e-9)           # halfway, in beats
    triplets = g.beat_of(quantize_times(t, g, division=parse_division("1/3")))
    np.testing.assert_allclose(triplets * 3, np.round(triplets * 3), atol=1e-9)
    assert np.array_equal(quantize_times(t, g, strength=0.0), t)
    assert parse_division("1/4") == 4 and parse_division("1/8") == 8 and parse_division("0.5") == 2
    with pytest.raises(ValueError, match="fraction of a beat"):
        parse_division("quarter")


def test_swing_is_measured_and_kept():
    spec = TrackSpec(bpm=100.0, style="house", structure=[["verse", 4]], seed=5, swing=0.62)
    track = generate(spec)
    analysis = _analysis(track.truth)
    options = {"stems": ("drums",), "strength": 1.0}
    swung = transcribe_track(track.stems, analysis, TranscribeOptions(swing=True, **options))
    straight = transcribe_track(track.stems, analysis, TranscribeOptions(swing=False, **options))
    assert swung.swing == pytest.approx(0.62, abs=0.02)
    truth = np.array(sorted({round(t, 6) for t, _ in track.truth.drum_hits}))

    def error_s(notes):
        return np.min(np.abs(notes["onset_s"][:, None] - truth[None]), axis=1)

    # Swung quantization keeps every hit where it was played; a straight grid drags the off-16ths early.
    assert np.percentile(error_s(swung.notes["drums"]), 95) < 0.006
    off = np.abs(np.mod(swung.grid.beat_of(swung.raw["drums"]["onset_s"]) * 4, 2) - 2 * 0.62) < 0.1
    assert off.sum() >= 20
    assert np.median(error_s(straight.notes["drums"])[off]) > 0.03
    # A straight track measures straight.
    plain = generate(TrackSpec(bpm=100.0, style="house", structure=[["verse", 4]], seed=5))
    onsets = transcribe_track(plain.stems, _analysis(plain.truth), TranscribeOptions(**options)).raw["drums"]
    assert measure_swing(onsets["onset_s"], BeatGrid.from_analysis(plain.truth.beats, plain.truth.downbeats)) == 0.5


# --------------------------------------------------------------------------- MIDI files

def test_midi_file_carries_the_tempo_map_and_bars(tmp_path, drifting_grid):
    g = drifting_grid
    onsets = g.time_of(np.arange(3, 150, 0.75))
    notes = make_notes(onsets, onsets + 0.2, 40 + np.arange(onsets.size) % 12, 0.7)
    drums = make_notes(g.downbeats_s(), g.downbeats_s() + 0.1, [36] * g.downbeats_s().size, 1.0)
    path = write_midi(tmp_path / "x.mid", {"bass": notes, "drums": drums}, g, key="F# minor",
                      markers=[(0.9, "verse")])
    pm = pretty_midi.PrettyMIDI(str(path))
    # MIDI beats fall on the audio's beats, and bar lines on its downbeats (pickup bar first).
    midi_beats = pm.get_beats()[:g.beats_s.size]
    np.testing.assert_allclose(midi_beats, g.beats_s, atol=2e-6)
    np.testing.assert_allclose(pm.get_downbeats()[1:1 + g.downbeats_s().size], g.downbeats_s(), atol=2e-6)
    sigs = [(s.numerator, s.denominator, round(s.time, 6)) for s in pm.time_signature_changes]
    assert sigs == [(2, 4, 0.0), (4, 4, round(g.beats_s[2], 6))]
    # Note onsets through the file's own tempo map land on the audio times (to a tick, 1/960 beat).
    bass = next(i for i in pm.instruments if i.name == "bass")
    starts = np.array(sorted(n.start for n in bass.notes))
    np.testing.assert_allclose(starts, np.sort(notes["onset_s"]), atol=0.6 / PPQ * 0.52)
    kit = next(i for i in pm.instruments if i.name == "drums")
    assert kit.is_drum and not bass.is_drum
    assert pm.key_signature_changes[0].key_number == pretty_midi.key_name_to_key_number("F# minor")
    # ATE's own reader agrees, and a tempo event comes at each beat whose length changes.
    back = read_midi(path)
    np.testing.assert_allclose(back["bass"]["onset_s"], notes["onset_s"], atol=0.6 / PPQ * 0.52)
    assert len(tempo_map(g)) > 30


def test_track_files_line_up_bar_for_bar(tmp_path, house, house_raw):
    written = write_transcription(house_raw, tmp_path / "midi", title="house")
    assert set(written) == {"bass", "vocals", "other", "drums", "merged"}
    pm = pretty_midi.PrettyMIDI(str(written["merged"]))
    assert [i.name for i in pm.instruments] == ["bass", "vocals", "other", "drums"]
    truth = house.truth
    np.testing.assert_allclose(pm.get_downbeats()[:truth.downbeats.size], truth.downbeats, atol=2e-6)
    drum_file = pretty_midi.PrettyMIDI(str(written["drums"]))
    assert drum_file.instruments[0].is_drum
    import mido

    channels = {m.channel for m in mido.MidiFile(str(written["drums"])).tracks[1] if m.type == "note_on"}
    assert channels == {DRUM_CHANNEL}
    for stem in ("bass", "drums"):
        starts = np.array(sorted(n.start for i in pm.instruments if i.name == stem for n in i.notes))
        np.testing.assert_allclose(starts, np.sort(house_raw.notes[stem]["onset_s"]), atol=1e-3)


# --------------------------------------------------------------------------- command line and crate

@pytest.fixture(scope="module")
def short_file(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("transcribe")
    track = generate(TrackSpec(bpm=120.0, style="house", structure=[["chorus", 5]], seed=21, lead_in_s=0.6))
    write_track(track, folder / "short.flac")
    return folder / "short.flac"


def test_cli_transcribes_a_file_end_to_end(tmp_path, short_file, capsys):
    from ate.cli import main

    out = tmp_path / "out"
    code = main(["transcribe", str(short_file), "-o", str(out), "--separator", "dsp", "--grid", "1/8",
                 "--quantize", "1", "--stems", "bass,drums", "--threads", "2"])
    printed = capsys.readouterr().out
    assert code == 0, printed
    assert str(out / "merged.mid") in printed and "bass" in printed
    assert "drums from the mix" in printed  # DSP stems: the mix gives the better drums (docs/transcription.md)
    assert sorted(p.name for p in out.iterdir()) == ["bass.mid", "drums.mid", "merged.mid"]
    pm = pretty_midi.PrettyMIDI(str(out / "merged.mid"))
    assert [i.name for i in pm.instruments] == ["bass", "drums"]
    assert 119 < 60 / np.median(np.diff(pm.get_beats()[3:])) < 121  # the analysis' tempo map
    # Quantized to 1/8 beat on the file's own grid.
    beats = pm.get_beats()
    for inst in pm.instruments:
        pos = np.interp([n.start for n in inst.notes], beats, np.arange(beats.size))
        assert np.allclose(pos * 8, np.round(pos * 8), atol=0.01)


def test_bad_file_is_one_line_naming_it(tmp_path, capsys):
    from ate.cli import main

    bad = tmp_path / "broken.wav"
    bad.write_bytes(b"RIFF\x00\x00\x00\x00WAVEjunk")
    assert main(["transcribe", str(bad), "-o", str(tmp_path / "o"), "--separator", "dsp"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: {bad}: ")
    assert main(["transcribe", str(bad), "--grid", "1/0"]) == 2
    assert "grid" in capsys.readouterr().err


def test_prep_step_fills_the_crate(tmp_path, short_file):
    from prep.pipeline import prep_crate
    from prep.separate import SeparatorChoice

    crate_dir = tmp_path / "crate"
    crate_dir.mkdir()
    (crate_dir / "short.flac").write_bytes(short_file.read_bytes())
    report = prep_crate(crate_dir, workers=1, progress=False, separator=SeparatorChoice("dsp"),
                        steps=["transcribe"])
    assert report.new == 1 and report.steps == {"transcribe": 1, "failed": 0}
    with Crate(default_db_path(crate_dir)) as crate:
        track = crate.list_tracks()[0]
        rows = transcriptions(crate, track["content_hash"])
        stored = crate.connection.execute("SELECT stem, path FROM transcriptions").fetchall()
    h = track["content_hash"]
    assert set(rows) == {"bass", "vocals", "other", "drums", "merged"}
    assert {p for _, p in stored} == {f".ate/midi/{h[:2]}/{h}/{s}.mid" for s in rows}
    assert rows["merged"]["notes"] == sum(rows[s]["notes"] for s in ("bass", "vocals", "other", "drums")) > 50
    assert rows["bass"]["params"]["options"]["grid"] == "1/4" and rows["bass"]["version"] >= 1
    assert rows["drums"]["params"]["drums_from"] == "mix"  # the crate knows its stems are DSP-made
    pm = pretty_midi.PrettyMIDI(rows["merged"]["path"])
    assert len(pm.instruments) == 4 and json.dumps(rows["drums"]["params"])
    # Done is done.
    again = prep_crate(crate_dir, workers=1, progress=False, separator=SeparatorChoice("dsp"), steps=["transcribe"])
    assert again.steps == {"transcribe": 0, "failed": 0}
    # `ate transcribe --crate` uses the stored stems and analysis (no separation, no analysis).
    from ate.cli import main

    out = tmp_path / "from-crate"
    assert main(["transcribe", h[:10], "--crate", str(crate_dir), "-o", str(out), "--stems", "drums,bass",
                 "--swing", "--threads", "2"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["bass.mid", "drums.mid", "merged.mid"]
    assert main(["transcribe", "no such track", "--crate", str(crate_dir)]) == 2


def test_benchmark_quick_runs_and_the_stems_win():
    from ate.bench import run_benchmark

    result = run_benchmark("transcribe", quick=True)
    json.dumps(result)
    bass = result["pitched"]["bass"]
    assert bass["stems_oracle"]["f_onset"] > bass["mix_defaults"]["f_onset"] + 0.3  # measured 1.00 against 0.24
    assert result["pitched"]["vocals"]["stems_oracle"]["f_onset"] > result["pitched"]["vocals"]["mix_defaults"]["f_onset"]
    assert result["drums"]["stems_oracle"]["kick"] >= 0.8
    assert result["speed"]["peer"] > 1 and 0 < result["speed"]["ate_track_vs_peer"] < 1
