"""Realtime time-stretching (keylock), key shift and vinyl-mode resampling for a four-stem deck.

One :class:`Stretcher` per deck. Every buffer is allocated in ``__init__``;
:meth:`Stretcher.process` is a thin Python call into ``numba`` kernels compiled
with ``nogil=True, cache=True`` that never allocate, lock, log or do I/O, so it
can run in the audio callback. The ratio (source frames consumed per output
frame), the keylock switch and the key shift may change on every block.

Design
------
**Pipeline.** With tempo ratio ``r`` and pitch factor ``q`` (``q = 2**(st/12)``
with keylock, ``q = r * 2**(st/12)`` in vinyl mode) the deck runs a phase
vocoder that stretches the source at rate ``r / q`` and a resampler that reads
the vocoder's output ``q`` frames per output frame, so the tempo is ``r`` and
every frequency is multiplied by ``q``. Stages that would do nothing are
bypassed: vinyl mode without key shift is the resampler alone (reading the
source), keylock without key shift is the vocoder alone. Switching between
these paths restarts the new path at the audible position with a 128-frame
(2.9 ms) raised-cosine crossfade, as :meth:`Stretcher.reset` does for seeks and
loops.

**Stem-coherent phase vocoder.** Analysis frames of ``fft_size`` (2048 by
default, Hann) are taken at a variable analysis hop ``Ha = rate * Hs`` from the
source and overlap-added at a fixed synthesis hop ``Hs = fft_size / 4`` after
each bin ``k`` of each stem and channel is multiplied by the same unit rotation
``exp(i theta[k])``. Every decision behind ``theta`` — instantaneous frequency
(from ``sum_ch X[k] conj(X_prev[k])``, the cross-spectrum of the stem *sum*),
peak picking and regions of influence for identity phase locking (Laroche &
Dolson 1999) on the summed power, onset detection and which bins to reset — is
made once per frame from the sum of all stems. Given ``theta`` the synthesis is
linear in the input, so the stretched stems sum exactly (to float rounding) to
the stretch of the mix, the stems stay sample-aligned and the stereo image is
kept (both channels get the same rotation). The per-bin rotation is tracked
rather than the synthesis phase: for a partial at frequency ``w``,
``theta += (Hs - Ha) * w`` each frame, which is the classic phase vocoder
``phi_s += Hs * w`` minus the analysis advance.

**Transients.** An onset detector runs ahead of the vocoder in the in-memory
source, on the mono sum of the stems: log spectral flux (mean rise in dB per
bin over the louder of the two previous 512-point frames, max-filtered over
three bins, every 128 frames), peak-picked against 1.5 dB and 1.5 times the
recent mean, at most one onset per 20 ms; each onset is placed to 4 frames by
a two-pass split of the first difference's power and carries a bin mask: the
bins whose energy rises by more than 6 dB across it (a flux peak with no such
bin is not an onset). The first analysis frame whose window reaches the onset
sets the masked bins to the linear phase ``theta[k] = w_k * delta`` that puts
the onset at its nominal output time, and while the onset is inside the window
those bins advance as a pure time shift, ``theta[k] += (Hs - Ha) * w_k`` (bin
centre frequency, no phase locking). Every frame that overlaps the attack is
then a shifted copy of the source aligned on the attack — locally a
time-domain (WSOLA-like) splice for the bins the attack owns, a phase vocoder
for the rest — so attacks are neither smeared nor pre-echoed and land where
the position map says they are.

**FFT.** numba has no ``np.fft``: the kernels use an iterative radix-2 real
FFT (a complex FFT of half the size plus the split step, precomputed
twiddles), batched over the rows of a frame (the stem sums, every stem but the
last, whose spectrum is derived: see :func:`_pv_frame`) so that the butterflies
vectorise. :func:`rfft` / :func:`irfft` expose it for tests.

**Resampler.** A 32-tap Kaiser-windowed sinc (beta 8, cutoff 0.92 of Nyquist,
table of 512 phases with linear interpolation), widened by ``|q|`` when
``|q| > 1`` so that it also low-passes before decimating. A 4-point cubic
Hermite interpolator is available (``interpolation="hermite"``); see
docs/stretch.md for their measured aliasing. The ratio is ramped linearly
across each block, so ratio changes are continuous in position and slope.

Kernels and dtypes
------------------
:meth:`Stretcher.process` checks its arguments and calls the kernels;
:func:`stretch_block` (float32 stems) and :func:`stretch_block_int16` do the
same from inside another numba kernel, given :attr:`Stretcher.state`. int16
stems are converted block by block into two float32 staging rings (one for
where the deck was, one for where a reset sends it), so the large kernels are
compiled once, for float32.

Position and latency
--------------------
The source is in memory, so the stretcher reads ahead of the audible position
(half a window plus the onset detector's look-ahead) instead of delaying the
output: ``latency_frames`` is 0. After each call, :attr:`Stretcher.positions`
holds the source position audible at every output frame of the block and
:meth:`Stretcher.process` returns the position audible at the first frame of
the next block. In keylock the position is the linear interpolation between
the centres of consecutive analysis frames placed at synthesis times ``k * Hs``;
a ratio change moves it after at most :attr:`Stretcher.ratio_delay_frames`
output frames (frames already scheduled), and the returned positions always
include that delay: they are what is heard.
"""

from __future__ import annotations

import math

import numba
import numpy as np
from numba.core import types
from numba.experimental import structref

from engine import fftw
from engine.fftw import execute

__all__ = ["Stretcher", "StretchHandle", "stretch_block", "stretch_block_int16", "stretch_handle_block",
           "prefetch_block", "prefetch_block_int16", "prefetch_handle_block", "rfft",
           "irfft", "semitones_to_factor", "MIN_RATIO", "MAX_RATIO", "UNITY_TOLERANCE"]

_JIT = dict(nogil=True, cache=True)

MIN_RATIO = 0.25
"""Smallest vocoder rate (source frames per output frame) in keylock; smaller ratios are clamped."""
MAX_RATIO = 4.0
"""Largest vocoder rate and largest |ratio| in vinyl mode; larger values are clamped."""
UNITY_TOLERANCE = 1e-4
"""Keylock within this of ratio 1 (and no key shift) is played by the resampler: a pitch error of at most
0.35 cent, instead of a phase vocoder doing nothing."""

_XFADE = 128          # frames of crossfade after reset() or a path switch
_UNBOUNDED = 1 << 62  # source length given for staging rings: staging already holds the silence outside the
                      # source (and a loop's periodic signal past its end)
_DET_N = 512          # onset detector FFT size
_DET_HOP = 128        # onset detector hop, source frames
_DET_HIST = 16        # detector frames kept (magnitudes, flux)
_DET_DELAY = 5        # detector frames between computing a frame and finalising its onset
_SUB = 32             # onset refinement resolution, source frames
_ONSETS = 64          # onset ring size
_MAP = 64             # ring of (synthesis time, analysis centre) per vocoder frame
_MONO = 4096          # the detector's ring of the mono mix, source frames
_REFINE_BACK = 384 + 64 + 128 + 1   # how far before a detector frame's centre onset refinement reads

# Indices of scalar state (float64 array _f, int64 array _i).
_F_U = 0          # vocoder output time of the next output frame (float: the resampler reads between samples)
_F_POS = 1        # source position of the next output frame, resampler-only path
_F_C_NOM = 2      # nominal (unrounded) analysis centre of the last vocoder frame
_F_Q_PREV = 3     # resampler step of the last output frame (ratio ramps start here)
_F_RESET_POS = 4  # source position asked for by reset()
_F_RATE = 5       # vocoder rate used for the last frame
_F_SIZE = 8

_I_MODE = 0         # -1 nothing playing, 0 resampler only, 1 vocoder only, 2 vocoder + resampler
_I_S_LAST = 1       # synthesis time (vocoder output frame) of the last frame centre
_I_C_LAST = 2       # integer analysis centre of the last frame (source frame)
_I_FRAMES = 3       # frames since the vocoder restarted
_I_U0 = 4           # vocoder time that maps to the restart position
_I_DET_POS = 5      # centre of the next onset-detector frame (source frame)
_I_DET_COUNT = 6    # detector frames computed since restart
_I_ON_HEAD = 7      # onset ring: next slot to write
_I_ON_TAIL = 8      # onset ring: oldest onset not yet used by the vocoder
_I_LAST_ONSET = 9   # source frame of the last onset found (for the minimum gap)
_I_XFADE = 10       # crossfade frames still to apply
_I_RESET = 11       # 1 when reset() is pending
_I_EDGE = 12        # right edge (source frame) of the last frame's window, minus the margin
_I_S_FIRST = 13     # synthesis time of the first frame after the restart
_I_MONO_HI = 14     # the detector's mono ring holds source frames up to here (exclusive)
_I_SIZE = 16


# --------------------------------------------------------------------------- FFT


