"""The engine: decks, mixer, sync clock, command schedule and automation.

:class:`Engine` is the one clock of ATE. :meth:`Engine.process` is called by
whatever consumes audio (the sounddevice callback of :mod:`engine.output`,
or :meth:`Engine.render` for files) and is the only code that touches the
decks; every other thread calls :meth:`Engine.send`, which validates a
command (:mod:`engine.commands`), does the slow part (loading a track) in the
caller's thread and appends the result to a queue that the audio thread drains
at the start of each block. Tracks that a load replaces are handed back
through a second queue and freed by :meth:`Engine.collect_garbage`, never in
the audio thread.

Time
----
``clock_frames`` counts output frames since the engine started. A command is
applied at the next block boundary, or at the frame (``{"frame": N}``,
``{"seconds": T}``) or master beat (``{"beat": B}``) it names: the block is
split there, so the command acts on that exact sample. Automation is a linear
ramp of a parameter from the value it has when the ramp starts; ramp ends
split blocks too, and gains ramp per sample, so a gain automation is exactly
piecewise linear whatever the block size. Gain changes without a ramp take
:data:`engine.deck.FADE_FRAMES` (2.9 ms) so that they never click. Play and
pause fade over the same length.

Sync
----
The engine keeps a master beat clock, ``master_beat`` (a float, growing by
``beats_per_frame`` every output frame). The *leader* is either a playing
synced deck, whose beat (from its grid) minus its offset *is* the master beat,
or the internal clock at ``master_bpm`` (when no deck leads; it carries on at
the last leader's tempo). A deck that starts leading while no synced deck
plays moves the clock to its own phase (its offset is a whole number too), so
that followers land on its beats; one that takes over from playing followers
joins their phase instead. Every synced deck has ``sync_offset_beats``, fixed
when it joins (a whole number, so it lands in phase) and moved only by its own
jumps; a follower's target position is its grid position of
``master_beat + offset``. Each block, the follower's ratio is its nominal
ratio (its beat length times the master tempo) plus a correction of the
position error over :data:`SYNC_RESPONSE_S`, clamped to
:data:`SYNC_MAX_CORRECTION`. The error is measured from the stretcher's
audible position, so nothing accumulates: drift is zero by construction, the
residual error is bounded by the control loop. A follower's pitch fader is
ignored while synced; nudging a follower moves its offset.
"""

from __future__ import annotations

import bisect
import collections
import itertools
import math
import threading
import time

import numba
import numpy as np

from engine.commands import (FX_SLOTS, GLOBAL_PARAMS, PITCH_RANGES, Command, CommandError, fx_param_slot, parse_at,
                             parse_command)
from engine.deck import FADE_FRAMES, STEM_INDEX, Deck
from engine.dsp import Limiter, crossfader_gains, db_to_gain, gain_ramp_block, limiter_block
from engine.grid import beat_at_many
from engine.track import DeckTrack, TrackLoadError, load_track
from engine.transitions import (DEFAULT_TRANSITION, TransitionError, compile_transition, load_library,
                                transition_end_beat)

__all__ = ["Engine", "SYNC_RESPONSE_S", "SYNC_MAX_CORRECTION"]

_JIT = dict(nogil=True, cache=True)

SYNC_RESPONSE_S = 0.25
"""Time constant of a follower's phase correction, seconds (well above the keylock's 35 ms ratio delay)."""
SYNC_MAX_CORRECTION = 0.03
"""Largest phase-correcting rate change of a synced deck, as a fraction of its nominal ratio."""
_GAIN_PARAMS = {"volume", "gain_db", "crossfader", "master_gain_db", "cue_mix", "headphone_gain_db"}


@numba.njit(**_JIT)
def add_faded(dst, src, n_frames, start_gain, end_gain):
    """``dst[:n] += src[:n] * g`` with ``g`` ramping linearly to ``end_gain`` (reached on the last frame);
    returns the peak of what was added."""
    peak = 0.0
    if start_gain == 0.0 and end_gain == 0.0:
        return peak
    step = (end_gain - start_gain) / n_frames
    for i in range(n_frames):
        g = start_gain + step * (i + 1)
        for c in range(dst.shape[1]):
            v = src[i, c] * g
            dst[i, c] += v
            if abs(v) > peak:
                peak = abs(v)
    return peak


@numba.njit(**_JIT)
def block_peak(block, n_frames):
    """Largest absolute sample of ``block[:n_frames]``."""
    peak = 0.0
    for i in range(n_frames):
        for c in range(block.shape[1]):
            if abs(block[i, c]) > peak:
                peak = abs(block[i, c])
    return peak


@numba.njit(**_JIT)
def mix_decks(blocks, n_frames, fader_from, fader_to, pfl, mix, cue, meters, taps, tap_offset, master_from, master_to):
    """The mixer's block, in one kernel call: the decks' blocks into the master bus ``mix`` and the cue bus ``cue``.

    ``blocks`` is float32 ``(n_decks, frames, 2)``; deck ``d`` is added post-fader with a gain ramping from
    ``fader_from[d]`` to ``fader_to[d]`` (then ``fader_from`` takes the new gains), and at unity into
    ``cue`` when ``pfl[d]``. ``meters[d]`` gets the peak deck ``d`` added to the master; with ``taps``
    (``(n_decks, frames, 2)``, or empty) what it added is also kept in ``taps[d, tap_offset:]``. Then the
    master gain ramps from ``master_from`` to ``master_to`` over ``mix``.
    """
    mix[:n_frames] = 0.0
    cue[:n_frames] = 0.0
    for d in range(blocks.shape[0]):
        block = blocks[d]
        meters[d] = add_faded(mix, block, n_frames, fader_from[d], fader_to[d])
        if taps.shape[0] > 0:
            tap = taps[d, tap_offset:tap_offset + n_frames]
            tap[:] = 0.0
            add_faded(tap, block, n_frames, fader_from[d], fader_to[d])
        if pfl[d]:
            add_faded(cue, block, n_frames, 1.0, 1.0)
        fader_from[d] = fader_to[d]
    gain_ramp_block(mix, n_frames, master_from, master_to)


