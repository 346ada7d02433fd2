"""PROTOTYPE"""

from __future__ import annotations

import math
from typing import Callable

import numba
import numpy as np
from scipy import fft as sp_fft

from prep.audio import SAMPLE_RATE

STEM_NAMES = ("drums", "bass", "vocals", "other")


@numba.njit(cache=True, nogil=True)
def _median_rows(x, k, out):  # pragma: no cover - compiled
    """Running median of odd length ``k`` along axis 1 of ``x``, edges reflected (d c b a | a b c d)."""
    rows, n = x.shape
    h = k // 2
    win = np.empty(k, dtype=np.float32)
    for r in range(rows):
        for i in range(k):
            j = i - h
            if j < 0:
                j = -j - 1
            while j >= n or j < 0:
                if j >= n:
                    j = 2 * n - 1 - j
                if j < 0:
                    j = -j - 1
            win[i] = x[r, j]
        win.sort()
        out[r, 0] = win[h]
        for c in range(1, n):
            jo = c - 1 - h
            while jo < 0 or jo >= n:
                if jo < 0:
                    jo = -jo - 1
                if jo >= n:
                    jo = 2 * n - 1 - jo
            jn = c + h
            while jn < 0 or jn >= n:
                if jn < 0:
                    jn = -jn - 1
                if jn >= n:
                    jn = 2 * n - 1 - jn
            old = x[r, jo]
            new = x[r, jn]
            # locate old (any equal element will do), then slide it to new's place
            lo, hi = 0, k - 1
            while lo < hi:
                mid = (lo + hi) // 2
                if win[mid] < old:
                    lo = mid + 1
                else:
                    hi = mid
            p = lo
            if new >= old:
                while p + 1 < k and win[p + 1] < new:
                    win[p] = win[p + 1]
                    p += 1
            else:
                while p > 0 and win[p - 1] > new:
                    win[p] = win[p - 1]
                    p -= 1
            win[p] = new
            out[r, c] = win[h]
    return out


def _median_time(x: np.ndarray, k: int) -> np.ndarray:
    """Median over ``k`` frames; ``x`` is (frames, bins)."""
    xt = np.ascontiguousarray(x.T)
    out = np.empty_like(xt)
    _median_rows(xt, k, out)
    return out.T


def _median_freq(x: np.ndarray, k: int) -> np.ndarray:
    out = np.empty_like(x)
    _median_rows(np.ascontiguousarray(x), k, out)
    return out


def _box_time(x: np.ndarray, k: int) -> np.ndarray:
    """Mean over ``k`` (odd) frames along axis 0, edges shortened."""
    if k <= 1:
        return x
    h = k // 2
    c = np.cumsum(x, axis=0)
    c = np.concatenate([np.zeros((1,) + x.shape[1:], c.dtype), c])
    m = x.shape[0]
    hi = np.minimum(np.arange(m) + h + 1, m)
    lo = np.maximum(np.arange(m) - h, 0)
    return (c[hi] - c[lo]) / (hi - lo).astype(np.float32).reshape((-1,) + (1,) * (x.ndim - 1))


from scipy.ndimage import maximum_filter1d, maximum_filter

