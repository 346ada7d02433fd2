"""Finding deck effects: the ``ate.effects`` entry points, with the built-ins as a fallback.

A package adds an effect by declaring an entry point (docs/effects.md)::

    [project.entry-points."ate.effects"]
    tremolo = "my_package.tremolo:Tremolo"

The name is what a ``fx`` command asks for; the object is an
:class:`~engine.effects.base.Effect` subclass. ATE's own effects are
registered the same way in its pyproject.toml; a source checkout whose
metadata is missing or stale (not reinstalled since) still finds them
through :data:`BUILTIN`. A plugin that fails to import or is not a valid
effect is skipped with a one-line warning naming its entry point (logger
``ate.plugins``), never an exception.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from importlib import import_module
from importlib.metadata import entry_points

import numpy as np

from engine.effects.base import Effect, Param

__all__ = ["ENTRY_POINT_GROUP", "BUILTIN", "EffectInfo", "discover", "effect_class", "create_effect",
           "effect_names", "plugin_warnings", "load_entry_point", "PluginError", "plugin_warning", "entry_point_label"]

ENTRY_POINT_GROUP = "ate.effects"
BUILTIN = {
    "echo": "engine.effects.echo:Echo",
    "reverb": "engine.effects.reverb:Reverb",
    "flanger": "engine.effects.flanger:Flanger",
    "filter": "engine.effects.filter:Filter",
}
"""The built-in effects: name -> ``module:attribute`` (also declared as entry points in pyproject.toml)."""

log = logging.getLogger("ate.plugins")


class PluginError(Exception):
    """A plugin could not be loaded or started; the message is one line."""


@dataclass(frozen=True)
class EffectInfo:
    """One effect found: its class and where it came from."""

    name: str
    cls: type
    source: str        # "entry point ate.effects: echo = engine.effects.echo:Echo (ate 0.1.0)" or "built-in ..."


_lock = threading.Lock()
_found: dict[str, EffectInfo] | None = None
_warnings: list[str] = []


def entry_point_label(ep) -> str:
    """``entry point GROUP: NAME = module:attr (dist version)``, how warnings name a plugin."""
    dist = getattr(ep, "dist", None)
    owner = f" ({dist.name} {dist.version})" if dist is not None else ""
    return f"entry point {ep.group}: {ep.name} = {ep.value}{owner}"


def load_entry_point(ep, group: str) -> object | None:
    """``ep.load()``, or None after a one-line warning naming the entry point (any exception is caught)."""
    try:
        return ep.load()
    except BaseException as err:  # noqa: BLE001 -- a plugin's import may raise anything, even SystemExit
        plugin_warning(f"{entry_point_label(ep)}: cannot be loaded: {type(err).__name__}: {_first_line(err)}")
        return None


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0][:300] if text else "(no message)"


def plugin_warning(message: str) -> None:
    """Log a one-line warning about a plugin (once per message) and keep it for ``ate plugins``."""
    if message not in _warnings:
        _warnings.append(message)
        log.warning("warning: %s", message)


def check_effect_class(cls: object, name: str) -> str:
    """Why ``cls`` is not a usable effect named ``name`` ("" when it is)."""
    if not isinstance(cls, type) or not issubclass(cls, Effect):
        return f"{cls!r} is not a subclass of engine.effects.Effect"
    if cls.name != name:
        return f"its class says name = {cls.name!r}, the entry point says {name!r}"
    params = cls.params
    if not isinstance(params, dict) or "mix" not in params:
        return "its params must be a dict of Param that includes 'mix'"
    for pname, spec in params.items():
        if not isinstance(pname, str) or not pname.isidentifier() or not isinstance(spec, Param):
            return f"parameter {pname!r} must be an identifier mapped to a Param"
        try:
            spec.check(f"parameter {pname!r}")
        except ValueError as err:
            return str(err)
    return ""


def discover(refresh: bool = False) -> dict[str, EffectInfo]:
    """Every effect found, by name: the entry points of :data:`ENTRY_POINT_GROUP`, then the built-ins missing.

    Parameters
    ----------
    refresh : bool
        Look at the installed packages again (``sys.path`` may have changed) instead of the cached answer.
    """
    global _found
    with _lock:
        if _found is not None and not refresh:
            return _found
        found: dict[str, EffectInfo] = {}
        for ep in entry_points(group=ENTRY_POINT_GROUP):
            if ep.name in found:
                continue        # the first on sys.path wins, as for imports
            cls = load_entry_point(ep, ENTRY_POINT_GROUP)
            if cls is None:
                continue
            why = check_effect_class(cls, ep.name)
            if why:
                plugin_warning(f"{entry_point_label(ep)}: not a deck effect: {why}")
                continue
            found[ep.name] = EffectInfo(ep.name, cls, entry_point_label(ep))
        for name, target in BUILTIN.items():
            if name not in found:
                module, _, attr = target.partition(":")
                found[name] = EffectInfo(name, getattr(import_module(module), attr),
                                         f"built-in {target} (no entry point: reinstall with `pip install -e .`)")
        _found = found
        return found


def effect_names() -> list[str]:
    """The names of the effects found, sorted."""
    return sorted(discover())


def plugin_warnings() -> list[str]:
    """The warnings given so far about broken plugins (one line each)."""
    return list(_warnings)


def effect_class(name: str) -> type:
    """The class of the effect ``name``; a name not found is looked up once more (a package may have been added).

    Raises
    ------
    KeyError
        One line naming the effect and the known ones.
    """
    found = discover()
    if name not in found:
        found = discover(refresh=True)
    if name not in found:
        raise KeyError(f"unknown effect {name!r}; known: {', '.join(sorted(found))}")
    return found[name].cls


def create_effect(name: str, sample_rate: int, max_block_frames: int) -> Effect:
    """A new instance of effect ``name``, warmed up: its kernel has run (compiled) on silence, then reset.

    Not for the audio thread (allocates, may compile). Raises KeyError for an unknown name and
    :class:`PluginError` (one line) when the effect fails to start.
    """
    cls = effect_class(name)
    try:
        effect = cls(sample_rate, max_block_frames)
        block = np.zeros((max_block_frames, 2), np.float32)
        targets = cls.defaults()
        targets[-1] = 0.0
        effect.process(block, max_block_frames, targets, 22050.0)
        effect.reset()
    except Exception as err:  # noqa: BLE001 -- a third-party effect may raise anything
        raise PluginError(f"effect {name!r} failed to start: {type(err).__name__}: {_first_line(err)}") from None
    return effect