@numba.njit(**_JIT)
def limit_into(bus, n_frames, limiter, out, out_offset, out_column):
    """Limit ``bus[:n_frames]`` in place (``limiter`` is :attr:`Limiter.state`), copy it into
    ``out[out_offset:, out_column:out_column + 2]``; returns its peak."""
    limiter_block(bus, n_frames, *limiter)
    out[out_offset:out_offset + n_frames, out_column:out_column + 2] = bus[:n_frames]
    return block_peak(bus, n_frames)


STRETCHERS = ("engine", "rubberband")
"""What stretches the decks: the realtime keylock, or Rubber Band R3 for offline renders."""

STATE_TRIES = 200
"""Attempts at a consistent :meth:`Engine.state` (a sub-block takes well under a millisecond)."""


class Engine:
    """Four decks (configurable), a mixer with crossfader, master limiter and cue bus.

    Parameters
    ----------
    n_decks : int
        Number of decks.
    sample_rate : int
        Output sample rate, Hz (tracks are prepared at 44100).
    channels : int
        2 (master) or 4 (master on 1-2, headphone cue on 3-4).
    max_block_frames : int
        Largest block processed at once (512); :meth:`process` splits longer requests. The
        stretchers' staging grows with it, and with it the cost of a restart (seek, play, loop set).
    loader : callable, optional
        ``loader(track, crate) -> DeckTrack`` for ``load`` commands (default:
        :func:`engine.track.load_track`).
    deck_taps : bool
        Keep each deck's post-fader output of the last :meth:`process` call in :attr:`taps`
        (float32 ``(n_decks, max_block_frames, 2)``; valid for calls of at most ``max_block_frames``):
        what each deck adds to the master before the limiter, for measurements (``ate bench automix``).
    stretcher : str
        ``"engine"`` (the realtime keylock) or ``"rubberband"``: Rubber Band R3 stretches the decks
        (:mod:`engine.rubberband`), for offline renders at the highest quality. It allocates and calls
        Python per block, so a live output refuses such an engine.

    Attributes
    ----------
    clock_frames : int
        Output frames rendered since the start.
    master_beat : float
        The sync clock's beat count at ``clock_frames``.
    decks : list of Deck
        Owned by the audio thread; read them only for display.
    """

    def __init__(self, n_decks: int = 4, sample_rate: int = 44100, channels: int = 2, max_block_frames: int = 512,
                 loader=None, deck_taps: bool = False, stretcher: str = "engine"):
        if channels not in (2, 4):
            raise ValueError(f"engine: channels must be 2 or 4, got {channels}")
        if stretcher not in STRETCHERS:
            raise ValueError(f"engine: stretcher must be one of {', '.join(STRETCHERS)}, got {stretcher!r}")
        if stretcher == "rubberband":
            from engine.rubberband import available

            why = available()
            if why:
                raise ValueError(f"engine: the rubberband stretcher cannot be used: {why}")
        self.stretcher = stretcher
        self.n_decks = int(n_decks)
        self.sample_rate = int(sample_rate)
        self.channels = int(channels)
        self.max_block_frames = int(max_block_frames)
        # The decks' pre-fader blocks side by side, so the mixer takes them in one kernel call.
        self._blocks = np.zeros((self.n_decks, max_block_frames, 2), np.float32)
        self.decks = [Deck(i, sample_rate, max_block_frames, stretcher, block=self._blocks[i])
                      for i in range(self.n_decks)]
        self._fx_sent = [[""] * FX_SLOTS for _ in range(self.n_decks)]   # the effect last sent to each slot
        self.limiter = Limiter(sample_rate)
        self.cue_limiter = Limiter(sample_rate)
        self._limiter_states = (self.limiter.state, self.cue_limiter.state)   # built once: no tuple per block
        self.params = {name: spec[2] for name, spec in GLOBAL_PARAMS.items()}
        self.crossfader_curve = "power"
        self.quantize = True
        self.clock_frames = 0
        self.master_beat = 0.0
        self.beats_per_frame = self.params["master_bpm"] / 60.0 / sample_rate
        self.leader = -1
        self.meters = np.zeros(self.n_decks + 2)       # post-fader deck peaks, master, headphones
        self._mix = np.zeros((max_block_frames, 2), np.float32)
        self._cue = np.zeros((max_block_frames, 2), np.float32)
        self._out = np.zeros((max_block_frames, self.channels), np.float32)
        self.taps = np.zeros((self.n_decks, max_block_frames, 2), np.float32) if deck_taps else None
        self._taps = self.taps if deck_taps else np.zeros((0, 0, 2), np.float32)   # what the mixer kernel gets
        self._fader_applied = np.zeros(self.n_decks)
        self._fader_next = np.zeros(self.n_decks)
        self._pfl = np.zeros(self.n_decks, np.bool_)     # the decks' pfl switches as the mixer kernel reads them
        self._leads = [[-1.0, deck] for deck in self.decks]   # [vocoder lead, deck], reused every block
        self._master_applied = 1.0
        self._hp_applied = (0.0, 1.0)
        self._queue: collections.deque = collections.deque()
        self._garbage: collections.deque = collections.deque()
        for deck in self.decks:
            deck.garbage = self._garbage       # replaced effects come back through it too
        self._frame_events: list = []      # (frame, seq, Command), sorted
        self._beat_events: list = []       # (beat, seq, Command), sorted
        self._ramps: dict = {}             # (deck, param) -> [start_frame, end_frame, start_value, end_value]
        self._ramp_tags: dict = {}         # (deck, param) -> the tag of the command that started its ramp
        self._seq = itertools.count()
        self._loader = loader or load_track
        self._load_lock = threading.Lock()
        self._handlers = {name[5:]: getattr(self, name) for name in dir(self) if name.startswith("_cmd_")}
        self.commands_applied = 0
        self.render_seq = 0                # odd while a sub-block renders (see state())
        self._transitions: dict | None = None
        self.cancels: dict[str, int] = {}      # tag -> cancels applied (an automation sees it was stopped)

    # ================================================================== control side (any thread)

    def send(self, message: dict) -> dict:
        """Validate and queue one command; returns the reply (``{"ok": true}`` or ``{"ok": false, "error"}``).

        ``load`` reads the track here, in the caller's thread, before queueing; ``fx`` builds its effect here.
        """
        try:
            cmd = parse_command(message, self.n_decks, self.sample_rate)
        except CommandError as err:
            return _reply(message, False, str(err))
        if cmd.name == "transition":
            return self._send_transition(cmd, message)
        if cmd.name in ("fx", "set"):
            try:
                cmd = self._prepare_fx(cmd)
            except CommandError as err:
                return _reply(message, False, str(err))
        if cmd.name == "load":
            try:
                with self._load_lock:
                    track = self._loader(cmd.args["track"], cmd.args.get("crate"))
            except TrackLoadError as err:
                return _reply(message, False, str(err))
            cmd = Command(cmd.name, cmd.deck, {"track": track}, cmd.at_kind, cmd.at_value, tag=cmd.tag)
            self._queue.append(cmd)
            self.collect_garbage()
            return _reply(message, True, track=track.summary())
        self._queue.append(cmd)
        return _reply(message, True)

    def transitions(self) -> dict:
        """The transition presets by name (read from ``presets/transitions`` on first use, in the caller's thread)."""
        if self._transitions is None:
            self._transitions = load_library()
        return self._transitions

    def _send_transition(self, cmd: Command, message: dict) -> dict:
        """Expand a ``transition`` into the timed commands of its preset (docs/automix.md) and queue them all.

        Bar 0 is the outgoing deck's next downbeat (``start = "bar"``) or phrase start (``"phrase"``, the
        default) at least a beat ahead, or its beat ``out_beat``; the incoming deck starts there on its beat
        ``in_beat`` (default: the downbeat at or after where it is cued), synced. Nothing is queued unless
        every command is valid.
        """
        a = cmd.args
        inn = self.decks[a["to_deck"]]
        if "from_deck" in a:
            out = self.decks[a["from_deck"]]
        else:
            playing = [d for d in self.decks if d.playing and d.loaded and d is not inn]
            if not playing:
                return _reply(message, False, f"transition: no deck is playing to mix into deck {inn.index}")
            out = next((d for d in playing if d.index == self.leader), playing[0])
        try:
            library = self.transitions()
        except TransitionError as err:
            return _reply(message, False, f"transition: {err}")
        name = a.get("preset", DEFAULT_TRANSITION)
        if name not in library:
            return _reply(message, False, f"transition: unknown preset {name!r}; known: {', '.join(sorted(library))}")
        if not (out.loaded and out.playing):
            return _reply(message, False, f"transition: deck {out.index} must be playing")
        if not inn.loaded or inn.playing:
            return _reply(message, False, f"transition: deck {inn.index} must hold a track, stopped")
        t = library[name].with_bars(a["bars"]) if "bars" in a else library[name]
        downbeats = beat_at_many(out.track.beats_frames, out.track.downbeats_frames)
        bpb = int(round(float(np.median(np.diff(downbeats))))) if len(downbeats) > 1 else 4
        now = out.beat()
        if "out_beat" in a:
            start = a["out_beat"]
            if start < now + 0.25:
                return _reply(message, False, f"transition: out_beat {start:g} is not ahead of deck {out.index} "
                                              f"(it is at beat {now:.2f})")
        else:
            marks = downbeats
            if a.get("start", "phrase") == "phrase":
                phrases = beat_at_many(out.track.beats_frames, out.track.phrases_frames)
                marks = phrases if len(phrases) else downbeats[::8]
            ahead = marks[marks >= now + 1.0]
            start = float(round(ahead[0])) if len(ahead) else float(math.ceil(now + 1.0))
        if "in_beat" in a:
            in_beat = a["in_beat"]
        else:
            cued = inn.beat()
            in_downbeats = beat_at_many(inn.track.beats_frames, inn.track.downbeats_frames)
            later = in_downbeats[in_downbeats >= cued - 0.5]
            in_beat = float(round(later[0])) if len(later) else float(round(cued))
        tag = cmd.tag or "transition"
        join: list[Command] = []
        if out.synced:
            offset = out.sync_offset_beats
        else:
            # The transition is timed on the master clock, so the outgoing deck joins sync first, with the whole-beat
            # offset fixed here: where the audio thread applies it a block later, a phase near half a beat could
            # round the other way and move the transition by a beat.
            offset = float(round(now - self.master_beat))
            join = [Command("sync", out.index, {"on": True, "offset_beats": offset}, "now", 0.0, tag=tag)]
        start_beat = start - offset
        messages = [{"cmd": "sync", "deck": inn.index, "on": True, "tag": tag},
                    {"cmd": "seek", "deck": inn.index, "beat": in_beat, "tag": tag}]
        messages += compile_transition(t, out.index, inn.index, start_beat, bpb, tag=tag)
        try:
            parsed = [self._prepare_fx(parse_command(m, self.n_decks, self.sample_rate)) for m in messages]
        except CommandError as err:
            return _reply(message, False, f"transition {name}: {err}")
        self._queue.extend(join + parsed)
        return _reply(message, True, preset=t.name, bars=t.bars, from_deck=out.index, start_beat=start_beat,
                      out_beat=start, in_beat=in_beat, end_beat=transition_end_beat(t, start_beat, bpb),
                      beats_per_bar=bpb)

    def _prepare_fx(self, cmd: Command) -> Command:
        """The caller's-thread part of effect commands: ``fx`` builds the effect (allocates, compiles its kernel)
        into the command; a ``set`` of ``fx<slot>.<param>`` is checked against the effect last sent to that slot.
        Other commands pass unchanged. Raises CommandError (one line)."""
        if cmd.name == "fx":
            from engine.effects import FxUnit, PluginError, create_effect

            name, slot = cmd.args["effect"], cmd.args["slot"]
            unit = None
            if name:
                try:
                    unit = FxUnit(create_effect(name, self.sample_rate, self.max_block_frames), slot)
                except KeyError as err:
                    raise CommandError(f"fx: {err.args[0]}") from None
                except PluginError as err:
                    raise CommandError(f"fx: {err}") from None
            self._fx_sent[cmd.deck][slot] = name
            return Command(cmd.name, cmd.deck, {"slot": slot, "effect": name, "unit": unit}, cmd.at_kind,
                           cmd.at_value, tag=cmd.tag)
        if cmd.name == "set" and cmd.deck >= 0:
            param = cmd.args["param"]
            slot = fx_param_slot(param)
            if slot >= 0:
                from engine.effects import effect_class

                name = self._fx_sent[cmd.deck][slot]
                if not name:
                    raise CommandError(f"set {param}: deck {cmd.deck} has no effect in slot {slot} "
                                       f"(put one there with the fx command first)")
                specs = effect_class(name).params
                key = param.partition(".")[2]
                if key not in specs:
                    raise CommandError(f"set {param}: {name} has no parameter {key!r}; known: {', '.join(specs)}")
                spec, value = specs[key], cmd.args["value"]
                if not spec.low <= value <= spec.high:
                    unit = f" {spec.unit}" if spec.unit else ""
                    raise CommandError(f"set {param}: value must be within {spec.low:g}..{spec.high:g}{unit}, "
                                       f"got {value:g}")
        return cmd

    def load(self, deck: int, track: DeckTrack, at: dict | None = None) -> None:
        """Put an already loaded track on ``deck`` (in-process API: tests, automix)."""
        if not 0 <= deck < self.n_decks:
            raise CommandError(f"load: deck must be 0..{self.n_decks - 1}, got {deck}")
        at_kind, at_value = parse_at(at, self.sample_rate, "load.at")
        self._queue.append(Command("load", deck, {"track": track}, at_kind, at_value))
        self.collect_garbage()

    def collect_garbage(self) -> int:
        """Free tracks that loads replaced (outside the audio thread); returns how many."""
        n = 0
        while self._garbage:
            self._garbage.popleft()
            n += 1
        return n

    def state(self) -> dict:
        """A JSON-ready snapshot for display, consistent: all of it from one moment between sub-blocks.

        Read while the audio thread runs, a snapshot could mix decks from before and after one
        sub-block (a phase error of a block between two synced decks that is not in the audio). The
        audio thread bumps :attr:`render_seq` before and after each sub-block (odd while rendering);
        the snapshot is retaken until it was read within one even stretch. The audio thread never waits.
        """
        for _ in range(STATE_TRIES):
            seq = self.render_seq
            if seq & 1:
                time.sleep(0.0002)
                continue
            snapshot = self._snapshot()
            if self.render_seq == seq:
                return snapshot
        return self._snapshot()       # a render that raised left the count odd: no moment will come

    def _snapshot(self) -> dict:
        return {"clock_frames": self.clock_frames, "seconds": self.clock_frames / self.sample_rate,
                "master_beat": self.master_beat, "master_bpm": self.beats_per_frame * 60.0 * self.sample_rate,
                "leader": self.leader, "quantize": self.quantize, "crossfader_curve": self.crossfader_curve,
                "params": dict(self.params), "limiter_gain_db": -20.0 * math.log10(max(self.limiter.gain, 1e-9)),
                "meters": [float(m) for m in self.meters], "cancels": dict(self.cancels),
                "decks": [d.summary() for d in self.decks]}

    # ================================================================== audio side

    def render(self, n_frames: int, block_frames: int = 256) -> np.ndarray:
        """Render ``n_frames`` offline in blocks of ``block_frames``; returns float32 ``(n_frames, channels)``.

        The same code as live playback: with the same commands and block size,
        the samples are identical.
        """
        out = np.zeros((n_frames, self.channels), np.float32)
        for start in range(0, n_frames, block_frames):
            self.process(out[start:start + block_frames])
            if self._garbage:
                self.collect_garbage()
        return out

    def process(self, out: np.ndarray) -> None:
        """Fill ``out`` (float32 ``(frames, channels)``) with the next frames. The audio thread's entry point."""
        n_total = out.shape[0]
        done = 0
        while done < n_total:
            n = min(self.max_block_frames, n_total - done)
            self._block(n)
            out[done:done + n] = self._out[:n]
            done += n

    def _block(self, n: int) -> None:
        queue = self._queue
        while queue:
            cmd = queue.popleft()
            if cmd.name == "cancel" and cmd.at_kind == "now":
                self._apply(cmd)        # now, in queue order: it must not drop what was sent after it
                continue
            if cmd.at_kind == "beat":
                bisect.insort(self._beat_events, (cmd.at_value, next(self._seq), cmd))
            else:
                frame = math.ceil(cmd.at_value) if cmd.at_kind == "frame" else 0
                bisect.insort(self._frame_events, (frame, next(self._seq), cmd))
        t = 0
        while True:
            now = self.clock_frames
            while self._frame_events and self._frame_events[0][0] <= now:
                self._apply(self._frame_events.pop(0)[2])
            while self._beat_events and self._beat_frame(self._beat_events[0][0]) <= now:
                self._apply(self._beat_events.pop(0)[2])
            if t >= n:
                break
            end = now + (n - t)
            if self._frame_events:
                end = min(end, self._frame_events[0][0])
            if self._beat_events:
                end = min(end, self._beat_frame(self._beat_events[0][0]))
            for ramp in self._ramps.values():
                if now < ramp[1] < end:
                    end = int(math.ceil(ramp[1]))
            k = max(1, end - now)
            self._render(t, k)
            t += k
        self._spread_hops(n)

    def _spread_hops(self, n: int) -> None:
        """Compute vocoder frames ahead for the decks least ahead, a few per block.

        Each keylocked deck needs one expensive frame per hop (512 output frames); left alone, all decks'
        frames can fall in the same block. Keeping every deck ``n + hop`` frames ahead, at most
        ``ceil(decks * n / hop)`` frames per block, spreads them out: at 128-frame blocks and four
        decks, one frame per block.
        """
        hop = self.decks[0].stretcher.hop_frames
        target = n + hop
        leads = self._leads
        count = 0
        for entry in leads:
            deck = entry[1]
            entry[0] = deck.stretcher.lead_frames if deck.playing else -1.0
            if entry[0] >= 0.0:
                count += 1
        for _ in range(-(-count * n // hop)):
            best = None
            best_lead = target
            for entry in leads:
                if 0.0 <= entry[0] < best_lead:
                    best, best_lead = entry, entry[0]
            if best is None:
                return
            deck = best[1]
            deck.stretcher.prefetch(deck.track.stems, target)
            best[0] = deck.stretcher.lead_frames     # only this deck's lead moved

    def _beat_frame(self, beat: float) -> int:
        """Output frame at which the master clock reaches ``beat``, at the current tempo."""
        if beat <= self.master_beat:
            return self.clock_frames
        return self.clock_frames + int(math.ceil((beat - self.master_beat) / self.beats_per_frame - 1e-7))

    def _advance_ramps(self, frame: int) -> None:
        finished = None
        for key, (t0, t1, v0, v1) in self._ramps.items():
            value = v1 if frame >= t1 else v0 + (v1 - v0) * (frame - t0) / (t1 - t0)
            store = self._param_store(key)
            if store is not None:           # None: the effect it ramped was taken out (it raised)
                store[key[1]] = value
            if frame >= t1:
                finished = finished or []
                finished.append(key)
        if finished:
            for key in finished:
                del self._ramps[key]
                if self._ramp_tags:
                    self._ramp_tags.pop(key, None)
                if key[1] == "play_gain":
                    self._fade_done(self.decks[key[0]])

    def _param_store(self, key: tuple):
        return self.params if key[0] < 0 else self.decks[key[0]].param_store(key[1])

    def _ramp(self, deck: int, param: str, value: float, frames: float) -> None:
        store = self._param_store((deck, param))
        if frames <= 0:
            self._ramps.pop((deck, param), None)
            store[param] = value
            return
        start = self.clock_frames
        self._ramps[(deck, param)] = [start, start + frames, store[param], value]

    def _render(self, offset: int, k: int) -> None:
        self.render_seq += 1
        self._advance_ramps(self.clock_frames + k)
        decks = self.decks
        master_fpb = 1.0 / self.beats_per_frame
        for deck in decks:
            deck.master_frames_per_beat = master_fpb       # tempo-synced effects of synced or stopped decks
        leader = self.leader
        if leader >= 0:
            deck = decks[leader]
            beat0 = deck.beat() - deck.sync_offset_beats
            deck.render(k, deck.tempo_ratio())
            if deck.loaded:
                beat1 = deck.beat() - deck.sync_offset_beats
                self.beats_per_frame = max((beat1 - beat0) / k, 1e-9)
                self.params["master_bpm"] = self.beats_per_frame * 60.0 * self.sample_rate
            if not deck.playing:
                self.leader = -1
        else:
            self.beats_per_frame = self.params["master_bpm"] / 60.0 / self.sample_rate
        for deck in decks:
            if deck.index == leader:
                continue
            ratio = deck.tempo_ratio()
            if deck.synced and deck.playing and deck.loaded:
                ratio = self._follow(deck, k)
            deck.render(k, ratio)
        mix = self._mix
        xf_left, xf_right = crossfader_gains(self.params["crossfader"], self.crossfader_curve)
        fader_next = self._fader_next
        pfl = self._pfl
        for deck in decks:
            side = deck.side
            fader_next[deck.index] = deck.params["volume"] * (1.0 if side == "thru" else
                                                              xf_left if side == "A" else xf_right)
            pfl[deck.index] = deck.pfl
        master = db_to_gain(self.params["master_gain_db"])
        mix_decks(self._blocks, k, self._fader_applied, fader_next, pfl, mix, self._cue, self.meters,
                  self._taps, offset, self._master_applied, master)
        self._master_applied = master
        out = self._out
        if self.channels == 4:
            # Headphones: cue bus blended with the master (before the master limiter), own limiter.
            cue = self._cue
            blend = self.params["cue_mix"]
            hp = db_to_gain(self.params["headphone_gain_db"])
            (b0, h0) = self._hp_applied
            gain_ramp_block(cue, k, (1.0 - b0) * h0, (1.0 - blend) * hp)
            add_faded(cue, mix, k, b0 * h0, blend * hp)
            self._hp_applied = (blend, hp)
            self.meters[self.n_decks + 1] = limit_into(cue, k, self._limiter_states[1], out, offset, 2)
        self.meters[self.n_decks] = limit_into(mix, k, self._limiter_states[0], out, offset, 0)
        self.master_beat += k * self.beats_per_frame
        self.clock_frames += k
        self.render_seq += 1

    def _follow(self, deck: Deck, k: int) -> float:
        """Ratio that keeps a synced follower on its target position (see the module docstring)."""
        if deck.nudge:
            deck.sync_offset_beats += deck.nudge * k * self.beats_per_frame
        nominal = deck.frames_per_beat() * self.beats_per_frame
        target = deck.position_of_beat(self.master_beat + deck.sync_offset_beats)
        error = target - deck.position_frames
        limit = SYNC_MAX_CORRECTION * nominal
        correction = min(max(error / (SYNC_RESPONSE_S * self.sample_rate), -limit), limit)
        return nominal + correction

    # ================================================================== commands (audio thread)

    def _apply(self, cmd: Command) -> None:
        self.commands_applied += 1
        self._handlers[cmd.name](cmd, self.decks[cmd.deck] if cmd.deck >= 0 else None)

    def _ramp_frames(self, cmd: Command) -> float:
        if cmd.ramp_kind == "beats":
            return cmd.ramp_value / self.beats_per_frame
        return cmd.ramp_value

    def _cmd_load(self, cmd: Command, deck: Deck) -> None:
        if self.leader == deck.index:
            self.leader = -1
        self._ramps = {key: r for key, r in self._ramps.items() if key[0] != deck.index}
        old = deck.attach(cmd.args["track"])
        if old is not None:
            self._garbage.append(old)

    def _cmd_eject(self, cmd: Command, deck: Deck) -> None:
        self._cmd_load(Command("load", deck.index, {"track": None}), deck)

    def _start(self, deck: Deck) -> None:
        if not deck.loaded or deck.ended:
            return
        if deck.playing and not deck.stopping:
            return
        if not deck.playing:
            if deck.synced:
                self._join_sync(deck, align=self.quantize)
            deck.playing = True
            deck.needs_restart = True
        deck.stopping = False
        self._ramp(deck.index, "play_gain", 1.0, FADE_FRAMES)

    def _stop(self, deck: Deck) -> None:
        if deck.playing and not deck.stopping:
            deck.stopping = True
            self._ramp(deck.index, "play_gain", 0.0, FADE_FRAMES)
        deck.previewing = False

    def _fade_done(self, deck: Deck) -> None:
        if deck.stopping and deck.params["play_gain"] == 0.0:
            deck.stopping = False
            deck.playing = False
            deck.needs_restart = True
            if self.leader == deck.index:
                self.leader = -1
            if deck.pending_jump is not None:
                target, deck.pending_jump = deck.pending_jump, None
                deck.position_frames = target

    def _join_sync(self, deck: Deck, align: bool, offset_beats: float | None = None) -> None:
        """Give a deck its offset to the master clock (``offset_beats``, whole, when the caller fixed it); it leads
        if no playing deck does."""
        beat = deck.beat()
        offset = float(round(beat - self.master_beat)) if offset_beats is None else float(offset_beats)
        if self.leader < 0 or not self.decks[self.leader].playing:
            self.leader = deck.index
            if not any(d.synced and d.playing and d is not deck for d in self.decks):
                # Nothing synced is playing: the clock takes the new leader's phase (a whole-beat offset),
                # so that followers, which land on whole master beats, land on the leader's beats.
                deck.sync_offset_beats = offset
                self.master_beat = beat - offset
                return
            # Followers are playing on the clock's phase: the new leader joins it as they did.
        deck.sync_offset_beats = offset
        if align and not deck.playing:
            deck.position_frames = deck.position_of_beat(self.master_beat + offset)

    def _cmd_play(self, cmd: Command, deck: Deck) -> None:
        deck.previewing = False
        self._start(deck)

    def _cmd_pause(self, cmd: Command, deck: Deck) -> None:
        self._stop(deck)

    def _cmd_play_pause(self, cmd: Command, deck: Deck) -> None:
        if deck.playing and not deck.stopping:
            self._stop(deck)
        else:
            self._cmd_play(cmd, deck)

    def _cmd_cue_press(self, cmd: Command, deck: Deck) -> None:
        # CDJ cue: playing -> back to the cue point and stop; stopped at the cue point -> preview while
        # held; stopped elsewhere -> the cue point moves here.
        if not deck.loaded:
            return
        if deck.playing and not deck.stopping:
            self._stop(deck)
            deck.pending_jump = deck.cue_frames
            return
        if abs(deck.position_frames - deck.cue_frames) < 1.0:
            self._start(deck)
            deck.previewing = deck.playing
            return
        self._cmd_cue_set(cmd, deck)

    def _cmd_cue_release(self, cmd: Command, deck: Deck) -> None:
        if deck.previewing:
            self._stop(deck)
            deck.pending_jump = deck.cue_frames

    def _cmd_cue_set(self, cmd: Command, deck: Deck) -> None:
        if not deck.loaded:
            return
        pos = deck.position_frames
        if self.quantize:
            pos = deck.position_of_beat(round(deck.beat()))
        deck.cue_frames = pos
        deck.jump(pos)

    def _jump(self, deck: Deck, target: float, keep_phase: bool) -> None:
        """Move a deck's playhead; a follower's offset is rounded so that the sync re-locks its phase."""
        if not deck.loaded:
            return
        deck.jump(target, quantize=keep_phase and self.quantize)
        if deck.synced and self.leader != deck.index:
            deck.sync_offset_beats = round(deck.sync_offset_beats)

    def _cmd_seek(self, cmd: Command, deck: Deck) -> None:
        if not deck.loaded:
            return
        a = cmd.args
        if "beat" in a:
            target = deck.position_of_beat(a["beat"])
        elif "seconds" in a:
            target = a["seconds"] * self.sample_rate
        else:
            target = a["frame"]
        self._jump(deck, min(max(target, 0.0), float(deck.track.frames)), keep_phase=False)

    def _cmd_hotcue(self, cmd: Command, deck: Deck) -> None:
        if not deck.loaded:
            return
        cue = deck.hot_cues[cmd.args["n"] - 1]
        if math.isnan(cue):
            self._cmd_hotcue_set(cmd, deck)
        else:
            self._jump(deck, cue, keep_phase=True)

    def _cmd_hotcue_set(self, cmd: Command, deck: Deck) -> None:
        if deck.loaded:
            pos = deck.position_frames
            deck.hot_cues[cmd.args["n"] - 1] = deck.position_of_beat(round(deck.beat())) if self.quantize else pos

    def _cmd_hotcue_clear(self, cmd: Command, deck: Deck) -> None:
        deck.hot_cues[cmd.args["n"] - 1] = math.nan

    def _set_loop(self, deck: Deck, beats: float) -> None:
        now = deck.beat()
        if self.quantize:
            start = math.floor(now / beats + 1e-9) * beats if beats < 1.0 else math.floor(now + 1e-9)
        else:
            start = now
        deck.loop_start = deck.position_of_beat(start)
        deck.loop_end = deck.position_of_beat(start + beats)
        deck.loop_beats = beats
        deck.loop_on = True
        deck.update_loop()

    def _cmd_loop(self, cmd: Command, deck: Deck) -> None:
        if deck.loaded:
            self._set_loop(deck, cmd.args["beats"])

    def _cmd_loop_exit(self, cmd: Command, deck: Deck) -> None:
        deck.loop_on = False
        deck.update_loop()

    def _cmd_reloop(self, cmd: Command, deck: Deck) -> None:
        if not deck.loaded or deck.loop_end <= deck.loop_start:
            return
        deck.loop_on = not deck.loop_on
        if deck.loop_on and deck.position_frames >= deck.loop_end:
            self._jump(deck, deck.loop_start, keep_phase=True)
        deck.update_loop()

    def _cmd_loop_roll(self, cmd: Command, deck: Deck) -> None:
        if not deck.loaded:
            return
        if not deck.rolling:
            deck.slip_position = deck.position_frames
            deck.rolling = True
        self._set_loop(deck, cmd.args["beats"])

    def _cmd_loop_roll_release(self, cmd: Command, deck: Deck) -> None:
        if deck.rolling:
            deck.rolling = False
            deck.loop_on = False
            deck.update_loop()
            deck.jump(deck.slip_position)

    def _cmd_beat_jump(self, cmd: Command, deck: Deck) -> None:
        if not deck.loaded:
            return
        n = cmd.args["beats"]
        target = deck.position_of_beat(deck.beat() + n)
        if deck.loop_on:
            deck.loop_start = deck.position_of_beat(deck.beat(deck.loop_start) + n)
            deck.loop_end = deck.position_of_beat(deck.beat(deck.loop_end) + n)
            deck.update_loop()
        deck.jump(target)

    def _cmd_nudge(self, cmd: Command, deck: Deck) -> None:
        deck.nudge = cmd.args["amount"]

    def _cmd_pitch_range(self, cmd: Command, deck: Deck) -> None:
        deck.pitch_range = cmd.args["range"]
        r = deck.pitch_range
        deck.params["pitch"] = min(max(deck.params["pitch"], -r), r)

    def _cmd_keylock(self, cmd: Command, deck: Deck) -> None:
        deck.keylock = cmd.args["on"]

    def _cmd_sync(self, cmd: Command, deck: Deck) -> None:
        on = cmd.args["on"]
        if on == deck.synced:
            return
        if on:
            deck.synced = True
            if deck.playing and deck.loaded:
                self._join_sync(deck, align=False, offset_beats=cmd.args.get("offset_beats"))
            return
        deck.synced = False
        if self.leader == deck.index:
            self.leader = -1
        elif deck.playing:
            # Keep the tempo it had: the pitch fader takes over the synced ratio.
            r = max(PITCH_RANGES)
            deck.params["pitch"] = min(max(deck.ratio - 1.0, -r), r)

    def _cmd_leader(self, cmd: Command, deck: Deck) -> None:
        if deck.synced and deck.playing and deck.loaded and self.leader != deck.index:
            self.leader = deck.index
            deck.sync_offset_beats = deck.beat() - self.master_beat
            # The master tempo carries on: the new leader's pitch fader takes the ratio it followed at (the nominal
            # one: the phase correction of that block is not a tempo).
            r = max(PITCH_RANGES)
            nominal = deck.frames_per_beat() * self.beats_per_frame
            pitch = min(max(nominal - 1.0, -r), r)
            if abs(pitch) > deck.pitch_range:
                deck.pitch_range = next(x for x in PITCH_RANGES if x >= abs(pitch))
            deck.params["pitch"] = pitch

    def _switches(self, deck: Deck) -> None:
        any_solo = any(deck.soloed)
        for name, s in STEM_INDEX.items():
            on = not deck.muted[s] and (deck.soloed[s] or not any_solo)
            self._ramp(deck.index, "switch." + name, 1.0 if on else 0.0, FADE_FRAMES)

    def _cmd_mute(self, cmd: Command, deck: Deck) -> None:
        deck.muted[STEM_INDEX[cmd.args["stem"]]] = cmd.args["on"]
        self._switches(deck)

    def _cmd_solo(self, cmd: Command, deck: Deck) -> None:
        deck.soloed[STEM_INDEX[cmd.args["stem"]]] = cmd.args["on"]
        self._switches(deck)

    def _cmd_pfl(self, cmd: Command, deck: Deck) -> None:
        deck.pfl = cmd.args["on"]

    def _cmd_xfader_side(self, cmd: Command, deck: Deck) -> None:
        deck.side = cmd.args["side"]

    def _cmd_set(self, cmd: Command, deck: Deck | None) -> None:
        param = cmd.args["param"]
        value = cmd.args["value"]
        if deck is not None and deck.param_store(param) is None:
            return      # an effect parameter whose slot holds another effect by now
        frames = self._ramp_frames(cmd)
        if deck is not None and param == "pitch":
            value = min(max(value, -deck.pitch_range), deck.pitch_range)
        if param in _GAIN_PARAMS or param.startswith("stem."):
            frames = max(frames, FADE_FRAMES)
        self._ramp(cmd.deck, param, value, frames)
        self._tag_ramp((cmd.deck, param), cmd.tag)

    def _cmd_fx(self, cmd: Command, deck: Deck) -> None:
        if "unit" not in cmd.args:
            return      # not prepared by send() (the effect must be built outside the audio thread)
        slot = cmd.args["slot"]
        prefix = f"fx{slot}."
        for key in [key for key in self._ramps if key[0] == deck.index and key[1].startswith(prefix)]:
            del self._ramps[key]
            self._ramp_tags.pop(key, None)
        deck.put_fx(slot, cmd.args["unit"])

    def _cmd_fx_on(self, cmd: Command, deck: Deck) -> None:
        deck.set_fx_on(cmd.args["slot"], cmd.args["on"])

    def _cmd_bass_swap(self, cmd: Command, deck: None) -> None:
        frames = max(self._ramp_frames(cmd), FADE_FRAMES)
        self._ramp(cmd.args["from_deck"], "stem.bass", 0.0, frames)
        self._ramp(cmd.args["to_deck"], "stem.bass", 1.0, frames)
        self._tag_ramp((cmd.args["from_deck"], "stem.bass"), cmd.tag)
        self._tag_ramp((cmd.args["to_deck"], "stem.bass"), cmd.tag)

    def _tag_ramp(self, key: tuple, tag: str) -> None:
        if tag and key in self._ramps:
            self._ramp_tags[key] = tag
        elif self._ramp_tags:
            self._ramp_tags.pop(key, None)

    def _cmd_cancel(self, cmd: Command, deck: None) -> None:
        """Drop the pending commands of a tag and stop its ramps where they are (a DJ takes over)."""
        tag = cmd.args["tag"]
        self.cancels[tag] = self.cancels.get(tag, 0) + 1
        for events in (self._frame_events, self._beat_events):
            i = 0
            while i < len(events):
                if events[i][2].tag == tag:
                    del events[i]
                else:
                    i += 1
        for key, ramp_tag in list(self._ramp_tags.items()):
            if ramp_tag == tag:
                del self._ramp_tags[key]
                if key in self._ramps:
                    del self._ramps[key]           # the value stays where the ramp had brought it

    def _cmd_crossfader_curve(self, cmd: Command, deck: None) -> None:
        self.crossfader_curve = cmd.args["curve"]

    def _cmd_quantize(self, cmd: Command, deck: None) -> None:
        self.quantize = cmd.args["on"]


def _reply(message: object, ok: bool, error: str = "", **extra) -> dict:
    reply: dict = {"ok": ok}
    if isinstance(message, dict) and "id" in message:
        reply["id"] = message["id"]
    if not ok:
        reply["error"] = error
    reply.update(extra)
    return reply

