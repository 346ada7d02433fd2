"""Automix sessions: a route through a crate, played transition after transition by the engine.

One :class:`MixSession` drives an engine through a *port*, which is either the
engine in this process rendering to a file (:class:`OfflinePort`, faster than
real time, the same code as live) or a running engine over the ZeroMQ protocol
(:class:`LivePort`, so the TUI shows the mix and a DJ can take over). Per
track, the session

1. loads it on the free deck (the engine reads it off the audio thread; a
   track that fails to load is skipped with a note), puts the deck at rest
   (every parameter at its default, keylock on, key shift from the plan);
2. plans the transition from the playing track (:func:`controllers.automix.plan_transition`);
3. sends the tempo path (the leader's pitch ramp) and one ``transition``
   command, which the engine expands into the preset's timed, tagged
   commands (engine/transitions.py);
4. waits for the transition to end, ejects the old track (memory stays flat:
   at most two tracks are loaded) and goes on with the next.

All commands carry the tag ``automix``: ``{"cmd": "cancel", "tag": "automix"}``
(the TUI's ``A`` key) stops everything the session scheduled, the session
notices (the engine's state counts cancels) and ends, and the DJ plays on.
"""

from __future__ import annotations

import json
import math
import sys
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from controllers.automix import (DRIFT_BARS, MIN_SOLO_BARS, TrackInfo, TransitionPlan, order_tracks,
                                 plan_transition)
from engine.commands import DECK_PARAMS
from engine.transitions import Transition, touched_params

__all__ = ["MixSession", "SessionReport", "OfflinePort", "LivePort", "TAG", "write_cue_sheet", "FADE_OUT_BARS",
           "load_crate_tracks", "render_mix"]

TAG = "automix"
FADE_OUT_BARS = 8
AUTO_EQ_STRENGTH = 0.7
"""How much of the tonal match (:func:`prep.tonal.propose_eq`) the incoming deck's EQ gets during a transition."""
AUTO_EQ_RELEASE_BARS = 16
"""Bars over which the incoming deck's matching EQ goes back to flat after the transition."""
EQ_PARAMS = ("eq_low_db", "eq_mid_db", "eq_high_db")
"""The last track fades out over this many bars from a phrase start."""
_PITCH_RANGE = 0.16
_CUT_PITCH_RANGE = 0.5


def load_crate_tracks(crate_dir: str | Path) -> tuple[list[TrackInfo], list[str]]:
    """Every analysed track of a crate as :class:`TrackInfo`, and one note per track that cannot be mixed."""
    from prep.crate import Crate, default_db_path

    tracks, notes = [], []
    with Crate(default_db_path(Path(crate_dir)), readonly=True, root=crate_dir) as crate:
        for row in crate.list_tracks("title"):
            analysis = crate.get_analysis(row["content_hash"])
            if analysis is None:
                notes.append(f"{row['title']}: not analysed; run ate prep")
                continue
            try:
                tracks.append(TrackInfo.from_analysis(row, analysis))
            except (KeyError, ValueError) as err:
                notes.append(f"{row['title']}: cannot be mixed ({err})")
    return tracks, notes


@dataclass
class SessionReport:
    """What a session played: ``tracks`` (when each came in), ``transitions`` (the plan and the measured times),
    ``notes`` (skipped tracks, a DJ taking over), ``seconds`` played."""

    tracks: list = field(default_factory=list)
    transitions: list = field(default_factory=list)
    notes: list = field(default_factory=list)
    seconds: float = 0.0
    stopped_by: str = ""

    def to_dict(self) -> dict:
        return {"seconds": round(self.seconds, 3), "tracks": self.tracks, "transitions": self.transitions,
                "notes": self.notes, "stopped_by": self.stopped_by}


