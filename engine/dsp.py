"""Realtime mixer DSP blocks: 3-band isolator EQ, one-knob filter, true-peak-safe limiter, gain helpers.

Every object allocates its state in ``__init__``; its ``process`` method checks
the block once and calls a ``numba`` kernel compiled with ``nogil=True,
cache=True`` that never allocates, locks, logs or does I/O, so it can run in
the audio callback. Blocks are float32 stereo ``(frames, 2)``, processed in
place; any block size works (the engine uses 32-1024 frames). Each object
exposes ``state`` (a tuple of its arrays) so that the engine's own numba
kernel can call :func:`eq_block`, :func:`filter_block`, :func:`limiter_block`
and :func:`gain_ramp_block` directly, without Python in the callback.

Design
------
**Parameter smoothing.** Parameters may change on every block. The kernels
never jump to a new value: the EQ's band gains and the filter knob follow
their targets with a per-sample one-pole (time constant ``smoothing_s``, 5 ms
by default) that snaps onto the target once within 1e-6, so a settled value is
exact (a 0 dB EQ band is gain 1.0, a centred filter knob is exactly 0).
Per-sample smoothing makes the result independent of how the stream is cut
into blocks. :class:`GainRamp` instead ramps a gain linearly across each block
(the usual fader / crossfader gain stage).

**DjEq (isolator).** Linkwitz-Riley 4th-order crossovers (each LR4 section is
two cascaded 2nd-order Butterworth biquads, bilinear transform with
prewarping) split the signal: ``low = LP4(f1)``, ``rest = HP4(f1)``,
``mid = LP4(f2)(rest)``, ``high = HP4(f2)(rest)``. Since ``LP4 + HP4`` of one
crossover is the 2nd-order allpass ``AP(f)`` (Q = 1/sqrt 2), the low band is
passed through ``AP(f2)`` so that all three bands carry the same phase and
``low + mid + high = AP(f1) AP(f2) x``: with every gain at 0 dB the magnitude
response is exactly flat (measured < 1e-4 dB). Band gains run from kill
(``gain_db <= -80`` gives exactly 0) to +6 dB. Filters run in float64. A kill
removes a tone by the LR4 slope (24 dB/octave) from the crossover: a low kill
takes 50 Hz down by ~62 dB with the default 300 Hz crossover, a high kill takes
16 kHz down by ~70 dB, while a mid kill of a tone halfway (geometrically)
between 300 Hz and 4 kHz leaves the other two bands' skirts at about -40 dB.

**DjFilter.** Two TPT (topology-preserving transform, "zero-delay
feedback") state-variable filters (Zavalishin; Simper's trapezoidal SVF) in
series, a low-pass then a high-pass; the TPT SVF is stable and click-free
under per-sample cutoff modulation. Knob ``k`` in [-1, 1]: ``k < 0`` sweeps
the low-pass from 20 kHz down to ``20 kHz * (60/20000)**|k|`` (60 Hz at -1)
while the high-pass rests at 20 Hz; ``k > 0`` sweeps the high-pass from 20 Hz
up to ``20 Hz * (12000/20)**k`` (12 kHz at +1) while the low-pass rests at
20 kHz. Both cutoffs are continuous functions of the knob and both filters
always run, so there is no mode switch and no stale state when the knob
crosses the centre. The resonance ``q`` fades in from Butterworth (resting
filters stay flat) and the output crossfades from the dry signal to the
filtered one over ``|k| < 0.05`` (smoothstep), so a knob settled at 0 returns
the input bit for bit.

**Limiter.** Feed-forward, stereo-linked, lookahead. For each input frame the
peak is estimated as the largest of ``|x[n]|`` and the 4x-oversampled values
in the intervals on both sides of it (a 4-phase, 32-tap-per-phase Kaiser
windowed-sinc interpolator, i.e. a cheap true-peak meter), over both channels.
The required gain ``g_req = min(1, ceiling / peak)`` goes through a sliding
minimum over ``A + 1`` frames, an instant-attack / one-pole-release stage
(``release_s``) that never exceeds its input, and a box average of ``A + 1``
frames; the audio is delayed by ``latency_frames = A + 16`` (16 frames for the
interpolator's look-ahead). Every value entering the average that covers a
peak is at most that peak's required gain, so the applied gain at the peak is
at most ``g_req``: the output cannot exceed the ceiling (a final clamp to the
float32 ceiling only guards against rounding) and the attack is a linear ramp
over the lookahead. A signal whose estimated peak stays under the ceiling gets
a gain of exactly 1.0 (the running sum of the average is recomputed exactly
every ``A + 1`` frames), so the output is the input delayed, bit for bit.
Processing is per sample: the output does not depend on the block size.

**Crossfader.** :func:`crossfader_gains` maps a position in [-1, 1] (full left
to full right) to the two decks' gains for the curves "linear", "power"
(constant power, ``g_l**2 + g_r**2 = 1``) and "cut" (both full except within
``cut_width`` of the far edge, the scratch curve).
"""

