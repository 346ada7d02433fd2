"""Transition presets: per-stem gain, EQ, filter and effect curves over bars, compiled into engine commands.

A transition moves the mix from an outgoing deck to an incoming one over a
number of bars, anchored to the incoming track's downbeats (its bar 0 is the
downbeat it starts on). A preset is a TOML file in ``presets/transitions/``::

    name = "bass-swap"
    description = "Drums and chords cross over 16 bars; the bass lines swap on the downbeat of bar 8."
    bars = 16               # its length
    min_bars = 8            # the planner may shorten it to this (curves scale, on whole bars)
    swap_bar = 8            # where the bass changes hands (reported; curves say what happens)
    vocal_safe = false      # true: the two vocal stems are never up at once (checked when loaded)
    hides_key_clash = false # true: keys that do not mix can meet here (little or no harmonic overlap)
    baseline = false        # true: a plain reference (a crossfade) that may overlap the bass lines; the
                            # planner never picks it, only --transition or ate bench automix does

    [out]                   # the outgoing deck: control -> [[bar, value], ...], linear between points
    "stem.bass" = [[0, 1], [8, 1], [8, 0]]          # two points on one bar: a step (a 2.9 ms fade)
    "stem.drums" = [[0, 1], [12, 1], [16, 0]]
    [in]
    "stem.bass" = [[0, 0], [8, 0], [8, 1]]

Controls are the engine's deck parameters (docs/engine.md): ``stem.drums``,
``stem.bass``, ``stem.vocals``, ``stem.other`` (linear gain, 0–2),
``volume`` (0–1), ``eq_low_db``, ``eq_mid_db``, ``eq_high_db`` (dB, ≤ −80
kills), ``filter`` (−1 low-pass … 0 … +1 high-pass), and the parameters of a
deck effect (``fx0.mix``, ``fx0.feedback``, …) once an ``[out.fx]`` /
``[in.fx]`` table puts one in slot 0 (``effect = "echo"`` plus fixed
parameters). ``in_start_bar`` (default 0) starts the incoming deck later than
the transition (an echo out lets the outgoing deck ring first);
``tail_bars`` keeps the outgoing deck running after the last bar (so an echo
tail can die away) before it is stopped.

:func:`compile_transition` turns a preset into timed engine commands (``at``
in master beats, ramps in beats), tagged so that ``cancel`` stops them when a
DJ takes over. A step becomes one ``set`` at its beat (the engine fades gains
over 2.9 ms so it cannot click); a slope becomes a ``set`` with a ramp.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

from prep.runtime import key_line, loads_with_line, table_line
from engine.commands import DECK_PARAMS
from prep.stems import STEM_NAMES

__all__ = ["Transition", "Curve", "TransitionError", "load_transition", "parse_transition", "load_library",
           "compile_transition", "transition_end_beat", "touched_params", "rest_commands", "TRANSITIONS_DIR",
           "DEFAULT_TRANSITION", "ROLES", "AUDIBLE_GAIN"]

TRANSITIONS_DIR = Path(__file__).resolve().parent.parent / "presets" / "transitions"
"""The shipped presets."""
DEFAULT_TRANSITION = "bass-swap"
ROLES = ("out", "in")
AUDIBLE_GAIN = 0.05
"""A stem gain above this (−26 dB) counts as sounding, for the vocal-safe check."""
_KEYS = {"name", "description", "bars", "min_bars", "swap_bar", "vocal_safe", "hides_key_clash", "in_start_bar",
         "tail_bars", "baseline", "out", "in"}
_FX_SLOT = 0


class TransitionError(ValueError):
    """A preset is malformed; the message is ``FILE:LINE: why``."""


@dataclass(frozen=True)
class Curve:
    """One control of one deck over the transition: ``(bar, value)`` points, linear between them."""

    param: str
    points: tuple[tuple[float, float], ...]

    def value_at(self, bar: float) -> float:
        """The control's value at ``bar`` (after a step when ``bar`` is exactly on it)."""
        pts = self.points
        if bar < pts[0][0]:
            return pts[0][1]
        value = pts[-1][1]
        for (b0, v0), (b1, v1) in zip(pts, pts[1:]):
            if b0 <= bar < b1:
                return v0 + (v1 - v0) * (bar - b0) / (b1 - b0)
        return value

    def scaled(self, factor: float) -> Curve:
        # Points on whole bars stay on whole bars: a swap lands on a downbeat at any length.
        return Curve(self.param, tuple((_round_bar(b * factor), v) for b, v in self.points))


