"""Benchmark of the keylock stretcher (:mod:`engine.stretch`) against Rubber Band, same run, same audio.

:func:`bench_stretch` stretches generated material (``prep.synth``) at tempo
ratios 0.8, 0.9, 1.1 and 1.25 with ATE's keylock and with the Rubber Band
command-line tool (rubberband-cli 3.1.2 through ``pyrubberband``) using its R2
engine (the default, ``--fast``) and its R3 engine (``--fine``), and scores:

- **pitch** on steady harmonic tones (110-1000 Hz): error of the fundamental in
  cents, from the interpolated spectral peak over each tone's steady part;
- **onsets** on a drum stem (and on the same drums stretched inside a
  four-stem deck, the case the engine plays): offset of each attack from its
  expected time ``onset / ratio`` (+ ``latency_frames`` for ATE, which is 0;
  the Rubber Band CLI aligns its output), located in input and output with the
  same locator (first 0.7 ms power frame of the first difference rising above
  25 % of the local maximum), in ms;
  and the **attack energy ratio**: energy of the first difference in the
  10 ms after each onset over the 10 ms before, in dB (sharper is higher; the
  input's own value is reported next to it);
- **log-spectral distance** (dB, 2048-point frames, bins up to 16 kHz) on a
  full mix between ATE and R3, with R2 against R3 as the reference point, and
  of every output against the time-mapped original (output frame at ``t``
  against the input frame at ``t * ratio``; lower is closer);
- **resampler** (vinyl mode): THD+N along a stepped sine sweep (100 Hz to
  20 kHz in third octaves) and the level of tones pushed past Nyquist (what
  aliases), for the 32-tap sinc and the 4-point Hermite;
- **speed**: ATE's cost per block for 4 stems x stereo at 128/256/512-frame
  blocks (median, p99, max in ms of this thread's CPU time with the garbage
  collector paused, the largest wall-clock time too, the largest cost of a
  block that follows a reset, and the realtime factor; best of two runs), against
  Rubber Band's speed on
  the same 8 channels. Rubber Band's CLI is *offline* (whole file at once,
  including writing and reading WAV files), not per block, so its figure is an
  upper bound on what it would do in a realtime callback.

Costs are CPU time (thread CPU time for ATE, the child process's CPU time for
Rubber Band) because this machine is shared and wall-clock time includes
other people's work; compare ratios.
"""

from __future__ import annotations

import gc
import time

import numpy as np

from prep.audio import SAMPLE_RATE
from prep.synth import STEMS, TrackSpec, generate

RATIOS = (0.8, 0.9, 1.1, 1.25)
TONE_HZ = (110.0, 220.0, 329.63, 440.0, 1000.0)


# --------------------------------------------------------------------------- measurements


def peak_frequency_hz(x: np.ndarray, near_hz: float, sr: int = SAMPLE_RATE, search_cents: float = 80.0) -> float:
    """Frequency of the strongest spectral peak within ``search_cents`` of ``near_hz``, in Hz.

    Hann window, zero-padded to 2**19 points, quadratic interpolation of the log magnitude.
    """
    x = np.asarray(x, dtype=np.float64)
    n_fft = 1 << 19
    spec = np.abs(np.fft.rfft(x * np.hanning(len(x)), n_fft))
    lo = int(near_hz * 2 ** (-search_cents / 1200) * n_fft / sr)
    hi = int(near_hz * 2 ** (search_cents / 1200) * n_fft / sr) + 2
    k = lo + int(np.argmax(spec[lo:hi]))
    a, b, c = np.log(spec[k - 1:k + 2] + 1e-30)
    offset = 0.5 * (a - c) / (a - 2 * b + c)
    return float((k + offset) * sr / n_fft)


def cents(f_hz: float, ref_hz: float) -> float:
    """Interval from ``ref_hz`` to ``f_hz`` in cents."""
    return float(1200.0 * np.log2(f_hz / ref_hz))


