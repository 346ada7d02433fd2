"""Transitions and automix: presets, the engine's transition command, the planner, sessions offline and live.

Audio is generated with known truth (prep/synth.py). The crates here are
written with the generator's true stems and a truth-made analysis (beats,
downbeats, 8-bar phrases, vocal regions, loudness), so the tests measure the
mixing; `ate bench automix` runs the same on tracks that went through `ate prep`.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from controllers.automix import (TrackInfo, energy_targets, key_shift_for, order_tracks, plan_transition,
                                 tempo_move)
from controllers.mixsession import LivePort, MixSession, OfflinePort, load_crate_tracks, write_cue_sheet
from engine.commands import parse_command
from prep.analyze import ANALYSIS_VERSION
from engine.core import Engine
from engine.transitions import (TransitionError, compile_transition, load_library, parse_transition)
from prep.audio import content_hash, write_audio
from prep.crate import Crate, default_db_path
from prep.key import camelot
from prep.loudness import integrated_loudness_lufs
from prep.pipeline import stem_file_path
from prep.stems import STEM_NAMES, write_stem_file
from prep.synth import TrackSpec, generate

SR = 44100
LIBRARY = load_library()


# --------------------------------------------------------------------------- a crate with truth

def _truth_analysis(g, path: Path) -> dict:
    beats = np.asarray(g.truth.beats, float)
    downbeats = np.asarray(g.truth.downbeats, float)
    phrases = downbeats[::8]
    bars = len(downbeats)
    return {"version": ANALYSIS_VERSION, "path": str(path), "duration": g.duration_s, "bpm": g.truth.bpm, "steady_tempo": True,
            "beats": beats.tolist(), "downbeats": downbeats.tolist(), "beats_per_bar": g.truth.beats_per_bar,
            "key": g.truth.key, "camelot": camelot(g.truth.tonic, g.truth.mode), "key_confidence": 1.0,
            "phrases": [{"start": float(p), "end": float(q), "bars": 8} for p, q in
                        zip(phrases, list(phrases[1:]) + [g.duration_s])],
            "mix_in": float(phrases[0]), "mix_out": float(downbeats[max(bars - 16, 0)]),
            "lufs": integrated_loudness_lufs(g.mix, SR), "true_peak_dbtp": -1.0, "analysed_from": "stems",
            "vocal_regions": [list(r) for r in g.truth.vocal_regions],
            "stem_lufs": {s: integrated_loudness_lufs(g.stems[s], SR) if np.abs(g.stems[s]).max() > 0 else -70.0
                          for s in STEM_NAMES}}


def write_true_crate(folder: Path, specs: list[TrackSpec]) -> dict:
    """A crate of generated tracks: the mix as WAV, the true stems in the crate's stem store, a truth analysis."""
    folder.mkdir(parents=True, exist_ok=True)
    made = {}
    with Crate(default_db_path(folder)) as crate:
        for spec in specs:
            g = generate(spec)
            path = folder / f"{spec.title}.wav"
            write_audio(path, g.mix)
            h = content_hash(g.mix)
            crate.add_track(h, path, {"title": spec.title, "artist": spec.title.split()[0]}, _truth_analysis(g, path))
            stems_path = stem_file_path(crate.stems_dir, h)
            stems_path.parent.mkdir(parents=True, exist_ok=True)
            write_stem_file(stems_path, np.stack([g.stems[s] for s in STEM_NAMES]))
            with crate.transaction():
                crate.set_stems(h, stems_path, STEM_NAMES, fmt="ate-stems", sample_rate=SR, frames=len(g.mix),
                                model="truth")
            made[spec.title] = g
    return made


PLAIN = [["intro", 8], ["chorus", 8], ["outro", 16]]
SING = [["verse", 8], ["chorus", 8], ["verse", 16]]
SPECS = [TrackSpec(bpm=122.0, tonic=9, mode="minor", structure=PLAIN, seed=31, title="Alpha one"),      # 8A
         TrackSpec(bpm=124.0, tonic=4, mode="minor", structure=SING, seed=32, title="Bravo two"),       # 9A
         TrackSpec(bpm=125.0, tonic=7, mode="major", structure=SING, seed=33, title="Charlie three")]   # 9B


@pytest.fixture(scope="module")
def crate(tmp_path_factory):
    folder = tmp_path_factory.mktemp("automix") / "crate"
    return folder, write_true_crate(folder, SPECS)


