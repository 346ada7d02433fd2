"""MIDI controllers: presets (TOML in ``presets/``), the message-to-command mapper, and the rtmidi bridge.

A controller is a client of the engine like any other: :class:`MidiBridge`
opens the controller's input and output ports with python-rtmidi (ALSA on a
desktop, JACK where JACK runs), turns each incoming message into engine
commands with a :class:`MidiMapper` and posts them over ZeroMQ
(:class:`controllers.client.EngineClient`); a feedback thread reads the
engine's state stream and lights the controller's LEDs.

The mapper is plain logic over bytes and state dicts (no I/O), in three parts:

- **inputs**: buttons (press / release), absolute controls (7-bit, 14-bit as an
  MSB/LSB pair of CCs, or pitch bend) scaled to engine units — faders linear,
  EQ knobs in amplitude with the centre at 0 dB and the bottom a kill, trim
  -24..0..+12 dB —, and relative encoders (three encodings). A shift button
  switches to the ``shift`` layer while held.
- **soft takeover**: an absolute control whose engine value was changed by
  someone else (the TUI, a script, a preset load) does nothing until the
  hardware reaches that value (within :data:`TAKEOVER_TOLERANCE` of its range)
  or crosses it, so a fader never jumps the sound (the crossfader excepted:
  a cut must act at once; ``takeover = false`` turns it off for any control).
- **jog wheels**: turning the side nudges the tempo while the wheel moves (a
  rate bend proportional to its speed, released :data:`JOG_RELEASE_S` after
  the last tick); turning the top while touched searches (moves the playhead
  by :data:`SEARCH_BEATS_PER_TICK` beats a tick, gathered into at most one
  jump per :data:`SEARCH_INTERVAL_S`). Vinyl scratching (playing backwards
  under the hand) needs reverse playback in the engine, which it does not do.
- **LED feedback**: each ``[[output]]`` names a state (playing, cue_ready,
  sync, loop, hot cue set, ...); :meth:`MidiMapper.feedback` returns the
  messages whose value changed since the last call.

A preset is checked completely when it is loaded: any error is one line,
``FILE:LINE: why`` (docs/midi.md is the format's reference).
"""

from __future__ import annotations

import collections
import math
import re
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from prep.runtime import key_line, loads_with_line

__all__ = ["Preset", "InputMapping", "OutputMapping", "PresetError", "load_preset", "parse_preset", "MidiMapper",
           "MidiBridge", "InputPump", "MidiPortError", "open_port", "list_ports", "describe", "PRESETS_DIR",
           "BUTTON_ACTIONS", "ABSOLUTE_ACTIONS", "RELATIVE_ACTIONS", "DECK_STATES", "GLOBAL_STATES", "TAKEOVER_TOLERANCE",
           "JOG_RELEASE_S", "SEARCH_BEATS_PER_TICK", "SEARCH_INTERVAL_S", "JOG_NUDGE_PER_TICK"]

PRESETS_DIR = Path(__file__).resolve().parent.parent / "presets"
"""The presets shipped with ATE."""

BUTTON_ACTIONS = {
    "play_pause": (), "cue": (), "sync": (), "keylock": (), "pfl": (), "hotcue": ("n",), "hotcue_clear": ("n",),
    "loop": ("beats",), "loop_halve": (), "loop_double": (), "reloop": (), "loop_exit": (), "loop_roll": ("beats",),
    "beat_jump": ("beats",), "stem_mute": ("stem",), "shift": (), "jog_touch": (), "quantize": (), "leader": (),
    "load": (), "pitch_range": (), "transition": (),
}
"""Button actions and their arguments (pressed when the value is above 0)."""
ABSOLUTE_ACTIONS = {
    "volume": ("volume", False), "crossfader": ("crossfader", True), "eq_high": ("eq_high_db", False),
    "eq_mid": ("eq_mid_db", False), "eq_low": ("eq_low_db", False), "filter": ("filter", False),
    "gain": ("gain_db", False), "pitch": ("pitch", False), "cue_mix": ("cue_mix", True),
    "headphone_gain": ("headphone_gain_db", True), "master_gain": ("master_gain_db", True),
    "stem_gain": ("stem", False),
}
"""Absolute actions: the engine parameter they set, and whether it is engine-wide."""
RELATIVE_ACTIONS = {"jog": (), "browse": (), "beat_jump_encoder": ("beats",)}
"""Relative (encoder) actions and their arguments."""
DECK_STATES = ("playing", "cue_ready", "sync", "keylock", "loop", "pfl", "hotcue", "loaded", "beat")
"""Per-deck states an LED can show."""
GLOBAL_STATES = ("shift", "quantize")
"""Engine-wide states an LED can show."""
ENCODINGS = ("twos_complement", "offset64", "sign_magnitude")
LOOP_SIZES = tuple(2.0 ** k for k in range(-5, 6))
STEMS = ("drums", "bass", "vocals", "other")

