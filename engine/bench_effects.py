"""Benchmark of the deck effects (:mod:`engine.effects`): cost per block, quality measured on the output, sox.

:func:`bench_effects` (``ate bench effects [--json] [--quick]``) runs each built-in
effect over generated music (``prep.synth``, 124 BPM) and reports:

- **cost** per block at 128, 256 and 512 frames: median and p99 of this
  thread's CPU time per ``process`` call (the garbage collector paused), in µs
  and as a share of the block's duration; and the cost of a call on silence
  once the tail has died (``idle_us``: the kernel's early return);
- **quality**, measured on each effect's output: the echo's delay (frames,
  against ``time_beats x frames_per_beat``) and decay per repeat (against the
  feedback times its filters' response); the reverb's reverberation time
  (Schroeder backward integral, -5 to -35 dB) against ``decay_s``; the
  flanger's delay sweep (from each impulse's copy) and its period in beats;
  the filter's -3 dB frequency (low-pass and high-pass at 1 kHz, no
  resonance) and the band-pass gain at its centre (the filter's cost is also
  given with its LFO on, ``cost_with_lfo_256``); and for every effect,
  whether ``mix`` 0 leaves the block bit-identical and how long its tail takes
  to fall below -90 dBFS;
- **peer**: sox 14.4 (Debian package ``sox``) applying its ``echo``, ``reverb``,
  ``flanger`` and ``lowpass`` to the same material, file to file: its CPU time
  (child rusage) minus that of the same sox command without the effect, against
  ATE's CPU time for the same audio at 256-frame blocks: ``speed_ratio`` > 1
  means ATE's effect is faster (no ratio when sox's effect costs no more than
  its passthrough within the timer's noise: ``cpu_s`` None). sox's echo is a feed-forward tap (no feedback
  loop, no filters), its reverb is Freeverb-based, its flanger has no tempo sync.

Costs are CPU time because this machine is shared; compare ratios.
"""

from __future__ import annotations

import gc
import math
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np

from engine.effects import FxUnit, create_effect
from prep.audio import SAMPLE_RATE
from prep.synth import TrackSpec, generate

BLOCKS = (128, 256, 512)
SR = SAMPLE_RATE
BPM = 124.0
FPB = 60.0 * SR / BPM                    # frames per beat
SETTINGS = {
    "echo": {"time_beats": 0.75, "feedback": 0.6, "mix": 0.6},
    "reverb": {"decay_s": 2.5, "mix": 0.4},
    "flanger": {"period_beats": 8.0, "depth": 0.8, "feedback": 0.5, "mix": 0.5},
    "filter": {"mode": 0.0, "cutoff_hz": 800.0, "resonance": 0.6},
}
"""What each effect is set to for the cost measurement (the rest at defaults)."""
FILTER_LFO = {"lfo_beats": 4.0, "lfo_depth": 1.5}
"""The filter once more with its LFO on (its coefficients then change every sample)."""
SOX = {
    "echo": ["echo", "0.8", "0.9", f"{0.75 * 60000 / BPM:.1f}", "0.6"],
    "reverb": ["reverb", "50", "50", "100"],
    "flanger": ["flanger"],
    "filter": ["lowpass", "800", "1.5q"],
}
"""The sox effect each is compared with."""


def _unit(name: str, max_block: int = 512, **params) -> FxUnit:
    unit = FxUnit(create_effect(name, SR, max_block), 0)
    for key, value in params.items():
        unit[f"fx0.{key}"] = value
    return unit


def _run(unit: FxUnit, x: np.ndarray, block: int = 256, fpb: float = FPB) -> np.ndarray:
    """``x`` through ``unit`` in blocks, float64 out."""
    buf = np.zeros((block, 2), np.float32)
    y = np.zeros(x.shape)
    for start in range(0, len(x), block):
        n = min(block, len(x) - start)
        buf[:n] = x[start:start + n]
        unit.process(buf, n, fpb)
        y[start:start + n] = buf[:n]
    return y


# --------------------------------------------------------------------------- cost