def _round_bar(bar: float) -> float:
    return float(round(bar)) if bar >= 1.0 else round(bar * 4.0) / 4.0


@dataclass(frozen=True)
class Transition:
    """A parsed transition preset (see the module docstring for the fields)."""

    name: str
    description: str
    bars: int
    min_bars: int
    curves: dict = field(default_factory=dict)      # role -> {param: Curve}
    effects: dict = field(default_factory=dict)     # role -> {"effect": name, params...}
    swap_bar: float | None = None
    vocal_safe: bool = False
    hides_key_clash: bool = False
    in_start_bar: float = 0.0
    tail_bars: float = 0.0
    baseline: bool = False
    path: str = ""

    def curve(self, role: str, param: str) -> Curve | None:
        return self.curves.get(role, {}).get(param)

    def value(self, role: str, param: str, bar: float) -> float:
        """A control's value at ``bar``: its curve, or the deck default (the outgoing deck at rest before its curve
        starts, the incoming deck silent before ``in_start_bar``)."""
        c = self.curve(role, param)
        if c is not None:
            return c.value_at(bar)
        base = param.partition(".")[0]
        return DECK_PARAMS[base][2] if base in DECK_PARAMS else 0.0

    def with_bars(self, bars: int) -> Transition:
        """The same transition over ``bars`` (clamped to ``min_bars``..``bars``): every point scaled."""
        bars = int(min(max(bars, self.min_bars), self.bars))
        if bars == self.bars:
            return self
        f = bars / self.bars
        return replace(self, bars=bars,
                       curves={r: {p: c.scaled(f) for p, c in cs.items()} for r, cs in self.curves.items()},
                       swap_bar=None if self.swap_bar is None else _round_bar(self.swap_bar * f),
                       in_start_bar=_round_bar(self.in_start_bar * f), tail_bars=self.tail_bars)

    def overlap_bars(self, stem: str, step_bars: float = 1.0 / 16.0) -> float:
        """Bars during which both decks' ``stem`` gains are above :data:`AUDIBLE_GAIN` (from the curves)."""
        n = int(round(self.bars / step_bars))
        both = 0
        for i in range(n):
            bar = (i + 0.5) * step_bars
            if bar < self.in_start_bar:
                continue
            out_gain = self.value("out", f"stem.{stem}", bar) * self.value("out", "volume", bar)
            in_gain = self.value("in", f"stem.{stem}", bar) * self.value("in", "volume", bar)
            both += out_gain > AUDIBLE_GAIN and in_gain > AUDIBLE_GAIN
        return both * step_bars


