"""``bench_stems``: ATE's ``.stems`` file against FLAC and raw int16, same data, same run.

The stem set is built from :mod:`prep.synth` tracks of different styles,
concatenated per stem to the wanted length (6 minutes; 1 in quick mode), so
the content is varied and each stem has the silences real stems have (the
synthesiser's breakdowns drop drums and bass, intros drop vocals). Two
things make it closer to separated stems than a synthesiser's output is:

- a noise floor where a stem plays (separation bleed and artefacts; white
  noise at ``bleed_dbfs``, gated by the stem's own envelope, none in its
  silences), so no two bars are bit-identical and the low bits are busy;
- a gain that puts the loudest stem above full scale (+1.5 dBFS), as
  separated stems of a loud master are, so the per-track ``scale`` is used.

Formats, each holding the same int16 samples (``quantize_stems``) except
FLAC 24, which gets the float stems at 24 bits:

- ``ate``: :func:`prep.stems.write_stem_file`;
- ``flac16`` / ``flac24``: one FLAC file per stem (soundfile, libsndfile's
  default compression), decoded one stem per thread;
- ``npy_int16``: ``np.save`` of the int16 array (no compression).

Load time is to float32 ``(4, frames, 2)`` at the original level (the
scale undone), median of 3, with 1 thread and with ``os.cpu_count()``
threads, as wall and process CPU seconds (CPU time is the robust number on a
shared machine), and as a ratio to FLAC 16, the peer. The ``alternatives``
entry gives the size of the other predictor/byte-layout choices on the same
data (zstd level 3), to keep the design decision checkable.
"""

from __future__ import annotations

import os
import statistics
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import soundfile as sf
import zstandard

from prep.audio import SAMPLE_RATE
from prep.stems import (
    STEM_NAMES, quantize_stems, read_stem_file, read_stem_file_int16, read_stem_header, write_stem_file,
)
from prep.synth import generate, standard_set


