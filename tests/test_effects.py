"""Deck effects, render-based: echo, reverb, flanger and filter measured from the engine's audio; tails,
bypass, ramps in beats, no allocation, malformed commands, and a third-party effect found by entry point.

Material is built here with known truth (tone bursts, clicks, noise on a 120 BPM grid, so a beat is 22050
frames). Each deck's own output comes from the engine's per-deck taps (post-fader, before the limiter), so a
deck without effects playing the same track is the exact dry reference.
"""

from __future__ import annotations

import json
import logging
import math
import sys
import textwrap
import tracemalloc

import numba
import numpy as np
import pytest
from scipy.signal import csd, welch

from engine.core import Engine
from engine.effects import FxUnit, create_effect, discover
from engine.track import track_from_arrays

SR = 44100
BEAT = 22050                     # frames per beat at 120 BPM
BLOCK = 256


def grid_track(audio: np.ndarray, n_beats: int) -> object:
    """A one-stem (drums) track with a 120 BPM grid from frame 0; it starts playing at frame 0."""
    stems = np.zeros((4,) + audio.shape, np.float32)
    stems[0] = audio
    beats = np.arange(n_beats) * 0.5
    return track_from_arrays(stems, beats, beats[::4], cue_s=0.0)


def tone_burst(hz: float = 1000.0, ms: float = 10.0, amp: float = 0.5) -> np.ndarray:
    n = int(ms * 1e-3 * SR)
    return (amp * np.sin(2 * np.pi * hz * np.arange(n) / SR) * np.hanning(n)).astype(np.float32)


def render_taps(engine: Engine, frames: int) -> np.ndarray:
    """Render ``frames`` and return every deck's post-fader output, float64 ``(n_decks, frames, 2)``."""
    taps = np.zeros((engine.n_decks, frames, 2))
    out = np.zeros((BLOCK, engine.channels), np.float32)
    for start in range(0, frames, BLOCK):
        n = min(BLOCK, frames - start)
        engine.process(out[:n])
        taps[:, start:start + n] = engine.taps[:, :n]
        engine.collect_garbage()
    return taps


def playing_engine(tracks: list, *messages: dict) -> Engine:
    """Decks playing ``tracks`` from frame 0, vinyl mode (ratio 1 plays the samples as they are)."""
    engine = Engine(n_decks=len(tracks), deck_taps=True)
    for d, track in enumerate(tracks):
        engine.load(d, track)
        send_ok(engine, {"cmd": "keylock", "deck": d, "on": False})
    send_ok(engine, *messages)
    for d in range(len(tracks)):
        send_ok(engine, {"cmd": "play", "deck": d})
    return engine


def send_ok(engine: Engine, *messages: dict) -> None:
    for m in messages:
        reply = engine.send(m)
        assert reply["ok"], (m, reply)


def fx(deck: int, slot: int, effect: str, **params) -> list[dict]:
    return [{"cmd": "fx", "deck": deck, "slot": slot, "effect": effect}] + [
        {"cmd": "set", "deck": deck, "param": f"fx{slot}.{k}", "value": v} for k, v in params.items()]


def lag_of(x: np.ndarray, ref: np.ndarray, lo: int, hi: int) -> int:
    """Lag in [lo, hi) at which ``x`` best matches ``ref`` (cross-correlation, mono)."""
    n = len(ref)
    best = [float(np.dot(x[lag:lag + n], ref)) for lag in range(lo, hi)]
    return lo + int(np.argmax(best))


def one_pole(f_hz: float, cutoff_hz: float, high: bool) -> complex:
    """H of the bilinear (TPT) first-order low- or high-pass at ``f_hz``."""
    r = math.tan(math.pi * f_hz / SR) / math.tan(math.pi * min(cutoff_hz, 0.45 * SR) / SR)
    return (1j * r if high else 1.0) / (1.0 + 1j * r)


# --------------------------------------------------------------------------- echo