NO_TAKEOVER = ("crossfader",)
"""Absolute actions that always act at once: a crossfader cut must never wait."""
SENT_HISTORY = 64
"""Values remembered per control to tell our own moves from someone else's in lagging state."""
TAKEOVER_TOLERANCE = 3.0 / 128.0
"""Soft takeover: how near (a fraction of the control's range) the hardware must come to the engine's value."""
JOG_NUDGE_PER_TICK = 0.002
"""Tempo bend per jog tick per message, fraction of the tempo (a quick spin, ~10 ticks a message, bends 2 %)."""
JOG_NUDGE_MAX = 0.1
JOG_RELEASE_S = 0.06
"""The nudge ends this long after the last jog tick, seconds."""
SEARCH_BEATS_PER_TICK = 1.0 / 32.0
"""Playhead movement per tick of a touched jog wheel, beats."""
SEARCH_INTERVAL_S = 0.03
"""At most one search jump this often, seconds (the ticks in between add up)."""
EQ_KILL_DB = -80.0
"""What the bottom of an EQ knob sends (the engine kills the band at or below -80 dB)."""
CENTRE_DETENT = 1.5 / 127.0
"""Knob positions this near the centre snap to it (EQ 0 dB, filter off, trim 0 dB)."""
STATUS_KINDS = {0x80: "note", 0x90: "note", 0xB0: "cc", 0xE0: "pitchbend"}


class PresetError(ValueError):
    """A preset that cannot be used; the message is ``FILE:LINE: why``."""


class MidiPortError(RuntimeError):
    """No MIDI port matches, or the MIDI system is not there."""


@dataclass(frozen=True)
class InputMapping:
    """One ``[[input]]`` of a preset (see docs/midi.md)."""

    name: str
    status: str
    channel: int
    number: int
    action: str
    deck: int | None = None
    layer: str = "normal"
    n: int | None = None
    beats: float | None = None
    stem: str | None = None
    lsb: int | None = None
    encoding: str | None = None
    invert: bool = False
    takeover: bool = True
    preset: str | None = None
    start: str = "phrase"
    line: int = 0


@dataclass(frozen=True)
class OutputMapping:
    """One ``[[output]]`` of a preset: an engine state shown on an LED."""

    name: str
    status: str
    channel: int
    number: int
    state: str
    deck: int | None = None
    n: int | None = None
    on: int = 127
    off: int = 0
    line: int = 0

    def message(self, lit: bool) -> list[int]:
        status = (0x90 if self.status == "note" else 0xB0) | (self.channel - 1)
        return [status, self.number, self.on if lit else self.off]


@dataclass
class Preset:
    """A controller's mapping.

    Attributes
    ----------
    name, port : str
        Display name; the case-insensitive part of the MIDI port names to open.
    decks : list of int
        Engine deck for controller deck 1, 2, ...
    inputs, outputs : list
        :class:`InputMapping` and :class:`OutputMapping`.
    sources : list of str
        Where the message assignments come from.
    path : str
        The file.
    """

    name: str
    port: str
    decks: list[int]
    inputs: list[InputMapping]
    outputs: list[OutputMapping] = field(default_factory=list)
    sources: list[str] = field(default_factory=list)
    notes: str = ""
    path: str = ""


# ====================================================================== loading and checking

_INPUT_KEYS = {"name", "status", "channel", "number", "deck", "layer", "action", "n", "beats", "stem", "lsb",
               "encoding", "invert", "takeover", "preset", "start"}
_OUTPUT_KEYS = {"name", "status", "channel", "number", "deck", "state", "n", "on", "off"}
_CONTROLLER_KEYS = {"name", "port", "decks", "sources", "notes"}


def _table_lines(text: str, header: str) -> list[int]:
    """Line numbers (1-based) of each ``[[header]]`` in order (TOML keeps array tables in file order)."""
    pattern = re.compile(rf"^\s*\[\[\s*{re.escape(header)}\s*\]\]")
    return [i + 1 for i, line in enumerate(text.splitlines()) if pattern.match(line)]


def load_preset(path: str | Path) -> Preset:
    """Read and check a preset file; raises :class:`PresetError` (``FILE:LINE: why``)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise PresetError(f"{path}:0: cannot read the preset ({err})") from None
    return parse_preset(text, str(path))


def parse_preset(text: str, where: str = "<preset>") -> Preset:
    """Parse and check a preset's TOML text (``where`` names it in errors)."""
    data, line, why = loads_with_line(text)
    if data is None:
        raise PresetError(f"{where}:{line}: not valid TOML ({why})")

    def fail(line: int, why: str) -> None:
        raise PresetError(f"{where}:{line}: {why}")

    lines = text.splitlines()
    controller_line = next((i + 1 for i, s in enumerate(lines) if s.strip() == "[controller]"), 1)
    controller = data.get("controller")
    if not isinstance(controller, dict):
        fail(1, "no [controller] table (name, port, decks)")
    for key in controller:
        if key not in _CONTROLLER_KEYS:
            fail(key_line(text, controller_line, key), f"unknown key {key!r} in [controller]; known: "
                 f"{', '.join(sorted(_CONTROLLER_KEYS))}")
    for key in ("name", "port"):
        if not isinstance(controller.get(key), str) or not controller[key].strip():
            fail(key_line(text, controller_line, key), f"[controller] needs a non-empty {key} (a string)")
    decks = controller.get("decks", [0, 1])
    if (not isinstance(decks, list) or not 1 <= len(decks) <= 4
            or not all(isinstance(d, int) and not isinstance(d, bool) and 0 <= d < 16 for d in decks)):
        fail(key_line(text, controller_line, "decks"), f"decks must list 1-4 engine deck indices, got {decks!r}")
    for key in data:
        if key not in ("controller", "input", "output"):
            fail(next((i + 1 for i, s in enumerate(lines) if key in s), 1),
                 f"unknown table {key!r}; a preset has [controller], [[input]] and [[output]]")
    inputs = _parse_tables(data.get("input", []), _table_lines(text, "input"), "input", text, fail, len(decks))
    outputs = _parse_tables(data.get("output", []), _table_lines(text, "output"), "output", text, fail, len(decks))
    names: dict[str, int] = {}
    seen: dict[tuple, InputMapping] = {}
    for m in list(inputs) + list(outputs):
        if m.name in names:
            fail(m.line, f"name {m.name!r} is used twice (first on line {names[m.name]})")
        names[m.name] = m.line
    for m in inputs:
        keys = [(m.status, m.channel, m.number, m.layer)]
        if m.lsb is not None:
            keys.append(("cc", m.channel, m.lsb, m.layer))
        for key in keys:
            if key in seen:
                fail(m.line, f"{m.name}: {describe_key(key)} is already mapped by {seen[key].name} "
                     f"(line {seen[key].line})")
            seen[key] = m
    sources = controller.get("sources", [])
    if isinstance(sources, str):
        sources = [sources]
    return Preset(name=controller["name"], port=controller["port"], decks=list(decks), inputs=inputs,
                  outputs=outputs, sources=list(sources), notes=str(controller.get("notes", "")), path=where)


