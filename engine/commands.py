"""The engine's command vocabulary: validation of JSON-ready command dicts.

Every controller (scripts, the TUI, MIDI mappings, ZeroMQ clients, automix)
speaks these commands; docs/engine.md lists them with their arguments and
units. :func:`parse_command` turns a dict into a :class:`Command` or raises
:class:`CommandError` with one line saying what is wrong, before anything
reaches the audio thread: a malformed command never disturbs playback.

A command is applied at the next block boundary, or at the time named by its
``at`` field, sample-accurately (the engine splits its block there):

- ``{"frame": N}``: engine output frame ``N`` (frames since the engine started);
- ``{"seconds": T}``: the same in seconds;
- ``{"beat": B}``: master beat ``B`` (the sync clock; whole numbers are beats
  of the master grid).

Continuous parameters (``set``) can glide: ``"ramp": {"beats": 4}`` or
``{"seconds": 0.5}`` makes a linear ramp from the current value, starting at
the command's time.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from prep.stems import STEM_NAMES

__all__ = ["Command", "CommandError", "parse_command", "parse_at", "DECK_PARAMS", "GLOBAL_PARAMS", "COMMANDS",
           "LOOP_BEATS", "PITCH_RANGES", "HOT_CUES", "FX_SLOTS", "fx_param_slot"]


class CommandError(ValueError):
    """A command was rejected; the message says why in one line."""


LOOP_BEATS = tuple(2.0 ** k for k in range(-5, 6))
"""Loop lengths in beats: 1/32 to 32."""
PITCH_RANGES = (0.08, 0.16, 0.50)
"""Pitch fader ranges, as a fraction of the track's tempo."""
HOT_CUES = 8
"""Hot cues per deck."""
FX_SLOTS = 3
"""Effect slots per deck (``fx0`` .. ``fx2``), after the deck filter and before the PFL tap and the fader."""

# Continuous deck parameters: name -> (low, high, default). "stem.NAME" and "mute.NAME"/"solo.NAME" are per stem.
DECK_PARAMS = {
    "volume": (0.0, 1.0, 1.0),          # channel fader, linear gain
    "gain_db": (-24.0, 12.0, 0.0),      # trim, on top of auto-gain
    "eq_low_db": (-math.inf, 6.0, 0.0),  # <= -80 is a kill
    "eq_mid_db": (-math.inf, 6.0, 0.0),
    "eq_high_db": (-math.inf, 6.0, 0.0),
    "filter": (-1.0, 1.0, 0.0),          # -1 low-pass .. 0 off .. +1 high-pass
    "pitch": (-0.5, 0.5, 0.0),           # tempo change, fraction (+0.08 = 8 % faster), within the pitch range
    "key_shift": (-12.0, 12.0, 0.0),     # semitones
    "stem": (0.0, 2.0, 1.0),             # stem.NAME: linear gain of one stem
}
# Continuous engine-wide parameters.
GLOBAL_PARAMS = {
    "crossfader": (-1.0, 1.0, 0.0),      # -1 full left (side A) .. +1 full right (side B)
    "master_gain_db": (-40.0, 6.0, 0.0),
    "cue_mix": (0.0, 1.0, 0.0),          # headphones: 0 cue only .. 1 master only
    "headphone_gain_db": (-40.0, 6.0, 0.0),
    "master_bpm": (20.0, 300.0, 120.0),  # tempo of the sync clock when no deck leads it
}