def _power_envelope(x: np.ndarray, n: int = 32) -> np.ndarray:
    p = np.asarray(x, dtype=np.float64) ** 2
    cs = np.concatenate([[0.0], np.cumsum(p)])
    return (cs[n:] - cs[:-n]) / n      # [i] = mean power of x[i:i + n]


def locate_onset(x: np.ndarray, expected: float, radius: int = 441) -> int:
    """Frame near ``expected`` (within ``radius`` frames) where an attack starts.

    Power envelope (0.7 ms frames) of the first difference, which favours attacks over the low
    tail of an earlier hit; the attack starts at the first frame that rises to 25 % of the largest
    one in the window (skipping a tail that is already above it at the window's start). Low-level
    pre-echo does not move it, unlike an energy-ratio locator.
    """
    d = np.diff(np.asarray(x, dtype=np.float64), prepend=float(x[0]))
    lo = max(int(expected) - radius, 0)
    hi = min(int(expected) + radius, len(d) - 32)
    env = _power_envelope(d[lo:hi + 32])[: hi - lo]
    above = env >= 0.25 * env.max()
    start = int(np.argmin(above)) if above[0] else 0     # first frame below the threshold
    return lo + start + int(np.argmax(above[start:]))


def attack_ratio_db(x: np.ndarray, onset: float, sr: int = SAMPLE_RATE, span_s: float = 0.010) -> float:
    """Energy of the first difference in ``span_s`` after ``onset`` over the ``span_s`` before, in dB."""
    d = np.diff(np.asarray(x, dtype=np.float64), prepend=float(x[0]))
    e = int(round(onset))
    n = int(round(span_s * sr))
    after = np.sum(d[e:e + n] ** 2) + 1e-12
    before = np.sum(d[max(e - n, 0):e] ** 2) + 1e-12
    return float(10.0 * np.log10(after / before))


def _stft_db(x: np.ndarray, centres: np.ndarray, n_fft: int, k_max: int) -> np.ndarray:
    w = np.hanning(n_fft)
    pad = np.concatenate([np.zeros(n_fft), x, np.zeros(n_fft)])
    idx = np.rint(centres).astype(int) + n_fft - n_fft // 2
    frames = np.stack([pad[i:i + n_fft] * w for i in idx])
    return np.abs(np.fft.rfft(frames, axis=1))[:, 1:k_max]


