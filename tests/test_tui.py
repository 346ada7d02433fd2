"""The Textual TUI against a real engine: keys pressed -> commands sent -> engine state -> what the widgets show.

Every test runs a real :class:`engine.core.Engine` behind a real
:class:`controllers.server.ProtocolServer` on loopback, and the app talks to it
through a real :class:`controllers.client.EngineClient`, exactly as ``ate tui``
does. No audio device: a background thread renders the engine in 256-frame
blocks (commands are applied at block boundaries), or the test renders on
demand. The snapshot tests stop rendering first, so every snapshot shows a
still engine.
"""

from __future__ import annotations

import asyncio
import re
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from controllers.client import EngineClient
from controllers.server import ProtocolServer
from engine.core import Engine
from prep.audio import content_hash, write_audio
from prep.crate import Crate, default_db_path
from prep.key import camelot
from prep.synth import TrackSpec, generate
from tui.app import KEYS, AteApp
from tui.browser import filter_tracks, format_duration, harmonic_keys, sort_tracks
from tui.waveform import TrackView, render_waveform
from tui.widgets import HelpScreen, loop_beats

pytestmark = pytest.mark.realtime     # waits on the UI and the engine in time: run alone

SR = 44100
TRACK_A = "synth:bpm=124,bars=8"
TRACK_B = "synth:bpm=128,bars=8,tonic=7,mode=major,seed=2"
SIZE = (140, 44)
WAIT_S = 10.0
"""Longest wait for the engine or the app to get somewhere (a deadline for the wait, not a speed test)."""


