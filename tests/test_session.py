"""End to end: one engine driven at once by a MIDI controller, the TUI and a ZeroMQ client, its audio checked.

The engine runs in its own process on a JACK dummy server and records what it
plays. A "DDJ-FLX4" (virtual JACK MIDI ports named like the hardware's) goes
through the real rtmidi bridge with the shipped preset; the Textual app runs
headless (Textual's pilot) on its own client; an automation client loads,
syncs, mutes stems and keeps moving an EQ while requesting state; the
controller keeps moving a channel fader. Meanwhile: deck 1 is started from
the controller, deck 2 from the TUI (synced: it lands on deck 1's beat), a
4-beat loop is set and left from the controller's pads, hot cues are set from
the TUI. ``ATE_SESSION_S`` (default 20; the run for the issue used 180) sets how long it plays.

Checked on the recording: its length, no clipping, and sync: the kicks of
both decks fall at one phase of the master beat (measured by folding the
kick envelope at the beat period in 4-second windows) from the moment deck 2
joins to the end, the same phase as deck 1's kicks alone before it joined.
Checked on the engine: the loop held the playhead, every command reached
it, and xruns: none is the goal; over 1 % of callbacks late fails, fewer is
reported as an expected failure with the figures.
"""

from __future__ import annotations

import asyncio
import math
import os
import threading
import time

import numpy as np
import pytest

from audio_checks import kick_flux, kick_profile, profile_lag_ms
from engine.output import JackDummyServer

pytestmark = [pytest.mark.realtime,
              pytest.mark.skipif(not JackDummyServer.available(), reason="jackd is not installed (Debian: jackd2)")]

SR = 44100
BLOCK = 256
SESSION_S = float(os.environ.get("ATE_SESSION_S", "20"))
BPM_A, BPM_B = 124.0, 128.0
FLX4 = "presets/pioneer-ddj-flx4.toml"


def _track(bpm: float, seed: int) -> str:
    bars = int(math.ceil((SESSION_S + 45.0) * bpm / 60.0 / 4.0))   # room for a slow, loaded machine
    return f"synth:bpm={bpm:g},seed={seed},bars={bars},style=house"


def _until(predicate, timeout_s: float = 15.0, step_s: float = 0.02) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(step_s)
    return bool(predicate())