def log_spectral_distance_db(a: np.ndarray, b: np.ndarray, ratio_b: float = 1.0, n_fft: int = 2048, hop: int = 512,
                             max_hz: float = 16000.0, sr: int = SAMPLE_RATE) -> float:
    """Mean over frames of the RMS difference of the log magnitude spectra, in dB.

    ``a`` is read at frame centres ``t``, ``b`` at ``t * ratio_b`` (``ratio_b`` = the stretch ratio when
    ``b`` is the unstretched original). Mono-summed; magnitudes floored 80 dB below the louder peak;
    frames where ``b`` is more than 60 dB below its loudest frame are skipped.
    """
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    a = a.mean(axis=1) if a.ndim > 1 else a
    b = b.mean(axis=1) if b.ndim > 1 else b
    n = min(len(a), int(len(b) / ratio_b))
    centres = np.arange(n_fft // 2, n - n_fft // 2, hop, dtype=np.float64)
    k_max = int(max_hz * n_fft / sr)
    mag_a = _stft_db(a, centres, n_fft, k_max)
    mag_b = _stft_db(b, centres * ratio_b, n_fft, k_max)
    floor = max(mag_a.max(), mag_b.max()) * 1e-4
    diff = 20 * np.log10(np.maximum(mag_a, floor)) - 20 * np.log10(np.maximum(mag_b, floor))
    energy = np.sum(mag_b ** 2, axis=1)
    keep = energy > energy.max() * 1e-6
    return float(np.mean(np.sqrt(np.mean(diff ** 2, axis=1))[keep]))


# --------------------------------------------------------------------------- material


def harmonic_tones(sr: int = SAMPLE_RATE, note_s: float = 2.0, gap_s: float = 0.5) -> tuple[np.ndarray, list]:
    """Steady harmonic tones (1/h amplitudes up to 8 kHz) separated by silence.

    Returns float32 ``(frames, 2)`` and a list of ``(start_frame, end_frame, f0_hz)``.
    """
    notes = []
    parts = []
    pos = int(gap_s * sr)
    parts.append(np.zeros(pos))
    t = np.arange(int(note_s * sr)) / sr
    fade = np.minimum(1.0, np.minimum(t, t[::-1]) / 0.02)
    for f0 in TONE_HZ:
        x = np.zeros_like(t)
        for h in range(1, int(8000 / f0) + 1):
            x += np.sin(2 * np.pi * h * f0 * t + 0.7 * h) / h
        x *= 0.3 / np.max(np.abs(x)) * fade
        parts.append(x)
        notes.append((pos, pos + len(t), f0))
        pos += len(t)
        parts.append(np.zeros(int(gap_s * sr)))
        pos += int(gap_s * sr)
    mono = np.concatenate(parts).astype(np.float32)
    return np.stack([mono, mono], axis=1), notes


def benchmark_track(quick: bool = False):
    """The generated track used for the mix and drum measurements (house, 124 BPM, verse + chorus)."""
    bars = [["verse", 2], ["chorus", 2]] if quick else [["verse", 4], ["chorus", 4]]
    return generate(TrackSpec(bpm=124, tonic=9, mode="minor", style="house", structure=bars, seed=5))


def drum_onsets(track, min_gap_s: float = 0.05, min_attack_db: float = 10.0) -> list[int]:
    """Drum hits (frames) that are attacks in the drum stem: no other hit in the ``min_gap_s`` before,
    and an attack ratio of at least ``min_attack_db`` (hats choking a ringing open hat are not attacks)."""
    sr = track.sample_rate
    x = track.stems["drums"].sum(axis=1)
    hits = sorted({int(round(t * sr)) for t, _ in track.truth.drum_hits})
    out = []
    for i, h in enumerate(hits):
        if i and h - hits[i - 1] < min_gap_s * sr:
            continue
        if h < 0.1 * sr or h > len(x) - 0.5 * sr:
            continue
        if attack_ratio_db(x, h, sr) >= min_attack_db:
            out.append(h)
    return out


# --------------------------------------------------------------------------- engines


def stretch_ate(stems: np.ndarray, ratio: float, keylock: bool = True, semitones: float = 0.0,
                block_frames: int = 512, n_out: int | None = None, **options) -> tuple[np.ndarray, np.ndarray]:
    """Run a :class:`~engine.stretch.Stretcher` over ``stems`` (n_stems, frames, 2) from position 0.

    Returns the output (n_stems, n_out, 2) and the audible source position of every output frame.
    """
    from engine.stretch import Stretcher

    stems = np.ascontiguousarray(stems)
    st = Stretcher(n_stems=stems.shape[0], channels=stems.shape[2], max_block_frames=max(block_frames, 1024),
                   **options)
    if n_out is None:
        n_out = int(stems.shape[1] / ratio)
    out = np.zeros((stems.shape[0], n_out, stems.shape[2]), dtype=np.float32)
    pos = np.zeros(n_out)
    buf = np.zeros((stems.shape[0], block_frames, stems.shape[2]), dtype=np.float32)
    i = 0
    while i < n_out:
        n = min(block_frames, n_out - i)
        st.process(stems, buf, n, ratio, keylock, semitones)
        out[:, i:i + n] = buf[:, :n]
        pos[i:i + n] = st.positions[:n]
        i += n
    return out, pos


def stretch_rubberband(x: np.ndarray, ratio: float, engine: str) -> np.ndarray:
    """Rubber Band CLI offline: ``engine`` "R2" (default engine) or "R3" (``--fine``)."""
    import pyrubberband

    args = {"--fine": ""} if engine == "R3" else None
    return np.asarray(pyrubberband.time_stretch(np.asarray(x, dtype=np.float32), SAMPLE_RATE, ratio, rbargs=args),
                      dtype=np.float32)


# --------------------------------------------------------------------------- parts


def _tone_scores(y: np.ndarray, notes: list, ratio: float) -> dict:
    errs = []
    mono = y.mean(axis=1) if y.ndim > 1 else y
    for a, b, f0 in notes:
        lo, hi = int(a / ratio) + 4410 * 3, int(b / ratio) - 4410 * 3
        errs.append(cents(peak_frequency_hz(mono[lo:hi], f0), f0))
    errs = np.abs(errs)
    return {"mean_abs_cents": round(float(errs.mean()), 3), "max_abs_cents": round(float(errs.max()), 3)}


def _onset_scores(y: np.ndarray, x: np.ndarray, onsets: list[int], ratio: float, latency: int = 0) -> dict:
    errs, attacks = [], []
    for t in onsets:
        e = t / ratio + latency
        if e + 2000 > len(y):
            continue
        errs.append((locate_onset(y, e) - e) - (locate_onset(x, t) - t))
        attacks.append(attack_ratio_db(y, e))
    errs_ms = np.abs(np.asarray(errs)) / SAMPLE_RATE * 1000
    return {"onset_err_median_ms": round(float(np.median(errs_ms)), 2),
            "onset_err_p90_ms": round(float(np.percentile(errs_ms, 90)), 2),
            "onset_err_max_ms": round(float(errs_ms.max()), 2),
            "attack_ratio_db": round(float(np.mean(attacks)), 1)}


def _resampler_scores(interpolation: str, ratios=(0.8, 1.1, 1.25)) -> dict:
    """Vinyl-mode resampler on a stepped sine sweep (third-octave steps, 100 Hz to 20 kHz).

    For every tone whose output frequency ``f * ratio`` stays below 16 kHz: THD+N, the energy
    outside the expected line over the line's, in dB (worst tone and the mean over tones). For
    tones pushed past Nyquist (``f * ratio > sr / 2``): their output level against the input
    tone, in dB (what aliases back into the audio band).
    """
    sr = SAMPLE_RATE
    tone_n, gap_n = 16384 + 8192, 4096
    freqs = 100.0 * 2.0 ** (np.arange(24) / 3.0)
    t = np.arange(tone_n) / sr
    fade = np.minimum(1.0, np.minimum(np.arange(tone_n), np.arange(tone_n)[::-1]) / 512.0)
    parts = []
    for f in freqs:
        parts += [0.5 * np.sin(2 * np.pi * f * t) * fade, np.zeros(gap_n)]
    mono = np.concatenate(parts)
    src = np.stack([mono, mono], axis=1).astype(np.float32)[None]
    from scipy.signal.windows import blackmanharris

    win = blackmanharris(8192)
    ref = np.sum(np.abs(np.fft.rfft(0.5 * np.sin(2 * np.pi * 1000.0 * t[:8192]) * win)) ** 2)   # input tone
    out = {}
    for r in ratios:
        y, _ = stretch_ate(src, r, keylock=False, interpolation=interpolation)
        y = y[0, :, 0].astype(np.float64)
        thd, alias = [], []
        for i, f in enumerate(freqs):
            start = int((i * (tone_n + gap_n) + 4096) / r)
            seg = y[start:start + 8192]
            spec = np.abs(np.fft.rfft(seg * win)) ** 2
            fq = np.fft.rfftfreq(len(seg), 1 / sr)
            f_out = f * r
            if f_out < 16000.0:
                line = np.abs(fq - f_out) < 4 * sr / len(seg)
                thd.append(10 * np.log10(spec[~line].sum() / spec[line].sum() + 1e-30))
            elif f_out > sr / 2:
                alias.append(10 * np.log10(spec.sum() / ref + 1e-30))
        out[str(r)] = {"thd_n_worst_db": round(float(max(thd)), 1), "thd_n_mean_db": round(float(np.mean(thd)), 1),
                       "aliased_tone_level_db": round(float(max(alias)), 1) if alias else None}
    return out


def _block_costs(stems: np.ndarray, block: int, keylock: bool, semitones: float, ratio: float = 1.1,
                 repeats: int = 2) -> dict:
    """Per-block cost of :meth:`Stretcher.process`; the best of ``repeats`` runs (by p99), as the machine is shared."""
    from engine.stretch import Stretcher

    runs = []
    for _ in range(repeats):
        st = Stretcher(n_stems=stems.shape[0], max_block_frames=1024)
        buf = np.zeros((stems.shape[0], block, stems.shape[2]), dtype=np.float32)
        st.process(stems, buf, block, ratio, keylock, semitones)     # compile / load the cached kernels
        st.reset(0.0)
        st.process(stems, buf, block, ratio, keylock, semitones)     # restart blocks are timed below, with resets
        n_blocks = int(stems.shape[1] / ratio / block) - 8
        costs = np.zeros(n_blocks)
        walls = np.zeros(n_blocks)
        # The engine's audio process keeps the garbage collector out of the callback; so does this loop.
        gc.collect()
        gc.disable()
        for b in range(n_blocks):
            w0 = time.perf_counter()
            t0 = time.thread_time()
            st.process(stems, buf, block, ratio, keylock, semitones)
            costs[b] = time.thread_time() - t0
            walls[b] = time.perf_counter() - w0
        resets = np.zeros(20)
        for i in range(20):
            st.reset(float(i * 40000 + 1234))
            t0 = time.thread_time()
            st.process(stems, buf, block, ratio, keylock, semitones)
            resets[i] = time.thread_time() - t0
        gc.enable()
        ms = costs * 1000
        audio_s = n_blocks * block / SAMPLE_RATE
        runs.append({"median_ms": round(float(np.median(ms)), 3), "p99_ms": round(float(np.percentile(ms, 99)), 3),
                     "max_ms": round(float(ms.max()), 3), "wall_max_ms": round(float(walls.max() * 1000), 3),
                     "block_ms": round(block / SAMPLE_RATE * 1000, 2),
                     "reset_block_max_ms": round(float(resets.max() * 1000), 3),
                     "realtime_factor": round(float(audio_s / costs.sum()), 1)})
    return min(runs, key=lambda r: r["p99_ms"])


def _children_cpu_s() -> float:
    import resource

    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


# --------------------------------------------------------------------------- entry point


def bench_stretch(quick: bool = False) -> dict:
    """Score ATE's keylock against Rubber Band R2 and R3 on the same generated audio.

    Parameters
    ----------
    quick : bool
        Two ratios (0.9, 1.25), a 4-bar track, no FFT-size comparison: about a minute.

    Returns
    -------
    dict
        JSON-ready: ``quality[ratio][engine]`` (pitch, onsets, attacks, spectral distances),
        ``fft_size`` (ATE's window choice, full run only), ``resampler`` (sinc vs Hermite),
        ``speed`` (ATE per block, Rubber Band offline, their ratio).
    """
    ratios = (0.9, 1.25) if quick else RATIOS
    track = benchmark_track(quick)
    stems = np.stack([track.stems[k] for k in STEMS]).astype(np.float32)
    mix = track.mix
    drums = track.stems["drums"]
    drums_mono = drums.sum(axis=1)
    onsets = drum_onsets(track)
    tones, notes = harmonic_tones()

    quality: dict = {}
    for r in ratios:
        row: dict = {}
        outs = {}
        y_tone, _ = stretch_ate(tones[None], r)
        y_drum, _ = stretch_ate(drums[None], r)
        y_deck, _ = stretch_ate(stems, r)
        outs["ATE"] = y_deck.sum(axis=0)
        row["ATE"] = {**_tone_scores(y_tone[0], notes, r),
                      **_onset_scores(y_drum[0].sum(axis=1), drums_mono, onsets, r),
                      "in_deck": _onset_scores(y_deck[0].sum(axis=1), drums_mono, onsets, r)}
        y_plain, _ = stretch_ate(drums[None], r, transients=False)     # ablation: no onset phase reset
        row["ATE_without_transient_reset"] = _onset_scores(y_plain[0].sum(axis=1), drums_mono, onsets, r)
        for eng in ("R2", "R3"):
            y_tone = stretch_rubberband(tones, r, eng)
            y_drum = stretch_rubberband(drums, r, eng)
            outs[eng] = stretch_rubberband(mix, r, eng)
            row[eng] = {**_tone_scores(y_tone, notes, r), **_onset_scores(y_drum.sum(axis=1), drums_mono, onsets, r)}
        for eng in ("ATE", "R2", "R3"):
            row[eng]["lsd_vs_original_db"] = round(log_spectral_distance_db(outs[eng], mix, ratio_b=r), 2)
        row["ATE"]["lsd_vs_R3_db"] = round(log_spectral_distance_db(outs["ATE"], outs["R3"]), 2)
        row["R2"]["lsd_vs_R3_db"] = round(log_spectral_distance_db(outs["R2"], outs["R3"]), 2)
        row["input_attack_ratio_db"] = round(float(np.mean([attack_ratio_db(drums_mono, t) for t in onsets])), 1)
        quality[str(r)] = row

    result: dict = {
        "material": {"tones_hz": list(TONE_HZ), "track": "house 124 BPM A minor, prep.synth seed 5",
                     "track_s": round(mix.shape[0] / SAMPLE_RATE, 2), "drum_onsets": len(onsets)},
        "quality": quality,
    }

    if not quick:
        sizes = {}
        for n_fft, overlap in ((1024, 4), (2048, 4), (4096, 4), (2048, 8)):
            scores = []
            for r in (0.8, 1.25):
                y_deck, _ = stretch_ate(stems, r, fft_size=n_fft, overlap=overlap)
                y_drum, _ = stretch_ate(drums[None], r, fft_size=n_fft, overlap=overlap)
                on = _onset_scores(y_drum[0].sum(axis=1), drums_mono, onsets, r)
                scores.append((log_spectral_distance_db(y_deck.sum(axis=0), mix, ratio_b=r),
                               on["attack_ratio_db"], on["onset_err_p90_ms"]))
            s = np.mean(scores, axis=0)
            sizes[f"{n_fft}/{overlap}"] = {"lsd_vs_original_db": round(float(s[0]), 2),
                                           "attack_ratio_db": round(float(s[1]), 1),
                                           "onset_err_p90_ms": round(float(s[2]), 2)}
        result["fft_size"] = sizes

    result["resampler"] = {"sinc32": _resampler_scores("sinc"), "hermite4": _resampler_scores("hermite")}

    speed: dict = {"ate_per_block": {}}
    for block in (128, 256, 512):
        speed["ate_per_block"][str(block)] = {
            "keylock": _block_costs(stems, block, True, 0.0),
            "keylock_plus_2st": _block_costs(stems, block, True, 2.0),
            "vinyl": _block_costs(stems, block, False, 0.0),
        }
    eight = np.concatenate([stems[i] for i in range(stems.shape[0])], axis=1)   # 4 stems x stereo = 8 channels
    audio_s = eight.shape[0] / SAMPLE_RATE
    rb = {}
    for eng in ("R2", "R3"):
        t0 = _children_cpu_s()
        stretch_rubberband(eight, 1.1, eng)
        rb[eng] = round(audio_s / (_children_cpu_s() - t0), 1)
    t0 = time.thread_time()
    stretch_ate(stems, 1.1, block_frames=512)
    ate_rt = round(audio_s / (time.thread_time() - t0), 1)
    speed["offline_same_audio"] = {
        "note": "realtime factor = audio seconds / CPU seconds for 4 stems x stereo at ratio 1.1; Rubber Band is "
                "its offline CLI on one 8-channel file (the rubberband process's CPU time, WAV I/O included), "
                "ATE runs 512-frame blocks through Stretcher.process (this thread's CPU time)",
        "ATE_keylock": ate_rt, "rubberband_R2_offline": rb["R2"], "rubberband_R3_offline": rb["R3"],
        "ATE_over_R2": round(ate_rt / rb["R2"], 2), "ATE_over_R3": round(ate_rt / rb["R3"], 2),
    }
    result["speed"] = speed
    return result


if __name__ == "__main__":
    import json
    import sys

    print(json.dumps(bench_stretch(quick="--quick" in sys.argv), indent=1))