class Rig:
    """An engine served on loopback, a client, and an optional render thread standing in for the audio callback."""

    def __init__(self, n_decks: int = 4) -> None:
        self.engine = Engine(n_decks=n_decks)
        self.server = ProtocolServer(self.engine, endpoint="tcp://127.0.0.1:*", pub_endpoint="tcp://127.0.0.1:*",
                                     state_hz=30)
        self.client = EngineClient(self.server.endpoint, self.server.pub_endpoint)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def load(self, deck: int, track: str) -> None:
        assert self.client.request({"cmd": "load", "deck": deck, "track": track})["ok"]
        if self._thread is None:
            self.engine.render(512)           # the load is applied at the next block

    def start(self) -> None:
        def run() -> None:
            while not self._stop.is_set():
                self.engine.render(256)
                time.sleep(0.003)

        self._stop.clear()
        self._thread = threading.Thread(target=run, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
            self._thread = None

    def close(self) -> None:
        self.stop()
        self.client.close()
        self.server.close()


@pytest.fixture
def rig():
    r = Rig()
    yield r
    r.close()


def _write_crate(folder: Path) -> list[dict]:
    """A tiny real crate: three generated 4-bar tracks written as WAV, with their true grids as the analysis."""
    specs = [("Alpha", 124.0, 9, "minor", 1), ("Bravo", 128.0, 7, "major", 2), ("Charlie", 100.0, 2, "minor", 3)]
    rows = []
    with Crate(default_db_path(folder)) as crate:
        for title, bpm, tonic, mode, seed in specs:
            g = generate(TrackSpec(bpm=bpm, tonic=tonic, mode=mode, seed=seed, title=title,
                                   structure=[("intro", 2), ("verse", 2)]))
            path = folder / f"{title.lower()}.wav"
            write_audio(path, g.mix)
            code = camelot(tonic, mode)
            analysis = {"version": 1, "duration": len(g.mix) / SR, "bpm": bpm, "key": g.truth.key, "camelot": code,
                        "key_confidence": 1.0, "lufs": -12.0, "true_peak_dbtp": -1.0,
                        "beats": [float(b) for b in g.truth.beats], "downbeats": [float(b) for b in g.truth.downbeats]}
            h = content_hash(g.mix)
            crate.add_track(h, path, {"title": title}, analysis)
            rows.append({"title": title, "bpm": bpm, "camelot": code, "content_hash": h})
    return rows


@pytest.fixture(scope="module")
def crate_dir(tmp_path_factory) -> tuple[Path, list[dict]]:
    folder = tmp_path_factory.mktemp("tui") / "crate"     # a fixed name: the status line shows it
    folder.mkdir()
    return folder, _write_crate(folder)


async def _until(pilot, predicate, what: str, rig: Rig | None = None) -> None:
    """Wait for ``predicate``; with ``rig``, render the engine a block at a time meanwhile (the audio callback).

    Rendering on demand rather than in a thread keeps the process idle between
    key presses, which is what the pilot waits for after each key.
    """
    deadline = time.monotonic() + WAIT_S
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up waiting for {what}")
        if rig is not None:
            rig.engine.render(256)
        await pilot.pause(0.01)


def _text(app: AteApp, deck: int, part: str) -> str:
    return str(app.deck_views[deck].query_one(f".deck-{part}").render())


async def _ready(pilot, app: AteApp, decks: int) -> None:
    """Wait until the app shows the engine's state and has the waveforms of the first ``decks`` decks."""
    await _until(pilot, lambda: app.client.state is not None, "the first state")
    await _until(pilot, lambda: all(app.track_views.get(d) is not None for d in range(decks)), "the waveforms")


# --------------------------------------------------------------------------- pure functions

ROWS = [{"title": "b", "bpm": 128.0, "camelot": "9B", "key": "G major"},
        {"title": "A", "bpm": 124.0, "camelot": "8A", "key": "A minor"},
        {"title": "c", "bpm": None, "camelot": None, "key": None},
        {"title": "d", "bpm": 100.0, "camelot": "12A", "key": "C# minor"},
        {"title": "e", "bpm": 132.0, "camelot": "7A", "key": "D minor"}]


def test_sort_and_filter_are_plain_functions():
    assert [t["title"] for t in sort_tracks(ROWS, "bpm")] == ["d", "A", "b", "e", "c"]
    assert [t["title"] for t in sort_tracks(ROWS, "bpm", descending=True)] == ["e", "b", "A", "d", "c"]
    assert [t["title"] for t in sort_tracks(ROWS, "key")] == ["e", "A", "b", "d", "c"]
    assert [t["title"] for t in sort_tracks(ROWS, "title")] == ["A", "b", "c", "d", "e"]
    with pytest.raises(ValueError, match="unknown sort"):
        sort_tracks(ROWS, "lufs")
    assert [t["title"] for t in filter_tracks(ROWS, bpm=124.0)] == ["b", "A"]       # ±6 %: 116.6..131.4
    assert [t["title"] for t in filter_tracks(ROWS, camelot="8A")] == ["A", "e"]    # 8A 7A 9A 8B
    assert [t["title"] for t in filter_tracks(ROWS, "minor", bpm=124.0, camelot="8A")] == ["A"]
    assert filter_tracks(ROWS, camelot="not a key") == ROWS
    assert harmonic_keys("8A") == {"8A", "7A", "9A", "8B"} and harmonic_keys(None) is None
    assert format_duration(125.9) == "2:05" and format_duration(None) == "--:--"


def test_waveform_rows_markers_and_playhead():
    peaks = np.zeros((2, 500), np.float32)
    peaks[0, 200:] = 1.0                                  # drums full scale from 4 s on
    view = TrackView(title="t", seconds=10.0, stems=["drums", "bass"], peaks=peaks, rate_hz=50.0,
                     total=peaks.sum(0).clip(0, 1), dominant=peaks.argmax(0), beats_s=np.arange(0, 10, 0.5),
                     downbeats_s=np.arange(0, 10, 2.0), phrases_s=np.array([8.0]), cue_s=4.0)
    # 41 columns of 0.2 s: the playhead (4 s) is column 20.
    lines = render_waveform(view, 4.0, 41, rows=2, span_s=4.1, hot_cues_s=[5.0, None]).plain.split("\n")
    assert len(lines) == 3 and all(len(line) == 41 for line in lines)
    wave, marks = lines[1], lines[2]
    assert set(wave[:20]) == {" "} and set(wave[21:]) == {"█"}     # silent before 4 s, full after
    assert marks[20] == "▲"                                         # the playhead is the middle column
    assert marks[25] == "1" and marks[40] == "◆"                    # hot cue 1 at 5 s, the phrase at 8 s
    assert [i for i, ch in enumerate(marks) if ch == "┃"] == [0, 10, 30]   # downbeats at 0, 2, 6 s (4 s: ▲)
    assert marks.count("╷") == 11                                   # the other beats (5 s: hot cue 1)


def test_loop_length_in_beats_from_frames():
    deck = {"loop": [0.0, 4 * SR * 60 / 120.0], "track": {"bpm": 120.0}}
    assert loop_beats(deck) == 4.0
    assert loop_beats({"loop": None, "track": {"bpm": 120.0}}) is None


# --------------------------------------------------------------------------- the app on a real engine

def test_keys_send_commands_and_widgets_show_state(rig):
    rig.load(0, TRACK_A)
    engine = rig.engine

    async def scenario() -> None:
        app = AteApp(rig.client, n_decks=4)
        async with app.run_test(size=SIZE) as pilot:
            await _ready(pilot, app, 1)
            assert "124.00" in _text(app, 0, "info") and "8A" in _text(app, 0, "info")
            assert "synth:bpm=124" in _text(app, 0, "title")
            assert app.track_views[0].stems == ["drums", "bass", "vocals", "other"]

            await pilot.press("space")
            await _until(pilot, lambda: engine.decks[0].playing, "play", rig)
            await _until(pilot, lambda: "▶" in _text(app, 0, "title"), "the play symbol", rig)
            await pilot.press("s")
            await _until(pilot, lambda: engine.decks[0].synced, "sync on", rig)
            await _until(pilot, lambda: app.deck_state(0)["sync"] and "SYNC" in _text(app, 0, "flags"), "SYNC", rig)
            assert engine.decks[0].keylock                # on by default: k turns it off
            await pilot.press("k")
            await _until(pilot, lambda: not engine.decks[0].keylock, "keylock off", rig)
            await pilot.press("down", "down")             # two quick presses: two steps
            await _until(pilot, lambda: abs(engine.decks[0].params["volume"] - 0.9) < 1e-9, "volume 90 %", rig)
            await _until(pilot, lambda: " 90%" in _text(app, 0, "mixer"), "the volume shown", rig)
            await pilot.press("b")
            await _until(pilot, lambda: engine.decks[0].params["eq_low_db"] == -3.0, "EQ low -3 dB", rig)
            await pilot.press("F")
            await _until(pilot, lambda: abs(engine.decks[0].params["filter"] - 0.1) < 1e-9, "filter HP 0.1", rig)
            await pilot.press("l")
            await _until(pilot, lambda: engine.decks[0].loop_on, "loop on", rig)
            await _until(pilot, lambda: "LOOP 4" in _text(app, 0, "flags"), "LOOP 4 shown", rig)
            await pilot.press("right_square_bracket")
            await _until(pilot, lambda: "LOOP 8" in _text(app, 0, "flags"), "LOOP 8 shown", rig)
            await pilot.press("L")
            await _until(pilot, lambda: not engine.decks[0].loop_on, "loop exit", rig)
            await pilot.press("q")
            await _until(pilot, lambda: not np.isnan(engine.decks[0].hot_cues[0]), "hot cue 1 set", rig)
            await _until(pilot, lambda: "CUES 1·" in _text(app, 0, "flags"), "hot cue 1 shown", rig)
            await pilot.press("v", "m")                   # the second stem (bass) muted
            await _until(pilot, lambda: engine.decks[0].muted[1], "bass muted", rig)
            # A second press a second later, before the engine has shown the first
            # (nothing renders between them), steps from the value sent, not the stale one.
            await pilot.press("x")
            await asyncio.sleep(1.0)
            await pilot.press("x")
            await _until(pilot, lambda: abs(engine.params["crossfader"] - 0.2) < 1e-9, "crossfader at 0.2", rig)
            await pilot.press("2", "p")                   # deck 2 focused: PFL there
            await _until(pilot, lambda: engine.decks[1].pfl, "PFL on deck 2", rig)
            assert not engine.decks[0].pfl and app.deck_views[1].has_class("-selected")
            await pilot.press("1", "space")
            await _until(pilot, lambda: not engine.decks[0].playing, "pause", rig)
            assert app.status.error == ""

            # A refused command comes back as an error reply and shows in the status line.
            app.send({"cmd": "loop", "deck": 0, "beats": 3})
            await _until(pilot, lambda: "power of two" in app.status.error, "the error shown", rig)

    asyncio.run(scenario())


def test_help_lists_every_binding(rig):
    async def scenario() -> None:
        app = AteApp(rig.client, n_decks=2)
        async with app.run_test(size=SIZE) as pilot:
            await pilot.press("question_mark")
            assert isinstance(app.screen, HelpScreen)
            text = "\n".join(str(s.render()) for s in app.screen.query(".help-column"))
            numberless = re.sub(r"\d+(-\d+)?", "#", text)
            for _, binding in KEYS:
                assert re.sub(r"\d+", "#", binding.tooltip or binding.description) in numberless
            assert "q w e r t y u i" in text and "Hot cue 1-8" in text
            await pilot.press("escape")
            assert not isinstance(app.screen, HelpScreen)

    asyncio.run(scenario())


def test_browser_filters_sorts_and_loads_to_the_focused_deck(rig, crate_dir):
    folder, rows = crate_dir
    rig.load(0, TRACK_A)                                  # 124 BPM, 8A: the reference for the filters
    engine = rig.engine

    async def scenario() -> None:
        app = AteApp(rig.client, crate_dir=folder, n_decks=4)
        async with app.run_test(size=SIZE) as pilot:
            await _ready(pilot, app, 1)
            browser = app.browser
            assert [t["title"] for t in browser.shown] == ["Alpha", "Bravo", "Charlie"]
            await pilot.press("f3", "f3")                 # BPM, then reversed
            assert [t["title"] for t in browser.shown] == ["Bravo", "Alpha", "Charlie"]
            await pilot.press("f5")                       # 124 ± 6 %: Charlie (100) goes
            assert [t["title"] for t in browser.shown] == ["Bravo", "Alpha"]
            await pilot.press("f6")                       # harmonic with 8A: Alpha (8A) stays, Bravo (9B) goes
            assert [t["title"] for t in browser.shown] == ["Alpha"]
            await pilot.press("f5", "f6", "slash", *"char", "enter")
            assert [t["title"] for t in browser.shown] == ["Charlie"]
            await pilot.press("2")                        # typed into the table's deck focus: deck 2
            assert app.focused_deck == 1
            await pilot.press("enter")                    # the table has focus again: load Charlie on deck 2
            await _until(pilot, lambda: engine.decks[1].track is not None, "the load", rig)
            assert engine.decks[1].track.title == "Charlie"
            await _until(pilot, lambda: "Charlie" in _text(app, 1, "title") and "100.00" in _text(app, 1, "info"),
                         "the loaded track shown", rig)
            await pilot.press("tab")
            assert app.focused is None

    asyncio.run(scenario())


def test_browser_suggests_next_tracks_for_the_deck_track(rig, tmp_path):
    from prep.similarity import Suggester
    from prep.steps import run_steps
    from textual.widgets import DataTable

    folder = tmp_path / "crate"
    folder.mkdir()
    rows = _write_crate(folder)
    with Crate(default_db_path(folder)) as crate:
        assert run_steps(crate, ["embed"])["embed"] == 3          # the real prep step, on the real files
    alpha = rows[0]
    assert rig.client.request({"cmd": "load", "deck": 0, "track": alpha["content_hash"], "crate": str(folder)})["ok"]
    rig.engine.render(512)
    expected = Suggester(folder).for_track(alpha["content_hash"])
    assert sorted(s.title for s in expected) == ["Bravo", "Charlie"]

    async def scenario() -> None:
        app = AteApp(rig.client, crate_dir=folder, n_decks=4)
        async with app.run_test(size=SIZE) as pilot:
            await _ready(pilot, app, 1)
            browser = app.browser
            await _until(pilot, lambda: browser.reference_path is not None, "the deck's track as the reference")
            await pilot.press("f7")
            assert [t["title"] for t in browser.shown] == [s.title for s in expected]     # best first, no Alpha
            table = browser.query_one(DataTable)
            assert [str(c.label) for c in table.columns.values()] == ["Title", "BPM", "Cam", "Score", "Why"]
            first = table.get_row_at(0)
            assert first[0] == expected[0].title and first[-1] == expected[0].reason
            assert float(first[3]) == pytest.approx(expected[0].score, abs=0.006)
            assert "; 8A→" in first[-1] and "tempo" in first[-1]
            assert "suggested after Alpha" in str(browser.query_one("#browser-flags").render())
            await pilot.press("f7")                              # back to the whole crate, by title
            assert [t["title"] for t in browser.shown] == ["Alpha", "Bravo", "Charlie"]
            assert len(table.columns) == 5 and "Why" not in [str(c.label) for c in table.columns.values()]

    asyncio.run(scenario())


# --------------------------------------------------------------------------- snapshots

def _still_rig(rig: Rig) -> None:
    """Two paused decks with some state worth seeing, then no more rendering: the engine stands still."""
    rig.load(0, TRACK_A)
    rig.load(1, TRACK_B)
    for message in ({"cmd": "sync", "deck": 0, "on": True}, {"cmd": "keylock", "deck": 0, "on": False},
                    {"cmd": "set", "deck": 1, "param": "eq_low_db", "value": -80},
                    {"cmd": "set", "deck": 0, "param": "filter", "value": -0.3},
                    {"cmd": "mute", "deck": 1, "stem": "vocals", "on": True},
                    {"cmd": "beat_jump", "deck": 0, "beats": 8}, {"cmd": "hotcue_set", "deck": 0, "n": 1},
                    {"cmd": "loop", "deck": 0, "beats": 4}, {"cmd": "set", "param": "crossfader", "value": -0.4}):
        assert rig.engine.send(message)["ok"]
    rig.engine.render(512)


def _ready_before(app: AteApp, decks: int):
    async def run_before(pilot) -> None:
        await _ready(pilot, app, decks)
        await pilot.pause(0.1)

    return run_before


def test_snapshot_main_screen(rig, snap_compare):
    _still_rig(rig)
    app = AteApp(rig.client, n_decks=4)
    assert snap_compare(app, terminal_size=SIZE, run_before=_ready_before(app, 2))


def test_snapshot_help_screen(rig, snap_compare):
    app = AteApp(rig.client, n_decks=4)

    async def run_before(pilot) -> None:
        await _ready(pilot, app, 0)
        await pilot.press("question_mark")
        await pilot.pause(0.1)

    assert snap_compare(app, terminal_size=SIZE, run_before=run_before)


def test_snapshot_browser(rig, crate_dir, snap_compare):
    _still_rig(rig)
    app = AteApp(rig.client, crate_dir=crate_dir[0], n_decks=4)

    async def run_before(pilot) -> None:
        await _ready(pilot, app, 2)
        await pilot.press("tab", "f3", "f6")
        await pilot.pause(0.1)

    assert snap_compare(app, terminal_size=SIZE, run_before=run_before)
