"""Tests of prep.synth: the audio must agree with the truth it reports."""

from __future__ import annotations

import json

import numpy as np
import pytest
import soundfile as sf
from scipy import signal

from prep.audio import SAMPLE_RATE as SR
from prep.synth import (
    DRUM_KINDS, STEMS, Note, TrackSpec, Truth, demo_specs, generate, key_name, load_truth, standard_set,
    write_stems, write_track,
)

SHORT = [["intro", 4], ["verse", 4], ["chorus", 4], ["breakdown", 4], ["outro", 4]]


@pytest.fixture(scope="module")
def house():
    return generate(TrackSpec(bpm=128, tonic=9, mode="minor", structure=SHORT, seed=7))


@pytest.fixture(scope="module")
def drifting():
    # Fast, drifting, with a lead-in: the hardest grid to get exactly right.
    return generate(TrackSpec(bpm=170, style="dnb", tonic=3, mode="minor", tempo_drift_bpm=6.0, lead_in_s=0.75,
                              structure=[["chorus", 8], ["breakdown", 4], ["outro", 4]], seed=11))


@pytest.fixture(scope="module")
def waltz():
    return generate(TrackSpec(bpm=96, beats_per_bar=3, style="waltz", tonic=6, mode="major",
                              structure=[["intro", 4], ["verse", 4], ["breakdown", 4], ["chorus", 4]], seed=5))


def _rms_db(x: np.ndarray) -> float:
    return 20 * np.log10(np.sqrt(np.mean(np.asarray(x, dtype=float) ** 2)) + 1e-12)


def _region_mask(n: int, regions) -> np.ndarray:
    mask = np.zeros(n, dtype=bool)
    for a, b in regions:
        mask[int(round(a * SR)):int(round(b * SR))] = True
    return mask


# --------------------------------------------------------------------------- format

def test_stems_are_float32_stereo_and_sum_exactly_to_mix(house):
    assert set(house.stems) == set(STEMS)
    n = house.stems["drums"].shape[0]
    for name, x in house.stems.items():
        assert x.dtype == np.float32 and x.shape == (n, 2), name
        assert np.all(np.isfinite(x))
    mix = house.mix
    assert mix.dtype == np.float32
    expected = house.stems["drums"] + house.stems["bass"] + house.stems["vocals"] + house.stems["other"]
    assert np.array_equal(mix, expected)
    assert house.duration_s == pytest.approx(n / SR)


def test_mix_peak_is_about_minus_one_dbfs(house, waltz):
    for track in (house, waltz):
        peak = float(np.max(np.abs(track.mix)))
        assert peak <= 1.0
        assert 20 * np.log10(peak) == pytest.approx(-1.0, abs=0.05)


def test_every_stem_is_audible_and_panned_differently(house):
    for name, x in house.stems.items():
        assert _rms_db(x) > -45, name
    # Pads are wide (left != right); bass is mono.
    other, bass = house.stems["other"], house.stems["bass"]
    assert np.array_equal(bass[:, 0], bass[:, 1])
    side = other[:, 0].astype(float) - other[:, 1]
    assert _rms_db(side) > _rms_db(other) - 20


# --------------------------------------------------------------------------- time grid

def test_beats_follow_constant_tempo(house):
    t = house.truth
    assert t.bpm == pytest.approx(128.0)
    assert len(t.beats) == 20 * 4
    assert t.beats[0] == 0.0
    np.testing.assert_allclose(np.diff(t.beats), 60.0 / 128, atol=1e-9)
    np.testing.assert_array_equal(t.downbeats, t.beats[::4])
    # Beats cover the whole arrangement up to the end of the last bar.
    assert t.sections[-1].end_s == pytest.approx(t.beats[-1] + 60.0 / 128)
    assert house.duration_s > t.sections[-1].end_s


