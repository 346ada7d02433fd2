"""The TUI's small widgets: a deck, a level meter, the master strip, the status line and the help screen.

Each widget holds the slice of the engine's state it shows in reactive
attributes; the app assigns them from each new state snapshot and Textual
redraws only what changed. The text of every line comes from a plain
function of the deck's state dict (``format_*``), so what a deck shows can be
checked without a terminal.
"""

from __future__ import annotations

import math

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.css.query import NoMatches
from textual.reactive import reactive
from textual.screen import ModalScreen
from textual.widget import Widget
from textual.widgets import Static

from prep.stems import STEM_NAMES

from .waveform import STEM_COLOURS, TrackView, Waveform

__all__ = ["DeckView", "LevelMeter", "MasterStrip", "StatusLine", "HelpScreen", "format_time", "loop_beats",
           "format_title", "format_info", "format_stems", "format_mixer", "format_flags", "format_fx", "deck_label",
           "peak_db"]

SAMPLE_RATE = 44100
_STEM_SHORT = {"drums": "DRM", "bass": "BAS", "vocals": "VOC", "other": "OTH"}


def deck_label(index: int) -> str:
    """Decks are numbered from 1 on screen (the keys 1-4), from 0 in the protocol."""
    return str(index + 1)


def format_time(seconds: float | None) -> str:
    """``m:ss.d`` (``-`` prefix kept for remaining time)."""
    if seconds is None or not math.isfinite(seconds):
        return "-:--.-"
    sign = "-" if seconds < 0 else ""
    s = abs(seconds)
    return f"{sign}{int(s // 60)}:{s % 60:04.1f}"


def peak_db(level: float) -> float:
    """A linear peak as dBFS (-inf for silence)."""
    return 20.0 * math.log10(level) if level > 0 else -math.inf


def loop_beats(deck: dict) -> float | None:
    """Length of the deck's active loop in beats (rounded to a power of two), or None when no loop is on.

    The state gives the loop in track frames; the track's own BPM turns that into beats.
    """
    loop = deck.get("loop")
    track = deck.get("track") or {}
    bpm = track.get("bpm")
    if not loop or not bpm:
        return None
    beats = (loop[1] - loop[0]) / SAMPLE_RATE * float(bpm) / 60.0
    if beats <= 0:
        return None
    return 2.0 ** round(math.log2(beats))


def _beats_text(beats: float) -> str:
    return f"1/{round(1 / beats)}" if beats < 1 else f"{beats:g}"


def format_title(deck: dict) -> Text:
    """``1 ▶ Title`` with the playing state."""
    i = deck.get("deck", 0)
    track = deck.get("track") or {}
    out = Text(no_wrap=True, overflow="ellipsis")
    out.append(f" {deck_label(i)} ", "bold black on #61afef")
    if deck.get("playing"):
        out.append(" ▶ ", "bold #98c379")
    elif deck.get("ended"):
        out.append(" ■ ", "bold #e06c75")
    else:
        out.append(" ‖ ", "bold #e5c07b")
    out.append(track.get("title") or "(empty — tab to the browser, enter to load)",
               "bold" if track else "dim italic")
    return out


def format_info(deck: dict) -> Text:
    """BPM (and pitch %), key and Camelot, elapsed and remaining time, beat."""
    out = Text(no_wrap=True, overflow="ellipsis")
    track = deck.get("track")
    if not track:
        out.append("---.-- BPM", "dim")
        return out
    bpm = deck.get("bpm") or track.get("bpm") or 0.0
    pitch = float(deck.get("pitch") or 0.0)
    out.append(f"{bpm:6.2f}", "bold #e5c07b")
    out.append(" BPM ", "dim")
    out.append(f"{pitch * 100:+.1f}%", "#e06c75" if abs(pitch) > 1e-9 else "dim")
    out.append(f"/±{float(deck.get('pitch_range') or 0.08) * 100:.0f}", "dim")
    out.append(" │ ", "dim")
    out.append(str(track.get("key") or "?"), "bold")
    out.append(" ")
    out.append(str(track.get("camelot") or "--"), "bold #c678dd")
    pos = float(deck.get("position_s") or 0.0)
    length = float(track.get("seconds") or 0.0)
    out.append(" │ ", "dim")
    out.append(format_time(pos), "bold")
    out.append(" / ", "dim")
    out.append(format_time(-(max(0.0, length - pos))), "#56b6c2")
    beat = deck.get("beat")
    if beat is not None:
        out.append(" │ ", "dim")
        out.append(f"bar {int(beat // 4) + 1}.{int(beat % 4) + 1}", "dim")
    return out