def load_transition(path: str | Path) -> Transition:
    """Read and check a preset file; raises :class:`TransitionError` (``FILE:LINE: why``)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise TransitionError(f"{path}:0: cannot read the preset ({err})") from None
    return parse_transition(text, str(path))


def parse_transition(text: str, where: str = "<transition>") -> Transition:
    """Parse and check a transition preset's TOML text (``where`` names it in errors)."""
    data, line, why = loads_with_line(text)
    if data is None:
        raise TransitionError(f"{where}:{line}: not valid TOML ({why})")

    def fail(line: int, why: str) -> None:
        raise TransitionError(f"{where}:{line}: {why}")

    for key in data:
        if key not in _KEYS:
            fail(key_line(text, 0, key) if not isinstance(data[key], dict) else table_line(text, key),
                 f"unknown key {key!r}; known: {', '.join(sorted(_KEYS))}")
    name = data.get("name")
    if not isinstance(name, str) or not name.strip():
        fail(key_line(text, 0, "name"), "a preset needs a name (a non-empty string)")
    bars = data.get("bars")
    if isinstance(bars, bool) or not isinstance(bars, int) or not 1 <= bars <= 64:
        fail(key_line(text, 0, "bars"), f"bars must be a whole number of bars 1..64, got {bars!r}")
    min_bars = data.get("min_bars", bars)
    if isinstance(min_bars, bool) or not isinstance(min_bars, int) or not 1 <= min_bars <= bars:
        fail(key_line(text, 0, "min_bars"), f"min_bars must be 1..bars ({bars}), got {min_bars!r}")
    numbers = {}
    for key, low, high in (("swap_bar", 0, bars), ("in_start_bar", 0, bars), ("tail_bars", 0, 16)):
        value = data.get(key)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= high:
            fail(key_line(text, 0, key), f"{key} must be a number of bars {low}..{high}, got {value!r}")
        numbers[key] = float(value)
    flags = {}
    for key in ("vocal_safe", "hides_key_clash", "baseline"):
        value = data.get(key, False)
        if not isinstance(value, bool):
            fail(key_line(text, 0, key), f"{key} must be true or false, got {value!r}")
        flags[key] = value
    curves: dict = {}
    effects: dict = {}
    for role in ROLES:
        table = data.get(role, {})
        start = table_line(text, role)
        if not isinstance(table, dict):
            fail(key_line(text, 0, role), f"[{role}] must be a table of control = [[bar, value], ...]")
        curves[role] = {}
        fx = table.get("fx")
        if fx is not None:
            fx_line = table_line(text, f"{role}.fx")
            if not isinstance(fx, dict) or not isinstance(fx.get("effect"), str) or not fx["effect"]:
                fail(fx_line, f"[{role}.fx] needs effect = NAME (a deck effect) and optional fixed parameters")
            for param, value in fx.items():
                if param != "effect" and (isinstance(value, bool) or not isinstance(value, (int, float))):
                    fail(key_line(text, fx_line, param), f"[{role}.fx] {param} must be a number, got {value!r}")
            effects[role] = dict(fx)
        for param, points in table.items():
            if param == "fx":
                continue
            line = key_line(text, start, param)
            _check_param(param, role, effects, fail, line)
            curves[role][param] = Curve(param, _check_points(param, points, bars, fail, line))
    t = Transition(name=name.strip(), description=str(data.get("description", "")).strip(), bars=bars,
                   min_bars=min_bars, curves=curves, effects=effects, swap_bar=numbers.get("swap_bar"),
                   vocal_safe=flags["vocal_safe"], hides_key_clash=flags["hides_key_clash"],
                   in_start_bar=numbers.get("in_start_bar", 0.0), tail_bars=numbers.get("tail_bars", 0.0),
                   baseline=flags["baseline"], path=where)
    if t.curve("in", "volume") is None and all(t.curve("in", f"stem.{s}") is None for s in STEM_NAMES):
        fail(table_line(text, "in"), "[in] brings nothing in: give the incoming deck's volume or stem curves")
    for param, curve in curves["in"].items():
        if param.startswith("fx"):
            continue
        rest = DECK_PARAMS[param.partition(".")[0]][2]
        if curve.points[-1][1] != rest:
            fail(key_line(text, table_line(text, "in"), param), f"[in] {param} must end at its resting value "
                 f"{rest:g}, so that the incoming track plays on as it is (it ends at {curve.points[-1][1]:g})")
    for stem in (() if t.baseline else ("bass",)) + (("vocals",) if t.vocal_safe else ()):
        both = t.overlap_bars(stem)
        if both > 0.0:
            fail(table_line(text, "in"), f"the two {stem} stems are up together for {both:g} bars; "
                 + ("a vocal-safe preset never lets both vocals sound" if stem == "vocals"
                    else "two basslines fight: hand the bass over (a step) instead"))
    return t


