"""One deck: a track's stems through keylock, stem gains, trim, EQ and filter.

A :class:`Deck` is owned by the audio thread (:class:`engine.core.Engine`
calls it); other threads never touch it, they send commands. Every buffer is
allocated in ``__init__``; :meth:`Deck.render` calls the stretcher's and the
mixer DSP's ``numba`` kernels over them.

Signal path, per block: stems -> :class:`engine.stretch.Stretcher` (keylock or
vinyl; the four stems stay sample-aligned) -> per-stem gain (fader x mute x
solo, ramped per sample) and sum -> trim x auto-gain x transport fade ->
3-band EQ -> filter -> effect slots = the pre-fader signal (what PFL hears). The
engine then applies the channel fader and crossfader.

Effects
-------
Up to :data:`~engine.commands.FX_SLOTS` effects (:mod:`engine.effects`) run in
series after the filter. A slot holds an :class:`~engine.effects.FxUnit` built
by ``Engine.send``; a replaced unit is switched off and keeps running (an echo
rings out, an insert effect fades to bypass) until its ``process`` reports it
inactive, then goes to the garbage queue. While the deck is stopped its block
is silence and the effects still run for their tails; an inactive effect on
silence is not called at all, so a tail that has died away costs nothing.

Transport and time
------------------
``position_frames`` is the source position audible at the next output frame.
Jumps (seek, cue, hot cue, beat jump, loop-roll release) go through
:meth:`Deck.jump`, which restarts the stretcher there with its 2.9 ms
crossfade and, for a synced deck, moves its beat offset by the beats jumped so
that the sync clock never sees a jump (see :mod:`engine.core`); a turn of a
loop moves the offset the same way. With quantize
on, jumps of a playing deck keep the beat phase: the destination is moved by
less than half a beat so that its fractional beat equals the current one.
A loop is played by the stretcher as a periodic signal (its staging repeats
the loop past the loop end), so the vocoder runs straight through the seam:
a turn of the loop costs nothing and needs no crossfade; only setting, moving
or leaving a loop restarts the stretcher once, at the playhead.
"""

from __future__ import annotations

import collections
import math

import numba
import numpy as np

from engine.commands import DECK_PARAMS, FX_SLOTS, HOT_CUES
from engine.dsp import MAX_EQ_DB, DjEq, DjFilter, db_to_gain, eq_block, filter_block, gain_ramp_block
from engine.effects.base import FxUnit
from engine.grid import beat_at, frames_per_beat, position_at
from engine.stretch import Stretcher, stretch_handle_block
from engine.track import REFERENCE_LUFS, DeckTrack
from prep.stems import STEM_NAMES

__all__ = ["Deck", "mix_stems", "STEM_INDEX", "FADE_FRAMES"]

_JIT = dict(nogil=True, cache=True)

STEM_INDEX = {name: i for i, name in enumerate(STEM_NAMES)}
_STEM_KEYS = tuple(("stem." + name, "switch." + name) for name in STEM_INDEX)   # parameter names, per stem
FADE_FRAMES = 128
"""Length of the play/pause fade and of the shortest gain change, frames (2.9 ms at 44.1 kHz)."""
AUTO_GAIN_LIMIT_DB = 12.0
"""Largest auto-gain correction, dB."""