# --------------------------------------------------------------------------- presets

def test_shipped_presets_keep_basslines_apart_and_vocal_safe_means_it():
    assert {"bass-swap", "long-blend", "filter-sweep", "quick-cut", "vocal-safe", "crossfade"} <= set(LIBRARY)
    for name, t in LIBRARY.items():
        if not t.baseline:
            assert t.overlap_bars("bass") == 0.0, name
        for bars in range(t.min_bars, t.bars + 1):
            short = t.with_bars(bars)
            if not t.baseline:
                assert short.overlap_bars("bass") == 0.0, (name, bars)
            if t.vocal_safe:
                assert short.overlap_bars("vocals") == 0.0, (name, bars)
    assert LIBRARY["crossfade"].overlap_bars("bass") > 10          # the baseline overlaps by design
    assert LIBRARY["bass-swap"].with_bars(8).swap_bar == 4.0         # a shortened swap stays on a downbeat


@pytest.mark.parametrize("text, where, why", [
    ('name = "x"\nbars = 16\n[out]\n"stem.bass" = [[0, 1], [8, 1], [8, 0]\n', ":4:", "not valid TOML"),
    ('name = "x"\nbars = 16\n[in]\nvolume = [[0, 0], [4, 1]]\n[out]\nwarp = [[0, 1]]\n', ":6:", "unknown control"),
    ('name = "x"\nbars = 16\n[in]\nvolume = [[0, 0], [20, 1]]\n', ":4:", "outside the transition"),
    ('name = "x"\nbars = 8\n[out]\n"stem.bass" = [[0, 1], [8, 0]]\n[in]\n"stem.bass" = [[0, 0], [8, 1]]\n',
     ":5:", "two bass stems are up together"),
    ('name = "x"\nbars = 8\n[in]\nvolume = [[0, 0], [2, 1]]\nfilter = [[0, -1], [8, -0.5]]\n', ":5:",
     "must end at its resting value"),
    ('name = "x"\nbars = 8\nvocal_safe = true\n[out]\n"stem.vocals" = [[0, 1], [8, 0]]\n'
     '"stem.bass" = [[0, 1], [4, 1], [4, 0]]\n[in]\n"stem.vocals" = [[0, 0], [8, 1]]\n'
     '"stem.bass" = [[0, 0], [4, 0], [4, 1]]\n', ":7:", "never lets both vocals"),
])
def test_a_bad_preset_is_one_line_with_file_and_line(text, where, why):
    with pytest.raises(TransitionError) as err:
        parse_transition(text, "my.toml")
    message = str(err.value)
    assert message.startswith("my.toml" + where) and why in message and "\n" not in message


def test_compiled_transitions_are_valid_tagged_engine_commands_in_time_order():
    t = LIBRARY["bass-swap"]
    commands = compile_transition(t, 0, 1, 64.0, 4, tag="automix")
    beats = [c["at"]["beat"] for c in commands]
    assert beats == sorted(beats) and all(c["tag"] == "automix" for c in commands)
    for c in commands:
        parse_command(c, 2)
    bass = [c for c in commands if c.get("param") == "stem.bass"]
    # The swap is two steps on the downbeat of bar 8 (64 + 32 beats), no ramp.
    assert {(c["deck"], c["value"]) for c in bass if c["at"]["beat"] == 96.0} == {(0, 0.0), (1, 1.0)}
    assert not any("ramp" in c for c in bass)
    play = next(c for c in commands if c["cmd"] == "play")
    assert play["deck"] == 1 and play["at"]["beat"] == 64.0
    pause = next(c for c in commands if c["cmd"] == "pause")
    assert pause["deck"] == 0 and pause["at"]["beat"] == 128.0
    # The incoming deck takes its first values a bar before it plays.
    first_in = min(c["at"]["beat"] for c in commands if c.get("deck") == 1 and c["cmd"] == "set")
    assert first_in == 60.0


# --------------------------------------------------------------------------- the engine's transition command

def _bass_levels(engine: Engine, seconds: float, block: int = 256) -> np.ndarray:
    """Per deck RMS of each block of the decks' taps, dB."""
    out = np.zeros((block, 2), np.float32)
    levels = []
    for _ in range(int(seconds * SR / block)):
        engine.process(out)
        levels.append(10 * np.log10(np.mean(engine.taps[:, :block] ** 2, axis=(1, 2)) + 1e-12))
    return np.array(levels).T


