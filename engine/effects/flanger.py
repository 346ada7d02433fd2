"""Flanger: a short delay swept by a tempo-synced LFO, with feedback.

Design
------
The delay sweeps between ``delay_ms`` and ``delay_ms + depth x``
:data:`SWEEP_MS` along a raised cosine, ``tau = delay_ms + depth x SWEEP_MS x
(1 - cos 2 pi phi) / 2``, whose phase ``phi`` advances one cycle every
``period_beats`` beats of the deck (the LFO follows the tempo block by block).
The line is read with 4-point Hermite interpolation (a swept delay must not
zipper) and takes ``on x x + feedback x r`` (a slot switched off drains in a
few milliseconds). The output is a crossfade ``x + mix x on x (r - x)``: at
``mix`` 0.5 without feedback it is ``(x + r) / 2``, whose notches sit at odd
multiples of ``1 / (2 tau)`` and cancel completely; feedback (negative too)
sharpens them into resonant peaks.
Both channels share the LFO (a mono-compatible sweep).
"""

from __future__ import annotations

import math

import numba
import numpy as np

from engine.effects.base import (SMOOTHING_S, TAIL_FLOOR, Effect, Param, hermite, input_silent, smooth,
                                 smoothing_coef)

__all__ = ["Flanger", "flanger_block", "SWEEP_MS"]

_JIT = dict(nogil=True, cache=True)

SWEEP_MS = 8.0
"""Sweep range at depth 1, milliseconds."""
_MAX_DELAY_MS = 12.0

_PERIOD, _DEPTH, _FEEDBACK, _DELAY_MS, _MIX, _ON = range(6)
_PHASE = 6      # LFO phase, cycles (0..1), kept after the smoothed values
_I_WRITE, _I_QUIET, _I_FRESH = range(3)


@numba.njit(**_JIT)
def flanger_block(block, n_frames, targets, cur, istate, line, frames_per_beat, sample_rate, coef, floor):
    """Flanger on ``block[:n_frames]`` in place (see :mod:`engine.effects.flanger`); returns whether it is active.

    ``targets``: period_beats, depth, feedback, delay_ms, mix, on; ``cur``: smoothed values, then the LFO phase."""
    mask = line.shape[0] - 1
    if istate[_I_FRESH] == 1:
        for k in range(_ON):
            cur[k] = targets[k]
        istate[_I_FRESH] = 0
    longest = _MAX_DELAY_MS * 1e-3 * sample_rate + 4.0
    step = 1.0 / max(targets[_PERIOD] * frames_per_beat, 1.0)     # LFO cycles per frame
    if istate[_I_QUIET] > longest and input_silent(block, n_frames, floor):
        for k in range(_ON + 1):
            cur[k] = targets[k]
        phase = cur[_PHASE] + step * n_frames
        cur[_PHASE] = phase - math.floor(phase)
        return False
    w = istate[_I_WRITE]
    quiet = istate[_I_QUIET]
    depth, fb, base, mix, on, phase = cur[_DEPTH], cur[_FEEDBACK], cur[_DELAY_MS], cur[_MIX], cur[_ON], cur[_PHASE]
    ms = 1e-3 * sample_rate
    for n in range(n_frames):
        depth = smooth(depth, targets[_DEPTH], coef)
        fb = smooth(fb, targets[_FEEDBACK], coef)
        base = smooth(base, targets[_DELAY_MS], coef)
        mix = smooth(mix, targets[_MIX], coef)
        on = smooth(on, targets[_ON], coef)
        tau = (base + depth * SWEEP_MS * 0.5 * (1.0 - math.cos(2.0 * math.pi * phase))) * ms
        phase += step
        if phase >= 1.0:
            phase -= 1.0
        pos = w - max(tau, 3.0)
        wet = mix * on
        loud = False
        for c in range(2):
            x = np.float64(block[n, c])
            r = hermite(line, c, pos, mask)
            u = on * x + fb * r
            if abs(u) > floor:
                loud = True
            elif abs(u) < 1e-30:
                u = 0.0
            line[w & mask, c] = np.float32(u)
            if wet != 0.0:
                block[n, c] = np.float32(x + wet * (r - x))
        quiet = 0 if loud else quiet + 1
        w = (w + 1) & mask
    cur[_PERIOD] = targets[_PERIOD]
    cur[_DEPTH], cur[_FEEDBACK], cur[_DELAY_MS], cur[_MIX], cur[_ON], cur[_PHASE] = depth, fb, base, mix, on, phase
    istate[_I_WRITE] = w
    istate[_I_QUIET] = quiet
    return quiet <= longest


class Flanger(Effect):
    """Tempo-synced flanger (see the module docstring)."""

    name = "flanger"
    kernel = staticmethod(flanger_block)
    description = "short delay swept by a tempo-synced LFO, with feedback"
    params = {
        "period_beats": Param(0.25, 64.0, 8.0, "beats", "one LFO sweep (down and back up)"),
        "depth": Param(0.0, 1.0, 0.7, "", f"sweep range, as a fraction of {SWEEP_MS:g} ms"),
        "feedback": Param(-0.95, 0.95, 0.5, "", "resonance of the notches (negative: odd harmonics)"),
        "delay_ms": Param(0.2, 4.0, 1.0, "ms", "shortest delay of the sweep"),
        "mix": Param(0.0, 1.0, 0.5, "", "crossfade dry -> delayed (0.5: deepest notches)"),
    }

    def __init__(self, sample_rate: int = 44100, max_block_frames: int = 1024) -> None:
        super().__init__(sample_rate, max_block_frames)
        self.line = np.zeros((1 << int(math.ceil(math.log2(_MAX_DELAY_MS * 1e-3 * self.sample_rate + 16))), 2),
                             np.float32)
        self.cur = np.zeros(len(self.params) + 2)
        self.istate = np.zeros(3, np.int64)
        self.coef = smoothing_coef(SMOOTHING_S, self.sample_rate)
        self.reset()

    def reset(self) -> None:
        self.line[:] = 0.0
        self.cur[:] = 0.0
        self.istate[:] = 0
        self.istate[_I_FRESH] = 1
        self.istate[_I_QUIET] = 1 << 40

    def kernel_args(self, block: np.ndarray, n_frames: int, params: np.ndarray, frames_per_beat: float) -> tuple:
        return (block, n_frames, params, self.cur, self.istate, self.line, frames_per_beat,
                float(self.sample_rate), self.coef, TAIL_FLOOR)
