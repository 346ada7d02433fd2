"""`ate bench live` on real parts (its own JACK dummy server, the engine process, a flood from this process)."""

from __future__ import annotations

import pytest

from engine.output import JackDummyServer

pytestmark = [pytest.mark.realtime,
              pytest.mark.skipif(not JackDummyServer.available(), reason="jackd is not installed (Debian: jackd2)")]


def test_bench_live_floods_the_engine_process_and_accounts_every_late_callback():
    from engine.output import DEFAULT_AHEAD_BLOCKS, bench_live

    result = bench_live(quick=True, seconds=3.0)
    assert result["setup_errors"] == [] and result["decks_playing"] == 4
    assert result["ahead_blocks"] == DEFAULT_AHEAD_BLOCKS
    # The latency includes the blocks rendered ahead of the device.
    assert result["latency_s"] >= (DEFAULT_AHEAD_BLOCKS + 1) * 128 / 44100 - 1e-9
    commands = result["commands"]
    # A quarter of the flood is malformed: every one refused, every valid one applied, the engine still playing.
    assert commands["sent"] > 300 and commands["errors"] == pytest.approx(commands["sent"] / 4, abs=2)
    assert commands["applied"] >= commands["ok"]
    for phase in ("quiet", "flood"):
        figures = result[phase]
        assert figures["xruns"] == figures["device_xruns"] + figures["ring_underruns"]
        assert 0 < figures["cpu_ms"]["median"] <= figures["cpu_ms"]["p99"] <= figures["cpu_ms"]["max"]
    # 3 s of 128-frame callbacks at 44.1 kHz (the phases are cut by reports: a few blocks either way).
    assert result["flood"]["callbacks"] == pytest.approx(3.0 * 44100 / 128, rel=0.25)
    assert result["steal_s"] is None or result["steal_s"] >= 0.0
    assert result["flood_by_minute"] == []