def _tone_track(bpm: float, bass_hz: float, seconds: float = 40.0):
    """Steady tones on every stem (so a gain change shows at once) and the grid of a ``bpm`` track."""
    from engine.track import track_from_arrays

    n = int(seconds * SR)
    t = np.arange(n) / SR
    stems = np.zeros((4, n, 2), np.float32)
    for i, hz in enumerate((2000.0, bass_hz, 700.0, 330.0)):
        stems[i] = (0.1 * np.sin(2 * np.pi * hz * t))[:, None]
    beats = np.arange(0.0, seconds - 0.5, 60.0 / bpm)
    return track_from_arrays(stems, beats, beats[::4], title=f"tones {bass_hz:g}")


def test_the_transition_command_swaps_the_bass_on_the_next_downbeat_and_hands_over():
    engine = Engine(n_decks=2, deck_taps=True)
    for deck, hz in enumerate((55.0, 62.0)):
        engine.load(deck, _tone_track(124.0, hz))
        assert engine.send({"cmd": "solo", "deck": deck, "stem": "bass", "on": True})["ok"]
    engine.send({"cmd": "sync", "deck": 0, "on": True})
    engine.send({"cmd": "play", "deck": 0, "at": {"frame": 0}})
    engine.render(int(2.3 * SR))
    reply = engine.send({"cmd": "transition", "from_deck": 0, "to_deck": 1, "preset": "bass-swap", "bars": 8,
                         "start": "bar"})
    assert reply["ok"], reply
    assert reply["out_beat"] == 8.0 and reply["bars"] == 8       # the next downbeat at least a beat ahead
    start_s = engine.clock_frames / SR + (reply["start_beat"] - engine.master_beat) * 60.0 / 124.0
    levels = _bass_levels(engine, 20.0, block=64)
    t = engine.clock_frames / SR - 20.0 + (np.arange(levels.shape[1]) + 0.5) * 64 / SR
    swap_s = start_s + 4 * 4 * 60.0 / 124.0                        # bar 4 of 8
    a_on, b_on = levels[0] > -30.0, levels[1] > -30.0                 # the tones are at -23 dB
    assert not np.any(a_on & b_on)                                   # never two bass lines
    assert abs(t[np.nonzero(a_on)[0][-1]] - swap_s) < 0.006          # A's bass ends on the downbeat (2.9 ms fade)
    assert abs(t[np.nonzero(b_on)[0][0]] - swap_s) < 0.006           # and B's starts there
    assert engine.leader == 1 and not engine.decks[0].playing
    # The outgoing deck is back at rest for whatever a DJ loads next.
    assert all(engine.decks[0].params[f"stem.{s}"] == 1.0 for s in STEM_NAMES)


def test_a_transition_is_refused_in_one_line_when_the_decks_are_not_ready():
    engine = Engine(n_decks=2)
    engine.send({"cmd": "load", "deck": 0, "track": "synth:bpm=124,bars=8"})
    engine.render(512)
    reply = engine.send({"cmd": "transition", "from_deck": 0, "to_deck": 1})
    assert not reply["ok"] and reply["error"] == "transition: deck 0 must be playing"
    reply = engine.send({"cmd": "transition", "to_deck": 1})          # from the deck playing: none does
    assert not reply["ok"] and reply["error"] == "transition: no deck is playing to mix into deck 1"
    assert "unknown preset" in engine.send({"cmd": "transition", "from_deck": 0, "to_deck": 1,
                                            "preset": "moonwalk"})["error"]
    assert not engine.send({"cmd": "transition", "from_deck": 0, "to_deck": 0})["ok"]


# --------------------------------------------------------------------------- the planner

def _info(title: str, bpm: float, code: str, energy: float = 0.5, vocals=(), bars: int = 64) -> TrackInfo:
    beats = np.arange(bars * 4) * 60.0 / bpm
    return TrackInfo(content_hash=title, title=title, artist="", duration_s=float(beats[-1] + 1), bpm=bpm,
                     beats_s=beats, beats_per_bar=4, downbeat_beats=np.arange(0, bars * 4, 4),
                     phrase_beats=np.arange(0, bars * 4, 32), mix_in_beat=0, mix_out_beat=(bars - 16) * 4,
                     camelot=code, key="", vocal_regions_s=tuple(vocals), energy=energy)


