"""Control surfaces as plugins: the ``ate.controllers`` entry points, the MIDI bridge as one, ``ate plugins``.

A control surface drives an engine over the protocol (docs/protocol.md) from
its own threads: it is given a *connect* function that returns a new
:class:`~controllers.client.EngineClient` each time it is called, and its
options; it starts in ``__init__`` and stops in :meth:`Surface.close`. A
package adds one by declaring an entry point (docs/plugins.md)::

    [project.entry-points."ate.controllers"]
    osc = "my_package.osc:OscSurface"

``ate engine --surface NAME[:OPTIONS]`` and ``ate live --surface ...`` start
them (OPTIONS: ``key=value`` items separated by commas; a bare item sets the
surface's :attr:`Surface.positional` option), and ``ate plugins`` lists the
effects and surfaces found with where each came from. A broken entry point is
a one-line warning naming it (logger ``ate.plugins``), never a crash.

This module imports nothing heavy at the top (``ate --help`` stays fast).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass
from importlib import import_module
from importlib.metadata import entry_points
from typing import ClassVar

__all__ = ["Surface", "SurfaceError", "SurfaceInfo", "MidiSurface", "ENTRY_POINT_GROUP", "BUILTIN", "discover",
           "surface_class", "parse_surface_spec", "check_surface_spec", "start_surface", "register_cli"]

ENTRY_POINT_GROUP = "ate.controllers"
BUILTIN = {"midi": "controllers.surfaces:MidiSurface"}
"""Built-in surfaces: name -> ``module:attribute`` (also declared as entry points in pyproject.toml)."""

log = logging.getLogger("ate.plugins")


class SurfaceError(Exception):
    """A surface could not be found, configured or started; the message is one line."""


class Surface:
    """Base class of control surfaces.

    Parameters
    ----------
    connect : callable
        ``connect() -> EngineClient``: a new client of the engine (commands and the state stream) on each call;
        the surface closes the clients it made.
    options : dict of str -> str
        The surface's options, as given (``ate engine --surface NAME:key=value,...``); only names in
        :attr:`options` reach it (others are refused before it is built).

    Class attributes
    ----------------
    name : str
        The entry point's name.
    description : str
        One line, for ``ate plugins``.
    options : dict of str -> str
        Option name -> one line of help.
    positional : str
        The option that an item without ``=`` sets (e.g. the MIDI preset), or "".
    """

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    options: ClassVar[dict[str, str]] = {}
    positional: ClassVar[str] = ""

    def __init__(self, connect: Callable, options: dict[str, str]) -> None:
        self.connect = connect
        self.settings = dict(options)

    def describe(self) -> dict:
        """What it is doing, JSON-ready (printed when ``ate engine`` starts it)."""
        return {"surface": self.name, "options": self.settings}

    def close(self) -> None:
        """Stop its threads and close its clients (idempotent)."""

    def __enter__(self) -> Surface:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


@dataclass(frozen=True)
class SurfaceInfo:
    name: str
    cls: type
    source: str


_lock = threading.Lock()
_found: dict[str, SurfaceInfo] | None = None


def discover(refresh: bool = False) -> dict[str, SurfaceInfo]:
    """Every surface found, by name: the entry points of :data:`ENTRY_POINT_GROUP`, then the built-ins missing."""
    from engine.effects.registry import entry_point_label, load_entry_point, plugin_warning

    global _found
    with _lock:
        if _found is not None and not refresh:
            return _found
        found: dict[str, SurfaceInfo] = {}
        for ep in entry_points(group=ENTRY_POINT_GROUP):
            if ep.name in found:
                continue
            cls = load_entry_point(ep, ENTRY_POINT_GROUP)
            if cls is None:
                continue
            if not isinstance(cls, type) or not issubclass(cls, Surface):
                plugin_warning(f"{entry_point_label(ep)}: not a control surface: {cls!r} is not a subclass of "
                               f"controllers.surfaces.Surface")
                continue
            if cls.name != ep.name:
                plugin_warning(f"{entry_point_label(ep)}: not a control surface: its class says "
                               f"name = {cls.name!r}")
                continue
            found[ep.name] = SurfaceInfo(ep.name, cls, entry_point_label(ep))
        for name, target in BUILTIN.items():
            if name not in found:
                module, _, attr = target.partition(":")
                cls = getattr(import_module(module), attr)
                found[name] = SurfaceInfo(name, cls, f"built-in {target} (no entry point: reinstall with "
                                                     f"`pip install -e .`)")
        _found = found
        return found


def surface_class(name: str) -> type:
    """The class of surface ``name`` (looked up once more if not found: a package may have been added)."""
    found = discover()
    if name not in found:
        found = discover(refresh=True)
    if name not in found:
        raise SurfaceError(f"unknown control surface {name!r}; known: {', '.join(sorted(found))}")
    return found[name].cls


def parse_surface_spec(spec: str) -> tuple[str, dict[str, str]]:
    """``"NAME[:OPTIONS]"`` -> ``(NAME, {option: value})``; a bare item is stored under "" (the positional one)."""
    name, _, rest = spec.partition(":")
    if not name:
        raise SurfaceError(f"--surface {spec!r}: give NAME[:key=value,...]")
    options: dict[str, str] = {}
    for item in filter(None, (part.strip() for part in rest.split(","))):
        key, eq, value = item.partition("=")
        key, value = (key.strip(), value.strip()) if eq else ("", item)
        if key in options:
            raise SurfaceError(f"--surface {spec!r}: option {key or '(positional)'!r} given twice")
        options[key] = value
    return name, options


def check_surface_spec(spec: str) -> tuple[type, dict[str, str]]:
    """The class and checked options of a ``--surface`` spec (before any engine starts). Raises SurfaceError."""
    name, options = parse_surface_spec(spec)
    cls = surface_class(name)
    if "" in options:
        if not cls.positional:
            raise SurfaceError(f"--surface {name}: takes key=value options only ({', '.join(cls.options) or 'none'})")
        if cls.positional in options:
            raise SurfaceError(f"--surface {name}: {cls.positional} given twice")
        options[cls.positional] = options.pop("")
    unknown = sorted(set(options) - set(cls.options))
    if unknown:
        raise SurfaceError(f"--surface {name}: unknown option(s) {', '.join(unknown)}; known: "
                           f"{', '.join(cls.options) or 'none'}")
    return cls, options


def start_surface(spec: str, connect: Callable) -> Surface:
    """Build and start the surface of a ``--surface`` spec; any failure is a one-line SurfaceError."""
    cls, options = check_surface_spec(spec)
    try:
        return cls(connect, options)
    except SurfaceError:
        raise
    except Exception as err:  # noqa: BLE001 -- a third-party surface may raise anything
        text = str(err).strip().splitlines()[0][:300] if str(err).strip() else type(err).__name__
        raise SurfaceError(f"surface {cls.name!r} failed to start: {type(err).__name__}: {text}") from None


# --------------------------------------------------------------------------- the built-in MIDI surface


class MidiSurface(Surface):
    """The MIDI bridge (:class:`controllers.midi.MidiBridge`) as a control surface: ``midi:PRESET[,port=...]``."""

    name = "midi"
    description = "a MIDI controller through a mapping preset (docs/midi.md)"
    positional = "preset"
    options = {"preset": "a preset name in presets/ (e.g. pioneer-ddj-flx4) or a preset file (required)",
               "port": "part of the MIDI port names (default: the preset's)",
               "api": "jack or alsa (default: rtmidi's)",
               "decks": "engine decks for the controller's decks, joined by + (e.g. 2+3)",
               "crate": "a prepared crate for the browse encoder and load buttons"}

    def __init__(self, connect: Callable, options: dict[str, str]) -> None:
        super().__init__(connect, options)
        from pathlib import Path

        from controllers.midi import PRESETS_DIR, MidiBridge, MidiPortError, PresetError, load_preset

        name = options.get("preset")
        if not name:
            raise SurfaceError("--surface midi: needs a preset, e.g. midi:pioneer-ddj-flx4")
        if options.get("api") not in (None, "jack", "alsa"):
            raise SurfaceError(f"--surface midi: api must be jack or alsa, got {options['api']!r}")
        try:
            decks = [int(d) for d in options["decks"].split("+")] if options.get("decks") else None
        except ValueError:
            raise SurfaceError(f"--surface midi: decks must be numbers joined by +, got {options['decks']!r}") from None
        shipped = PRESETS_DIR / f"{name}.toml"
        path = str(shipped) if not Path(name).exists() and shipped.exists() else name
        self.client = None
        try:
            preset = load_preset(path)
            self.client = connect()
            self.bridge = MidiBridge(preset, self.client, port=options.get("port"), api=options.get("api"),
                                     decks=decks, crate_dir=options.get("crate"))
        except (PresetError, MidiPortError, OSError) as err:
            if self.client is not None:
                self.client.close()
            raise SurfaceError(f"--surface midi: {err}") from None

    def describe(self) -> dict:
        return {"surface": self.name, "preset": self.bridge.preset.name, "input": self.bridge.input_name,
                "output": self.bridge.output_name}

    def close(self) -> None:
        if getattr(self, "bridge", None) is not None:
            self.bridge.close()
            self.bridge = None
        if self.client is not None:
            self.client.close()
            self.client = None


# --------------------------------------------------------------------------- ate plugins


def plugins_report() -> dict:
    """Every effect and surface found, with where it came from, and the warnings about broken ones."""
    from engine.effects.registry import discover as discover_effects
    from engine.effects.registry import plugin_warnings

    effects = discover_effects(refresh=True)
    surfaces = discover(refresh=True)
    return {
        "effects": [{"name": i.name, "source": i.source, "description": i.cls.description,
                     "params": {p: {"low": s.low, "high": s.high, "default": s.default, "unit": s.unit}
                                for p, s in i.cls.params.items()}} for i in effects.values()],
        "surfaces": [{"name": i.name, "source": i.source, "description": i.cls.description,
                      "options": dict(i.cls.options)} for i in surfaces.values()],
        "warnings": plugin_warnings(),
    }


def _cmd_plugins(args: argparse.Namespace) -> int:
    report = plugins_report()
    if args.json:
        print(json.dumps(report))
        return 0
    print("deck effects (ate.effects):")
    for e in report["effects"]:
        params = ", ".join(f"{p} {s['low']:g}..{s['high']:g}{' ' + s['unit'] if s['unit'] else ''} "
                           f"({s['default']:g})" for p, s in e["params"].items())
        print(f"  {e['name']:<10} {e['description']}\n  {'':<10} params: {params}\n  {'':<10} from {e['source']}")
    print("control surfaces (ate.controllers):")
    for s in report["surfaces"]:
        print(f"  {s['name']:<10} {s['description']}\n  {'':<10} options: {', '.join(s['options']) or 'none'}"
              f"\n  {'':<10} from {s['source']}")
    for w in report["warnings"]:
        print(f"warning: {w}", file=sys.stderr)
    return 0


def register_cli(subparsers) -> None:
    """``ate plugins``."""
    p = subparsers.add_parser("plugins", help="list the deck effects and control surfaces found, and from where")
    p.add_argument("--json", action="store_true", help="one JSON object")
    p.set_defaults(func=_cmd_plugins)
