"""Tests for prep.structure: sections, labels, phrases and mix points on synthetic tracks.

The tracks come from :mod:`prep.synth`, whose truth gives the beat grid (the
input here, as the beat tracker's output would be) and the arrangement (what
the output is checked against).
"""

from __future__ import annotations

import json
from functools import lru_cache

import mir_eval
import numpy as np
import pytest

from prep.audio import SAMPLE_RATE, resample, to_mono
from prep.structure import (
    Structure,
    analyze_structure,
    novelty_curve,
    repetition_novelty,
    split_phrases,
)
from prep.synth import GeneratedTrack, TrackSpec, generate

SR = 22050  # what the analysis pipeline passes

SHORT = [["intro", 8], ["verse", 8], ["chorus", 8], ["breakdown", 8], ["chorus", 8], ["outro", 8]]


@lru_cache(maxsize=None)
def _track(name: str) -> GeneratedTrack:
    if name == "short":  # 4/4 house, 125 BPM, 48 bars (~93 s)
        return generate(TrackSpec(bpm=125.0, structure=SHORT, seed=1))
    if name == "waltz":  # 3/4, 108 BPM, with a lead-in before the first downbeat
        return generate(TrackSpec(bpm=108.0, beats_per_bar=3, style="waltz", mode="major", tonic=2,
                                  structure=SHORT, lead_in_s=1.0, seed=2))
    raise KeyError(name)


def _mono(track: GeneratedTrack, sr: int = SR) -> np.ndarray:
    return resample(to_mono(track.mix)[:, None], SAMPLE_RATE, sr)[:, 0]


@lru_cache(maxsize=None)
def _analysis(name: str) -> Structure:
    track = _track(name)
    t = track.truth
    return analyze_structure(_mono(track), SR, t.beats, t.downbeats, t.beats_per_bar, track.duration_s)


def _bar_s(track: GeneratedTrack) -> float:
    return float(np.median(np.diff(track.truth.downbeats)))


def _boundary_f(track: GeneratedTrack, s: Structure, window_s: float) -> float:
    """F-measure of inner boundaries (mir_eval, trimmed), truth spanning the whole signal as the estimate does."""
    ref = np.array([[sec.start_s, sec.end_s] for sec in track.truth.sections])
    ref[0, 0], ref[-1, 1] = 0.0, track.duration_s
    est = np.array([[seg.start, seg.end] for seg in s.segments])
    return mir_eval.segment.detection(ref, est, window=window_s, trim=True)[2]


def _label_at(s: Structure, t: float) -> str:
    return next(seg.label for seg in s.segments if seg.start <= t < seg.end)


def _mid(section) -> float:
    return 0.5 * (section.start_s + section.end_s)


def _on_downbeat(t: float, downbeats: np.ndarray) -> bool:
    return bool(np.min(np.abs(downbeats - t)) < 1e-6)


def _check_phrases(track: GeneratedTrack, s: Structure) -> None:
    db = track.truth.downbeats
    assert s.phrases, "no phrases"
    assert s.phrases[0].start == pytest.approx(db[0])
    seg_starts = {seg.start for seg in s.segments if seg.start >= db[0]}
    phrase_starts = [p.start for p in s.phrases]
    for a, b in zip(s.phrases[:-1], s.phrases[1:]):
        assert a.end == pytest.approx(b.start)  # contiguous
    for start in seg_starts:
        assert any(abs(start - p) < 1e-6 for p in phrase_starts), f"segment start {start} is no phrase start"
    for p in s.phrases:
        assert _on_downbeat(p.start, db), f"phrase start {p.start} not on a downbeat"
        # bars counts real downbeats: a phrase of n bars holds n downbeats
        assert p.bars == int(np.sum((db >= p.start - 1e-6) & (db < p.end - 1e-6)))
        ends_segment = any(abs(p.end - seg.end) < 1e-6 for seg in s.segments) or p is s.phrases[-1]
        assert p.bars == 8 or (ends_segment and 1 <= p.bars < 8), f"phrase of {p.bars} bars inside a segment"


# --------------------------------------------------------------------- 4/4