def test_keys_tempi_and_energy_curves():
    assert key_shift_for("8A", "9A") == 0 and key_shift_for("8A", "8B") == 0
    assert key_shift_for("8A", "3A") == -1          # B-flat minor down a semitone: A minor
    assert key_shift_for("8A", "2B") is None         # a tritone away: no small shift helps
    assert tempo_move(87.0, 174.0) == 0.0 and tempo_move(124.0, 128.0) == pytest.approx(4.0 / 124.0)
    build = energy_targets("build", 5)
    assert np.all(np.diff(build) > 0)
    peak = energy_targets("peak", 7)
    assert np.argmax(peak) == 4 and peak[-1] < peak[4]


def test_the_route_keeps_moves_small_and_follows_the_energy_curve():
    tracks = [_info("d", 128.0, "10A", 0.9), _info("a", 120.0, "8A", 0.2), _info("c", 126.0, "9B", 0.7),
              _info("b", 124.0, "9A", 0.5), _info("e", 110.0, "3B", 0.3)]
    route = [t.title for t in order_tracks(tracks, "build")]
    assert route[:4] == ["a", "b", "c", "d"] or route[:4] == ["e", "a", "b", "c"]
    steady = order_tracks(tracks[:4], "steady")
    assert [t.title for t in steady] in (["a", "b", "c", "d"], ["d", "c", "b", "a"])
    fixed = order_tracks(tracks, fixed=[tracks[2], tracks[0]])
    assert [t.title for t in fixed] == ["c", "d"]
    assert order_tracks(tracks, "build", first=tracks[0])[0].title == "d"


def test_the_planner_avoids_singing_over_a_singer_and_cuts_what_cannot_blend():
    a = _info("a", 124.0, "8A", vocals=[(90.0, 140.0)])
    b = _info("b", 124.0, "9A", vocals=[(0.0, 40.0)])
    plan = plan_transition(a, b, LIBRARY, after_beat=64)
    assert plan.preset.name == "vocal-safe" and plan.vocal_overlap_bars == 0.0 and plan.phrase_aligned
    quiet = _info("c", 124.0, "9A")
    plan = plan_transition(a, quiet, LIBRARY, after_beat=64)
    assert plan.preset.name == "bass-swap" and plan.out_beat in a.phrase_beats and plan.in_beat == 0
    shifted = plan_transition(a, _info("s", 124.0, "3A"), LIBRARY, after_beat=64)
    assert shifted.key_shift == -1 and shifted.in_camelot == "8A" and not shifted.cut
    clash = plan_transition(a, _info("x", 124.0, "2B"), LIBRARY, after_beat=64)
    assert clash.preset.hides_key_clash and clash.cut
    far = plan_transition(a, _info("f", 140.0, "8A"), LIBRARY, after_beat=64)
    assert far.cut and "too far to blend" in far.reasons[-1]


# --------------------------------------------------------------------------- sessions

def _render_session(folder: Path, **kwargs) -> tuple[dict, np.ndarray, Engine]:
    tracks, notes = load_crate_tracks(folder)
    assert not notes
    order = kwargs.pop("order", None) or sorted(tracks, key=lambda t: t.title)
    chunks: list[np.ndarray] = []
    engine = Engine(n_decks=2, deck_taps=True)
    peaks: list[np.ndarray] = []
    port = OfflinePort(engine, lambda b: chunks.append(b.copy()), block_frames=512,
                       on_block=lambda e, n: peaks.append(np.abs(e.taps[:, :n]).max(axis=(1, 2))))
    report = MixSession(order, LIBRARY, folder, on_note=lambda line: None, **kwargs).run(port)
    return report.to_dict(), np.concatenate(chunks), np.array(peaks)