def _kick_model(P, T=16, top_frac=0.25, s_lo=0.25, s_hi=0.45, sup_thr=0.01, dil=2, base=2, comb="max", decay_mode=1, slack=1.1):
    F, nb = P.shape
    mag = np.sqrt(P)
    flux = np.maximum(0, np.diff(mag, axis=0, prepend=mag[:1])).sum(1)
    thr = 0.1 * np.percentile(flux, 99)
    pk = (flux == maximum_filter1d(flux, 5)) & (flux > thr)
    on = np.flatnonzero(pk); on = on[on >= base]
    if len(on) < 4: return np.zeros_like(P)
    idx = np.minimum(on[:, None] + np.arange(T)[None], F - 1)
    valid = (on[:, None] + np.arange(T)[None]) < F
    ref = mag[on - 1] if base == 1 else np.min(np.stack([mag[on - b] for b in range(1, base + 1)]), 0)
    N = np.maximum(0, mag[idx] - ref[:, None, :]) * valid[..., None]
    e = (N**2).sum(2)
    decay = e[:, 6:].sum(1) / (e[:, :3].sum(1) + 1e-20)
    v = np.log1p(N / (N.max() * 1e-3 + 1e-30)).reshape(len(on), -1)
    v = v - v.mean(1, keepdims=True)
    v /= np.linalg.norm(v, axis=1, keepdims=True) + 1e-9
    sim = v @ v.T
    kk = max(2, int(top_frac * len(on)))
    dens = np.sort(sim, axis=1)[:, -kk:].mean(1)
    cand = np.flatnonzero(decay <= np.median(decay))
    med = cand[np.argmax(dens[cand])]
    s = sim[med]
    members = np.flatnonzero(s >= np.sort(s)[-kk])
    tmpl = np.median(N[members]**2, axis=0); tmpl /= tmpl.max() + 1e-30
    sup = maximum_filter(tmpl, size=(2 * dil + 1, 2 * dil + 1)) > sup_thr
    w = np.clip((s - s_lo) / (s_hi - s_lo), 0, 1)
    if decay_mode:
        tm = np.sqrt(tmpl)
        pkf = np.argmax(tm, axis=0)
        # per-bin tail decay of the template, magnitude per frame
        ratios = tm[1:] / (tm[:-1] + 1e-20)
        after = np.arange(1, T)[:, None] > pkf[None, :]
        rho = np.array([np.median(ratios[after[:, f], f]) if after[:, f].any() else 0.9 for f in range(nb)])
        rho = np.clip(rho * slack, 0, 1)
        Nm = N.copy()
        for tau in range(1, T):
            lim = np.where(tau > pkf[None, :], Nm[:, tau - 1] * rho[None, :], np.inf)
            Nm[:, tau] = np.minimum(Nm[:, tau], lim)
        N = Nm
    K = np.zeros_like(P)
    for j in np.flatnonzero(w > 0):
        t0 = on[j]; m = min(T, F - t0)
        kj = w[j] * N[j, :m]**2 * sup[:m]
        if comb == "max": np.maximum(K[t0:t0+m], kj, out=K[t0:t0+m])
        else: K[t0:t0+m] += kj
    return K