@numba.njit(**_JIT)
def mix_stems(stem_buf, n_frames, gains_start, gains_end, scale, out, out_offset):
    """``out[out_offset + i] = scale * sum_s g_s(i) * stem_buf[s, i]``, each stem gain ramping linearly
    from ``gains_start[s]`` to ``gains_end[s]`` (reached on the last frame); non-finite samples become 0."""
    n_stems = stem_buf.shape[0]
    if n_stems == 4 and out.shape[1] == 2:
        # The engine's case written out, the same sums in the same order as below: without the loop over
        # stems the loop over frames vectorises (2.6 -> 1.7 us a block).
        a0, a1, a2, a3 = gains_start[0], gains_start[1], gains_start[2], gains_start[3]
        d0, d1, d2, d3 = gains_end[0] - a0, gains_end[1] - a1, gains_end[2] - a2, gains_end[3] - a3
        x0, x1, x2, x3 = stem_buf[0], stem_buf[1], stem_buf[2], stem_buf[3]
        for i in range(n_frames):
            t = (i + 1) / n_frames
            g0 = a0 + d0 * t
            g1 = a1 + d1 * t
            g2 = a2 + d2 * t
            g3 = a3 + d3 * t
            for c in range(2):
                acc = 0.0
                acc += g0 * x0[i, c]
                acc += g1 * x1[i, c]
                acc += g2 * x2[i, c]
                acc += g3 * x3[i, c]
                v = acc * scale
                out[out_offset + i, c] = v if math.isfinite(v) else 0.0
        return
    for i in range(n_frames):
        t = (i + 1) / n_frames
        for c in range(out.shape[1]):
            acc = 0.0
            for s in range(n_stems):
                acc += (gains_start[s] + (gains_end[s] - gains_start[s]) * t) * stem_buf[s, i, c]
            v = acc * scale
            out[out_offset + i, c] = v if math.isfinite(v) else 0.0


@numba.njit(**_JIT)
def post_block(block, n_frames, trim_start, trim_end, eq, filt, filter_knob):
    """Trim (a linear ramp), EQ and filter of one deck's block, in place: one kernel call per block."""
    gain_ramp_block(block, n_frames, trim_start, trim_end)
    coef, bq_state, gains, targets, smooth = eq
    eq_block(block, n_frames, coef, bq_state, gains, targets, smooth)
    svf_state, coefs, knob_state, sample_rate, damping, smooth_k, lp_min_hz, hp_max_hz = filt
    filter_block(block, n_frames, svf_state, coefs, knob_state, filter_knob, sample_rate, damping, smooth_k,
                 lp_min_hz, hp_max_hz)


@numba.njit(**_JIT)
def render_block(handle, stems, stem_buf, n_frames, ratio, keylock, key_shift, gains_start, gains_end, scale,
                 block, trim_start, trim_end, eq, filt, filter_knob):
    """One playing deck's block in one kernel call: stretch the stems (:func:`engine.stretch.stretch_handle_block`),
    mix them (:func:`mix_stems`), then trim, EQ and filter (:func:`post_block`). Returns the stretcher's
    virtual source position after the block."""
    virtual = stretch_handle_block(handle, stems, stem_buf, n_frames, ratio, keylock, key_shift)
    mix_stems(stem_buf, n_frames, gains_start, gains_end, scale, block, 0)
    post_block(block, n_frames, trim_start, trim_end, eq, filt, filter_knob)
    return virtual