@pytest.mark.parametrize("lp_hz", [20000.0, 2000.0])
def test_echo_repeats_at_the_beat_synced_delay_with_the_set_decay(lp_hz):
    """A 1 kHz burst on a deck pitched +5 %: repeats every 0.75 of ITS beats (15750 frames), each the set
    feedback times the feedback filters' response below the one before."""
    audio = np.zeros((SR * 4, 2), np.float32)
    burst = tone_burst()
    start = BEAT                                   # beat 1, well after the effect has faded in
    audio[start:start + len(burst)] = burst[:, None]
    pitch, feedback, mix = 0.05, 0.6, 0.8
    engine = playing_engine([grid_track(audio, 8)],
                            {"cmd": "set", "deck": 0, "param": "pitch", "value": pitch},
                            *fx(0, 0, "echo", time_beats=0.75, feedback=feedback, mix=mix, lp_hz=lp_hz, hp_hz=20.0))
    out = render_taps(engine, int(3.2 * SR))[0, :, 0]
    delay = 0.75 * BEAT / (1 + pitch)
    assert delay == pytest.approx(15750.0)
    dry_at = int(round(start / (1 + pitch)))
    dry = out[dry_at - 100:dry_at + len(burst) + 100]
    hz = 1000.0 * (1 + pitch)                      # vinyl: the tone is pitched too
    h = one_pole(hz, lp_hz, False) * one_pole(hz, 20.0, True)
    loop = feedback * abs(h)
    phase_delay = -np.angle(h) / (2 * np.pi * hz / SR)          # frames the loop's filters add per turn
    levels = []
    for n in range(1, 6):
        expect = dry_at - 100 + int(round(n * delay + (n - 1) * phase_delay))
        lag = lag_of(out, dry, expect - 60, expect + 60)
        assert abs(lag - expect) <= 2, f"repeat {n} at {lag}, expected {expect}"
        seg = out[lag:lag + len(dry)]
        levels.append(np.sqrt(np.mean(seg ** 2) / np.mean(dry ** 2)))
    assert levels[0] == pytest.approx(mix, rel=0.01)
    ratios = np.array(levels[1:]) / np.array(levels[:-1])
    assert ratios == pytest.approx(loop, rel=0.02)
    deck = engine.state()["decks"][0]
    assert deck["fx"][0]["effect"] == "echo" and deck["fx"][0]["params"]["feedback"] == feedback


