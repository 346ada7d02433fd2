"""MIDI controllers: presets, the mapper against a real engine, and the rtmidi bridge on JACK virtual ports."""

from __future__ import annotations

import glob
import io
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from controllers.midi import TAKEOVER_TOLERANCE, InputPump, MidiMapper, PresetError, load_preset, parse_preset
from engine.core import Engine
from engine.output import JackDummyServer
from engine.track import load_track

pytestmark = pytest.mark.realtime     # MIDI ports on a JACK server, timed round trips: run alone

SR = 44100
FLX4 = "presets/pioneer-ddj-flx4.toml"
TRACK = "synth:bpm=124,seed=5,bars=8"


@pytest.fixture(scope="module")
def track():
    return load_track(TRACK)


def _engine(track, n_decks: int = 2) -> Engine:
    engine = Engine(n_decks=n_decks)
    for d in range(n_decks):
        engine.load(d, track)
    engine.render(256)
    return engine


def _apply(engine: Engine, mapper: MidiMapper, message: list[int], now: float | None = None) -> list[dict]:
    """What a bridge does with one message: map it against the current state, send the commands, play a block."""
    mapper.update_state(engine.state())
    commands = mapper.handle(message, now)
    for cmd in commands:
        reply = engine.send(cmd)
        assert reply["ok"], (cmd, reply)
    engine.render(256)
    return commands


# ---------------------------------------------------------------------------------------------- presets

def test_the_shipped_presets_load_and_name_their_sources():
    paths = sorted(glob.glob(str(Path(__file__).resolve().parent.parent / "presets" / "*.toml")))
    assert len(paths) >= 3
    for path in paths:
        preset = load_preset(path)
        actions = {m.action for m in preset.inputs}
        assert {"play_pause", "cue", "sync", "volume", "eq_low", "jog", "crossfader"} <= actions, path
        assert {"hotcue", "pitch", "filter"} <= actions, path
        assert {o.state for o in preset.outputs} >= {"playing", "sync", "hotcue"}, path
        assert preset.sources and all(len(s) > 20 for s in preset.sources), path
    names = {load_preset(p).name for p in paths}
    assert {"Pioneer DDJ-FLX4", "Numark Mixtrack Pro FX", "Hercules DJControl Inpulse 500"} <= names


GOOD = '[controller]\nname = "X"\nport = "x"\ndecks = [0, 1]\n\n[[input]]\nname = "p"\nstatus = "note"\n' \
       'channel = 1\nnumber = 0x0B\ndeck = 1\naction = "play_pause"\n'


@pytest.mark.parametrize("text, line, why", [
    (GOOD.replace('action = "play_pause"', 'action = "plya"'), 12, "unknown action 'plya'"),
    (GOOD.replace("channel = 1", "channel = 17"), 9, "channel must be 1..16"),
    (GOOD.replace("deck = 1\n", "deck = 3\n"), 11, "deck must be 1..2"),
    (GOOD.replace("deck = 1\n", ""), 6, "works on a deck"),
    (GOOD + '\n[[input]]\nname = "q"\nstatus = "note"\nchannel = 1\nnumber = 11\ndeck = 2\naction = "cue"\n', 14,
     "note 0x0B on channel 1 is already mapped by p (line 6)"),
    (GOOD + '\n[[input]]\nname = "l"\nstatus = "note"\nchannel = 1\nnumber = 1\ndeck = 1\naction = "loop"\n'
            'beats = 3\n', 21, "power of two"),
    (GOOD + '\n[[input]]\nname = "j"\nstatus = "cc"\nchannel = 1\nnumber = 2\ndeck = 1\naction = "jog"\n', 14,
     "needs encoding"),
    (GOOD + '\n[[output]]\nname = "led"\nstatus = "note"\nchannel = 1\nnumber = 11\ndeck = 1\nstate = "blink"\n', 20,
     "unknown state 'blink'"),
    (GOOD.replace("number = 0x0B", "number = 0x0B\nvelocity = 3"), 11, "unknown key 'velocity'"),
    (GOOD.replace('name = "X"', 'name = "X'), 2, "not valid TOML"),
    (GOOD.replace('action = "play_pause"', 'action = "transition"\nstart = "beat"'), 13,
     'start must be "phrase" or "bar"'),
    (GOOD.replace('action = "play_pause"', 'action = "transition"\npreset = "nope"'), 13,
     "unknown transition preset 'nope'; known: bass-swap"),
    (GOOD + 'preset = "bass-swap"\n', 13, 'preset and start are for action "transition"'),
])
def test_a_bad_preset_is_refused_with_its_line(text, line, why):
    with pytest.raises(PresetError) as err:
        parse_preset(text, "my.toml")
    message = str(err.value)
    assert message.startswith(f"my.toml:{line}: "), message
    assert why in message and "\n" not in message