def test_a_set_driven_by_a_controller_the_tui_and_zeromq_at_once(tmp_path):
    from controllers.client import EngineClient
    from controllers.midi import MidiBridge, load_preset
    from engine.process import EngineProcess
    from test_midi import FakeController
    from tui.app import AteApp

    record = tmp_path / "set.wav"
    events: dict = {}
    with JackDummyServer(name=f"ate-session-{os.getpid()}", period_frames=BLOCK,
                         realtime=JackDummyServer.realtime_allowed()) as jack:
        proc = EngineProcess(n_decks=2, block_frames=BLOCK, host_api="JACK", endpoint="tcp://127.0.0.1:*",
                             pub_endpoint="tcp://127.0.0.1:*", record_path=str(record),
                             record_minutes=SESSION_S / 60.0 + 1.0)
        auto = EngineClient(proc.endpoint, proc.pub_endpoint)
        hw = FakeController("DDJ-FLX4")
        bridge = MidiBridge(load_preset(FLX4), EngineClient(proc.endpoint, proc.pub_endpoint), api="jack")
        stop = threading.Event()
        threads: list[threading.Thread] = []
        phase_beats: list[float] = []
        try:
            # The automation client sets the scene: two tracks, both synced, a drums-only mix (the kicks are
            # what the audio check measures), the crossfader in the middle.
            for deck, (bpm, seed) in enumerate([(BPM_A, 1), (BPM_B, 2)]):
                assert auto.request({"cmd": "load", "deck": deck, "track": _track(bpm, seed)}, 120)["ok"]
                assert auto.request({"cmd": "sync", "deck": deck, "on": True})["ok"]
                for stem in ("bass", "vocals", "other"):
                    assert auto.request({"cmd": "mute", "deck": deck, "stem": stem, "on": True})["ok"]
            assert _until(lambda: [0x9F, 0x00, 127] in hw.received)        # the controller shows deck 1 loaded

            hw.send([0x90, 0x0B, 127], [0x90, 0x0B, 0])                    # PLAY on the controller
            assert _until(lambda: auto.request({"request": "state"})["state"]["decks"][0]["playing"])
            events["a_playing"] = auto.request({"request": "state"})["state"]["clock_frames"]
            assert _until(lambda: [0x90, 0x0B, 127] in hw.received)        # its play LED

            def fader() -> None:                                           # the DJ rides deck 1's channel fader
                t0 = time.monotonic()
                while not stop.wait(1 / 30):
                    value = int(round(16383 * (0.85 + 0.15 * math.cos(time.monotonic() - t0))))
                    hw.send([0xB0, 0x13, value >> 7], [0xB0, 0x33, value & 0x7F], gap_s=0)

            def automation() -> None:                                      # another program moves an EQ
                i = 0
                while not stop.wait(0.05):
                    auto.post({"cmd": "set", "deck": 1, "param": "eq_high_db", "value": -6.0 * (i % 7) / 6})
                    if i % 10 == 0:
                        decks = auto.request({"request": "state"})["state"]["decks"]
                        if all(d["playing"] for d in decks) and decks[0]["loop"] is None:
                            # The engine's own view of the phase: both beats read in one snapshot.
                            phase_beats.append((decks[0]["beat"] - decks[1]["beat"] + 0.5) % 1.0 - 0.5)
                    i += 1

            threads = [threading.Thread(target=f, daemon=True) for f in (fader, automation)]
            for t in threads:
                t.start()
            time.sleep(2.0)

            async def tui() -> None:
                app = AteApp(EngineClient(proc.endpoint, proc.pub_endpoint), n_decks=2)
                async with app.run_test(size=(140, 44)) as pilot:
                    await pilot.press("2", "space")                         # deck 2 joins, synced, on the beat
                    for _ in range(500):
                        await pilot.pause(0.02)
                        if app.client.state and app.client.state["decks"][1]["playing"]:
                            break
                    events["b_playing"] = app.client.state["clock_frames"]
                    await pilot.pause(1.0)
                    info = app.query_one("#deck-1").query_one(".deck-info")
                    events["tui_info"] = str(info.render())
                    # The set is judged for xruns from here: both decks playing (loads and first blocks are
                    # measured by `ate bench engine`, "events").
                    steady = await asyncio.to_thread(auto.request, {"request": "report"})
                    events["steady"] = steady["report"]
                    events["driver_late_at_steady"] = jack.xruns_logged()["driver"]
                    await pilot.press("q")                                  # hot cue 1 on deck 2
                    elapsed = 0.0
                    loop_done = False
                    while elapsed < SESSION_S - 4.0:
                        await pilot.pause(0.25)
                        elapsed += 0.25
                        if not loop_done and elapsed >= SESSION_S / 3:
                            await asyncio.to_thread(_loop_from_the_pads, hw, auto, events)
                            loop_done = True
                    events["tui_state"] = app.client.state

            asyncio.run(tui())
        finally:
            stop.set()
            for t in threads:
                t.join(timeout=5)
            steady_report = auto.request({"request": "report", "since": events["steady"]["blocks"]})["report"]
            bridge.close()
            bridge.client.close()
            final_state = auto.request({"request": "state"})["state"]
            auto.close()
            hw.close()
            proc.close()
        report = proc.final_report

        # ---- the engine: everything arrived, the loop held, LEDs followed, nobody was refused
        assert report["errors"] == 0 and not auto.errors and not bridge.client.errors
        assert not np.isnan(final_state["decks"][1]["hot_cues_s"][0] or math.nan)      # from the TUI
        assert final_state["decks"][0]["loop"] is None and all(d["playing"] for d in final_state["decks"])
        assert 0.69 <= final_state["decks"][0]["params"]["volume"] <= 1.0               # the fader ride
        loop_positions = np.array(events["loop_positions_s"])
        start_s, end_s = events["loop_bounds_s"]
        assert len(loop_positions) >= 20
        assert loop_positions.min() >= start_s - 0.05 and loop_positions.max() <= end_s + 0.05
        assert events["after_loop_s"] > end_s                                           # and left it
        assert events["tui_state"]["decks"][1]["sync"] and final_state["leader"] == 0
        assert len(phase_beats) >= 5 and np.abs(phase_beats).max() < 0.01, phase_beats   # in phase, by the state
        assert f"{BPM_A:6.2f}" in events["tui_info"]              # the TUI shows deck 2 at the leader's tempo
        assert bridge.received > 30 * (SESSION_S - 6) and bridge.unmapped == 0
        steady = _since(steady_report, events["steady"])
        driver_late = jack.xruns_logged()["driver"] - events["driver_late_at_steady"]

    # ---- the audio
    import soundfile as sf

    audio, sr = sf.read(str(record), dtype="float32")
    assert sr == SR and report["recorded"]["seconds"] == pytest.approx(len(audio) / SR, abs=1e-3)
    assert len(audio) == min(report["frames"], int(round((SESSION_S / 60.0 + 1.0) * 60.0 * SR)))
    assert np.abs(audio).max() <= 1.0
    flux = kick_flux(audio)
    period = SR * 60.0 / BPM_A                                   # deck 1 leads at its own tempo
    a_s, b_s = events["a_playing"] / SR, events["b_playing"] / SR
    alone = kick_profile(flux, period, a_s + 0.5, b_s - 0.1)
    windows_s = np.arange(b_s + 1.0, len(audio) / SR - 4.0, 4.0)
    assert len(windows_s) >= max(3, int((SESSION_S - 12) / 4))
    miss_ms = np.array([profile_lag_ms(alone, kick_profile(flux, period, t, t + 4.0)) for t in windows_s])
    sync_detail = (f"kicks against deck 1's alone, per 4 s window with deck 2, off by "
                   f"{np.round(miss_ms, 1).tolist()} ms")

    # Sync, from the audio: the kicks of both decks coincide (a miss of 1 ms is a flam a DJ hears; the fold's
    # resolution is 0.25 ms). Measured by the whole folded shape: the synth kick rises in two steps 2.7 ms
    # apart, and the peak alone flipped between them (that was read as a 2.7 ms miss before).
    assert np.abs(miss_ms).max() <= 1.0, sync_detail

    # ---- xruns, last (an expected failure must not hide the checks above). Zero is the goal; on this shared
    # two-core machine, with the controller, the TUI and the test all beside the engine, single callbacks are
    # held off now and then (also in a bare two-deck run, with nothing happening: see docs/benchmarks.md).
    # More than 1 % late is a failure whatever the cause: that is how the rtmidi-in-JACK-thread bug looked (5 %).
    if steady["xruns"]:
        late = steady["xruns"] / max(1, steady["callbacks"] - events["steady"]["callbacks"])
        detail = (f"{steady['xruns']} xruns in {steady['callbacks'] - events['steady']['callbacks']} callbacks "
                  f"({100 * late:.2f} %) at {steady['xrun_callbacks_at'][:8]} (window CPU ms "
                  f"{steady['xrun_cpu_ms'][:8]}), callback CPU ms {steady['cpu_ms']}, JACK driver late "
                  f"{driver_late} times")
        assert late <= 0.01, detail
        pytest.xfail(f"a few late callbacks on a busy shared machine: {detail}")


