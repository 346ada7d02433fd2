"""``ate bench automix``: an automix of a generated crate, measured on the rendered audio.

The crate: generated tracks (prep/synth.py) written as NI Stems files with
their true stems, so prep imports the stems instead of separating them and
what is measured is the mixing, not the separation. Some tracks sing in their
intro or outro, so the planner meets vocal overlaps it has to avoid.

The same route is rendered with the planner's transitions and, at the very
same points and tempo path, as plain equal-power crossfades (the
``crossfade`` preset) — and with ``--stretcher rubberband`` a third time with
the planner's transitions and Rubber Band R3 stretching the decks
(``rubberband``, :mod:`engine.rubberband`) — each four times with the engine's per-deck taps (what
each deck adds to the master, before the limiter): the full mix, and the
drum, bass and vocal stems soloed (the engine is deterministic: the four
renders share every sample position). From the audio:

- **beat alignment**: in every transition, each kick onset of the incoming
  deck against the nearest kick of the outgoing one: kicks found in each deck's
  soloed drums (the strongest < 150 Hz rise of each beat), then timed to the
  sample by matching 100 ms of that very beat of the source drum stem
  (normalised cross-correlation), ms;
- **both bass audible / both vocals audible**: seconds where both decks' soloed
  bass (vocal) output is above −40 dBFS RMS in 46 ms frames; for the vocals
  also within the transitions that used the vocal-safe preset;
- **loudness steps**: integrated loudness (BS.1770) of the master over each
  track's solo part, and the difference between consecutive tracks, LU;
- **true peak** of the whole master, dBTP;
- **phrase starts**: where each track is in its source when the incoming one
  starts (the engine's audible playhead: loop-based music repeats too much for
  the audio alone to say which bar plays), against the generator's true
  phrase starts (every 8 bars), within a quarter of a beat.
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

__all__ = ["bench_automix", "TARGETS"]

TARGETS = {"beat_error_median_ms": 2.0, "beat_error_max_ms": 10.0, "both_vocals_vocal_safe_s": 0.0,
           "loudness_step_lu": 1.0, "true_peak_dbtp": -1.0}
SR = 44100
ENV_HOP = 16                   # frames per point of the kick envelope (0.36 ms)
TAP_DECIMATE = 4               # the decks' mono taps kept at 11025 Hz for correlation
LEVEL_FRAMES = 2048            # RMS frames for "audible" (46 ms)
AUDIBLE_DBFS = -40.0


def _specs(quick: bool) -> list:
    from prep.synth import TrackSpec

    # "sing" tracks start and end on a verse: their vocals are up where the mix points are.
    if quick:
        plain = [["intro", 8], ["chorus", 16], ["outro", 16]]
        sing = [["verse", 16], ["chorus", 16], ["verse", 16]]
        rows = [(122.0, 9, "minor", plain), (124.0, 4, "minor", sing), (126.0, 7, "major", sing)]
    else:
        plain = [["intro", 16], ["verse", 16], ["chorus", 16], ["breakdown", 8], ["chorus", 16], ["outro", 16]]
        sing = [["verse", 16], ["chorus", 16], ["breakdown", 8], ["chorus", 16], ["verse", 16]]
        rows = [(122.0, 9, "minor", plain), (124.0, 4, "minor", sing), (125.0, 7, "major", sing),
                (126.0, 0, "major", sing), (128.0, 2, "minor", plain), (127.0, 11, "minor", sing)]
    return [TrackSpec(bpm=bpm, tonic=tonic, mode=mode, structure=[list(s) for s in structure], style="house",
                      seed=700 + i, title=f"bench {i + 1}")
            for i, (bpm, tonic, mode, structure) in enumerate(rows)]


def _make_crate(folder: Path, quick: bool) -> dict:
    from prep.pipeline import prep_crate
    from prep.stems import STEM_NAMES, export_ni_stems
    from prep.synth import generate

    truth = {}
    for spec in _specs(quick):
        g = generate(spec)
        stems = np.stack([g.stems[name] for name in STEM_NAMES])
        export_ni_stems(folder / f"{spec.title}.stem.mp4", stems, g.mix)
        truth[spec.title] = g
    report = prep_crate(folder, workers=1, progress=False, separator=None, steps=[])
    if report.failed:
        raise RuntimeError(f"bench crate: {report.failed}")
    return truth


class _Recorder:
    """What the bench keeps of a render: kick envelopes, 11 kHz mono taps and RMS levels per deck."""

    def __init__(self, n_decks: int, solo: str | None):
        from scipy.signal import butter, sosfilt_zi

        self.full = solo is None
        self.kicks = solo == "drums"
        self.sos = butter(4, 150.0, "low", fs=SR, output="sos")
        self.zi = [sosfilt_zi(self.sos) * 0.0 for _ in range(n_decks)]
        self.env = [[] for _ in range(n_decks)]
        self.taps = [[] for _ in range(n_decks)]
        self.power = [[] for _ in range(n_decks)]
        self._acc = np.zeros(n_decks)
        self._acc_n = 0
        self.master: list[np.ndarray] = []
        self.overlaps: list[tuple[int, np.ndarray]] = []     # (first frame, (decks, frames) drums)
        self.clock: list[int] = []                           # per block: the engine's clock after it,
        self.heard: list[list[float]] = []                   # each deck's audible position (frames),
        self.playing: list[list[bool]] = []                  # and whether it plays

    def block(self, engine, n: int) -> None:
        from scipy.signal import sosfilt

        self.clock.append(engine.clock_frames)
        self.heard.append([d.position_frames for d in engine.decks])
        self.playing.append([d.playing for d in engine.decks])
        taps = engine.taps[:, :n].mean(axis=2)
        lows: list[np.ndarray] = []
        for d in range(taps.shape[0]):
            x = taps[d].astype(np.float64)
            if self.kicks:
                low, self.zi[d] = sosfilt(self.sos, x, zi=self.zi[d])
                self.env[d].append((low ** 2).reshape(-1, ENV_HOP).mean(axis=1).astype(np.float32))
                lows.append(x.astype(np.float32))
            if self.full:
                self.taps[d].append(x.reshape(-1, TAP_DECIMATE).mean(axis=1).astype(np.float32))
            self._acc[d] += float(np.dot(x, x))
        if self.kicks and all(np.abs(low).max() > 1e-4 for low in lows):
            # Both decks sound: keep their drums at full rate for the kick timing.
            self.overlaps.append((engine.clock_frames - n, np.stack(lows)))
        self._acc_n += n
        if self._acc_n >= LEVEL_FRAMES:
            for d in range(len(self.power)):
                self.power[d].append(self._acc[d] / self._acc_n)
            self._acc[:] = 0.0
            self._acc_n = 0

    def sink(self, block: np.ndarray) -> None:
        if self.full:
            self.master.append(block.copy())

    def level_db(self) -> np.ndarray:
        return 10.0 * np.log10(np.array(self.power) + 1e-12)


def _render(order, library, crate: Path, style: str, solo: str | None) -> tuple[dict, _Recorder, float]:
    from controllers.mixsession import MixSession, OfflinePort
    from engine.core import Engine

    engine = Engine(n_decks=2, deck_taps=True, stretcher="rubberband" if style == "rubberband" else "engine")
    recorder = _Recorder(2, solo)
    restyle = None
    if style == "crossfade":
        fade = library["crossfade"]
        restyle = lambda plan: replace(plan, preset=fade.with_bars(plan.preset.bars))  # noqa: E731

    class Port(OfflinePort):
        def send(self, message: dict) -> dict:
            reply = super().send(message)
            if solo and message.get("cmd") == "load" and reply.get("ok"):
                self.engine.send({"cmd": "solo", "deck": message["deck"], "stem": solo, "on": True})
            return reply

    notes: list[str] = []
    session = MixSession(order, library, crate, restyle=restyle, on_note=notes.append)
    port = Port(engine, recorder.sink, block_frames=512, on_block=recorder.block)
    started = time.process_time()
    report = session.run(port).to_dict()
    return report, recorder, time.process_time() - started


def _kick_onsets(env: np.ndarray, start_s: float, end_s: float, beat_s: float) -> np.ndarray:
    """Kick onsets (s) of one deck between two times: the strongest low-band peak of each beat (a kick on the
    beat outweighs a low tom or clap between), timed where its smoothed power rises through a quarter of it."""
    rate = SR / ENV_HOP
    lo, hi = int(start_s * rate), min(int(end_s * rate), len(env))
    if hi - lo < 10:
        return np.zeros(0)
    w = np.hanning(int(0.002 * rate) | 1)
    e = np.convolve(env[lo:hi], w / w.sum(), mode="same")
    if e.max() <= 0:
        return np.zeros(0)
    from scipy.signal import find_peaks

    peaks, _ = find_peaks(e, height=0.1 * np.percentile(e, 99), distance=int(0.75 * beat_s * rate))
    onsets = []
    for p in peaks:
        level = 0.25 * e[p]
        i = p
        while i > 0 and e[i - 1] >= level:
            i -= 1
        if i == 0:
            continue
        frac = (level - e[i - 1]) / max(e[i] - e[i - 1], 1e-20)
        onsets.append((lo + i - 1 + frac) / rate)
    return np.array(onsets)


def _overlap_signal(rec: _Recorder, deck: int, a: int, b: int) -> np.ndarray | None:
    """The stored drums of ``deck`` over output frames a..b (None when not all of it was kept)."""
    parts = [(f0, seg[deck]) for f0, seg in rec.overlaps if f0 + seg.shape[1] > a and f0 < b]
    if not parts or parts[0][0] > a or parts[-1][0] + parts[-1][1].shape[0] < b:
        return None
    f0 = parts[0][0]
    x = np.concatenate([p for _, p in parts])
    return x[a - f0:b - f0] if len(x) >= b - f0 else None


def _true_kick_time(rec: _Recorder, deck: int, rough_s: float, source: np.ndarray, kick_s: float) -> float | None:
    """The output time at which ``deck`` plays the true onset of the source kick at ``kick_s``: 100 ms of the
    source drums from 10 ms before that kick, matched (normalised cross-correlation) against the deck's drums
    within ±25 ms of the detected onset. Matching the very beat of the same track (its hats and claps too) is
    exact where a generic kick detector wanders by several ms between beats."""
    pre, span, search = int(0.010 * SR), int(0.100 * SR), int(0.025 * SR)
    k = int(round(kick_s * SR))
    template = source[k - pre:k - pre + span]
    if k - pre < 0 or len(template) < span:
        return None
    expected = int(round(rough_s * SR)) - int(_DETECTOR_LAG_S * SR)
    a = expected - pre - search
    x = _overlap_signal(rec, deck, a, a + 2 * search + span)
    if x is None:
        return None
    c = np.correlate(x, template, mode="valid")
    energy = np.sqrt(np.convolve(x.astype(np.float64) ** 2, np.ones(span), mode="valid")) + 1e-12
    return (a + int(np.argmax(c / energy)) + pre) / SR


_DETECTOR_LAG_S = 0.030
"""How late :func:`_kick_onsets` finds a kick (its low band rises slowly): measured on the source, 26-38 ms."""


def _heard_at(rec: _Recorder, deck: int, t_s: float) -> float:
    """Where in its track ``deck`` was audible at output time ``t_s`` (source seconds), from the engine's
    playhead log (one entry a block; the kick matching below refines to the sample)."""
    clock = np.asarray(rec.clock) / SR
    i = min(int(np.searchsorted(clock, t_s)), len(clock) - 1)
    return rec.heard[i][deck] / SR - (clock[i] - t_s)


def _beat_errors(rec: _Recorder, report: dict, truth: dict) -> list[float]:
    env = [np.concatenate(e) for e in rec.env]
    errors = []
    for i, t in enumerate(report["transitions"]):
        if t["cut"] or t["start_s"] is None or t["end_s"] is None:
            continue
        out_t, in_t = report["tracks"][i], report["tracks"][i + 1]
        beat_s = 60.0 / max(t["start_bpm"], t["end_bpm"])
        a = _kick_onsets(env[out_t["deck"]], t["start_s"], t["end_s"], beat_s)
        b = _kick_onsets(env[in_t["deck"]], t["start_s"], t["end_s"], beat_s)
        if len(a) == 0:
            continue
        for x in b:
            y = a[np.argmin(np.abs(a - x))]
            if abs(y - x) > 0.06:              # not a beat both decks play
                continue
            times = []
            for track, rough in ((out_t, y), (in_t, x)):
                g = truth[track["title"]]
                kicks = np.array([h for h, kind in g.truth.drum_hits if kind == "kick"])
                # Which of its kicks this is: the one nearest where the deck's playhead was.
                kick_s = kicks[np.argmin(np.abs(kicks - _heard_at(rec, track["deck"], rough - _DETECTOR_LAG_S)))]
                times.append(_true_kick_time(rec, track["deck"], rough, g.stems["drums"].mean(axis=1), kick_s))
            if None not in times:
                errors.append(1000.0 * abs(times[0] - times[1]))
    return errors


def _both_audible_s(levels_db: np.ndarray, windows: list | None = None) -> float:
    both = (levels_db[0] > AUDIBLE_DBFS) & (levels_db[1] > AUDIBLE_DBFS)
    frame_s = LEVEL_FRAMES / SR
    if windows is None:
        return float(both.sum() * frame_s)
    total = 0.0
    for a, b in windows:
        total += float(both[int(a / frame_s):int(b / frame_s) + 1].sum() * frame_s)
    return total


def _phrase_checks(rec: _Recorder, report: dict, truth: dict) -> list[bool]:
    """For every transition: is the incoming track at a true phrase start when it starts playing, and is the
    outgoing one? Positions from the engine's audible playhead (its own measure of what plays, which the sync
    tests check against the audio), phrases from the generator (every 8 bars)."""
    playing = np.asarray(rec.playing)
    clock = np.asarray(rec.clock) / SR
    checks = []
    for i, t in enumerate(report["transitions"]):
        if t["start_s"] is None:
            continue
        out_t, in_t = report["tracks"][i], report["tracks"][i + 1]
        near = np.nonzero((clock > t["start_s"] - 2.0) & playing[:, in_t["deck"]])[0]
        if len(near) == 0:
            checks.append(False)
            continue
        b = near[0]                                          # the block in which it started
        for track in (out_t, in_t):
            g = truth[track["title"]]
            at = rec.heard[b][track["deck"]] / SR
            if track is in_t:
                at -= (clock[b] - clock[b - 1]) if b > 0 else 0.0   # it started at the block's beginning
            phrases = np.asarray(g.truth.downbeats)[::8]
            checks.append(bool(np.min(np.abs(phrases - at)) < 0.25 * 60.0 / g.truth.bpm))
    return checks


def _loudness_steps(rec: _Recorder, report: dict) -> list[float]:
    from prep.loudness import integrated_loudness_lufs

    master = np.concatenate(rec.master)
    bounds = []
    for i, track in enumerate(report["tracks"]):
        start = 0.0 if i == 0 else report["transitions"][i - 1]["end_s"]
        nxt = report["transitions"][i]["start_s"] if i < len(report["transitions"]) else len(master) / SR - 2.0
        if start is None or nxt is None or nxt - start < 5.0:
            bounds.append(None)
            continue
        bounds.append(integrated_loudness_lufs(master[int(start * SR):int(nxt * SR)], SR))
    return [abs(b - a) for a, b in zip(bounds, bounds[1:]) if a is not None and b is not None]


def _measure(order, library, crate: Path, truth: dict, style: str) -> dict:
    from prep.loudness import true_peak_dbtp

    full, rec, cpu_s = _render(order, library, crate, style, None)
    drums, drum_rec, _ = _render(order, library, crate, style, "drums")
    bass, bass_rec, _ = _render(order, library, crate, style, "bass")
    vocals, vocal_rec, _ = _render(order, library, crate, style, "vocals")
    errors = _beat_errors(drum_rec, full, truth)
    safe = [(t["start_s"], t["end_s"]) for t in full["transitions"]
            if t["preset"] == "vocal-safe" and t["start_s"] is not None]
    steps = _loudness_steps(rec, full)
    phrases = _phrase_checks(rec, full, truth)
    master = np.concatenate(rec.master)
    return {
        "transitions": [{"out": t["out"], "in": t["in"], "preset": t["preset"], "bars": t["bars"],
                         "start_s": t["start_s"], "key": f"{t['out_key']}->{t['in_key_played']}",
                         "tempo": f"{t['start_bpm']:.1f}->{t['end_bpm']:.1f}"} for t in full["transitions"]],
        "mix_s": round(full["seconds"], 1),
        "realtime_factor": round(full["seconds"] / max(cpu_s, 1e-6), 1),
        "beat_error_ms": _stats(errors) | {"kicks": len(errors)},
        "both_bass_audible_s": round(_both_audible_s(bass_rec.level_db()), 2),
        "both_vocals_audible_s": round(_both_audible_s(vocal_rec.level_db()), 2),
        "both_vocals_in_vocal_safe_s": round(_both_audible_s(vocal_rec.level_db(), safe), 2) if safe else None,
        "vocal_safe_transitions": len(safe),
        "loudness_step_lu": _stats(steps, 2),
        "true_peak_dbtp": round(true_peak_dbtp(master, SR), 2),
        "phrase_aligned_share": round(float(np.mean(phrases)), 3) if phrases else None,
        "phrase_checks": len(phrases),
        "same_renders": all(r["transitions"] == full["transitions"] for r in (drums, bass, vocals)),
    }


def _stats(values: list[float], digits: int = 3) -> dict:
    if not values:
        return {"median": None, "p95": None, "max": None}
    v = np.asarray(values)
    return {"median": round(float(np.median(v)), digits), "p95": round(float(np.percentile(v, 95)), digits),
            "max": round(float(v.max()), digits)}


def bench_automix(quick: bool = False, stretcher: str | None = None) -> dict:
    """Render an automix of a generated crate with the planner's transitions and with plain crossfades at the same
    points; measure both on the audio (see the module docstring). ``stretcher="rubberband"`` adds a third
    render of the planner's transitions with Rubber Band R3 stretching the decks (``rubberband``)."""
    from controllers.automix import order_tracks
    from controllers.mixsession import load_crate_tracks
    from engine.transitions import load_library

    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="ate-bench-automix-") as tmp:
        crate = Path(tmp) / "crate"
        crate.mkdir()
        truth = _make_crate(crate, quick)
        tracks, notes = load_crate_tracks(crate)
        order = order_tracks(tracks)
        library = load_library()
        styles = ("ate", "crossfade") + (("rubberband",) if stretcher == "rubberband" else ())
        results = {style: _measure(order, library, crate, truth, style) for style in styles}
    return {"benchmark": "automix", "quick": quick, "tracks": len(order), "order": [t.title for t in order],
            "notes": notes, "targets": TARGETS, **results, "wall_s": round(time.monotonic() - started, 1)}