def describe_key(key: tuple) -> str:
    status, channel, number, layer = key
    what = "pitch bend" if status == "pitchbend" else f"{status} 0x{number:02X}"
    return f"{what} on channel {channel}" + (" (shift layer)" if layer == "shift" else "")


def _parse_tables(tables: object, table_lines: list[int], kind: str, text: str, fail, n_decks: int) -> list:
    if not isinstance(tables, list):
        fail(1, f"{kind} must be an array of tables: [[{kind}]]")
    out = []
    for i, t in enumerate(tables):
        line = table_lines[i] if i < len(table_lines) else 0

        def at(key: str) -> int:
            return key_line(text, line, key)

        allowed = _INPUT_KEYS if kind == "input" else _OUTPUT_KEYS
        for key in t:
            if key not in allowed:
                fail(at(key), f"unknown key {key!r} in [[{kind}]]; known: {', '.join(sorted(allowed))}")
        name = t.get("name")
        if not isinstance(name, str) or not name:
            fail(line, f"[[{kind}]] needs a name")
        status = t.get("status")
        kinds = ("note", "cc", "pitchbend") if kind == "input" else ("note", "cc")
        if status not in kinds:
            fail(at("status"), f"{name}: status must be one of {', '.join(kinds)}, got {status!r}")
        channel = t.get("channel")
        if not _is_int(channel) or not 1 <= channel <= 16:
            fail(at("channel"), f"{name}: channel must be 1..16 (as MIDI charts count), got {channel!r}")
        number = t.get("number", 0 if status == "pitchbend" else None)
        if not _is_int(number) or not 0 <= number <= 127:
            fail(at("number"), f"{name}: number must be 0..127, got {number!r}")
        deck = t.get("deck")
        if deck is not None and (not _is_int(deck) or not 1 <= deck <= n_decks):
            fail(at("deck"), f"{name}: deck must be 1..{n_decks} (the controller's decks), got {deck!r}")
        n = t.get("n")
        if n is not None and (not _is_int(n) or not 1 <= n <= 8):
            fail(at("n"), f"{name}: n must be a pad number 1..8, got {n!r}")
        if kind == "output":
            state = t.get("state")
            if state not in DECK_STATES + GLOBAL_STATES:
                fail(at("state"), f"{name}: unknown state {state!r}; known: {', '.join(DECK_STATES + GLOBAL_STATES)}")
            if state in DECK_STATES and deck is None:
                fail(line, f"{name}: state {state!r} belongs to a deck: give deck = 1..{n_decks}")
            if state == "hotcue" and n is None:
                fail(line, f"{name}: a hotcue LED needs n (the pad, 1..8)")
            for key in ("on", "off"):
                v = t.get(key, 127 if key == "on" else 0)
                if not _is_int(v) or not 0 <= v <= 127:
                    fail(at(key), f"{name}: {key} must be 0..127, got {v!r}")
            out.append(OutputMapping(name=name, status=status, channel=channel, number=number, state=state,
                                     deck=deck, n=n, on=t.get("on", 127), off=t.get("off", 0), line=line))
            continue
        action = t.get("action")
        known = {**BUTTON_ACTIONS, **{k: () for k in ABSOLUTE_ACTIONS}, **RELATIVE_ACTIONS}
        if action not in known:
            fail(at("action"), f"{name}: unknown action {action!r}; known: {', '.join(sorted(known))}")
        layer = t.get("layer", "normal")
        if layer not in ("normal", "shift"):
            fail(at("layer"), f"{name}: layer must be \"normal\" or \"shift\", got {layer!r}")
        deck_action = action not in ("crossfader", "cue_mix", "headphone_gain", "master_gain", "browse", "quantize",
                                     "shift")
        if deck_action and deck is None:
            fail(line, f"{name}: action {action!r} works on a deck: give deck = 1..{n_decks}")
        needs = BUTTON_ACTIONS.get(action, ()) + RELATIVE_ACTIONS.get(action, ()) + (
            ("stem",) if action == "stem_gain" else ())
        for arg in needs:
            if arg not in t:
                fail(line, f"{name}: action {action!r} needs {arg}")
        beats = t.get("beats")
        if beats is not None:
            if not isinstance(beats, (int, float)) or isinstance(beats, bool) or not math.isfinite(beats):
                fail(at("beats"), f"{name}: beats must be a number, got {beats!r}")
            if action in ("loop", "loop_roll") and float(beats) not in LOOP_SIZES:
                fail(at("beats"), f"{name}: loop length must be a power of two from 1/32 to 32 beats, got {beats}")
            if action in ("beat_jump", "beat_jump_encoder") and not 0 < abs(beats) <= 512:
                fail(at("beats"), f"{name}: a beat jump is 1/32..512 beats either way, got {beats}")
        stem = t.get("stem")
        if stem is not None and stem not in STEMS:
            fail(at("stem"), f"{name}: stem must be one of {', '.join(STEMS)}, got {stem!r}")
        transition_preset, start = t.get("preset"), t.get("start", "phrase")
        if ("preset" in t or "start" in t) and action != "transition":
            fail(at("preset" if "preset" in t else "start"), f"{name}: preset and start are for action \"transition\"")
        if start not in ("phrase", "bar"):
            fail(at("start"), f"{name}: start must be \"phrase\" or \"bar\", got {start!r}")
        if transition_preset is not None:
            from engine.transitions import TransitionError, load_library

            try:
                known_presets = load_library()
            except TransitionError as err:
                fail(at("preset"), f"{name}: the transition presets cannot be read ({err})")
            if transition_preset not in known_presets:
                fail(at("preset"), f"{name}: unknown transition preset {transition_preset!r}; known: "
                     f"{', '.join(sorted(known_presets))}")
        lsb = t.get("lsb")
        if lsb is not None and (status != "cc" or action not in ABSOLUTE_ACTIONS or not _is_int(lsb)
                                or not 0 <= lsb <= 127 or lsb == number):
            fail(at("lsb"), f"{name}: lsb (the low 7 bits of a 14-bit control) needs status = \"cc\", an absolute "
                 f"action and another controller number 0..127, got {lsb!r}")
        encoding = t.get("encoding")
        if action in RELATIVE_ACTIONS:
            if encoding not in ENCODINGS:
                fail(at("encoding") if encoding is not None else line,
                     f"{name}: a relative control needs encoding = one of {', '.join(ENCODINGS)}, got {encoding!r}")
            if status == "pitchbend":
                fail(at("status"), f"{name}: a relative control sends notes or CCs, not pitch bend")
        elif encoding is not None:
            fail(at("encoding"), f"{name}: encoding is for relative controls (jog, browse, beat_jump_encoder)")
        if action in BUTTON_ACTIONS and status == "pitchbend":
            fail(at("status"), f"{name}: a button sends notes or CCs, not pitch bend")
        for key in ("invert", "takeover"):
            if key in t and not isinstance(t[key], bool):
                fail(at(key), f"{name}: {key} must be true or false")
        out.append(InputMapping(name=name, status=status, channel=channel, number=number, action=action, deck=deck,
                                layer=layer, n=n, beats=None if beats is None else float(beats), stem=stem, lsb=lsb,
                                encoding=encoding, invert=bool(t.get("invert", False)),
                                takeover=bool(t.get("takeover", True)), preset=transition_preset, start=start,
                                line=line))
    return out


