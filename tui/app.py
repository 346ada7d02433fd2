"""The ATE terminal UI: a Textual app that is a client of the engine's protocol (docs/protocol.md).

The engine runs in another process; this app never waits for it:

- a timer (:data:`POLL_HZ`) calls :meth:`EngineClient.poll(0) <controllers.client.EngineClient.poll>`,
  which returns at once, and pushes the newest state snapshot into the
  widgets' reactive attributes. Textual redraws at its own pace, so a slow
  terminal draws fewer frames; the engine's audio is not touched by any of it;
- key presses turn into commands that go onto a queue; one sender thread
  posts them (:meth:`EngineClient.post`, no reply awaited), so the UI thread
  does not even wait for the client's lock while a track request is in
  flight. Refused commands come back in ``client.errors`` and are shown in the
  status line;
- when a deck's track changes, its waveform and beat grid are fetched once
  (``{"request": "track"}``) in a worker thread and cached.

Keys are listed once, in :data:`KEYS` (group, binding); the app's BINDINGS
and the help screen are both made from it, so the help cannot drift.
"""

from __future__ import annotations

import queue
import re
import threading
import time
from pathlib import Path

from textual import work
from textual.app import App, ComposeResult
from textual.binding import Binding
from textual.containers import Grid
from textual.reactive import reactive
from textual.widgets import DataTable, Footer, Input

from controllers.client import EngineClient
from engine.commands import LOOP_BEATS
from prep.stems import STEM_NAMES

from .browser import CrateBrowser, load_crate_tracks
from .waveform import TrackView
from .widgets import DeckView, HelpScreen, MasterStrip, StatusLine, loop_beats

__all__ = ["AteApp", "run_tui", "KEYS", "POLL_HZ"]

POLL_HZ = 25.0
"""How often the app reads the state stream, per second (the engine publishes 20-30 snapshots a second)."""
VOLUME_STEP = 0.05
EQ_STEP_DB = 3.0
EQ_FLOOR_DB = -24.0
"""Below this an EQ nudge goes straight to a kill (-80 dB), as a DJ mixer's kill switch would."""
FILTER_STEP = 0.1
XFADER_STEP = 0.1
STEM_STEP = 0.1
PITCH_STEP = 0.002
FX_MIX_STEP = 0.1
FX_CYCLE = ("", "echo", "reverb", "flanger", "filter")
"""What the effect key puts in slot 1, in turn (the built-in effects; "" empties the slot)."""
_PENDING_S = 3.0
"""How long a value the app sent is trusted over the state stream until a snapshot shows it.

The stream shows a command's effect one snapshot (or, on a loaded machine, a
few) later; a fixed short window let a second quick key press step from the
stale value. Once a snapshot shows the value it is dropped at once, so another
controller moving the same control is followed; the time limit only covers a
refused command (its value never shows)."""

def _key(group: str, key: str, action: str, help_text: str, footer: str = "", priority: bool = False
         ) -> tuple[str, Binding]:
    # The footer shows only the keys given a short ``footer`` label; the help screen shows every key's text.
    return group, Binding(key, action, footer or help_text, show=bool(footer), tooltip=help_text, priority=priority)