from __future__ import annotations

import math

import numba
import numpy as np

__all__ = ["DjEq", "DjFilter", "Limiter", "GainRamp", "crossfader_gains", "db_to_gain", "eq_block",
           "filter_block", "limiter_block", "gain_ramp_block", "KILL_DB", "CROSSFADER_CURVES"]

_JIT = dict(nogil=True, cache=True)

KILL_DB = -80.0
"""Band gains at or below this many dB are a kill: gain exactly 0."""
MAX_EQ_DB = 6.0
"""Largest band gain, dB."""
CROSSFADER_CURVES = ("linear", "power", "cut")

_SNAP = 1e-6           # a smoothed value this close to its target becomes the target
_DENORMAL = 1e-30      # filter states below this are flushed to 0 once per block
_FILTER_DEAD = 0.05    # knob range around 0 over which the filter crossfades into bypass
_BUTTERWORTH_DAMPING = math.sqrt(2.0)  # 1 / Q of the idle filter (no resonance)
_TP_HALF = 16          # half the taps per phase of the true-peak interpolator (its look-ahead, frames)
_TP_OVER = 4           # true-peak oversampling factor
_LIM_CHUNK = 256       # frames the limiter interpolates in one pass


@numba.njit(**_JIT)
def _flush_denormals(state: np.ndarray) -> None:
    """Zero filter states below :data:`_DENORMAL` (a decaying tail must not turn into slow subnormals)."""
    for i in range(state.shape[0]):
        if abs(state[i]) < _DENORMAL:
            state[i] = 0.0


def _check_block(block: np.ndarray, who: str) -> None:
    # The kernels do not check bounds: layout is checked here, once per block.
    if (not isinstance(block, np.ndarray) or block.dtype != np.float32 or block.ndim != 2 or block.shape[1] != 2
            or not block.flags.c_contiguous or not block.flags.writeable):
        raise ValueError(f"engine/dsp.py: {who} wants a writable C-contiguous float32 (frames, 2) block, got "
                         f"{getattr(block, 'dtype', type(block))} {getattr(block, 'shape', '')}")


def db_to_gain(gain_db: float) -> float:
    """Linear gain of ``gain_db`` dB; ``gain_db <= KILL_DB`` (or -inf) gives exactly 0."""
    if gain_db <= KILL_DB:
        return 0.0
    return 10.0 ** (gain_db / 20.0)


def _smoothing_coef(smoothing_s: float, sample_rate: float) -> float:
    """Per-sample one-pole coefficient for a time constant of ``smoothing_s`` seconds (0: no smoothing)."""
    if smoothing_s <= 0.0:
        return 1.0
    return 1.0 - math.exp(-1.0 / (smoothing_s * sample_rate))


# --------------------------------------------------------------------------- biquads


def _biquad(kind: str, freq_hz: float, q: float, sample_rate: float) -> np.ndarray:
    """RBJ-cookbook biquad ``[b0, b1, b2, a1, a2]`` (a0 normalised) for "lp", "hp" or "ap"."""
    w0 = 2.0 * math.pi * freq_hz / sample_rate
    cw, alpha = math.cos(w0), math.sin(w0) / (2.0 * q)
    a0 = 1.0 + alpha
    if kind == "lp":
        b = ((1.0 - cw) / 2.0, 1.0 - cw, (1.0 - cw) / 2.0)
    elif kind == "hp":
        b = ((1.0 + cw) / 2.0, -(1.0 + cw), (1.0 + cw) / 2.0)
    else:
        b = (1.0 - alpha, -2.0 * cw, 1.0 + alpha)
    return np.array([b[0] / a0, b[1] / a0, b[2] / a0, -2.0 * cw / a0, (1.0 - alpha) / a0])


