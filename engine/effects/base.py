"""The deck-effect interface: :class:`Effect`, :class:`Param`, and :class:`FxUnit` (an effect in a deck slot).

An effect is a realtime DSP unit that a deck runs after its filter, before the
PFL tap and the channel fader (docs/effects.md). It obeys the engine's
realtime rules: every buffer is allocated in ``__init__``; :meth:`Effect.process`
calls one ``numba`` kernel compiled with ``nogil=True`` that never allocates,
locks, logs or does I/O.

Parameters
----------
An effect declares its parameters in :attr:`Effect.params` (name -> :class:`Param`),
in order. The deck hands :meth:`Effect.process` a float64 array of their target
values in that order, followed by one more value, the slot's **on** switch
(1.0 on, 0.0 off). Kernels smooth every value per sample (a one-pole of a few
milliseconds, :data:`SMOOTHING_S`), so no parameter change can click, and
snap onto a target once within 1e-6 so that a settled value is exact. Every
effect has ``mix`` (0..1): at a smoothed ``mix`` of exactly 0 the block is
left untouched, bit for bit. Switching a slot off lets an effect with a tail
(echo, reverb) stop taking input and ring out ("trails"); one without a tail
fades to bypass.

Tails
-----
:meth:`Effect.process` returns whether the effect is still *active*: its input
was audible or its own memory still holds sound above :data:`TAIL_FLOOR`
(-90 dBFS). A deck that has stopped stops calling an inactive effect, so a tail
that has died away costs nothing; built-in kernels also return at once when
their input is silent and their memory is quiet.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import numba
import numpy as np

from engine.dsp import _SNAP, _flush_denormals, _smoothing_coef  # noqa: F401  (re-exported for effect kernels)

__all__ = ["Effect", "Param", "FxUnit", "SMOOTHING_S", "TAIL_FLOOR", "MIN_TEMPO_BPM", "input_silent", "smooth",
           "hermite", "smoothing_coef", "flush_denormals", "SNAP"]

_JIT = dict(nogil=True, cache=True)

SMOOTHING_S = 0.005
"""Time constant with which effect parameters follow their targets, seconds."""
TAIL_FLOOR = 10.0 ** (-90.0 / 20.0)
"""Level below which a tail counts as died away, linear (-90 dBFS)."""
MIN_TEMPO_BPM = 60.0
"""Slowest tempo at which tempo-synced delays reach their longest setting (slower ones are clamped)."""
SNAP = _SNAP
smoothing_coef = _smoothing_coef
flush_denormals = _flush_denormals


@dataclass(frozen=True)
class Param:
    """One effect parameter: its range, default and unit.

    Attributes
    ----------
    low, high : float
        Range; ``set`` refuses values outside it.
    default : float
        Value when the effect is put in a slot.
    unit : str
        What the number is: "beats", "Hz", "s", "dB", "0..1", ...
    doc : str
        One line for ``ate plugins`` and the docs.
    """

    low: float
    high: float
    default: float
    unit: str = ""
    doc: str = ""

    def check(self, where: str) -> None:
        """Raise ValueError unless ``low <= default <= high`` (all finite)."""
        if not all(math.isfinite(v) for v in (self.low, self.high, self.default)) or not (
                self.low <= self.default <= self.high):
            raise ValueError(f"{where}: needs finite low <= default <= high, got {self}")


class Effect:
    """Base class of deck effects (subclass it; see docs/effects.md for a complete third-party example).

    Parameters
    ----------
    sample_rate : int
        Engine sample rate, Hz.
    max_block_frames : int
        Largest ``n_frames`` :meth:`process` is given.

    Class attributes
    ----------------
    name : str
        The name a ``fx`` command uses (the entry point's name).
    params : dict of str -> Param
        The parameters, in the order of :meth:`process`'s ``params`` array; must include ``mix``.
    description : str
        One line.
    """

    name: ClassVar[str] = ""
    params: ClassVar[dict[str, Param]] = {}
    description: ClassVar[str] = ""
    kernel: ClassVar[object] = None
    """The effect's numba kernel, when :meth:`process` is ``kernel(*kernel_args(...))`` (the built-ins)."""

    def __init__(self, sample_rate: int, max_block_frames: int) -> None:
        self.sample_rate = int(sample_rate)
        self.max_block_frames = int(max_block_frames)

    def process(self, block: np.ndarray, n_frames: int, params: np.ndarray, frames_per_beat: float) -> bool:
        """Process ``block[:n_frames]`` in place; returns whether the effect is still active (see the module doc).

        Parameters
        ----------
        block : np.ndarray
            float32 ``(frames, 2)``, C-contiguous (the deck's own buffer).
        n_frames : int
            Frames to process, at most ``max_block_frames``.
        params : np.ndarray
            float64 targets: one per entry of :attr:`params`, in order, then the on switch (0 or 1).
        frames_per_beat : float
            The deck's beat length in output frames (the master's for a synced deck), for tempo-synced effects.

        The default calls ``kernel(*kernel_args(block, n_frames, params, frames_per_beat))``; an effect may
        instead override this method (it must still call one nogil kernel and nothing else that allocates).
        """
        return self.kernel(*self.kernel_args(block, n_frames, params, frames_per_beat))

    def kernel_args(self, block: np.ndarray, n_frames: int, params: np.ndarray, frames_per_beat: float) -> tuple:
        """The arguments of :attr:`kernel` for one block (its state arrays are the effect's own)."""
        raise NotImplementedError(f"{type(self).__name__} defines neither process nor kernel_args")

    def reset(self) -> None:
        """Forget the past (silence in every delay line, smoothed values back to their start). Not realtime."""

    @classmethod
    def defaults(cls) -> np.ndarray:
        """The targets array of a fresh slot: each parameter's default, then on = 1."""
        return np.array([p.default for p in cls.params.values()] + [1.0], dtype=np.float64)


@numba.njit(**_JIT)
def input_silent(block, n_frames, floor):
    """Whether every sample of ``block[:n_frames]`` is within ``±floor`` (stops at the first one that is not)."""
    for i in range(n_frames):
        if abs(block[i, 0]) > floor or abs(block[i, 1]) > floor:
            return False
    return True


@numba.njit(**_JIT)
def smooth(current, target, coef):
    """One per-sample step of a one-pole from ``current`` towards ``target``, snapping onto it within 1e-6."""
    current += (target - current) * coef
    if abs(target - current) < _SNAP:
        current = target
    return current


@numba.njit(**_JIT)
def hermite(line, ch, pos, mask):
    """Channel ``ch`` of the ring buffer ``line`` (frames, channels; ``mask`` = frames - 1, a power of two minus one)
    read at fractional frame ``pos`` (4-point, 3rd-order Hermite interpolation)."""
    i = int(math.floor(pos))
    f = pos - i
    xm1 = line[(i - 1) & mask, ch]
    x0 = line[i & mask, ch]
    x1 = line[(i + 1) & mask, ch]
    x2 = line[(i + 2) & mask, ch]
    c1 = 0.5 * (x1 - xm1)
    c2 = xm1 - 2.5 * x0 + 2.0 * x1 - 0.5 * x2
    c3 = 0.5 * (x2 - xm1) + 1.5 * (x0 - x1)
    return ((c3 * f + c2) * f + c1) * f + x0


class FxUnit:
    """An effect instance in a deck slot with its parameter targets, as the audio thread uses it.

    Built in the caller's thread by ``Engine.send`` (a ``fx`` command) and handed to the audio thread;
    :meth:`__getitem__` / :meth:`__setitem__` make it the store that ``set`` and its ramps write into,
    under the names ``fx<slot>.<param>``.

    Parameters
    ----------
    effect : Effect
        The instance (already warmed up: its kernel compiled).
    slot : int
        The deck slot (0-based).
    """

    def __init__(self, effect: Effect, slot: int) -> None:
        self.effect = effect
        self.name = type(effect).name
        self.slot = slot
        self.names = tuple(type(effect).params)
        self.targets = type(effect).defaults()
        self._index = {f"fx{slot}.{n}": i for i, n in enumerate(self.names)}
        self.active = True       # what the last process call returned

    def __contains__(self, param: str) -> bool:
        return param in self._index

    def __getitem__(self, param: str) -> float:
        return float(self.targets[self._index[param]])

    def __setitem__(self, param: str, value: float) -> None:
        self.targets[self._index[param]] = value

    @property
    def on(self) -> bool:
        return self.targets[-1] > 0.5

    def set_on(self, on: bool) -> None:
        self.targets[-1] = 1.0 if on else 0.0

    def values(self) -> dict:
        """``{param: target}`` (plain names, no ``fx<slot>.`` prefix)."""
        return {n: float(self.targets[i]) for i, n in enumerate(self.names)}

    def process(self, block: np.ndarray, n_frames: int, frames_per_beat: float) -> bool:
        self.active = self.effect.process(block, n_frames, self.targets, frames_per_beat)
        return self.active