def _check_param(param: str, role: str, effects: dict, fail, line: int) -> None:
    base, _, sub = param.partition(".")
    if base == "stem":
        if sub not in STEM_NAMES:
            fail(line, f"[{role}] {param}: a stem control is stem.{'|'.join(STEM_NAMES)}")
        return
    if base == f"fx{_FX_SLOT}":
        if role not in effects:
            fail(line, f"[{role}] {param}: no effect in slot {_FX_SLOT}; add [{role}.fx] effect = NAME first")
        if not sub:
            fail(line, f"[{role}] {param}: name the effect's parameter, e.g. fx{_FX_SLOT}.mix")
        return
    if param not in DECK_PARAMS or param in ("pitch", "key_shift", "gain_db"):
        known = ["volume", "eq_low_db", "eq_mid_db", "eq_high_db", "filter"] + [f"stem.{s}" for s in STEM_NAMES]
        fail(line, f"[{role}] unknown control {param!r}; known: {', '.join(known)}, fx{_FX_SLOT}.PARAM")


def _check_points(param: str, points: object, bars: int, fail, line: int) -> tuple[tuple[float, float], ...]:
    if not isinstance(points, list) or not points:
        fail(line, f"{param} must be a list of [bar, value] points, got {points!r}")
    out = []
    for p in points:
        if (not isinstance(p, list) or len(p) != 2
                or any(isinstance(x, bool) or not isinstance(x, (int, float)) for x in p)):
            fail(line, f"{param}: each point is [bar, value] (two numbers), got {p!r}")
        bar, value = float(p[0]), float(p[1])
        if not 0.0 <= bar <= bars:
            fail(line, f"{param}: bar {bar:g} is outside the transition (0..{bars})")
        if out and bar < out[-1][0]:
            fail(line, f"{param}: bars must not go back ({out[-1][0]:g} then {bar:g})")
        base = param.partition(".")[0]
        if base in DECK_PARAMS:
            low, high, _ = DECK_PARAMS[base]
            if not (low <= value <= high or (base.startswith("eq_") and value <= high)):
                fail(line, f"{param}: value {value:g} is outside {low:g}..{high:g}")
        out.append((bar, value))
    return tuple(out)


def load_library(folder: str | Path | None = None) -> dict[str, Transition]:
    """Every preset in ``folder`` (default: :data:`TRANSITIONS_DIR`), by name; a bad file raises its error."""
    folder = Path(folder) if folder is not None else TRANSITIONS_DIR
    library = {}
    for path in sorted(folder.glob("*.toml")):
        t = load_transition(path)
        if t.name in library:
            raise TransitionError(f"{path}:1: a preset named {t.name!r} is already in {library[t.name].path}")
        library[t.name] = t
    return library