@numba.njit(**_JIT)
def _bq(x, c, r, s, ch, i):
    """One sample through biquad ``c[r]`` (transposed direct form II), state ``s[ch, i]``."""
    y = c[r, 0] * x + s[ch, i, 0]
    s[ch, i, 0] = c[r, 1] * x - c[r, 3] * y + s[ch, i, 1]
    s[ch, i, 1] = c[r, 2] * x - c[r, 4] * y
    return y


# --------------------------------------------------------------------------- EQ

# Coefficient rows and biquad state slots of the EQ.
_C_LP1, _C_HP1, _C_AP2, _C_LP2, _C_HP2 = 0, 1, 2, 3, 4


@numba.njit(**_JIT)
def eq_block(block, n_frames, coef, bq_state, gains, targets, smooth):
    """Isolator EQ on ``block[:n_frames]`` in place (see :class:`DjEq`; ``targets`` are linear gains low/mid/high)."""
    g0, g1, g2 = gains[0], gains[1], gains[2]
    t0, t1, t2 = targets[0], targets[1], targets[2]
    for n in range(n_frames):
        g0 += (t0 - g0) * smooth
        g1 += (t1 - g1) * smooth
        g2 += (t2 - g2) * smooth
        if abs(t0 - g0) < _SNAP:
            g0 = t0
        if abs(t1 - g1) < _SNAP:
            g1 = t1
        if abs(t2 - g2) < _SNAP:
            g2 = t2
        for ch in range(2):
            x = np.float64(block[n, ch])
            low = _bq(_bq(x, coef, _C_LP1, bq_state, ch, 0), coef, _C_LP1, bq_state, ch, 1)
            low = _bq(low, coef, _C_AP2, bq_state, ch, 2)  # phase-match the low band to mid + high
            rest = _bq(_bq(x, coef, _C_HP1, bq_state, ch, 3), coef, _C_HP1, bq_state, ch, 4)
            mid = _bq(_bq(rest, coef, _C_LP2, bq_state, ch, 5), coef, _C_LP2, bq_state, ch, 6)
            high = _bq(_bq(rest, coef, _C_HP2, bq_state, ch, 7), coef, _C_HP2, bq_state, ch, 8)
            block[n, ch] = np.float32(g0 * low + g1 * mid + g2 * high)
    gains[0], gains[1], gains[2] = g0, g1, g2
    _flush_denormals(bq_state.reshape(-1))


class DjEq:
    """3-band DJ isolator EQ with kills (Linkwitz-Riley 4th-order crossovers, allpass-compensated).

    Parameters
    ----------
    sample_rate : int
        Sample rate in Hz.
    low_hz : float
        Low / mid crossover frequency in Hz (300).
    high_hz : float
        Mid / high crossover frequency in Hz (4000).
    smoothing_s : float
        Time constant, in seconds, with which band gains follow new values.

    Attributes
    ----------
    latency_frames : int
        0 (the EQ is causal IIR; its phase is that of two allpasses).
    state : tuple
        ``(coef, bq_state, gains, targets, smooth)`` for calling :func:`eq_block` from a numba kernel.
    """

    latency_frames = 0

    def __init__(self, sample_rate: int = 44100, low_hz: float = 300.0, high_hz: float = 4000.0,
                 smoothing_s: float = 0.005):
        if not 0.0 < low_hz < high_hz < 0.45 * sample_rate:
            raise ValueError(f"engine/dsp.py: DjEq needs 0 < low_hz < high_hz < 0.45 * sample_rate, got "
                             f"{low_hz}, {high_hz} at {sample_rate} Hz")
        self.sample_rate = int(sample_rate)
        self.low_hz, self.high_hz = float(low_hz), float(high_hz)
        q = 1.0 / math.sqrt(2.0)
        self.coef = np.stack([_biquad("lp", low_hz, q, sample_rate), _biquad("hp", low_hz, q, sample_rate),
                              _biquad("ap", high_hz, q, sample_rate), _biquad("lp", high_hz, q, sample_rate),
                              _biquad("hp", high_hz, q, sample_rate)])
        self.bq_state = np.zeros((2, 9, 2))
        self.gains = np.ones(3)
        self.targets = np.ones(3)
        self.smooth = _smoothing_coef(smoothing_s, sample_rate)

    @property
    def state(self) -> tuple:
        return self.coef, self.bq_state, self.gains, self.targets, self.smooth

    def reset(self) -> None:
        """Clear the filter memory (gains are kept)."""
        self.bq_state[:] = 0.0

    def process(self, block: np.ndarray, low_db: float = 0.0, mid_db: float = 0.0, high_db: float = 0.0) -> None:
        """Equalise ``block`` in place.

        Parameters
        ----------
        block : np.ndarray
            float32 ``(frames, 2)``, C-contiguous.
        low_db, mid_db, high_db : float
            Band gains in dB, clamped to +6; ``<= -80`` (or ``-inf``) kills the band.
            The gains glide to these values (``smoothing_s``).
        """
        _check_block(block, "DjEq.process")
        for i, gain_db in enumerate((low_db, mid_db, high_db)):
            if gain_db != gain_db:
                raise ValueError("engine/dsp.py: DjEq.process got a NaN band gain")
            self.targets[i] = db_to_gain(min(float(gain_db), MAX_EQ_DB))
        eq_block(block, block.shape[0], self.coef, self.bq_state, self.gains, self.targets, self.smooth)


