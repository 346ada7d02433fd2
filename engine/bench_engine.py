"""Benchmark of the whole engine (:class:`engine.core.Engine`) against Rubber Band doing Mixxx's share of it.

:func:`bench_engine` runs the engine's whole job: four decks of four stems
playing generated tracks (``prep.synth``) at 124, 120, 126 and 128 BPM, all
synced (deck 0 leads with its pitch fader at +2 %, so every deck plays at a
ratio != 1), keylock on, every deck's EQ and filter away from their bypass
values, the master gain at +6 dB into the limiter. It drives
:meth:`Engine.process` block by block on a preallocated output array, as an
audio callback would, and reports:

- **per-block cost** at 128, 256 and 512 frames: median, p99 and max in ms of
  process CPU time (``time.process_time``) and of wall time; the realtime
  factor (audio seconds per CPU second, and per wall second) and the fraction
  of one core used; the same at 128 frames in vinyl mode (keylock off) and
  with one deck only, so the cost of a keylocked deck is visible. Every
  configuration is warmed up (kernels compiled or loaded from numba's cache,
  stretchers started) before it is timed, with the garbage collector paused,
  as the engine's audio thread runs.
- **where the time goes** at 128 frames: the same run with the stretcher's
  stages (int16 staging, the vocoder/resampler kernel, the Python wrapper),
  stem mixing, EQ, filter, sync, mixer and limiter wrapped in timers; what is
  left is the engine's and the decks' Python bookkeeping.
- **memory per loaded deck**: bytes of the :class:`~engine.track.DeckTrack`
  arrays plus the deck's own preallocated buffers (stretchers, stem buffers,
  EQ, filter: every numpy array reachable from the :class:`~engine.deck.Deck`,
  each counted once), against the 300 MB target for a 6-minute four-stem
  track; and the growth of the process' resident set (VmRSS) when loading a
  track, with the transient peak (VmHWM).
- **the peer**: Rubber Band (librubberband 3 through ``pylibrb``), realtime
  mode, R2 (``EngineFaster``) and R3 (``EngineFiner``), set up as Mixxx runs
  stem decks: one stereo ``RubberBandStretcher`` per stem per deck (16
  instances) at the engine's ratios, fed block by block the way Mixxx's
  ``EngineBufferScaleRubberBand::scaleBuffer`` does (retrieve what is there,
  feed ``getSamplesRequired()`` frames, 256 when it asks for none and has
  nothing). Rubber Band does only the stretching; ATE's figure is the whole
  engine (mixing, EQ, filter, limiter, sync included), so the ratios
  ATE / Rubber Band favour Rubber Band.

Costs are CPU time because the machine is shared; the ratios between ATE and
Rubber Band, measured in the same run, are the figures to compare.

:func:`compare_checkouts` (``ate bench engine --baseline DIR``) measures a
change instead: this checkout's engine and another checkout's run the same
job in two processes that take turns, 0.15 s of audio each, so that both see
the same minutes of a noisy machine; the median of the per-turn cost ratios is
the figure (an A/A run of one checkout against itself gives 1.00 ± 0.02 here,
where consecutive whole runs differ by up to 40 %).
"""

from __future__ import annotations

import collections
import gc
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from prep.audio import SAMPLE_RATE

__all__ = ["bench_engine", "compare_checkouts", "build_engine", "time_engine", "engine_breakdown", "event_costs",
           "deck_memory", "rubberband_costs", "make_tracks", "TEMPOS_BPM", "BLOCK_SIZES", "TARGET_REALTIME_FACTOR",
           "TARGET_DECK_MEMORY_BYTES"]

TEMPOS_BPM = (124.0, 120.0, 126.0, 128.0)
"""Tempo of each deck's track; deck 0 leads the sync."""
LEADER_PITCH = 0.02
"""Pitch fader of the leading deck, so that it too plays at a ratio != 1."""
BLOCK_SIZES = (128, 256, 512)
"""Block sizes timed, frames."""
TARGET_REALTIME_FACTOR = 10.0
"""The issue's target: at 128-frame blocks the whole engine uses under 10 % of one core."""
TARGET_DECK_MEMORY_BYTES = 300_000_000
"""The issue's target for one deck holding a 6-minute four-stem track (track + deck buffers)."""
TRACK_MINUTES = 6.0
"""Length of the tracks of the full run (the memory figure is for this length)."""
MIXXX_NOTE = ("Published anchor: Mixxx needed 11.6 ms audio buffers and a thread pool to run "
              "four stem decks with Rubber Band R3 on a 12th-gen Intel Core i7 (mixxx PR 13143).")