def test_echo_tail_rings_after_the_input_is_cut_then_dies_and_costs_nothing():
    """Echo out: stems cut on deck 0 and deck 1 paused right after a burst; the repeats go on at the set decay,
    die below -90 dBFS, and then the effect is not called any more."""
    audio = np.zeros((SR * 6, 2), np.float32)
    burst = tone_burst()
    audio[4 * BEAT:4 * BEAT + len(burst)] = burst[:, None]
    track = grid_track(audio, 24)
    cut = 4 * BEAT + 2000                           # just after the burst on beat 4
    engine = playing_engine([track, track],
                            *fx(0, 0, "echo", time_beats=0.5, feedback=0.45, mix=1.0, lp_hz=20000.0, hp_hz=20.0),
                            *fx(1, 0, "echo", time_beats=0.5, feedback=0.45, mix=1.0, lp_hz=20000.0, hp_hz=20.0),
                            {"cmd": "set", "deck": 0, "param": "stem.drums", "value": 0.0, "at": {"frame": cut}},
                            {"cmd": "pause", "deck": 1, "at": {"frame": cut}})
    calls = []
    taps = render_taps(engine, 4 * BEAT + 2048)    # commands applied, effects in place
    units = [deck.fx[0] for deck in engine.decks]
    assert all(u is not None for u in units)
    for u in units:
        real = u.effect.process

        def counting(*args, _real=real, _u=u):
            calls.append(_u)
            return _real(*args)
        u.effect.process = counting
    rest = render_taps(engine, 5 * SR)
    out = np.concatenate([taps, rest], axis=1)[:, :, 0]
    dry = out[0, 4 * BEAT - 50:4 * BEAT + len(burst) + 50]
    ref = np.sqrt(np.mean(dry ** 2))
    for d in (0, 1):
        levels = []
        for n in range(1, 6):
            at = 4 * BEAT - 50 + n * (BEAT // 2)
            levels.append(np.sqrt(np.mean(out[d, at:at + len(dry)] ** 2)) / ref)
        # No input after the cut: the n-th repeat is feedback ** (n - 1) of the first.
        assert levels == pytest.approx([0.45 ** k for k in range(5)], rel=0.02), d
    # Died away: the last second is below -90 dBFS (exact silence once the kernels stop), and uncalled.
    last = out[:, -SR:]
    assert np.abs(last).max() < 10 ** (-90 / 20)
    assert not units[0].active and not units[1].active
    n_calls = len(calls)
    render_taps(engine, SR // 2)
    assert np.abs(engine.taps).max() == 0.0
    # Deck 1 is stopped: its idle echo is not called at all; deck 0 plays silence: its kernel returns at once.
    assert calls[n_calls:].count(units[1]) == 0


def test_switching_a_slot_off_or_emptying_it_lets_an_echo_ring_out_and_a_flanger_bypass(music_track):
    """fx_on false at beat 2: the echo's repeats of the burst on beat 1 ring on, the burst on beat 3 gets none;
    emptying the slot (fx "") does the same, and the old echo goes to the garbage once quiet; a flanger switched
    off returns the dry signal bit for bit."""
    audio = np.zeros((SR * 5, 2), np.float32)
    burst = tone_burst()
    for b in (1, 3):
        audio[b * BEAT:b * BEAT + len(burst)] = burst[:, None]
    bursts = grid_track(audio, 10)
    echo = dict(time_beats=0.5, feedback=0.3, mix=1.0, lp_hz=20000.0, hp_hz=20.0)
    engine = playing_engine([bursts, bursts, music_track, music_track],
                            *fx(0, 0, "echo", **echo), *fx(1, 0, "echo", **echo),
                            *fx(2, 0, "flanger", mix=0.5, feedback=0.6),
                            {"cmd": "fx_on", "deck": 0, "slot": 0, "on": False, "at": {"beat": 2}},
                            {"cmd": "fx", "deck": 1, "slot": 0, "effect": "", "at": {"beat": 2}},
                            {"cmd": "fx_on", "deck": 2, "slot": 0, "on": False, "at": {"beat": 2}})
    taps = render_taps(engine, 4 * SR)
    dry = taps[0, BEAT - 50:BEAT + len(burst) + 50, 0]
    for d in (0, 1):
        out = taps[d, :, 0]
        level = [np.sqrt(np.mean(out[at - 50:at - 50 + len(dry)] ** 2) / np.mean(dry ** 2))
                 for at in (BEAT + BEAT // 2, 2 * BEAT, 3 * BEAT + BEAT // 2, 4 * BEAT)]
        # Beat 1's repeats go on (0.3 per half beat); beat 3's burst adds nothing at 3.5 and 4.
        assert level == pytest.approx([1.0, 0.3, 0.3 ** 4, 0.3 ** 5], rel=0.03), d
    assert engine.decks[1].fx[0] is None and engine.decks[1]._fx_leaving[0] is None    # rang out, then freed
    assert engine.state()["decks"][0]["fx"][0]["on"] is False
    settled = slice(2 * BEAT + SR // 10, None)
    assert np.array_equal(taps[2, settled], taps[3, settled])
    assert not np.array_equal(taps[2, :2 * BEAT], taps[3, :2 * BEAT])


# --------------------------------------------------------------------------- reverb


def test_reverb_decay_time_is_as_set():
    """A 30 ms noise burst into reverbs set to 1.6 s and 0.6 s: the energy decay (Schroeder backward integral,
    -5 to -35 dB, extrapolated to 60 dB) measures within 12 % of each."""
    rng = np.random.default_rng(3)
    audio = np.zeros((SR * 4, 2), np.float32)
    n = int(0.03 * SR)
    audio[BEAT:BEAT + n] = (0.3 * rng.standard_normal((n, 2))).astype(np.float32)
    track = grid_track(audio, 8)
    engine = playing_engine([track, track], *fx(0, 0, "reverb", decay_s=1.6, damping=0.0, mix=1.0),
                            *fx(1, 0, "reverb", decay_s=0.6, damping=0.0, mix=1.0, size=0.5))
    taps = render_taps(engine, int(3.5 * SR))
    for d, decay_s in ((0, 1.6), (1, 0.6)):
        wet = taps[d, BEAT + n + 64:]
        energy = (wet ** 2).sum(axis=1)
        edc = np.cumsum(energy[::-1])[::-1]
        edc_db = 10 * np.log10(edc / edc[0] + 1e-30)
        t5, t35 = np.argmax(edc_db < -5), np.argmax(edc_db < -35)
        t60 = 2.0 * (t35 - t5) / SR
        assert t60 == pytest.approx(decay_s, rel=0.12), (d, t60)
    # The tail is the reverb's, not the dry burst's: it starts well above the burst's own end.
    assert np.abs(taps[0, BEAT + n + 64:BEAT + n + 2000]).max() > 0.01


# --------------------------------------------------------------------------- flanger


def test_flanger_delay_and_notch_follow_the_lfo_period_in_beats():
    """Clicks on every beat through a flanger (period 8 beats, 1-9 ms, no feedback, mix 0.5): each click
    comes out with a copy at the LFO's delay, and the output's first notch sits at 1 / (2 tau)."""
    rng = np.random.default_rng(5)
    audio = np.zeros((SR * 9, 2), np.float32)
    click_n = 64
    click = (rng.standard_normal(click_n) * np.exp(-np.arange(click_n) / 8.0)).astype(np.float32) * 0.5
    for b in range(1, 17):
        audio[b * BEAT:b * BEAT + click_n] = click[:, None]
    track = grid_track(audio, 20)
    period = 8
    engine = playing_engine([track, track],
                            *fx(0, 0, "flanger", period_beats=float(period), depth=1.0, delay_ms=1.0,
                                feedback=0.0, mix=0.5))
    taps = render_taps(engine, 17 * BEAT)
    wet, dry = taps[0, :, 0], taps[1, :, 0]
    taus = []
    for b in range(1, 17):
        ref = dry[b * BEAT:b * BEAT + click_n]
        lag = lag_of(wet - 0.5 * dry, 0.5 * ref, b * BEAT + 30, b * BEAT + 500) - b * BEAT
        phase = (b * BEAT + lag) / (period * BEAT)
        expect = (1.0 + 8.0 * 0.5 * (1.0 - math.cos(2 * math.pi * phase))) * 1e-3 * SR
        assert abs(lag - expect) <= 2.0, (b, lag, expect)
        taus.append(lag)
        # The notch: the output's spectrum over the dry one, at 1 / (2 tau), is deep.
        seg = slice(b * BEAT - 256, b * BEAT + 1792)
        spec_w = np.abs(np.fft.rfft(wet[seg], 8192))
        spec_d = np.abs(np.fft.rfft(dry[seg], 8192))
        notch = int(round(SR / (2 * lag) / (SR / 8192)))
        ratio = spec_w[notch - 1:notch + 2].min() / spec_d[notch - 1:notch + 2].mean()
        assert 20 * np.log10(ratio) < -20, (b, ratio)
    taus = np.array(taus)
    assert np.abs(taus[period:] - taus[:-period]).max() <= 2       # periodic in 8 beats
    assert taus.min() < 0.0015 * SR and taus.max() > 0.0085 * SR


# --------------------------------------------------------------------------- filter


def svf_response(f_hz: float, cutoff_hz: float, q: float, mode: str) -> float:
    """|H| of the TPT state-variable filter (the bilinear transform, prewarped at the cutoff)."""
    s = 1j * math.tan(math.pi * f_hz / SR) / math.tan(math.pi * cutoff_hz / SR)
    den = s * s + s / q + 1.0
    return abs({"lp": 1.0, "hp": s * s, "bp": s / q}[mode] / den)


def test_filter_response_and_lfo():
    """White noise through the filter effect in each mode (1 kHz, resonance 0.5: Q 2.65): the measured transfer
    matches the filter's analytic response within 0.5 dB at five frequencies; with the LFO on, the output level
    swings with the LFO's period in beats."""
    rng = np.random.default_rng(7)
    audio = (0.1 * rng.standard_normal((SR * 6, 2))).astype(np.float32)
    track = grid_track(audio, 16)
    modes = ("lp", "hp", "bp")
    messages = []
    for d, mode in enumerate(modes):
        messages += fx(d, 0, "filter", mode=float(d), cutoff_hz=1000.0, resonance=0.5, mix=1.0)
    messages += fx(3, 0, "filter", mode=0.0, cutoff_hz=800.0, resonance=0.2, lfo_beats=2.0, lfo_depth=2.0)
    engine = playing_engine([track] * 5, *messages)
    taps = render_taps(engine, 5 * SR)
    dry = taps[4, SR // 10:, 0]
    q = 1.0 / math.sqrt(2.0) * 14.0 ** 0.5
    for d, mode in enumerate(modes):
        f, pxy = csd(dry, taps[d, SR // 10:, 0], fs=SR, nperseg=8192)
        _, pxx = welch(dry, fs=SR, nperseg=8192)
        for hz in (200.0, 600.0, 1000.0, 1700.0, 5000.0):
            i = int(np.argmin(np.abs(f - hz)))
            measured = 20 * np.log10(abs(pxy[i] / pxx[i]))
            expect = 20 * np.log10(svf_response(f[i], 1000.0, q, mode))
            assert measured == pytest.approx(expect, abs=0.5), (mode, hz, measured, expect)
    # LFO: the low-passed noise's short-time level repeats every 2 beats (44100 frames).
    level = np.convolve(taps[3, :, 0] ** 2, np.ones(2048) / 2048, mode="valid")[::256]
    level = level[len(level) // 8:] - level[len(level) // 8:].mean()
    ac = np.correlate(level, level, mode="full")[len(level) - 1:]
    lags = np.arange(len(ac)) * 256
    window = (lags > 0.5 * 2 * BEAT) & (lags < 1.5 * 2 * BEAT)
    assert lags[window][np.argmax(ac[window])] == pytest.approx(2 * BEAT, rel=0.03)


# --------------------------------------------------------------------------- bypass, ramps


@pytest.fixture(scope="module")
def music_track():
    rng = np.random.default_rng(11)
    t = np.arange(SR * 3) / SR
    audio = 0.2 * np.sin(2 * np.pi * 220 * t) * (1 + np.sin(2 * np.pi * 2 * t)) / 2
    audio = np.stack([audio, np.roll(audio, 100)], axis=1) + 0.05 * rng.standard_normal((len(t), 2))
    for b in range(6):
        audio[b * BEAT:b * BEAT + 200] += 0.5
    return grid_track(audio.astype(np.float32), 8)


def test_mix_zero_is_bit_identical_to_no_effect(music_track):
    """Every built-in at mix 0 (three in one deck's slots, one more on the other deck) leaves the master output
    bit for bit what it is without effects, while their kernels run."""
    with_fx = playing_engine([music_track, music_track],
                             *fx(0, 0, "echo", mix=0.0, feedback=0.9), *fx(0, 1, "reverb", mix=0.0),
                             *fx(0, 2, "flanger", mix=0.0), *fx(1, 0, "filter", mix=0.0, resonance=1.0))
    plain = playing_engine([music_track, music_track])
    a, b = with_fx.render(2 * SR, BLOCK), plain.render(2 * SR, BLOCK)
    assert np.abs(a).max() > 0.1
    assert np.array_equal(a, b)
    assert all(u.active for u in with_fx.decks[0].fx)          # they ran (and hold the echo's memory)


def test_parameter_ramps_in_beats_land_where_they_should():
    """Ramps in beats, from master beats: a filter's mix 0 -> 1 over 4 beats (the dry tone fading out,
    measured per sample) and an echo's mix 0 -> 1 over 8 beats (each click's repeat at the mix of its time)."""
    t = np.arange(SR * 8) / SR
    tone = (0.4 * np.sin(2 * np.pi * 1000 * t)).astype(np.float32)
    clicks = np.zeros((SR * 8, 2), np.float32)
    burst = tone_burst(2000.0, 4.0, 0.5)
    for b in range(1, 15):
        clicks[b * BEAT:b * BEAT + len(burst)] = burst[:, None]
    engine = playing_engine([grid_track(np.stack([tone, tone], 1), 32), grid_track(clicks, 32)],
                            # a 20 Hz low-pass removes the tone: what is left is (1 - mix) of it
                            *fx(0, 0, "filter", cutoff_hz=20.0, resonance=0.0, mix=0.0),
                            {"cmd": "set", "deck": 0, "param": "fx0.mix", "value": 1.0, "at": {"beat": 2},
                             "ramp": {"beats": 4}},
                            *fx(1, 0, "echo", time_beats=0.5, feedback=0.0, mix=0.0, lp_hz=20000.0, hp_hz=20.0),
                            {"cmd": "set", "deck": 1, "param": "fx0.mix", "value": 1.0, "at": {"beat": 4},
                             "ramp": {"beats": 8}})
    taps = render_taps(engine, 14 * BEAT)
    env = np.sqrt(2 * np.convolve(taps[0, :, 0] ** 2, np.ones(441) / 441, mode="same"))
    for beat in (1.5, 3.0, 4.0, 5.0, 6.5, 8.0):
        expect = 0.4 * (1.0 - min(max((beat - 2.0) / 4.0, 0.0), 1.0))
        assert env[int(beat * BEAT)] == pytest.approx(expect, abs=0.006), beat
    ref = taps[1, BEAT:BEAT + len(burst), 0]
    for b in range(4, 13):
        at = b * BEAT + BEAT // 2
        level = np.sqrt(np.mean(taps[1, at:at + len(burst), 0] ** 2) / np.mean(ref ** 2))
        expect = min(max((b + 0.5 - 4.0) / 8.0, 0.0), 1.0)
        assert level == pytest.approx(expect, abs=0.01), b


# --------------------------------------------------------------------------- realtime rules


@numba.njit(nogil=True, cache=True)
def _drive(kernel, n_calls, args):
    """Call a kernel ``n_calls`` times from compiled code (no boxing per call)."""
    active = False
    for _ in range(n_calls):
        active = kernel(*args)
    return active


def test_process_allocates_nothing():
    """No allocation in the kernels (numba's runtime statistics: calling a kernel 500 times from compiled code
    allocates exactly what calling it once does, the unboxing of its arguments) and none kept by the Python
    side of process (tracemalloc around hundreds of calls)."""
    from numba.core.runtime import _nrt_python, rtsys

    block = np.zeros((512, 2), np.float32)
    rng = np.random.default_rng(1)
    noise = (0.1 * rng.standard_normal((512, 2))).astype(np.float32)
    units = [FxUnit(create_effect(name, SR, 512), 0) for name in ("echo", "reverb", "flanger", "filter")]
    units[3].targets[3] = 1.0                          # filter: LFO on, so coefficients change every sample
    for u in units:
        block[:] = noise
        u.process(block, 512, BEAT)
        _drive(type(u.effect).kernel, 1, u.effect.kernel_args(block, 256, u.targets, BEAT))
    _nrt_python.memsys_enable_stats()
    try:
        for u in units:
            block[:] = noise
            args = u.effect.kernel_args(block, 256, u.targets, BEAT)
            s0 = rtsys.get_allocation_stats()
            _drive(type(u.effect).kernel, 1, args)
            s1 = rtsys.get_allocation_stats()
            _drive(type(u.effect).kernel, 500, args)
            s2 = rtsys.get_allocation_stats()
            assert s2.alloc - s1.alloc == s1.alloc - s0.alloc, u.name
            assert s2.mi_alloc - s1.mi_alloc == s1.mi_alloc - s0.mi_alloc, u.name
    finally:
        _nrt_python.memsys_disable_stats()
    tracemalloc.start()
    snap0 = tracemalloc.take_snapshot()
    for i in range(300):
        for u in units:
            block[:] = noise
            u.targets[-2] = (i % 100) / 100.0        # moving mix
            u.process(block, 256 + (i % 3) * 128, BEAT)
    snap1 = tracemalloc.take_snapshot()
    tracemalloc.stop()
    grown = sum(s.size_diff for s in snap1.compare_to(snap0, "filename") if s.size_diff > 0)
    assert grown < 4096, grown


BAD_FX = [
    ({"cmd": "fx", "deck": 0, "slot": 0, "effect": "teleporter"}, "unknown effect 'teleporter'"),
    ({"cmd": "fx", "deck": 0, "slot": 3, "effect": "echo"}, "slot must be 0..2"),
    ({"cmd": "fx", "deck": 0, "slot": "0", "effect": "echo"}, "must be an integer"),
    ({"cmd": "fx", "deck": 0, "slot": 0, "effect": 7}, "must be an effect name"),
    ({"cmd": "fx", "deck": 0, "slot": 0, "effect": "echo; rm"}, "must be an effect name"),
    ({"cmd": "fx", "deck": 0, "slot": 0}, "missing argument 'effect'"),
    ({"cmd": "fx", "deck": 5, "slot": 0, "effect": "echo"}, "deck must be"),
    ({"cmd": "fx_on", "deck": 0, "slot": -1, "on": True}, "slot must be 0..2"),
    ({"cmd": "fx_on", "deck": 0, "slot": 0, "on": 1}, "must be true or false"),
    ({"cmd": "set", "deck": 0, "param": "fx1.mix", "value": 0.5}, "no effect in slot 1"),
    ({"cmd": "set", "deck": 0, "param": "fx0.warp", "value": 0.5}, "echo has no parameter 'warp'"),
    ({"cmd": "set", "deck": 0, "param": "fx0.feedback", "value": 1.5}, "within 0..0.97"),
    ({"cmd": "set", "deck": 0, "param": "fx0.mix", "value": float("inf")}, "must be finite"),
    ({"cmd": "set", "deck": 0, "param": "fx0.mix", "value": "loud"}, "must be a number"),
    ({"cmd": "set", "deck": 0, "param": "fx7.mix", "value": 0.5}, "slot must be 0..2"),
    ({"cmd": "set", "deck": 0, "param": "fx0", "value": 0.5}, "fx<slot>.<name>"),
    ({"cmd": "set", "deck": 0, "param": "fx00.mix", "value": 0.5}, "fx<slot>.<name>"),
    ({"cmd": "set", "param": "fx0.mix", "value": 0.5}, "unknown engine-wide"),
]


def test_malformed_fx_commands_get_one_line_errors_and_leave_the_audio_untouched(music_track):
    setup = fx(0, 0, "echo", mix=0.7, feedback=0.5)
    fuzzed, reference = playing_engine([music_track], *setup), playing_engine([music_track], *setup)
    a, b = [fuzzed.render(SR // 2, BLOCK)], [reference.render(SR // 2, BLOCK)]
    for message, why in BAD_FX:
        reply = fuzzed.send(message)
        assert reply["ok"] is False and why in reply["error"] and "\n" not in reply["error"], (message, reply)
        a.append(fuzzed.render(BLOCK, BLOCK))
        b.append(reference.render(BLOCK, BLOCK))
    a.append(fuzzed.render(SR // 2, BLOCK))
    b.append(reference.render(SR // 2, BLOCK))
    assert np.array_equal(np.concatenate(a), np.concatenate(b))
    assert fuzzed.state()["decks"][0]["fx"][0]["params"]["mix"] == 0.7


# --------------------------------------------------------------------------- a third-party effect

PLUGIN = '''
"""A third-party deck effect: a smoothed gain, found through the ate.effects entry point."""
import numba
import numpy as np
from engine.effects import Effect, Param

@numba.njit(nogil=True, cache=True)
def _gain_block(block, n_frames, targets, cur, coef):
    g = cur[0]
    for n in range(n_frames):
        g += (targets[0] * targets[1] - g) * coef     # mix x on, smoothed
        if abs(targets[0] * targets[1] - g) < 1e-6:
            g = targets[0] * targets[1]
        if g != 0.0:
            for c in range(2):
                block[n, c] = np.float32(block[n, c] * (1.0 - 0.5 * g))
    cur[0] = g
    return g != 0.0

class HalfGain(Effect):
    name = "halfgain"
    description = "cuts the level by up to half"
    params = {"mix": Param(0.0, 1.0, 0.5, "0..1", "how much of the cut (1: half the level)")}

    def __init__(self, sample_rate, max_block_frames):
        super().__init__(sample_rate, max_block_frames)
        self.cur = np.zeros(1)
        self.coef = 1.0 - np.exp(-1.0 / (0.005 * sample_rate))

    def reset(self):
        self.cur[:] = 0.0

    def process(self, block, n_frames, params, frames_per_beat):
        return _gain_block(block, n_frames, params, self.cur, self.coef)
'''


def test_third_party_effect_from_an_entry_point_plays_by_name(tmp_path, music_track, caplog):
    """A package written to tmp_path (module + dist-info with entry_points.txt), put on sys.path: the engine
    finds its effect by name and plays it, with no change to the engine; a broken entry point beside it is a
    one-line warning naming it."""
    (tmp_path / "ate_halfgain.py").write_text(textwrap.dedent(PLUGIN))
    info = tmp_path / "ate_halfgain-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: ate-halfgain\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text("[ate.effects]\nhalfgain = ate_halfgain:HalfGain\n"
                                           "broken = ate_no_such_module:Nothing\n")
    sys.path.insert(0, str(tmp_path))
    try:
        with caplog.at_level(logging.WARNING, logger="ate.plugins"):
            engine = playing_engine([music_track], *fx(0, 0, "halfgain", mix=1.0))
            found = discover()
        plain = playing_engine([music_track])
        a, b = render_taps(engine, SR)[0], render_taps(plain, SR)[0]
    finally:
        sys.path.remove(str(tmp_path))
        sys.modules.pop("ate_halfgain", None)
    assert "ate-halfgain 1.0" in found["halfgain"].source
    assert "broken" not in found
    warned = [r.getMessage() for r in caplog.records if "broken" in r.getMessage()]
    assert len(warned) == 1 and "ate_no_such_module" in warned[0] and "\n" not in warned[0]
    settled = slice(SR // 10, None)                 # after the 5 ms glide in
    assert np.abs(b[settled]).max() > 0.1
    np.testing.assert_allclose(a[settled], 0.5 * b[settled], rtol=1e-5, atol=1e-7)
    assert engine.state()["decks"][0]["fx"][0]["effect"] == "halfgain"


# --------------------------------------------------------------------------- the TUI


def test_tui_keys_put_an_effect_in_slot_1_and_the_deck_shows_it():
    """The TUI against a real engine over the real protocol: o cycles slot 1's effect, J/j move its mix, O
    switches it off; the deck's flags line shows it."""
    import asyncio
    import time

    from controllers.client import EngineClient
    from controllers.server import ProtocolServer
    from tui.app import AteApp
    from tui.widgets import format_fx

    engine = Engine(n_decks=2)
    server = ProtocolServer(engine, endpoint="tcp://127.0.0.1:*", pub_endpoint="tcp://127.0.0.1:*", state_hz=30)
    client = EngineClient(server.endpoint, server.pub_endpoint)

    async def until(pilot, predicate, what):
        deadline = time.monotonic() + 10.0
        while not predicate():
            assert time.monotonic() < deadline, f"gave up waiting for {what}"
            engine.render(256)
            await pilot.pause(0.01)

    async def scenario() -> None:
        app = AteApp(client, n_decks=2)
        flags = lambda: str(app.deck_views[0].query_one(".deck-flags").render())  # noqa: E731
        async with app.run_test(size=(140, 44)) as pilot:
            await until(pilot, lambda: app.client.state is not None, "the first state")
            assert "FX" not in flags()
            await pilot.press("o")
            await until(pilot, lambda: engine.decks[0].fx[0] is not None, "echo in slot 1")
            assert engine.decks[0].fx[0].name == "echo"
            await until(pilot, lambda: "FX 1:echo 50%" in flags(), "the echo shown")
            await pilot.press("J", "J")                   # two quick presses: two steps
            await until(pilot, lambda: engine.decks[0].fx[0]["fx0.mix"] == pytest.approx(0.7), "mix 70 %")
            await pilot.press("j")
            await until(pilot, lambda: "1:echo 60%" in flags(), "mix 60 % shown")
            await pilot.press("O")
            await until(pilot, lambda: not engine.decks[0].fx_on[0], "slot 1 off")
            await pilot.press("o")
            await until(pilot, lambda: getattr(engine.decks[0].fx[0], "name", "") == "reverb", "reverb in slot 1")
            assert app.status.error == ""

    try:
        asyncio.run(scenario())
    finally:
        client.close()
        server.close()
    off = format_fx({"fx": [{"slot": 0, "effect": "", "on": True, "params": {}, "ringing": True},
                            {"slot": 1, "effect": "flanger", "on": False, "params": {"mix": 0.25}}]})
    assert str(off) == "  FX 1:~ 2:flan 25%"


# --------------------------------------------------------------------------- control-surface plugins

SURFACE = '''
"""A third-party control surface: starts a deck and steps its volume down on every beat it hears."""
import threading
from controllers.surfaces import Surface

class BeatBot(Surface):
    name = "beatbot"
    description = "plays a deck and turns it down a step on every beat"
    options = {"deck": "engine deck to drive", "step": "volume step per beat"}
    positional = "deck"

    def __init__(self, connect, options):
        super().__init__(connect, options)
        self.deck = int(options.get("deck", "0"))
        self.step = float(options.get("step", "0.1"))
        self.client = connect()
        self.beats = []
        reply = self.client.request({"cmd": "play", "deck": self.deck})
        if not reply["ok"]:
            raise RuntimeError(reply["error"])
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self):
        while not self._stop.is_set():
            for beat in self.client.poll(0.02):
                self.beats.append(beat["beat"])
                volume = max(0.0, 1.0 - self.step * len(self.beats))
                self.client.post({"cmd": "set", "deck": self.deck, "param": "volume", "value": volume})

    def close(self):
        self._stop.set()
        self._thread.join()
        self.client.close()
'''


def test_third_party_surface_from_an_entry_point_drives_a_real_engine(tmp_path, music_track, capsys):
    """A surface package in tmp_path, found through ``ate.controllers``: started from a --surface spec, it drives
    an engine served on loopback over the real protocol (play, then a volume step per beat from the beat
    stream), closes cleanly, and ``ate plugins`` lists it with its source; bad specs are one-line errors."""
    import time

    from ate.cli import main
    from controllers.client import EngineClient
    from controllers.server import ProtocolServer
    from controllers.surfaces import SurfaceError, start_surface

    (tmp_path / "ate_beatbot.py").write_text(textwrap.dedent(SURFACE))
    info = tmp_path / "ate_beatbot-0.2.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: ate-beatbot\nVersion: 0.2\n")
    (info / "entry_points.txt").write_text("[ate.controllers]\nbeatbot = ate_beatbot:BeatBot\n"
                                           "nobot = ate_beatbot:NoSuchClass\n")
    sys.path.insert(0, str(tmp_path))
    engine = Engine(n_decks=2)
    engine.load(1, music_track)
    server = ProtocolServer(engine, endpoint="tcp://127.0.0.1:*", pub_endpoint="tcp://127.0.0.1:*", state_hz=30)
    try:
        for bad, why in (("beatbot:1,speed=3", "unknown option(s) speed"), ("beatbot:deck=1,2", "deck given twice"),
                         ("robot", "unknown control surface 'robot'")):
            with pytest.raises(SurfaceError, match=why.replace("(", r"\(").replace(")", r"\)")):
                start_surface(bad, lambda: None)
        surface = start_surface("beatbot:1,step=0.25",
                                lambda: EngineClient(server.endpoint, server.pub_endpoint))
        deadline = time.monotonic() + 20.0
        while engine.decks[1].params["volume"] > 0.0 and time.monotonic() < deadline:
            engine.render(SR // 20)
            time.sleep(0.01)
        assert engine.decks[1].playing
        assert engine.decks[1].params["volume"] == 0.0 and len(surface.beats) >= 4
        assert surface.beats == sorted(surface.beats)
        surface.close()
        assert not surface._thread.is_alive()
        assert main(["plugins", "--json"]) == 0
        report = json.loads(capsys.readouterr().out)
    finally:
        server.close()
        sys.path.remove(str(tmp_path))
        sys.modules.pop("ate_beatbot", None)
    surfaces = {s["name"]: s for s in report["surfaces"]}
    assert "ate-beatbot 0.2" in surfaces["beatbot"]["source"] and surfaces["beatbot"]["options"]["step"]
    assert "midi" in surfaces and {"echo", "reverb", "flanger", "filter"} <= {e["name"] for e in report["effects"]}
    assert any("nobot" in w and "\n" not in w for w in report["warnings"])
    # And the CLI refuses a bad spec before starting any engine.
    assert main(["engine", "--surface", "robot:1"]) == 2
    assert "unknown control surface 'robot'" in capsys.readouterr().err


def test_bench_effects_quick():
    """``ate bench effects --quick``: the figures are there and the quality checks hold."""
    from engine.bench_effects import bench_effects

    r = bench_effects(quick=True)
    for name, e in r["effects"].items():
        for block in ("128", "256", "512"):
            assert 0.0 < e["cost"][block]["median_us"] <= e["cost"][block]["p99_us"], name
        assert e["quality"]["mix0_bit_identical"], name
        assert e["quality"]["tail_to_minus90db_s"] < 30.0, name
    q = r["effects"]
    assert q["echo"]["quality"]["delay_error_frames_max"] < 1.0
    assert q["echo"]["quality"]["decay_per_repeat_measured"] == pytest.approx([0.6] * 3, rel=0.01)
    assert q["reverb"]["quality"]["rt60_s_at_2.5"] == pytest.approx(2.5, rel=0.1)
    assert q["flanger"]["quality"]["period_beats_measured"] == pytest.approx(4.0, rel=0.02)
    assert q["filter"]["quality"]["lp_minus3db_hz"] == pytest.approx(1000.0, rel=0.03)
    assert r["engine"]["no_fx"]["median_ms"] > 0.0
    assert r["sox"].get("echo") or "error" in r["sox"]