def test_an_offline_session_mixes_the_crate_on_its_phrases(crate, tmp_path):
    folder, made = crate
    report, audio, deck_peaks = _render_session(folder)
    assert [t["title"] for t in report["tracks"]] == ["Alpha one", "Bravo two", "Charlie three"]
    assert len(report["transitions"]) == 2 and report["stopped_by"] == ""
    first, second = report["transitions"]
    assert first["preset"] == "bass-swap" and second["preset"] == "vocal-safe"   # both sing at the second
    assert all(t["phrase_aligned"] for t in report["transitions"])
    # The audio: as long as reported, never over the limiter's ceiling, every track heard in its turn.
    assert len(audio) / SR == pytest.approx(report["seconds"], abs=0.02)
    assert np.abs(audio).max() <= 10 ** (-1.0 / 20) + 1e-6
    block_s = 512 / SR
    for i, t in enumerate(report["transitions"]):
        i0, i1 = int(t["start_s"] / block_s), int(t["end_s"] / block_s)
        both = (deck_peaks[i0:i1] > 1e-3).all(axis=1)
        assert both.mean() > 0.8                                        # the two decks overlap in the transition
        out_deck = report["tracks"][i]["deck"]
        after = deck_peaks[i1 + int(1.0 / block_s):i1 + int(3.0 / block_s), out_deck]
        assert after.max() == 0.0                                       # and the old one is gone after it
    # Tempo drifts to each track's own: the last transition ends at Charlie's 125 BPM.
    assert second["end_bpm"] == pytest.approx(125.0, abs=0.01)
    cue = tmp_path / "mix.cue"
    write_cue_sheet(cue, report["tracks"], "mix.wav")
    text = cue.read_text()
    assert text.count("TRACK ") == 3 and 'TITLE "Charlie three"' in text and "INDEX 01 00:00:00" in text


def test_the_incoming_deck_is_equalised_to_the_outgoing_track_while_they_play_together(tmp_path):
    """With the tonal prep step run, the session sets the incoming deck's EQ to the tonal match (the bands its
    preset leaves alone) for the transition, then takes it back to flat over 16 bars; --no-auto-eq leaves it."""
    from controllers.mixsession import AUTO_EQ_RELEASE_BARS, AUTO_EQ_STRENGTH
    from prep.steps import run_steps
    from prep.tonal import propose_eq, track_bands

    folder = tmp_path / "crate"
    write_true_crate(folder, [SPECS[1], SPECS[0]])
    with Crate(default_db_path(folder)) as crate:
        assert run_steps(crate, ["tonal"])["tonal"] == 2
        tracks, _ = load_crate_tracks(folder)
        by_title = {t.title: t for t in tracks}
        a, b = by_title["Bravo two"], by_title["Alpha one"]
        expected = propose_eq(track_bands(crate, a.content_hash), track_bands(crate, b.content_hash),
                              strength=AUTO_EQ_STRENGTH)
    for auto_eq in (True, False):
        engine = Engine(n_decks=2)
        eq_log: list[tuple[float, list[float]]] = []
        port = OfflinePort(engine, lambda block: None, block_frames=512,
                           on_block=lambda e, n: eq_log.append(
                               (e.master_beat, [e.decks[1].params[p] for p in ("eq_mid_db", "eq_high_db")])))
        report = MixSession([a, b], LIBRARY, folder, on_note=lambda line: None, auto_eq=auto_eq).run(port).to_dict()
        t = report["transitions"][0]
        beats = np.array([x[0] for x in eq_log])
        eq = np.array([x[1] for x in eq_log])
        during = eq[(beats > t["start_beat"] + 1) & (beats < t["start_beat"] + 4 * t["bars"] - 1)]
        if not auto_eq:
            assert t["auto_eq"] == {} and np.all(eq == 0.0)
            continue
        # bass-swap moves the low EQ (incoming) and the high EQ (outgoing) itself: the match takes the mid.
        assert t["preset"] == "bass-swap" and set(t["auto_eq"]) <= {"eq_mid_db"}
        assert t["auto_eq"] == {p: v for p, v in expected.items() if p == "eq_mid_db" and v != 0.0}
        assert t["auto_eq"], "generated tracks of different timbre get some correction"
        target = [t["auto_eq"].get(p, 0.0) for p in ("eq_mid_db", "eq_high_db")]
        assert np.allclose(during, target)                   # held for the whole transition
        end_beat = t["start_beat"] + 4 * t["bars"]
        release = eq[(beats > end_beat + 2) & (beats < end_beat + 4 * AUTO_EQ_RELEASE_BARS - 2)]
        mags = np.abs(release).sum(axis=1)
        assert len(mags) > 10 and np.all(np.diff(mags) <= 1e-9) and mags[-1] < mags[0]   # easing back to flat