# Deck settings away from bypass: (eq_low_db, eq_mid_db, eq_high_db, filter) per deck.
_DECK_SETTINGS = ((-3.0, 2.0, -4.0, -0.3), (2.0, -3.0, 1.5, 0.3), (-6.0, 1.0, -2.0, -0.5), (1.0, -1.5, 3.0, 0.4))
_MASTER_GAIN_DB = 6.0
_WARMUP_S = 0.5


# --------------------------------------------------------------------------- material and setup


def _vm_kib(field: str) -> int:
    """``VmRSS`` / ``VmHWM`` of this process from /proc/self/status, KiB (0 where unavailable)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def track_bars(bpm: float, minutes: float, beats_per_bar: int = 4) -> int:
    """Bars of a track of ``minutes`` at ``bpm``."""
    return max(2, int(round(bpm * minutes / beats_per_bar)))


def make_tracks(quick: bool = False, bars: int | None = None) -> tuple[list, list[dict]]:
    """Generate the four decks' tracks (:data:`TEMPOS_BPM`), measuring the RSS growth of each load.

    Parameters
    ----------
    quick : bool
        8-bar tracks (about 16 s) instead of :data:`TRACK_MINUTES`-minute ones.
    bars : int, optional
        Bars of every track (overrides ``quick``).

    Returns
    -------
    tracks : list of DeckTrack
    loads : list of dict
        Per track: ``spec``, ``seconds``, ``rss_growth_bytes`` (retained), ``peak_rss_growth_bytes``
        (VmHWM growth: the generator's transient, meaningful for the first large load).
    """
    from engine.track import load_track

    load_track("synth:bpm=120,seed=99,bars=2")      # imports and kernels, so that the loads below measure the track
    gc.collect()
    tracks, loads = [], []
    for i, bpm in enumerate(TEMPOS_BPM):
        n_bars = bars if bars is not None else (8 if quick else track_bars(bpm, TRACK_MINUTES))
        spec = f"synth:bpm={bpm:g},seed={i + 1},bars={n_bars}"
        rss0, hwm0 = _vm_kib("VmRSS"), _vm_kib("VmHWM")
        track = load_track(spec)
        gc.collect()
        rss1, hwm1 = _vm_kib("VmRSS"), _vm_kib("VmHWM")
        tracks.append(track)
        loads.append({"spec": spec, "seconds": round(track.frames / SAMPLE_RATE, 2),
                      "track_bytes": track.memory_bytes, "rss_growth_bytes": (rss1 - rss0) * 1024,
                      "peak_rss_growth_bytes": max(hwm1 - hwm0, 0) * 1024})
    return tracks, loads


def build_engine(tracks: list, keylock: bool = True, n_playing: int = 4, max_block_frames: int = 512):
    """An :class:`~engine.core.Engine` with ``tracks[:n_playing]`` loaded, synced, playing from their cue points.

    Deck 0 leads at +2 % pitch; EQ and filter of every deck are set away from bypass
    (:data:`_DECK_SETTINGS`); master gain +6 dB into the limiter. The commands are applied on the first block.
    """
    from engine.core import Engine

    engine = Engine(n_decks=4, sample_rate=SAMPLE_RATE, channels=2, max_block_frames=max_block_frames)
    replies = []
    for i in range(n_playing):
        engine.load(i, tracks[i])
    replies.append(engine.send({"cmd": "set", "param": "master_gain_db", "value": _MASTER_GAIN_DB}))
    replies.append(engine.send({"cmd": "set", "deck": 0, "param": "pitch", "value": LEADER_PITCH}))
    for i in range(n_playing):
        low, mid, high, knob = _DECK_SETTINGS[i]
        for param, value in (("eq_low_db", low), ("eq_mid_db", mid), ("eq_high_db", high), ("filter", knob)):
            replies.append(engine.send({"cmd": "set", "deck": i, "param": param, "value": value}))
        replies.append(engine.send({"cmd": "keylock", "deck": i, "on": keylock}))
        replies.append(engine.send({"cmd": "sync", "deck": i, "on": True}))
    for i in range(n_playing):
        replies.append(engine.send({"cmd": "play", "deck": i}))
    bad = [r for r in replies if not r.get("ok")]
    if bad:
        raise RuntimeError(f"engine/bench_engine.py: a setup command was rejected: {bad[0].get('error')}")
    return engine


def _stats_ms(seconds: np.ndarray, block_s: float) -> dict:
    """Median, p99, max and mean of per-block costs in ms, and how many blocks took longer than the block lasts."""
    ms = np.asarray(seconds) * 1000.0
    return {"median_ms": round(float(np.median(ms)), 4), "p99_ms": round(float(np.percentile(ms, 99)), 4),
            "max_ms": round(float(ms.max()), 4), "max_at_block": int(np.argmax(ms)),
            "mean_ms": round(float(ms.mean()), 4),
            "over_block_duration": int(np.count_nonzero(ms > block_s * 1000.0))}


# --------------------------------------------------------------------------- ATE


def time_engine(engine, block_frames: int, audio_s: float, warmup_s: float = _WARMUP_S) -> dict:
    """Time :meth:`Engine.process` on a preallocated ``(block_frames, 2)`` array for ``audio_s`` of audio.

    Returns the per-block CPU and wall costs, realtime factors, the fraction of one core, the decks'
    ratios, and ``output``: peak, RMS, non-finite samples of everything the timed blocks produced, the
    limiter's ceiling and its largest gain reduction.
    """
    out = np.zeros((block_frames, engine.channels), np.float32)
    for _ in range(max(1, int(warmup_s * SAMPLE_RATE / block_frames))):
        engine.process(out)
    n_blocks = max(8, int(audio_s * SAMPLE_RATE / block_frames))
    cpu = np.zeros(n_blocks)
    wall = np.zeros(n_blocks)
    record = np.zeros((n_blocks * block_frames, engine.channels), np.float32)
    reduction_db = 0.0
    limiter = engine.limiter
    process = engine.process
    cpu_clock, wall_clock = time.process_time, time.perf_counter
    gc.collect()
    gc.disable()      # the engine's audio thread keeps the collector out of the callback; so does this loop
    try:
        for b in range(n_blocks):
            w0 = wall_clock()
            c0 = cpu_clock()
            process(out)
            c1 = cpu_clock()
            w1 = wall_clock()
            cpu[b] = c1 - c0
            wall[b] = w1 - w0
            record[b * block_frames:(b + 1) * block_frames] = out      # outside the timed span
            if limiter.gain < 1.0:
                reduction_db = max(reduction_db, -20.0 * math.log10(max(limiter.gain, 1e-9)))
    finally:
        gc.enable()
    audio = n_blocks * block_frames / engine.sample_rate
    finite = np.isfinite(record)
    peak = float(np.max(np.abs(np.where(finite, record, 0.0))))
    rms = float(np.sqrt(np.mean(np.square(np.where(finite, record, 0.0), dtype=np.float64))))
    playing = [d for d in engine.decks if d.loaded]
    return {
        "block_frames": block_frames, "block_ms": round(block_frames / engine.sample_rate * 1000.0, 3),
        "blocks": n_blocks, "audio_s": round(audio, 3),
        "cpu": _stats_ms(cpu, audio / n_blocks), "wall": _stats_ms(wall, audio / n_blocks),
        "realtime_factor_cpu": round(audio / cpu.sum(), 2), "realtime_factor_wall": round(audio / wall.sum(), 2),
        "core_fraction": round(float(cpu.sum() / audio), 4),
        "decks_playing": sum(d.playing for d in playing), "keylock": [d.keylock for d in playing],
        "ratios": [round(d.ratio, 5) for d in playing],
        "output": {"peak": round(peak, 5), "rms_dbfs": round(20.0 * math.log10(max(rms, 1e-12)), 2),
                   "nonfinite_samples": int(record.size - np.count_nonzero(finite)),
                   "limiter_ceiling": round(10.0 ** (limiter.ceiling_db / 20.0), 6),
                   "limiter_max_reduction_db": round(reduction_db, 2)},
    }


def _timed(fn, acc: dict, key: str):
    clock = time.perf_counter_ns

    def wrapper(*args, **kwargs):
        t0 = clock()
        try:
            return fn(*args, **kwargs)
        finally:
            acc[key] += clock() - t0

    return wrapper


def engine_breakdown(tracks: list, block_frames: int = 128, audio_s: float = 3.0) -> dict:
    """Where a block's time goes: the four-deck keylock run with every stage wrapped in a wall-clock timer.

    Stages: ``stretch_ahead`` (vocoder frames computed ahead of need by :meth:`Stretcher.prefetch`, which
    the engine spreads over blocks), ``deck_render`` (each playing deck's one kernel call,
    :func:`engine.deck.render_block`: int16 staging, output from the vocoder's ring or the resampler,
    any vocoder frame not computed ahead, stem gains and sum, trim, EQ and filter),
    ``hop_scheduling`` (the engine's choice of which deck computes ahead), ``sync`` (followers' ratio),
    ``mixer`` (faders, crossfader, meters), ``limiter``; ``python_rest`` is the block's time outside all
    of them (the engine's and the decks' bookkeeping). Microseconds per block (means), and each stage's share;
    the timers' own cost is in ``instrumented_us`` against ``plain_us`` (the same run untimed).
    """
    import engine.core as core

    engine = build_engine(tracks)
    out = np.zeros((block_frames, 2), np.float32)
    for _ in range(int(_WARMUP_S * SAMPLE_RATE / block_frames)):
        engine.process(out)
    n_blocks = max(8, int(audio_s * SAMPLE_RATE / block_frames))
    plain = time_engine(engine, block_frames, audio_s, warmup_s=0.0)

    acc: dict = collections.defaultdict(int)
    # Module-level kernels the Python layer calls (patched while timing, restored after).
    patches = [(core, "mix_decks", "mixer"), (core, "add_faded", "mixer"), (core, "gain_ramp_block", "mixer"),
               (core, "limit_into", "limiter")]
    originals = [getattr(m, name) for m, name, _ in patches]
    for (m, name, key), fn in zip(patches, originals):
        setattr(m, name, _timed(fn, acc, key))
    for deck in engine.decks:
        deck._render_kernel = _timed(deck._render_kernel, acc, "deck_render")
        for st in deck._stretchers.values():
            st.prefetch = _timed(st.prefetch, acc, "stretch_ahead")
    engine._follow = _timed(engine._follow, acc, "sync")
    engine._spread_hops = _timed(engine._spread_hops, acc, "hop_schedule_total")
    total_ns = 0
    clock = time.perf_counter_ns
    gc.collect()
    gc.disable()
    try:
        for _ in range(n_blocks):
            t0 = clock()
            engine.process(out)
            total_ns += clock() - t0
    finally:
        gc.enable()
        for (m, name, _), fn in zip(patches, originals):
            setattr(m, name, fn)
    per = collections.defaultdict(float, {k: v / n_blocks / 1000.0 for k, v in acc.items()})
    total = total_ns / n_blocks / 1000.0
    stages = {
        "stretch_ahead": per["stretch_ahead"], "deck_render": per["deck_render"],
        "hop_scheduling": per["hop_schedule_total"] - per["stretch_ahead"],
        "sync": per["sync"], "mixer": per["mixer"],
        "limiter": per["limiter"],
    }
    stages["python_rest"] = total - sum(stages.values())
    decks = per["deck_render"] + per["stretch_ahead"]
    return {
        "block_frames": block_frames, "blocks": n_blocks, "clock": "wall (perf_counter), means per block",
        "plain_us": round(plain["wall"]["mean_ms"] * 1000.0, 1),
        "instrumented_us": round(total, 1),
        "stages_us": {k: round(v, 1) for k, v in stages.items()},
        "stages_share": {k: round(v / total, 4) for k, v in stages.items()},
        "decks_share": round(decks / total, 4),
        "python_share": round((stages["hop_scheduling"] + stages["python_rest"]) / total, 4),
    }


def event_costs(tracks: list, block_frames: int = 128, blocks: int = 1000, seeks: int = 30) -> dict:
    """Cost of transport events on one keylocked deck (ratio 1.03): CPU ms per block while it just plays,
    during a 1/4-beat loop roll (a turn of the loop every 5300 frames), and of the block after a seek
    (a keylock restart: the frames around the new place computed at once)."""
    from engine.core import Engine

    engine = Engine(n_decks=1)
    engine.load(0, tracks[0])
    for message in ({"cmd": "set", "deck": 0, "param": "pitch", "value": 0.03}, {"cmd": "play", "deck": 0}):
        engine.send(message)
    out = np.zeros((block_frames, 2), np.float32)
    block_s = block_frames / SAMPLE_RATE

    def run(n: int) -> np.ndarray:
        costs = np.zeros(n)
        for i in range(n):
            t0 = time.process_time()
            engine.process(out)
            costs[i] = time.process_time() - t0
        return costs

    gc.disable()
    try:
        run(int(_WARMUP_S * SAMPLE_RATE / block_frames))
        plain = run(blocks)
        engine.send({"cmd": "loop_roll", "deck": 0, "beats": 0.25})
        run(2)                                   # the roll's one restart
        roll = run(blocks)
        engine.send({"cmd": "loop_roll_release", "deck": 0})
        run(20)
        restart = np.zeros(seeks)
        for k in range(seeks):
            engine.send({"cmd": "seek", "deck": 0, "seconds": 2.0 + 0.37 * k})
            restart[k] = run(1)[0]
            run(20)
    finally:
        gc.enable()
    return {"block_frames": block_frames, "clock": "process CPU time",
            "playing": _stats_ms(plain, block_s), "loop_roll_quarter_beat": _stats_ms(roll, block_s),
            "block_after_seek": _stats_ms(restart, block_s)}


# --------------------------------------------------------------------------- memory


def _owner(a: np.ndarray) -> np.ndarray:
    while isinstance(a.base, np.ndarray):
        a = a.base
    return a


def _array_bytes(obj, seen: set, depth: int = 0) -> int:
    """Bytes of every numpy array reachable from ``obj`` (attributes, dicts, lists, tuples), each owner once."""
    if depth > 8 or id(obj) in seen:
        return 0
    seen.add(id(obj))
    if isinstance(obj, np.ndarray):
        owner = _owner(obj)
        if owner is obj:
            return int(obj.nbytes)
        return _array_bytes(owner, seen, depth + 1)
    if isinstance(obj, dict):
        return sum(_array_bytes(v, seen, depth + 1) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(_array_bytes(v, seen, depth + 1) for v in obj)
    attrs = getattr(obj, "__dict__", None)
    if attrs is not None and type(obj).__module__.startswith("engine."):
        return sum(_array_bytes(v, seen, depth + 1) for k, v in attrs.items() if k != "track")
    return 0


def deck_memory(engine, deck_index: int = 0, target_s: float = TRACK_MINUTES * 60.0) -> dict:
    """Bytes held by one loaded deck: its track's arrays plus the deck's own preallocated buffers.

    The deck's buffers are every numpy array reachable from the :class:`~engine.deck.Deck` (both
    stretchers, stem buffers, block, EQ, filter), each owner counted once, the track's stems
    excluded (the stretcher keeps a reference to them). ``projected_bytes`` scales the track to
    ``target_s`` seconds at the same bytes per frame; the engine's shared buffers (mix bus, cue,
    limiters) are reported apart.
    """
    deck = engine.decks[deck_index]
    track = deck.track
    seen = {id(track.stems), id(track.beats_frames), id(track.downbeats_frames)}
    buffers = _array_bytes(deck, seen)
    track_bytes = int(track.memory_bytes)
    shared_seen = set(seen)
    for d in engine.decks:
        _array_bytes(d, shared_seen)
    shared = _array_bytes({k: v for k, v in vars(engine).items() if k != "decks"}, shared_seen)
    stems_bytes_per_s = track.stems.nbytes / (track.frames / SAMPLE_RATE)
    projected_track = int(round(stems_bytes_per_s * target_s))
    total = track_bytes + buffers
    return {"track_s": round(track.frames / SAMPLE_RATE, 2), "track_bytes": track_bytes,
            "stems_dtype": str(track.stems.dtype), "deck_buffer_bytes": buffers, "total_bytes": total,
            "projected_seconds": target_s, "projected_bytes": projected_track + buffers,
            "engine_shared_buffer_bytes": shared, "target_bytes": TARGET_DECK_MEMORY_BYTES,
            "meets_target": bool(projected_track + buffers <= TARGET_DECK_MEMORY_BYTES)}


# --------------------------------------------------------------------------- Rubber Band


def _rb_sources(tracks: list, ratios: list[float], audio_s: float) -> list[list[np.ndarray]]:
    """Per deck, per stem: float32 ``(2, frames)`` from the cue point, long enough for ``audio_s`` at its ratio."""
    sources = []
    for track, ratio in zip(tracks, ratios):
        start = int(track.cue_frames)
        n = int((audio_s + 2 * _WARMUP_S) * SAMPLE_RATE * abs(ratio) * 1.1) + 16384
        gain = 1.0 / (32768.0 * track.scale)
        stems = []
        for s in range(track.n_stems):
            x = np.zeros((2, n), np.float32)
            part = track.stems[s, start:start + n].T.astype(np.float32) * gain
            x[:, :part.shape[1]] = part
            stems.append(np.ascontiguousarray(x))
        sources.append(stems)
    return sources


def _rb_pull(st, src: np.ndarray, pos: int, n: int) -> int:
    """One block of ``n`` frames from ``st``, fed as Mixxx's scaleBuffer feeds it; returns the new read position."""
    filled = 0
    while filled < n:
        got = min(st.available(), n - filled)
        if got > 0:
            st.retrieve(got)
            filled += got
            if filled >= n:
                break
        need = st.get_samples_required()
        if need == 0 and st.available() == 0:
            need = 256       # Mixxx's kRubberBandBlockSize: R3 asks for nothing while it still needs input
        if need > 0:
            st.process(src[:, pos:pos + need])
            pos += need
    return pos