# --------------------------------------------------------------------------- filter


@numba.njit(**_JIT)
def _svf_coefs(freq_hz, sample_rate, damping, coefs, row):
    """TPT SVF coefficients ``(a1, a2, a3, damping)`` into ``coefs[row]``."""
    g = math.tan(math.pi * min(freq_hz, 0.49 * sample_rate) / sample_rate)
    a1 = 1.0 / (1.0 + g * (g + damping))
    coefs[row, 0] = a1
    coefs[row, 1] = g * a1
    coefs[row, 2] = g * g * a1
    coefs[row, 3] = damping


@numba.njit(**_JIT)
def _filter_coefs(knob, sample_rate, damping, lp_min_hz, hp_max_hz, coefs):
    """Coefficients of the low-pass (row 0) and high-pass (row 1) for a smoothed knob; returns the wet mix.

    Both cutoffs are continuous in the knob (the idle filter parks at 20 kHz / 20 Hz) and the
    resonance fades in over the dead zone, so the filters' states stay valid through the centre."""
    u = min(abs(knob) / _FILTER_DEAD, 1.0)
    active = _BUTTERWORTH_DAMPING + (damping - _BUTTERWORTH_DAMPING) * u
    if knob < 0.0:
        _svf_coefs(20000.0 * (lp_min_hz / 20000.0) ** (-knob), sample_rate, active, coefs, 0)
        _svf_coefs(20.0, sample_rate, _BUTTERWORTH_DAMPING, coefs, 1)
    else:
        _svf_coefs(20000.0, sample_rate, _BUTTERWORTH_DAMPING, coefs, 0)
        _svf_coefs(20.0 * (hp_max_hz / 20.0) ** knob, sample_rate, active, coefs, 1)
    return u * u * (3.0 - 2.0 * u)


@numba.njit(**_JIT)
def _svf(x, coefs, row, svf_state, ch, high):
    """One sample through the TPT SVF ``row``; its low-pass output, or its high-pass output if ``high``."""
    a1, a2, a3, k = coefs[row, 0], coefs[row, 1], coefs[row, 2], coefs[row, 3]
    ic1, ic2 = svf_state[row, ch, 0], svf_state[row, ch, 1]
    v3 = x - ic2
    v1 = a1 * ic1 + a2 * v3
    v2 = ic2 + a2 * ic1 + a3 * v3
    svf_state[row, ch, 0] = 2.0 * v1 - ic1
    svf_state[row, ch, 1] = 2.0 * v2 - ic2
    if high:
        return x - k * v1 - v2
    return v2


@numba.njit(**_JIT)
def filter_block(block, n_frames, svf_state, coefs, knob_state, target, sample_rate, damping, smooth, lp_min_hz,
                 hp_max_hz):
    """One-knob filter on ``block[:n_frames]`` in place (see :class:`DjFilter`)."""
    k = knob_state[0]
    wet = _filter_coefs(k, sample_rate, damping, lp_min_hz, hp_max_hz, coefs)
    moving = k != target
    for n in range(n_frames):
        if moving:
            k += (target - k) * smooth
            if abs(target - k) < _SNAP:
                k = target
                moving = False
            wet = _filter_coefs(k, sample_rate, damping, lp_min_hz, hp_max_hz, coefs)
        for ch in range(2):
            x = np.float64(block[n, ch])
            y = _svf(_svf(x, coefs, 0, svf_state, ch, False), coefs, 1, svf_state, ch, True)
            if wet > 0.0:
                block[n, ch] = np.float32(x + wet * (y - x))
            # wet == 0 (knob exactly centred): the sample is left untouched, bit for bit
    knob_state[0] = k
    _flush_denormals(svf_state.reshape(-1))


