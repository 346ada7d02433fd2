"""Echo: a tempo-synced stereo delay with feedback, a filtered feedback path and a ping-pong option.

Design
------
One delay line per channel (float32, sized for :data:`MAX_TIME_BEATS` at
:data:`~engine.effects.base.MIN_TEMPO_BPM`), read at ``time_beats x
frames_per_beat`` frames through a 4-point Hermite interpolator, so a delay
that glides (a new time, a tempo change) sweeps smoothly like a tape echo
instead of clicking. The delay in frames follows its target with a 60 ms
one-pole; the other parameters with :data:`~engine.effects.base.SMOOTHING_S`.

Per sample and channel: ``r`` is the line read at the delay; the output is
``x + mix * r`` (the dry signal is never attenuated: a DJ echo adds repeats);
what goes back into the line is ``on * x + feedback * HP(LP(r))``, with
first-order TPT low-pass (``lp_hz``) and high-pass (``hp_hz``) filters in the
loop, so repeats darken and thin out as a tape echo's do. ``pingpong`` (0..1)
blends towards a ping-pong delay: the input (summed to mono) enters the left
line only and the feedback crosses channels, so repeats alternate left, right.
With the slot off, the input stops entering the line and the repeats ring out.
The n-th repeat of a sound is at ``n x time_beats`` beats with a level of
``mix x feedback**(n - 1)`` (times the filters' response).
"""

from __future__ import annotations

import math

import numba
import numpy as np

from engine.effects.base import (MIN_TEMPO_BPM, SMOOTHING_S, TAIL_FLOOR, Effect, Param, hermite, input_silent,
                                 smooth, smoothing_coef)

__all__ = ["Echo", "echo_block", "MAX_TIME_BEATS"]

_JIT = dict(nogil=True, cache=True)

MAX_TIME_BEATS = 4.0
"""Longest delay, beats."""
DELAY_SMOOTHING_S = 0.06
"""Time constant of the delay-time glide, seconds."""

# Parameter order (the targets array) and smoothed state slots.
_TIME, _FEEDBACK, _LP, _HP, _PINGPONG, _MIX, _ON = range(7)
_DELAY = 7            # smoothed delay in frames (the state array has one more slot than the targets)
# Integer state.
_I_WRITE, _I_QUIET, _I_FRESH = range(3)


@numba.njit(**_JIT)
def _one_pole_g(freq_hz, sample_rate):
    """TPT one-pole gain ``G = g / (1 + g)``, ``g = tan(pi f / fs)``."""
    g = math.tan(math.pi * min(freq_hz, 0.45 * sample_rate) / sample_rate)
    return g / (1.0 + g)