def rubberband_costs(sources: list, ratios: list[float], engine_name: str, block_frames: int,
                     audio_s: float) -> dict:
    """Per-block cost of Rubber Band realtime stretching ``sources`` (decks x stems, stereo each).

    One ``RubberBandStretcher`` per stem per deck, ``engine_name`` "R2" (EngineFaster) or "R3"
    (EngineFiner), time ratio ``1 / ratio`` per deck; every block pulls ``block_frames`` from each.
    """
    from pylibrb import Option, RubberBandStretcher

    option = Option.PROCESS_REALTIME | (Option.ENGINE_FINER if engine_name == "R3" else Option.ENGINE_FASTER)
    stretchers, feeds = [], []
    for deck_sources, ratio in zip(sources, ratios):
        for src in deck_sources:
            st = RubberBandStretcher(SAMPLE_RATE, 2, option, 1.0 / ratio, 1.0)
            st.set_max_process_size(max(block_frames, 4096))
            stretchers.append(st)
            feeds.append(src)
    pos = [0] * len(stretchers)
    jobs = list(range(len(stretchers)))

    def one_block():
        for j in jobs:
            pos[j] = _rb_pull(stretchers[j], feeds[j], pos[j], block_frames)

    for _ in range(max(1, int(_WARMUP_S * SAMPLE_RATE / block_frames))):
        one_block()
    start_pos = list(pos)
    n_blocks = max(8, int(audio_s * SAMPLE_RATE / block_frames))
    cpu = np.zeros(n_blocks)
    wall = np.zeros(n_blocks)
    cpu_clock, wall_clock = time.process_time, time.perf_counter
    gc.collect()
    gc.disable()
    try:
        for b in range(n_blocks):
            w0 = wall_clock()
            c0 = cpu_clock()
            one_block()
            c1 = cpu_clock()
            w1 = wall_clock()
            cpu[b] = c1 - c0
            wall[b] = w1 - w0
    finally:
        gc.enable()
    audio = n_blocks * block_frames / SAMPLE_RATE
    consumed = [(p - p0) / (n_blocks * block_frames) for p, p0 in zip(pos, start_pos)]
    return {"engine": engine_name, "engine_version": int(stretchers[0].engine_version),
            "instances": len(stretchers), "block_frames": block_frames, "blocks": n_blocks,
            "audio_s": round(audio, 3), "cpu": _stats_ms(cpu, block_frames / SAMPLE_RATE),
            "wall": _stats_ms(wall, block_frames / SAMPLE_RATE),
            "realtime_factor_cpu": round(audio / cpu.sum(), 2), "realtime_factor_wall": round(audio / wall.sum(), 2),
            "core_fraction": round(float(cpu.sum() / audio), 4),
            "input_frames_per_output_frame": [round(float(np.mean(consumed[i:i + 4])), 4)
                                              for i in range(0, len(consumed), 4)]}