def test_a_long_session_repeats_the_route_skips_a_broken_track_and_stays_at_two_tracks(crate, tmp_path):
    folder, made = crate
    tracks, _ = load_crate_tracks(folder)
    broken = tracks[1]
    with Crate(default_db_path(folder)) as c:
        stems = Path(c.get_stems(broken.content_hash)["path"])
    saved = stems.read_bytes()
    stems.write_bytes(saved[:200])                                      # a damaged stems file
    wav = folder / f"{broken.title}.wav"
    wav_saved = wav.read_bytes()
    wav.write_bytes(b"not audio")
    try:
        notes: list[str] = []
        engine = Engine(n_decks=2)
        loaded: list[int] = []
        port = OfflinePort(engine, lambda b: None, block_frames=512,
                           on_block=lambda e, n: loaded.append(sum(d.loaded for d in e.decks)))
        session = MixSession(sorted(tracks, key=lambda t: t.title), LIBRARY, folder, duration_s=150.0,
                             on_note=notes.append)
        report = session.run(port).to_dict()
    finally:
        stems.write_bytes(saved)
        wav.write_bytes(wav_saved)
    assert any(n.startswith(f"skipped {broken.title}:") for n in notes)
    titles = [t["title"] for t in report["tracks"]]
    assert broken.title not in titles and len(titles) >= 3               # the route came round again
    assert 150.0 - 40.0 <= report["seconds"] < 150.0 + 40.0           # ends on a phrase near the time asked
    assert max(loaded) <= 2 and engine.collect_garbage() == 0             # old tracks were freed as it went


def test_a_live_session_over_the_protocol_stops_when_a_dj_takes_over(crate):
    from controllers.client import EngineClient
    from controllers.server import ProtocolServer

    folder, _ = crate
    tracks, _ = load_crate_tracks(folder)
    engine = Engine(n_decks=2)
    server = ProtocolServer(engine, endpoint="tcp://127.0.0.1:*", pub_endpoint="tcp://127.0.0.1:*", state_hz=30)
    stop = threading.Event()

    def audio() -> None:                      # the audio callback, eight times faster than real time
        while not stop.is_set():
            engine.render(2048)
            time.sleep(2048 / SR / 8)

    player = threading.Thread(target=audio, daemon=True)
    player.start()
    client, dj = EngineClient(server.endpoint, server.pub_endpoint), EngineClient(server.endpoint, None)
    result = {}
    try:
        session = MixSession(sorted(tracks, key=lambda t: t.title), LIBRARY, folder, on_note=lambda line: None)
        runner = threading.Thread(target=lambda: result.setdefault("r", session.run(LivePort(client, 0.02))))
        runner.start()
        deadline = time.monotonic() + 60
        while not session.report.transitions and time.monotonic() < deadline:
            state = dj.request({"request": "state"})["state"]
            if sum(d["playing"] for d in state["decks"]) == 2:          # mid-transition: the DJ takes over
                assert dj.request({"cmd": "cancel", "tag": "automix"})["ok"]
                break
            time.sleep(0.02)
        runner.join(timeout=30)
        state = dj.request({"request": "state"})["state"]
    finally:
        stop.set()
        player.join()
        client.close()
        dj.close()
        server.close()
    report = result["r"]
    assert report.stopped_by == "a DJ took over"
    assert [d["playing"] for d in state["decks"]] == [True, True]      # nothing the automix planned stops them
    assert state["cancels"] == {"automix": 1}