class OfflinePort:
    """The engine in this process, rendered block by block into ``sink`` (a file writer, an array).

    Parameters
    ----------
    engine : engine.core.Engine
    sink : callable
        ``sink(block)`` gets each rendered float32 ``(frames, channels)`` block (a view: copy to keep it).
    block_frames : int
        Frames per engine block.
    on_block : callable, optional
        ``on_block(engine, n_frames)`` after each block (measurements read ``engine.taps`` there).
    progress : callable, optional
        ``progress(seconds_rendered)``, now and then.
    """

    live = False

    def __init__(self, engine, sink: Callable[[np.ndarray], None], block_frames: int = 512,
                 on_block: Callable | None = None, progress: Callable[[float], None] | None = None):
        self.engine = engine
        self.sink = sink
        self.block_frames = min(int(block_frames), engine.max_block_frames)
        self.on_block = on_block
        self.progress = progress
        self.sample_rate = engine.sample_rate
        self._out = np.zeros((self.block_frames, engine.channels), np.float32)
        self._log_frames: list[int] = [0]
        self._log_beats: list[float] = [0.0]

    def send(self, message: dict) -> dict:
        return self.engine.send(message)

    def state(self) -> dict:
        return self.engine.state()

    @property
    def seconds(self) -> float:
        return self.engine.clock_frames / self.sample_rate

    def _block(self) -> None:
        e = self.engine
        e.process(self._out)
        self.sink(self._out)
        if self.on_block is not None:
            self.on_block(e, self.block_frames)
        e.collect_garbage()
        self._log_frames.append(e.clock_frames)
        self._log_beats.append(e.master_beat)
        if self.progress is not None and len(self._log_frames) % 200 == 0:
            self.progress(self.seconds)

    def run_until_beat(self, beat: float) -> bool:
        """Render until the master clock reaches ``beat``; True (an offline session is never taken over)."""
        while self.engine.master_beat < beat:
            self._block()
        return True

    def run_seconds(self, seconds: float) -> bool:
        end = self.engine.clock_frames + int(seconds * self.sample_rate)
        while self.engine.clock_frames < end:
            self._block()
        return True

    def seconds_at_beat(self, beat: float) -> float | None:
        """When the master clock passed ``beat``, seconds (None: not yet)."""
        return _interp_time(self._log_beats, self._log_frames, beat, self.sample_rate)


def _interp_time(beats: list[float], frames: list[int], beat: float, sample_rate: int) -> float | None:
    if not beats or beat > beats[-1]:
        return None
    i = int(np.searchsorted(beats, beat))
    if i == 0:
        return frames[0] / sample_rate
    b0, b1, f0, f1 = beats[i - 1], beats[i], frames[i - 1], frames[i]
    f = f0 + (f1 - f0) * ((beat - b0) / (b1 - b0) if b1 > b0 else 0.0)
    return f / sample_rate


class LivePort:
    """A running engine (``ate engine`` / ``ate live``) over the protocol.

    Parameters
    ----------
    client : controllers.client.EngineClient
    poll_s : float
        How often the session looks at the engine's state while it waits, seconds.
    stop : callable, optional
        ``stop() -> bool``: end the session when true (Ctrl-C).
    """

    live = True

    def __init__(self, client, poll_s: float = 0.1, stop: Callable[[], bool] | None = None):
        self.client = client
        self.poll_s = poll_s
        self.stop = stop or (lambda: False)
        self.sample_rate = 44100
        first = self.state()
        self._cancels0 = (first.get("cancels") or {}).get(TAG, 0)
        self._log_frames: list[int] = [first["clock_frames"]]
        self._log_beats: list[float] = [first["master_beat"]]
        self.taken_over = False

    def send(self, message: dict) -> dict:
        return self.client.request(message, timeout_s=120.0 if message.get("cmd") == "load" else 10.0)

    def state(self) -> dict:
        return self.client.request({"request": "state"}, timeout_s=10.0)["state"]

    @property
    def seconds(self) -> float:
        return self._log_frames[-1] / self.sample_rate

    def _look(self) -> dict:
        st = self.state()
        if st["master_beat"] >= self._log_beats[-1]:
            self._log_frames.append(st["clock_frames"])
            self._log_beats.append(st["master_beat"])
        if (st.get("cancels") or {}).get(TAG, 0) > self._cancels0:
            self.taken_over = True
        return st

    def run_until_beat(self, beat: float) -> bool:
        """Wait until the engine's master clock reaches ``beat``; False when a DJ took over or ``stop()``."""
        while True:
            st = self._look()
            if self.taken_over or self.stop():
                return False
            if st["master_beat"] >= beat:
                return True
            spb = 60.0 / max(st["master_bpm"], 1.0)
            time.sleep(min(self.poll_s, max((beat - st["master_beat"]) * spb, 0.005)))

    def run_seconds(self, seconds: float) -> bool:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            self._look()
            if self.taken_over or self.stop():
                return False
            time.sleep(min(self.poll_s, max(end - time.monotonic(), 0.0)))
        return True

    def seconds_at_beat(self, beat: float) -> float | None:
        return _interp_time(self._log_beats, self._log_frames, beat, self.sample_rate)


