"""Filter: a resonant low-pass / high-pass / band-pass with an optional tempo-synced LFO on its cutoff.

Design
------
One TPT state-variable filter per channel (Zavalishin; the same topology and
coefficients as the deck filter, :func:`engine.dsp._svf_coefs`), which gives
all three responses at once: low-pass ``v2``, band-pass ``k v1`` (normalised
to unity gain at the cutoff) and high-pass ``x - k v1 - v2``, 12 dB/octave.
``mode`` picks one (0 low-pass, 1 high-pass, 2 band-pass); the three outputs
are weighted by smoothed weights, so a mode change crossfades instead of
clicking. ``resonance`` 0..1 sets ``Q = 0.707 x 14 ** resonance`` (0.707, no
peak, to 9.9). The cutoff is smoothed on a log scale (so a sweep sounds even)
and, when ``lfo_beats`` > 0, swings ``lfo_depth`` octaves either way along a
sine with that period in beats. The TPT SVF stays stable under per-sample
cutoff modulation. The output is ``x + mix x on x (y - x)``; the filter's
input is ``on x x``, so a slot switched off drains its state and stops.
"""

from __future__ import annotations

import math

import numba
import numpy as np

from engine.dsp import _svf_coefs
from engine.effects.base import SMOOTHING_S, TAIL_FLOOR, Effect, Param, input_silent, smooth, smoothing_coef

__all__ = ["Filter", "fx_filter_block", "MODES"]

_JIT = dict(nogil=True, cache=True)

MODES = ("lp", "hp", "bp")
_Q_MIN = 1.0 / math.sqrt(2.0)
_Q_SPAN = 14.0

_MODE, _CUTOFF, _RESONANCE, _LFO_BEATS, _LFO_DEPTH, _MIX, _ON = range(7)
# Smoothed state after the parameters: log2 cutoff, three mode weights, LFO phase.
_LOG_CUTOFF, _W_LP, _W_HP, _W_BP, _PHASE = 7, 8, 9, 10, 11
_I_FRESH = 0


