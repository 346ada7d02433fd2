"""Deck effects as plugins: the interface, the registry (``ate.effects`` entry points) and the built-ins.

See docs/effects.md. :class:`Effect` is what an effect implements; a deck holds
up to :data:`engine.commands.FX_SLOTS` of them (:class:`FxUnit`), after its
filter and before the PFL tap and the fader. :func:`create_effect` builds one
by name (in the caller's thread: it allocates and may compile); the built-ins
are ``echo``, ``reverb``, ``flanger`` and ``filter``.
"""

from engine.effects.base import MIN_TEMPO_BPM, SMOOTHING_S, TAIL_FLOOR, Effect, FxUnit, Param
from engine.effects.registry import (BUILTIN, ENTRY_POINT_GROUP, EffectInfo, PluginError, create_effect, discover,
                                     effect_class, effect_names, plugin_warnings)

__all__ = ["Effect", "Param", "FxUnit", "EffectInfo", "PluginError", "create_effect", "discover", "effect_class",
           "effect_names", "plugin_warnings", "BUILTIN", "ENTRY_POINT_GROUP", "SMOOTHING_S", "TAIL_FLOOR",
           "MIN_TEMPO_BPM"]