@dataclass
class _Playing:
    track: TrackInfo
    deck: int
    offset_beats: float       # the track's beat index minus the master beat
    camelot: str              # as played (after a key shift)
    start_beat: float         # master beat at which it came in

    def beat_of(self, master_beat: float) -> float:
        return master_beat + self.offset_beats


class MixSession:
    """Play ``order`` as one continuous mix (see the module docstring).

    Parameters
    ----------
    order : list of TrackInfo
        The route (:func:`controllers.automix.order_tracks`).
    library : dict
        Transition presets by name (:func:`engine.transitions.load_library`).
    crate_dir : str or Path
        Where the tracks are (the engine loads them by content hash from this crate).
    decks : (int, int)
        The two engine decks the session alternates between.
    tempo : str
        Tempo policy (:data:`controllers.automix.TEMPO_POLICIES`).
    duration_s : float, optional
        Stop after about this long (the last track fades out on a phrase); the route repeats (recent tracks
        last) when the crate is shorter. Default: play the route once.
    transition : str, optional
        Use this preset for every transition (default: the planner's choice).
    energy : str
        Energy curve for repeated routes.
    on_note : callable, optional
        Gets each note as it happens (default: stderr).
    restyle : callable, optional
        ``restyle(plan) -> plan`` changes each planned transition before it plays (``ate bench automix`` plays
        a plain crossfade at the very points the planner chose).
    """

    def __init__(self, order: list[TrackInfo], library: dict[str, Transition], crate_dir: str | Path,
                 decks: tuple[int, int] = (0, 1), tempo: str = "drift", duration_s: float | None = None,
                 transition: str | None = None, energy: str = "steady",
                 on_note: Callable[[str], None] | None = None,
                 restyle: Callable[[TransitionPlan], TransitionPlan] | None = None, auto_eq: bool = True):
        if not order:
            raise ValueError("automix: no tracks to play")
        self.order = list(order)
        self.library = library
        self.crate_dir = str(crate_dir)
        self.decks = decks
        self.tempo = tempo
        self.duration_s = duration_s
        self.transition = transition
        self.energy = energy
        self.on_note = on_note or (lambda line: print(f"automix: {line}", file=sys.stderr))
        self.restyle = restyle
        self.auto_eq = auto_eq
        self._bands: dict[str, dict | None] = {}
        self.report = SessionReport()

    # ------------------------------------------------------------------ helpers

    def _note(self, line: str) -> None:
        self.report.notes.append(line)
        self.on_note(line)

    def _tracks(self) -> Iterable[TrackInfo]:
        queue = deque(self.order)
        played: list[str] = []
        while True:
            if not queue:
                if self.duration_s is None:
                    return
                recent = set(played[-min(3, len(self.order) - 1):]) if len(self.order) > 1 else set()
                rest = [t for t in self.order if t.content_hash not in recent]
                queue.extend(order_tracks(rest, self.energy) + [t for t in self.order if t.content_hash in recent])
            t = queue.popleft()
            played.append(t.content_hash)
            yield t

    def _send(self, port, message: dict) -> dict:
        reply = port.send(dict(message, tag=TAG))
        if not reply.get("ok"):
            raise RuntimeError(reply.get("error", "refused"))
        return reply

    def _load(self, port, deck: int, track: TrackInfo, key_shift: int = 0) -> bool:
        reply = port.send({"cmd": "load", "deck": deck, "track": track.content_hash, "crate": self.crate_dir,
                           "tag": TAG})
        if not reply.get("ok"):
            self._note(f"skipped {track.title}: {reply.get('error', 'did not load')}")
            return False
        # A clean deck: every knob at rest, keylock on (tempo moves must not move the key), the pitch range
        # wide enough for the planned tempo moves.
        for name, (_, _, default) in DECK_PARAMS.items():
            if name in ("stem", "pitch"):
                continue
            self._send(port, {"cmd": "set", "deck": deck, "param": name, "value": default})
        for stem in ("drums", "bass", "vocals", "other"):
            self._send(port, {"cmd": "set", "deck": deck, "param": f"stem.{stem}", "value": 1.0})
        self._send(port, {"cmd": "set", "deck": deck, "param": "key_shift", "value": float(key_shift)})
        self._send(port, {"cmd": "keylock", "deck": deck, "on": True})
        self._send(port, {"cmd": "pitch_range", "deck": deck, "range": _PITCH_RANGE})
        self._send(port, {"cmd": "set", "deck": deck, "param": "pitch", "value": 0.0})
        port.run_seconds(0.05)          # the engine puts the track on the deck at its next block
        return True

    def _track_bands(self, content_hash: str) -> dict | None:
        """A track's stored tonal balances (the prep step ``tonal``), None when it has none; read once."""
        if content_hash not in self._bands:
            from prep.crate import Crate, default_db_path
            from prep.tonal import track_bands

            with Crate(default_db_path(Path(self.crate_dir)), readonly=True) as crate:
                self._bands[content_hash] = track_bands(crate, content_hash)
        return self._bands[content_hash]

    def _matching_eq(self, out: TrackInfo, inc: TrackInfo, preset: Transition) -> dict[str, float]:
        """EQ for the incoming deck that matches its tonal balance to the outgoing track's, for the bands the
        preset leaves alone on both decks (its own EQ curves win); {} without tonal data or with auto-EQ off."""
        if not self.auto_eq:
            return {}
        a, b = self._track_bands(out.content_hash), self._track_bands(inc.content_hash)
        if a is None or b is None:
            return {}
        from prep.tonal import propose_eq

        try:
            eq = propose_eq(a, b, strength=AUTO_EQ_STRENGTH)
        except ValueError as err:
            self._note(f"no auto-EQ for {inc.title}: {err}")
            return {}
        moved = set(touched_params(preset))         # the preset sets these on the incoming deck itself
        return {p: v for p, v in eq.items() if p not in moved and v != 0.0}

    def _offset(self, port, deck: int) -> float:
        st = port.state()
        return float(st["decks"][deck]["beat"] - st["master_beat"])

    # ------------------------------------------------------------------ the session

    def run(self, port) -> SessionReport:
        """Play the session through ``port``; returns the report (also kept in :attr:`report`)."""
        tracks = iter(self._tracks())
        cur = self._start(port, tracks)
        while cur is not None:
            if self.duration_s is not None and port.seconds >= self.duration_s:
                self._finish(port, cur, at_once=True)
                break
            nxt = self._next(port, tracks, cur)
            if nxt is None:
                self._finish(port, cur, at_once=self.duration_s is not None)
                break
            cur = nxt
            if cur is False:
                break
        self.report.seconds = port.seconds
        return self.report

    def _start(self, port, tracks) -> _Playing | None:
        deck = self.decks[0]
        for track in tracks:
            if not self._load(port, deck, track):
                continue
            self._send(port, {"cmd": "quantize", "on": True})
            self._send(port, {"cmd": "sync", "deck": deck, "on": True})
            self._send(port, {"cmd": "seek", "deck": deck, "beat": float(track.mix_in_beat)})
            self._send(port, {"cmd": "play", "deck": deck})
            port.run_seconds(0.05)
            offset = float(round(self._offset(port, deck)))
            start = track.mix_in_beat - offset
            self.report.tracks.append({"title": track.title, "artist": track.artist, "hash": track.content_hash,
                                       "deck": deck, "start_s": round(port.seconds_at_beat(start) or 0.0, 3),
                                       "key_shift": 0, "camelot": track.camelot, "bpm": round(track.bpm, 3)})
            return _Playing(track, deck, offset, track.camelot, start)
        self._note("no track of the route could be loaded")
        return None

    def _next(self, port, tracks, cur: _Playing):
        """Load the next track, play the transition to it; the new :class:`_Playing`, None at the route's end,
        False when a DJ took over."""
        deck = self.decks[1] if cur.deck == self.decks[0] else self.decks[0]
        st = port.state()
        now_beat = cur.beat_of(st["master_beat"])
        after = int(math.ceil(max(now_beat + 2 * cur.track.beats_per_bar,
                                  cur.track.mix_in_beat + MIN_SOLO_BARS * cur.track.beats_per_bar
                                  if not self.report.transitions else now_beat + 2 * cur.track.beats_per_bar)))
        for track in tracks:
            plan = plan_transition(cur.track, track, self.library, after_beat=after, a_camelot=cur.camelot,
                                   master_bpm=st["master_bpm"], tempo=self.tempo, preset=self.transition)
            if plan is None:
                self._note(f"{cur.track.title} has no room left for a transition; it plays out")
                return None
            if self.duration_s is not None:
                tail = (plan.preset.bars + plan.preset.tail_bars) * track.beats_per_bar
                end_beats = plan.out_beat - now_beat + tail
                if port.seconds + end_beats * 60.0 / max(st["master_bpm"], 1.0) > self.duration_s:
                    return None            # the time is up before this transition would end
            if self.restyle is not None:
                plan = self.restyle(plan)
            if not self._load(port, deck, track, plan.key_shift):
                continue
            return self._play_transition(port, cur, deck, plan)
        return None

    def _play_transition(self, port, cur: _Playing, deck: int, plan: TransitionPlan):
        t = plan.preset
        bpb = cur.track.beats_per_bar
        start = plan.out_beat - cur.offset_beats               # master beat of bar 0
        if plan.cut:
            self._send(port, {"cmd": "pitch_range", "deck": deck, "range": _CUT_PITCH_RANGE})
        elif plan.tempo_ramp_bars > 0 and abs(plan.end_bpm - plan.start_bpm) > 1e-6:
            target = plan.end_bpm / cur.track.bpm - 1.0
            self._send(port, {"cmd": "set", "deck": cur.deck, "param": "pitch", "value": target,
                              "ramp": {"beats": plan.tempo_ramp_bars * bpb}, "at": {"beat": start}})
        eq = self._matching_eq(cur.track, plan.in_track, t)
        for param, value in eq.items():
            self._send(port, {"cmd": "set", "deck": deck, "param": param, "value": value})
        reply = self._send(port, {"cmd": "transition", "from_deck": cur.deck, "to_deck": deck,
                                  "preset": t.name, "bars": t.bars, "out_beat": float(plan.out_beat),
                                  "in_beat": float(plan.in_beat)})
        handover = start + (t.swap_bar if t.swap_bar is not None else t.bars / 2.0) * bpb
        if plan.cut:
            # A cut changes tempo at the cut: the new leader plays at its own tempo from its first beat.
            self._send(port, {"cmd": "set", "deck": deck, "param": "pitch", "value": 0.0, "at": {"beat": handover}})
        elif self.tempo == "meet":
            self._send(port, {"cmd": "set", "deck": deck, "param": "pitch", "value": 0.0,
                              "ramp": {"beats": DRIFT_BARS * bpb}, "at": {"beat": reply["end_beat"]}})
        for param in eq:
            # Matched while the two play together; alone, the track slowly gets its own sound back.
            self._send(port, {"cmd": "set", "deck": deck, "param": param, "value": 0.0,
                              "ramp": {"beats": AUTO_EQ_RELEASE_BARS * bpb}, "at": {"beat": reply["end_beat"]}})
        done = port.run_until_beat(reply["end_beat"] + 1.0)
        entry = plan.to_dict()
        entry["auto_eq"] = eq
        entry.update({"start_beat": start, "start_s": _round(port.seconds_at_beat(start)),
                      "handover_s": _round(port.seconds_at_beat(handover)),
                      "end_s": _round(port.seconds_at_beat(reply["end_beat"]))})
        self.report.transitions.append(entry)
        self.report.tracks.append({"title": plan.in_track.title, "artist": plan.in_track.artist,
                                   "hash": plan.in_track.content_hash, "deck": deck,
                                   "start_s": entry["start_s"], "handover_s": entry["handover_s"],
                                   "key_shift": plan.key_shift, "camelot": plan.in_camelot,
                                   "bpm": round(plan.in_track.bpm, 3)})
        if not done:
            self.report.stopped_by = "a DJ took over" if getattr(port, "taken_over", False) else "stopped"
            self._note(f"{self.report.stopped_by}; the session ends, playback goes on")
            return False
        self._send(port, {"cmd": "eject", "deck": cur.deck})
        offset = float(round(self._offset(port, deck)))
        return _Playing(plan.in_track, deck, offset, plan.in_camelot or plan.in_track.camelot, start)

    def _finish(self, port, cur: _Playing, at_once: bool = False) -> None:
        """Fade the last track out over :data:`FADE_OUT_BARS` from a phrase start: its mix-out point, or the next
        phrase when the time is up (``at_once``)."""
        st = port.state()
        now = cur.beat_of(st["master_beat"])
        bpb = cur.track.beats_per_bar
        earliest = now + bpb if at_once else max(now + bpb, cur.track.mix_out_beat)
        phrases = [int(p) for p in cur.track.phrase_beats if p >= earliest]
        fade_beat = phrases[0] if phrases else int(math.ceil(now + bpb))
        fade_beat = min(fade_beat, max(int(now) + 1, cur.track.last_beat - FADE_OUT_BARS * bpb))
        start = fade_beat - cur.offset_beats
        end = start + FADE_OUT_BARS * bpb
        self._send(port, {"cmd": "set", "deck": cur.deck, "param": "volume", "value": 0.0,
                          "ramp": {"beats": FADE_OUT_BARS * bpb}, "at": {"beat": start}})
        self._send(port, {"cmd": "pause", "deck": cur.deck, "at": {"beat": end}})
        if port.run_until_beat(end + 1.0):
            port.run_seconds(0.5)


