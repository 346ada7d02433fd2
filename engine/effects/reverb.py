"""Reverb: an 8-line feedback delay network with input diffusion, a set decay time, room size and damping.

Design
------
The input of each channel passes four Schroeder allpasses in series (gain
0.6; 3.2-8.6 ms, the right channel's 23 frames longer, as in Freeverb), which
smear a transient into a dense burst. The burst feeds an FDN (Jot): eight
delay lines of mutually prime lengths (30-71 ms at ``size`` 1, scaled by
``size``, read with linear interpolation so that a size change glides),
whose outputs are damped by a one-pole low-pass each (``damping``: how much
faster highs die), scaled by their decay gain and mixed by an orthonormal
8 x 8 Hadamard matrix back into the lines. The gain of line ``i`` is
``10 ** (-3 L_i / (decay_s * fs))``: every line loses 60 dB in ``decay_s``
seconds per frame of its length, so the whole network's energy decays
uniformly and the reverberation time is ``decay_s`` (the damping shortens it
for high frequencies only; its gain at DC is 1). The left output sums the even
lines, the right one the odd lines (decorrelated, since their lengths
differ). The output is ``x + mix * wet``; with the slot off the input stops
feeding the network and the tail rings out.
"""

from __future__ import annotations

import math

import numba
import numpy as np

from engine.effects.base import SMOOTHING_S, TAIL_FLOOR, Effect, Param, input_silent, smooth, smoothing_coef

__all__ = ["Reverb", "reverb_block"]

_JIT = dict(nogil=True, cache=True)

_LINES_44K = (1327, 1559, 1801, 2053, 2311, 2579, 2851, 3119)   # FDN lengths at size 1, frames at 44.1 kHz
_DIFFUSERS_44K = (142, 107, 379, 277)                            # input allpasses, frames at 44.1 kHz
_STEREO_SPREAD = 23                                              # right channel's diffusers are this much longer
_DIFFUSION = 0.6
_MAX_SIZE = 1.5
_OUT_GAIN = 0.23       # a 2 s decay returns about the energy it was given (measured: 1.0)
SIZE_SMOOTHING_S = 0.05

# Parameter order and smoothed-state slots.
_DECAY, _SIZE, _DAMPING, _MIX, _ON = range(5)
_I_WRITE, _I_QUIET, _I_FRESH, _I_DIFF = range(4)


@numba.njit(**_JIT)
def _decay_gains(gains, lengths, size, decay_s, sample_rate):
    for i in range(lengths.shape[0]):
        gains[i] = 10.0 ** (-3.0 * lengths[i] * size / (decay_s * sample_rate))


@numba.njit(**_JIT)
def _hadamard8(v):
    """In-place orthonormal 8-point Walsh-Hadamard transform."""
    h = 1
    while h < 8:
        for i in range(0, 8, 2 * h):
            for j in range(i, i + h):
                a, b = v[j], v[j + h]
                v[j], v[j + h] = a + b, a - b
        h *= 2
    s = 1.0 / math.sqrt(8.0)
    for i in range(8):
        v[i] *= s