def _since(report: dict, at_steady: dict) -> dict:
    """A report taken with ``since``: its xrun counters and lists limited to the callbacks after ``at_steady``."""
    since = at_steady["callbacks"]
    keep = [k for k, i in enumerate(report["xrun_callbacks_at"]) if i >= since]
    return dict(report, xruns=report["xruns"] - at_steady["xruns"],
                xrun_callbacks_at=[report["xrun_callbacks_at"][k] for k in keep],
                xrun_cpu_ms=[report["xrun_cpu_ms"][k] for k in keep])


def _loop_from_the_pads(hw, auto, events: dict) -> None:
    """Beat loop pad 5 (4 beats) on deck 1 from the controller, watch it hold, then LOOP IN/4BEAT to leave it."""
    hw.send([0x97, 0x64, 127], [0x97, 0x64, 0])
    assert _until(lambda: auto.request({"request": "state"})["state"]["decks"][0]["loop"] is not None)
    deck = auto.request({"request": "state"})["state"]["decks"][0]
    assert deck["loop_beats"] == 4.0
    events["loop_bounds_s"] = (deck["loop"][0] / SR, deck["loop"][1] / SR)
    positions = []
    t_end = time.monotonic() + 4.0 * 60.0 / BPM_A * 2.5            # two and a half turns
    while time.monotonic() < t_end:
        positions.append(auto.request({"request": "state"})["state"]["decks"][0]["position_s"])
        time.sleep(0.05)
    events["loop_positions_s"] = positions
    hw.send([0x90, 0x10, 127], [0x90, 0x10, 0])
    assert _until(lambda: auto.request({"request": "state"})["state"]["decks"][0]["loop"] is None)
    time.sleep(4.0 * 60.0 / BPM_A)
    events["after_loop_s"] = auto.request({"request": "state"})["state"]["decks"][0]["position_s"]