def _round(x: float | None) -> float | None:
    return None if x is None else round(x, 3)


def write_cue_sheet(path: str | Path, tracks: list[dict], audio_name: str, title: str = "ATE automix") -> None:
    """A ``.cue`` sheet of a session's ``tracks`` (:attr:`SessionReport.tracks`): one TRACK each, its INDEX where
    it takes over (the bass swap of its transition)."""
    def stamp(seconds: float) -> str:
        frames = int(round(max(seconds, 0.0) * 75))          # CD frames: 75 a second
        return f"{frames // 4500:02d}:{frames // 75 % 60:02d}:{frames % 75:02d}"

    def quoted(text: str) -> str:
        return '"' + str(text).replace('"', "'") + '"'

    lines = [f"TITLE {quoted(title)}", f"PERFORMER {quoted('ATE')}", f"FILE {quoted(audio_name)} WAVE"]
    for i, t in enumerate(tracks, 1):
        at = t.get("handover_s") if t.get("handover_s") is not None else t.get("start_s") or 0.0
        if i == 1:
            at = 0.0
        lines += [f"  TRACK {i:02d} AUDIO", f"    TITLE {quoted(t['title'])}"]
        if t.get("artist"):
            lines.append(f"    PERFORMER {quoted(t['artist'])}")
        lines.append(f"    INDEX 01 {stamp(at)}")
    Path(path).write_text("\n".join(lines) + "\n", encoding="utf-8")


