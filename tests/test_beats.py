"""Tempo, beat grid, meter and downbeats against generated truth."""

import mir_eval
import numpy as np
import pytest

from prep.analyze import ANALYSIS_SR
from prep.audio import SAMPLE_RATE, resample, to_mono
from prep.beats import fit_grid, track_beats
from prep.synth import TrackSpec, generate

SHORT = (("intro", 8), ("verse", 8), ("breakdown", 8), ("chorus", 8), ("outro", 8))


def _analyse(spec: TrackSpec):
    track = generate(spec)
    y = resample(to_mono(track.mix)[:, None], SAMPLE_RATE, ANALYSIS_SR)[:, 0]
    return track.truth, track_beats(y, ANALYSIS_SR)


def _f(ref: np.ndarray, est: np.ndarray) -> float:
    return mir_eval.beat.f_measure(mir_eval.beat.trim_beats(ref), mir_eval.beat.trim_beats(est))


@pytest.mark.parametrize(
    "bpm, style, meter",
    [(124.0, "house", 4), (174.0, "dnb", 4), (86.0, "hiphop", 4), (96.0, "waltz", 3)],
)
def test_tempo_beats_and_downbeats(bpm, style, meter):
    truth, grid = _analyse(TrackSpec(bpm=bpm, style=style, beats_per_bar=meter, tonic=2, mode="minor",
                                     structure=SHORT, seed=3))
    assert grid.bpm == pytest.approx(bpm, rel=0.005)  # not the octave: 174 stays 174, 86 stays 86
    assert grid.steady
    assert grid.beats_per_bar == meter
    assert _f(truth.beats, grid.beats) >= 0.95
    assert _f(truth.downbeats, grid.downbeats) >= 0.9


def test_grid_sits_on_the_attacks():
    truth, grid = _analyse(TrackSpec(bpm=126.0, style="house", structure=SHORT, seed=5))
    errors_s = np.array([np.min(np.abs(truth.beats - t)) for t in grid.beats])
    assert np.median(errors_s) < 0.004


def test_beats_continue_through_a_drumless_breakdown():
    spec = TrackSpec(bpm=122.0, style="house", structure=SHORT, seed=7)
    truth, grid = _analyse(spec)
    section = next(s for s in truth.sections if s.name == "breakdown")
    lo, hi = section.start_s - 0.05, section.end_s - 0.05
    ref = truth.beats[(truth.beats >= lo) & (truth.beats < hi)]
    est = grid.beats[(grid.beats >= lo) & (grid.beats < hi)]
    assert len(est) == len(ref)
    assert np.max(np.abs(est - ref)) < 0.01


def test_drifting_tempo_is_followed_not_flattened():
    truth, grid = _analyse(TrackSpec(bpm=136.0, tempo_drift_bpm=4.0, style="breakbeat", structure=SHORT, seed=2))
    assert not grid.steady
    assert _f(truth.beats, grid.beats) >= 0.95
    early, late = np.diff(grid.beats[:32]).mean(), np.diff(grid.beats[-32:]).mean()
    assert late < early  # the track speeds up


def test_lead_in_silence_gets_no_beats():
    truth, grid = _analyse(TrackSpec(bpm=120.0, lead_in_s=3.0, structure=SHORT, seed=4))
    assert grid.beats[0] > 3.0 - 0.25
    assert _f(truth.beats, grid.beats) >= 0.95


def test_fit_grid_refines_period_from_agreeing_beats():
    period_s = 60 / 128
    rng = np.random.default_rng(0)
    tracked = 1.0 + period_s * np.arange(200) + rng.normal(0, 0.003, 200)
    tracked[50:60] += period_s / 2  # a stretch on the off-beats is ignored
    grid = fit_grid(tracked, 1.004, period_s * 1.001, tracked[-1])
    assert np.diff(grid).mean() == pytest.approx(period_s, rel=1e-4)
    assert grid[0] == pytest.approx(1.0, abs=0.002)