def test_tempo_drift_changes_beat_spacing(drifting):
    t = drifting.truth
    ibi = np.diff(t.beats)
    assert np.all(np.diff(ibi) < 0)  # speeding up: every beat a bit shorter than the last
    assert 60.0 / ibi[0] == pytest.approx(170.0, abs=0.1)
    # The last beat lasts until the end of the last bar.
    assert 60.0 / (t.sections[-1].end_s - t.beats[-1]) == pytest.approx(176.0, abs=0.1)
    span = t.sections[-1].end_s - t.sections[0].start_s
    assert t.bpm == pytest.approx(60.0 * len(t.beats) / span)
    assert 172.5 < t.bpm < 173.5


def test_lead_in_is_silent(drifting):
    t = drifting.truth
    assert t.beats[0] == pytest.approx(0.75)
    assert t.sections[0].start_s == pytest.approx(0.75)
    lead = drifting.mix[: int(round(0.75 * SR))]
    assert np.max(np.abs(lead)) == 0.0


def test_three_four_has_three_beats_per_bar(waltz):
    t = waltz.truth
    assert t.beats_per_bar == 3
    assert len(t.beats) == 16 * 3
    np.testing.assert_array_equal(t.downbeats, t.beats[::3])
    np.testing.assert_allclose(np.diff(t.downbeats), 3 * 60.0 / 96, atol=1e-9)
    # The waltz kick marks each "one" wherever there are drums.
    kicks = {round(time, 9) for time, kind in t.drum_hits if kind == "kick"}
    for s in t.sections:
        if "drums" in s.stems_present:
            for d in t.downbeats[s.start_bar:s.start_bar + s.bars]:
                assert round(d, 9) in kicks


def test_sections_tile_the_track(house):
    secs = house.truth.sections
    assert [s.name for s in secs] == [s[0] for s in SHORT]
    assert [s.start_bar for s in secs] == [0, 4, 8, 12, 16]
    for a, b in zip(secs, secs[1:]):
        assert a.end_s == b.start_s
    assert secs[0].stems_present == frozenset({"drums", "bass"})
    assert "drums" not in secs[3].stems_present
    for s in secs:
        assert s.start_s == pytest.approx(house.truth.downbeats[s.start_bar])


# --------------------------------------------------------------------------- drums

def _kick_onset_errors_s(track) -> np.ndarray:
    """Onset of each truth kick, measured in the drum stem's low band.

    Kicks are the only drums with much energy below 200 Hz; the onset is the
    first sample of a +-20 ms window whose low-band level reaches 30 % of the
    hit's peak. Kicks less than 400 ms after another kick or snare are
    skipped: the earlier drum's tail still rings in the low band there.
    """
    pad = 2000
    drums = np.concatenate([np.zeros(pad), track.stems["drums"].mean(axis=1).astype(float)])
    low = np.abs(signal.sosfilt(signal.butter(2, 200, fs=SR, output="sos"), drums))
    win = int(0.02 * SR)
    low_hits = np.array([t for t, kind in track.truth.drum_hits if kind in ("kick", "snare")])
    errors = []
    for time_s, kind in track.truth.drum_hits:
        if kind != "kick" or np.any((low_hits < time_s) & (low_hits > time_s - 0.4)):
            continue
        c = int(round(time_s * SR)) + pad
        ref = low[c:c + int(0.05 * SR)].max()
        errors.append((np.argmax(low[c - win:c + win] > 0.3 * ref) - win) / SR)
    return np.array(errors)


@pytest.mark.parametrize("name", ["house", "house_drift", "waltz"])
def test_kicks_start_at_truth_times(name, request):
    if name == "house_drift":  # slowing down after a lead-in: every kick off the 1/sr grid differently
        track = generate(TrackSpec(bpm=122, tempo_drift_bpm=-5, lead_in_s=0.5013, structure=[["chorus", 8]], seed=4))
    else:
        track = request.getfixturevalue(name)
    errors = _kick_onset_errors_s(track)
    assert len(errors) >= 8
    # A causal 200 Hz low-pass and the sine's rise delay the measured onset by ~1 ms.
    assert np.all(errors >= -0.0005) and np.all(errors <= 0.002), (errors.min(), errors.max())