def test_ate_automix_renders_a_file_a_cue_sheet_and_a_report(crate, tmp_path):
    folder, _ = crate
    out = tmp_path / "set.flac"
    run = subprocess.run([sys.executable, "-m", "ate.cli", "automix", str(folder), "--render", str(out),
                          "--order", "Bravo,Alpha", "--json"], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    summary = json.loads(run.stdout.strip().splitlines()[-1])
    assert [t["title"] for t in summary["tracks"]] == ["Bravo two", "Alpha one"]
    import soundfile as sf
    info = sf.info(str(out))
    assert info.samplerate == SR and abs(info.frames / SR - summary["seconds"]) < 0.05   # the file is the mix
    assert out.with_suffix(".cue").exists() and json.loads(out.with_suffix(".json").read_text())["transitions"]
    bad = subprocess.run([sys.executable, "-m", "ate.cli", "automix", str(folder), "--order", "Nobody", "--plan"],
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and bad.stderr.strip().count("\n") == 0 and "no track matches 'Nobody'" in bad.stderr
    live = subprocess.run([sys.executable, "-m", "ate.cli", "automix", str(folder), "--plan", "--stretcher",
                           "rubberband"], capture_output=True, text=True, timeout=60)
    assert live.returncode == 2 and live.stderr.strip() == "error: --stretcher rubberband is for --render (it cannot " \
                                                          "keep up live)"


def test_a_render_is_redone_with_rubber_band_stretching_the_decks(crate, tmp_path):
    """The same session rendered with Rubber Band R3 in place of the engine's keylock: same plan and length,
    the same music (level envelopes alike), not the same samples."""
    import soundfile as sf

    from controllers.mixsession import render_mix

    folder, _ = crate
    tracks, _ = load_crate_tracks(folder)
    order = sorted(tracks, key=lambda t: t.title)[:2]
    renders = {}
    for stretcher in ("engine", "rubberband"):
        out = tmp_path / f"{stretcher}.wav"
        summary = render_mix(order, LIBRARY, folder, out, duration_s=16.0, progress=False, stretcher=stretcher)
        assert summary["stretcher"] == stretcher and json.loads(out.with_suffix(".json").read_text())["stretcher"]
        renders[stretcher] = (summary, sf.read(str(out), dtype="float32")[0])
    (a, x), (b, y) = renders["engine"], renders["rubberband"]
    assert a["tracks"] == b["tracks"] and len(x) == len(y) and a["seconds"] > 12.0
    assert np.abs(y).max() <= 10 ** (-1.0 / 20) + 1e-6 and np.abs(x - y).max() > 1e-2
    hop = SR // 10
    env_x = np.sqrt((x[:len(x) // hop * hop, 0].reshape(-1, hop) ** 2).mean(axis=1))
    env_y = np.sqrt((y[:len(y) // hop * hop, 0].reshape(-1, hop) ** 2).mean(axis=1))
    assert np.corrcoef(env_x, env_y)[0, 1] > 0.95
    assert abs(20 * np.log10(env_y.mean() / env_x.mean())) < 0.5


def test_the_tui_triggers_a_transition_on_the_next_phrase_and_takes_over_from_the_automix():
    import asyncio

    from test_tui import Rig
    from tui.app import AteApp

    rig = Rig(n_decks=2)
    seen: dict = {}

    async def until(pilot, predicate, what: str) -> None:
        deadline = time.monotonic() + 30.0
        while not predicate():
            assert time.monotonic() < deadline, f"gave up waiting for {what}"
            rig.engine.render(2048)                      # the audio callback, faster than real time
            if rig.engine.decks[1].playing and "beat" not in seen:
                seen["beat"] = rig.engine.decks[0].beat()
            await pilot.pause(0.005)

    try:
        rig.load(0, "synth:bpm=124,seed=51,bars=24,style=house")
        rig.load(1, "synth:bpm=124,seed=52,bars=24,style=house,tonic=4")
        rig.client.request({"cmd": "sync", "deck": 0, "on": True})
        rig.client.request({"cmd": "seek", "deck": 0, "beat": 26.0})     # two bars before a phrase start
        rig.client.request({"cmd": "play", "deck": 0})
        rig.engine.render(SR)

        async def drive() -> None:
            app = AteApp(rig.client, n_decks=2)
            async with app.run_test(size=(140, 44)) as pilot:
                await until(pilot, lambda: app.client.state is not None, "the state")
                await pilot.press("2", "g")
                await until(pilot, lambda: rig.engine.decks[1].playing, "deck 2 to come in")
                assert rig.engine.decks[0].playing                      # mixed, not cut
                await pilot.press("A")
                await until(pilot, lambda: rig.engine.cancels.get("automix") == 1, "the take-over")

        asyncio.run(drive())
        # Deck 2 came in on a phrase start of deck 1's track: without analysed phrases, every 8th downbeat.
        downbeats = [rig.engine.decks[0].beat(f) for f in rig.engine.decks[0].track.downbeats_frames]
        phrase_beats = np.array(downbeats[::8])
        assert np.min(np.abs(phrase_beats - seen["beat"])) < 0.05
        assert rig.engine.decks[1].synced
    finally:
        rig.close()