KEYS: list[tuple[str, Binding]] = [
    *[_key("Decks", str(d + 1), f"focus_deck({d})", f"Keys act on deck {d + 1}") for d in range(4)],
    _key("Transport", "space", "deck_cmd('play_pause')", "Play / pause", "Play"),
    _key("Transport", "c", "cue", "Cue: back to / set the cue point", "Cue"),
    _key("Transport", "C", "deck_cmd('cue_set')", "Set the cue point here"),
    _key("Transport", "s", "toggle('sync')", "Sync on / off", "Sync"),
    _key("Transport", "k", "toggle('keylock')", "Keylock on / off"),
    _key("Transport", "p", "toggle('pfl')", "Headphone cue (PFL) on / off"),
    _key("Transport", "left", "beat_jump(-1)", "Beat jump back 1"),
    _key("Transport", "right", "beat_jump(1)", "Beat jump forward 1"),
    _key("Transport", "shift+left", "beat_jump(-4)", "Beat jump back 4"),
    _key("Transport", "shift+right", "beat_jump(4)", "Beat jump forward 4"),
    _key("Transport", "comma", "pitch(-1)", "Pitch down 0.2 %"),
    _key("Transport", "full_stop", "pitch(1)", "Pitch up 0.2 %"),
    _key("Loops", "l", "loop", "Loop 4 beats", "Loop"),
    _key("Loops", "L", "deck_cmd('loop_exit')", "Exit the loop"),
    _key("Loops", "left_square_bracket", "loop_resize(0.5)", "Halve the loop"),
    _key("Loops", "right_square_bracket", "loop_resize(2)", "Double the loop"),
    *[_key("Hot cues", k, f"hotcue({n})", f"Hot cue {n} (sets it when empty)") for n, k in enumerate("qwertyui", 1)],
    *[_key("Hot cues", k, f"hotcue_clear({n})", f"Clear hot cue {n}") for n, k in enumerate("QWERTYUI", 1)],
    _key("Mixer", "up", "nudge('volume', 1)", "Volume up 5 %"),
    _key("Mixer", "down", "nudge('volume', -1)", "Volume down 5 %"),
    _key("Mixer", "z", "crossfader(-1)", "Crossfader towards A"),
    _key("Mixer", "x", "crossfader(1)", "Crossfader towards B"),
    _key("Mixer", "b", "nudge('eq_low_db', -1)", "EQ low -3 dB (below -24: kill)"),
    _key("Mixer", "B", "nudge('eq_low_db', 1)", "EQ low +3 dB"),
    _key("Mixer", "n", "nudge('eq_mid_db', -1)", "EQ mid -3 dB (below -24: kill)"),
    _key("Mixer", "N", "nudge('eq_mid_db', 1)", "EQ mid +3 dB"),
    _key("Mixer", "h", "nudge('eq_high_db', -1)", "EQ high -3 dB (below -24: kill)"),
    _key("Mixer", "H", "nudge('eq_high_db', 1)", "EQ high +3 dB"),
    _key("Mixer", "f", "nudge('filter', -1)", "Filter towards low-pass"),
    _key("Mixer", "F", "nudge('filter', 1)", "Filter towards high-pass"),
    _key("Mixer", "0", "reset_eq", "EQ and filter back to flat"),
    _key("Stems", "v", "next_stem", "Next stem (drums, bass, vocals, other)"),
    _key("Stems", "m", "mute_stem", "Mute / unmute the chosen stem", "Mute stem"),
    _key("Stems", "minus", "stem_gain(-1)", "Chosen stem's gain -0.1"),
    _key("Stems", "equals_sign", "stem_gain(1)", "Chosen stem's gain +0.1"),
    _key("Effects", "o", "fx_cycle", "Effect in slot 1: next of none, echo, reverb, flanger, filter"),
    _key("Effects", "O", "fx_toggle", "Effect slot 1 on / off (an echo or reverb rings out)"),
    _key("Effects", "j", "fx_mix(-1)", "Effect slot 1 mix -10 %"),
    _key("Effects", "J", "fx_mix(1)", "Effect slot 1 mix +10 %"),
    _key("Browser", "tab", "browser", "Crate browser / back to the decks", "Browser", priority=True),
    _key("Browser", "enter", "load_selected", "Load the selected track on this deck"),
    _key("Browser", "slash", "filter_text", "Type a filter (enter: back to list)", priority=True),
    _key("Browser", "escape", "leave_browser", "Back to the decks"),
    _key("Browser", "f2", "sort('title')", "Sort by title (again: reverse)"),
    _key("Browser", "f3", "sort('bpm')", "Sort by BPM (again: reverse)"),
    _key("Browser", "f4", "sort('key')", "Sort by key, round the Camelot wheel"),
    _key("Browser", "f5", "toggle_filter('bpm')", "Only BPMs within ±6 % of the focused deck"),
    _key("Browser", "f6", "toggle_filter('harmonic')", "Only keys that mix with the focused deck"),
    _key("Browser", "f7", "toggle_suggestions", "Suggested next tracks for the deck's track, with reasons"),
    _key("Mix", "g", "transition('phrase')", "Transition into this deck on the next phrase (bass swap)", "Mix in"),
    _key("Mix", "G", "transition('bar')", "Transition into this deck on the next bar"),
    _key("Mix", "A", "take_over", "Take over from the automix (its planned moves stop where they are)"),
    _key("App", "question_mark,f1", "help", "This help", "Help"),
    _key("App", "ctrl+q", "quit", "Quit", "Quit"),
]
"""Every key of the app: (help group, binding)."""