class DjFilter:
    """One-knob DJ filter: low-pass to the left, high-pass to the right, bypass in the centre.

    Parameters
    ----------
    sample_rate : int
        Sample rate in Hz.
    q : float
        Resonance (0.9; 0.707 is no peak).
    lp_min_hz : float
        Low-pass cutoff at knob -1, Hz (60); at -0 it is 20 kHz, exponential in between.
    hp_max_hz : float
        High-pass cutoff at knob +1, Hz (12000); at +0 it is 20 Hz.
    smoothing_s : float
        Time constant, in seconds, with which the knob follows new values.

    Attributes
    ----------
    state : tuple
        Arguments after ``(block, n_frames)`` of :func:`filter_block`, with ``target`` left
        to the caller: ``(svf_state, coefs, knob_state, sample_rate, damping, smooth, lp_min_hz, hp_max_hz)``.
    """

    latency_frames = 0

    def __init__(self, sample_rate: int = 44100, q: float = 0.9, lp_min_hz: float = 60.0, hp_max_hz: float = 12000.0,
                 smoothing_s: float = 0.005):
        if not 0.1 <= q <= 20.0:
            raise ValueError(f"engine/dsp.py: DjFilter q must be within 0.1-20, got {q}")
        if not 20.0 <= lp_min_hz < 20000.0 or not 20.0 < hp_max_hz < 0.49 * sample_rate:
            raise ValueError(f"engine/dsp.py: DjFilter lp_min_hz / hp_max_hz out of range: {lp_min_hz}, {hp_max_hz}")
        self.sample_rate = float(sample_rate)
        self.q = float(q)
        self.damping = 1.0 / self.q
        self.lp_min_hz, self.hp_max_hz = float(lp_min_hz), float(hp_max_hz)
        self.smooth = _smoothing_coef(smoothing_s, sample_rate)
        self.svf_state = np.zeros((2, 2, 2))  # (low-pass, high-pass), channel, integrator
        self.coefs = np.zeros((2, 4))
        self.knob_state = np.zeros(1)

    @property
    def knob(self) -> float:
        """The smoothed knob position reached at the end of the last block."""
        return float(self.knob_state[0])

    @property
    def state(self) -> tuple:
        return (self.svf_state, self.coefs, self.knob_state, self.sample_rate, self.damping, self.smooth,
                self.lp_min_hz, self.hp_max_hz)

    def reset(self) -> None:
        """Clear the filter memory and centre the knob."""
        self.svf_state[:] = 0.0
        self.knob_state[0] = 0.0

    def process(self, block: np.ndarray, knob: float) -> None:
        """Filter ``block`` in place.

        Parameters
        ----------
        block : np.ndarray
            float32 ``(frames, 2)``, C-contiguous.
        knob : float
            -1 (low-pass at ``lp_min_hz``) to 0 (bypass) to +1 (high-pass at ``hp_max_hz``); clamped.
        """
        _check_block(block, "DjFilter.process")
        if knob != knob:
            raise ValueError("engine/dsp.py: DjFilter.process got a NaN knob")
        target = min(max(float(knob), -1.0), 1.0)
        filter_block(block, block.shape[0], self.svf_state, self.coefs, self.knob_state, target, self.sample_rate, self.damping,
                     self.smooth, self.lp_min_hz, self.hp_max_hz)


# --------------------------------------------------------------------------- limiter

# Scalar state of the limiter (float64 array _f, int64 array _i).
_LF_RELEASED = 0   # output of the release stage
_LF_SUM = 1        # running sum of the box average
_LF_IPEAK = 2      # interpolated peak of the interval before the frame being estimated
_LF_GAIN = 3       # last gain applied
_LF_BOUND = 4      # largest sum of |taps| of an interpolator phase (an estimate is at most this times the input)
_LF_MIN = 5        # minimum of the sliding-minimum window
_LF_SIZE = 6
_LI_T = 0          # input frames seen
_LI_MIN_POS = 1    # ring slot of the sliding-minimum window
_LI_AVG_POS = 2    # ring slot of the box average
_LI_SIZE = 4