@numba.njit(**_JIT)
def fx_filter_block(block, n_frames, targets, cur, istate, svf, coefs, frames_per_beat, sample_rate, coef, floor):
    """Filter effect on ``block[:n_frames]`` in place (see :mod:`engine.effects.filter`); returns whether it is active.

    ``targets``: mode, cutoff_hz, resonance, lfo_beats, lfo_depth, mix, on; ``svf``: (2, 2) integrator states per
    channel; ``coefs``: (1, 4) the SVF's coefficients."""
    mode = int(round(targets[_MODE]))
    t_lp = 1.0 if mode == 0 else 0.0
    t_hp = 1.0 if mode == 1 else 0.0
    t_bp = 1.0 if mode == 2 else 0.0
    t_log = math.log2(targets[_CUTOFF])
    if istate[_I_FRESH] == 1:
        for k in range(_ON):
            cur[k] = targets[k]
        cur[_LOG_CUTOFF] = t_log
        cur[_W_LP], cur[_W_HP], cur[_W_BP] = t_lp, t_hp, t_bp
        istate[_I_FRESH] = 0
    lfo_on = targets[_LFO_BEATS] > 0.0 and targets[_LFO_DEPTH] > 0.0
    step = 1.0 / (max(targets[_LFO_BEATS], 0.25) * max(frames_per_beat, 1.0)) if lfo_on else 0.0
    quiet = True
    for ch in range(2):
        for k in range(2):
            if abs(svf[ch, k]) > floor:
                quiet = False
    if quiet and input_silent(block, n_frames, floor):
        for k in range(_ON + 1):
            cur[k] = targets[k]
        cur[_LOG_CUTOFF] = t_log
        cur[_W_LP], cur[_W_HP], cur[_W_BP] = t_lp, t_hp, t_bp
        phase = cur[_PHASE] + step * n_frames
        cur[_PHASE] = phase - math.floor(phase)
        svf[:, :] = 0.0
        return False
    log_f, res, depth, mix, on = cur[_LOG_CUTOFF], cur[_RESONANCE], cur[_LFO_DEPTH], cur[_MIX], cur[_ON]
    w_lp, w_hp, w_bp, phase = cur[_W_LP], cur[_W_HP], cur[_W_BP], cur[_PHASE]
    moving = True
    for n in range(n_frames):
        if moving:
            log_f = smooth(log_f, t_log, coef)
            res = smooth(res, targets[_RESONANCE], coef)
            depth = smooth(depth, targets[_LFO_DEPTH], coef)
            swing = 0.0
            if lfo_on:
                swing = depth * math.sin(2.0 * math.pi * phase)
                phase += step
                if phase >= 1.0:
                    phase -= 1.0
            _svf_coefs(2.0 ** (log_f + swing), sample_rate, 1.0 / (_Q_MIN * _Q_SPAN ** res), coefs, 0)
            moving = lfo_on or log_f != t_log or res != targets[_RESONANCE] or depth != targets[_LFO_DEPTH]
        mix = smooth(mix, targets[_MIX], coef)
        on = smooth(on, targets[_ON], coef)
        w_lp = smooth(w_lp, t_lp, coef)
        w_hp = smooth(w_hp, t_hp, coef)
        w_bp = smooth(w_bp, t_bp, coef)
        a1, a2, a3, k = coefs[0, 0], coefs[0, 1], coefs[0, 2], coefs[0, 3]
        wet = mix * on
        for c in range(2):
            x = np.float64(block[n, c])
            xi = on * x
            ic1, ic2 = svf[c, 0], svf[c, 1]
            v3 = xi - ic2
            v1 = a1 * ic1 + a2 * v3
            v2 = ic2 + a2 * ic1 + a3 * v3
            svf[c, 0] = 2.0 * v1 - ic1
            svf[c, 1] = 2.0 * v2 - ic2
            y = w_lp * v2 + w_bp * k * v1 + w_hp * (xi - k * v1 - v2)
            if wet != 0.0:
                block[n, c] = np.float32(x + wet * (y - x))
    cur[_MODE], cur[_CUTOFF], cur[_LFO_BEATS] = targets[_MODE], targets[_CUTOFF], targets[_LFO_BEATS]
    cur[_LOG_CUTOFF], cur[_RESONANCE], cur[_LFO_DEPTH], cur[_MIX], cur[_ON] = log_f, res, depth, mix, on
    cur[_W_LP], cur[_W_HP], cur[_W_BP], cur[_PHASE] = w_lp, w_hp, w_bp, phase
    active = False
    for ch in range(2):
        for k in range(2):
            if abs(svf[ch, k]) > floor:
                active = True
            elif abs(svf[ch, k]) < 1e-30:
                svf[ch, k] = 0.0
    return active


class Filter(Effect):
    """Resonant multimode filter with an LFO (see the module docstring)."""

    name = "filter"
    kernel = staticmethod(fx_filter_block)
    description = "resonant low-pass / high-pass / band-pass, 12 dB/octave, with a tempo-synced LFO"
    params = {
        "mode": Param(0.0, 2.0, 0.0, "", "response: 0 low-pass, 1 high-pass, 2 band-pass (rounded)"),
        "cutoff_hz": Param(20.0, 20000.0, 1000.0, "Hz", "cutoff (the band-pass' centre)"),
        "resonance": Param(0.0, 1.0, 0.3, "", "Q from 0.707 (no peak) to 9.9"),
        "lfo_beats": Param(0.0, 32.0, 0.0, "beats", "LFO period (0: no LFO; at least 1/4 beat)"),
        "lfo_depth": Param(0.0, 4.0, 1.0, "octaves", "LFO swing of the cutoff, either way"),
        "mix": Param(0.0, 1.0, 1.0, "", "crossfade dry -> filtered"),
    }

    def __init__(self, sample_rate: int = 44100, max_block_frames: int = 1024) -> None:
        super().__init__(sample_rate, max_block_frames)
        self.svf = np.zeros((2, 2))
        self.coefs = np.zeros((1, 4))
        self.cur = np.zeros(len(self.params) + 6)
        self.istate = np.zeros(1, np.int64)
        self.coef = smoothing_coef(SMOOTHING_S, self.sample_rate)
        self.reset()

    def reset(self) -> None:
        self.svf[:] = 0.0
        self.cur[:] = 0.0
        self.istate[_I_FRESH] = 1

    def kernel_args(self, block: np.ndarray, n_frames: int, params: np.ndarray, frames_per_beat: float) -> tuple:
        return (block, n_frames, params, self.cur, self.istate, self.svf, self.coefs, frames_per_beat,
                float(self.sample_rate), self.coef, TAIL_FLOOR)