@numba.njit(**_JIT)
def echo_block(block, n_frames, targets, cur, istate, filt, line, frames_per_beat, sample_rate, coef, delay_coef,
               floor):
    """Echo on ``block[:n_frames]`` in place (see :mod:`engine.effects.echo`); returns whether it is active.

    ``targets``: time_beats, feedback, lp_hz, hp_hz, pingpong, mix, on; ``cur``: their smoothed values and the
    smoothed delay in frames; ``istate``: write position, frames since the last audible write, fresh flag;
    ``filt``: per channel the low-pass and high-pass states, then the two filter gains."""
    mask = line.shape[0] - 1
    max_delay = float(line.shape[0] - 8)
    delay_target = min(max(targets[_TIME] * frames_per_beat, 4.0), max_delay)
    quiet = istate[_I_QUIET]
    if istate[_I_FRESH] == 1:
        # A new effect takes its parameters at once; only the on switch fades in.
        for k in range(_ON):
            cur[k] = targets[k]
        cur[_DELAY] = delay_target
        filt[4] = _one_pole_g(cur[_LP], sample_rate)
        filt[5] = _one_pole_g(cur[_HP], sample_rate)
        istate[_I_FRESH] = 0
    if quiet > cur[_DELAY] + 4.0 and input_silent(block, n_frames, floor):
        # Nothing in the line and nothing coming in: the output is the input. Settle the parameters.
        for k in range(_ON + 1):
            cur[k] = targets[k]
        cur[_DELAY] = delay_target
        filt[4] = _one_pole_g(cur[_LP], sample_rate)
        filt[5] = _one_pole_g(cur[_HP], sample_rate)
        return False
    w = istate[_I_WRITE]
    fb, lp, hp = cur[_FEEDBACK], cur[_LP], cur[_HP]
    pp, mix, on, delay = cur[_PINGPONG], cur[_MIX], cur[_ON], cur[_DELAY]
    g_lp, g_hp = filt[4], filt[5]
    for n in range(n_frames):
        fb = smooth(fb, targets[_FEEDBACK], coef)
        pp = smooth(pp, targets[_PINGPONG], coef)
        mix = smooth(mix, targets[_MIX], coef)
        on = smooth(on, targets[_ON], coef)
        delay = smooth(delay, delay_target, delay_coef)
        if lp != targets[_LP]:
            lp = smooth(lp, targets[_LP], coef)
            g_lp = _one_pole_g(lp, sample_rate)
        if hp != targets[_HP]:
            hp = smooth(hp, targets[_HP], coef)
            g_hp = _one_pole_g(hp, sample_rate)
        pos = w - delay
        r_l = hermite(line, 0, pos, mask)
        r_r = hermite(line, 1, pos, mask)
        x_l = np.float64(block[n, 0])
        x_r = np.float64(block[n, 1])
        if mix != 0.0:
            block[n, 0] = np.float32(x_l + mix * r_l)
            block[n, 1] = np.float32(x_r + mix * r_r)
        # Feedback: ping-pong crosses the channels; the loop is low-passed, then high-passed (TPT one-poles).
        f_l = (1.0 - pp) * r_l + pp * r_r
        f_r = (1.0 - pp) * r_r + pp * r_l
        v = (f_l - filt[0]) * g_lp
        f_l = v + filt[0]
        filt[0] = f_l + v
        v = (f_r - filt[1]) * g_lp
        f_r = v + filt[1]
        filt[1] = f_r + v
        v = (f_l - filt[2]) * g_hp
        f_l = f_l - (v + filt[2])
        filt[2] += 2.0 * v
        v = (f_r - filt[3]) * g_hp
        f_r = f_r - (v + filt[3])
        filt[3] += 2.0 * v
        mono = 0.5 * (x_l + x_r)
        in_l = on * ((1.0 - pp) * x_l + pp * mono)
        in_r = on * (1.0 - pp) * x_r
        w_l = in_l + fb * f_l
        w_r = in_r + fb * f_r
        if abs(w_l) > floor or abs(w_r) > floor:
            quiet = 0
        else:
            quiet += 1
            if abs(w_l) < 1e-30:     # no subnormals in the line
                w_l = 0.0
            if abs(w_r) < 1e-30:
                w_r = 0.0
        line[w & mask, 0] = np.float32(w_l)
        line[w & mask, 1] = np.float32(w_r)
        w = (w + 1) & mask
    cur[_TIME] = targets[_TIME]
    cur[_FEEDBACK], cur[_LP], cur[_HP], cur[_PINGPONG] = fb, lp, hp, pp
    cur[_MIX], cur[_ON], cur[_DELAY] = mix, on, delay
    filt[4], filt[5] = g_lp, g_hp
    for k in range(4):
        if abs(filt[k]) < 1e-30:
            filt[k] = 0.0
    istate[_I_WRITE] = w
    istate[_I_QUIET] = quiet
    return quiet <= delay + 4.0


class Echo(Effect):
    """Tempo-synced echo (see the module docstring)."""

    name = "echo"
    kernel = staticmethod(echo_block)
    description = "tempo-synced delay with feedback, a filtered feedback path and ping-pong"
    params = {
        "time_beats": Param(1.0 / 16.0, MAX_TIME_BEATS, 0.5, "beats", "delay between repeats"),
        "feedback": Param(0.0, 0.97, 0.5, "", "level of each repeat relative to the one before"),
        "lp_hz": Param(200.0, 20000.0, 8000.0, "Hz", "low-pass in the feedback path (repeats darken)"),
        "hp_hz": Param(20.0, 2000.0, 100.0, "Hz", "high-pass in the feedback path (repeats thin out)"),
        "pingpong": Param(0.0, 1.0, 0.0, "", "0 stereo, 1 ping-pong (repeats alternate left and right)"),
        "mix": Param(0.0, 1.0, 0.5, "", "level of the repeats added to the dry signal"),
    }

    def __init__(self, sample_rate: int = 44100, max_block_frames: int = 1024) -> None:
        super().__init__(sample_rate, max_block_frames)
        longest = MAX_TIME_BEATS * 60.0 / MIN_TEMPO_BPM * self.sample_rate
        self.line = np.zeros((1 << int(math.ceil(math.log2(longest + 16))), 2), np.float32)
        self.cur = np.zeros(len(self.params) + 2)
        self.istate = np.zeros(3, np.int64)
        self.filt = np.zeros(6)
        self.coef = smoothing_coef(SMOOTHING_S, self.sample_rate)
        self.delay_coef = smoothing_coef(DELAY_SMOOTHING_S, self.sample_rate)
        self.reset()

    def reset(self) -> None:
        self.line[:] = 0.0
        self.cur[:] = 0.0
        self.filt[:] = 0.0
        self.istate[:] = 0
        self.istate[_I_FRESH] = 1
        self.istate[_I_QUIET] = self.line.shape[0]

    def kernel_args(self, block: np.ndarray, n_frames: int, params: np.ndarray, frames_per_beat: float) -> tuple:
        return (block, n_frames, params, self.cur, self.istate, self.filt, self.line, frames_per_beat,
                float(self.sample_rate), self.coef, self.delay_coef, TAIL_FLOOR)
