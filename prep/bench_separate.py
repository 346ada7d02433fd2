"""``ate bench separate``: ATE's demucs path against the demucs CLI, and what the residual fold costs.

Separation speed. A generated track (:mod:`prep.synth`, about 60 s, 20 s with
``quick``) is written to a float32 WAV, and a *full-size* htdemucs with random
weights (the published architecture, 42 M parameters; random weights cost
exactly the compute of trained ones) is written in demucs' local-repo layout.
Both sides run in their own process, one after the other, with the same
settings and the same torch thread count:

- ATE: :class:`prep.separate.DemucsSeparator` (``--model-dir``), reporting
  its own split of import, model load and separation time;
- the peer: ``python -m demucs --repo DIR -n htdemucs FILE -o OUT``.

Wall time, CPU time (user + system), seconds per minute of audio, realtime
factor (audio seconds per second) and the ratios ATE / CLI are reported, with each process's peak
resident memory (``os.wait4``). An identity check runs both once more, the
CLI first this time, with ``shifts=0`` (``shifts=1`` draws a random offset)
and float32 output on a 12 s excerpt, and reports the largest difference
between ATE's unfolded stems and the CLI's WAVs (and a second wall-time
ratio). The fold is also timed on a six-minute track.

Fold cost. On generated tracks with known stems, a deliberately imperfect
"separation" — each estimate is 0.75 of its own stem plus 0.05 of each of the
three others (so 0.1 of the mix is missing), plus white noise at -30 dB re the
mix RMS — is folded with both rules; SDR per stem (``10 log10 |s|^2 / |s -
ŝ|^2``, the MDX/demucs "new SDR") is reported before folding, after
"spectral" and after "other", with the fold time per minute of audio. How the
fold changes SDR with *trained* weights cannot be measured here (no trained
weights on this machine); the result says so.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from prep.audio import SAMPLE_RATE, load_audio, write_audio
from prep.separate import STEM_NAMES, fold_error, fold_residual
from prep.synth import TrackSpec, generate, standard_set

REPO_ROOT = Path(__file__).resolve().parents[1]

_CHILD = r"""
import json, sys, time
t0 = time.perf_counter()
import numpy as np
import torch
from prep.audio import load_audio
from prep.separate import DemucsSeparator
t1 = time.perf_counter()
a = json.loads(sys.argv[1])
sep = DemucsSeparator(a["model"], model_dir=a["model_dir"], device=a["device"], shifts=a["shifts"])
t2 = time.perf_counter()
x = load_audio(a["wav"])
t3 = time.perf_counter()
stems = sep.separate(x)
t4 = time.perf_counter()
np.save(a["out"], stems)
t5 = time.perf_counter()
print(json.dumps({"import_s": t1 - t0, "load_s": t2 - t1, "read_s": t3 - t2, "separate_s": t4 - t3,
                  "write_s": t5 - t4, "threads": torch.get_num_threads(), "device": sep.device,
                  "max_segment_s": sep.max_segment_s}))
"""


def _log(text: str) -> None:
    print(f"[bench separate] {text}", file=sys.stderr, flush=True)


def _run(cmd: list[str], env: dict[str, str], cwd: Path) -> dict:
    """Run a process to its end; wall seconds, peak RSS (MB) of it and its children, output."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        started = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=out, stderr=err, env=env, cwd=str(cwd))
        _, status, usage = os.wait4(proc.pid, 0)
        wall_s = time.perf_counter() - started
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read().decode(errors="replace"), err.read().decode(errors="replace")
    if proc.returncode != 0:
        tail = stderr.strip().splitlines()[-5:]
        raise RuntimeError(f"{' '.join(cmd[:4])} ... exited with {proc.returncode}: {' | '.join(tail)}")
    return {"wall_s": wall_s, "cpu_s": usage.ru_utime + usage.ru_stime, "peak_rss_mb": usage.ru_maxrss / 1024.0,
            "stdout": stdout, "stderr": stderr}


def _env(threads: int) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO_ROOT)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    # Same thread count on both sides; and neither may reach the network.
    env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads), HF_HUB_OFFLINE="1")
    return env


