"""Structure and sanity of ``bench_engine(quick=True)``: the numbers and the audio the engine made while timed.

Speed is never asserted on (it belongs in the benchmark's JSON); only that the figures are
well-formed, that the memory figure matches the track's length, and that the engine played real
audio under the limiter's ceiling.
"""

import json

import numpy as np
import pytest

from engine.bench_engine import BLOCK_SIZES, TARGET_REALTIME_FACTOR, TEMPOS_BPM, bench_engine
from prep.audio import SAMPLE_RATE

ATE_RUNS = [str(b) for b in BLOCK_SIZES] + ["128_vinyl", "128_one_deck"]


@pytest.fixture(scope="module")
def result():
    return bench_engine(quick=True)


def _check_costs(costs: dict) -> None:
    for clock in ("cpu", "wall"):
        c = costs[clock]
        assert 0.0 < c["median_ms"] <= c["p99_ms"] <= c["max_ms"]
        assert 0.0 < c["mean_ms"] <= c["max_ms"]
        assert isinstance(c["over_block_duration"], int)   # a count the benchmark reports, not judged here
    assert costs["realtime_factor_cpu"] > 0 and costs["realtime_factor_wall"] > 0
    assert costs["core_fraction"] > 0
    assert costs["core_fraction"] == pytest.approx(1.0 / costs["realtime_factor_cpu"], rel=0.05)
    assert costs["audio_s"] == pytest.approx(costs["blocks"] * costs["block_frames"] / SAMPLE_RATE, abs=1e-3)


def test_json_ready(result):
    again = json.loads(json.dumps(result))
    assert again["meets_target"] == result["meets_target"]


def test_ate_runs_are_sane(result):
    ate = result["ate"]
    assert set(ATE_RUNS) <= set(ate)
    for name in ATE_RUNS:
        _check_costs(ate[name])
    for b in BLOCK_SIZES:
        run = ate[str(b)]
        assert run["block_frames"] == b
        assert run["decks_playing"] == 4 and all(run["keylock"])
        # Synced to deck 0 at +2 %: every deck plays at its tempo ratio, none at 1.
        master_bpm = TEMPOS_BPM[0] * 1.02
        for ratio, bpm in zip(run["ratios"], TEMPOS_BPM):
            assert ratio != 1.0
            assert ratio == pytest.approx(master_bpm / bpm, rel=0.03)
    assert ate["128_one_deck"]["decks_playing"] == 1
    assert not any(ate["128_vinyl"]["keylock"])


def test_engine_output_is_real_audio_under_the_ceiling(result):
    for name in ATE_RUNS:
        out = result["ate"][name]["output"]
        assert out["nonfinite_samples"] == 0
        assert out["peak"] <= out["limiter_ceiling"] * (1.0 + 1e-6)
        assert out["peak"] > 0.1           # four (or one) decks of music, not silence
        assert out["rms_dbfs"] > -30.0
    # +6 dB master gain over four decks: the limiter has work to do.
    assert result["ate"]["128"]["output"]["limiter_max_reduction_db"] > 0.0


def test_memory_matches_the_track_length(result):
    mem = result["memory"]
    frames = mem["track_s"] * SAMPLE_RATE
    stems_bytes = 4 * 2 * 2 * frames           # four int16 stereo stems
    assert mem["stems_dtype"] == "int16"
    assert mem["track_bytes"] == pytest.approx(stems_bytes, rel=0.01)
    # The deck's own buffers: two stretchers' rings and FFT state, stem buffers, EQ, filter (MB, not GB).
    assert 1e6 < mem["deck_buffer_bytes"] < 60e6
    assert mem["total_bytes"] == mem["track_bytes"] + mem["deck_buffer_bytes"]
    six_minutes = 16 * 360.0 * SAMPLE_RATE
    assert mem["projected_bytes"] == pytest.approx(six_minutes + mem["deck_buffer_bytes"], rel=0.01)
    assert mem["meets_target"] == (mem["projected_bytes"] <= mem["target_bytes"])
    for load in mem["load"]:
        assert load["track_bytes"] == pytest.approx(16 * load["seconds"] * SAMPLE_RATE, rel=0.01)
        assert isinstance(load["rss_growth_bytes"], int) and load["peak_rss_growth_bytes"] >= 0


def test_breakdown_adds_up(result):
    bd = result["breakdown"]
    shares = bd["stages_share"]
    assert sum(shares.values()) == pytest.approx(1.0, abs=0.01)
    for stage in ("deck_render", "stretch_ahead", "limiter"):
        assert bd["stages_us"][stage] > 0.0
    assert 0.0 < bd["decks_share"] < 1.0
    assert bd["plain_us"] > 0 and bd["instrumented_us"] > 0


def test_peer_and_ratios(result):
    rb = result["rubberband"]
    if "fallback" in rb:
        for name in ("R2", "R3"):
            assert rb[name]["realtime_factor_cpu"] > 0
        return
    for name in ("R2", "R3"):
        for b in BLOCK_SIZES:
            run = rb[name][str(b)]
            assert run["instances"] == 16
            assert run["engine_version"] == (3 if name == "R3" else 2)
            _check_costs(run)
            # The same stretching work: each deck's stretchers read its ratio's worth of input.
            for consumed, ratio in zip(run["input_frames_per_output_frame"], result["ate"]["128"]["ratios"]):
                assert consumed == pytest.approx(ratio, rel=0.1)
    for b in BLOCK_SIZES:
        for peer in ("ATE_over_R2", "ATE_over_R3"):
            row = result["ratios"][str(b)][peer]
            assert all(np.isfinite(v) and v > 0 for v in row.values())


def test_target_is_reported_honestly(result):
    target = result["target"]
    assert target["realtime_factor_cpu"] == result["ate"]["128"]["realtime_factor_cpu"]
    assert result["meets_target"] == (target["realtime_factor_cpu"] >= TARGET_REALTIME_FACTOR)
    assert any("13143" in note for note in result["notes"])


def test_event_costs_are_reported(result):
    events = result["events"]
    for name in ("playing", "loop_roll_quarter_beat", "block_after_seek"):
        c = events[name]
        assert 0.0 < c["median_ms"] <= c["p99_ms"] <= c["max_ms"]


def test_checkouts_compared_in_turns(tmp_path):
    # This checkout against itself: the same engine in two processes taking turns costs about the same.
    from pathlib import Path

    from engine.bench_engine import compare_checkouts

    here = Path(__file__).resolve().parents[1]
    r = compare_checkouts(here, block_frames=256, turns=6, turn_s=0.1)
    json.dumps(r)
    assert r["this"]["checkout"] == r["baseline"]["checkout"] == str(here)
    for side in ("this", "baseline"):
        assert 0.0 < r[side]["realtime_factor_median_turn"] <= r[side]["realtime_factor_best_turn"]
    assert 0.33 < r["cost_ratio"]["median"] < 3.0
    assert 0.0 <= r["cost_ratio"]["this_cheaper_share"] <= 1.0
    with pytest.raises(ValueError, match="not an ATE checkout"):
        compare_checkouts(tmp_path)


def test_a_baseline_that_is_not_a_checkout_is_one_line(tmp_path, capsys):
    from ate.cli import main

    assert main(["bench", "engine", "--quick", "--baseline", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and str(tmp_path) in err and "not an ATE checkout" in err
    assert main(["bench", "stretch", "--baseline", str(tmp_path)]) == 2