class AteApp(App):
    """Four decks, a master strip, a crate browser and a help screen, driven by an engine over ZeroMQ.

    Parameters
    ----------
    client : EngineClient
        A connected client (with a state stream: ``pub_endpoint`` set).
    crate_dir : str or Path, optional
        A prepared crate to browse and load from (``ate prep DIR``).
    n_decks : int
        Decks to show (the engine's, normally 4).
    """

    _started = False  # set in on_mount: watchers before it have nothing to update

    CSS_PATH = "ate.tcss"
    TITLE = "ATE"
    BINDINGS = [binding for _, binding in KEYS]

    focused_deck: reactive[int] = reactive(0)

    def __init__(self, client: EngineClient, crate_dir: str | Path | None = None, n_decks: int = 4) -> None:
        super().__init__()
        self.client = client
        self.crate_dir = Path(crate_dir).resolve() if crate_dir is not None else None
        self.n_decks = int(n_decks)
        self.track_views: dict[int, TrackView | None] = {}
        self._track_ident: dict[int, object] = {}
        self._last_state: dict | None = None
        self._last_error: dict | None = None
        self._pending: dict[tuple[int, str], tuple[float, float]] = {}
        self._outbox: queue.SimpleQueue = queue.SimpleQueue()
        self._sender: threading.Thread | None = None
        # Kept as attributes: ``self.query`` searches the active screen, which may be the help screen.
        self.deck_views = [DeckView(d) for d in range(self.n_decks)]
        self.master = MasterStrip(id="master")
        self.status = StatusLine(id="status")
        self.browser = (CrateBrowser(load_crate_tracks(self.crate_dir), id="browser")
                        if self.crate_dir is not None else None)

    # ------------------------------------------------------------------ layout

    def compose(self) -> ComposeResult:
        with Grid(id="decks", classes=f"decks-{self.n_decks}"):
            yield from self.deck_views
        yield self.master
        if self.browser is not None:
            yield self.browser
        yield self.status
        yield Footer()

    def on_mount(self) -> None:
        self._started = True
        self._sender = threading.Thread(target=self._send_loop, name="ate-tui-sender", daemon=True)
        self._sender.start()
        self.watch_focused_deck(self.focused_deck)
        self._update_status()
        self.set_interval(1.0 / POLL_HZ, self._tick)

    def on_unmount(self) -> None:
        self._outbox.put(None)
        if self._sender is not None:
            self._sender.join(timeout=1.0)

    # ------------------------------------------------------------------ engine side

    def _send_loop(self) -> None:
        # The only place that posts: commands keep their order, and the UI thread never takes the client's lock.
        while True:
            message = self._outbox.get()
            if message is None:
                return
            try:
                self.client.post(message)
            except Exception as err:  # noqa: BLE001 -- a closed client must not kill the UI
                self.client.errors.append({"ok": False, "error": str(err)})

    def send(self, message: dict) -> None:
        """Queue a command for the engine (returns at once)."""
        self._outbox.put(message)

    def _tick(self) -> None:
        try:
            self.client.poll(0)
        except Exception as err:  # noqa: BLE001
            self.status.error = str(err)
            return
        last = self.client.errors[-1] if self.client.errors else None
        if last is not None and last is not self._last_error:
            self._last_error = last
            self.status.error = str(last.get("error", ""))
        state = self.client.state
        if state is None or state is self._last_state:
            return
        self._last_state = state
        self._confirm_pending(state)
        self._show(state)

    def _confirm_pending(self, state: dict) -> None:
        """Forget the values the app sent that ``state`` shows (the engine has them now)."""
        decks = state.get("decks") or []
        for key, (value, _) in list(self._pending.items()):
            d, param = key
            if d < 0:
                shown = (state.get("params") or {}).get(param)
            elif d >= len(decks):
                continue
            elif param == "fx0":
                name = ((decks[d].get("fx") or [{}])[0]).get("effect", "")
                shown = float(FX_CYCLE.index(name)) if name in FX_CYCLE else None
            elif param == "fx0.mix":
                shown = (((decks[d].get("fx") or [{}])[0]).get("params") or {}).get("mix")
            else:
                shown = (decks[d].get("params") or {}).get(param)
            if shown is not None and abs(float(shown) - value) < 1e-6:
                del self._pending[key]

    def _show(self, state: dict) -> None:
        decks = state.get("decks") or []
        meters = state.get("meters") or []
        for view in self.deck_views:
            if view.index < len(decks):
                deck = decks[view.index]
                view.deck = deck
                view.level = float(meters[view.index]) if view.index < len(meters) else 0.0
                self._check_track(view.index, deck)
        self.master.state = state
        self._update_browser_reference()
        self._update_status()

    def _check_track(self, d: int, deck: dict) -> None:
        track = deck.get("track")
        ident = (track.get("title"), track.get("path"), track.get("frames")) if track else None
        if ident == self._track_ident.get(d, ()):
            return
        self._track_ident[d] = ident
        if ident is None:
            self._set_view(d, ident, None)
        else:
            self.fetch_track(d, ident)

    @work(thread=True, group="tracks")
    def fetch_track(self, d: int, ident: tuple) -> None:
        """Fetch a deck's waveform and grid once per load, off the UI thread."""
        try:
            reply = self.client.request({"request": "track", "deck": d}, timeout_s=10.0)
        except Exception as err:  # noqa: BLE001
            self.call_from_thread(setattr, self.status, "error", f"deck {d + 1}: {err}")
            return
        if not reply.get("ok"):
            self.call_from_thread(setattr, self.status, "error", str(reply.get("error")))
            return
        track = reply.get("track")
        view = TrackView.from_reply(track) if track else None
        self.call_from_thread(self._set_view, d, ident, view)

    def _set_view(self, d: int, ident: object, view: TrackView | None) -> None:
        if self._track_ident.get(d) != ident:
            return          # another track was loaded while this one was on its way
        self.track_views[d] = view
        self.deck_views[d].view = view

    # ------------------------------------------------------------------ state helpers

    def deck_state(self, d: int | None = None) -> dict:
        """The latest state of deck ``d`` (default: the focused one); {} before the first snapshot."""
        d = self.focused_deck if d is None else d
        decks = (self.client.state or {}).get("decks") or []
        return decks[d] if 0 <= d < len(decks) else {}

    def _value(self, d: int, param: str, default: float) -> float:
        # A value sent a moment ago wins over the stream, which shows it only a snapshot later:
        # two quick presses then make two steps, not one.
        pending = self._pending.get((d, param))
        if pending is not None and time.monotonic() - pending[1] < _PENDING_S:
            return pending[0]
        if d < 0:
            return float(((self.client.state or {}).get("params") or {}).get(param, default))
        return float((self.deck_state(d).get("params") or {}).get(param, default))

    def _set(self, d: int, param: str, value: float) -> None:
        self._pending[(d, param)] = (value, time.monotonic())
        message = {"cmd": "set", "param": param, "value": value}
        if d >= 0:
            message["deck"] = d
        self.send(message)

    def _update_status(self) -> None:
        status = self.status
        parts = [f"deck {self.focused_deck + 1}"]
        stem = STEM_NAMES[self.deck_views[self.focused_deck].stem]
        parts.append(f"stem {stem}")
        parts.append("connected" if self.client.state is not None else "waiting for the engine's state")
        if self.crate_dir is not None:
            parts.append(f"crate {self.crate_dir.name}")
        parts.append("? for keys")
        status.message = " │ ".join(parts)

    def _update_browser_reference(self) -> None:
        browser = self.browser
        if browser is None:
            return
        deck = self.deck_state()
        if not deck.get("track"):
            # Nothing on the focused deck: compare with the deck that is playing.
            deck = next((x for x in (self.client.state or {}).get("decks") or [] if x.get("playing")), deck)
        track = deck.get("track") or {}
        browser.reference_bpm = deck.get("bpm") or track.get("bpm")
        browser.reference_camelot = track.get("camelot") or None
        browser.reference_path = track.get("path") or None

    def watch_focused_deck(self, d: int) -> None:
        for view in self.deck_views:
            view.selected = view.index == d
        if self._started:
            self._update_browser_reference()
            self._update_status()

    # ------------------------------------------------------------------ actions: decks

    def _deck_cmd(self, name: str, **args) -> None:
        self.send({"cmd": name, "deck": self.focused_deck, **args})

    def action_focus_deck(self, d: int) -> None:
        if d < self.n_decks:
            self.focused_deck = d

    def action_deck_cmd(self, name: str) -> None:
        self._deck_cmd(name)

    def action_cue(self) -> None:
        # A terminal reports no key release: press and release at once (sets or returns to the cue).
        self._deck_cmd("cue_press")
        self._deck_cmd("cue_release")

    def action_toggle(self, flag: str) -> None:
        self._deck_cmd(flag, on=not bool(self.deck_state().get(flag)))

    def action_beat_jump(self, beats: float) -> None:
        self._deck_cmd("beat_jump", beats=float(beats))

    def action_pitch(self, direction: int) -> None:
        d = self.focused_deck
        deck = self.deck_state()
        limit = float(deck.get("pitch_range") or 0.08)
        value = self._value(d, "pitch", 0.0) + direction * PITCH_STEP
        self._set(d, "pitch", round(min(limit, max(-limit, value)), 4))

    def action_loop(self, beats: float = 4.0) -> None:
        self._deck_cmd("loop", beats=float(beats))

    def action_loop_resize(self, factor: float) -> None:
        current = loop_beats(self.deck_state()) or 4.0
        beats = min(LOOP_BEATS[-1], max(LOOP_BEATS[0], current * float(factor)))
        self._deck_cmd("loop", beats=beats)

    def action_hotcue(self, n: int) -> None:
        self._deck_cmd("hotcue", n=int(n))

    def action_hotcue_clear(self, n: int) -> None:
        self._deck_cmd("hotcue_clear", n=int(n))

    # ------------------------------------------------------------------ actions: mixer and stems

    def action_nudge(self, param: str, direction: int) -> None:
        d = self.focused_deck
        if param == "volume":
            value = min(1.0, max(0.0, self._value(d, param, 1.0) + direction * VOLUME_STEP))
        elif param == "filter":
            value = min(1.0, max(-1.0, self._value(d, param, 0.0) + direction * FILTER_STEP))
        else:
            db = self._value(d, param, 0.0)
            if direction < 0:
                value = -80.0 if db <= EQ_FLOOR_DB + 1e-9 else max(EQ_FLOOR_DB, db - EQ_STEP_DB)
            else:
                value = EQ_FLOOR_DB if db < EQ_FLOOR_DB else min(6.0, db + EQ_STEP_DB)
        self._set(d, param, round(value, 4))

    def action_reset_eq(self) -> None:
        for param in ("eq_low_db", "eq_mid_db", "eq_high_db", "filter"):
            self._set(self.focused_deck, param, 0.0)

    def action_crossfader(self, direction: int) -> None:
        value = min(1.0, max(-1.0, self._value(-1, "crossfader", 0.0) + direction * XFADER_STEP))
        self._set(-1, "crossfader", round(value, 4))

    def action_next_stem(self) -> None:
        view = self.deck_views[self.focused_deck]
        view.stem = (view.stem + 1) % len(STEM_NAMES)
        self._update_status()

    def action_mute_stem(self) -> None:
        stem = STEM_NAMES[self.deck_views[self.focused_deck].stem]
        self._deck_cmd("mute", stem=stem, on=stem not in (self.deck_state().get("muted") or []))

    def action_stem_gain(self, direction: int) -> None:
        d = self.focused_deck
        param = f"stem.{STEM_NAMES[self.deck_views[d].stem]}"
        self._set(d, param, round(min(2.0, max(0.0, self._value(d, param, 1.0) + direction * STEM_STEP)), 4))

    # ------------------------------------------------------------------ actions: effects

    def _fx_slot(self, d: int, slot: int = 0) -> dict:
        slots = self.deck_state(d).get("fx") or []
        return slots[slot] if slot < len(slots) else {}

    def action_fx_cycle(self) -> None:
        d = self.focused_deck
        pending = self._pending.get((d, "fx0"))
        if pending is not None and time.monotonic() - pending[1] < _PENDING_S:
            name = FX_CYCLE[int(pending[0])]
        else:
            name = self._fx_slot(d).get("effect", "")
        i = (FX_CYCLE.index(name) + 1) % len(FX_CYCLE) if name in FX_CYCLE else 0
        self._pending[(d, "fx0")] = (float(i), time.monotonic())
        self._pending.pop((d, "fx0.mix"), None)          # a new effect starts at its own default mix
        self._deck_cmd("fx", slot=0, effect=FX_CYCLE[i])

    def action_fx_toggle(self) -> None:
        self._deck_cmd("fx_on", slot=0, on=not bool(self._fx_slot(self.focused_deck).get("on", True)))

    def action_fx_mix(self, direction: int) -> None:
        d = self.focused_deck
        slot = self._fx_slot(d)
        pending = self._pending.get((d, "fx0.mix"))
        if pending is not None and time.monotonic() - pending[1] < _PENDING_S:
            mix = pending[0]
        elif slot.get("effect"):
            mix = float((slot.get("params") or {}).get("mix", 0.0))
        else:
            self.status.error = "no effect in slot 1 (o puts one there)"
            return
        self._set(d, "fx0.mix", round(min(1.0, max(0.0, mix + direction * FX_MIX_STEP)), 4))

    # ------------------------------------------------------------------ actions: browser, help

    def action_browser(self) -> None:
        browser = self.browser
        if browser is None:
            self.status.error = "no crate: start with --crate DIR"
            return
        table = browser.query_one(DataTable)
        if self.focused is table:
            self.set_focus(None)
        else:
            table.focus()

    def action_leave_browser(self) -> None:
        self.set_focus(None)

    def action_filter_text(self) -> None:
        browser = self.browser
        if browser is not None:
            browser.query_one(Input).focus()

    def action_sort(self, by: str) -> None:
        browser = self.browser
        if browser is not None:
            browser.sort(by)

    def action_toggle_filter(self, which: str) -> None:
        browser = self.browser
        if browser is not None:
            if which == "bpm":
                browser.bpm_filter = not browser.bpm_filter
            else:
                browser.harmonic_filter = not browser.harmonic_filter

    def action_transition(self, start: str) -> None:
        """The default transition into the focused deck from the one playing (the engine picks it: the sync
        leader first), on the next phrase or bar."""
        self.send({"cmd": "transition", "to_deck": self.focused_deck, "start": start, "tag": "transition"})
        self.status.message = f"mixing into deck {self.focused_deck + 1} on the next {start}"

    def action_take_over(self) -> None:
        self.send({"cmd": "cancel", "tag": "automix"})

    def action_toggle_suggestions(self) -> None:
        if self.browser is not None:
            self.browser.toggle_suggestions(self.crate_dir)

    def action_load_selected(self) -> None:
        browser = self.browser
        track = browser.selected_track() if browser is not None else None
        if track is not None:
            self.load_track(track)

    def on_crate_browser_load_requested(self, event: CrateBrowser.LoadRequested) -> None:
        self.load_track(event.track)

    def load_track(self, track: dict, deck: int | None = None) -> None:
        """Load a crate row onto ``deck`` (default: the focused deck), by its content hash."""
        d = self.focused_deck if deck is None else deck
        # The content hash names the track whatever the engine's working folder is.
        self.send({"cmd": "load", "deck": d, "track": track["content_hash"], "crate": str(self.crate_dir)})
        self.status.message = f"loading {track.get('title')} on deck {d + 1}"

    def help_rows(self) -> list[tuple[str, str, str]]:
        """(group, keys, text) for every binding, in :data:`KEYS` order.

        Neighbouring keys whose texts differ only in a number (hot cues 1-8,
        decks 1-4) share one row, so the whole list fits one screen.
        """
        rows: list[tuple[str, str, str, str, list[str]]] = []
        for group, binding in KEYS:
            keys = " / ".join(self.get_key_display(Binding(k.strip(), binding.action))
                              for k in binding.key.split(","))
            text = binding.tooltip or binding.description
            template = re.sub(r"\d+", "#", text)
            numbers = re.findall(r"\d+", text)
            if rows and rows[-1][0] == group and rows[-1][3] == template and len(numbers) == 1:
                g, k, t, _, nums = rows[-1]
                rows[-1] = (g, f"{k} {keys}", t, template, nums + numbers)
            else:
                rows.append((group, keys, text, template, numbers if len(numbers) == 1 else []))
        out = []
        for group, keys, text, template, numbers in rows:
            if len(numbers) > 1:
                text = template.replace("#", f"{numbers[0]}-{numbers[-1]}")
            out.append((group, keys, text))
        return out

    def action_help(self) -> None:
        if not isinstance(self.screen, HelpScreen):
            self.push_screen(HelpScreen(self.help_rows()))


def run_tui(client: EngineClient, crate_dir: str | Path | None = None, n_decks: int = 4) -> None:
    """Run the TUI in this terminal until the person quits (ctrl+q).

    Parameters
    ----------
    client : EngineClient
        Connected to the engine's command and state endpoints.
    crate_dir : str or Path, optional
        A prepared crate for the browser.
    n_decks : int
        Decks the engine has.
    """
    AteApp(client, crate_dir=crate_dir, n_decks=n_decks).run()