def _ate(model_dir: Path, wav: Path, out: Path, shifts: int, device: str, env: dict) -> dict:
    args = {"model": "htdemucs", "model_dir": str(model_dir), "device": device, "shifts": shifts,
            "wav": str(wav), "out": str(out)}
    run = _run([sys.executable, "-c", _CHILD, json.dumps(args)], env, REPO_ROOT)
    run.update(json.loads(run["stdout"].strip().splitlines()[-1]))
    return run


def _cli(model_dir: Path, wav: Path, out: Path, shifts: int, device: str, env: dict) -> dict:
    cmd = [sys.executable, "-m", "demucs", "--repo", str(model_dir), "-n", "htdemucs", str(wav), "-o", str(out),
           "--shifts", str(shifts), "-d", device, "--float32", "--clip-mode", "none"]
    run = _run(cmd, env, REPO_ROOT)
    folder = out / "htdemucs" / wav.stem
    run["stems"] = np.stack([load_audio(folder / f"{name}.wav") for name in STEM_NAMES])
    return run


def sdr_db(reference: np.ndarray, estimate: np.ndarray) -> float:
    """``10 log10 (|s|^2 / |s - ŝ|^2)`` in dB over all samples and channels (MDX / demucs "new SDR")."""
    s = np.asarray(reference, np.float64)
    e = s - np.asarray(estimate, np.float64)
    return float(10 * np.log10((np.sum(s ** 2) + 1e-12) / (np.sum(e ** 2) + 1e-12)))