def test_the_cli_checks_presets(tmp_path):
    ate = str(Path(sys.executable).with_name("ate"))
    ok = subprocess.run([ate, "midi", "check", "pioneer-ddj-flx4", "numark-mixtrack-pro-fx"],
                        capture_output=True, text=True, timeout=60)
    assert ok.returncode == 0 and "Pioneer DDJ-FLX4: 123 inputs" in ok.stdout
    bad = tmp_path / "bad.toml"
    bad.write_text(GOOD.replace("channel = 1", "channel = 0"))
    refused = subprocess.run([ate, "midi", "check", str(bad)], capture_output=True, text=True, timeout=60)
    assert refused.returncode == 2
    assert refused.stderr.strip() == f"error: {bad}:9: p: channel must be 1..16 (as MIDI charts count), got 0"


# ---------------------------------------------------------------------------------------------- the mapper

def test_buttons_drive_the_engine(track):
    engine = _engine(track)
    mapper = MidiMapper(load_preset(FLX4))
    _apply(engine, mapper, [0x90, 0x0B, 127])                 # PLAY
    _apply(engine, mapper, [0x90, 0x0B, 0])
    assert engine.decks[0].playing and not engine.decks[1].playing
    engine.render(SR // 2)
    _apply(engine, mapper, [0x97, 0x00, 127])                 # hot cue pad 1 (channel 8): set, quantized
    deck = engine.decks[0]
    assert deck.hot_cues[0] == pytest.approx(deck.position_of_beat(round(deck.beat(deck.hot_cues[0]))), abs=1)
    assert abs(deck.hot_cues[0] - deck.position_frames) < deck.frames_per_beat()
    _apply(engine, mapper, [0x90, 0x58, 127])                 # SYNC toggles on, then off
    assert engine.decks[0].synced
    _apply(engine, mapper, [0x90, 0x58, 127])
    assert not engine.decks[0].synced
    _apply(engine, mapper, [0x97, 0x64, 127])                 # beat loop pad 5: 4 beats
    assert engine.state()["decks"][0]["loop_beats"] == 4.0
    _apply(engine, mapper, [0x90, 0x10, 127])                 # LOOP IN/4BEAT while looping: exit
    assert engine.state()["decks"][0]["loop"] is None
    _apply(engine, mapper, [0x98, 0x00, 127])                 # shifted pad 1 (channel 9): clear hot cue 1
    assert np.isnan(engine.decks[0].hot_cues[0])
    _apply(engine, mapper, [0x90, 0x0B, 127])                 # PLAY again: pause
    assert not engine.decks[0].playing


def test_shift_play_mixes_its_deck_in_on_the_next_phrase():
    """FLX4 shift+PLAY on deck 2 while deck 1 plays (sync off): the default transition from deck 1, which
    joins sync, deck 2 coming in on deck 1's next phrase start (without analysed phrases: every 8th downbeat),
    synced; shift+CUE asks for the next bar. With nothing playing the engine says so in one line."""
    long_track = load_track("synth:bpm=124,seed=5,bars=48")
    engine = _engine(long_track)
    mapper = MidiMapper(load_preset(FLX4))
    mapper.update_state(engine.state())
    nothing = mapper.handle([0x91, 0x0E, 127])
    assert engine.send(nothing[0]) == {"ok": False, "error": "transition: no deck is playing to mix into deck 1"}
    _apply(engine, mapper, [0x90, 0x0B, 127])                         # deck 1 PLAY (not synced)
    engine.render(3 * SR)
    sent = _apply(engine, mapper, [0x91, 0x48, 127])                  # deck 2 shift+CUE: the next bar
    assert sent == [{"cmd": "transition", "to_deck": 1, "start": "bar", "tag": "transition"}]
    assert engine.send({"cmd": "cancel", "tag": "transition"})["ok"]
    sent = _apply(engine, mapper, [0x91, 0x0E, 127])                  # deck 2 shift+PLAY: the next phrase
    assert sent[-1]["start"] == "phrase"
    out, inn = engine.decks
    for _ in range(120 * SR // 256):          # the cancel above must not have dropped this transition
        started_at = out.beat()
        engine.render(256)
        if inn.playing:
            break
    phrases = np.array([out.beat(f) for f in out.track.downbeats_frames[::8]])
    assert np.min(np.abs(phrases - started_at)) < 0.1 and started_at > 16
    assert inn.synced and out.playing


def test_faders_and_knobs_are_scaled_to_engine_units_and_heard(track):
    engine = _engine(track)
    mapper = MidiMapper(load_preset(FLX4))
    _apply(engine, mapper, [0x90, 0x0B, 127])
    # 14-bit channel fader (MSB cc 0x13, LSB cc 0x33): full, then a quarter.
    _apply(engine, mapper, [0xB0, 0x13, 127])
    _apply(engine, mapper, [0xB0, 0x33, 127])
    assert engine.decks[0].params["volume"] == pytest.approx(1.0)
    loud = engine.render(SR // 2)
    _apply(engine, mapper, [0xB0, 0x13, 32])
    _apply(engine, mapper, [0xB0, 0x33, 0])
    assert engine.decks[0].params["volume"] == pytest.approx(32 * 128 / 16383, abs=1e-4)
    quiet = engine.render(SR // 2)
    level_db = 20 * np.log10(np.sqrt(np.mean(quiet[SR // 10:] ** 2)) / np.sqrt(np.mean(loud[SR // 10:] ** 2)))
    assert level_db == pytest.approx(20 * np.log10(32 * 128 / 16383), abs=1.5)
    # EQ low: centre is 0 dB, the bottom kills the band.
    _apply(engine, mapper, [0xB0, 0x0F, 64])
    _apply(engine, mapper, [0xB0, 0x2F, 0])
    assert engine.decks[0].params["eq_low_db"] == 0.0
    for value in (40, 20, 0):                                 # down in steps (soft takeover follows our own moves)
        _apply(engine, mapper, [0xB0, 0x0F, value])
    _apply(engine, mapper, [0xB0, 0x2F, 0])
    assert engine.decks[0].params["eq_low_db"] <= -80.0
    # Tempo fader: inverted on the FLX4 (+ at the bottom); the top is -8 % with the default range. It takes
    # over where it meets the engine's 0 %, in the middle.
    _apply(engine, mapper, [0xB0, 0x00, 64])
    _apply(engine, mapper, [0xB0, 0x20, 0])
    assert engine.decks[0].params["pitch"] == pytest.approx(0.0, abs=2e-3)
    _apply(engine, mapper, [0xB0, 0x00, 127])
    _apply(engine, mapper, [0xB0, 0x20, 127])
    assert engine.decks[0].params["pitch"] == pytest.approx(-0.08, abs=1e-4)
    # Crossfader (channel 7) full right.
    _apply(engine, mapper, [0xB6, 0x1F, 127])
    _apply(engine, mapper, [0xB6, 0x3F, 127])
    assert engine.params["crossfader"] == pytest.approx(1.0)


def test_soft_takeover_waits_for_the_hardware_to_reach_the_engine_value(track):
    engine = _engine(track)
    mapper = MidiMapper(load_preset("presets/numark-mixtrack-pro-fx.toml"))
    volume = next(m for m in mapper.preset.inputs if m.action == "volume" and m.deck == 1)
    assert volume.lsb is None and volume.takeover
    status = 0xB0 | (volume.channel - 1)
    _apply(engine, mapper, [status, volume.number, 127])      # the fader is at the top: it takes over at once
    assert engine.decks[0].params["volume"] == 1.0
    engine.send({"cmd": "set", "deck": 0, "param": "volume", "value": 0.25})    # someone else (the TUI) moves it
    engine.render(256)
    assert _apply(engine, mapper, [status, volume.number, 120]) == []           # far away: ignored
    assert _apply(engine, mapper, [status, volume.number, 60]) == []
    assert engine.decks[0].params["volume"] == 0.25
    near = round((0.25 + TAKEOVER_TOLERANCE / 2) * 127)
    assert _apply(engine, mapper, [status, volume.number, near])                # within the tolerance: taken
    assert engine.decks[0].params["volume"] == pytest.approx(near / 127)
    engine.send({"cmd": "set", "deck": 0, "param": "volume", "value": 0.8})
    engine.render(256)
    assert _apply(engine, mapper, [status, volume.number, 40]) == []
    assert _apply(engine, mapper, [status, volume.number, 127])                 # crossed 0.8 on the way: taken
    assert engine.decks[0].params["volume"] == 1.0


def test_jog_nudges_while_turning_and_searches_when_touched(track):
    engine = _engine(track)
    mapper = MidiMapper(load_preset(FLX4))
    _apply(engine, mapper, [0x90, 0x0B, 127])
    t = 100.0
    commands = _apply(engine, mapper, [0xB0, 0x21, 64 + 5], now=t)          # side of the wheel, 5 ticks forward
    assert commands == [{"cmd": "nudge", "deck": 0, "amount": pytest.approx(0.01)}]
    assert engine.decks[0].nudge == pytest.approx(0.01)
    assert mapper.tick(now=t + 0.01) == []
    assert mapper.tick(now=t + 0.1) == [{"cmd": "nudge", "deck": 0, "amount": 0.0}]
    # Touch the top and turn back: the ticks add up into search jumps, at most one per interval.
    _apply(engine, mapper, [0x90, 0x36, 127], now=t + 1.0)
    before = engine.decks[0].beat()
    first = _apply(engine, mapper, [0xB0, 0x22, 64 - 8], now=t + 1.0)
    assert first == [{"cmd": "beat_jump", "deck": 0, "beats": -8 / 32}]
    assert _apply(engine, mapper, [0xB0, 0x22, 64 - 8], now=t + 1.01) == []
    assert _apply(engine, mapper, [0xB0, 0x22, 64 - 8], now=t + 1.02) == []
    later = mapper.tick(now=t + 1.05)
    assert later == [{"cmd": "beat_jump", "deck": 0, "beats": -16 / 32}]
    engine.send(later[0])
    engine.render(256)
    assert engine.decks[0].beat() == pytest.approx(before - 0.75 + 768 / engine.decks[0].frames_per_beat(), abs=0.02)


def test_leds_follow_the_engine_state(track):
    engine = _engine(track)
    preset = load_preset(FLX4)
    mapper = MidiMapper(preset)
    mapper.update_state(engine.state())
    first = {tuple(m[:2]): m[2] for m in mapper.feedback(force=True)}
    assert len(first) == len(preset.outputs)
    assert first[(0x90, 0x0B)] == 0                           # play LED off
    assert first[(0x9F, 0x00)] == 127                         # deck 1 loaded
    assert mapper.feedback() == []                            # nothing changed
    _apply(engine, mapper, [0x90, 0x0B, 127])
    _apply(engine, mapper, [0x97, 0x02, 127])                 # hot cue 3 set
    _apply(engine, mapper, [0x97, 0x64, 127])                 # a loop
    mapper.update_state(engine.state())
    changed = {tuple(m[:2]): m[2] for m in mapper.feedback()}
    assert changed[(0x90, 0x0B)] == 127 and changed[(0x97, 0x02)] == 127 and changed[(0x90, 0x4D)] == 127
    assert (0x91, 0x0B) not in changed                        # deck 2 did not change


# ---------------------------------------------------------------------------------------------- real rtmidi on JACK

@pytest.fixture(scope="module")
def jack():
    if not JackDummyServer.available():
        pytest.skip("jackd is not installed (Debian: jackd2)")
    with JackDummyServer(name=f"ate-midi-{os.getpid()}", period_frames=256) as server:
        yield server


class FakeController:
    """A controller's side of the MIDI cable: virtual JACK ports named like the hardware's."""

    def __init__(self, name: str):
        import rtmidi

        self.out = rtmidi.MidiOut(rtapi=rtmidi.API_UNIX_JACK, name=f"{name} hw-out")
        self.out.open_virtual_port(f"{name} MIDI out")
        self.inp = rtmidi.MidiIn(rtapi=rtmidi.API_UNIX_JACK, name=f"{name} hw-in")
        self.inp.open_virtual_port(f"{name} MIDI in")
        self.received: list[list[int]] = []
        self._pump = InputPump(self.inp, self.received.append, name="fake-controller")

    def send(self, *messages: list[int], gap_s: float = 0.01) -> None:
        for m in messages:
            self.out.send_message(m)
            time.sleep(gap_s)

    def close(self) -> None:
        self._pump.stop()
        for port in (self.out, self.inp):
            port.close_port()
            port.delete()


def _wait(predicate, timeout_s: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.01)
    return predicate()


class PacedEngine:
    """An engine rendered in real time by a thread (the audio thread's place), served over ZeroMQ."""

    def __init__(self, engine: Engine):
        from controllers.server import ProtocolServer

        self.engine = engine
        self.server = ProtocolServer(engine, endpoint="tcp://127.0.0.1:*", pub_endpoint="tcp://127.0.0.1:*",
                                     state_hz=50.0)
        self.blocks: list[np.ndarray] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        start = time.monotonic()
        n = 0
        while not self._stop.is_set():
            self.blocks.append(self.engine.render(256))
            n += 1
            ahead = start + n * 256 / SR - time.monotonic()
            if ahead > 0:
                time.sleep(ahead)

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        self.server.close()


def test_the_bridge_plays_a_deck_from_a_controller_and_lights_its_leds(jack, track):
    from controllers.client import EngineClient
    from controllers.midi import MidiBridge

    engine = _engine(track)
    paced = PacedEngine(engine)
    hw = FakeController("DDJ-FLX4")
    client = EngineClient(paced.server.endpoint, paced.server.pub_endpoint)
    try:
        with MidiBridge(load_preset(FLX4), client, api="jack") as bridge:
            assert "DDJ-FLX4" in bridge.input_name and "DDJ-FLX4" in bridge.output_name
            assert _wait(lambda: [0x9F, 0x00, 127] in hw.received)              # deck 1 loaded: lit at start
            hw.send([0x90, 0x0B, 127], [0x90, 0x0B, 0])                          # PLAY
            assert _wait(lambda: engine.decks[0].playing)
            assert _wait(lambda: [0x90, 0x0B, 127] in hw.received)              # the play LED comes on
            hw.send([0xB0, 0x13, 127], [0xB0, 0x33, 127])                        # channel fader up (takes over)
            hw.send([0xB0, 0x13, 64], [0xB0, 0x33, 0])                           # then to the middle
            assert _wait(lambda: engine.decks[0].params["volume"] == pytest.approx(64 * 128 / 16383))
            hw.send([0x97, 0x00, 127], [0x97, 0x00, 0])                          # hot cue 1
            assert _wait(lambda: not np.isnan(engine.decks[0].hot_cues[0]))
            assert _wait(lambda: [0x97, 0x00, 127] in hw.received)
            hw.send([0x90, 0x77, 127])                                           # not in the preset
            assert _wait(lambda: bridge.unmapped == 1)
            assert bridge.received == 9 and bridge.commands_sent == 6 and not client.errors
        assert [0x90, 0x0B, 0] in hw.received[-len(load_preset(FLX4).outputs):]  # LEDs off on close
    finally:
        client.close()
        hw.close()
        paced.close()
    audio = np.concatenate(paced.blocks)
    assert np.sqrt(np.mean(audio[-SR // 2:] ** 2)) > 0.01                      # the deck was heard


def test_monitor_prints_messages_and_their_mapping(jack):
    ate = str(Path(sys.executable).with_name("ate"))
    hw = FakeController("Mixtrack Pro FX")
    env = dict(os.environ, JACK_DEFAULT_SERVER=jack.name, JACK_NO_START_SERVER="1")
    proc = subprocess.Popen([ate, "midi", "monitor", "--port", "Mixtrack", "--api", "jack", "--seconds", "6",
                             "--preset", "numark-mixtrack-pro-fx"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=env)
    try:
        line = proc.stderr.readline()
        assert line.startswith("listening to") and "Mixtrack Pro FX" in line
        time.sleep(0.3)
        preset = load_preset("presets/numark-mixtrack-pro-fx.toml")
        play = next(m for m in preset.inputs if m.action == "play_pause" and m.deck == 1)
        hw.send([0x90 | (play.channel - 1), play.number, 127], [0xB0, 0x7E, 5])
        out, err = proc.communicate(timeout=30)
    finally:
        hw.close()
    lines = out.strip().splitlines()
    assert proc.returncode == 0, err
    assert f"note on   ch {play.channel:2d}" in lines[0] and f"-> {play.name} (play_pause)" in lines[0]
    assert "cc        ch  1  cc   0x7E (126)  value 5" in lines[1] and "not in the preset" in lines[1]


def test_learn_builds_a_preset_that_maps_what_was_touched(jack, tmp_path):
    from controllers.midi_learn import learn

    hw = FakeController("Acme DJ-2")
    answers_r, answers_w = os.pipe()
    prompts = _PromptLog()
    controls = [{"name": "deck1.play", "action": "play_pause", "deck": 1},
                {"name": "deck1.volume", "action": "volume", "deck": 1},
                {"name": "deck1.jog", "action": "jog", "deck": 1},
                {"name": "deck1.sync", "action": "sync", "deck": 1},
                {"name": "crossfader", "action": "crossfader"}]
    result: dict = {}
    worker = threading.Thread(target=lambda: result.update(learn(
        "Acme", tmp_path / "acme.toml", api="jack", controls=controls, answers=io.TextIOWrapper(
            os.fdopen(answers_r, "rb")), prompt=prompts, timeout_s=20)))
    worker.start()
    try:
        assert _wait(lambda: prompts.count("press deck1.play"))
        hw.send([0x92, 0x05, 127], [0x92, 0x05, 0])
        assert _wait(lambda: prompts.count("move deck1.volume"))
        hw.send([0xB2, 0x08, 90], [0xB2, 0x28, 3], [0xB2, 0x08, 91], [0xB2, 0x28, 7])   # 14-bit: MSB then LSB
        assert _wait(lambda: prompts.count("move deck1.jog"))
        hw.send([0xB2, 0x10, 1], [0xB2, 0x10, 2], [0xB2, 0x10, 127])                   # two's complement
        assert _wait(lambda: prompts.count("press deck1.sync"))
        os.write(answers_w, b"\n")                                                      # skip
        assert _wait(lambda: prompts.count("move crossfader"))
        os.write(answers_w, b"q\n")                                                     # finish
        worker.join(timeout=30)
    finally:
        os.close(answers_w)
        hw.close()
    assert result["learned"] == ["deck1.play", "deck1.volume", "deck1.jog"]
    assert result["skipped"] == ["deck1.sync"]
    preset = load_preset(tmp_path / "acme.toml")
    by_name = {m.name: m for m in preset.inputs}
    assert (by_name["deck1.play"].status, by_name["deck1.play"].channel, by_name["deck1.play"].number) == ("note", 3, 5)
    assert (by_name["deck1.volume"].number, by_name["deck1.volume"].lsb) == (0x08, 0x28)
    assert by_name["deck1.jog"].encoding == "twos_complement"
    mapper = MidiMapper(preset)
    assert mapper.handle([0x92, 0x05, 127]) == [{"cmd": "play_pause", "deck": 0}]
    assert mapper.handle([0xB2, 0x08, 127]) and mapper.handle([0xB2, 0x28, 127])[0]["value"] == pytest.approx(1.0)


class _PromptLog(io.StringIO):
    def count(self, text: str) -> int:
        return self.getvalue().count(text)


def test_ports_lists_the_jack_ports(jack):
    ate = str(Path(sys.executable).with_name("ate"))
    hw = FakeController("Inpulse 500")
    try:
        env = dict(os.environ, JACK_DEFAULT_SERVER=jack.name, JACK_NO_START_SERVER="1")
        done = subprocess.run([ate, "midi", "ports", "--api", "jack"], capture_output=True, text=True, timeout=60,
                              env=env)
    finally:
        hw.close()
    ports = json.loads(done.stdout)
    assert any("Inpulse 500 MIDI out" in p for p in ports["inputs"])
    assert any("Inpulse 500 MIDI in" in p for p in ports["outputs"])