def build_stem_set(duration_s: float, seed: int = 0, bleed_dbfs: float = -70.0,
                   peak_dbfs: float = 1.5) -> np.ndarray:
    """Four dense, varied stems of ``duration_s`` seconds, float32 ``(4, frames, 2)``.

    Parameters
    ----------
    duration_s : float
        Length in seconds.
    seed : int
        Picks the generated tracks and the noise.
    bleed_dbfs : float
        RMS of the noise floor added where a stem plays, in dBFS.
    peak_dbfs : float
        Level of the loudest sample of any stem, in dBFS (above 0: as
        separated stems of a loud master), set before the noise is added.
    """
    frames = int(round(duration_s * SAMPLE_RATE))
    rng = np.random.default_rng(seed)
    parts: dict[str, list[np.ndarray]] = {name: [] for name in STEM_NAMES}
    have = 0
    for spec in standard_set(12, seed=seed):
        if have >= frames:
            break
        track = generate(spec)
        for name in STEM_NAMES:
            parts[name].append(track.stems[name])
        have += track.stems[STEM_NAMES[0]].shape[0]
    if have < frames:  # longer than twelve tracks: repeat them
        reps = -(-frames // have)
        parts = {name: p * reps for name, p in parts.items()}
    out = np.stack([np.concatenate(parts[name])[:frames] for name in STEM_NAMES]).astype(np.float32)
    out *= np.float32(10 ** (peak_dbfs / 20) / np.abs(out).max())
    noise_rms = 10 ** (bleed_dbfs / 20)
    hop = 1024
    for k in range(out.shape[0]):
        # Gate: where the stem's envelope (1024-frame blocks) is above -60 dBFS.
        env = np.abs(out[k]).max(axis=1)
        n_blocks = -(-frames // hop)
        block_peak = np.pad(env, (0, n_blocks * hop - frames)).reshape(n_blocks, hop).max(axis=1)
        gate = np.repeat(block_peak > 1e-3, hop)[:frames]
        noise = rng.standard_normal((frames, 2)).astype(np.float32) * np.float32(noise_rms)
        out[k] += noise * gate[:, None]
    return out


def _median_time(fn, reps: int = 3) -> tuple[float, float]:
    """Median wall and process-CPU seconds of ``fn()`` over ``reps`` runs."""
    walls, cpus = [], []
    for _ in range(reps):
        t0, c0 = time.perf_counter(), time.process_time()
        fn()
        walls.append(time.perf_counter() - t0)
        cpus.append(time.process_time() - c0)
    return statistics.median(walls), statistics.median(cpus)


def _residual_sizes(q: np.ndarray) -> dict[str, float]:
    """zstd-3 size (MB) of the alternative predictor and byte-layout choices, on the same int16 data."""
    def wrap(v):
        return ((v + 32768) & 0xFFFF) - 32768

    def diff(v, order):
        for _ in range(order):
            v = np.diff(v, prepend=0)
        return wrap(v)

    def planes(channels, zigzag):
        r = np.concatenate(channels).astype(np.int64)
        u = ((r << 1) ^ (r >> 63)) & 0xFFFF if zigzag else r & 0xFFFF
        return np.concatenate([(u & 0xFF).astype(np.uint8), (u >> 8).astype(np.uint8)]).tobytes()

    cctx = zstandard.ZstdCompressor(level=3)
    variants = {
        "int16 raw bytes, zstd": lambda l, r: np.stack([l, r], 1).astype("<i2").tobytes(),
        "delta (order 1) L/R, byte planes": lambda l, r: planes([diff(l, 1), diff(r, 1)], False),
        "delta (order 1) L/R, zigzag planes": lambda l, r: planes([diff(l, 1), diff(r, 1)], True),
        "order 2 L/R, zigzag planes": lambda l, r: planes([diff(l, 2), diff(r, 2)], True),
        "order 2 L/side, zigzag planes": lambda l, r: planes([diff(l, 2), diff(wrap(l - r), 2)], True),
        "order 3 L/side, zigzag planes": lambda l, r: planes([diff(l, 3), diff(wrap(l - r), 3)], True),
    }
    sizes = dict.fromkeys(variants, 0)
    for k in range(q.shape[0]):
        left, right = q[k, :, 0].astype(np.int64), q[k, :, 1].astype(np.int64)
        for name, make in variants.items():
            sizes[name] += len(cctx.compress(make(left, right)))
    return {name: round(size / 1e6, 2) for name, size in sizes.items()}


def bench_stems(quick: bool = False) -> dict:
    """Disk size and load speed of the stem formats on a generated stem set.

    Returns
    -------
    dict
        ``audio_s``, ``threads``, ``formats`` (per format: ``mb``,
        ``write_s``, ``load_1t_s`` / ``load_nt_s`` (wall), ``load_1t_cpu_s``
        / ``load_nt_cpu_s``, ``load_vs_flac16`` (FLAC 16 time / this time,
        N threads, wall; > 1 is faster), ``exact`` (int16 samples identical)
        or ``max_error_dbfs``), ``ate`` (``scale``, ``sum_error_dbfs``,
        ``int16_load_nt_s``), ``alternatives`` (MB per design choice).
    """
    duration_s = 60.0 if quick else 360.0
    threads = os.cpu_count() or 1
    stems = build_stem_set(duration_s)
    q, scale, _ = quantize_stems(stems)
    gain = np.float32(1.0 / (32768.0 * scale))
    float_sum = stems.astype(np.float64).sum(axis=0)
    results: dict[str, dict] = {}

    with tempfile.TemporaryDirectory(prefix="ate-bench-stems-") as tmp:
        tmp = Path(tmp)
        ate_path = tmp / "track.stems"
        write_stem_file(tmp / "warm.stems", stems[:, :SAMPLE_RATE])  # load the JIT cache outside the timing
        read_stem_file(tmp / "warm.stems")
        t0 = time.perf_counter()
        write_stem_file(ate_path, stems, meta={"bench": "bench_stems"})
        results["ate"] = {"write_s": time.perf_counter() - t0, "mb": ate_path.stat().st_size / 1e6}

        # FLAC 16 holds the same int16 samples; FLAC 24 the float stems at 24 bits (same scale).
        q24 = np.clip(np.rint(stems.astype(np.float64) * (scale * 8388608.0)), -8388608, 8388607).astype(np.int32)
        for name, subtype, data in (("flac16", "PCM_16", q), ("flac24", "PCM_24", q24 << 8)):
            t0 = time.perf_counter()
            for k, stem in enumerate(STEM_NAMES):
                sf.write(str(tmp / f"{name}_{stem}.flac"), data[k], SAMPLE_RATE, subtype=subtype)
            results[name] = {"write_s": time.perf_counter() - t0,
                             "mb": sum((tmp / f"{name}_{s}.flac").stat().st_size for s in STEM_NAMES) / 1e6}
        npy_path = tmp / "track.npy"
        t0 = time.perf_counter()
        np.save(npy_path, q)
        results["npy_int16"] = {"write_s": time.perf_counter() - t0, "mb": npy_path.stat().st_size / 1e6}

        def load_flac(name: str, n_threads: int) -> np.ndarray:
            out = np.empty(stems.shape, dtype=np.float32)
            undo_scale = np.float32(1.0 / scale)  # libsndfile already divides by 2^(bits-1)

            def one(k: int) -> None:
                data, _ = sf.read(str(tmp / f"{name}_{STEM_NAMES[k]}.flac"), dtype="float32", always_2d=True)
                np.multiply(data, undo_scale, out=out[k])
            with ThreadPoolExecutor(n_threads) as pool:
                list(pool.map(one, range(len(STEM_NAMES))))
            return out

        def load_npy(n_threads: int) -> np.ndarray:
            raw = np.load(npy_path)
            out = np.empty(raw.shape, dtype=np.float32)

            def one(k: int) -> None:
                np.multiply(raw[k], gain, out=out[k], dtype=np.float32)
            with ThreadPoolExecutor(n_threads) as pool:
                list(pool.map(one, range(raw.shape[0])))
            return out

        loaders = {
            "ate": lambda n: read_stem_file(ate_path, threads=n)[0],
            "flac16": lambda n: load_flac("flac16", n),
            "flac24": lambda n: load_flac("flac24", n),
            "npy_int16": load_npy,
        }
        for name, load in loaders.items():
            load(threads)  # warm the page cache and the JIT
            for n, tag in ((1, "1t"), (threads, "nt")):
                wall, cpu = _median_time(lambda: load(n))
                results[name][f"load_{tag}_s"] = wall
                results[name][f"load_{tag}_cpu_s"] = cpu
            decoded = load(threads)
            err = np.abs(decoded.astype(np.float64) - stems.astype(np.float64)).max()
            results[name]["max_error_dbfs"] = float(20 * np.log10(max(err, 1e-12)))
        # Bit-exactness of the int16 formats against the quantised stems.
        results["ate"]["exact"] = bool(np.array_equal(read_stem_file_int16(ate_path)[0], q))
        flac16 = np.stack([sf.read(str(tmp / f"flac16_{s}.flac"), dtype="int16", always_2d=True)[0]
                           for s in STEM_NAMES])
        results["flac16"]["exact"] = bool(np.array_equal(flac16, q))
        results["npy_int16"]["exact"] = bool(np.array_equal(np.load(npy_path), q))
        results["flac24"]["exact"] = bool(np.array_equal(
            np.stack([sf.read(str(tmp / f"flac24_{s}.flac"), dtype="int32", always_2d=True)[0] for s in STEM_NAMES]),
            q24 << 8))

        decoded = read_stem_file(ate_path)[0]
        sum_err = np.abs(decoded.astype(np.float64).sum(axis=0) - float_sum).max()
        int16_wall, _ = _median_time(lambda: read_stem_file_int16(ate_path, threads=threads))
        header = read_stem_header(ate_path)

    peer = results["flac16"]["load_nt_s"]
    peer_cpu = results["flac16"]["load_nt_cpu_s"]
    for r in results.values():
        r["load_vs_flac16"] = peer / r["load_nt_s"]
        r["cpu_vs_flac16"] = peer_cpu / r["load_nt_cpu_s"]
        for key, value in list(r.items()):
            if isinstance(value, float):
                r[key] = round(value, 4 if key.endswith("_s") else 2)
    return {
        "audio_s": duration_s,
        "stems": list(STEM_NAMES),
        "threads": threads,
        "formats": results,
        "ate": {
            "scale": round(scale, 5),
            "peak_dbfs": round(float(20 * np.log10(np.abs(stems).max())), 2),
            "sum_error_dbfs": round(float(20 * np.log10(max(sum_err, 1e-12))), 2),
            "sum_error_bound_dbfs": round(float(20 * np.log10(0.5 / (32768 * scale))), 2),
            "int16_load_nt_s": round(int16_wall, 4),
            "codec": header["codec"],
        },
        "alternatives_mb_zstd3": _residual_sizes(q),
    }


if __name__ == "__main__":
    import json
    import sys

    print(json.dumps(bench_stems(quick="--quick" in sys.argv), indent=2))