@numba.njit(**_JIT)
def reverb_block(block, n_frames, targets, cur, istate, lines, lengths, gains, damp_state, diff, diff_len, mixv,
                 sample_rate, coef, size_coef, floor):
    """Reverb on ``block[:n_frames]`` in place (see :mod:`engine.effects.reverb`); returns whether it is active.

    ``targets``: decay_s, size, damping, mix, on. ``lines``: (8, N) float32 FDN lines; ``lengths``: their lengths
    at size 1, frames; ``gains``: current decay gains; ``damp_state``: the low-passes; ``diff``: (2, 4, M) allpass
    buffers of ``diff_len`` (2, 4) frames; ``mixv``: 8 scratch values."""
    mask = lines.shape[1] - 1
    dmask = diff.shape[2] - 1
    if istate[_I_FRESH] == 1:
        for k in range(_ON):
            cur[k] = targets[k]
        _decay_gains(gains, lengths, cur[_SIZE], cur[_DECAY], sample_rate)
        istate[_I_FRESH] = 0
    longest = lengths[lengths.shape[0] - 1] * _MAX_SIZE + 4.0 * diff.shape[2]
    if istate[_I_QUIET] > longest and input_silent(block, n_frames, floor):
        for k in range(_ON + 1):
            cur[k] = targets[k]
        _decay_gains(gains, lengths, cur[_SIZE], cur[_DECAY], sample_rate)
        return False
    w = istate[_I_WRITE]
    dw = istate[_I_DIFF]
    quiet = istate[_I_QUIET]
    decay, size, damping, mix, on = cur[_DECAY], cur[_SIZE], cur[_DAMPING], cur[_MIX], cur[_ON]
    for n in range(n_frames):
        damping = smooth(damping, targets[_DAMPING], coef)
        mix = smooth(mix, targets[_MIX], coef)
        on = smooth(on, targets[_ON], coef)
        if decay != targets[_DECAY] or size != targets[_SIZE]:
            decay = smooth(decay, targets[_DECAY], coef)
            size = smooth(size, targets[_SIZE], size_coef)
            _decay_gains(gains, lengths, size, decay, sample_rate)
        x_l = np.float64(block[n, 0])
        x_r = np.float64(block[n, 1])
        # Input diffusion: four allpasses in series per channel (v[n] = x + g v[n-D]; y = v[n-D] - g v[n]).
        d_l = on * x_l
        d_r = on * x_r
        for k in range(4):
            old = diff[0, k, (dw - diff_len[0, k]) & dmask]
            v = d_l + _DIFFUSION * old
            diff[0, k, dw & dmask] = v
            d_l = old - _DIFFUSION * v
            old = diff[1, k, (dw - diff_len[1, k]) & dmask]
            v = d_r + _DIFFUSION * old
            diff[1, k, dw & dmask] = v
            d_r = old - _DIFFUSION * v
        dw += 1
        # The network: read, damp, scale, mix, write back with the input.
        d = 0.8 * damping
        wet_l = 0.0
        wet_r = 0.0
        for i in range(8):
            pos = w - lengths[i] * size
            j = int(math.floor(pos))
            f = pos - j
            a = lines[i, j & mask]
            y = a + f * (lines[i, (j + 1) & mask] - a)
            if i % 2 == 0:
                wet_l += y
            else:
                wet_r += y
            damp_state[i] = y + d * (damp_state[i] - y)
            mixv[i] = gains[i] * damp_state[i]
        _hadamard8(mixv)
        loud = False
        for i in range(8):
            u = mixv[i] + (d_l if i % 2 == 0 else d_r)
            if abs(u) > floor:
                loud = True
            elif abs(u) < 1e-30:
                u = 0.0
            lines[i, w & mask] = np.float32(u)
        w += 1
        quiet = 0 if loud else quiet + 1
        if mix != 0.0:
            block[n, 0] = np.float32(x_l + mix * _OUT_GAIN * wet_l)
            block[n, 1] = np.float32(x_r + mix * _OUT_GAIN * wet_r)
    cur[_DECAY], cur[_SIZE], cur[_DAMPING], cur[_MIX], cur[_ON] = decay, size, damping, mix, on
    for i in range(8):
        if abs(damp_state[i]) < 1e-30:
            damp_state[i] = 0.0
    istate[_I_WRITE] = w & mask
    istate[_I_DIFF] = dw & dmask
    istate[_I_QUIET] = quiet
    return quiet <= longest


class Reverb(Effect):
    """Feedback-delay-network reverb (see the module docstring)."""

    name = "reverb"
    kernel = staticmethod(reverb_block)
    description = "8-line feedback delay network with input diffusion: decay time, room size, damping"
    params = {
        "decay_s": Param(0.2, 20.0, 2.5, "s", "reverberation time (60 dB decay) at low frequencies"),
        "size": Param(0.3, _MAX_SIZE, 1.0, "", "room size: scales the delay lines (echo spacing)"),
        "damping": Param(0.0, 1.0, 0.4, "", "how much faster high frequencies die away"),
        "mix": Param(0.0, 1.0, 0.3, "", "level of the reverberation added to the dry signal"),
    }

    def __init__(self, sample_rate: int = 44100, max_block_frames: int = 1024) -> None:
        super().__init__(sample_rate, max_block_frames)
        scale = self.sample_rate / 44100.0
        self.lengths = np.array([n * scale for n in _LINES_44K])
        n = 1 << int(math.ceil(math.log2(self.lengths[-1] * _MAX_SIZE + 8)))
        self.lines = np.zeros((8, n), np.float32)
        self.diff_len = np.array([[round(d * scale) for d in _DIFFUSERS_44K],
                                  [round((d + _STEREO_SPREAD) * scale) for d in _DIFFUSERS_44K]], np.int64)
        self.diff = np.zeros((2, 4, 1 << int(math.ceil(math.log2(self.diff_len.max() + 1)))))
        self.gains = np.zeros(8)
        self.damp_state = np.zeros(8)
        self.mixv = np.zeros(8)
        self.cur = np.zeros(len(self.params) + 1)
        self.istate = np.zeros(4, np.int64)
        self.coef = smoothing_coef(SMOOTHING_S, self.sample_rate)
        self.size_coef = smoothing_coef(SIZE_SMOOTHING_S, self.sample_rate)
        self.reset()

    def reset(self) -> None:
        self.lines[:] = 0.0
        self.diff[:] = 0.0
        self.damp_state[:] = 0.0
        self.cur[:] = 0.0
        self.istate[:] = 0
        self.istate[_I_FRESH] = 1
        self.istate[_I_QUIET] = 1 << 40

    def kernel_args(self, block: np.ndarray, n_frames: int, params: np.ndarray, frames_per_beat: float) -> tuple:
        return (block, n_frames, params, self.cur, self.istate, self.lines, self.lengths, self.gains,
                self.damp_state, self.diff, self.diff_len, self.mixv, float(self.sample_rate), self.coef,
                self.size_coef, TAIL_FLOOR)