def _bar(fraction: float, cells: int, colour: str) -> Text:
    fraction = min(1.0, max(0.0, fraction))
    full = fraction * cells
    whole = int(full)
    part = int(round((full - whole) * 8))
    out = Text()
    out.append("█" * whole, colour)
    if whole < cells:
        out.append(" ▏▎▍▌▋▊▉█"[part] if part else " ", colour)
        out.append(" " * (cells - whole - 1))
    return Text.assemble(("▕", "dim"), out, ("▏", "dim"))


def format_stems(deck: dict, selected_stem: int = -1) -> Text:
    """One lane per stem: gain bar (0..2), muted / soloed flags; the stem that ``m``/``M`` act on is marked."""
    params = deck.get("params") or {}
    muted = set(deck.get("muted") or [])
    soloed = set(deck.get("soloed") or [])
    out = Text(no_wrap=True, overflow="ellipsis")
    for i, name in enumerate(STEM_NAMES):
        gain = float(params.get(f"stem.{name}", 1.0))
        off = name in muted
        label = _STEM_SHORT[name]
        style = "bold reverse" if i == selected_stem else "bold"
        out.append(label, f"{style} {STEM_COLOURS[name]}" if not off else f"{style} #5c6370 strike")
        out.append_text(_bar(gain / 2.0, 4, "#5c6370" if off else STEM_COLOURS[name]))
        out.append("M" if off else ("S" if name in soloed else " "), "bold #e06c75" if off else "bold #e5c07b")
        out.append(" ")
    return out


def _eq_text(db: float) -> str:
    return "kill" if db <= -80 or not math.isfinite(db) else f"{db:+.0f}"


def format_mixer(deck: dict) -> Text:
    """EQ low/mid/high (dB), filter (-1 low-pass .. +1 high-pass), volume, trim."""
    p = deck.get("params") or {}
    out = Text(no_wrap=True, overflow="ellipsis")
    out.append("EQ ", "dim")
    for band, name in (("L", "eq_low_db"), ("M", "eq_mid_db"), ("H", "eq_high_db")):
        db = float(p.get(name, 0.0))
        out.append(band, "dim")
        out.append(f"{_eq_text(db):>5} ", "bold #e06c75" if db <= -80 else ("bold" if abs(db) > 1e-9 else ""))
    f = float(p.get("filter", 0.0))
    out.append("FLT ", "dim")
    out.append("off " if abs(f) < 1e-9 else (f"LP{-f:.1f}" if f < 0 else f"HP{f:.1f}"),
               "" if abs(f) < 1e-9 else "bold #56b6c2")
    out.append(" VOL", "dim")
    out.append_text(_bar(float(p.get("volume", 1.0)), 6, "#98c379"))
    out.append(f"{float(p.get('volume', 1.0)) * 100:3.0f}%")
    return out


def format_flags(deck: dict) -> Text:
    """SYNC, KEYLOCK, PFL, the loop (on + length in beats) and the 8 hot cue slots."""
    out = Text(no_wrap=True, overflow="ellipsis")
    for flag, label in (("sync", "SYNC"), ("keylock", "KEY"), ("pfl", "PFL")):
        on = bool(deck.get(flag))
        out.append(f" {label} ", "bold black on #98c379" if on else "#5c6370")
        out.append(" ")
    beats = loop_beats(deck)
    out.append(f" LOOP {_beats_text(beats)} " if beats else " LOOP ", "bold black on #61afef" if beats else "#5c6370")
    out.append("  CUES ", "dim")
    for i, cue in enumerate(deck.get("hot_cues_s") or [None] * 8):
        out.append(str(i + 1) if cue is not None else "·", "bold black on #98c379" if cue is not None else "#5c6370")
    out.append_text(format_fx(deck))
    return out