class DspSeparator:
    name = "dsp"

    def __init__(self, n_fft: int = 4096, hop: int = 1024, harmonic_kernel_frames: int = 17,
                 percussive_kernel_bins: int = 17, mask_power: float = 2.0, bass_crossover_hz: float = 160.0,
                 crossover_order: float = 4.0, vocal_band_hz: tuple[float, float] = (200.0, 5000.0),
                 vocal_cue: str = "center", center_power: float = 4.0, center_smooth_frames: int = 5,
                 block_frames: int = 512, kick: str = "template", margin: float = 1.0, vocal_gain: float = 1.0, comb_bins: float = 1.0, comb_rel: float = 0.015, kick_power: float = 1.0, voicing=None, bass_comb: float = 0.0, bass_comb_hz: float = 600.0, f0_min_hz: float = 150.0, f0_smooth: int = 1):
        self.n_fft, self.hop = n_fft, hop
        self.kh, self.kp = harmonic_kernel_frames, percussive_kernel_bins
        self.power = mask_power
        self.fc = bass_crossover_hz
        self.order = crossover_order
        self.vband = vocal_band_hz
        self.vocal_cue = vocal_cue
        self.center_power = center_power
        self.cs = center_smooth_frames
        self.block = block_frames
        self.kick = kick
        self.margin = margin
        self.vocal_gain = vocal_gain
        self.comb_bins, self.comb_rel = comb_bins, comb_rel
        self.kick_power, self.voicing = kick_power, voicing
        self.bass_comb, self.bass_comb_hz = bass_comb, bass_comb_hz
        self.f0_min_hz, self.f0_smooth = f0_min_hz, f0_smooth
        self.window = (0.5 - 0.5 * np.cos(2 * np.pi * np.arange(n_fft) / n_fft)).astype(np.float32)
        f = np.arange(n_fft // 2 + 1) * SAMPLE_RATE / n_fft
        self.freqs = f
        self.w_low = (1.0 / (1.0 + (f / self.fc) ** (2 * self.order))).astype(np.float32)
        lo, hi = self.vband
        self.w_band = ((1.0 - 1.0 / (1.0 + (f / lo) ** (2 * self.order))) / (1.0 + (f / hi) ** (2 * self.order))).astype(np.float32)
        self.ctx = self.kh // 2 + self.cs // 2 + 2

    # ---- STFT plumbing
    def _stft(self, x: np.ndarray, a: int, b: int) -> np.ndarray:
        N, hop = self.n_fft, self.hop
        n = x.shape[0]
        s = a * hop - N // 2
        e = (b - 1) * hop + N // 2
        seg = np.zeros((e - s, x.shape[1]), np.float32)
        lo, hi = max(s, 0), min(e, n)
        if hi > lo:
            seg[lo - s:hi - s] = x[lo:hi]
        out = []
        for ch in range(x.shape[1]):
            fr = np.lib.stride_tricks.sliding_window_view(seg[:, ch], N)[::hop] * self.window
            out.append(sp_fft.rfft(fr, axis=-1, workers=1))
        return np.stack(out)

    def _ola(self, dest: np.ndarray, frames: np.ndarray, a: int) -> None:
        """Overlap-add windowed time frames (m, N) starting at frame ``a`` into dest (n,)."""
        N, hop = self.n_fft, self.hop
        r = N // hop
        m = frames.shape[0]
        acc = np.zeros((m + r - 1, hop), np.float32)
        fr = frames.reshape(m, r, hop)
        for j in range(r):
            acc[j:j + m] += fr[:, j]
        acc = acc.reshape(-1)
        s = a * hop - N // 2
        n = dest.shape[0]
        lo, hi = max(s, 0), min(s + acc.shape[0], n)
        if hi > lo:
            dest[lo:hi] += acc[lo - s:hi - s]

    def _wsum(self, s: int, e: int, F: int) -> np.ndarray:
        N, hop = self.n_fft, self.hop
        t_lo = max(0, -(-(s + N // 2 - N + 1) // hop))
        t_hi = min(F - 1, (e - 1 + N // 2) // hop)
        m = t_hi - t_lo + 1
        buf = np.zeros(e, np.float32) if False else None
        acc = np.zeros(((m + N // hop - 1) * hop,), np.float32)
        w2 = self.window ** 2
        r = N // hop
        accv = acc.reshape(-1, hop)
        w2r = w2.reshape(r, hop)
        for j in range(r):
            accv[j:j + m] += w2r[j]
        start = t_lo * hop - N // 2
        return acc[s - start:e - start]

    # ---- masks
    def _masks(self, X: np.ndarray, K=None) -> np.ndarray:
        L, R = X[0], X[1]
        PL = L.real ** 2 + L.imag ** 2
        PR = R.real ** 2 + R.imag ** 2
        P = 0.5 * (PL + PR)
        mag = np.sqrt(P)
        H = _median_time(mag, self.kh)
        Pc = _median_freq(mag, self.kp)
        eps = np.float32(1e-12)
        if self.power == 2.0:
            h, q = H * H, Pc * Pc
        else:
            h, q = H ** self.power, Pc ** self.power
        if self.margin == 1.0:
            mH = (h + eps) / (h + q + 2 * eps)
            mP = 1.0 - mH
            mR = None
        else:
            mm = np.float32(self.margin ** self.power)
            mH = (h + eps) / (h + mm * q + 2 * eps)
            mP = (q + eps) / (q + mm * h + 2 * eps)
            mR = 1.0 - mH - mP
        if K is not None and self.kick != "none":
            nb = K.shape[1]
            mK = np.zeros_like(mH)
            mK[:, :nb] = np.minimum(1.0, K / (P[:, :nb] + eps)) ** self.kick_power
            mP = mP + mH * mK
            mH = mH * (1.0 - mK)
        bass = mH * self.w_low
        drums = mP
        hm = mH * (1.0 - self.w_low)
        if self.bass_comb:
            bc = self._bass_comb(mag * mH)
            bass = bass + hm * bc
            hm = hm * (1.0 - bc)
        if self.vocal_cue == "center":
            C = L * np.conj(R)
            Cs = _box_time(C, self.cs)
            Ps = _box_time(PL + PR, self.cs)
            coh = 2.0 * np.abs(Cs) / (Ps + eps)
            v = np.clip(coh, 0, 1) ** self.center_power
        elif self.vocal_cue in ("mid", "f0", "f0mid", "f0coh", "repet"):
            Ps = _box_time(PL + PR, self.cs)
            if self.vocal_cue != "f0coh":
                Cr = _box_time((L * np.conj(R)).real, self.cs)
                midness = np.clip(0.5 + Cr / (Ps + eps), 0, 1)
            else:
                Cs = _box_time(L * np.conj(R), self.cs)
                midness = np.clip(2.0 * np.abs(Cs) / (Ps + eps), 0, 1)
            v = midness ** self.center_power
            if self.vocal_cue == "repet":
                A = mag * hm * self.w_band
                lg = np.log1p(A[:, :480] / (A.max() * 1e-4 + 1e-30))
                lg /= np.linalg.norm(lg, axis=1, keepdims=True) + 1e-9
                sim = lg @ lg.T
                m = sim.shape[0]
                ii = np.arange(m)
                sim[np.abs(ii[:, None] - ii[None]) < 40] = -np.inf
                kq = min(10, max(1, m - 81))
                nn = np.argpartition(-sim, kq, axis=1)[:, :kq]
                bg = np.median(A[nn], axis=1)
                rv = np.clip(1.0 - bg / (A + eps), 0, 1)
                v = rv * v
            elif self.vocal_cue.startswith("f0"):
                Aband = mag * hm * self.w_band
                comb = self._f0_comb(Aband)
                e = Aband ** 2
                r = (comb * e).sum(1) / (e.sum(1) + eps)
                rm = (comb * e * midness).sum(1) / (e.sum(1) + eps)
                if hasattr(self, "_diag"):
                    self._diag.append(np.stack([r, rm, e.sum(1)], 1))
                if self.voicing is not None:
                    lo_, hi_, k_ = self.voicing
                    rs = _box_time(rm, k_) if k_ > 1 else rm
                    vt = np.clip((rs - lo_) / (hi_ - lo_), 0, 1).astype(np.float32)
                    comb = comb * vt[:, None]
                v = comb if self.vocal_cue == "f0" else comb * v
        elif self.vocal_cue == "none":
            v = np.ones_like(mH)
        else:
            raise ValueError(self.vocal_cue)
        vocals = hm * self.w_band * np.clip(v * self.vocal_gain, 0, 1)
        return np.stack([drums, bass, vocals]).astype(np.float32)

    def _f0_comb(self, A: np.ndarray) -> np.ndarray:
        """Harmonic comb of the most salient pitch per frame (0..1 per bin)."""
        df = SAMPLE_RATE / self.n_fft
        if not hasattr(self, "_f0_idx"):
            n_c = int(np.floor(36 * np.log2(1000.0 / self.f0_min_hz))) + 1
            cands = self.f0_min_hz * 2 ** (np.arange(n_c) / 36.0)
            H = 12
            hf = cands[:, None] * np.arange(1, H + 1)[None]
            idx = np.clip(np.round(hf / df).astype(int), 0, len(self.freqs) - 1)
            wts = (0.85 ** np.arange(H))[None] * (hf < 5000)
            self._f0_idx, self._f0_w, self._f0_c = idx, wts.astype(np.float32), cands
        Ac = np.sqrt(A)
        Am = np.maximum(Ac, np.maximum(np.roll(Ac, 1, axis=1), np.roll(Ac, -1, axis=1)))
        S = (Am[:, self._f0_idx] * self._f0_w[None]).sum(-1)  # (m, cands)
        bi = np.argmax(S, axis=1)
        if self.f0_smooth > 1:
            from scipy.ndimage import median_filter
            bi = median_filter(bi, self.f0_smooth, mode="nearest")
        best = self._f0_c[bi]  # (m,)
        f = self.freqs[None, :]
        ratio = f / best[:, None]
        h = np.maximum(np.round(ratio), 1)
        d = np.abs(f - h * best[:, None])
        sig = np.maximum(self.comb_bins * df, self.comb_rel * f)
        return np.exp(-0.5 * (d / sig) ** 2).astype(np.float32)

    def _bass_comb(self, A: np.ndarray) -> np.ndarray:
        df = SAMPLE_RATE / self.n_fft
        if not hasattr(self, "_b_idx"):
            cands = 35.0 * 2 ** (np.arange(0, 30 * 3) / 36.0)  # 35..~200 Hz
            H = 8
            hf = cands[:, None] * np.arange(1, H + 1)[None]
            idx = np.clip(np.round(hf / df).astype(int), 0, len(self.freqs) - 1)
            wts = (0.8 ** np.arange(H))[None] * (hf < self.bass_comb_hz)
            self._b_idx, self._b_w, self._b_c = idx, wts.astype(np.float32), cands
        Ac = np.sqrt(A)
        Am = np.maximum(Ac, np.maximum(np.roll(Ac, 1, axis=1), np.roll(Ac, -1, axis=1)))
        S = (Am[:, self._b_idx] * self._b_w[None]).sum(-1)
        best = self._b_c[np.argmax(S, axis=1)]
        f = self.freqs[None, :]
        h = np.maximum(np.round(f / best[:, None]), 1)
        d = np.abs(f - h * best[:, None])
        sig = np.maximum(self.comb_bins * df, self.comb_rel * f)
        fade = 1.0 / (1.0 + (f / self.bass_comb_hz) ** 8)
        return (np.exp(-0.5 * (d / sig) ** 2) * fade * self.bass_comb).astype(np.float32)

    def _process(self, mix: np.ndarray, components=(), progress=None):
        mix = np.ascontiguousarray(mix, dtype=np.float32)
        n = mix.shape[0]
        N, hop = self.n_fft, self.hop
        F = n // hop + 1
        sigs = [mix] + [np.ascontiguousarray(c, dtype=np.float32) for c in components]
        outs = [np.zeros((4, n, 2), np.float32) for _ in sigs]
        done = 0
        Kall = None
        if self.kick != "none":
            nb = 24
            Pl = np.empty((F, nb), np.float32)
            for a in range(0, F, self.block):
                b = min(F, a + self.block)
                Xl = self._stft(mix, a, b)[:, :, :nb]
                Pl[a:b] = 0.5 * (np.abs(Xl[0]) ** 2 + np.abs(Xl[1]) ** 2)
            Kall = _kick_model(Pl)
        for a in range(0, F, self.block):
            b = min(F, a + self.block)
            a0, b0 = max(0, a - self.ctx), min(F, b + self.ctx)
            X = self._stft(mix, a0, b0)
            M = self._masks(X, None if Kall is None else Kall[a0:b0])[:, a - a0:b - a0]
            for i, (sig, out) in enumerate(zip(sigs, outs)):
                Xs = X[:, a - a0:b - a0] if i == 0 else self._stft(sig, a, b)
                for k in range(3):
                    for ch in range(2):
                        y = sp_fft.irfft(M[k] * Xs[ch], n=N, axis=-1, workers=1) * self.window
                        self._ola(out[k, :, ch], y, a)
            lim = n if b == F else min(n, b * hop - N // 2)
            if lim > done:
                ws = self._wsum(done, lim, F)[:, None]
                for sig, out in zip(sigs, outs):
                    out[:3, done:lim] /= ws
                    out[3, done:lim] = sig[done:lim] - out[0, done:lim] - out[1, done:lim] - out[2, done:lim]
                done = lim
            if progress is not None:
                progress(b / F)
        return outs

    def separate(self, samples: np.ndarray, progress: Callable[[float], None] | None = None) -> np.ndarray:
        return self._process(samples, (), progress)[0]

    def decompose(self, samples, components):
        outs = self._process(samples, components)
        return outs[0], np.stack(outs[1:])


def separation_scores(true_stems, est_stems, parts=None) -> dict:
    true_stems = np.asarray(true_stems, np.float64)
    est_stems = np.asarray(est_stems, np.float64)
    out = {"sdr": {}, "si_sdr": {}}
    tiny = 1e-20
    for k, name in enumerate(STEM_NAMES):
        s = true_stems[k].ravel()
        e = est_stems[k].ravel()
        ss = float(s @ s)
        out["sdr"][name] = 10 * math.log10((ss + tiny) / (float((s - e) @ (s - e)) + tiny))
        alpha = float(e @ s) / (ss + tiny)
        t = alpha * s
        out["si_sdr"][name] = 10 * math.log10((float(t @ t) + tiny) / (float((t - e) @ (t - e)) + tiny))
    share = np.zeros((4, 4))
    for j in range(4):
        s = true_stems[j].ravel()
        for k in range(4):
            if parts is not None:
                share[j, k] = float(np.asarray(parts[j, k], np.float64).ravel() @ s)
            else:
                share[j, k] = float(est_stems[k].ravel() @ s)
        tot = share[j].sum()
        share[j] = share[j] / tot if tot > 0 else np.nan
    out["energy_share"] = share.tolist()
    return out
