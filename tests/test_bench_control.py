"""`ate bench control` on real parts (JACK dummy server, PortAudio, ZeroMQ on loopback): its figures are sane."""

from __future__ import annotations

import pytest

from engine.output import JackDummyServer

pytestmark = [pytest.mark.realtime,
              pytest.mark.skipif(not JackDummyServer.available(), reason="jackd is not installed (Debian: jackd2)")]


def test_bench_control_quick_measures_round_trips_and_command_to_audio():
    from controllers.bench_control import bench_control

    result = bench_control(quick=True)
    for kind in ("state", "command"):
        trip = result["round_trip_ms"][kind]
        assert trip["n"] == 300 and 0 < trip["median"] <= trip["p99"] <= trip["max"]
        assert result["ratio_over_bare_zmq"][kind] > 0
    audio = result["command_to_audio_ms"]
    assert audio is not None and audio["n"] >= 5
    # Physics, not speed: a command cannot be heard before the callback after it plus the output latency.
    assert audio["median"] > result["output_latency_ms"]
    assert result["output_latency_ms"] >= 1000.0 * result["block_frames"] / 44100 - 0.01   # rounded to µs