# name -> (needs a deck, {argument: kind}); kinds: "bool", "number", "int", "str", "beats", "stem", "time".
COMMANDS: dict[str, tuple[bool, dict[str, str]]] = {
    "load": (True, {"track": "str", "crate": "str"}),
    "eject": (True, {}),
    "play": (True, {}),
    "pause": (True, {}),
    "play_pause": (True, {}),
    "cue_press": (True, {}),
    "cue_release": (True, {}),
    "cue_set": (True, {}),
    "seek": (True, {"seconds": "number", "beat": "number", "frame": "number"}),
    "hotcue": (True, {"n": "int"}),
    "hotcue_set": (True, {"n": "int"}),
    "hotcue_clear": (True, {"n": "int"}),
    "loop": (True, {"beats": "beats"}),
    "loop_exit": (True, {}),
    "reloop": (True, {}),
    "loop_roll": (True, {"beats": "beats"}),
    "loop_roll_release": (True, {}),
    "beat_jump": (True, {"beats": "number"}),
    "nudge": (True, {"amount": "number"}),
    "pitch_range": (True, {"range": "number"}),
    "keylock": (True, {"on": "bool"}),
    "sync": (True, {"on": "bool"}),
    "leader": (True, {}),
    "mute": (True, {"stem": "stem", "on": "bool"}),
    "solo": (True, {"stem": "stem", "on": "bool"}),
    "pfl": (True, {"on": "bool"}),
    "xfader_side": (True, {"side": "str"}),
    "set": (False, {"param": "str", "value": "number", "ramp": "time"}),
    "bass_swap": (False, {"from_deck": "int", "to_deck": "int", "ramp": "time"}),
    "crossfader_curve": (False, {"curve": "str"}),
    "quantize": (False, {"on": "bool"}),
    "cancel": (False, {"tag": "str"}),
    "fx": (True, {"slot": "int", "effect": "name"}),
    "fx_on": (True, {"slot": "int", "on": "bool"}),
    "transition": (False, {"from_deck": "int", "to_deck": "int", "preset": "str", "bars": "int", "start": "str",
                           "out_beat": "number", "in_beat": "number"}),
}
_REQUIRED = {
    "load": ("track",), "seek": (), "hotcue": ("n",), "hotcue_set": ("n",), "hotcue_clear": ("n",), "loop": ("beats",),
    "loop_roll": ("beats",), "beat_jump": ("beats",), "nudge": ("amount",), "pitch_range": ("range",),
    "keylock": ("on",), "sync": ("on",), "mute": ("stem", "on"), "solo": ("stem", "on"), "pfl": ("on",),
    "xfader_side": ("side",), "set": ("param", "value"), "bass_swap": ("from_deck", "to_deck"),
    "crossfader_curve": ("curve",), "quantize": ("on",), "cancel": ("tag",),
    "fx": ("slot", "effect"), "fx_on": ("slot", "on"),
    "transition": ("to_deck",),
}
_SIDES = ("A", "B", "thru")


@dataclass(frozen=True)
class Command:
    """A validated command.

    Attributes
    ----------
    name : str
        One of :data:`COMMANDS`.
    deck : int
        Deck index (-1 for engine-wide commands).
    args : dict
        Validated arguments (numbers as float/int, stems as names).
    at_kind : str
        "now", "frame" or "beat".
    at_value : float
        Output frame or master beat (0 for "now").
    ramp_kind : str
        "none", "frames" or "beats" (``set`` and ``bass_swap``).
    ramp_value : float
    tag : str
        The sender's label (``"automix"``), "" for none: ``cancel`` drops the pending commands and stops the
        ramps of one tag, so a DJ can take over from an automation at any moment.
    """

    name: str
    deck: int = -1
    args: dict = field(default_factory=dict)
    at_kind: str = "now"
    at_value: float = 0.0
    ramp_kind: str = "none"
    ramp_value: float = 0.0
    tag: str = ""