def _true_peak_fir(half: int, over: int, beta: float = 7.0) -> np.ndarray:
    """Polyphase interpolator ``(over - 1, 2 * half)``: row ``j - 1`` gives the value at ``n + j / over``
    from ``x[n - half + 1 .. n + half]`` (Kaiser-windowed sinc, unity gain per phase).

    With 16 taps a side and beta 7 every phase is within 0.01 dB of an ideal fractional delay up to
    19 kHz at 44.1 kHz (-0.6 dB at 20 kHz), so the estimate matches a 4x true-peak meter."""
    taps = np.zeros((over - 1, 2 * half))
    offsets = np.arange(-half + 1, half + 1)  # tap m reads x[n + offsets[m]]
    for j in range(1, over):
        d = offsets - j / over  # distance from the interpolation point, frames
        w = np.i0(beta * np.sqrt(np.clip(1.0 - (d / half) ** 2, 0.0, None))) / np.i0(beta)
        h = np.sinc(d) * w
        taps[j - 1] = h / h.sum()
    return taps


@numba.njit(**_JIT)
def limiter_block(block, n_frames, lin, req, avg, fir, scratch, f, i, ceiling, ceiling32, release, latency, attack):
    """Lookahead true-peak limiter on ``block[:n_frames]`` in place (see :class:`Limiter`)."""
    size = lin.shape[1] // 2
    mask = size - 1
    half = fir.shape[1] // 2
    n_phase = fir.shape[0]
    chunk = scratch.shape[1]
    width = attack + 1
    t = i[_LI_T]
    r = f[_LF_RELEASED]
    acc = f[_LF_SUM]
    ipeak_prev = f[_LF_IPEAK]
    min_pos = i[_LI_MIN_POS]
    avg_pos = i[_LI_AVG_POS]
    gain = f[_LF_GAIN]
    m_min = f[_LF_MIN]
    # When every sample the block's interpolations read is below ceiling / (largest sum of |taps| of a
    # phase), no estimate can reach the ceiling: the interpolator runs only for the last frame, whose
    # value the next block needs. Exact, and the common case for music under the ceiling.
    bound = f[_LF_BOUND]
    loudest = 0.0
    for k in range(t - 2 * half + 1, t):
        loudest = max(loudest, abs(lin[0, k & mask]), abs(lin[1, k & mask]))
    for n in range(n_frames):
        loudest = max(loudest, abs(block[n, 0]), abs(block[n, 1]))
    quiet = loudest * bound <= ceiling
    ipeaks = scratch[n_phase]
    done = 0
    while done < n_frames:
        n_chunk = min(n_frames - done, chunk)
        # The chunk into the delay line, per channel and twice over, so that every interpolation of the
        # chunk reads consecutive slots (size >= chunk + look-ahead: nothing still read is overwritten).
        for n in range(n_chunk):
            slot = (t + n) & mask
            lin[0, slot] = block[done + n, 0]
            lin[0, slot + size] = block[done + n, 0]
            lin[1, slot] = block[done + n, 1]
            lin[1, slot + size] = block[done + n, 1]
        # Interpolated peaks of the chunk's frames, before the gain loop: they depend on the input alone.
        # The loop over frames is innermost so that it vectorises; each value is still summed over the
        # taps in order.
        lo = 0
        if quiet:
            lo = n_chunk - 1 if done + n_chunk == n_frames else n_chunk
        for n in range(n_chunk):
            ipeaks[n] = 0.0
        base = (t - 2 * half + 1) & mask
        count = n_chunk - lo
        peaks = ipeaks[lo:n_chunk]
        for c in range(2):
            history = lin[c, base + lo:base + n_chunk + 2 * half]
            for j in range(n_phase):
                v = scratch[j, :count]
                v[:] = 0.0
                for m in range(2 * half):
                    tap = fir[j, m]
                    x = history[m:m + count]
                    for n in range(count):
                        v[n] += tap * x[n]
                for n in range(count):
                    peaks[n] = max(peaks[n], abs(v[n]))
        for n in range(n_chunk):
            # Peak of frame t - half: the sample and the oversampled values on both sides of it.
            centre = (t - half) & mask
            peak = max(abs(lin[0, centre]), abs(lin[1, centre]))
            ipeak = ipeaks[n]
            peak = max(peak, ipeak, ipeak_prev)
            ipeak_prev = ipeak
            g_req = 1.0
            if peak > ceiling:
                g_req = ceiling / peak
            # Sliding minimum over the last attack + 1 requirements. Every requirement is <= 1, so the
            # minimum only needs a new scan when the value leaving the window was it and was below 1.
            leaving = req[min_pos]
            req[min_pos] = g_req
            min_pos += 1
            if min_pos == width:
                min_pos = 0
            if leaving > m_min or m_min >= 1.0:
                m_min = min(m_min, g_req)
            else:
                m_min = req[0]
                for k in range(1, width):
                    m_min = min(m_min, req[k])
            # Instant attack, one-pole release; never above its input, so the guarantee survives.
            if m_min <= r:
                r = m_min
            else:
                r += (m_min - r) * release
                if m_min - r < _SNAP:
                    r = m_min
            # Box average over attack + 1 frames: a linear attack ramp that reaches g_req in time.
            acc += r - avg[avg_pos]
            avg[avg_pos] = r
            avg_pos += 1
            if avg_pos == width:
                avg_pos = 0
                acc = 0.0  # recomputed exactly once per lap, so rounding cannot drift (a run of 1.0 sums exactly)
                for k in range(width):
                    acc += avg[k]
            gain = acc / width
            if gain > 1.0:
                gain = 1.0
            # The audio, delayed by the whole look-ahead.
            out = (t - latency) & mask
            for c in range(2):
                y = np.float32(lin[c, out] * gain) if gain != 1.0 else lin[c, out]
                if y > ceiling32:
                    y = ceiling32
                elif y < -ceiling32:
                    y = -ceiling32
                block[done + n, c] = y
            t += 1
        done += n_chunk
    i[_LI_T] = t
    i[_LI_MIN_POS] = min_pos
    i[_LI_AVG_POS] = avg_pos
    f[_LF_RELEASED] = r
    f[_LF_SUM] = acc
    f[_LF_IPEAK] = ipeak_prev
    f[_LF_GAIN] = gain
    f[_LF_MIN] = m_min