def _cost(name: str, material: np.ndarray, block: int, extra: dict | None = None) -> dict:
    unit = _unit(name, **SETTINGS[name], **(extra or {}))
    buf = np.zeros((block, 2), np.float32)
    n_blocks = len(material) // block
    costs = np.zeros(n_blocks)
    gc.disable()
    try:
        for b in range(n_blocks):
            buf[:] = material[b * block:(b + 1) * block]
            t0 = time.thread_time_ns()
            unit.process(buf, block, FPB)
            costs[b] = time.thread_time_ns() - t0
    finally:
        gc.enable()
    block_us = block / SR * 1e6
    med, p99 = float(np.median(costs)) / 1e3, float(np.percentile(costs, 99)) / 1e3
    return {"median_us": round(med, 1), "p99_us": round(p99, 1), "median_share": round(med / block_us, 4),
            "p99_share": round(p99 / block_us, 4), "total_s": float(costs.sum()) / 1e9}


def _idle_us(name: str) -> float:
    """Median cost of a call on silence once the tail has died, µs."""
    unit = _unit(name, **SETTINGS[name])
    buf = np.zeros((256, 2), np.float32)
    for _ in range(int(30 * SR / 256)):             # 30 s of silence: every tail is gone
        buf[:] = 0.0                                # (the block is the output too)
        if not unit.process(buf, 256, FPB):
            break
    costs = []
    for _ in range(500):
        buf[:] = 0.0
        t0 = time.thread_time_ns()
        unit.process(buf, 256, FPB)
        costs.append(time.thread_time_ns() - t0)
    return round(float(np.median(costs)) / 1e3, 2)


# --------------------------------------------------------------------------- quality


def _burst(hz: float = 1000.0, ms: float = 10.0) -> np.ndarray:
    n = int(ms * 1e-3 * SR)
    return 0.5 * np.sin(2 * np.pi * hz * np.arange(n) / SR) * np.hanning(n)