def test_drum_hits_are_on_the_sixteenth_grid_and_kinds_are_known(house):
    beats = house.truth.beats
    ibi = 60.0 / 128
    kinds = {kind for _, kind in house.truth.drum_hits}
    assert kinds == set(DRUM_KINDS)
    for time_s, _ in house.truth.drum_hits:
        pos = (time_s - beats[0]) / ibi * 4
        assert abs(pos - round(pos)) < 1e-6
    times = [t for t, _ in house.truth.drum_hits]
    assert times == sorted(times)
    # House: four on the floor wherever there are drums.
    kicks = {round(t, 6) for t, k in house.truth.drum_hits if k == "kick"}
    chorus = house.truth.sections[2]
    in_chorus = [b for b in beats if chorus.start_s <= b < chorus.end_s]
    assert sum(round(b, 6) in kicks for b in in_chorus) >= len(in_chorus) - 2  # a fill may drop a kick


def test_drum_stem_silent_without_drums(house, drifting, waltz):
    for track in (house, drifting, waltz):
        drumless = [s for s in track.truth.sections if "drums" not in s.stems_present]
        assert drumless
        for s in drumless:
            seg = track.stems["drums"][int(round(s.start_s * SR)):int(round(s.end_s * SR))]
            assert _rms_db(seg) < -60
            assert not any(s.start_s <= t < s.end_s for t, _ in track.truth.drum_hits)
        with_drums = [s for s in track.truth.sections if "drums" in s.stems_present]
        for s in with_drums:
            seg = track.stems["drums"][int(round(s.start_s * SR)):int(round(s.end_s * SR))]
            assert _rms_db(seg) > -35


# --------------------------------------------------------------------------- pitched stems

def test_bass_energy_is_low(house, drifting):
    for track in (house, drifting):
        f, p = signal.welch(track.stems["bass"][:, 0], SR, nperseg=8192)
        assert p[f < 250].sum() / p.sum() > 0.85
        for n in track.truth.notes["bass"]:
            assert 440 * 2 ** ((n.pitch - 69) / 12) < 200


def test_notes_are_consistent_with_sections(house):
    t = house.truth
    for stem in ("bass", "vocals", "other"):
        notes = t.notes[stem]
        assert notes, stem
        for n in notes:
            assert isinstance(n, Note) and 0 <= n.velocity <= 1 and n.end_s > n.start_s
            sec = next(s for s in t.sections if s.start_s <= n.start_s < s.end_s)
            assert stem in sec.stems_present
    # Chord tones sit in the middle register.
    assert all(48 <= n.pitch <= 76 for n in t.notes["other"])