class Deck:
    """A deck of the engine (see the module docstring).

    Parameters
    ----------
    index : int
        Deck number (0-based).
    sample_rate : int
        Engine sample rate, Hz.
    max_block_frames : int
        Largest block :meth:`render` is given.
    stretcher : str
        ``"engine"`` (the realtime keylock, :mod:`engine.stretch`) or ``"rubberband"`` (Rubber Band R3,
        :mod:`engine.rubberband`: offline renders only).
    block : np.ndarray, optional
        float32 ``(max_block_frames, 2)``, C-contiguous: where :meth:`render` writes the deck's block
        (the engine gives a row of one array, so that its mixer takes every deck in one call); default:
        the deck's own.
    """

    def __init__(self, index: int, sample_rate: int = 44100, max_block_frames: int = 1024,
                 stretcher: str = "engine", block: np.ndarray | None = None):
        self.index = index
        self.sample_rate = sample_rate
        self.max_block_frames = max_block_frames
        if stretcher == "rubberband":
            from engine.rubberband import RubberBandStretcher, render_block as rubberband_render_block

            kind, kernel = RubberBandStretcher, rubberband_render_block
        else:
            kind, kernel = Stretcher, render_block
        # No per-frame positions: a deck needs only the position after each block.
        self._stretchers = {n: kind(n, 2, sample_rate, max_block_frames, record_positions=False) for n in (4, 1)}
        self._stem_bufs = {4: np.zeros((4, max_block_frames, 2), np.float32),
                           1: np.zeros((1, max_block_frames, 2), np.float32)}
        self.block = np.zeros((max_block_frames, 2), np.float32) if block is None else block
        self.eq = DjEq(sample_rate)
        self.filter = DjFilter(sample_rate)
        self._eq_state = self.eq.state            # built once: no tuple per block
        self._filter_state = self.filter.state
        self._render_kernel = kernel                   # an attribute, so that a benchmark can time it
        self._loop_frames = (0, 0)                    # the loop the stretcher plays (whole frames)
        self._virtual_frames = 0.0                     # the stretcher's own (unwrapped) position
        self.track: DeckTrack | None = None
        self.stretcher = self._stretchers[4]
        self.params = {name: spec[2] for name, spec in DECK_PARAMS.items() if name != "stem"}
        for name in STEM_INDEX:
            self.params["stem." + name] = 1.0
            self.params["switch." + name] = 1.0       # mute / solo, ramped
        self.params["play_gain"] = 0.0
        self._gains_applied = np.zeros(4)
        self._gains_next = np.zeros(4)
        # The same values as Python tuples: arrays are written only when the gains change.
        self._gains_applied_values = (0.0, 0.0, 0.0, 0.0)
        self._gains_next_values = (0.0, 0.0, 0.0, 0.0)
        self._track_frames = 0            # the loaded track's length and 1 / int16 scale, kept at attach
        self._stem_scale = 1.0
        self._trim_inputs = None          # (gain_db + auto_gain_db, play_gain) the trim was computed for
        self._trim_target = 1.0
        self._eq_db = None                # the EQ dB values the EQ targets were computed for
        self._stem_gain1 = np.ones(1)
        self._stem_gain1_next = np.ones(1)
        self._trim_applied = 0.0
        self.muted = [False] * 4
        self.soloed = [False] * 4
        self.auto_gain_db = 0.0
        self.pitch_range = 0.08
        self.nudge = 0.0
        self.keylock = True
        self.pfl = False
        self.side = "thru"
        self.hot_cues = np.full(HOT_CUES, np.nan)
        self.cue_frames = 0.0
        self.previewing = False
        self.pending_jump: float | None = None   # where a stopping deck goes once faded out (CDJ cue)
        self.playing = False          # rendering (includes the fade-out after pause)
        self.stopping = False         # pause requested: fading out
        self.ended = False
        self.needs_restart = True     # the stretcher must start afresh (no crossfade) on the next block
        self.position_frames = 0.0
        self.ratio = 1.0              # source frames per output frame used for the last block
        self.loop_on = False
        self.loop_start = 0.0
        self.loop_end = 0.0
        self.loop_beats = 0.0
        self.rolling = False
        self.slip_position = 0.0
        self.synced = False
        self.sync_offset_beats = 0.0
        self.fx: list[FxUnit | None] = [None] * FX_SLOTS
        self.fx_on = [True] * FX_SLOTS
        self.fx_errors = [""] * FX_SLOTS              # why a slot's effect was taken out (it raised)
        self._fx_leaving: list[FxUnit | None] = [None] * FX_SLOTS
        self._fx_any = False                           # any unit in a slot or leaving
        self.master_frames_per_beat = 22050.0          # the engine sets it every block
        self._fx_frames_per_beat = 0.0                 # the deck's own beat, output frames (0: not known yet)
        self.garbage: collections.deque = collections.deque()   # the engine gives its own garbage queue

    # ------------------------------------------------------------------ track

    @property
    def loaded(self) -> bool:
        return self.track is not None

    def attach(self, track: DeckTrack | None) -> DeckTrack | None:
        """Put ``track`` on the deck (stopped at its cue point); returns the previous track.

        Called in the audio thread: only references move; the caller disposes of
        the returned track elsewhere.
        """
        old = self.track
        self.track = track
        self.playing = self.stopping = self.previewing = self.ended = False
        self.pending_jump = None
        self.loop_on = self.rolling = False
        self.params["play_gain"] = 0.0
        self.hot_cues[:] = np.nan
        self.needs_restart = True
        if track is not None:
            if track.stems.dtype != np.int16:
                raise ValueError(f"{track.title}: a deck plays int16 stems, got {track.stems.dtype}")
            self.stretcher = self._stretchers[track.n_stems]
            self._track_frames = track.frames
            self._stem_scale = 1.0 / track.scale
            self.stretcher.bind(track.stems)
            self.stretcher.set_loop(0, 0)
            self._loop_frames = (0, 0)
            self.cue_frames = float(track.cue_frames)
            self.position_frames = self.cue_frames
            lufs = track.lufs
            self.auto_gain_db = 0.0 if lufs != lufs else max(-AUTO_GAIN_LIMIT_DB,
                                                             min(AUTO_GAIN_LIMIT_DB, REFERENCE_LUFS - lufs))
        else:
            self.position_frames = 0.0
            self.auto_gain_db = 0.0
        self.eq.reset()
        self.filter.reset()
        return old

    # ------------------------------------------------------------------ time

    def beat(self, position_frames: float | None = None) -> float:
        """Beat count of a source position (default: the playhead)."""
        pos = self.position_frames if position_frames is None else position_frames
        return beat_at(self.track.beats_frames, pos)

    def position_of_beat(self, beat: float) -> float:
        return position_at(self.track.beats_frames, beat)

    def frames_per_beat(self) -> float:
        return frames_per_beat(self.track.beats_frames, self.position_frames)

    def quantized_target(self, target_frames: float) -> float:
        """``target_frames`` moved by less than half a beat so that its beat phase equals the playhead's."""
        now = self.beat()
        delta = self.beat(target_frames) - now
        return self.position_of_beat(now + round(delta))

    def jump(self, target_frames: float, quantize: bool = False) -> None:
        """Move the playhead (see the module docstring)."""
        if self.track is None:
            return
        if quantize and self.playing and not self.stopping:
            target_frames = self.quantized_target(target_frames)
        target_frames = self._real(float(target_frames))
        if self.synced:
            jumped = self.beat(target_frames) - self.beat()
            self.sync_offset_beats += jumped
        self.position_frames = target_frames
        self._virtual_frames = target_frames
        self.ended = False
        if self.playing and not self.needs_restart:
            self.stretcher.reset(self.position_frames)

    def update_loop(self) -> None:
        """Give the stretcher the deck's loop (``loop_on``, ``loop_start``, ``loop_end``) after a change.

        The stretcher plays a loop as a periodic signal (no restart per turn); setting, moving or leaving
        one restarts it once, at the playhead, when it had already read past the (old) loop end.
        """
        was = self._loop_frames
        now = (int(round(self.loop_start)), int(round(self.loop_end))) if self.loop_on else (0, 0)
        if now == was or self.track is None:
            return
        self._loop_frames = now
        restart = self.stretcher.set_loop(*now) or was[1] > was[0]
        self._virtual_frames = self.position_frames
        if restart and self.playing and not self.needs_restart:
            self.stretcher.reset(self.position_frames)

    def _real(self, virtual_frames: float) -> float:
        """Source position of a stretcher position (positions past the loop end wrap into the loop)."""
        start, end = self._loop_frames
        if end > start and virtual_frames >= end:
            return start + (virtual_frames - start) % (end - start)
        return virtual_frames

    # ------------------------------------------------------------------ rendering

    def tempo_ratio(self) -> float:
        """Source frames per output frame when not synced: pitch fader and nudge."""
        return (1.0 + self.params["pitch"]) * (1.0 + self.nudge)

    def _stem_gains(self, out: np.ndarray) -> None:
        """Write the stems' gains (gain times on/off switch) into ``out`` when they changed."""
        p = self.params
        (g0, s0), (g1, s1), (g2, s2), (g3, s3) = _STEM_KEYS
        gains = (p[g0] * p[s0], p[g1] * p[s1], p[g2] * p[s2], p[g3] * p[s3])
        if gains != self._gains_next_values:
            out[:] = gains
            self._gains_next_values = gains

    def render(self, n_frames: int, ratio: float) -> None:
        """Render ``n_frames`` pre-fader frames into ``self.block[:n_frames]`` at ``ratio`` source frames per
        output frame (ignored when not playing)."""
        block = self.block
        track = self.track
        if track is None or not self.playing:
            block[:n_frames] = 0.0
            if self._fx_any:
                self._render_fx(n_frames, silent=True)
            return
        self.ratio = ratio
        st = self.stretcher
        if self.needs_restart:
            st.reset(self.position_frames, crossfade=False)
            self._virtual_frames = self.position_frames
            self.needs_restart = False
        stems = track.stems
        four = stems.shape[0] == 4
        if four:
            g0, g1 = self._gains_applied, self._gains_next
            self._stem_gains(g1)
            stem_buf = self._stem_bufs[4]
        else:
            g0, g1 = self._stem_gain1, self._stem_gain1_next
            stem_buf = self._stem_bufs[1]
        p = self.params
        # Gains recomputed only when their controls move (most blocks they do not).
        trim_inputs = (p["gain_db"] + self.auto_gain_db, p["play_gain"])
        if trim_inputs != self._trim_inputs:
            self._trim_inputs = trim_inputs
            self._trim_target = db_to_gain(trim_inputs[0]) * trim_inputs[1]
        trim = self._trim_target
        eq_db = (p["eq_low_db"], p["eq_mid_db"], p["eq_high_db"])
        if eq_db != self._eq_db:
            self._eq_db = eq_db
            targets = self.eq.targets
            for band in range(3):
                targets[band] = db_to_gain(min(eq_db[band], MAX_EQ_DB))
        before = self.position_frames
        virtual0 = self._virtual_frames
        virtual1 = self._render_kernel(st.handle, stems, stem_buf, n_frames, ratio, self.keylock,
                                       p["key_shift"], g0, g1, self._stem_scale, block, self._trim_applied, trim,
                                       self._eq_state, self._filter_state, p["filter"])
        self._trim_applied = trim
        self._virtual_frames = virtual1
        self.position_frames = self._real(virtual1)
        if self.synced and self._loop_frames[1] > self._loop_frames[0]:
            # Loop turns move the playhead back: the sync offset follows, as for any jump.
            continuous = before + (virtual1 - virtual0)
            if abs(self.position_frames - continuous) > 0.5:
                self.sync_offset_beats += self.beat(self.position_frames) - self.beat(continuous)
        if self.rolling:
            self.slip_position += n_frames * ratio
        if four and self._gains_applied_values != self._gains_next_values:
            g0[:] = g1
            self._gains_applied_values = self._gains_next_values
        if self.position_frames >= self._track_frames and ratio > 0.0:
            self.ended = True
            self.playing = False
            self.needs_restart = True
        if self._fx_any:
            if self.synced:
                self._fx_frames_per_beat = self.master_frames_per_beat
            else:
                self._fx_frames_per_beat = self.frames_per_beat() / self.tempo_ratio()
            self._render_fx(n_frames, silent=False)

    # ------------------------------------------------------------------ effects

    def _render_fx(self, n_frames: int, silent: bool) -> None:
        """Run the effect slots in series over ``self.block[:n_frames]`` (``silent``: the block is all zeros)."""
        fpb = self._fx_frames_per_beat or self.master_frames_per_beat
        block = self.block
        for s in range(FX_SLOTS):
            for unit in (self._fx_leaving[s], self.fx[s]):
                if unit is None or silent and not unit.active:
                    continue
                try:
                    active = unit.process(block, n_frames, fpb)
                except Exception as err:  # noqa: BLE001 -- a plugin's bug must not stop the audio
                    self._fx_failed(s, unit, err)
                    continue
                if active:
                    silent = False
                elif unit is self._fx_leaving[s]:
                    self._fx_leaving[s] = None
                    self.garbage.append(unit)
                    self._fx_any = any(u is not None for u in self.fx) or any(
                        u is not None for u in self._fx_leaving)

    def _fx_failed(self, slot: int, unit: FxUnit, err: Exception) -> None:
        # Rare path: the strings allocate, but only once, when a plugin breaks.
        self.fx_errors[slot] = f"{unit.name}: {type(err).__name__}: {err}"[:200]
        if self.fx[slot] is unit:
            self.fx[slot] = None
        if self._fx_leaving[slot] is unit:
            self._fx_leaving[slot] = None
        self.garbage.append(unit)
        self._fx_any = any(u is not None for u in self.fx) or any(u is not None for u in self._fx_leaving)

    def put_fx(self, slot: int, unit: FxUnit | None) -> None:
        """Put ``unit`` (or nothing) in ``slot`` (audio thread). The unit it replaces is switched off and rings out;
        one still ringing out from before goes to the garbage queue at once."""
        old = self.fx[slot]
        if old is not None:
            if self._fx_leaving[slot] is not None:
                self.garbage.append(self._fx_leaving[slot])
            old.set_on(False)
            self._fx_leaving[slot] = old
        if unit is not None:
            unit.set_on(self.fx_on[slot])
        self.fx[slot] = unit
        self.fx_errors[slot] = ""
        self._fx_any = any(u is not None for u in self.fx) or any(u is not None for u in self._fx_leaving)

    def set_fx_on(self, slot: int, on: bool) -> None:
        """Switch a slot on or off (off: an echo or reverb stops taking input and rings out; others fade out)."""
        self.fx_on[slot] = on
        unit = self.fx[slot]
        if unit is not None:
            unit.set_on(on)

    def param_store(self, param: str):
        """Where a ``set`` parameter lives: the deck's ``params``, or the effect unit of ``fx<slot>.<name>``
        (None when that slot has no such parameter)."""
        if not param.startswith("fx"):
            return self.params
        unit = self.fx[int(param[2:param.index(".")])]
        return unit if unit is not None and param in unit else None

    # ------------------------------------------------------------------ state

    def summary(self) -> dict:
        """JSON-ready state for controllers (read from another thread: a snapshot, possibly torn)."""
        t = self.track
        d = {"deck": self.index, "loaded": t is not None, "playing": self.playing and not self.stopping,
             "position_s": self.position_frames / self.sample_rate, "keylock": self.keylock, "sync": self.synced,
             "pfl": self.pfl, "side": self.side, "loop": [self.loop_start, self.loop_end] if self.loop_on else None,
             "loop_beats": self.loop_beats if self.loop_on else None,
             "pitch": self.params["pitch"], "pitch_range": self.pitch_range, "ended": self.ended,
             "hot_cues_s": [None if math.isnan(c) else c / self.sample_rate for c in self.hot_cues],
             "cue_s": self.cue_frames / self.sample_rate, "auto_gain_db": round(self.auto_gain_db, 2),
             "params": {k: v for k, v in self.params.items() if not k.startswith(("switch.", "play_gain"))},
             "muted": [n for n, s in STEM_INDEX.items() if self.muted[s]],
             "soloed": [n for n, s in STEM_INDEX.items() if self.soloed[s]],
             "fx": [self._fx_summary(s) for s in range(FX_SLOTS)]}
        if t is not None:
            d["track"] = t.summary()
            d["beat"] = self.beat()
            if self.synced and self.playing:
                # The tempo it is synced to, as a CDJ shows it: the phase corrections (a few hundredths
                # of a BPM for a moment) are not a tempo change and would make the display flicker.
                d["bpm"] = 60.0 * self.sample_rate / self.master_frames_per_beat
            else:
                d["bpm"] = 60.0 * self.sample_rate / self.frames_per_beat() * self.ratio
        return d

    def _fx_summary(self, slot: int) -> dict:
        unit = self.fx[slot]
        leaving = self._fx_leaving[slot]
        return {"slot": slot, "effect": unit.name if unit is not None else "", "on": self.fx_on[slot],
                "params": unit.values() if unit is not None else {},
                "ringing": (unit is not None and unit.active) or leaving is not None,
                "error": self.fx_errors[slot]}