def format_fx(deck: dict) -> Text:
    """The deck's effects, ``  FX 1:echo 50% 2:reve~``: slot (from 1), name, mix; dim when the slot is off,
    ``~`` while an effect taken out still rings. Nothing when no slot holds an effect."""
    out = Text(no_wrap=True, overflow="ellipsis")
    slots = [s for s in deck.get("fx") or [] if s.get("effect") or s.get("ringing")]
    if not slots:
        return out
    out.append("  FX", "dim")
    for s in slots:
        name = s.get("effect") or ""
        on = bool(s.get("on", True))
        out.append(f" {int(s.get('slot', 0)) + 1}:", "dim")
        if name:
            mix = float((s.get("params") or {}).get("mix", 0.0))
            out.append(f"{name[:4]} {mix * 100:.0f}%", "bold #c678dd" if on else "#5c6370")
        if s.get("ringing") and not (name and on):
            out.append("~", "#c678dd")
    return out


class LevelMeter(Widget):
    """A horizontal peak meter, -60..0 dBFS, green / yellow above -12 / red above -3."""

    level: reactive[float] = reactive(0.0)

    def __init__(self, label: str = "", **kwargs) -> None:
        super().__init__(**kwargs)
        self.label = label

    def render(self) -> Text:
        db = peak_db(self.level)
        cells = max(1, self.size.width - len(self.label) - 7)
        frac = 0.0 if not math.isfinite(db) else min(1.0, max(0.0, (db + 60.0) / 60.0))
        n = int(round(frac * cells))
        out = Text(no_wrap=True)
        out.append(self.label, "dim")
        for c in range(cells):
            lvl = -60.0 + 60.0 * (c + 1) / cells
            colour = "#e06c75" if lvl > -3 else ("#e5c07b" if lvl > -12 else "#98c379")
            out.append("▮" if c < n else "·", colour if c < n else "#3e4451")
        out.append(f"{db:5.1f}" if math.isfinite(db) else "  -∞ ", "dim")
        out.append("dB", "dim")
        return out


class DeckView(Vertical):
    """One deck: title, tempo/key/time, waveform, stem lanes, mixer, flags and hot cues, meter.

    Attributes
    ----------
    deck : dict
        The deck's entry of the engine's state (``Deck.summary()``).
    view : TrackView or None
        The deck's track as fetched once per load (waveform and grid).
    selected : bool
        Whether the keys act on this deck.
    stem : int
        The stem that the mute and stem-gain keys act on (index into STEM_NAMES).
    """

    _started = False  # set in on_mount: watchers before it have nothing to update

    deck: reactive[dict] = reactive(dict)
    view: reactive[TrackView | None] = reactive(None, always_update=True)
    selected: reactive[bool] = reactive(False)
    stem: reactive[int] = reactive(0)
    level: reactive[float] = reactive(0.0)

    def __init__(self, index: int, **kwargs) -> None:
        super().__init__(id=f"deck-{index}", classes="deck", **kwargs)
        self.index = index

    def compose(self) -> ComposeResult:
        yield Static(classes="deck-title")
        yield Static(classes="deck-info")
        yield Waveform(classes="deck-wave")
        yield Static(classes="deck-stems")
        yield Static(classes="deck-mixer")
        yield Static(classes="deck-flags")
        yield LevelMeter("lvl ", classes="deck-meter")

    def on_mount(self) -> None:
        self._started = True
        self.border_title = f"Deck {deck_label(self.index)}"
        self._redraw()

    def _redraw(self) -> None:
        if not self._started:
            return
        try:
            self._draw()
        except NoMatches:
            pass        # the app is closing and the parts are already gone

    def _draw(self) -> None:
        d = self.deck or {"deck": self.index}
        self.query_one(".deck-title", Static).update(format_title(d))
        self.query_one(".deck-info", Static).update(format_info(d))
        self.query_one(".deck-stems", Static).update(format_stems(d, self.stem if self.selected else -1))
        self.query_one(".deck-mixer", Static).update(format_mixer(d))
        self.query_one(".deck-flags", Static).update(format_flags(d))
        wave = self.query_one(Waveform)
        wave.position_s = float(d.get("position_s") or 0.0)
        wave.hot_cues_s = tuple(d.get("hot_cues_s") or ())
        loop = d.get("loop")
        wave.loop_s = (loop[0] / SAMPLE_RATE, loop[1] / SAMPLE_RATE) if loop else None

    def watch_deck(self) -> None:
        self._redraw()

    def watch_stem(self) -> None:
        self._redraw()

    def watch_selected(self, selected: bool) -> None:
        self.set_class(selected, "-selected")
        self._redraw()

    def watch_view(self, view: TrackView | None) -> None:
        for wave in self.query(Waveform):
            wave.view = view

    def watch_level(self, level: float) -> None:
        for meter in self.query(LevelMeter):
            meter.level = level