def _spec(seconds: float, seed: int) -> TrackSpec:
    """A 124 BPM house track at least ``seconds`` long (the caller trims it)."""
    bars = int(np.ceil(seconds / (4 * 60 / 124))) + 1
    verse = max(1, (bars - 4) // 2)
    return TrackSpec(bpm=124, seed=seed, title="bench-separate",
                     structure=[["intro", 2], ["verse", verse], ["chorus", max(1, bars - 4 - verse)], ["breakdown", 2]])


def _fold_cost(quick: bool) -> dict:
    leak = np.full((4, 4), 0.05) + np.diag([0.75] * 4)
    rng = np.random.default_rng(7)
    specs = standard_set(2 if quick else 4, duration_bars=32)
    rows = []
    for spec in specs:
        _log(f"fold: {spec.title}")
        track = generate(spec)
        true = np.stack([track.stems[name] for name in STEM_NAMES])
        mix = track.mix
        est = np.einsum("kj,jfc->kfc", leak, true).astype(np.float32)
        rms = float(np.sqrt(np.mean(mix.astype(np.float64) ** 2)))
        est += (rng.standard_normal(est.shape) * rms * 10 ** (-30 / 20)).astype(np.float32)
        minutes = mix.shape[0] / SAMPLE_RATE / 60
        row = {"track": spec.title, "duration_s": round(minutes * 60, 1),
               "sdr_db": {"before": {n: round(sdr_db(true[k], est[k]), 2) for k, n in enumerate(STEM_NAMES)}}}
        for rule in ("spectral", "other"):
            started = time.perf_counter()
            folded = fold_residual(mix, est, rule)
            took = time.perf_counter() - started
            peak, energy = fold_error(mix, folded)
            row["sdr_db"][rule] = {n: round(sdr_db(true[k], folded[k]), 2) for k, n in enumerate(STEM_NAMES)}
            row[f"{rule}_s_per_min"] = round(took / minutes, 3)
            row[f"{rule}_sum_error"] = {"peak_dbfs": round(peak, 1), "energy_db": round(energy, 1)}
        rows.append(row)

    def mean_sdr(rule: str) -> dict:
        return {n: round(float(np.mean([r["sdr_db"][rule][n] for r in rows])), 2) for n in STEM_NAMES}

    summary = {rule: mean_sdr(rule) for rule in ("before", "spectral", "other")}
    return {
        "imperfect_separation": "est_k = 0.75 s_k + 0.05 sum_{j!=k} s_j + white noise at -30 dB re mix RMS",
        "mean_sdr_db": summary,
        "mean_sdr_all_stems_db": {rule: round(float(np.mean(list(v.values()))), 2) for rule, v in summary.items()},
        "spectral_s_per_min": round(float(np.mean([r["spectral_s_per_min"] for r in rows])), 3),
        "other_s_per_min": round(float(np.mean([r["other_s_per_min"] for r in rows])), 3),
        "worst_sum_error_peak_dbfs": max(max(r["spectral_sum_error"]["peak_dbfs"], r["other_sum_error"]["peak_dbfs"])
                                         for r in rows),
        "tracks": rows,
        "real_weights": "not measured: no trained demucs weights on this machine; the SDR effect of the fold on "
                        "real htdemucs stems (MUSDB18-HQ) is still to be measured",
    }


def bench_separate(quick: bool = False) -> dict:
    """Time ATE's demucs separation against ``python -m demucs`` and measure the residual fold.

    Parameters
    ----------
    quick : bool
        A 20 s track instead of 60 s, fewer fold tracks.

    Returns
    -------
    dict
        ``{"setup", "ate", "demucs_cli", "ratio_ate_over_cli", "identity", "fold",
        "fold_on_bench_track"}``; seconds, MB, dB.
    """
    import torch

    from prep.separate import default_device

    device = default_device()
    threads = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    env = _env(threads)
    duration_s = 20.0 if quick else 60.0
    excerpt_s = 12.0
    result: dict = {}
    with tempfile.TemporaryDirectory(prefix="ate-bench-sep-") as tmp:
        tmp = Path(tmp)
        _log(f"generating a {duration_s:g} s track")
        track = generate(_spec(duration_s, seed=11))
        mix = track.mix[: int(duration_s * SAMPLE_RATE)]
        wav = tmp / "track.wav"
        write_audio(wav, mix, subtype="FLOAT")
        short = tmp / "excerpt.wav"
        write_audio(short, mix[: int(excerpt_s * SAMPLE_RATE)], subtype="FLOAT")
        audio_min = mix.shape[0] / SAMPLE_RATE / 60

        _log("writing a full-size random htdemucs (42 M parameters)")
        from prep import random_demucs as tiny

        model_dir = tmp / "models"
        weights = tiny.write_full_htdemucs(model_dir)
        n_params = sum(p.numel() for p in tiny.build_htdemucs(0, full=True).parameters())
        result["setup"] = {
            "audio_s": round(mix.shape[0] / SAMPLE_RATE, 2), "device": device, "threads": threads,
            "torch": torch.__version__, "model": "htdemucs architecture, random weights",
            "parameters_m": round(n_params / 1e6, 2), "weights_mb": round(weights.stat().st_size / 2 ** 20, 1),
            "settings": "shifts=1 overlap=0.25 segment=7.8 s split=True (demucs defaults)",
            "cpu": _cpu_name(), "cores": os.cpu_count(),
        }

        _log("ATE DemucsSeparator (subprocess)")
        ate = _ate(model_dir, wav, tmp / "ate.npy", 1, device, env)
        ate_stems = np.load(tmp / "ate.npy")
        _log("python -m demucs (subprocess)")
        cli = _cli(model_dir, wav, tmp / "cli", 1, device, env)
        sep_s = ate["separate_s"]
        result["ate"] = {
            "wall_s": round(ate["wall_s"], 2), "s_per_min_audio": round(ate["wall_s"] / audio_min, 2),
            "separate_only_s": round(sep_s, 2), "separate_only_s_per_min_audio": round(sep_s / audio_min, 2),
            "import_s": round(ate["import_s"], 2), "model_load_s": round(ate["load_s"], 2),
            "realtime_x": round(mix.shape[0] / SAMPLE_RATE / ate["wall_s"], 3),
            "realtime_x_separate_only": round(mix.shape[0] / SAMPLE_RATE / sep_s, 3),
            "cpu_s": round(ate["cpu_s"], 2),
            "peak_rss_mb": round(ate["peak_rss_mb"], 1), "threads": ate["threads"], "device": ate["device"],
        }
        overhead = ate["wall_s"] - sep_s - ate["write_s"]
        result["demucs_cli"] = {
            "wall_s": round(cli["wall_s"], 2), "s_per_min_audio": round(cli["wall_s"] / audio_min, 2),
            "separate_only_s_estimate": round(cli["wall_s"] - overhead, 2),
            "separate_only_estimate_note": "CLI wall minus ATE's own start-up + import + load + read time "
                                           "(same libraries, same model file)",
            "realtime_x": round(mix.shape[0] / SAMPLE_RATE / cli["wall_s"], 3),
            "cpu_s": round(cli["cpu_s"], 2),
            "peak_rss_mb": round(cli["peak_rss_mb"], 1), "threads": threads, "device": device,
        }
        result["ratio_ate_over_cli"] = {
            "wall": round(ate["wall_s"] / cli["wall_s"], 3),
            "cpu": round(ate["cpu_s"] / cli["cpu_s"], 3),
            "peak_rss": round(ate["peak_rss_mb"] / cli["peak_rss_mb"], 3),
        }

        _log("fold of the bench track's stems")
        started = time.perf_counter()
        folded = fold_residual(mix, ate_stems, "spectral")
        fold_s = time.perf_counter() - started
        before = fold_error(mix, ate_stems)
        after = fold_error(mix, folded)
        result["fold_on_bench_track"] = {
            "spectral_s": round(fold_s, 3), "spectral_s_per_min_audio": round(fold_s / audio_min, 3),
            "fold_over_separation_time": round(fold_s / sep_s, 4),
            "residual_before_fold": {"peak_dbfs": round(before[0], 1), "energy_db": round(before[1], 1)},
            "sum_error_after_fold": {"peak_dbfs": round(after[0], 1), "energy_db": round(after[1], 1)},
            "note": "random weights: the residual before folding is large; only the time and the exactness count",
        }
        _log("fold of a six-minute track (the bench track's stems repeated)")
        six = int(360 * SAMPLE_RATE)
        reps = -(-six // mix.shape[0])
        long_mix = np.tile(mix, (reps, 1))[:six]
        long_stems = np.tile(ate_stems, (1, reps, 1))[:, :six]
        del ate_stems, folded
        timings = {}
        for rule in ("spectral", "other"):
            started = time.perf_counter()
            long_folded = fold_residual(long_mix, long_stems, rule)
            timings[rule] = time.perf_counter() - started
        result["fold_on_bench_track"]["six_minutes"] = {
            "spectral_s": round(timings["spectral"], 2), "other_s": round(timings["other"], 2),
            "spectral_over_other": round(timings["spectral"] / timings["other"], 1),
            "sum_error_peak_dbfs": round(fold_error(long_mix, long_folded)[0], 1),
        }
        del long_mix, long_stems, long_folded

        # The CLI goes first this time, so that a machine getting busier or quieter
        # during the run does not always favour the same side.
        _log(f"identity check: shifts=0, float32, {excerpt_s:g} s excerpt, demucs CLI")
        cli0 = _cli(model_dir, short, tmp / "cli0", 0, device, env)
        _log("identity check: ATE")
        ate0 = _ate(model_dir, short, tmp / "ate0.npy", 0, device, env)
        a0 = np.load(tmp / "ate0.npy")
        diff = np.abs(a0.astype(np.float64) - cli0["stems"].astype(np.float64))
        result["identity"] = {
            "excerpt_s": excerpt_s, "shifts": 0,
            "max_abs_diff": float(diff.max()),
            "max_abs_diff_per_stem": {n: float(diff[k].max()) for k, n in enumerate(STEM_NAMES)},
            "stem_peak": float(np.abs(a0).max()),
            "identical_below_1e-6": bool(diff.max() < 1e-6),
            "wall_s": {"demucs_cli_first": round(cli0["wall_s"], 2), "ate_second": round(ate0["wall_s"], 2)},
            "ratio_ate_over_cli_wall": round(ate0["wall_s"] / cli0["wall_s"], 3),
            "ratio_ate_over_cli_cpu": round(ate0["cpu_s"] / cli0["cpu_s"], 3),
        }
    result["fold"] = _fold_cost(quick)
    result["gpu"] = "not measured here (no GPU on this machine)" if device == "cpu" else device
    return result


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown"


if __name__ == "__main__":
    print(json.dumps(bench_separate(quick="--quick" in sys.argv), indent=2))