def _number(value: object, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise CommandError(f"{what} must be a number, got {value!r}")
    x = float(value)
    if math.isnan(x) or math.isinf(x) and what != "value":
        raise CommandError(f"{what} must be finite, got {value!r}")
    return x


def _time(value: object, what: str, sample_rate: int, allow_frames: bool = True) -> tuple[str, float]:
    if not isinstance(value, dict) or len(value) != 1:
        raise CommandError(f"{what} must be one of {{'frame': N}}, {{'seconds': T}}, {{'beat': B}}, got {value!r}")
    (unit, raw), = value.items()
    x = _number(raw, f"{what}.{unit}")
    if unit == "beat" or unit == "beats":
        return "beats", x
    if unit in ("frame", "frames") and allow_frames:
        return "frames", x
    if unit == "seconds":
        return "frames", x * sample_rate
    raise CommandError(f"{what}: unknown unit {unit!r} (frame, seconds or beat)")


def parse_command(message: object, n_decks: int = 4, sample_rate: int = 44100) -> Command:
    """Validate one command dict.

    Parameters
    ----------
    message : dict
        ``{"cmd": NAME, "deck": INDEX, ...arguments, "at": TIME}``.
    n_decks : int
        Decks the engine has (deck indices are 0-based).
    sample_rate : int
        Engine sample rate, Hz (to turn seconds into frames).

    Raises
    ------
    CommandError
        One line naming what is wrong.
    """
    if not isinstance(message, dict):
        raise CommandError(f"a command must be an object, got {type(message).__name__}")
    name = message.get("cmd")
    if not isinstance(name, str) or name not in COMMANDS:
        raise CommandError(f"unknown command {name!r}; known: {', '.join(sorted(COMMANDS))}")
    needs_deck, spec = COMMANDS[name]
    deck = -1
    allowed = set(spec) | {"cmd", "at", "id", "tag"} | ({"deck"} if needs_deck or name == "set" else set())
    unknown = sorted(set(message) - allowed)
    if unknown:
        raise CommandError(f"{name}: unknown argument(s) {', '.join(unknown)}")
    if needs_deck or name == "set" and "deck" in message:
        raw = message.get("deck")
        if isinstance(raw, bool) or not isinstance(raw, int) or not 0 <= raw < n_decks:
            raise CommandError(f"{name}: deck must be an integer 0..{n_decks - 1}, got {raw!r}")
        deck = raw
    for arg in _REQUIRED.get(name, ()):
        if arg not in message:
            raise CommandError(f"{name}: missing argument {arg!r}")
    args: dict = {}
    ramp_kind, ramp_value = "none", 0.0
    for arg, kind in spec.items():
        if arg not in message:
            continue
        value = message[arg]
        what = f"{name}.{arg}"
        if kind == "bool":
            if not isinstance(value, bool):
                raise CommandError(f"{what} must be true or false, got {value!r}")
            args[arg] = value
        elif kind == "number":
            args[arg] = _number(value, what if arg != "value" else "value")
        elif kind == "int":
            if isinstance(value, bool) or not isinstance(value, int):
                raise CommandError(f"{what} must be an integer, got {value!r}")
            args[arg] = value
        elif kind == "str":
            if not isinstance(value, str) or not value or len(value) > 4096:
                raise CommandError(f"{what} must be a non-empty string, got {value!r}")
            args[arg] = value
        elif kind == "name":
            if not isinstance(value, str) or len(value) > 64 or value and not value.replace("-", "_").isidentifier():
                raise CommandError(f"{what} must be an effect name (letters, digits, _ or -) or \"\" for none, "
                                   f"got {value!r}")
            args[arg] = value
        elif kind == "beats":
            x = _number(value, what)
            if not any(abs(x - b) < 1e-9 for b in LOOP_BEATS):
                raise CommandError(f"{what} must be a power of two from 1/32 to 32 beats, got {value!r}")
            args[arg] = x
        elif kind == "stem":
            if value not in STEM_NAMES:
                raise CommandError(f"{what} must be one of {', '.join(STEM_NAMES)}, got {value!r}")
            args[arg] = value
        elif kind == "time":
            ramp_kind, ramp_value = _time(value, what, sample_rate)
            if ramp_value < 0:
                raise CommandError(f"{what} must not be negative, got {value!r}")
    _check_values(name, deck, args, n_decks)
    at_kind, at_value = parse_at(message.get("at"), sample_rate, f"{name}.at")
    tag = message.get("tag", "")
    if not isinstance(tag, str) or len(tag) > 64:
        raise CommandError(f"{name}.tag must be a string of at most 64 characters, got {tag!r}")
    return Command(name, deck, args, at_kind, at_value, ramp_kind, ramp_value, tag)


def parse_at(at: object, sample_rate: int = 44100, what: str = "at") -> tuple[str, float]:
    """A command's ``at``: ``("now", 0.0)`` for None, else ``("frame", output frame)`` or ``("beat", master beat)``."""
    if at is None:
        return "now", 0.0
    kind, value = _time(at, what, sample_rate)
    if kind == "beats":
        return "beat", value
    if value < 0:
        raise CommandError(f"{what} must not be negative, got {at!r}")
    return "frame", value


def fx_param_slot(param: str) -> int:
    """The slot of an effect parameter name ``fx<slot>.<param>`` (e.g. ``fx0.mix``), or -1 if it is not one.

    Raises CommandError for a name that starts like one but is malformed (a slot out of range, no parameter).
    """
    if not param.startswith("fx"):
        return -1
    base, dot, rest = param.partition(".")
    slot = base[2:]
    if not (slot.isascii() and slot.isdigit() and str(int(slot)) == slot) or not dot or not rest.isidentifier():
        raise CommandError(f"set: effect parameter must be fx<slot>.<name> (e.g. fx0.mix), got {param!r}")
    if not 0 <= int(slot) < FX_SLOTS:
        raise CommandError(f"set {param}: effect slot must be 0..{FX_SLOTS - 1}")
    return int(slot)


def _check_values(name: str, deck: int, args: dict, n_decks: int) -> None:
    if name == "seek" and len(args) != 1:
        raise CommandError("seek: give exactly one of seconds, beat, frame")
    if name in ("hotcue", "hotcue_set", "hotcue_clear") and not 1 <= args["n"] <= HOT_CUES:
        raise CommandError(f"{name}.n must be 1..{HOT_CUES}, got {args['n']}")
    if name == "nudge" and not -0.5 <= args["amount"] <= 0.5:
        raise CommandError(f"nudge.amount must be within -0.5..0.5 (a fraction of the tempo), got {args['amount']}")
    if name == "pitch_range" and not any(abs(args["range"] - r) < 1e-9 for r in PITCH_RANGES):
        raise CommandError(f"pitch_range.range must be one of {PITCH_RANGES}, got {args['range']}")
    if name == "xfader_side" and args["side"] not in _SIDES:
        raise CommandError(f"xfader_side.side must be one of {', '.join(_SIDES)}, got {args['side']!r}")
    if name == "crossfader_curve" and args["curve"] not in ("linear", "power", "cut"):
        raise CommandError(f"crossfader_curve.curve must be linear, power or cut, got {args['curve']!r}")
    if name == "transition":
        a, b = args.get("from_deck", (args["to_deck"] + 1) % n_decks), args["to_deck"]
        if not (0 <= a < n_decks and 0 <= b < n_decks) or a == b:
            raise CommandError(f"transition: from_deck and to_deck must be two different decks 0..{n_decks - 1}")
        if args.get("start", "phrase") not in ("bar", "phrase"):
            raise CommandError(f"transition.start must be bar or phrase, got {args['start']!r}")
        if "bars" in args and not 1 <= args["bars"] <= 64:
            raise CommandError(f"transition.bars must be 1..64, got {args['bars']}")
    if name == "bass_swap":
        a, b = args["from_deck"], args["to_deck"]
        if not (0 <= a < n_decks and 0 <= b < n_decks) or a == b:
            raise CommandError(f"bass_swap: from_deck and to_deck must be two different decks 0..{n_decks - 1}")
    if name in ("fx", "fx_on") and not 0 <= args["slot"] < FX_SLOTS:
        raise CommandError(f"{name}.slot must be 0..{FX_SLOTS - 1}, got {args['slot']}")
    if name == "set":
        param = args["param"]
        table = DECK_PARAMS if deck >= 0 else GLOBAL_PARAMS
        base, _, stem = param.partition(".")
        if deck >= 0 and fx_param_slot(param) >= 0:
            if math.isnan(args["value"]) or math.isinf(args["value"]):
                raise CommandError(f"set {param}: value must be finite, got {args['value']}")
            return          # the range is the effect's: the engine checks it against the slot's effect
        if deck >= 0 and base == "stem":
            if stem not in STEM_NAMES:
                raise CommandError(f"set: stem parameter must be stem.drums|bass|vocals|other, got {param!r}")
        elif stem or param not in table:
            where = "deck" if deck >= 0 else "engine-wide (no deck given)"
            raise CommandError(f"set: unknown {where} parameter {param!r}; known: {', '.join(table)}")
        low, high, _ = table[base]
        value = args["value"]
        if math.isnan(value) or not low <= value <= high:
            raise CommandError(f"set {param}: value must be within {low}..{high}, got {value}")