def _krumhansl_key(x: np.ndarray) -> tuple[int, str]:
    """Key by correlating a CQT chroma with the Krumhansl-Kessler profiles."""
    import librosa

    major = np.array([6.35, 2.23, 3.48, 2.33, 4.38, 4.09, 2.52, 5.19, 2.39, 3.66, 2.29, 2.88])
    minor = np.array([6.33, 2.68, 3.52, 5.38, 2.60, 3.53, 2.54, 4.75, 3.98, 2.69, 3.34, 3.17])
    y = signal.resample_poly(x.mean(axis=1).astype(float), 1, 4)
    chroma = librosa.feature.chroma_cqt(y=y, sr=SR // 4, hop_length=2048).sum(axis=1)
    scores = [(np.corrcoef(chroma, np.roll(prof, tonic))[0, 1], tonic, mode)
              for mode, prof in (("major", major), ("minor", minor)) for tonic in range(12)]
    _, tonic, mode = max(scores)
    return tonic, mode


@pytest.mark.parametrize("tonic,mode,style,bpb,seed", [
    (9, "minor", "house", 4, 7),
    (6, "major", "waltz", 3, 5),
    (3, "minor", "dnb", 4, 11),
    (10, "major", "hiphop", 4, 2),
])
def test_harmony_is_in_the_spec_key(tonic, mode, style, bpb, seed):
    spec = TrackSpec(bpm={"dnb": 174, "hiphop": 90}.get(style, 124), beats_per_bar=bpb, style=style, tonic=tonic,
                     mode=mode, structure=[["intro", 8], ["verse", 8], ["chorus", 8], ["breakdown", 8]], seed=seed)
    track = generate(spec)
    assert track.truth.key == key_name(tonic, mode)
    assert _krumhansl_key(track.stems["other"] + track.stems["bass"]) == (tonic, mode)


def test_vocals_sound_only_inside_vocal_regions(house, waltz):
    for track in (house, waltz):
        t = track.truth
        assert t.vocal_regions
        vox = track.stems["vocals"][:, 0]
        mask = _region_mask(len(vox), t.vocal_regions)
        assert _rms_db(vox[mask]) > _rms_db(vox[~mask]) + 60
        # Regions are merged notes: sorted, disjoint, separated by breaths of >= 0.3 s.
        starts = np.array([a for a, _ in t.vocal_regions])
        ends = np.array([b for _, b in t.vocal_regions])
        assert np.all(ends > starts) and np.all(starts[1:] - ends[:-1] >= 0.3)
        for n in t.notes["vocals"]:
            assert any(a <= n.start_s and n.end_s <= b for a, b in t.vocal_regions)
        # No singing in the intro, the outro or the first half of a breakdown.
        for s in t.sections:
            quiet_until = s.end_s if s.name in ("intro", "outro") else (
                (s.start_s + s.end_s) / 2 if s.name == "breakdown" else s.start_s)
            assert not any(s.start_s <= a < quiet_until for a, _ in t.vocal_regions)


def test_vocal_notes_sound_at_their_pitch(house):
    vox = house.stems["vocals"][:, 0].astype(float)
    for n in house.truth.notes["vocals"]:
        a = int(round(n.start_s * SR)) + int(0.05 * SR)  # past the soft attack
        seg = vox[a:a + 4096]
        assert _rms_db(seg) > -40
        # The strongest harmonic among the first four is a multiple of the note's f0.
        f0 = 440 * 2 ** ((n.pitch - 69) / 12)
        spec = np.abs(np.fft.rfft(seg * np.hanning(len(seg)), 8 * len(seg)))
        freqs = np.fft.rfftfreq(8 * len(seg), 1 / SR)
        peak_hz = freqs[np.argmax(spec * (freqs > 0.7 * f0) * (freqs < 4.5 * f0))]
        harmonic = peak_hz / f0
        assert abs(harmonic - round(harmonic)) < 0.06, (n, peak_hz)


def test_repeated_sections_repeat():
    spec = TrackSpec(structure=[["chorus", 8], ["breakdown", 8], ["chorus", 8]], seed=21)
    t = generate(spec).truth
    first, second = t.sections[0], t.sections[2]

    def notes_in(stem, start_s, end_s):
        sel = [n for n in t.notes[stem] if start_s <= n.start_s < end_s]
        return np.array([n.start_s - start_s for n in sel]), [n.pitch for n in sel]

    for stem in ("vocals", "other", "bass"):
        (ta, pa), (tb, pb) = notes_in(stem, first.start_s, first.end_s), notes_in(stem, second.start_s, second.end_s)
        assert pa and pa == pb, stem
        np.testing.assert_allclose(ta, tb, atol=1e-6)
    # Within a chorus the 4-bar motif repeats.
    half = t.downbeats[4]
    (ta, pa), (tb, pb) = notes_in("vocals", 0.0, half), notes_in("vocals", half, first.end_s)
    assert pa and pa == pb
    np.testing.assert_allclose(ta, tb, atol=1e-6)
    # ... and the verse sings a different motif.
    verse = generate(TrackSpec(structure=[["verse", 4], ["chorus", 4]], seed=21)).truth
    v = [n.pitch for n in verse.notes["vocals"] if n.start_s < verse.sections[1].start_s]
    c = [n.pitch for n in verse.notes["vocals"] if n.start_s >= verse.sections[1].start_s]
    assert v and c and v != c


# --------------------------------------------------------------------------- determinism, I/O, sets

def test_deterministic_for_a_seed():
    spec = TrackSpec(structure=[["verse", 4], ["breakdown", 4]], seed=42)
    a, b = generate(spec), generate(spec)
    for name in STEMS:
        assert np.array_equal(a.stems[name], b.stems[name])
    assert a.truth.to_dict() == b.truth.to_dict()
    c = generate(TrackSpec(structure=[["verse", 4], ["breakdown", 4]], seed=43))
    assert not np.array_equal(a.mix, c.mix)


def test_truth_json_round_trip_and_files(tmp_path, waltz):
    truth_path = write_track(waltz, tmp_path / "w.flac")
    assert truth_path == tmp_path / "w.truth.json"
    d = json.loads(truth_path.read_text())
    assert d["key"] == "F# major" and d["beats_per_bar"] == 3
    restored = load_truth(truth_path)
    assert isinstance(restored, Truth)
    np.testing.assert_array_equal(restored.beats, waltz.truth.beats)
    assert restored.sections == waltz.truth.sections
    assert restored.notes == waltz.truth.notes
    assert restored.spec == waltz.truth.spec
    audio, sr = sf.read(tmp_path / "w.flac", dtype="float32", always_2d=True)
    assert sr == SR and audio.shape == waltz.mix.shape
    assert np.max(np.abs(audio - waltz.mix)) < 1e-3

    stems = write_stems(waltz, tmp_path / "stems")
    assert sorted(p.name for p in stems) == ["bass.wav", "drums.wav", "other.wav", "vocals.wav"]
    for p in stems:
        assert sf.info(p).frames == waltz.mix.shape[0]


def test_spec_validation():
    with pytest.raises(ValueError):
        TrackSpec(bpm=200)
    with pytest.raises(ValueError):
        TrackSpec(beats_per_bar=5)
    with pytest.raises(ValueError):
        TrackSpec(mode="dorian")
    with pytest.raises(ValueError):
        TrackSpec(style="waltz", beats_per_bar=4)
    with pytest.raises(ValueError):
        TrackSpec(structure=[["bridge", 8]])
    spec = TrackSpec(structure=[["intro", 4, ["drums"]], ["breakdown", 4]], section_stems={"breakdown": ["other"]})
    t = generate(spec).truth
    assert t.sections[0].stems_present == frozenset({"drums"})
    assert t.sections[1].stems_present == frozenset({"other"})
    assert not t.notes["vocals"] and not t.notes["bass"]


def test_key_names_use_sharps():
    assert key_name(9, "minor") == "A minor"
    assert key_name(6, "major") == "F# major"
    assert key_name(10, "minor") == "A# minor"


def test_standard_set_covers_the_space():
    specs = standard_set()
    assert len(specs) == 12
    bpms = [s.bpm for s in specs]
    assert min(bpms) <= 75 and max(bpms) >= 175
    assert any(s.style == "dnb" and s.bpm == 174 for s in specs)
    assert any(s.style == "hiphop" and 80 <= s.bpm <= 90 for s in specs)
    assert sum(s.beats_per_bar == 3 for s in specs) >= 2
    assert {s.mode for s in specs} == {"major", "minor"}
    assert len({(s.tonic, s.mode) for s in specs}) == 12
    assert 1 <= sum(s.tempo_drift_bpm != 0 for s in specs) <= 3
    assert any(s.lead_in_s > 0 for s in specs)
    for s in specs:
        assert 48 == s.total_bars
        assert any("drums" not in s.stems_for(i) for i in range(len(s.structure)))
        assert s.title
    assert [s.seed for s in standard_set(seed=1)] != [s.seed for s in specs]
    assert len(standard_set(30, duration_bars=64)) == 30
    assert standard_set(3, duration_bars=64)[0].total_bars == 64


def test_demo_specs_are_dj_friendly():
    specs = demo_specs()
    assert len(specs) == 5
    assert len({s.title for s in specs}) == 5
    assert sum(s.style == "dnb" and s.bpm == 174 for s in specs) == 1
    assert all(120 <= s.bpm <= 128 for s in specs if s.style != "dnb")