def _ratio_row(ate: dict, rb: dict) -> dict:
    """ATE cost / Rubber Band cost (below 1: ATE is cheaper)."""
    return {"median": round(ate["cpu"]["median_ms"] / rb["cpu"]["median_ms"], 3),
            "p99": round(ate["cpu"]["p99_ms"] / rb["cpu"]["p99_ms"], 3),
            "max": round(ate["cpu"]["max_ms"] / rb["cpu"]["max_ms"], 3),
            "mean": round(ate["cpu"]["mean_ms"] / rb["cpu"]["mean_ms"], 3)}


# --------------------------------------------------------------------------- entry point


def bench_engine(quick: bool = False, baseline: str | None = None) -> dict:
    """Time the whole engine (4 decks x 4 stems, synced, keylock, EQ, filter, limiter) against Rubber Band.

    Parameters
    ----------
    quick : bool
        8-bar tracks, 3 s of audio per ATE configuration and 0.75 s per Rubber Band one (under a
        minute); the full run uses 6-minute tracks, 20 s and 8 s.
    baseline : str, optional
        Another ATE checkout: instead of the run below, :func:`compare_checkouts` against it at each
        block size (60 turns each with ``quick``, 128 frames only; else 150).

    Returns
    -------
    dict
        JSON-ready: ``setup``, ``ate`` (per block size and the vinyl / one-deck runs at 128),
        ``breakdown`` (128-frame block by stage), ``events`` (one deck: playing, a loop roll, the block
        after a seek), ``memory`` (per deck, RSS on load),
        ``rubberband`` (R2 / R3 per block size, or why it could not run), ``ratios`` (ATE / R2 and
        ATE / R3 per block size), ``meets_target``, ``notes``.
    """
    t_start = time.perf_counter()
    if baseline is not None:
        blocks = (128,) if quick else BLOCK_SIZES
        return {"compare": {str(b): compare_checkouts(baseline, b, 60 if quick else 150) for b in blocks},
                "target": {"block_frames": 128, "realtime_factor_at_least": TARGET_REALTIME_FACTOR},
                "bench_s": round(time.perf_counter() - t_start, 1)}
    ate_s = 3.0 if quick else 20.0
    rb_s = 0.75 if quick else 8.0
    tracks, loads = make_tracks(quick)

    # Every path once (kernels compiled or loaded from numba's cache) before anything is timed.
    for keylock in (True, False):
        warm = build_engine(tracks, keylock=keylock)
        for block in BLOCK_SIZES:
            time_engine(warm, block, 0.25, warmup_s=0.25)
    del warm
    ate: dict = {}
    engine = None
    for block in BLOCK_SIZES:
        engine = build_engine(tracks)
        ate[str(block)] = time_engine(engine, block, ate_s)
    ratios = ate["128"]["ratios"]
    memory = deck_memory(engine, 0)
    memory["load"] = loads
    memory["load_rss_growth_bytes_mean"] = int(np.mean([x["rss_growth_bytes"] for x in loads]))
    del engine
    ate["128_vinyl"] = time_engine(build_engine(tracks, keylock=False), 128, ate_s)
    ate["128_one_deck"] = time_engine(build_engine(tracks, n_playing=1), 128, ate_s)
    # Means, not medians: the vocoder computes a frame every 512 output frames, so at 128-frame blocks
    # three blocks in four are cheap and the median hides the frame's cost.
    four, one = ate["128"]["cpu"]["mean_ms"], ate["128_one_deck"]["cpu"]["mean_ms"]
    per_deck = {"keylock_deck_mean_ms": round((four - one) / 3.0, 4),
                "keylock_deck_core_fraction": round((ate["128"]["core_fraction"]
                                                     - ate["128_one_deck"]["core_fraction"]) / 3.0, 4),
                "vinyl_saving_mean_ms": round(four - ate["128_vinyl"]["cpu"]["mean_ms"], 4),
                "block_ms": ate["128"]["block_ms"]}
    breakdown = engine_breakdown(tracks, 128, ate_s if quick else 8.0)
    events = event_costs(tracks, blocks=300 if quick else 1000, seeks=10 if quick else 30)

    rubberband: dict = {}
    compare: dict = {}
    try:
        import pylibrb

        sources = _rb_sources(tracks, ratios, rb_s)
        rubberband["library"] = f"pylibrb {pylibrb.__version__} (librubberband, realtime mode, 16 stereo instances)"
        for name in ("R2", "R3"):
            rubberband[name] = {str(b): rubberband_costs(sources, ratios, name, b, rb_s) for b in BLOCK_SIZES}
        for b in BLOCK_SIZES:
            compare[str(b)] = {"ATE_over_R2": _ratio_row(ate[str(b)], rubberband["R2"][str(b)]),
                               "ATE_over_R3": _ratio_row(ate[str(b)], rubberband["R3"][str(b)])}
    except ImportError as err:
        rubberband = _rubberband_offline_fallback(tracks, ratios, rb_s, str(err))

    rtf = ate["128"]["realtime_factor_cpu"]
    return {
        "setup": {"decks": 4, "stems_per_deck": 4, "tempos_bpm": list(TEMPOS_BPM), "leader_pitch": LEADER_PITCH,
                  "deck_settings_eq_low_mid_high_db_filter": [list(s) for s in _DECK_SETTINGS],
                  "master_gain_db": _MASTER_GAIN_DB, "keylock": True, "sync": True,
                  "tracks_s": [x["seconds"] for x in loads], "max_block_frames": 512,
                  "clock": "process CPU time (time.process_time) per block, gc paused; wall time beside it",
                  "quick": quick,
                  "engine_spreads_vocoder_frames": _engine_spreads()},
        "ate": ate,
        "per_deck": per_deck,
        "breakdown": breakdown,
        "events": events,
        "memory": memory,
        "rubberband": rubberband,
        "ratios": compare,
        "target": {"block_frames": 128, "realtime_factor_at_least": TARGET_REALTIME_FACTOR,
                   "realtime_factor_cpu": rtf, "core_fraction": ate["128"]["core_fraction"]},
        "meets_target": bool(rtf >= TARGET_REALTIME_FACTOR),
        "meets_memory_target": memory["meets_target"],
        "notes": [MIXXX_NOTE,
                  "ATE's figures are the whole engine (stretching, stem mix, EQ, filter, sync, mixer, limiter, "
                  "Python bookkeeping); Rubber Band's are the stretching alone, so ATE/RB ratios favour Rubber Band.",
                  "Ratios are ATE cost / Rubber Band cost: below 1 means ATE is cheaper."],
        "bench_s": round(time.perf_counter() - t_start, 1),
    }


