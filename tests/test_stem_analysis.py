"""Stem-aware analysis: vocal regions, waveform overviews, and analysis with stems.

The generator's true stems stand in for a perfect separator; what a real
separator's stems give is measured by ``ate bench analysis``.
"""

from __future__ import annotations

import numpy as np
import pytest

from prep.analyze import analyze_audio
from prep.audio import SAMPLE_RATE
from prep.beats import track_beats
from prep.bench import _beat_f
from prep.overview import LEVELS, draw_overview, waveform_overview
from prep.stems import STEM_NAMES
from prep.synth import TrackSpec, generate, standard_set
from prep.vocals import merge_regions, region_f_measure, vocal_activity

SR = 22050


def _mono(x: np.ndarray) -> np.ndarray:
    from prep.analyze import _analysis_mono

    return _analysis_mono(x)


@pytest.fixture(scope="module")
def song():
    """A 124 BPM track with vocal phrases in its verse and chorus, about 60 s."""
    spec = TrackSpec(bpm=124, structure=[["intro", 4], ["verse", 8], ["breakdown", 4], ["chorus", 8], ["outro", 4]],
                     seed=5, title="vocal test")
    return generate(spec)


def test_vocal_regions_follow_the_vocals_stem(song) -> None:
    duration_s = song.mix.shape[0] / SAMPLE_RATE
    found = vocal_activity(_mono(song.stems["vocals"]), _mono(song.mix), SR)
    truth = merge_regions(song.truth.vocal_regions, duration_s)
    assert truth, "the test track must have vocals"
    assert region_f_measure(truth, found, duration_s) > 0.9
    # Region edges within half a second of the sung phrases.
    for a, b in truth:
        nearest = min(found, key=lambda r: abs(r[0] - a))
        assert abs(nearest[0] - a) < 0.5
        assert abs(min(found, key=lambda r: abs(r[1] - b))[1] - b) < 0.5


def test_no_vocals_means_no_regions(song) -> None:
    silent = np.zeros_like(_mono(song.stems["vocals"]))
    assert vocal_activity(silent, _mono(song.mix), SR) == []
    # A vocals stem holding only faint leakage of the other instruments (-30 dB) is not singing.
    leak = 10 ** (-30 / 20) * _mono(song.stems["other"] + song.stems["drums"])
    assert vocal_activity(leak, _mono(song.mix), SR) == []


def test_region_f_measure_scores_overlap() -> None:
    assert region_f_measure([(0, 10)], [(0, 10)], 20) == pytest.approx(1.0)
    assert region_f_measure([(0, 10)], [(10, 20)], 20) == pytest.approx(0.0)
    assert region_f_measure([(0, 10)], [(0, 5)], 20) == pytest.approx(2 * 5 / 15, abs=0.02)
    assert region_f_measure([], [], 20) == 1.0


def test_merge_regions_bridges_breaths_and_drops_blips() -> None:
    merged = merge_regions([(1.0, 3.0), (3.5, 6.0), (10.0, 10.4), (12.0, 14.0)], 13.0)
    assert merged == [(1.0, 6.0), (12.0, 13.0)]


def test_overview_shape_scale_and_drawing() -> None:
    sr = 1000
    x = np.zeros((3, 2000, 2), dtype=np.float32)
    x[0, :1000] = 1.0           # full scale for the first second
    x[1, 1000:] = 0.25          # -12 dB for the second
    ov = waveform_overview(x, sr, points_per_second=10)
    assert ov.shape == (3, 20) and ov.dtype == np.uint8
    assert np.all(ov[0, :10] == 255) and np.all(ov[0, 10:] == 0)
    assert np.all(ov[1, 10:] == round(255 * 0.5))  # square-root scale: 0.25 -> 0.5
    assert np.all(ov[2] == 0)
    lines = draw_overview(ov, width=4, names=("a", "bb", "c"))
    assert lines == ["a  " + LEVELS[-1] * 2 + "  ", "bb " + "  " + LEVELS[4] * 2, "c  " + "    "]
    # Mono and stereo inputs give one lane.
    assert waveform_overview(np.ones(1500), sr, 10).shape == (1, 15)


def test_stem_aware_downbeats_fix_the_drifting_breakbeat() -> None:
    """The drifting 160 BPM breakbeat: the mix puts the bar line on the wrong beat, the stems do not."""
    spec = next(s for s in standard_set() if s.style == "breakbeat" and s.bpm >= 150)
    track = generate(spec)
    y = _mono(track.mix)
    from_mix = track_beats(y, SR)
    from_stems = track_beats(y, SR, drums=_mono(track.stems["drums"]),
                             harmonic=_mono(track.mix - track.stems["drums"]))
    assert _beat_f(track.truth.downbeats, from_stems.downbeats) > 0.95
    assert _beat_f(track.truth.downbeats, from_stems.downbeats) > _beat_f(track.truth.downbeats, from_mix.downbeats)
    # Beats come from the mix either way.
    np.testing.assert_allclose(from_stems.beats, from_mix.beats)


def test_analysis_with_stems_records_vocals_and_stem_loudness(song) -> None:
    stems = np.stack([song.stems[name] for name in STEM_NAMES])
    result = analyze_audio(song.mix, stems=stems)
    record = result.to_dict()
    assert record["analysed_from"] == "stems"
    assert record["vocal_regions"], "vocal regions found"
    assert set(record["stem_lufs"]) == set(STEM_NAMES)
    # The drums of this generator sit louder than the vocals in LUFS.
    assert record["stem_lufs"]["drums"] > record["stem_lufs"]["vocals"]
    assert result.overview.shape[0] == 4
    assert record["key"] == song.truth.key
    assert abs(record["bpm"] - 124) < 0.5
    # The mix-only record says so, and has no vocal regions.
    plain = analyze_audio(song.mix).to_dict()
    assert plain["analysed_from"] == "mix" and plain["vocal_regions"] is None
    with pytest.raises(ValueError, match="do not match"):
        analyze_audio(song.mix, stems=stems[:, :1000])


def test_mix_out_avoids_the_vocals(song) -> None:
    stems = np.stack([song.stems[name] for name in STEM_NAMES])
    result = analyze_audio(song.mix, stems=stems)
    for a, b in result.vocal_regions:
        assert not (a + 0.25 < result.mix_out < b - 0.25), (result.mix_out, result.vocal_regions)