class Limiter:
    """Master brick-wall limiter: stereo-linked, lookahead, true-peak aware.

    Parameters
    ----------
    sample_rate : int
        Sample rate in Hz.
    ceiling_db : float
        Output ceiling in dBFS (-1.0). Sample peaks never exceed it; true peaks
        (4x oversampled) stay within a few tenths of a dB of it.
    lookahead_s : float
        Look-ahead in seconds (1.5 ms): the output latency, of which all but 16
        frames is the attack ramp.
    release_s : float
        Release time constant in seconds (0.15).

    Attributes
    ----------
    latency_frames : int
        Output delay in frames: ``round(lookahead_s * sample_rate)`` (66 at 44.1 kHz).
    state : tuple
        Arguments after ``(block, n_frames)`` of :func:`limiter_block`.
    """

    def __init__(self, sample_rate: int = 44100, ceiling_db: float = -1.0, lookahead_s: float = 0.0015,
                 release_s: float = 0.15):
        if not -60.0 <= ceiling_db <= 0.0:
            raise ValueError(f"engine/dsp.py: Limiter ceiling_db must be within -60..0, got {ceiling_db}")
        if release_s <= 0.0:
            raise ValueError(f"engine/dsp.py: Limiter release_s must be > 0, got {release_s}")
        self.sample_rate = int(sample_rate)
        self.ceiling_db = float(ceiling_db)
        self.latency_frames = max(int(round(lookahead_s * sample_rate)), _TP_HALF + 1)
        self.attack_frames = self.latency_frames - _TP_HALF
        ceiling = 10.0 ** (ceiling_db / 20.0)
        c32 = np.float32(ceiling)
        if float(c32) > ceiling:
            c32 = np.nextafter(c32, np.float32(0.0))
        self.ceiling32 = c32
        # Aim a hair under the ceiling so float32 rounding of the product never needs the clamp.
        self.ceiling = ceiling * (1.0 - 1e-6)
        self.release = _smoothing_coef(release_s, sample_rate)
        # The delay line holds a chunk of frames (see limiter_block) plus the look-ahead.
        size = 1 << int(_LIM_CHUNK + max(self.latency_frames, 2 * _TP_HALF) + 1).bit_length()
        self.lin = np.zeros((2, 2 * size), dtype=np.float32)   # the delay line, per channel, twice over
        self.fir = _true_peak_fir(_TP_HALF, _TP_OVER)
        self.scratch = np.zeros((_TP_OVER, _LIM_CHUNK))   # a chunk's interpolated values per phase, then peaks
        self.req = np.ones(self.attack_frames + 1)
        self.avg = np.ones(self.attack_frames + 1)
        self.f = np.zeros(_LF_SIZE)
        self.i = np.zeros(_LI_SIZE, dtype=np.int64)
        self._state = self.state  # built once: no tuple per block
        self.reset()

    def reset(self) -> None:
        """Forget the past: silence in the delay line, gain 1."""
        self.lin[:] = 0.0
        self.req[:] = 1.0
        self.avg[:] = 1.0
        self.f[:] = 0.0
        self.f[_LF_RELEASED] = 1.0
        self.f[_LF_SUM] = float(self.attack_frames + 1)
        self.f[_LF_GAIN] = 1.0
        self.f[_LF_MIN] = 1.0
        self.f[_LF_BOUND] = float(np.abs(self.fir).sum(axis=1).max())
        self.i[:] = 0

    @property
    def gain(self) -> float:
        """Gain applied to the last output frame (1.0: no limiting)."""
        return float(self.f[_LF_GAIN])

    @property
    def gain_reduction_db(self) -> float:
        """Gain reduction of the last output frame, dB (>= 0), for the meter."""
        g = self.gain
        return -20.0 * math.log10(g) if g > 0.0 else math.inf

    @property
    def state(self) -> tuple:
        return (self.lin, self.req, self.avg, self.fir, self.scratch, self.f, self.i, self.ceiling, self.ceiling32,
                self.release, self.latency_frames, self.attack_frames)

    def process(self, block: np.ndarray) -> None:
        """Limit ``block`` in place; the output is the input delayed by :attr:`latency_frames`.

        Parameters
        ----------
        block : np.ndarray
            float32 ``(frames, 2)``, C-contiguous.
        """
        _check_block(block, "Limiter.process")
        limiter_block(block, block.shape[0], *self._state)