def render_mix(order: list[TrackInfo], library: dict[str, Transition], crate_dir: str | Path, output: str | Path, *,
               duration_s: float | None = None, tempo: str = "drift", transition: str | None = None,
               energy: str = "steady", block_frames: int = 512, progress: bool = True,
               stretcher: str = "engine", auto_eq: bool = True) -> dict:
    """Render a session to ``output`` (WAV float or FLAC 24-bit) with ``.cue`` and ``.json`` beside it.

    ``stretcher="rubberband"`` redoes the same session (the plan does not depend on the stretcher) with
    Rubber Band R3 stretching the decks (:mod:`engine.rubberband`), at about a tenth of the speed.

    Faster than real time, streamed to the file block by block (memory does not grow with the length), with a
    progress bar (rate and ETA) on a terminal. Ctrl-C stops it: what was rendered is kept, ``stopped_by`` says
    ``"interrupted"``.

    Returns
    -------
    dict
        The session report (:meth:`SessionReport.to_dict`) with ``output``, ``cue``, ``report`` (paths),
        ``wall_s`` and ``realtime_factor``.

    Raises
    ------
    OSError
        The output cannot be written (the message names the file).
    """
    import soundfile as sf

    from engine.core import Engine
    from prep.progress import ProgressBar

    out = Path(output)
    if not out.parent.is_dir():
        raise OSError(f"{out}: cannot write (no folder {out.parent})")
    subtype = "FLOAT" if out.suffix.lower() == ".wav" else "PCM_24"
    estimate_s = duration_s or sum(t.beats_s[t.mix_out_beat] - t.beats_s[t.mix_in_beat] for t in order) + 30.0
    session = MixSession(order, library, crate_dir, tempo=tempo, duration_s=duration_s, transition=transition,
                         energy=energy, auto_eq=auto_eq)
    try:
        writer = sf.SoundFile(str(out), "w", 44100, 2, subtype=subtype)
    except (RuntimeError, OSError) as err:
        raise OSError(f"{out}: cannot write ({err})") from None
    started = time.monotonic()
    with writer, ProgressBar(f"automix {out.name}", enabled=None if progress else False) as bar:
        engine = Engine(n_decks=2, max_block_frames=max(512, block_frames), stretcher=stretcher)

        def show(seconds: float) -> None:
            wall = max(time.monotonic() - started, 1e-6)
            bar.fraction(seconds / estimate_s, rate=f"{seconds / wall:.0f}× realtime")

        port = OfflinePort(engine, writer.write, block_frames=block_frames, progress=show)
        try:
            report = session.run(port)
        except KeyboardInterrupt:
            report = session.report
            report.stopped_by = "interrupted"
            report.seconds = port.seconds
    report_path, cue_path = out.with_suffix(".json"), out.with_suffix(".cue")
    write_cue_sheet(cue_path, report.tracks, out.name)
    wall_s = time.monotonic() - started
    summary = dict(report.to_dict(), stretcher=stretcher, output=str(out), cue=str(cue_path),
                   report=str(report_path), wall_s=round(wall_s, 3),
                   realtime_factor=round(report.seconds / max(wall_s, 1e-6), 2))
    report_path.write_text(json.dumps(summary, indent=1), encoding="utf-8")
    return summary