def _fft_tables(n_fft: int) -> tuple[np.ndarray, ...]:
    """Bit-reversal permutation and twiddles for a real FFT of ``n_fft`` via a complex FFT of half the size."""
    m = n_fft // 2
    bits = m.bit_length() - 1
    idx = np.arange(m)
    rev = np.zeros(m, dtype=np.int64)
    for b in range(bits):
        rev |= ((idx >> b) & 1) << (bits - 1 - b)
    tw = np.exp(-2j * np.pi * np.arange(max(m // 2, 1)) / m)
    post = np.exp(-2j * np.pi * np.arange(m + 1) / n_fft)
    return rev, tw.real.copy(), tw.imag.copy(), post.real.copy(), post.imag.copy()


@numba.njit(**_JIT)
def _cfft(re, im, tw_re, tw_im, sign):
    """In-place radix-2 complex FFT of bit-reversed input; ``sign`` -1 gives the unscaled inverse."""
    m = re.shape[0]
    size = 2
    while size <= m:
        half = size >> 1
        step = m // size
        for k in range(half):
            wr = tw_re[k * step]
            wi = sign * tw_im[k * step]
            for a in range(k, m, size):
                b = a + half
                tr = wr * re[b] - wi * im[b]
                ti = wr * im[b] + wi * re[b]
                re[b] = re[a] - tr
                im[b] = im[a] - ti
                re[a] += tr
                im[a] += ti
        size <<= 1


@numba.njit(**_JIT)
def _rfft(x, out_re, out_im, rev, tw_re, tw_im, post_re, post_im, z_re, z_im):
    """Real FFT of ``x`` (length 2m) into ``out`` (m + 1 bins), numpy's sign and scale."""
    m = z_re.shape[0]
    for n in range(m):
        j = rev[n]
        z_re[j] = x[2 * n]
        z_im[j] = x[2 * n + 1]
    _cfft(z_re, z_im, tw_re, tw_im, 1.0)
    out_re[0] = z_re[0] + z_im[0]
    out_im[0] = 0.0
    out_re[m] = z_re[0] - z_im[0]
    out_im[m] = 0.0
    for k in range(1, m):
        ar = z_re[k]
        ai = z_im[k]
        br = z_re[m - k]
        bi = -z_im[m - k]
        er = 0.5 * (ar + br)
        ei = 0.5 * (ai + bi)
        o_r = 0.5 * (ai - bi)       # odd part: -i (Z[k] - conj Z[m-k]) / 2
        o_i = -0.5 * (ar - br)
        wr = post_re[k]
        wi = post_im[k]
        out_re[k] = er + wr * o_r - wi * o_i
        out_im[k] = ei + wr * o_i + wi * o_r


@numba.njit(**_JIT)
def _irfft(in_re, in_im, x, rev, tw_re, tw_im, post_re, post_im, z_re, z_im):
    """Inverse of :func:`_rfft` (numpy's ``irfft`` scale); imaginary parts of DC and Nyquist are ignored."""
    m = z_re.shape[0]
    for k in range(m):
        ar = in_re[k]
        ai = in_im[k] if k > 0 else 0.0
        br = in_re[m - k]
        bi = -in_im[m - k] if k > 0 else 0.0
        er = 0.5 * (ar + br)
        ei = 0.5 * (ai + bi)
        dr = 0.5 * (ar - br)
        di = 0.5 * (ai - bi)
        wr = post_re[k]
        wi = -post_im[k]
        o_r = dr * wr - di * wi
        o_i = dr * wi + di * wr
        j = rev[k]
        z_re[j] = er - o_i
        z_im[j] = ei + o_r
    _cfft(z_re, z_im, tw_re, tw_im, -1.0)
    s = 1.0 / m
    for n in range(m):
        x[2 * n] = z_re[n] * s
        x[2 * n + 1] = z_im[n] * s


@numba.njit(nogil=True, cache=True, fastmath=True)
def _cfft_batch(re, im, nb, tw_re, tw_im, sign):
    """:func:`_cfft` of the first ``nb`` columns of ``(m, B)`` arrays at once (the inner loop vectorises).

    Two radix-2 stages are fused per pass (radix 2^2), so the data is swept half as often; a leading
    radix-2 stage takes an odd number of stages.
    """
    m = re.shape[0]
    stages = 0
    while (1 << stages) < m:
        stages += 1
    h = 1
    if stages % 2 == 1:
        for a in range(0, m, 2):
            b = a + 1
            for t in range(nb):
                tr = re[b, t]
                ti = im[b, t]
                re[b, t] = re[a, t] - tr
                im[b, t] = im[a, t] - ti
                re[a, t] += tr
                im[a, t] += ti
        h = 2
    while h < m:
        size = 4 * h
        s1 = m // (2 * h)
        s2 = m // size
        for start in range(0, m, size):
            for k in range(h):
                # First stage (span h): twiddle W_{2h}^k on both pairs; second (span 2h): W_{4h}^k, and
                # W_{4h}^(k+h) = W_{4h}^k * (-i) (times the sign for the inverse).
                w1r = tw_re[k * s1]
                w1i = sign * tw_im[k * s1]
                w2r = tw_re[k * s2]
                w2i = sign * tw_im[k * s2]
                w3r = sign * w2i
                w3i = -sign * w2r
                a0 = start + k
                a1 = a0 + h
                a2 = a1 + h
                a3 = a2 + h
                for t in range(nb):
                    x1r = w1r * re[a1, t] - w1i * im[a1, t]
                    x1i = w1r * im[a1, t] + w1i * re[a1, t]
                    x3r = w1r * re[a3, t] - w1i * im[a3, t]
                    x3i = w1r * im[a3, t] + w1i * re[a3, t]
                    b0r = re[a0, t] + x1r
                    b0i = im[a0, t] + x1i
                    b1r = re[a0, t] - x1r
                    b1i = im[a0, t] - x1i
                    b2r = re[a2, t] + x3r
                    b2i = im[a2, t] + x3i
                    b3r = re[a2, t] - x3r
                    b3i = im[a2, t] - x3i
                    c2r = w2r * b2r - w2i * b2i
                    c2i = w2r * b2i + w2i * b2r
                    c3r = w3r * b3r - w3i * b3i
                    c3i = w3r * b3i + w3i * b3r
                    re[a0, t] = b0r + c2r
                    im[a0, t] = b0i + c2i
                    re[a2, t] = b0r - c2r
                    im[a2, t] = b0i - c2i
                    re[a1, t] = b1r + c3r
                    im[a1, t] = b1i + c3i
                    re[a3, t] = b1r - c3r
                    im[a3, t] = b1i - c3i
        h *= 4


@numba.njit(nogil=True, cache=True, fastmath=True)
def _rfft_batch(x, row0, nb, out_re, out_im, rev, tw_re, tw_im, post_re, post_im, z_re, z_im):
    """:func:`_rfft` of rows ``row0 .. row0 + nb - 1`` of ``x`` into the same rows of ``out``."""
    m = z_re.shape[0]
    for n in range(m):
        j = rev[n]
        for t in range(nb):
            z_re[j, t] = x[row0 + t, 2 * n]
            z_im[j, t] = x[row0 + t, 2 * n + 1]
    _cfft_batch(z_re, z_im, nb, tw_re, tw_im, 1.0)
    for t in range(nb):
        out_re[row0 + t, 0] = z_re[0, t] + z_im[0, t]
        out_im[row0 + t, 0] = 0.0
        out_re[row0 + t, m] = z_re[0, t] - z_im[0, t]
        out_im[row0 + t, m] = 0.0
    for k in range(1, m):
        wr = post_re[k]
        wi = post_im[k]
        for t in range(nb):
            ar = z_re[k, t]
            ai = z_im[k, t]
            br = z_re[m - k, t]
            bi = -z_im[m - k, t]
            er = 0.5 * (ar + br)
            ei = 0.5 * (ai + bi)
            o_r = 0.5 * (ai - bi)
            o_i = -0.5 * (ar - br)
            out_re[row0 + t, k] = er + wr * o_r - wi * o_i
            out_im[row0 + t, k] = ei + wr * o_i + wi * o_r


@numba.njit(nogil=True, cache=True, fastmath=True)
def _irfft_batch(in_re, in_im, row0, nb, x, rev, tw_re, tw_im, post_re, post_im, z_re, z_im):
    """:func:`_irfft` of rows ``row0 .. row0 + nb - 1`` of the spectra into the same rows of ``x``."""
    m = z_re.shape[0]
    for k in range(m):
        wr = post_re[k]
        wi = -post_im[k]
        j = rev[k]
        for t in range(nb):
            r = row0 + t
            ar = in_re[r, k]
            ai = in_im[r, k] if k > 0 else 0.0
            br = in_re[r, m - k]
            bi = -in_im[r, m - k] if k > 0 else 0.0
            er = 0.5 * (ar + br)
            ei = 0.5 * (ai + bi)
            dr = 0.5 * (ar - br)
            di = 0.5 * (ai - bi)
            o_r = dr * wr - di * wi
            o_i = dr * wi + di * wr
            z_re[j, t] = er - o_i
            z_im[j, t] = ei + o_r
    _cfft_batch(z_re, z_im, nb, tw_re, tw_im, -1.0)
    s = 1.0 / m
    for n in range(m):
        for t in range(nb):
            x[row0 + t, 2 * n] = z_re[n, t] * s
            x[row0 + t, 2 * n + 1] = z_im[n, t] * s


def rfft(x: np.ndarray) -> np.ndarray:
    """Real FFT with the numba kernel the vocoder uses (for tests; allocates).

    Parameters
    ----------
    x : np.ndarray
        1-D real signal whose length is a power of two, at least 4.

    Returns
    -------
    np.ndarray
        complex128 spectrum of ``len(x) // 2 + 1`` bins, equal to ``numpy.fft.rfft(x)``.
    """
    x = np.ascontiguousarray(x, dtype=np.float64)
    n = x.shape[0]
    if x.ndim != 1 or n < 4 or n & (n - 1):
        raise ValueError(f"engine/stretch.py: rfft needs a 1-D power-of-two length >= 4, got shape {x.shape}")
    tables = _fft_tables(n)
    re = np.zeros(n // 2 + 1)
    im = np.zeros(n // 2 + 1)
    _rfft(x, re, im, *tables, np.zeros(n // 2), np.zeros(n // 2))
    return re + 1j * im


def irfft(spectrum: np.ndarray) -> np.ndarray:
    """Inverse of :func:`rfft`: ``n // 2 + 1`` bins to ``n`` real samples (``numpy.fft.irfft``)."""
    spec = np.asarray(spectrum, dtype=np.complex128)
    n = 2 * (spec.shape[0] - 1)
    if spec.ndim != 1 or n < 4 or n & (n - 1):
        raise ValueError(f"engine/stretch.py: irfft needs n // 2 + 1 bins with n a power of two >= 4, got {spec.shape}")
    tables = _fft_tables(n)
    out = np.zeros(n)
    _irfft(np.ascontiguousarray(spec.real), np.ascontiguousarray(spec.imag), out, *tables,
           np.zeros(n // 2), np.zeros(n // 2))
    return out


# --------------------------------------------------------------------------- small helpers


_SIN_TAYLOR = tuple((-1.0) ** i / math.factorial(2 * i + 1) for i in range(11))
_COS_TAYLOR = tuple((-1.0) ** i / math.factorial(2 * i) for i in range(11))


@numba.njit(**_JIT)
def _unit_rotations(theta, rot_re, rot_im):
    """``rot = exp(i theta)`` for angles in [-pi, pi], to within 1e-15 of libm's cos and sin.

    Taylor series of degree 21 / 20 at the half angle (|y| <= pi/2, truncation below 3e-16), then
    the double-angle formulas. Branch-free, so the loop vectorises: about 4x faster than calling
    cos and sin for each of the 1025 bins, which was a tenth of a vocoder frame.
    """
    sc = _SIN_TAYLOR
    cc = _COS_TAYLOR
    for k in range(theta.shape[0]):
        y = 0.5 * theta[k]
        z = y * y
        s = y * (sc[0] + z * (sc[1] + z * (sc[2] + z * (sc[3] + z * (sc[4] + z * (sc[5] + z * (
            sc[6] + z * (sc[7] + z * (sc[8] + z * (sc[9] + z * sc[10]))))))))))
        c = cc[0] + z * (cc[1] + z * (cc[2] + z * (cc[3] + z * (cc[4] + z * (cc[5] + z * (
            cc[6] + z * (cc[7] + z * (cc[8] + z * (cc[9] + z * cc[10])))))))))
        rot_re[k] = 1.0 - 2.0 * s * s
        rot_im[k] = 2.0 * s * c


@numba.njit(**_JIT)
def _princarg(x):
    return x - 2.0 * math.pi * math.floor(x / (2.0 * math.pi) + 0.5)


# Cephes' atan rational approximation (S. L. Moshier): atan(t) = t + t z P(z) / Q(z), z = t^2, |t| <= 0.66.
_ATAN_P = (-8.750608600031904122785e-1, -1.615753718733365076637e1, -7.500855792314704667340e1,
           -1.228866684490136173410e2, -6.485021904942025371773e1)
_ATAN_Q = (2.485846490142306297962e1, 1.650270098316988542046e2, 4.328810604912902668951e2,
           4.853903996359136964868e2, 1.945506571482613964425e2)


@numba.njit(inline="always", **_JIT)
def _atan2(y, x):
    """``math.atan2(y, x)`` without branches, so that a loop of it vectorises (within 4.5e-16 rad of libm).

    Reduced to ``a = min(|x|, |y|) / max(|x|, |y|)`` in [0, 1], and above 0.66 to ``(a - 1) / (a + 1)``
    plus pi/4, where Cephes' rational approximation holds; the octant is restored by selects.
    """
    ax = abs(x)
    ay = abs(y)
    swap = ay > ax
    num = ax if swap else ay
    den = ay if swap else ax
    a = num / den if den > 0.0 else 0.0
    big = a > 0.66
    t = (a - 1.0) / (a + 1.0) if big else a
    z = t * t
    p0, p1, p2, p3, p4 = _ATAN_P
    q0, q1, q2, q3, q4 = _ATAN_Q
    p = (((p0 * z + p1) * z + p2) * z + p3) * z + p4
    q = ((((z + q0) * z + q1) * z + q2) * z + q3) * z + q4
    r = t + t * z * p / q
    r = r + 0.25 * math.pi if big else r
    r = 0.5 * math.pi - r if swap else r
    r = math.pi - r if x < 0.0 else r
    return -r if y < 0.0 else r


@numba.njit(**_JIT)
def _mono_sum(source, smask, slen, pos):
    """Sum of all stems and channels at source frame ``pos`` (0 outside the source)."""
    if pos < 0 or pos >= slen:
        return 0.0
    idx = pos & smask if smask else pos
    acc = 0.0
    for c in range(source.shape[2]):
        acc += _stem_sum(source, idx, c)
    return acc


@numba.njit(**_JIT)
def _stem_sum(source, idx, c):
    """Sum of the stems of channel ``c`` at array frame ``idx``, added in stem order in float32.

    This is how a float32 mix is made from its stems (``prep.synth``), so a mix given as one
    stem yields bit-identical phase decisions and the stretched stems sum to the stretched mix.
    """
    acc = np.float32(0.0)
    for s in range(source.shape[0]):
        acc = np.float32(acc + np.float32(source[s, idx, c]))
    return acc


@numba.njit(**_JIT)
def _in_source(start, n, slen):
    """Indices ``[i_lo, i_hi)`` of a window of ``n`` frames from ``start`` that lie in a source of ``slen`` frames."""
    i_lo = min(n, max(0, -start))
    return i_lo, max(i_lo, min(n, slen - start))


@numba.njit(**_JIT)
def _window(source, smask, slen, start, win, rows):
    """Window ``len(win)`` frames from ``start`` into the vocoder's analysis rows; zero outside the source.

    Rows 0..n_ch-1 get the stem sum per channel (as :func:`_stem_sum`), then stem st, channel c
    row ``n_ch + st * n_ch + c``.

    The window is read in runs of consecutive ring frames (split where a staging ring wraps), so the
    inner loops have no index masking or bounds tests.
    """
    n = win.shape[0]
    i_lo, i_hi = _in_source(start, n, slen)
    for row in range(rows.shape[0] - source.shape[2]):     # the last stem's rows are not analysed
        for i in range(0, i_lo):
            rows[row, i] = 0.0
        for i in range(i_hi, n):
            rows[row, i] = 0.0
    i = i_lo
    while i < i_hi:
        idx = (start + i) & smask if smask else start + i
        run = i_hi - i
        if smask and run > smask + 1 - idx:
            run = smask + 1 - idx
        _window_run(source, idx, run, win, i, rows)
        i += run


@numba.njit(**_JIT)
def _window_run(source, idx, run, win, i0, frames):
    """:func:`_window` for window frames ``[i0, i0 + run)``, read from array frame ``idx`` on.

    The last stem's rows are not written: its spectrum is the sum's minus the other stems'
    (see :func:`_pv_frame`), so only its share of the sum rows is needed.
    """
    n_stems = source.shape[0]
    n_ch = source.shape[2]
    last = n_stems - 1
    if n_ch == 2:
        # Stereo, the engine's case, written out: with the channel count a constant and one row per
        # array the loops vectorise (about 3x faster than the general form below; same results).
        left = frames[0]
        right = frames[1]
        for st in range(n_stems):
            src = source[st]
            if st < last:
                row_l = frames[2 + 2 * st]
                row_r = frames[3 + 2 * st]
                for t in range(run):
                    w = win[i0 + t]
                    row_l[i0 + t] = src[idx + t, 0] * w
                    row_r[i0 + t] = src[idx + t, 1] * w
            if st == 0:
                for t in range(run):
                    left[i0 + t] = src[idx + t, 0]
                    right[i0 + t] = src[idx + t, 1]
            else:      # the float32 sum in stem order, as _stem_sum makes it
                for t in range(run):
                    left[i0 + t] = np.float32(np.float32(left[i0 + t]) + src[idx + t, 0])
                    right[i0 + t] = np.float32(np.float32(right[i0 + t]) + src[idx + t, 1])
        for t in range(run):
            left[i0 + t] *= win[i0 + t]
            right[i0 + t] *= win[i0 + t]
        return
    for c in range(n_ch):
        for t in range(run):
            frames[c, i0 + t] = _stem_sum(source, idx + t, c) * win[i0 + t]
        for st in range(last):
            row = n_ch + st * n_ch + c
            for t in range(run):
                frames[row, i0 + t] = source[st, idx + t, c] * win[i0 + t]


# --------------------------------------------------------------------------- onset detector


@numba.njit(**_JIT)
def _det_frame(source, smask, slen, fi, det_buf, det_win, det_re, det_im, det_tab, det_z_re, det_z_im,
               det_mag, det_flux, det_centre, fftw_addresses, det_spectrum, mono):
    """Compute one detector frame (magnitudes in dB and flux) at centre ``fi[_I_DET_POS]``."""
    nd = det_buf.shape[0]
    kd = nd // 2 + 1
    centre = fi[_I_DET_POS]
    count = fi[_I_DET_COUNT]
    slot = count % _DET_HIST
    start = centre - nd // 2
    # Consecutive frames overlap by 3/4: the mono mix is summed once per source frame, into a ring that
    # onset refinement reads too.
    _mono_fill(source, smask, slen, fi, mono, start + nd, centre - _REFINE_BACK)
    for i in range(nd):
        det_buf[i] = mono[(start + i) & (_MONO - 1)] * det_win[i]
    if fftw_addresses[1] != 0:
        execute(fftw_addresses[0], fftw_addresses[1])
        for k in range(kd):
            det_re[k] = det_spectrum[0, k].real
            det_im[k] = det_spectrum[0, k].imag
    else:
        _rfft(det_buf, det_re, det_im, det_tab[0], det_tab[1], det_tab[2], det_tab[3], det_tab[4], det_z_re,
              det_z_im)
    db_per_neper = 10.0 / math.log(10.0)      # 10 log10(p) as a natural log: libm's log is 1.5x faster
    for k in range(kd):
        p = det_re[k] * det_re[k] + det_im[k] * det_im[k]
        # Floor about 72 dB below a full-scale sine's bin (|X| = 128): the noise and rounding in
        # near-silent bins must not look like rising energy.
        det_mag[slot, k] = db_per_neper * math.log(p + 1e-3)
    # Flux: mean rise in dB over the max of the two previous frames, max-filtered across 3 bins
    # so that vibrato and slow glides do not look like onsets.
    flux = 0.0
    if count >= 2:
        s1 = (count - 1) % _DET_HIST
        s2 = (count - 2) % _DET_HIST
        for k in range(1, kd - 1):
            ref = -200.0
            for kk in range(k - 1, k + 2):
                v = max(det_mag[s1, kk], det_mag[s2, kk])
                if v > ref:
                    ref = v
            d = det_mag[slot, k] - ref
            if d > 0.0:
                flux += d
        flux /= kd - 2
    det_flux[slot] = flux
    det_centre[slot] = centre
    fi[_I_DET_POS] = centre + _DET_HOP
    fi[_I_DET_COUNT] = count + 1


@numba.njit(**_JIT)
def _mono_fill(source, smask, slen, fi, mono, hi, lo):
    """Extend the detector's mono ring ``mono`` (:func:`_mono_sum` of source frame p at ``p & (_MONO - 1)``)
    up to source frame ``hi`` (exclusive), from ``lo`` when it holds nothing yet (after a restart)."""
    start = max(fi[_I_MONO_HI], lo)
    for p in range(start, hi):
        mono[p & (_MONO - 1)] = _mono_sum(source, smask, slen, p)
    if hi > fi[_I_MONO_HI]:
        fi[_I_MONO_HI] = hi


@numba.njit(**_JIT)
def _split_score(mono, t, n_pre, n_post):
    """Log ratio of the mean power after ``t`` to the mean power before it, of the mix's first difference."""
    mask = _MONO - 1
    pre = 1e-12
    post = 1e-12
    prev = mono[(t - n_pre - 1) & mask]
    for n in range(t - n_pre, t):
        v = mono[n & mask]
        d = v - prev
        prev = v
        pre += d * d
    for n in range(t, t + n_post):
        v = mono[n & mask]
        d = v - prev
        prev = v
        post += d * d
    return math.log(post / n_post) - math.log(pre / n_pre)


@numba.njit(**_JIT)
def _refine_onset(mono, lo, hi):
    """Source frame in [lo, hi) where the high-passed power of the mix jumps most.

    A coarse pass on a 32-frame grid (128 frames before against 64 after), then a fine pass on a
    4-frame grid (128 before against 16 after) around the coarse choice; the first difference
    emphasises attacks over sustained low notes. Reads the detector's mono ring (``_REFINE_BACK``
    frames before ``lo + 384`` at the earliest).
    """
    best = lo
    best_score = -1e300
    for t in range(lo, hi, _SUB):
        score = _split_score(mono, t, 128, 64)
        if score > best_score:
            best_score = score
            best = t
    coarse = best
    best_score = -1e300
    for t in range(coarse - 64, coarse + 65, 4):
        score = _split_score(mono, t, 128, 16)
        if score > best_score:
            best_score = score
            best = t
    return best


@numba.njit(**_JIT)
def _det_finalise(mono, fi, det_mag, det_flux, det_centre, on_pos, on_mask, flux_thresh_db):
    """Decide whether the frame ``_DET_DELAY`` frames back is an onset; if so store it with its bin mask."""
    count = fi[_I_DET_COUNT]
    m = count - 1 - _DET_DELAY
    if m < 2:
        return
    slot = m % _DET_HIST
    f = det_flux[slot]
    f_prev = det_flux[(m - 1) % _DET_HIST]
    f_next = det_flux[(m + 1) % _DET_HIST]
    if not (f > f_prev and f >= f_next and f > flux_thresh_db):
        return
    # Adaptive part of the threshold: well above the recent average flux (noise and hats in a busy mix).
    n_avg = min(m, _DET_HIST - _DET_DELAY - 2)
    avg = 0.0
    for j in range(1, n_avg + 1):
        avg += det_flux[(m - j) % _DET_HIST]
    if n_avg > 0:
        avg /= n_avg
    if f < 1.5 * avg + 1.0:
        return
    centre = det_centre[slot]
    t = _refine_onset(mono, centre - 384, centre + 256)
    if t - fi[_I_LAST_ONSET] < 882:   # 20 ms: clap bursts and flams count once
        return
    # Bin mask from the spectra just before and just after the onset.
    kd = det_mag.shape[1]
    pre = -1
    post = -1
    best_pre = -(1 << 62)
    best_post = 1 << 62
    for j in range(min(count, _DET_HIST)):
        c = det_centre[j]
        if c + _DET_N // 2 <= t and c > best_pre:
            best_pre = c
            pre = j
        if c >= t + 64 and c < best_post:   # window centred just after the attack
            best_post = c
            post = j
    if post < 0:
        post = (count - 1) % _DET_HIST
    head = fi[_I_ON_HEAD]
    s = head % _ONSETS
    on_pos[s] = t
    peak = -200.0
    for k in range(kd):
        if det_mag[post, k] > peak:
            peak = det_mag[post, k]
    n_set = 0
    for k in range(kd):
        rise = det_mag[post, k] - (det_mag[pre, k] if pre >= 0 else -30.0)
        on_mask[s, k] = 1 if (rise > 6.0 and det_mag[post, k] > peak - 50.0) else 0
        n_set += on_mask[s, k]
    if n_set == 0:
        return   # a flux peak without a rise across the onset (a change of timbre, a choke): not an attack
    fi[_I_ON_HEAD] = head + 1
    fi[_I_LAST_ONSET] = t


@numba.njit(inline="always", **_JIT)
def _det_run_until(source, smask, slen, fi, known_until, det, flux_thresh_db):
    """Run the detector until every onset before source frame ``known_until`` is in the ring."""
    # An onset found at frame m lies at or after centre_m - 448 (refinement reach); frame m is
    # finalised _DET_DELAY frames after it is computed.
    while fi[_I_DET_POS] - (_DET_DELAY + 1) * _DET_HOP - 384 <= known_until:
        _det_frame(source, smask, slen, fi, det[0], det[1], det[2], det[3], det[4], det[5], det[6], det[7], det[8],
                   det[9], det[12], det[13], det[14])
        _det_finalise(det[14], fi, det[7], det[8], det[9], det[10], det[11], flux_thresh_db)


# --------------------------------------------------------------------------- phase vocoder


@numba.njit(**_JIT)
def _pv_frame(source, smask, slen, fi, ff, rate, hs, pv, det, flux_thresh_db, phase_lock, transients):
    """Analyse, rotate and overlap-add the next vocoder frame for every stem and channel."""
    (win_a, win_s, tab, z_re, z_im, frames, spec_re, spec_im, rot_re, rot_im, prev_re, prev_im,
     theta, power, peak_of, peaks, free_until, ring, map_s, map_c, fftw_addresses, spectra) = pv
    # Rows of frames / spec: 0 .. n_ch - 1 the stem sum per channel (the decisions are made on it),
    # then stem st, channel c at n_ch + st * n_ch + c.
    sum_re = spec_re
    sum_im = spec_im
    det_mag = det[7]
    on_mask = det[11]
    on_pos = det[10]
    n_stems = source.shape[0]
    n_ch = source.shape[2]
    n = win_a.shape[0]
    half = n // 2
    nk = half + 1
    mask = ring.shape[1] - 1
    j = fi[_I_FRAMES]
    if j == 0:
        s = fi[_I_S_FIRST]
        c_nom = ff[_F_RESET_POS] + (s - fi[_I_U0]) * rate
    else:
        s = fi[_I_S_LAST] + hs
        c_nom = ff[_F_C_NOM] + hs * rate
    ci = int(math.floor(c_nom + 0.5))
    ha = ci - fi[_I_C_LAST]

    # Analysis: window and FFT the stem sum of each channel (for the decisions), then every stem but the
    # last, whose spectrum is the sum's minus the others' (the transform is linear: one transform per
    # channel fewer). The sum is transformed rather than summed from the stems' spectra so that a deck
    # of stems and a deck of their mix round alike and take the same decisions: the stretched stems sum
    # to the stretched mix. The last stem's share then carries the float32 rounding of the sum, which
    # is none for int16 stems (the decks' case: four of them sum exactly in float32).
    _window(source, smask, slen, ci - half, win_a, frames)
    rows = n_ch + n_stems * n_ch
    last = rows - n_ch
    use_fftw = fftw_addresses[1] != 0
    if use_fftw:
        # The stem rows stay in ``spectra`` (rotated there in place); only the sums are split out.
        execute(fftw_addresses[0], fftw_addresses[1])
        for r in range(n_ch):
            for k in range(nk):
                spec_re[r, k] = spectra[r, k].real
                spec_im[r, k] = spectra[r, k].imag
            for k in range(nk):
                spectra[last + r, k] = spectra[r, k]
            for row in range(n_ch + r, last, n_ch):
                for k in range(nk):
                    spectra[last + r, k] -= spectra[row, k]
    else:
        _rfft_batch(frames, 0, last, spec_re, spec_im, tab[0], tab[1], tab[2], tab[3], tab[4], z_re, z_im)
        for r in range(n_ch):
            for k in range(nk):
                spec_re[last + r, k] = spec_re[r, k]
                spec_im[last + r, k] = spec_im[r, k]
            for row in range(n_ch + r, last, n_ch):
                for k in range(nk):
                    spec_re[last + r, k] -= spec_re[row, k]
                    spec_im[last + r, k] -= spec_im[row, k]

    # Phase decisions, from the stem sum only.
    w0 = 2.0 * math.pi / n
    for k in range(nk):
        p = 0.0
        for c in range(n_ch):
            p += sum_re[c, k] * sum_re[c, k] + sum_im[c, k] * sum_im[c, k]
        power[k] = p
    if j == 0 or ha <= 0:
        for k in range(nk):
            theta[k] = 0.0
            free_until[k] = -(1 << 62)
    else:
        n_peaks = 0
        if phase_lock:
            for k in range(2, nk - 2):
                p = power[k]
                if p > 1e-24 and p > power[k - 1] and p >= power[k + 1] and p > power[k - 2] and p >= power[k + 2]:
                    peaks[n_peaks] = k
                    n_peaks += 1
        if n_peaks > 0:
            # Identity phase locking: each bin takes the rotation of the peak whose region it is in;
            # regions split at the quietest bin between neighbouring peaks.
            lo = 0
            for q in range(n_peaks):
                pk = peaks[q]
                if q + 1 < n_peaks:
                    hi = pk + 1
                    for kk in range(pk + 1, peaks[q + 1]):
                        if power[kk] < power[hi]:
                            hi = kk
                else:
                    hi = nk - 1
                for kk in range(lo, hi + 1):
                    peak_of[kk] = pk
                lo = hi + 1
        else:
            for k in range(nk):
                peak_of[k] = k
            # Without phase locking every bin is its own peak: the loop over peaks below takes them all.
            for k in range(1, nk - 1):
                peaks[k - 1] = k
            n_peaks = nk - 2
        window_left = ci - half
        # Bins owned by an attack in the window advance as a pure time shift, so every frame lines the
        # attack (and its first milliseconds) up at the same output time. Written without a branch
        # (the shift computed for every bin, kept where free) so that the loop vectorises.
        for k in range(1, nk - 1):
            shifted = _princarg(theta[k] + (hs - ha) * w0 * k)
            if free_until[k] >= window_left:
                theta[k] = shifted
        # Instantaneous frequency of the free peaks from the cross-spectrum of the stem sum, summed over
        # channels: gathered into rot_re / rot_im (free until the rotations are computed) so that the
        # arctangents run as one branch-free loop that vectorises.
        m = 0
        for q in range(n_peaks):
            k = peaks[q]
            if free_until[k] >= window_left:
                continue
            cr = 0.0
            cim = 0.0
            for c in range(n_ch):
                cr += sum_re[c, k] * prev_re[c, k] + sum_im[c, k] * prev_im[c, k]
                cim += sum_im[c, k] * prev_re[c, k] - sum_re[c, k] * prev_im[c, k]
            peaks[m] = k
            rot_re[m] = cr
            rot_im[m] = cim
            m += 1
        for q in range(m):
            rot_re[q] = _atan2(rot_im[q], rot_re[q])
        for q in range(m):
            k = peaks[q]
            wk = w0 * k
            omega = wk + _princarg(rot_re[q] - ha * wk) / ha
            theta[k] = _princarg(theta[k] + (hs - ha) * omega)
        for k in range(1, nk - 1):
            pk = peak_of[k]
            if pk != k and free_until[k] < window_left:
                theta[k] = theta[pk]
        theta[0] = 0.0
        theta[nk - 1] = 0.0

    # Onsets reaching this frame's window: reset their bins to the linear phase that puts the
    # attack at its nominal output time; those bins then advance as a time shift while it is in the window.
    edge = ci + half - 64
    if transients:
        _det_run_until(source, smask, slen, fi, edge + 1, det, flux_thresh_db)
        lo_edge = fi[_I_EDGE] if j > 0 else ci - half
        while fi[_I_ON_TAIL] < fi[_I_ON_HEAD]:
            slot = fi[_I_ON_TAIL] % _ONSETS
            t = on_pos[slot]
            if t > edge:
                break
            fi[_I_ON_TAIL] += 1
            if t <= lo_edge:
                continue
            delta = (t - ci) * (1.0 - 1.0 / rate)
            shift = det_mag.shape[1] - 1
            for k in range(1, nk - 1):
                kd = (k * (shift) + half // 2) // half
                if on_mask[slot, kd]:
                    theta[k] = _princarg(w0 * k * delta)
                    free_until[k] = t
    fi[_I_EDGE] = edge

    # Synthesis: rotate, inverse FFT, window and overlap-add into the ring.
    _unit_rotations(theta, rot_re, rot_im)
    for c in range(n_ch):
        for k in range(nk):
            prev_re[c, k] = sum_re[c, k]
            prev_im[c, k] = sum_im[c, k]
    out0 = s - half
    if use_fftw:
        for row in range(n_ch, rows):
            spectra[row, 0] = spectra[row, 0].real * rot_re[0]   # c2r wants real DC and Nyquist bins
            for k in range(1, nk - 1):
                a = spectra[row, k].real
                b = spectra[row, k].imag
                spectra[row, k] = complex(a * rot_re[k] - b * rot_im[k], a * rot_im[k] + b * rot_re[k])
            spectra[row, nk - 1] = spectra[row, nk - 1].real * rot_re[nk - 1]
        execute(fftw_addresses[0], fftw_addresses[2])
        gain = 1.0 / n          # FFTW's inverse is unnormalised
    else:
        for row in range(n_ch, rows):
            for k in range(nk):
                a = spec_re[row, k]
                b = spec_im[row, k]
                spec_re[row, k] = a * rot_re[k] - b * rot_im[k]
                spec_im[row, k] = a * rot_im[k] + b * rot_re[k]
        _irfft_batch(spec_re, spec_im, n_ch, rows - n_ch, frames, tab[0], tab[1], tab[2], tab[3], tab[4], z_re, z_im)
        gain = 1.0
    _overlap_add(ring, mask, out0, n - hs, frames, win_s, gain)

    slot = j % _MAP
    map_s[slot] = s
    map_c[slot] = ci
    fi[_I_S_LAST] = s
    fi[_I_C_LAST] = ci
    fi[_I_FRAMES] = j + 1
    ff[_F_C_NOM] = c_nom
    ff[_F_RATE] = rate


@numba.njit(**_JIT)
def _overlap_add(ring, mask, out0, n_old, frames, win_s, gain):
    """Window the synthesis rows of ``frames`` and overlap-add them into ``ring`` from frame ``out0``.

    The first ``n_old`` frames add to what earlier frames left; the rest are new and are assigned
    (the same float32 values as zeroing then adding). Runs split where the ring wraps; stereo is
    written out as in :func:`_window_run`.
    """
    n_stems = ring.shape[0]
    n_ch = ring.shape[2]
    n = win_s.shape[0]
    i = 0
    while i < n:
        idx = (out0 + i) & mask
        end = min(n, i + mask + 1 - idx)
        for st in range(n_stems):
            dst = ring[st]
            if n_ch == 2:
                row_l = frames[2 + 2 * st]
                row_r = frames[3 + 2 * st]
                for t in range(i, min(end, n_old)):
                    w = win_s[t] * gain
                    dst[idx + t - i, 0] += row_l[t] * w
                    dst[idx + t - i, 1] += row_r[t] * w
                for t in range(max(i, n_old), end):
                    w = win_s[t] * gain
                    dst[idx + t - i, 0] = row_l[t] * w
                    dst[idx + t - i, 1] = row_r[t] * w
            else:
                for c in range(n_ch):
                    row = frames[n_ch + st * n_ch + c]
                    for t in range(i, end):
                        w = win_s[t] * gain
                        if t < n_old:
                            dst[idx + t - i, c] += row[t] * w
                        else:
                            dst[idx + t - i, c] = row[t] * w
        i = end


@numba.njit(**_JIT)
def _pv_position(fi, map_s, map_c, hs, u):
    """Source position audible at vocoder output time ``u`` (interpolated between frame centres)."""
    s_first = fi[_I_S_FIRST]
    j = int(math.floor((u - s_first) / hs))
    last = fi[_I_FRAMES] - 1
    if j > last - 1:
        j = last - 1
    if j < 0:
        j = 0
    if j < last - _MAP + 2:
        j = last - _MAP + 2
    a = j % _MAP
    b = (j + 1) % _MAP
    return map_c[a] + (u - map_s[a]) * (map_c[b] - map_c[a]) / hs


# --------------------------------------------------------------------------- resampler


@numba.njit(**_JIT)
def _load(buf, st, p, c, mask, length):
    if p < 0 or p >= length:
        return 0.0
    return buf[st, p & mask if mask else p, c]


@numba.njit(**_JIT)
def _resample(buf, mask, length, x0, q0, q1, n, out, out_off, positions, pos_from_ring, fi, map_s, map_c, hs,
              sinc, zeros, weights, hermite):
    """Read ``n`` frames from ``buf`` starting at position ``x0`` with a step ramping from ``q0`` to ``q1``
    and write them to ``out[:, out_off:]``. Frame ``p`` of the signal is ``buf[:, p & mask]`` (``mask`` 0:
    ``buf[:, p]``), silent outside ``[0, length)``.

    Returns the read position after the last frame.
    """
    n_stems = buf.shape[0]
    n_ch = buf.shape[2]
    table_per_zero = (sinc.shape[0] - 2) // zeros
    if q0 == 1.0 and q1 == 1.0 and x0 == math.floor(x0):
        # A unit step on whole frames reads the samples themselves (the sinc is 1 at 0 and 0 elsewhere).
        p0 = int(x0)
        for i in range(n):
            if positions.shape[0] > 0:
                positions[out_off + i] = _pv_position(fi, map_s, map_c, hs, x0 + i) if pos_from_ring else x0 + i
            for st in range(n_stems):
                for c in range(n_ch):
                    out[st, out_off + i, c] = _load(buf, st, p0 + i, c, mask, length)
        return x0 + n
    x = x0
    for i in range(n):
        q = q0 + (q1 - q0) * (i + 1) / n
        if positions.shape[0] > 0:
            positions[out_off + i] = _pv_position(fi, map_s, map_c, hs, x) if pos_from_ring else x
        xi = int(math.floor(x))
        frac = x - xi
        if hermite:
            for st in range(n_stems):
                for c in range(n_ch):
                    y0 = _load(buf, st, xi - 1, c, mask, length)
                    y1 = _load(buf, st, xi, c, mask, length)
                    y2 = _load(buf, st, xi + 1, c, mask, length)
                    y3 = _load(buf, st, xi + 2, c, mask, length)
                    c1 = 0.5 * (y2 - y0)
                    c2 = y0 - 2.5 * y1 + 2.0 * y2 - 0.5 * y3
                    c3 = 0.5 * (y3 - y0) + 1.5 * (y1 - y2)
                    out[st, out_off + i, c] = ((c3 * frac + c2) * frac + c1) * frac + y1
        else:
            aq = abs(q)
            stretch = aq if aq > 1.0 else 1.0
            reach = int(math.ceil(zeros * stretch))
            n_taps = 2 * reach
            first = xi - reach + 1
            inv = 1.0 / stretch
            for t in range(n_taps):
                d = abs(x - (first + t)) * inv * table_per_zero
                di = int(d)
                if di >= sinc.shape[0] - 1:
                    weights[t] = 0.0
                else:
                    a = d - di
                    weights[t] = (sinc[di] + a * (sinc[di + 1] - sinc[di])) * inv
            inside = first >= 0 and first + n_taps <= length
            for st in range(n_stems):
                for c in range(n_ch):
                    acc = 0.0
                    if inside and mask:
                        for t in range(n_taps):
                            acc += weights[t] * buf[st, (first + t) & mask, c]
                    elif inside:
                        for t in range(n_taps):
                            acc += weights[t] * buf[st, first + t, c]
                    else:
                        for t in range(n_taps):
                            acc += weights[t] * _load(buf, st, first + t, c, mask, length)
                    out[st, out_off + i, c] = acc
        x += q
    return x


# --------------------------------------------------------------------------- block driver


@numba.njit(inline="always", **_JIT)
def _ensure_pv(source, smask, slen, fi, ff, rate, hs, until_u, pv, det, flux_thresh_db, phase_lock, transients):
    """Compute vocoder frames until its output is complete for every time before ``until_u``."""
    half = pv[0].shape[0] // 2
    while fi[_I_FRAMES] == 0 or fi[_I_S_LAST] + hs - half < until_u:
        _pv_frame(source, smask, slen, fi, ff, rate, hs, pv, det, flux_thresh_db, phase_lock, transients)


@numba.njit(inline="always", **_JIT)
def _prefetch(source, smask, slen, fi, ff, hs, pv, det, params):
    if fi[_I_MODE] < 1 or fi[_I_RESET] == 1 or fi[_I_FRAMES] == 0:
        return False     # no vocoder running (or a restart pending): nothing to compute ahead
    flux_thresh_db, phase_lock, transients, zeros, hermite = params
    _pv_frame(source, smask, slen, fi, ff, ff[_F_RATE], hs, pv, det, flux_thresh_db, phase_lock, transients)
    return True


@numba.njit(**_JIT)
def prefetch_block(state, source):
    """Compute the next vocoder frame now, ahead of need (float32 stems); returns whether it did.

    Lets the engine spread the decks' frame computations over blocks instead of letting every deck's
    hop fall in the same block (see :meth:`Stretcher.prefetch`).
    """
    fi, ff, hs, pv, det, rs, params, xfade, positions, stage, stage_valid, stage_reach = state
    return _prefetch(source, 0, source.shape[1], fi, ff, hs, pv, det, params)


@numba.njit(inline="always", **_JIT)
def prefetch_block_int16(state, source):
    """:func:`prefetch_block` for int16 stems: reads the staging ring the last block filled."""
    fi, ff, hs, pv, det, rs, params, xfade, positions, stage, stage_valid, stage_reach = state
    ring = stage[stage_reach[2]]
    return _prefetch(ring, ring.shape[1] - 1, _UNBOUNDED, fi, ff, hs, pv, det, params)


@numba.njit(**_JIT)
def _render(mode, source, smask, slen, fi, ff, rate, q, n, out, off, positions, hs, pv, det, rs, params):
    """Write ``n`` frames of the current path into ``out[:, off:off + n]`` (and their positions)."""
    flux_thresh_db, phase_lock, transients, zeros, hermite = params
    sinc, weights, no_positions = rs
    ring = pv[17]
    map_s = pv[18]
    map_c = pv[19]
    if mode == 0:
        ff[_F_POS] = _resample(source, smask, slen, ff[_F_POS], ff[_F_Q_PREV], q, n, out, off, positions, False,
                               fi, map_s, map_c, hs, sinc, zeros, weights, hermite)
        ff[_F_Q_PREV] = q
        return
    if mode == 1:
        u = int(ff[_F_U])
        _ensure_pv(source, smask, slen, fi, ff, rate, hs, u + n, pv, det, flux_thresh_db, phase_lock, transients)
        mask = ring.shape[1] - 1
        for st in range(ring.shape[0]):
            for i in range(n):
                for c in range(ring.shape[2]):
                    out[st, off + i, c] = ring[st, (u + i) & mask, c]
        if positions.shape[0] > 0:
            for i in range(n):
                positions[off + i] = _pv_position(fi, map_s, map_c, hs, u + i)
        ff[_F_U] = u + n
        ff[_F_Q_PREV] = 1.0
        return
    q0 = ff[_F_Q_PREV]
    u = ff[_F_U]
    u_end = u + n * q0 + (q - q0) * (n + 1) / 2.0
    aq = max(abs(q), abs(q0), 1.0)
    reach = 4 if hermite else int(math.ceil(zeros * aq)) + 1
    _ensure_pv(source, smask, slen, fi, ff, rate, hs, int(math.ceil(max(u, u_end))) + reach + 1, pv, det,
               flux_thresh_db, phase_lock, transients)
    ff[_F_U] = _resample(ring, ring.shape[1] - 1, 1 << 62, u, q0, q, n, out, off, positions, True,
                         fi, map_s, map_c, hs, sinc, zeros, weights, hermite)
    ff[_F_Q_PREV] = q


@numba.njit(**_JIT)
def _restart(mode, position, fi, ff, rate, q, hs, pv, zeros):
    """Start the path ``mode`` afresh so that ``position`` is audible at the next output frame."""
    fi[_I_MODE] = mode
    ff[_F_Q_PREV] = q if mode != 1 else 1.0
    if mode == 0:
        ff[_F_POS] = position
        return
    ring = pv[17]
    ring[:] = 0.0
    half = pv[0].shape[0] // 2
    # The vocoder's output starts complete ``pad`` frames before the restart time so that the
    # resampler's kernel has real signal on both sides from the first output frame on.
    pad = int(math.ceil(zeros * MAX_RATIO)) + 2 if mode == 2 else 0
    ff[_F_U] = 0.0
    fi[_I_U0] = 0
    fi[_I_S_FIRST] = -pad - half + hs
    fi[_I_FRAMES] = 0
    ff[_F_RESET_POS] = position
    c_first = position + fi[_I_S_FIRST] * rate
    fi[_I_DET_POS] = int(math.floor(c_first)) - half - 1024
    fi[_I_DET_COUNT] = 0
    fi[_I_MONO_HI] = -(1 << 62)
    fi[_I_ON_HEAD] = 0
    fi[_I_ON_TAIL] = 0
    fi[_I_LAST_ONSET] = -(1 << 62)


@numba.njit(inline="always", **_JIT)
def _process(mode, src_old, mask_old, src_new, mask_new, slen, fi, ff, rate, q, n, out, positions, hs, pv, det, rs,
             params, xfade_buf):
    """One block: handle a pending reset or path switch (with crossfade), then render ``n`` frames.

    ``src_old`` is what the deck played before a pending reset (read for the crossfade), ``src_new``
    what it plays from now on; each is the source itself (mask 0) or a staging ring (mask > 0).
    """
    old = fi[_I_MODE]
    if fi[_I_RESET] == 1 or old != mode:
        if fi[_I_RESET] == 1 or old < 0:
            position = ff[_F_RESET_POS]
        elif old == 0:
            position = ff[_F_POS]
        else:
            position = _pv_position(fi, pv[18], pv[19], hs, ff[_F_U])
        if old >= 0:
            # Let the old path run on for the crossfade, at its last rate and step.
            n_x = xfade_buf.shape[1]
            _render(old, src_old, mask_old, slen, fi, ff, ff[_F_RATE], ff[_F_Q_PREV], n_x, xfade_buf, 0, rs[2], hs,
                    pv, det, rs, params)
            fi[_I_XFADE] = n_x
        fi[_I_RESET] = 0
        _restart(mode, position, fi, ff, rate, q, hs, pv, params[3])
    ff[_F_RATE] = rate
    _render(mode, src_new, mask_new, slen, fi, ff, rate, q, n, out, 0, positions, hs, pv, det, rs, params)
    left = fi[_I_XFADE]
    if left > 0:
        n_x = xfade_buf.shape[1]
        k0 = n_x - left
        m = min(left, n)
        for i in range(m):
            g = 0.5 - 0.5 * math.cos(math.pi * (k0 + i + 0.5) / n_x)
            for st in range(out.shape[0]):
                for c in range(out.shape[2]):
                    out[st, i, c] = g * out[st, i, c] + (1.0 - g) * xfade_buf[st, k0 + i, c]
        fi[_I_XFADE] = left - m
    if mode == 0:
        return ff[_F_POS]
    return _pv_position(fi, pv[18], pv[19], hs, ff[_F_U])


@numba.njit(**_JIT)
def _stage_fill(source, stage, lo, hi, mask, scale, loop_start, loop_end):
    """Convert source frames [lo, hi) to float32 into the staging ring ``stage`` (frame p at p & mask).

    With a loop (``loop_end > loop_start``) the staged signal is periodic past ``loop_end``: frame
    ``p >= loop_end`` holds source frame ``loop_start + (p - loop_start) % (loop_end - loop_start)``,
    so the vocoder and the resampler play a loop as one continuous signal.
    """
    n_src = source.shape[1]
    length = loop_end - loop_start
    for p in range(lo, hi):
        idx = p & mask
        q = p
        if length > 0 and p >= loop_end:
            q = loop_start + (p - loop_start) % length
        if 0 <= q < n_src:
            for st in range(stage.shape[0]):
                for c in range(stage.shape[2]):
                    stage[st, idx, c] = source[st, q, c] * scale
        else:
            for st in range(stage.shape[0]):
                for c in range(stage.shape[2]):
                    stage[st, idx, c] = 0.0


@numba.njit(**_JIT)
def _paths(ratio, keylock, semitones, mode_now):
    """Path (0 resampler, 1 vocoder, 2 both), vocoder rate and resampler step for one block.

    Keylock at a ratio within :data:`UNITY_TOLERANCE` of 1 without key shift plays through the resampler
    (a plain copy at exactly 1): nothing to stretch, and a fraction of the cost. The band is twice as
    wide for staying as for entering, so a synced deck hovering around 1 does not switch back and forth.
    """
    factor = 2.0 ** (semitones / 12.0) if semitones != 0.0 else 1.0
    near = UNITY_TOLERANCE * (2.0 if mode_now == 0 else 1.0)
    if keylock and semitones == 0.0 and abs(ratio - 1.0) < near:
        keylock = False
    if keylock:
        q = factor
        rate = ratio / factor
        mode = 1 if semitones == 0.0 else 2
    else:
        q = ratio * factor
        rate = 1.0 / factor
        mode = 0 if semitones == 0.0 else 2
    rate = min(max(rate, MIN_RATIO), MAX_RATIO)
    q = min(max(q, 0.0 if mode == 2 else -MAX_RATIO), MAX_RATIO)
    return mode, rate, q


@numba.njit(**_JIT)
def stretch_block(state, source, out, n_frames, ratio, keylock, semitones):
    """Kernel form of :meth:`Stretcher.process` for float32 stems, callable from other numba kernels.

    ``state`` is :attr:`Stretcher.state`. Nothing is checked here: ``source`` must be C-contiguous
    float32 ``(n_stems, frames, channels)``, ``out`` C-contiguous float32 with at least ``n_frames``
    (<= ``max_block_frames``) frames. Returns the source position audible at the next block's first frame.
    """
    fi, ff, hs, pv, det, rs, params, xfade, positions, stage, stage_valid, stage_reach = state
    mode, rate, q = _paths(ratio, keylock, semitones, fi[_I_MODE])
    return _process(mode, source, 0, source, 0, source.shape[1], fi, ff, rate, q, n_frames, out, positions, hs,
                    pv, det, rs, params, xfade)


@numba.njit(**_JIT)
def _playing_position(fi, ff, hs, pv):
    """Audible position of the path now playing, ignoring a pending reset."""
    if fi[_I_MODE] == 0:
        return ff[_F_POS]
    return _pv_position(fi, pv[18], pv[19], hs, ff[_F_U])


@numba.njit(**_JIT)
def _cover(source, stage, stage_valid, slot, position, behind, ahead, loop_start, loop_end):
    """Make staging ring ``slot`` hold every source frame one block can read around ``position``."""
    lo = int(math.floor(position)) - behind
    hi = int(math.ceil(position)) + ahead
    v_lo = stage_valid[slot, 0]
    v_hi = stage_valid[slot, 1]
    if v_lo <= lo and hi <= v_hi:
        return
    ring = stage[slot]
    width = ring.shape[1]
    mask = width - 1
    scale = 1.0 / 32768.0
    if v_hi <= v_lo or hi <= v_lo or lo >= v_hi:
        _stage_fill(source, ring, lo, hi, mask, scale, loop_start, loop_end)
        stage_valid[slot, 0] = lo
        stage_valid[slot, 1] = hi
        return
    if hi > v_hi:   # moving forward: the ring forgets the oldest frames
        _stage_fill(source, ring, v_hi, hi, mask, scale, loop_start, loop_end)
        v_hi = hi
        v_lo = max(v_lo, v_hi - width)
    if lo < v_lo:   # moving backward (reverse play)
        _stage_fill(source, ring, lo, v_lo, mask, scale, loop_start, loop_end)
        v_lo = lo
        v_hi = min(v_hi, v_lo + width)
    stage_valid[slot, 0] = v_lo
    stage_valid[slot, 1] = v_hi


@numba.njit(**_JIT)
def _stage_block(state, source):
    """Stage what the next block reads from int16 ``source``; returns the rings (old path, new path)."""
    fi, ff, hs, pv, det, rs, params, xfade, positions, stage, stage_valid, stage_reach = state
    behind = stage_reach[0]
    ahead = stage_reach[1]
    old = stage_reach[2]
    playing = fi[_I_MODE] >= 0
    if playing:
        _cover(source, stage, stage_valid, old, _playing_position(fi, ff, hs, pv), behind, ahead, stage_reach[3],
               stage_reach[4])
    new = old
    if fi[_I_RESET] == 1 or not playing:
        if playing:
            new = 1 - old
        stage_valid[new, 0] = 0
        stage_valid[new, 1] = 0
        _cover(source, stage, stage_valid, new, ff[_F_RESET_POS], behind, ahead, stage_reach[3], stage_reach[4])
    stage_reach[2] = new
    return old, new


@numba.njit(inline="always", **_JIT)
def stretch_block_int16(state, source, out, n_frames, ratio, keylock, semitones):
    """:func:`stretch_block` for int16 stems (read as value / 32768).

    The frames a block can read are converted into float32 staging rings first (a few hundred
    frames per block while playing, about 30000 after a seek), so the vocoder and resampler
    kernels are the float32 ones. After giving a different ``source`` array, call
    :meth:`Stretcher.reset`.
    """
    fi, ff, hs, pv, det, rs, params, xfade, positions, stage, stage_valid, stage_reach = state
    mode, rate, q = _paths(ratio, keylock, semitones, fi[_I_MODE])
    old, new = _stage_block(state, source)
    mask = stage.shape[2] - 1
    return _process(mode, stage[old], mask, stage[new], mask, _UNBOUNDED, fi, ff, rate, q, n_frames, out,
                    positions, hs, pv, det, rs, params, xfade)


@structref.register
class _StretchHandleType(types.StructRef):
    def preprocess_fields(self, fields):
        return tuple((name, types.unliteral(t)) for name, t in fields)


class StretchHandle(structref.StructRefProxy):
    """:attr:`Stretcher.state` behind one reference, for the calls the audio thread makes every block.

    numba types and unboxes every argument on each call from Python: the state tuple's 60 arrays
    cost about 5 us per call, this one object about 1 us. It holds the same arrays (no copy).
    """

    def __new__(cls, state: tuple):
        return structref.StructRefProxy.__new__(cls, state)


structref.define_proxy(StretchHandle, _StretchHandleType, ["state"])


@numba.njit(inline="always", **_JIT)
def stretch_handle_block(handle, source, out, n_frames, ratio, keylock, semitones):
    """:func:`stretch_block_int16` given :attr:`Stretcher.handle` (what the engine's decks call)."""
    return stretch_block_int16(handle.state, source, out, n_frames, ratio, keylock, semitones)


@numba.njit(**_JIT)
def prefetch_handle_block(handle, source):
    """:func:`prefetch_block_int16` given :attr:`Stretcher.handle`."""
    return prefetch_block_int16(handle.state, source)


# --------------------------------------------------------------------------- public API


def _arrays(obj):
    """Every numpy array inside nested tuples."""
    if isinstance(obj, np.ndarray):
        yield obj
    elif isinstance(obj, tuple):
        for item in obj:
            yield from _arrays(item)


def semitones_to_factor(semitones: float) -> float:
    """Frequency factor of a key shift: ``2 ** (semitones / 12)``."""
    return 2.0 ** (float(semitones) / 12.0)


def _sinc_table(zeros: int, per_zero: int = 512, cutoff: float = 0.92, beta: float = 8.0) -> np.ndarray:
    """One side of a Kaiser-windowed sinc, ``per_zero`` points per input sample, two guard zeros at the end."""
    x = np.arange(zeros * per_zero + 1) / per_zero
    h = cutoff * np.sinc(cutoff * x) * np.kaiser(2 * zeros * per_zero + 1, beta)[zeros * per_zero:]
    h[-1] = 0.0
    return np.concatenate([h, [0.0]]).astype(np.float64)


class Stretcher:
    """Keylock time-stretch, key shift and vinyl-mode resampling for one deck's stems.

    Parameters
    ----------
    n_stems : int
        Stems per deck (4: drums, bass, vocals, other).
    channels : int
        Channels per stem (2).
    sample_rate : int
        Sample rate in Hz; the defaults below are tuned for 44100.
    max_block_frames : int
        Largest ``n_frames`` that :meth:`process` will be given.
    fft_size : int
        Vocoder window in frames (power of two, 1024-8192). 2048 at 44.1 kHz
        (46 ms) was measured best on the benchmark material; see docs/stretch.md.
    overlap : int
        Window overlap factor (4 or 8); the synthesis hop is ``fft_size // overlap``.
    interpolation : str
        Resampler: "sinc" (32-tap Kaiser-windowed sinc, anti-aliased when
        speeding up) or "hermite" (4-point cubic, cheaper, aliases more).
    phase_lock : bool
        Identity phase locking (Laroche & Dolson); off gives the plain phase vocoder.
    transients : bool
        Onset detection and phase reset at attacks.
    onset_threshold_db : float
        Minimum mean rise, in dB per bin, of the detector's spectral flux for an onset.
    use_fftw : bool
        Let FFTW do the transforms when it is installed (see :mod:`engine.fftw`); else the numba FFT.
    record_positions : bool
        Fill :attr:`positions` on every call. A deck needs only the position after the block (what
        :meth:`process` returns); skipping the per-frame positions saves about 3 % of its block.

    Attributes
    ----------
    latency_frames : int
        Output frames between a source position being reported and being
        heard: 0, because the source is in memory and the stretcher reads ahead.
    ratio_delay_frames : int
        Output frames after which a ratio change (in keylock) has moved the
        audible position; :attr:`positions` already includes this delay.
    positions : np.ndarray
        float64 ``(max_block_frames,)``: after :meth:`process`, the source
        position (frames) audible at each output frame of the block (empty
        without ``record_positions``).
    state : tuple
        Every buffer and setting the kernels use, for calling
        :func:`stretch_block` / :func:`stretch_block_int16` from the engine's
        own numba kernel instead of :meth:`process` (no Python in the callback).
    handle : StretchHandle
        The same state behind one reference, for :func:`stretch_handle_block`
        (what a deck calls every block: about 1 us of call overhead instead of 5).
    """

    def __init__(self, n_stems: int = 4, channels: int = 2, sample_rate: int = 44100, max_block_frames: int = 1024,
                 fft_size: int = 2048, overlap: int = 4, interpolation: str = "sinc", phase_lock: bool = True,
                 transients: bool = True, onset_threshold_db: float = 1.5, use_fftw: bool = True,
                 record_positions: bool = True):
        if fft_size < 256 or fft_size & (fft_size - 1):
            raise ValueError(f"engine/stretch.py: fft_size must be a power of two >= 256, got {fft_size}")
        if overlap not in (4, 8):
            raise ValueError(f"engine/stretch.py: overlap must be 4 or 8, got {overlap}")
        if interpolation not in ("sinc", "hermite"):
            raise ValueError(f"engine/stretch.py: interpolation must be 'sinc' or 'hermite', got {interpolation!r}")
        if n_stems < 1 or channels < 1 or max_block_frames < 1:
            raise ValueError("engine/stretch.py: n_stems, channels and max_block_frames must be >= 1")
        self.n_stems = int(n_stems)
        self.channels = int(channels)
        self.sample_rate = int(sample_rate)
        self.max_block_frames = int(max_block_frames)
        self.fft_size = int(fft_size)
        self.hop_frames = self.fft_size // overlap
        self.interpolation = interpolation
        self.latency_frames = 0
        self.ratio_delay_frames = self.fft_size // 2 + self.hop_frames
        n, hs, m = self.fft_size, self.hop_frames, self.n_stems * self.channels
        nk = n // 2 + 1
        zeros = 16
        win = np.hanning(n + 1)[:-1]
        norm = np.sum(win * win) / hs
        need = 2 * (max_block_frames * MAX_RATIO + 2 * zeros * MAX_RATIO + 2 * n + hs) + 64
        ring_len = 1 << int(math.ceil(math.log2(need)))
        rows = m + self.channels
        self._pv = (
            win.copy(), win / norm, _fft_tables(n), np.zeros((n // 2, rows)), np.zeros((n // 2, rows)),
            np.zeros((rows, n)), np.zeros((rows, nk)), np.zeros((rows, nk)), np.zeros(nk), np.zeros(nk),
            np.zeros((self.channels, nk)), np.zeros((self.channels, nk)),
            np.zeros(nk), np.zeros(nk), np.zeros(nk, dtype=np.int64), np.zeros(nk, dtype=np.int64),
            np.full(nk, -(1 << 62), dtype=np.int64),
            np.zeros((self.n_stems, ring_len, self.channels), dtype=np.float32),
            np.zeros(_MAP, dtype=np.int64), np.zeros(_MAP),
        )
        # FFTW does the vocoder's transforms when it is installed (about 3x faster than the numba FFT).
        spectra = np.zeros((rows, nk), dtype=np.complex128)
        addresses = np.zeros(3, dtype=np.int64)
        if use_fftw and fftw.available():
            self._fftw_plans = fftw.RealFFTPlans(self._pv[5], spectra, (0, rows - self.channels),
                                                 (self.channels, m))
            addresses = self._fftw_plans.addresses
        self._pv = self._pv + (addresses, spectra)
        self.uses_fftw = bool(addresses[1])
        kd = _DET_N // 2 + 1
        self._det = (
            np.zeros(_DET_N), np.hanning(_DET_N + 1)[:-1].copy(), np.zeros(kd), np.zeros(kd), _fft_tables(_DET_N),
            np.zeros(_DET_N // 2), np.zeros(_DET_N // 2), np.full((_DET_HIST, kd), -30.0), np.zeros(_DET_HIST),
            np.zeros(_DET_HIST, dtype=np.int64), np.zeros(_ONSETS, dtype=np.int64),
            np.zeros((_ONSETS, kd), dtype=np.uint8),
        )
        det_spectrum = np.zeros((1, kd), dtype=np.complex128)
        det_addresses = np.zeros(3, dtype=np.int64)
        if use_fftw and fftw.available():
            self._fftw_det = fftw.RealFFTPlans(self._det[0].reshape(1, _DET_N), det_spectrum, (0, 1))
            det_addresses = self._fftw_det.addresses
        self._det = self._det + (det_addresses, det_spectrum, np.zeros(_MONO))
        self._rs = (_sinc_table(zeros), np.zeros(2 * zeros * int(MAX_RATIO) + 8), np.zeros(0))
        self._params = (float(onset_threshold_db), bool(phase_lock), bool(transients), zeros,
                        interpolation == "hermite")
        self._f = np.zeros(_F_SIZE)
        self._i = np.zeros(_I_SIZE, dtype=np.int64)
        self._i[_I_MODE] = -1
        self._xfade = np.zeros((self.n_stems, _XFADE, self.channels), dtype=np.float32)
        self.positions = np.zeros(self.max_block_frames if record_positions else 0)
        # int16 stems are converted block by block into float32 staging rings, so that the kernels are
        # compiled for float32 only. Bounds on how far behind and ahead of the audible position one
        # block reads (window, resampler pad, onset look-ahead, ratios up to 4); two rings because a
        # reset reads the old place (crossfade) and the new one in the same block.
        n_max = self.max_block_frames + _XFADE
        self._stage_behind = 4 * n_max + 4 * (4 * zeros + 2 + n // 2) + n + 4096
        self._stage_ahead = 4 * n_max + 4 * (4 * zeros + 2 + n // 2 + hs) + n // 2 + 4096 + 2048
        stage_len = 1 << int(math.ceil(math.log2(2 * (self._stage_behind + self._stage_ahead))))
        self._stage = np.zeros((2, self.n_stems, stage_len, self.channels), dtype=np.float32)
        self._stage_valid = np.zeros((2, 2), dtype=np.int64)     # source frames [lo, hi) held by each ring
        # behind, ahead, ring in use, loop start, loop end (source frames; end <= start: no loop)
        self._stage_reach = np.array([self._stage_behind, self._stage_ahead, 0, 0, 0], dtype=np.int64)
        self._stage_source = None
        self.state = (self._i, self._f, self.hop_frames, self._pv, self._det, self._rs, self._params, self._xfade,
                      self.positions, self._stage, self._stage_valid, self._stage_reach)
        self.handle = StretchHandle(self.state)
        # Write every buffer once now, so that no page of them is first touched in the audio thread.
        for a in _arrays(self.state):
            a += 0
        self.reset(0.0)

    def reset(self, position_frames: float, crossfade: bool = True) -> None:
        """Restart at ``position_frames`` (a seek or a loop jump) on the next :meth:`process`.

        That block starts with ``position_frames`` audible, crossfaded (2.9 ms,
        raised cosine) from where the deck was, so jumps do not click. With
        ``crossfade=False`` it starts from silence (a stopped deck starting
        again: the engine fades it in).
        """
        self._f[_F_RESET_POS] = float(position_frames)
        self._i[_I_RESET] = 1
        if not crossfade:
            self._i[_I_MODE] = -1

    def bind(self, source: np.ndarray) -> None:
        """Check and adopt ``source`` (int16 or float32 ``(n_stems, frames, channels)``) for the kernels.

        After this, the engine may call :func:`stretch_block_int16` / :func:`stretch_block` with
        :attr:`state` and ``source`` directly, block after block, without :meth:`process`'s checks.
        """
        if (source.ndim != 3 or source.shape[0] != self.n_stems or source.shape[2] != self.channels
                or not source.flags.c_contiguous or source.dtype not in (np.int16, np.float32)):
            raise ValueError(f"engine/stretch.py: source must be C-contiguous int16 or float32 ({self.n_stems}, "
                             f"frames, {self.channels}), got {source.dtype} {source.shape}")
        self._stage_source = source
        self._stage_valid[:] = 0

    def set_loop(self, start_frames: int, end_frames: int) -> bool:
        """Play source frames ``[start_frames, end_frames)`` as a periodic signal (int16 sources only).

        Positions keep growing past the loop end (:meth:`process` returns them unwrapped: the caller
        maps ``p >= end`` to ``start + (p - start) % (end - start)``); the vocoder runs straight
        through the seam, so a loop costs nothing per turn and has no crossfade. ``end <= start``
        clears the loop (what has been staged stays periodic: restart with :meth:`reset` at the real
        position).

        Returns
        -------
        bool
            Whether the stretcher had already read source frames past the loop end, so that the caller
            must :meth:`reset` (at the same position) for the loop to take effect.
        """
        start, end = int(start_frames), int(end_frames)
        self._stage_reach[3] = start
        self._stage_reach[4] = end
        if end <= start:
            self._stage_valid[:] = 0
            return True
        for slot in range(2):                       # forget what was staged at and past the loop end
            lo, hi = self._stage_valid[slot]
            if hi > end:
                self._stage_valid[slot] = (lo, end) if lo < end else (0, 0)
        i, f = self._i, self._f
        if i[_I_RESET] == 1 or i[_I_MODE] < 0:
            return False
        if i[_I_MODE] == 0:
            read_until = f[_F_POS] + 2 * 16 * MAX_RATIO + 2
        else:
            read_until = max(i[_I_C_LAST] + self.fft_size // 2, i[_I_DET_POS] + _DET_N // 2)
        return read_until >= end

    @property
    def lead_frames(self) -> float:
        """Output frames the vocoder has ready beyond the next output frame (-1: vocoder not running)."""
        # In Python, not a kernel: the engine asks for every deck every block, and a call costs more.
        i = self._i
        if i[_I_MODE] < 1 or i[_I_RESET] == 1 or i[_I_FRAMES] == 0:
            return -1.0
        return float(i[_I_S_LAST] + self.hop_frames - self.fft_size // 2 - self._f[_F_U])

    def prefetch(self, source: np.ndarray, lead_frames: float) -> bool:
        """Compute one vocoder frame ahead of need if less than ``lead_frames`` output frames are ready.

        ``source`` is the array last given to :meth:`process`. The engine calls this for the deck that is
        least ahead, a bounded number of times per block, so that the decks' frame computations (the
        expensive part, one per hop) fall in different blocks instead of piling up in one.
        """
        lead = self.lead_frames
        if lead < 0.0 or lead >= lead_frames:
            return False
        if source.dtype == np.float32:
            return bool(prefetch_block(self.state, source))
        if source is not self._stage_source:
            return False
        return bool(prefetch_handle_block(self.handle, source))

    @property
    def position_frames(self) -> float:
        """Source position audible at the next output frame (valid after the first :meth:`process`)."""
        if self._i[_I_RESET] or self._i[_I_MODE] < 0:
            return float(self._f[_F_RESET_POS])
        return float(_playing_position(self._i, self._f, self.hop_frames, self._pv))


    def process(self, source: np.ndarray, out: np.ndarray, n_frames: int, ratio: float, keylock: bool,
                semitones: float = 0.0) -> float:
        """Render ``n_frames`` output frames of every stem.

        Parameters
        ----------
        source : np.ndarray
            The deck's stems, int16 or float32 ``(n_stems, frames, channels)``;
            frames outside it read as silence.
        out : np.ndarray
            float32 ``(n_stems, >= n_frames, channels)``; frames ``[:n_frames]`` are written.
        n_frames : int
            Output frames, 1 to ``max_block_frames``.
        ratio : float
            Source frames consumed per output frame (1.25 plays 25 % faster).
            Keylock clamps the vocoder rate ``ratio / 2**(semitones/12)`` to
            [0.25, 4]; vinyl mode accepts -4 to 4 (negative plays backwards,
            without key shift).
        keylock : bool
            Keep the pitch (time-stretch) instead of letting it follow the speed.
        semitones : float
            Key shift in semitones, on top of either mode.

        Returns
        -------
        float
            Source position, in frames, audible at the first frame of the next block.
        """
        if not 0 < n_frames <= self.max_block_frames:
            raise ValueError(f"engine/stretch.py: n_frames must be 1..{self.max_block_frames}, got {n_frames}")
        # The kernels do not check bounds: shapes and layouts are checked here, once per block.
        if (source.ndim != 3 or source.shape[0] != self.n_stems or source.shape[2] != self.channels
                or not source.flags.c_contiguous):
            raise ValueError(f"engine/stretch.py: source must be C-contiguous ({self.n_stems}, frames, "
                             f"{self.channels}), got shape {source.shape}")
        if (out.dtype != np.float32 or out.ndim != 3 or out.shape[0] != self.n_stems or out.shape[1] < n_frames
                or out.shape[2] != self.channels or not out.flags.c_contiguous):
            raise ValueError(f"engine/stretch.py: out must be C-contiguous float32 ({self.n_stems}, >= {n_frames}, "
                             f"{self.channels}), got {out.dtype} {out.shape}")
        # The same steps as stretch_block / stretch_block_int16, called one by one so that the big
        # kernel (_process) is compiled once, for float32, whatever the stems' dtype.
        mode, rate, q = _paths(float(ratio), bool(keylock), float(semitones), int(self._i[_I_MODE]))
        if source.dtype == np.float32:
            return _process(mode, source, 0, source, 0, source.shape[1], self._i, self._f, rate, q, int(n_frames),
                            out, self.positions, self.hop_frames, self._pv, self._det, self._rs, self._params,
                            self._xfade)
        if source.dtype != np.int16:
            raise ValueError(f"engine/stretch.py: source must be int16 or float32, got {source.dtype}")
        if source is not self._stage_source:
            self._stage_source = source
            self._stage_valid[:] = 0
        old, new = _stage_block(self.state, source)
        mask = self._stage.shape[2] - 1
        return _process(mode, self._stage[old], mask, self._stage[new], mask, _UNBOUNDED, self._i, self._f,
                        rate, q, int(n_frames), out, self.positions, self.hop_frames, self._pv, self._det, self._rs,
                        self._params, self._xfade)