# --------------------------------------------------------------------------- gains


@numba.njit(**_JIT)
def gain_ramp_block(block, n_frames, start_gain, end_gain):
    """Multiply ``block[:n_frames]`` in place by a gain ramping linearly from ``start_gain`` to ``end_gain``
    (reached on the last frame)."""
    if start_gain == end_gain:
        if start_gain == 1.0:
            return
        for n in range(n_frames):
            for c in range(block.shape[1]):
                block[n, c] = np.float32(block[n, c] * start_gain)
        return
    step = (end_gain - start_gain) / n_frames
    for n in range(n_frames):
        g = start_gain + step * (n + 1)
        for c in range(block.shape[1]):
            block[n, c] = np.float32(block[n, c] * g)


class GainRamp:
    """A gain stage that ramps linearly, across each block, from the last gain to the new one.

    Parameters
    ----------
    initial_gain : float
        Linear gain before the first block.
    """

    def __init__(self, initial_gain: float = 1.0):
        self.gain = float(initial_gain)

    def process(self, block: np.ndarray, gain: float) -> None:
        """Apply ``gain`` (linear) to ``block`` in place, ramping from the previous block's gain."""
        _check_block(block, "GainRamp.process")
        if block.shape[0]:
            gain_ramp_block(block, block.shape[0], self.gain, float(gain))
            self.gain = float(gain)


def crossfader_gains(position: float, curve: str = "power", cut_width: float = 0.04) -> tuple[float, float]:
    """Gains of the left and right decks for a crossfader position.

    Parameters
    ----------
    position : float
        -1 (full left) to +1 (full right); clamped.
    curve : str
        "linear" (gains ``1 - t`` and ``t``, ``t = (position + 1) / 2``), "power"
        (``cos``/``sin`` of ``t * pi / 2``: constant power, ``l**2 + r**2 == 1``) or
        "cut" (scratch: both decks at full gain except within ``cut_width`` of
        the far edge, where the deck being faded out drops linearly to 0).
    cut_width : float
        Width of the "cut" curve's fade, as a fraction of the fader's travel.

    Returns
    -------
    (float, float)
        ``(left_gain, right_gain)``, linear, in [0, 1].
    """
    if position != position:
        raise ValueError("engine/dsp.py: crossfader_gains got a NaN position")
    t = (min(max(float(position), -1.0), 1.0) + 1.0) / 2.0
    if curve == "linear":
        return 1.0 - t, t
    if curve == "power":
        return math.cos(t * math.pi / 2.0), math.sin(t * math.pi / 2.0)
    if curve == "cut":
        w = min(max(float(cut_width), 1e-6), 0.5)
        return min((1.0 - t) / w, 1.0), min(t / w, 1.0)
    raise ValueError(f"engine/dsp.py: crossfader curve must be one of {CROSSFADER_CURVES}, got {curve!r}")