# The worker of compare_checkouts, run in each checkout with ``python -c``: only make_tracks and
# build_engine are needed from it, so that any older checkout can be the baseline.
_LOCKSTEP_WORKER = """
import gc, sys, time
import numpy as np
from engine.bench_engine import build_engine, make_tracks
block = int(sys.argv[1])
tracks = make_tracks(True)[0]
out = np.zeros((block, 2), np.float32)
n = max(1, int(float(sys.argv[2]) * 44100 / block))


def fresh():
    # The quick tracks last about 16 s: a new engine every 5 s of audio keeps all four decks playing.
    engine = build_engine(tracks)
    for _ in range(int(0.5 * 44100 / block)):
        engine.process(out)
    return engine


engine = fresh()
played = 0
print("ready", flush=True)
gc.disable()
for line in sys.stdin:
    if line.strip() != "go":
        break
    if played + n > 5 * 44100 // block:
        gc.enable()
        engine = fresh()
        gc.disable()
        played = 0
    t0 = time.process_time()
    for _ in range(n):
        engine.process(out)
    cost = (time.process_time() - t0) / (n * block / 44100)
    played += n
    print(repr(cost) if all(d.playing for d in engine.decks) else "nan", flush=True)
"""


def compare_checkouts(baseline: str | os.PathLike, block_frames: int = 128, turns: int = 100,
                      turn_s: float = 0.15) -> dict:
    """The engine job of :func:`build_engine` in this checkout and in ``baseline``, run in turns.

    Two worker processes (the same Python; ``PYTHONPATH`` set to each checkout's root) each build the
    four-deck engine on the quick tracks, then render ``turn_s`` seconds of audio when told to, one
    after the other, ``turns`` times each (the order alternates). Each turn's cost is CPU seconds per
    audio second.

    Returns
    -------
    dict
        ``this`` and ``baseline`` (checkout roots; realtime factor from the median turn and from the best
        turn), ``cost_ratio`` (this / baseline: median and mean of the per-turn ratios, and the share of
        pairs in which this checkout was cheaper).
    """
    here = Path(__file__).resolve().parents[1]
    base = Path(baseline).resolve()
    if not (base / "engine" / "bench_engine.py").is_file():
        raise ValueError(f"{base}: not an ATE checkout (no engine/bench_engine.py)")
    workers = {}
    try:
        for name, root in (("this", here), ("baseline", base)):
            env = dict(os.environ, PYTHONPATH=str(root))
            workers[name] = subprocess.Popen(
                [sys.executable, "-c", _LOCKSTEP_WORKER, str(block_frames), str(turn_s)], cwd=root, env=env,
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        for name, proc in workers.items():
            if proc.stdout.readline().strip() != "ready":
                raise RuntimeError(f"engine/bench_engine.py: the {name} checkout's worker did not start")
        costs: dict = {"this": [], "baseline": []}
        for turn in range(turns):
            for name in (("this", "baseline") if turn % 2 == 0 else ("baseline", "this")):
                proc = workers[name]
                proc.stdin.write("go\n")
                proc.stdin.flush()
                costs[name].append(float(proc.stdout.readline()))
    finally:
        for proc in workers.values():
            if proc.poll() is None:
                proc.stdin.close()
                proc.wait(timeout=30)
    this, other = np.array(costs["this"]), np.array(costs["baseline"])
    if np.isnan(this).any() or np.isnan(other).any():
        raise RuntimeError("engine/bench_engine.py: a deck stopped during a timed turn")
    ratio = this / other

    def factors(c: np.ndarray) -> dict:
        return {"realtime_factor_median_turn": round(float(1.0 / np.median(c)), 2),
                "realtime_factor_best_turn": round(float(1.0 / c.min()), 2)}

    return {"block_frames": block_frames, "turns": turns, "turn_audio_s": turn_s,
            "this": {"checkout": str(here), **factors(this)},
            "baseline": {"checkout": str(base), **factors(other)},
            "cost_ratio": {"median": round(float(np.median(ratio)), 4), "mean": round(float(ratio.mean()), 4),
                           "this_cheaper_share": round(float(np.mean(ratio < 1.0)), 3)},
            "clock": "process CPU time per audio second, per turn; the two processes take turns"}


def _engine_spreads() -> bool:
    from engine.core import Engine

    return hasattr(Engine, "_spread_hops")


def _rubberband_offline_fallback(tracks: list, ratios: list[float], audio_s: float, why: str) -> dict:
    """Rubber Band's CLI (offline, whole file) through pyrubberband when pylibrb is not there."""
    import resource

    import pyrubberband

    def children_cpu() -> float:
        ru = resource.getrusage(resource.RUSAGE_CHILDREN)
        return ru.ru_utime + ru.ru_stime

    sources = _rb_sources(tracks, ratios, audio_s)
    out: dict = {"fallback": f"pylibrb unusable ({why}); Rubber Band CLI offline through pyrubberband, "
                             "not per block: realtime factors only"}
    for name in ("R2", "R3"):
        args = {"--fine": ""} if name == "R3" else None
        c0 = children_cpu()
        audio = 0.0
        for deck_sources, ratio in zip(sources, ratios):
            for src in deck_sources:
                y = pyrubberband.time_stretch(src.T, SAMPLE_RATE, ratio, rbargs=args)
                audio += y.shape[0] / SAMPLE_RATE
        # audio counts every instance's output: per 16-instance set it is audio / 16
        per_set = audio / sum(len(d) for d in sources)
        out[name] = {"realtime_factor_cpu": round(per_set / max(children_cpu() - c0, 1e-9), 2)}
    return out


if __name__ == "__main__":
    import json
    import sys

    print(json.dumps(bench_engine(quick="--quick" in sys.argv), indent=1))