class MasterStrip(Horizontal):
    """Master tempo and leader, crossfader, limiter gain reduction, master and headphone meters."""

    _started = False  # set in on_mount: watchers before it have nothing to update

    state: reactive[dict] = reactive(dict)

    def compose(self) -> ComposeResult:
        yield Static(id="master-info")
        yield LevelMeter("MST ", id="master-meter")
        yield LevelMeter("PHN ", id="phones-meter")

    def on_mount(self) -> None:
        self._started = True
        self.border_title = "Master"
        self.watch_state()

    def watch_state(self) -> None:
        if not self._started:
            return
        try:
            self._draw()
        except NoMatches:
            pass        # the app is closing and the parts are already gone

    def _draw(self) -> None:
        s = self.state or {}
        params = s.get("params") or {}
        xf = float(params.get("crossfader", 0.0))
        cells = 17
        pos = int(round((xf + 1.0) / 2.0 * (cells - 1)))
        out = Text(no_wrap=True, overflow="ellipsis")
        out.append("BPM ", "dim")
        out.append(f"{float(s.get('master_bpm') or 0.0):6.2f}", "bold #e5c07b")
        leader = s.get("leader", -1)
        out.append(f" lead {deck_label(leader) if leader is not None and leader >= 0 else '-'}", "dim")
        out.append("  XF A", "dim")
        track = "".join("█" if c == pos else ("┼" if c == cells // 2 else "─") for c in range(cells))
        out.append(track, "#61afef")
        out.append(f"B {xf:+.2f}", "dim")
        lim = float(s.get("limiter_gain_db") or 0.0)
        out.append("  LIM ", "dim")
        out.append(f"-{lim:.1f} dB", "bold #e06c75" if lim > 0.05 else "dim")
        out.append(f"  Q {'on' if s.get('quantize') else 'off'}", "dim")
        self.query_one("#master-info", Static).update(out)
        meters = s.get("meters") or []
        n = len(s.get("decks") or [])
        if len(meters) >= n + 2:
            self.query_one("#master-meter", LevelMeter).level = float(meters[n])
            self.query_one("#phones-meter", LevelMeter).level = float(meters[n + 1])


class StatusLine(Static):
    """The focused deck, the connection and the latest error reply from the engine."""

    message: reactive[str] = reactive("")
    error: reactive[str] = reactive("")

    def render(self) -> Text:
        out = Text(no_wrap=True, overflow="ellipsis")
        out.append(self.message, "dim")
        if self.error:
            out.append("  ✗ ", "bold #e06c75")
            out.append(self.error, "#e06c75")
        return out


class HelpScreen(ModalScreen[None]):
    """Every key of the app, generated from the bindings so that it cannot drift from them."""

    BINDINGS = [Binding("escape,question_mark,f1,q", "dismiss", "Close help")]

    def __init__(self, rows: list[tuple[str, str, str]]) -> None:
        super().__init__()
        self.rows = rows

    def compose(self) -> ComposeResult:
        groups: list[tuple[str, list[tuple[str, str]]]] = []
        for grp, key, description in self.rows:
            if not groups or groups[-1][0] != grp:
                groups.append((grp, []))
            groups[-1][1].append((key, description))
        # Two columns, the groups split where about half of the lines are on the left.
        total = sum(len(keys) + 2 for _, keys in groups)
        columns: list[Text] = [Text(), Text()]
        lines, right = 0, False
        for grp, keys in groups:
            right = right or lines + (len(keys) + 2) / 2 > total / 2
            col = columns[1] if right else columns[0]
            lines += len(keys) + 2
            col.append(f"{grp}\n", "bold underline #61afef")
            for key, description in keys:
                col.append(f"{key:>15}  ", "bold #e5c07b")
                col.append(f"{description}\n")
            col.append("\n")
        with Horizontal(id="help-box"):
            yield Static(columns[0], classes="help-column")
            yield Static(columns[1], classes="help-column")

    def on_mount(self) -> None:
        self._started = True
        self.query_one("#help-box").border_title = "ATE keys (esc closes)"