def compile_transition(t: Transition, out_deck: int, in_deck: int, start_beat: float, beats_per_bar: int = 4,
                       tag: str = "automix", play_in: bool = True, stop_out: bool = True,
                       lead: bool = True) -> list[dict]:
    """Engine commands that play ``t`` from master beat ``start_beat`` (the incoming track's downbeat).

    Parameters
    ----------
    t : Transition
        The preset (already :meth:`~Transition.with_bars` when shortened).
    out_deck, in_deck : int
        Engine decks.
    start_beat : float
        Master beat of bar 0 (a downbeat of both tracks when the planner aligned them).
    beats_per_bar : int
        Beats in a bar of the master.
    tag : str
        Put on every command (``cancel`` with this tag stops them all).
    play_in : bool
        Start the incoming deck at ``in_start_bar`` (it must be loaded, synced and cued on its downbeat).
    stop_out : bool
        Pause the outgoing deck after the last bar and ``tail_bars``, then put the parameters the preset moved
        back at rest.
    lead : bool
        Make the incoming deck the sync leader at the swap bar (the master tempo carries on).

    Returns
    -------
    list of dict
        Commands with ``at = {"beat": B}``, in time order (those at one beat in the order they must apply:
        values before the play that makes them heard).
    """
    commands: list[tuple[float, int, dict]] = []
    seq = 0

    def add(beat: float, message: dict) -> None:
        nonlocal seq
        message = dict(message, at={"beat": float(beat)}, tag=tag)
        commands.append((float(beat), seq, message))
        seq += 1

    def beat_of(bar: float) -> float:
        return start_beat + bar * beats_per_bar

    in_params = t.curves.get("in", {})
    for param in touched_params(t):
        if param not in in_params:
            # A deck that was the outgoing one last time may still hold that transition's end values.
            add(beat_of(t.in_start_bar) - beats_per_bar,
                {"cmd": "set", "deck": in_deck, "param": param, "value": DECK_PARAMS[param.partition(".")[0]][2]})
    for role, deck in (("out", out_deck), ("in", in_deck)):
        fx = t.effects.get(role)
        if fx is not None:
            add(beat_of(0), {"cmd": "fx", "deck": deck, "slot": _FX_SLOT, "effect": fx["effect"]})
            for param, value in fx.items():
                if param != "effect":
                    add(beat_of(0), {"cmd": "set", "deck": deck, "param": f"fx{_FX_SLOT}.{param}", "value": value})
        for param, curve in t.curves.get(role, {}).items():
            pts = curve.points
            # The incoming deck takes its first values a bar before it starts, while it is still stopped: a gain
            # set without a ramp glides for 2.9 ms, which must not be heard.
            first = beat_of(0.0) if role == "out" else beat_of(min(pts[0][0], t.in_start_bar)) - beats_per_bar
            add(first, {"cmd": "set", "deck": deck, "param": param, "value": pts[0][1]})
            for (b0, v0), (b1, v1) in zip(pts, pts[1:]):
                if b1 == b0:
                    add(beat_of(b1), {"cmd": "set", "deck": deck, "param": param, "value": v1})
                elif v1 != v0:
                    add(beat_of(b0), {"cmd": "set", "deck": deck, "param": param, "value": v1,
                                      "ramp": {"beats": (b1 - b0) * beats_per_bar}})
    if play_in:
        add(beat_of(t.in_start_bar), {"cmd": "play", "deck": in_deck})
    if lead:
        # The incoming deck takes the sync lead once it carries the mix (the bass has changed hands).
        handover = t.swap_bar if t.swap_bar is not None else t.bars / 2.0
        add(beat_of(max(handover, t.in_start_bar)), {"cmd": "leader", "deck": in_deck})
    if stop_out:
        end = beat_of(t.bars + t.tail_bars)
        add(end, {"cmd": "pause", "deck": out_deck})
        # Once it has faded out, the outgoing deck is back at rest, ready for the next track a DJ loads.
        for message in rest_commands(t, "out", out_deck):
            add(end + 1.0, message)
    commands.sort(key=lambda c: (c[0], c[1]))
    return [c[2] for c in commands]


def touched_params(t: Transition) -> list[str]:
    """The deck parameters a preset moves on either deck (effect parameters excluded)."""
    names = {p for role in ROLES for p in t.curves.get(role, {}) if not p.startswith("fx")}
    return sorted(names)


def rest_commands(t: Transition, role: str, deck: int) -> list[dict]:
    """Commands that put the parameters ``t`` moves back at their resting values (and clear its effect)."""
    out = [{"cmd": "set", "deck": deck, "param": p, "value": DECK_PARAMS[p.partition(".")[0]][2]}
           for p in touched_params(t)]
    if role in t.effects:
        out.append({"cmd": "fx", "deck": deck, "slot": _FX_SLOT, "effect": ""})
    return out


def transition_end_beat(t: Transition, start_beat: float, beats_per_bar: int = 4) -> float:
    """Master beat at which the outgoing deck is stopped."""
    return start_beat + (t.bars + t.tail_bars) * beats_per_bar

