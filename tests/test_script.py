"""Tests of engine.script (timed command scripts rendered offline) and `ate render`, measured on the audio."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from scipy.signal import butter, sosfilt

from engine.dsp import Limiter
from engine.script import ScriptError, Script, default_script_path, load_script, render_script, write_render
from engine.track import track_from_synth
from prep.audio import write_audio

SR = 44100
CEILING = 10.0 ** (-1.0 / 20.0)
LIMITER_LATENCY = Limiter(SR).latency_frames   # the master limiter's output delay (66 frames at 44.1 kHz)
PLAY_FRAME = SR               # deck 0 starts at 1.0 s
TRACK_A = "synth:bpm=120,seed=3,bars=8,style=house"
TRACK_B = "synth:bpm=126,seed=4,bars=8,style=house"
ROOT = Path(__file__).resolve().parents[1]


def _mix_commands() -> list[dict]:
    """Two synced decks with disjoint spectra: A = drums, lows only (side A); B = drums, highs only (side B).

    Deck 0 leads from 1.0 s (master beat 2, since the internal clock ran at 120 BPM before), deck 1 joins on
    master beat 12 (6.0 s); the crossfader goes A -> B over master beats 20..24 (10.0 .. 12.0 s). Deck 0 is
    pushed +18 dB so that the limiter has to work.
    """
    at0 = {"frame": 0}
    return [
        {"cmd": "load", "deck": 0, "track": TRACK_A, "at": at0},
        {"cmd": "load", "deck": 1, "track": TRACK_B, "at": at0},
        {"cmd": "xfader_side", "deck": 0, "side": "A", "at": at0},
        {"cmd": "xfader_side", "deck": 1, "side": "B", "at": at0},
        {"cmd": "set", "param": "crossfader", "value": -1, "at": at0},
        {"cmd": "solo", "deck": 0, "stem": "drums", "on": True, "at": at0},
        {"cmd": "set", "deck": 0, "param": "eq_mid_db", "value": -100, "at": at0},
        {"cmd": "set", "deck": 0, "param": "eq_high_db", "value": -100, "at": at0},
        {"cmd": "set", "deck": 0, "param": "gain_db", "value": 12, "at": at0},
        {"cmd": "set", "param": "master_gain_db", "value": 6, "at": at0},
        {"cmd": "solo", "deck": 1, "stem": "drums", "on": True, "at": at0},
        {"cmd": "set", "deck": 1, "param": "eq_low_db", "value": -100, "at": at0},
        {"cmd": "set", "deck": 1, "param": "eq_mid_db", "value": -100, "at": at0},
        {"cmd": "sync", "deck": 0, "on": True, "at": at0},
        {"cmd": "sync", "deck": 1, "on": True, "at": at0},
        {"cmd": "play", "deck": 0, "at": {"seconds": PLAY_FRAME / SR}},
        {"cmd": "play", "deck": 1, "at": {"beat": 12}},
        {"cmd": "set", "param": "crossfader", "value": 1, "ramp": {"beats": 4}, "at": {"beat": 20}},
    ]


@pytest.fixture(scope="module")
def mix_script(tmp_path_factory) -> Script:
    path = tmp_path_factory.mktemp("scripts") / "mix.json"
    path.write_text(json.dumps({"seconds": 14.0, "commands": _mix_commands()}, indent=1))
    return load_script(path)


@pytest.fixture(scope="module")
def rendered(mix_script):
    return render_script(mix_script)


def _mono(audio: np.ndarray) -> np.ndarray:
    return audio[:, 0].astype(np.float64) + audio[:, 1]


def _band_db(x: np.ndarray, low_hz: float, high_hz: float) -> float:
    y = sosfilt(butter(4, [low_hz, high_hz], "bandpass", fs=SR, output="sos"), x)
    return 10.0 * np.log10(np.mean(y ** 2) + 1e-20)


# ---------------------------------------------------------------------------------------------- loading


def test_toml_and_json_load_the_same_script(tmp_path):
    write_audio(tmp_path / "loop.wav", np.zeros((SR, 2), np.float32))
    toml = tmp_path / "a.toml"
    toml.write_text('''
seconds = 5.5
block_frames = 128
[[commands]]
cmd = "load"
deck = 0
track = "loop.wav"
at = { frame = 0 }
[[commands]]
cmd = "load"
deck = 1
track = "synth:bpm=120,bars=4"
at = { seconds = 0 }
[[commands]]
cmd = "set"
param = "crossfader"
value = 1.0
ramp = { beats = 4 }
at = { beat = 8 }
''')
    data = {"seconds": 5.5, "block_frames": 128, "commands": [
        {"cmd": "load", "deck": 0, "track": "loop.wav", "at": {"frame": 0}},
        {"cmd": "load", "deck": 1, "track": "synth:bpm=120,bars=4", "at": {"seconds": 0}},
        {"cmd": "set", "param": "crossfader", "value": 1.0, "ramp": {"beats": 4}, "at": {"beat": 8}}]}
    (tmp_path / "b.json").write_text(json.dumps(data))
    a, b = load_script(toml), load_script(tmp_path / "b.json")
    assert a.commands == b.commands
    assert (a.seconds, a.block_frames, a.channels, a.decks, a.sample_rate) == (5.5, 128, 2, 4, 44100)
    # Relative files resolve against the script's folder; synth specs stay as they are.
    assert a.commands[0]["track"] == str(tmp_path.resolve() / "loop.wav")
    assert a.commands[1]["track"] == "synth:bpm=120,bars=4"


def test_default_length_is_last_command_plus_tail(tmp_path):
    path = tmp_path / "s.json"
    path.write_text(json.dumps({"tail_seconds": 2.0, "commands": [
        {"cmd": "load", "deck": 0, "track": "synth:bpm=100,bars=4", "at": {"frame": 0}},
        {"cmd": "sync", "deck": 0, "on": True, "at": {"frame": 0}},
        {"cmd": "play", "deck": 0, "at": {"seconds": 0.5}},
        {"cmd": "set", "deck": 0, "param": "volume", "value": 0, "ramp": {"beats": 5}, "at": {"beat": 10}}]}))
    script = load_script(path)
    assert script.seconds is None
    # The synced deck leads at 100 BPM: beat 10 + 5 beats of ramp = 9 s, plus the 2 s tail.
    assert script.render_length_s() == pytest.approx(11.0)


def test_builtin_demo_script_loads():
    script = load_script(default_script_path())
    names = {c["cmd"] for c in script.commands}
    assert {"load", "sync", "play", "bass_swap", "loop", "set"} <= names
    assert 60.0 <= script.render_length_s() <= 90.0


BAD = {
    "bad_toml": ("s.toml", '[[commands]]\ncmd = "play"\ndeck = = 0\n', "line 3"),
    "bad_json": ("s.json", '{"commands": [\n {"cmd": "play",\n "deck": 0,,}]}', "line 3"),
    "unknown_command": ("s.json", json.dumps({"commands": [
        {"cmd": "play", "deck": 0, "at": {"frame": 0}}, {"cmd": "fly", "deck": 0, "at": {"frame": 0}}]}),
        "commands[1]: unknown command 'fly'"),
    "missing_at": ("s.toml", '[[commands]]\ncmd = "play"\ndeck = 0\nat = {frame = 0}\n'
                   '[[commands]]\ncmd = "pause"\ndeck = 0\n', "commands[1]: pause: missing 'at'"),
    "bad_deck": ("s.json", json.dumps({"decks": 2, "commands": [{"cmd": "play", "deck": 3, "at": {"beat": 4}}]}),
                 "commands[0]: play: deck must be an integer 0..1"),
    "bad_track": ("s.json", json.dumps({"commands": [
        {"cmd": "play", "deck": 0, "at": {"frame": 0}},
        {"cmd": "load", "deck": 0, "track": "missing.flac", "at": {"frame": 0}}]}),
        "commands[1]: load: track file"),
    "bad_setting": ("s.json", json.dumps({"channels": 3, "commands": [{"cmd": "play", "deck": 0, "at": {"beat": 4}}]}),
                    "channels: must be 2 or 4"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_malformed_scripts_give_one_line_errors(tmp_path, case):
    name, text, expected = BAD[case]
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(ScriptError) as info:
        load_script(path)
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(str(path) + ": ")
    assert expected in message


def test_track_that_fails_to_load_names_the_command(tmp_path):
    path = tmp_path / "s.json"
    path.write_text(json.dumps({"seconds": 1, "commands": [
        {"cmd": "load", "deck": 0, "track": "synth:bpm=120,bars=4", "at": {"frame": 0}},
        {"cmd": "load", "deck": 1, "track": "synth:bpm=120,bars=1", "at": {"frame": 0}}]}))
    script = load_script(path)   # a synth spec is only checked when the engine generates it
    with pytest.raises(ScriptError) as info:
        render_script(script)
    message = str(info.value)
    assert "\n" not in message and message.startswith(f"{path}: commands[1]: ")
    assert "bars must be 2..512" in message


# ---------------------------------------------------------------------------------------------- rendering


def test_silence_until_the_play_command(rendered):
    audio, _ = rendered
    x = _mono(audio)
    # The deck starts on the play frame; the master limiter delays everything by its look-ahead.
    start = PLAY_FRAME + LIMITER_LATENCY
    assert not np.any(audio[:start])
    assert np.abs(x[start:start + 256]).max() > 1e-3


def test_first_deck_beats_land_on_their_sample_times(rendered):
    audio, _ = rendered
    x = np.abs(_mono(audio))
    beats = track_from_synth(TRACK_A).beats_frames   # the true grid of deck 0's material
    start = PLAY_FRAME + LIMITER_LATENCY
    # Beats 1..9 (beat 0 is inside the play fade-in; deck 1 enters on beat 10 of deck 0).
    for k in range(1, 10):
        expected = start + int(round(beats[k] - beats[0]))
        window = x[expected - 2205:expected + 2205]
        peak = window.max()
        onset = int(np.flatnonzero(window > 0.3 * peak)[0]) - 2205
        # The kick rises within its first 3.4 ms (its attack through the low-band EQ), never before its beat.
        assert 0 <= onset <= 150, (k, onset)
        before = window[2205 - 441:2205]       # the 10 ms before the beat: the previous kick's tail only
        assert 20 * np.log10(before.max() / peak) < -20.0, k


def test_crossfade_moves_energy_from_deck_a_to_deck_b(rendered):
    audio, _ = rendered
    x = _mono(audio)
    # Crossfade over master beats 20..24 = 10.0..12.0 s; deck B plays from 6.0 s.
    before = x[int(7.0 * SR):int(9.8 * SR)]
    after = x[int(12.2 * SR):int(14.0 * SR)]
    low_drop = _band_db(before, 30, 100) - _band_db(after, 30, 100)     # deck A's kick (B's lows are killed)
    high_rise = _band_db(after, 6000, 15000) - _band_db(before, 6000, 15000)  # deck B's hats (A's highs killed)
    assert low_drop > 40.0
    assert high_rise > 40.0


def test_output_never_exceeds_the_limiter_ceiling(rendered):
    audio, summary = rendered
    peak = float(np.abs(audio).max())
    assert peak <= CEILING
    assert peak > CEILING * 10 ** (-0.5 / 20)   # deck A at +18 dB drives the limiter to the ceiling
    assert summary["limiter_max_reduction_db"] > 3.0
    assert summary["peak_dbfs"] == pytest.approx(-1.0, abs=0.05)
    assert summary["commands_applied"] == summary["commands"] == len(_mix_commands())
    assert audio.shape == (14 * SR, 2)


def test_rendering_twice_gives_identical_samples(mix_script, rendered):
    again, _ = render_script(mix_script)
    assert np.array_equal(again, rendered[0])


def test_write_render_formats(tmp_path, rendered):
    audio = rendered[0][:SR]
    write_render(audio, tmp_path / "a.wav")
    write_render(audio, tmp_path / "b.wav", sample_format="pcm24")
    write_render(audio, tmp_path / "c.flac")
    y, sr = sf.read(tmp_path / "a.wav", dtype="float32")
    assert sr == SR and np.array_equal(y, audio)
    assert sf.info(str(tmp_path / "b.wav")).subtype == "PCM_24"
    z, _ = sf.read(tmp_path / "c.flac", dtype="float32")
    assert np.abs(z - audio).max() < 2.0 ** -22
    with pytest.raises(ScriptError, match="use .wav or .flac"):
        write_render(audio, tmp_path / "d.mp3")


# ---------------------------------------------------------------------------------------------- CLI


def _ate(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ate.cli", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=120)


def test_ate_render_writes_a_wav_of_the_expected_length(tmp_path):
    script = tmp_path / "tiny.toml"
    script.write_text('''
seconds = 3.0
[[commands]]
cmd = "load"
deck = 0
track = "synth:bpm=128,seed=1,bars=4"
at = { frame = 0 }
[[commands]]
cmd = "play"
deck = 0
at = { seconds = 0.5 }
''')
    out = tmp_path / "tiny.wav"
    result = _ate("render", str(script), "-o", str(out), "--json", "--block-frames", "512")
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    audio, sr = sf.read(out, dtype="float32")
    assert sr == SR and audio.shape == (3 * SR, 2)
    assert summary["frames"] == 3 * SR and summary["block_frames"] == 512
    assert not np.any(audio[:SR // 2])
    assert np.abs(audio[SR:]).max() > 0.01
    assert np.abs(audio).max() <= CEILING


def test_ate_render_errors_are_one_line_with_exit_code_2(tmp_path):
    script = tmp_path / "bad.json"
    script.write_text(json.dumps({"commands": [{"cmd": "play", "deck": 9, "at": {"frame": 0}}]}))
    result = _ate("render", str(script), "-o", str(tmp_path / "x.wav"))
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {script}: commands[0]: ")
    assert not (tmp_path / "x.wav").exists()