def _is_int(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


# ====================================================================== the mapper

def describe(message: list[int] | tuple[int, ...]) -> str:
    """One line for a raw MIDI message, as ``ate midi monitor`` prints it."""
    if not message:
        return "empty message"
    status = message[0]
    kind = status & 0xF0
    channel = (status & 0x0F) + 1
    data = list(message[1:]) + [0, 0]
    raw = " ".join(f"{b:02X}" for b in message)
    if kind == 0x90 and data[1] > 0:
        text = f"note on   ch {channel:2d}  note 0x{data[0]:02X} ({data[0]:3d})  velocity {data[1]}"
    elif kind in (0x80, 0x90):
        text = f"note off  ch {channel:2d}  note 0x{data[0]:02X} ({data[0]:3d})"
    elif kind == 0xB0:
        text = f"cc        ch {channel:2d}  cc   0x{data[0]:02X} ({data[0]:3d})  value {data[1]}"
    elif kind == 0xE0:
        text = f"pitchbend ch {channel:2d}  value {data[0] | data[1] << 7}"
    else:
        text = "system/other"
    return f"{raw:<9}  {text}"


def _relative(value: int, encoding: str) -> int:
    if encoding == "twos_complement":
        return value if value < 64 else value - 128
    if encoding == "offset64":
        return value - 64
    return -(value & 0x3F) if value & 0x40 else value & 0x3F


def _db_from_position(pos: float, top_db: float) -> float:
    """EQ-style knob: amplitude 0..1 on the lower half (bottom = kill), 1..10^(top/20) on the upper half."""
    if abs(pos - 0.5) <= CENTRE_DETENT:
        return 0.0
    if pos < 0.5:
        amplitude = pos / 0.5
        return EQ_KILL_DB if amplitude <= 10.0 ** (EQ_KILL_DB / 20.0) else max(EQ_KILL_DB, 20.0 * math.log10(amplitude))
    top = 10.0 ** (top_db / 20.0)
    return 20.0 * math.log10(1.0 + (top - 1.0) * (pos - 0.5) / 0.5)


def _position_from_db(db: float, top_db: float) -> float:
    if db <= EQ_KILL_DB:
        return 0.0
    if db <= 0.0:
        return 0.5 * 10.0 ** (db / 20.0)
    top = 10.0 ** (top_db / 20.0)
    return 0.5 + 0.5 * (10.0 ** (db / 20.0) - 1.0) / (top - 1.0)


class MidiMapper:
    """Turns a controller's MIDI messages into engine commands, and engine state into LED messages.

    Parameters
    ----------
    preset : Preset
        The mapping.
    decks : list of int, optional
        Engine decks for controller decks 1, 2, ... (default: the preset's).

    Notes
    -----
    Not thread-safe: one thread calls :meth:`handle` and :meth:`tick`; state
    arrives through :meth:`update_state` (a reference swap, safe from another
    thread).
    """

    def __init__(self, preset: Preset, decks: list[int] | None = None):
        self.preset = preset
        self.decks = list(decks if decks is not None else preset.decks)
        self.state: dict | None = None
        self.shift = False
        self._by_key: dict[tuple, InputMapping] = {}
        self._lsb_of: dict[tuple, InputMapping] = {}
        for m in preset.inputs:
            self._by_key[(m.status, m.channel, m.number, m.layer)] = m
            if m.lsb is not None:
                self._lsb_of[("cc", m.channel, m.lsb, m.layer)] = m
        self._msb: dict[str, int] = {}
        self._lsb: dict[str, int] = {}
        self._hardware: dict[str, float] = {}     # last position of each absolute control, 0..1
        # The values we set lately, per target: the state stream lags our own commands by up to a state
        # period, so the engine showing any of them is still us, not someone else moving the control.
        self._sent: dict[str, collections.deque] = {}
        self._taken: dict[str, bool] = {}
        self._touch: dict[int, bool] = {}
        self._nudge_until: dict[int, float] = {}
        self._search_ticks: dict[int, int] = {}
        self._search_due: dict[int, float] = {}
        self._leds: dict[str, int] = {}
        self.browse_steps = 0
        """Browse encoder ticks not yet taken by a browser (:meth:`take_browse`)."""
        self.load_requests: list[int] = []
        """Engine decks whose load button was pressed (a browser takes them)."""

    # ------------------------------------------------------------------ state

    def update_state(self, state: dict | None) -> None:
        """The engine's latest state (``EngineClient.state``): soft takeover and LEDs read it."""
        self.state = state

    def _deck_state(self, deck: int) -> dict | None:
        if self.state is None:
            return None
        decks = self.state.get("decks", [])
        return decks[deck] if 0 <= deck < len(decks) else None

    def engine_deck(self, m: InputMapping | OutputMapping) -> int | None:
        return None if m.deck is None else self.decks[m.deck - 1]

    # ------------------------------------------------------------------ input

    def lookup(self, message: list[int]) -> tuple[InputMapping | None, int, bool]:
        """``(mapping, value, is_lsb)`` for a message; value 0..127 (or 0..16383 for pitch bend)."""
        if len(message) < 2:
            return None, 0, False
        kind = STATUS_KINDS.get(message[0] & 0xF0)
        if kind is None:
            return None, 0, False
        channel = (message[0] & 0x0F) + 1
        value = message[2] if len(message) > 2 else 0
        if message[0] & 0xF0 == 0x80:
            value = 0
        layers = ("shift", "normal") if self.shift else ("normal",)
        if kind == "pitchbend":
            for layer in layers:
                m = self._by_key.get(("pitchbend", channel, 0, layer))
                if m is not None:
                    return m, message[1] | value << 7, False
            return None, 0, False
        for layer in layers:
            m = self._by_key.get((kind, channel, message[1], layer))
            if m is not None:
                return m, value, False
            m = self._lsb_of.get((kind, channel, message[1], layer))
            if m is not None:
                return m, value, True
        return None, 0, False

    def handle(self, message: list[int], now: float | None = None) -> list[dict]:
        """The engine commands one incoming message makes (possibly none)."""
        m, value, is_lsb = self.lookup(message)
        if m is None:
            return []
        now = time.monotonic() if now is None else now
        if m.action in ABSOLUTE_ACTIONS:
            if m.status == "pitchbend":
                position = value / 16383.0
            elif m.lsb is not None:
                if is_lsb:
                    self._lsb[m.name] = value
                else:
                    self._msb[m.name] = value
                position = ((self._msb.get(m.name, 0) << 7) | self._lsb.get(m.name, 0)) / 16383.0
            else:
                position = value / 127.0
            if m.invert:
                position = 1.0 - position
            return self._absolute(m, position)
        if m.action in RELATIVE_ACTIONS:
            return self._relative_action(m, _relative(value, m.encoding), now)
        return self._button(m, value > 0)

    def _button(self, m: InputMapping, pressed: bool) -> list[dict]:
        a = m.action
        deck = self.engine_deck(m)
        if a == "shift":
            self.shift = pressed
            return []
        if a == "jog_touch":
            self._touch[deck] = pressed
            return []
        if a == "cue":
            return [{"cmd": "cue_press" if pressed else "cue_release", "deck": deck}]
        if a == "loop_roll":
            return [{"cmd": "loop_roll", "deck": deck, "beats": m.beats} if pressed
                    else {"cmd": "loop_roll_release", "deck": deck}]
        if not pressed:
            return []
        ds = self._deck_state(deck) if deck is not None else None
        if a == "play_pause":
            return [{"cmd": "play_pause", "deck": deck}]
        if a in ("sync", "keylock", "pfl"):
            on = not bool(ds and ds.get(a))
            return [{"cmd": a, "deck": deck, "on": on}]
        if a == "hotcue":
            return [{"cmd": "hotcue", "deck": deck, "n": m.n}]
        if a == "hotcue_clear":
            return [{"cmd": "hotcue_clear", "deck": deck, "n": m.n}]
        if a == "loop":
            if ds and ds.get("loop"):
                return [{"cmd": "loop_exit", "deck": deck}]
            return [{"cmd": "loop", "deck": deck, "beats": m.beats}]
        if a in ("loop_halve", "loop_double"):
            beats = self._loop_beats(ds) or 4.0
            beats = beats / 2.0 if a == "loop_halve" else beats * 2.0
            beats = min(max(beats, LOOP_SIZES[0]), LOOP_SIZES[-1])
            return [{"cmd": "loop", "deck": deck, "beats": beats}]
        if a in ("reloop", "loop_exit", "leader"):
            return [{"cmd": a, "deck": deck}]
        if a == "beat_jump":
            return [{"cmd": "beat_jump", "deck": deck, "beats": m.beats}]
        if a == "stem_mute":
            on = not bool(ds and m.stem in ds.get("muted", []))
            return [{"cmd": "mute", "deck": deck, "stem": m.stem, "on": on}]
        if a == "quantize":
            on = not bool(self.state and self.state.get("quantize"))
            return [{"cmd": "quantize", "on": on}]
        if a == "pitch_range":
            ranges = (0.08, 0.16, 0.5)
            current = ds.get("pitch_range", 0.08) if ds else 0.08
            nxt = ranges[(min(range(3), key=lambda i: abs(ranges[i] - current)) + 1) % 3]
            return [{"cmd": "pitch_range", "deck": deck, "range": nxt}]
        if a == "load":
            self.load_requests.append(deck)
            return []
        if a == "transition":
            # Into this deck from the one playing (the engine picks it, docs/automix.md).
            cmd = {"cmd": "transition", "to_deck": deck, "start": m.start, "tag": "transition"}
            return [cmd | {"preset": m.preset}] if m.preset else [cmd]
        return []

    @staticmethod
    def _loop_beats(ds: dict | None) -> float | None:
        return ds.get("loop_beats") if ds and ds.get("loop") else None

    def _target(self, m: InputMapping) -> tuple[str, int | None, str]:
        """(key, deck, engine param) of an absolute control."""
        param, engine_wide = ABSOLUTE_ACTIONS[m.action]
        deck = None if engine_wide else self.engine_deck(m)
        if param == "stem":
            param = f"stem.{m.stem}"
        return f"{deck}:{param}", deck, param

    def _engine_value(self, deck: int | None, param: str) -> float | None:
        if self.state is None:
            return None
        if deck is None:
            return self.state.get("params", {}).get(param)
        ds = self._deck_state(deck)
        return None if ds is None else ds.get("params", {}).get(param)

    def _value(self, m: InputMapping, position: float, deck: int | None) -> float:
        a = m.action
        if a == "volume" or a == "cue_mix":
            return position
        if a == "crossfader":
            return 2.0 * position - 1.0
        if a in ("eq_high", "eq_mid", "eq_low"):
            return _db_from_position(position, 6.0)
        if a == "filter":
            v = 2.0 * position - 1.0
            return 0.0 if abs(v) <= 2.0 * CENTRE_DETENT else v
        if a == "gain":
            if abs(position - 0.5) <= CENTRE_DETENT:
                return 0.0
            return -24.0 * (0.5 - position) / 0.5 if position < 0.5 else 12.0 * (position - 0.5) / 0.5
        if a == "pitch":
            ds = self._deck_state(deck)
            rng = ds.get("pitch_range", 0.08) if ds else 0.08
            return rng * (2.0 * position - 1.0)
        if a in ("headphone_gain", "master_gain"):
            # 0 dB at 80 % of the travel, +6 dB at the top, -40 dB at the bottom.
            return -40.0 + 40.0 * position / 0.8 if position <= 0.8 else 6.0 * (position - 0.8) / 0.2
        if a == "stem_gain":
            return 2.0 * position
        raise AssertionError(a)

    def _position(self, m: InputMapping, value: float, deck: int | None) -> float:
        """The hardware position (0..1) at which this control would send ``value`` (inverse of :meth:`_value`)."""
        a = m.action
        if a in ("volume", "cue_mix"):
            return value
        if a in ("crossfader", "filter"):
            return (value + 1.0) / 2.0
        if a in ("eq_high", "eq_mid", "eq_low"):
            return _position_from_db(value, 6.0)
        if a == "gain":
            return 0.5 - 0.5 * value / -24.0 if value < 0 else 0.5 + 0.5 * value / 12.0
        if a == "pitch":
            ds = self._deck_state(deck)
            rng = ds.get("pitch_range", 0.08) if ds else 0.08
            return (value / rng + 1.0) / 2.0
        if a in ("headphone_gain", "master_gain"):
            return 0.8 * (value + 40.0) / 40.0 if value <= 0 else 0.8 + 0.2 * value / 6.0
        return value / 2.0

    def _absolute(self, m: InputMapping, position: float) -> list[dict]:
        key, deck, param = self._target(m)
        previous = self._hardware.get(key)
        self._hardware[key] = position
        value = self._value(m, position, deck)
        if m.takeover and m.action not in NO_TAKEOVER:
            engine_value = self._engine_value(deck, param)
            if engine_value is not None and key in self._sent and not any(
                    math.isclose(engine_value, v, rel_tol=1e-6, abs_tol=1e-6) for v in self._sent[key]):
                self._taken[key] = False              # someone else moved it since we last did
            if engine_value is not None and not self._taken.get(key, key in self._sent):
                target = self._position(m, engine_value, deck)
                crossed = previous is not None and (previous - target) * (position - target) <= 0.0
                if abs(position - target) > TAKEOVER_TOLERANCE and not crossed:
                    return []
                self._taken[key] = True
            else:
                self._taken[key] = True
        self._sent.setdefault(key, collections.deque(maxlen=SENT_HISTORY)).append(value)
        cmd = {"cmd": "set", "param": param, "value": value}
        if deck is not None:
            cmd["deck"] = deck
        return [cmd]

    def _relative_action(self, m: InputMapping, delta: int, now: float) -> list[dict]:
        if delta == 0:
            return []
        if m.action == "browse":
            self.browse_steps += delta
            return []
        deck = self.engine_deck(m)
        if m.action == "beat_jump_encoder":
            return [{"cmd": "beat_jump", "deck": deck, "beats": m.beats * delta}]
        if self._touch.get(deck):
            self._search_ticks[deck] = self._search_ticks.get(deck, 0) + delta
            due = self._search_due.get(deck, 0.0)
            if now >= due:
                return self._flush_search(deck, now)
            return []
        amount = max(-JOG_NUDGE_MAX, min(JOG_NUDGE_MAX, JOG_NUDGE_PER_TICK * delta))
        self._nudge_until[deck] = now + JOG_RELEASE_S
        return [{"cmd": "nudge", "deck": deck, "amount": amount}]

    def _flush_search(self, deck: int, now: float) -> list[dict]:
        ticks = self._search_ticks.pop(deck, 0)
        self._search_due[deck] = now + SEARCH_INTERVAL_S
        if not ticks:
            return []
        return [{"cmd": "beat_jump", "deck": deck, "beats": ticks * SEARCH_BEATS_PER_TICK}]

    def tick(self, now: float | None = None) -> list[dict]:
        """Commands that come due with time: a jog nudge's release, gathered search ticks. Call every few ms."""
        now = time.monotonic() if now is None else now
        out = []
        for deck, until in list(self._nudge_until.items()):
            if now >= until:
                del self._nudge_until[deck]
                out.append({"cmd": "nudge", "deck": deck, "amount": 0.0})
        for deck in list(self._search_ticks):
            if now >= self._search_due.get(deck, 0.0):
                out += self._flush_search(deck, now)
        return out

    def take_browse(self) -> tuple[int, list[int]]:
        """Browse ticks and load presses since the last call (for a crate browser)."""
        steps, loads = self.browse_steps, self.load_requests
        self.browse_steps, self.load_requests = 0, []
        return steps, loads

    # ------------------------------------------------------------------ LEDs

    def lit(self, m: OutputMapping) -> bool:
        """Whether an LED's state holds now."""
        if m.state == "shift":
            return self.shift
        if m.state == "quantize":
            return bool(self.state and self.state.get("quantize"))
        ds = self._deck_state(self.engine_deck(m))
        if ds is None:
            return False
        s = m.state
        if s in ("playing", "sync", "keylock", "pfl", "loaded"):
            return bool(ds.get(s))
        if s == "loop":
            return ds.get("loop") is not None
        if s == "hotcue":
            cues = ds.get("hot_cues_s") or []
            return m.n - 1 < len(cues) and cues[m.n - 1] is not None
        if s == "cue_ready":
            return (bool(ds.get("loaded")) and not ds.get("playing")
                    and abs(ds.get("position_s", 0.0) - ds.get("cue_s", -1.0)) < 0.01)
        if s == "beat":
            return bool(ds.get("playing")) and (ds.get("beat", 0.0) % 1.0) < 0.5
        return False

    def feedback(self, force: bool = False) -> list[list[int]]:
        """LED messages whose value changed since the last call (all of them with ``force``)."""
        out = []
        for m in self.preset.outputs:
            message = m.message(self.lit(m))
            if force or self._leds.get(m.name) != message[2]:
                self._leds[m.name] = message[2]
                out.append(message)
        return out


# ====================================================================== ports and the bridge

def _api(api: str | None) -> int:
    import rtmidi

    names = {"jack": rtmidi.API_UNIX_JACK, "alsa": rtmidi.API_LINUX_ALSA, None: rtmidi.API_UNSPECIFIED}
    if api not in names:
        raise MidiPortError(f"MIDI API must be jack or alsa, got {api!r}")
    return names[api]


def list_ports(api: str | None = None) -> dict:
    """``{"inputs": [...], "outputs": [...]}``: the MIDI port names of an API (default: rtmidi's choice)."""
    import rtmidi

    try:
        midi_in, midi_out = rtmidi.MidiIn(rtapi=_api(api)), rtmidi.MidiOut(rtapi=_api(api))
    except rtmidi.SystemError as err:
        raise MidiPortError(f"no MIDI system ({api or 'default'} API): {err}") from None
    try:
        return {"inputs": midi_in.get_ports(), "outputs": midi_out.get_ports()}
    finally:
        midi_in.delete()
        midi_out.delete()


def open_port(kind: str, name: str, api: str | None = None, client_name: str = "ate"):
    """Open the first ``"input"`` or ``"output"`` port whose name contains ``name`` (case-insensitive).

    Returns the rtmidi object and the port's full name. Raises :class:`MidiPortError`
    listing the ports there are when none matches.
    """
    import rtmidi

    cls = rtmidi.MidiIn if kind == "input" else rtmidi.MidiOut
    try:
        port = cls(rtapi=_api(api), name=client_name)
    except rtmidi.SystemError as err:
        raise MidiPortError(f"no MIDI system ({api or 'default'} API): {err}") from None
    ports = port.get_ports()
    for i, full in enumerate(ports):
        if name.lower() in full.lower():
            port.open_port(i, f"{client_name} {kind}")
            if kind == "input":
                port.ignore_types(sysex=True, timing=True, active_sense=True)
            return port, full
    port.delete()
    raise MidiPortError(f"no MIDI {kind} port matching {name!r}; there are: {', '.join(ports) or 'none'}")


class InputPump:
    """Read a MIDI input port from a Python thread and hand each message to ``handler(message)``.

    rtmidi can call a Python callback itself, but under JACK it calls it from
    JACK's process thread: that thread then waits for this process's GIL,
    and while it waits the whole JACK graph — the engine's audio included —
    is late (measured: a busy UI in the same process as the controller turned
    zero xruns into 5 % of blocks late). So the port queues messages (in C++,
    no GIL) and this thread drains them every :attr:`poll_s`.

    Parameters
    ----------
    port : rtmidi.MidiIn
        An open input port (without a callback).
    handler : callable
        Called with each message (a list of ints), in order, from the pump thread.
    poll_s : float
        Longest wait between looks at the port, seconds (the latency it adds at most).
    """

    def __init__(self, port, handler, poll_s: float = 0.001, name: str = "ate-midi-in"):
        self.port = port
        self.handler = handler
        self.poll_s = float(poll_s)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        get = self.port.get_message
        while not self._stop.is_set():
            event = get()
            if event is None:
                time.sleep(self.poll_s)
                continue
            self.handler(list(event[0]))

    def stop(self) -> None:
        """Stop the thread (messages still queued are dropped)."""
        self._stop.set()
        self._thread.join(timeout=2.0)


class MidiBridge:
    """A MIDI controller driving an engine: rtmidi ports ↔ :class:`MidiMapper` ↔ :class:`EngineClient`.

    Parameters
    ----------
    preset : Preset
        The controller's mapping.
    client : controllers.client.EngineClient
        The engine connection (its own; the bridge posts commands and polls state).
    port : str, optional
        Part of the port names (default: the preset's ``port``).
    api : str, optional
        ``"jack"`` or ``"alsa"`` (default: rtmidi's choice).
    decks : list of int, optional
        Engine decks for the controller's decks (default: the preset's).
    feedback_hz : float
        LED updates per second.
    crate_dir : str or Path, optional
        A prepared crate: the browse encoder moves through its tracks (by
        title) and a deck's load button loads the selected one.
    on_browse : callable, optional
        ``on_browse(steps, load_decks)`` takes browse ticks and load presses
        instead (a crate browser on screen, as in ``ate live``); called from
        the feedback thread.

    An :class:`InputPump` thread maps and posts each message as it arrives; a
    feedback thread reads the state stream, sends what changed to the LEDs and
    runs :meth:`MidiMapper.tick`. Messages that map to nothing are counted in
    :attr:`unmapped`.
    """

    def __init__(self, preset: Preset, client, port: str | None = None, api: str | None = None,
                 decks: list[int] | None = None, feedback_hz: float = 60.0, crate_dir=None, on_browse=None):
        self.preset = preset
        self.crate_dir = None if crate_dir is None else str(crate_dir)
        self.on_browse = on_browse
        self.selected = 0
        self._tracks: list[dict] | None = None
        self.client = client
        self.mapper = MidiMapper(preset, decks)
        self.received = 0
        self.unmapped = 0
        self.commands_sent = 0
        self.feedback_sent = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        name = port or preset.port
        self.midi_in, self.input_name = open_port("input", name, api, "ate-midi-in")
        try:
            self.midi_out, self.output_name = open_port("output", name, api, "ate-midi-out")
        except MidiPortError:
            self.midi_out, self.output_name = None, None      # a controller without LEDs still plays
        self._pump = InputPump(self.midi_in, self._on_message)
        self._period = 1.0 / feedback_hz
        self._thread = threading.Thread(target=self._feedback_loop, name="ate-midi-feedback", daemon=True)
        self._thread.start()

    def _post(self, commands: list[dict]) -> None:
        for cmd in commands:
            self.client.post(cmd)
            self.commands_sent += 1

    def _on_message(self, message: list[int]) -> None:
        self.received += 1
        with self._lock:
            self.mapper.update_state(self.client.state)
            commands = self.mapper.handle(message)
            if not commands and self.mapper.lookup(message)[0] is None:
                self.unmapped += 1
        self._post(commands)

    def _feedback_loop(self) -> None:
        first = True
        while not self._stop.is_set():
            self.client.poll(self._period)
            with self._lock:
                self.mapper.update_state(self.client.state)
                commands = self.mapper.tick()
                leds = self.mapper.feedback(force=first) if self.client.state is not None else []
            if self.client.state is not None:
                first = False
            self._post(commands + self._browse())
            if self.midi_out is not None:
                for message in leds:
                    self.midi_out.send_message(message)
                    self.feedback_sent += 1

    def crate_tracks(self) -> list[dict]:
        """The crate's tracks in browse order (read once)."""
        if self._tracks is None:
            from prep.crate import Crate, default_db_path

            with Crate(default_db_path(Path(self.crate_dir)), readonly=True, root=self.crate_dir) as crate:
                self._tracks = crate.list_tracks("title")
        return self._tracks

    def _browse(self) -> list[dict]:
        with self._lock:
            steps, loads = self.mapper.take_browse()
        if not steps and not loads:
            return []
        if self.on_browse is not None:
            self.on_browse(steps, loads)
            return []
        if self.crate_dir is None:
            return []
        tracks = self.crate_tracks()
        if not tracks:
            return []
        self.selected = min(max(self.selected + steps, 0), len(tracks) - 1)
        return [{"cmd": "load", "deck": deck, "track": tracks[self.selected]["content_hash"], "crate": self.crate_dir}
                for deck in loads]

    def close(self) -> None:
        """Stop the feedback thread and close the ports (LEDs are switched off)."""
        self._stop.set()
        self._thread.join(timeout=2.0)
        if self.midi_out is not None:
            for m in self.preset.outputs:
                self.midi_out.send_message(m.message(False))
            self.midi_out.close_port()
            self.midi_out.delete()
        self._pump.stop()
        self.midi_in.close_port()
        self.midi_in.delete()

    def __enter__(self) -> MidiBridge:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