def _echo_quality() -> dict:
    x = np.zeros((3 * SR, 2))
    b = _burst()
    x[SR // 2:SR // 2 + len(b)] = b[:, None]
    time_beats, feedback = 0.75, 0.6
    y = _run(_unit("echo", time_beats=time_beats, feedback=feedback, mix=1.0, lp_hz=20000.0, hp_hz=20.0), x)[:, 0]
    dry = y[SR // 2 - 50:SR // 2 + len(b) + 50]
    lags, levels = [], []
    for n in range(1, 5):
        expect = SR // 2 - 50 + n * time_beats * FPB
        lo = int(expect) - 50
        corr = [float(np.dot(y[lo + k:lo + k + len(dry)], dry)) for k in range(100)]
        lag = lo + int(np.argmax(corr))
        lags.append(lag - (SR // 2 - 50) - n * time_beats * FPB)
        levels.append(math.sqrt(np.mean(y[lag:lag + len(dry)] ** 2) / np.mean(dry ** 2)))
    return {"delay_expected_frames": round(time_beats * FPB, 2),
            "delay_error_frames_max": round(max(map(abs, lags)), 2), "feedback_set": feedback,
            "decay_per_repeat_measured": [round(levels[i + 1] / levels[i], 4) for i in range(len(levels) - 1)]}


def _rt60(y: np.ndarray, start: int) -> float:
    energy = (y[start:] ** 2).sum(axis=1)
    edc = np.cumsum(energy[::-1])[::-1]
    db = 10 * np.log10(edc / edc[0] + 1e-30)
    return 2.0 * (int(np.argmax(db < -35)) - int(np.argmax(db < -5))) / SR


def _reverb_quality() -> dict:
    rng = np.random.default_rng(2)
    out = {}
    for decay in (0.8, 2.5):
        x = np.zeros((int((decay + 1.5) * SR), 2))
        n = int(0.02 * SR)
        x[1000:1000 + n] = 0.3 * rng.standard_normal((n, 2))
        y = _run(_unit("reverb", decay_s=decay, damping=0.0, mix=1.0), x)
        out[f"rt60_s_at_{decay:g}"] = round(_rt60(y, 1000 + n + 64), 3)
    return out


def _flanger_quality() -> dict:
    period, depth, base = 4.0, 1.0, 1.0
    x = np.zeros((int(3 * period * FPB), 2))
    x[::1024] = 1.0
    y = _run(_unit("flanger", period_beats=period, depth=depth, delay_ms=base, feedback=0.0, mix=0.5), x)[:, 0]
    taus, times = [], []
    for start in range(1024 * 4, len(x) - 1024, 1024):
        seg = np.abs(y[start + 1:start + 1000])
        taus.append((int(np.argmax(seg)) + 1) / SR * 1000.0)
        times.append(start)
    taus, times = np.array(taus), np.array(times, dtype=float)
    # The sweep's period: time between upward crossings of its midpoint (interpolated between impulses).
    mid = 0.5 * (taus.min() + taus.max())
    up = [times[i] + (mid - taus[i]) / (taus[i + 1] - taus[i]) * (times[i + 1] - times[i])
          for i in range(len(taus) - 1) if taus[i] < mid <= taus[i + 1]]
    return {"delay_ms_range_set": [base, base + depth * 8.0], "delay_ms_range_measured":
            [round(float(taus.min()), 2), round(float(taus.max()), 2)],
            "period_beats_set": period,
            "period_beats_measured": round(float(np.diff(up).mean()) / FPB, 3) if len(up) > 1 else None}


def _filter_quality() -> dict:
    rng = np.random.default_rng(4)
    x = 0.1 * rng.standard_normal((16 * 8192, 2))
    out = {}
    for mode, label in ((0.0, "lp"), (1.0, "hp"), (2.0, "bp")):
        y = _run(_unit("filter", mode=mode, cutoff_hz=1000.0, resonance=0.0, mix=1.0), x)
        spec_x = np.abs(np.fft.rfft(x[:, 0].reshape(-1, 8192) * np.hanning(8192), axis=1)) ** 2
        spec_y = np.abs(np.fft.rfft(y[:, 0].reshape(-1, 8192) * np.hanning(8192), axis=1)) ** 2
        gain_db = 10 * np.log10(spec_y.mean(axis=0) / spec_x.mean(axis=0))
        freqs = np.fft.rfftfreq(8192, 1.0 / SR)
        if label == "bp":
            out["bp_gain_db_at_1000"] = round(float(gain_db[np.argmin(np.abs(freqs - 1000))]), 2)
        else:
            band = (freqs > 100) & (freqs < 10000)
            f, g = freqs[band], gain_db[band]
            i = int(np.argmin(np.abs(g + 3.0)))
            out[f"{label}_minus3db_hz"] = round(float(f[i]), 1)
    return out


def _engine_cost(material: np.ndarray, seconds: float) -> dict:
    """Four keylocked, synced decks playing, without and with three effects each (echo, reverb, flanger), at
    256-frame blocks: the engine's CPU time per block (median, p99), ms."""
    from engine.core import Engine
    from engine.track import track_from_arrays

    beats = np.arange(0.0, len(material) / SR, 60.0 / BPM)
    track = track_from_arrays(material, beats, beats[::4], title="bench")
    out: dict = {}
    for label, effects in (("no_fx", ()), ("three_fx_per_deck", ("echo", "reverb", "flanger"))):
        engine = Engine(n_decks=4)
        for d in range(4):
            engine.load(d, track)
            engine.send({"cmd": "sync", "deck": d, "on": True})
            for slot, name in enumerate(effects):
                engine.send({"cmd": "fx", "deck": d, "slot": slot, "effect": name})
            engine.send({"cmd": "play", "deck": d})
        block = np.zeros((256, 2), np.float32)
        engine.process(block)
        n_blocks = int(seconds * SR / 256)
        costs = np.zeros(n_blocks)
        gc.disable()
        try:
            for b in range(n_blocks):
                t0 = time.thread_time_ns()
                engine.process(block)
                costs[b] = time.thread_time_ns() - t0
        finally:
            gc.enable()
        out[label] = {"median_ms": round(float(np.median(costs)) / 1e6, 3),
                      "p99_ms": round(float(np.percentile(costs, 99)) / 1e6, 3)}
    out["median_ratio"] = round(out["three_fx_per_deck"]["median_ms"] / out["no_fx"]["median_ms"], 3)
    out["block_ms"] = round(256 / SR * 1e3, 3)
    return out


def _bypass_and_tail(name: str) -> dict:
    rng = np.random.default_rng(6)
    x = (0.2 * rng.standard_normal((SR, 2))).astype(np.float32)
    unit = _unit(name, **dict(SETTINGS[name], mix=0.0))
    bit_identical = bool(np.array_equal(_run(unit, x), x.astype(np.float64)))
    unit = _unit(name, **SETTINGS[name])
    _run(unit, x)
    buf = np.zeros((256, 2), np.float32)
    blocks = 0
    while blocks < 120 * SR // 256:
        buf[:] = 0.0
        if not unit.process(buf, 256, FPB):
            break
        blocks += 1
    return {"mix0_bit_identical": bit_identical, "tail_to_minus90db_s": round(blocks * 256 / SR, 2)}


# --------------------------------------------------------------------------- sox


def _sox_cpu_s(args: list[str]) -> float:
    import resource

    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    subprocess.run(args, check=True, capture_output=True)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def _sox(material: np.ndarray, runs: int) -> dict:
    sox = shutil.which("sox")
    if sox is None:
        return {"error": "sox not found (apt-get install sox, or scripts/install.sh)"}
    import soundfile as sf

    version = subprocess.run([sox, "--version"], capture_output=True, text=True).stdout.strip().split()[-1]
    out: dict = {"version": version}
    with tempfile.TemporaryDirectory() as tmp:
        src, dst = Path(tmp) / "in.wav", Path(tmp) / "out.wav"
        sf.write(src, material, SR, subtype="FLOAT")
        base = [sox, "-q", str(src), "-e", "floating-point", "-b", "32", str(dst)]
        plain = min(_sox_cpu_s(base) for _ in range(runs))
        for name, effect in SOX.items():
            total = min(_sox_cpu_s(base + effect) for _ in range(runs))
            # None: no more than sox's passthrough within the timer's noise (a short run on a busy machine);
            # a floor there would make a ratio out of noise.
            extra = total - plain
            out[name] = {"effect": " ".join(effect), "cpu_s": round(extra, 4) if extra >= 1e-4 else None}
        out["passthrough_cpu_s"] = round(plain, 4)
    return out


# --------------------------------------------------------------------------- the benchmark


def bench_effects(quick: bool = False) -> dict:
    """Cost, quality and sox comparison of the built-in effects (see the module docstring); JSON-ready."""
    bars = 2 if quick else 24
    g = generate(TrackSpec(bpm=BPM, seed=3, structure=[("intro", bars // 2), ("chorus", bars - bars // 2)]))
    material = np.ascontiguousarray(g.mix, dtype=np.float32)
    seconds = len(material) / SR
    result: dict = {"material": {"seconds": round(seconds, 2), "bpm": BPM, "sample_rate": SR}, "effects": {}}
    for name in SETTINGS:
        entry: dict = {"settings": SETTINGS[name], "cost": {}}
        for block in BLOCKS:
            entry["cost"][str(block)] = _cost(name, material, block)
        if name == "filter":
            lfo = _cost(name, material, 256, FILTER_LFO)
            entry["cost_with_lfo_256"] = {k: v for k, v in lfo.items() if k != "total_s"}
        entry["idle_us"] = _idle_us(name)
        entry["realtime_factor_256"] = round(seconds / entry["cost"]["256"]["total_s"], 1)
        for c in entry["cost"].values():
            c.pop("total_s")
        entry["quality"] = _bypass_and_tail(name)
        result["effects"][name] = entry
    result["effects"]["echo"]["quality"].update(_echo_quality())
    result["effects"]["reverb"]["quality"].update(_reverb_quality())
    result["effects"]["flanger"]["quality"].update(_flanger_quality())
    result["effects"]["filter"]["quality"].update(_filter_quality())
    result["engine"] = _engine_cost(material, 1.0 if quick else 10.0)
    sox = _sox(material, runs=1 if quick else 3)
    result["sox"] = sox
    for name, entry in result["effects"].items():
        if name in sox and sox[name]["cpu_s"]:
            sox_rt = seconds / sox[name]["cpu_s"]
            entry["sox_realtime_factor"] = round(sox_rt, 1)
            entry["speed_ratio_vs_sox"] = round(entry["realtime_factor_256"] / sox_rt, 2)
    return result