def test_boundaries_within_half_a_bar_of_truth():
    track, s = _track("short"), _analysis("short")
    f = _boundary_f(track, s, window_s=max(0.5 * _bar_s(track), 1.0))
    assert f >= 0.8, [(round(seg.start, 2), seg.label) for seg in s.segments]
    # Segments tile the whole signal, on downbeats except the first.
    assert s.segments[0].start == 0.0 and s.segments[-1].end == pytest.approx(track.duration_s)
    for a, b in zip(s.segments[:-1], s.segments[1:]):
        assert a.end == b.start
        assert _on_downbeat(b.start, track.truth.downbeats)


def test_repeated_sections_share_a_label_and_distinct_ones_do_not():
    sections, s = _track("short").truth.sections, _analysis("short")
    by_name = {}
    for sec in sections:
        by_name.setdefault(sec.name, []).append(_label_at(s, _mid(sec)))
    chorus1, chorus2 = by_name["chorus"]
    assert chorus1 == chorus2
    assert by_name["breakdown"][0] != chorus1
    assert by_name["verse"][0] != chorus1


def test_phrases_are_eight_bars_from_segment_starts_on_downbeats():
    _check_phrases(_track("short"), _analysis("short"))


def test_mix_in_is_first_downbeat_and_mix_out_leaves_an_outro():
    track, s = _track("short"), _analysis("short")
    db = track.truth.downbeats
    bar = _bar_s(track)
    assert s.mix_in == pytest.approx(db[0])
    assert _on_downbeat(s.mix_out, db)
    assert any(abs(s.mix_out - p.start) < 1e-6 for p in s.phrases)
    grid_end = db[-1] + bar
    outro = track.truth.sections[-1]
    assert s.mix_out >= outro.start_s - 1e-6 or grid_end - s.mix_out >= 16 * bar - 1e-6
    assert grid_end - s.mix_out >= 8 * bar - 1e-6  # room for a transition


def test_mix_out_avoids_vocal_regions():
    track = _track("short")
    t = track.truth
    y = _mono(track)
    beat = float(np.median(np.diff(t.beats)))
    base = _analysis("short").mix_out

    def inside(x: float, regions) -> bool:
        return any(a - 0.5 * beat <= x < b for a, b in regions)

    s = analyze_structure(y, SR, t.beats, t.downbeats, t.beats_per_bar, track.duration_s,
                          vocal_regions=t.vocal_regions)
    assert not inside(s.mix_out, t.vocal_regions)

    # A vocal over the default point moves it to another phrase start outside the vocal.
    forced = [(base - beat, base + 2 * _bar_s(track))]
    s2 = analyze_structure(y, SR, t.beats, t.downbeats, t.beats_per_bar, track.duration_s, vocal_regions=forced)
    assert s2.mix_out != pytest.approx(base)
    assert not inside(s2.mix_out, forced)
    assert any(abs(s2.mix_out - p.start) < 1e-6 for p in s2.phrases)

    # Vocals everywhere: nothing better exists, the point stays.
    s3 = analyze_structure(y, SR, t.beats, t.downbeats, t.beats_per_bar, track.duration_s,
                           vocal_regions=[(0.0, track.duration_s)])
    assert s3.mix_out == pytest.approx(base)


def test_lead_in_before_the_grid_is_its_own_segment():
    """A grid that starts late (the tracker locked on at the verse) leaves the intro as a lead-in."""
    track = _track("short")
    t = track.truth
    db, bpb = t.downbeats, t.beats_per_bar
    s = analyze_structure(_mono(track), SR, t.beats[8 * bpb:], db[8:], bpb, track.duration_s)
    assert s.segments[0].start == 0.0
    assert s.segments[1].start == pytest.approx(db[8])
    assert s.phrases[0].start == pytest.approx(db[8])
    assert s.mix_in == pytest.approx(db[8])


def test_any_sample_rate_gives_the_same_sections():
    track = _track("short")
    t = track.truth
    s = analyze_structure(to_mono(track.mix), SAMPLE_RATE, t.beats, t.downbeats, t.beats_per_bar)
    assert _boundary_f(track, s, window_s=max(0.5 * _bar_s(track), 1.0)) >= 0.8
    _check_phrases(track, s)


def test_to_dict_is_plain_json():
    s = _analysis("short")
    d = json.loads(json.dumps(s.to_dict()))
    assert set(d["segments"][0]) == {"start", "end", "label"}
    assert set(d["phrases"][0]) == {"start", "end", "bars"}
    assert isinstance(d["phrases"][0]["bars"], int)
    n_bars = len(_track("short").truth.downbeats)
    assert len(d["bar_starts"]) == len(d["energy"]) == len(d["novelty"]) == n_bars
    assert 0.0 <= min(d["energy"]) and max(d["energy"]) == 1.0


def test_energy_follows_the_arrangement():
    """The breakdown (no drums, no bass) is the least intense section, a chorus the most."""
    track, s = _track("short"), _analysis("short")
    db = track.truth.downbeats
    mean = {}
    for sec in track.truth.sections:
        bars = (db >= sec.start_s - 1e-6) & (db < sec.end_s - 1e-6)
        mean.setdefault(sec.name, []).append(float(s.energy[bars].mean()))
    assert max(mean["breakdown"]) < min(mean["chorus"]) - 0.1
    assert max(mean["outro"]) < min(mean["chorus"])


# --------------------------------------------------------------------- 3/4


def test_three_four_track_with_lead_in():
    track, s = _track("waltz"), _analysis("waltz")
    db = track.truth.downbeats
    assert db[0] > 0.5  # the lead-in
    assert _boundary_f(track, s, window_s=max(0.5 * _bar_s(track), 1.0)) >= 0.8
    assert s.segments[0].start == 0.0
    _check_phrases(track, s)  # no phrase before the first downbeat
    assert s.mix_in == pytest.approx(db[0])
    labels = {sec.name: [] for sec in track.truth.sections}
    for sec in track.truth.sections:
        labels[sec.name].append(_label_at(s, _mid(sec)))
    assert labels["chorus"][0] == labels["chorus"][1] != labels["breakdown"][0]


# --------------------------------------------------------------------- units & edges


def test_split_phrases():
    assert split_phrases([0, 20, 56]) == [(0, 8), (8, 16), (16, 20), (20, 36), (36, 52), (52, 56)]
    assert split_phrases([3, 7]) == [(3, 7)]


def test_novelties_on_toy_matrices():
    # Two homogeneous blocks: block novelty peaks at the change.
    sim = np.full((24, 24), 0.2)
    sim[:12, :12] = sim[12:, 12:] = 0.9
    np.fill_diagonal(sim, 1.0)
    assert int(np.argmax(novelty_curve(sim))) == 12
    # Two different 4-bar loops: bars differ within a section, repeat at lag 4.
    n = 32
    idx = np.arange(n)
    kind = np.where(idx < 16, idx % 4, 4 + idx % 4)
    loops = np.where(kind[:, None] == kind[None, :], 0.9, 0.3)
    np.fill_diagonal(loops, 1.0)
    rep = repetition_novelty(loops)
    assert int(np.argmax(rep)) == 16
    assert rep[16] > 0.4 and rep[4:13].max() < 0.05 and rep[20:29].max() < 0.05


def test_degenerate_inputs():
    sr, dur = SR, 40.0
    rng = np.random.default_rng(0)
    noise = (0.1 * rng.standard_normal(int(sr * dur))).astype(np.float32)
    beats = np.arange(0.0, dur, 0.5)
    downbeats = beats[::4]

    s = analyze_structure(noise, sr, np.array([]), np.array([]), 4)
    assert len(s.segments) == 1 and s.phrases == [] and s.segments[0].end == pytest.approx(dur)

    s = analyze_structure(noise, sr, beats, downbeats, 4)  # stationary: nothing to segment
    assert len(s.segments) == 1
    assert sum(p.bars for p in s.phrases) == len(downbeats)

    s = analyze_structure(np.zeros_like(noise), sr, beats, downbeats, 4)
    assert len(s.segments) == 1 and np.all(s.energy == 0.0)
    json.dumps(s.to_dict())
