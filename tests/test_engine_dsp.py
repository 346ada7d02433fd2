"""Tests of engine.dsp (EQ, filter, limiter, gain helpers), measured on the audio they produce."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.signal import resample_poly

from engine.dsp import DjEq, DjFilter, GainRamp, Limiter, crossfader_gains
from prep.synth import TrackSpec, generate

SR = 44100
CEILING = 10.0 ** (-1.0 / 20.0)


def _tone(freq_hz: float, seconds: float = 0.6, amp: float = 0.5) -> np.ndarray:
    t = np.arange(int(seconds * SR)) / SR
    return np.repeat((amp * np.sin(2 * np.pi * freq_hz * t))[:, None], 2, axis=1).astype(np.float32)


def _run(obj, x: np.ndarray, block_frames: int = 256, **params) -> np.ndarray:
    """Process a copy of ``x`` block by block with fixed parameters."""
    y = x.copy()
    for s in range(0, len(y), block_frames):
        obj.process(y[s:s + block_frames], **params)
    return y


def _level_db(y: np.ndarray, x: np.ndarray, skip_s: float = 0.3) -> float:
    """Steady-state RMS of ``y`` relative to ``x``, dB (skipping the filters' settling)."""
    n = int(skip_s * SR)
    return 20 * np.log10(np.sqrt(np.mean(y[n:].astype(np.float64) ** 2)) / np.sqrt(np.mean(x[n:].astype(np.float64) ** 2)))


def _max_step(y: np.ndarray) -> float:
    return float(np.abs(np.diff(y.astype(np.float64), axis=0)).max())


@pytest.fixture(scope="module")
def mix() -> np.ndarray:
    return generate(TrackSpec(bpm=124, style="house", seed=3, structure=[["chorus", 4]])).mix


# --------------------------------------------------------------------------- EQ


def test_eq_flat_at_0db():
    impulse = np.zeros((32768, 2), dtype=np.float32)
    impulse[0] = 1.0
    y = _run(DjEq(), impulse, low_db=0.0, mid_db=0.0, high_db=0.0)
    freqs = np.fft.rfftfreq(len(y), 1 / SR)
    band = (freqs >= 20) & (freqs <= 20000)
    for ch in range(2):
        mag_db = 20 * np.log10(np.abs(np.fft.rfft(y[:, ch].astype(np.float64))))[band]
        assert np.abs(mag_db).max() < 0.1
    # White noise keeps its power (the response is an allpass, not a delay: compare levels, not samples).
    noise = (np.random.default_rng(1).standard_normal((SR, 2)) * 0.2).astype(np.float32)
    assert abs(_level_db(_run(DjEq(), noise, 512, low_db=0.0, mid_db=0.0, high_db=0.0), noise, 0.1)) < 0.1


@pytest.mark.parametrize("band, killed_hz, kept_hz, min_depth_db", [
    ("low", (50.0,), (1000.0, 10000.0), 60.0),
    # LR4 skirts fall 24 dB/octave: a tone 2 octaves from both crossovers keeps ~-40 dB of the other bands.
    ("mid", (1095.0,), (50.0, 10000.0), 36.0),
    ("high", (16000.0,), (50.0, 1000.0), 60.0),
])
def test_eq_kills(band, killed_hz, kept_hz, min_depth_db):
    gains = {"low_db": 0.0, "mid_db": 0.0, "high_db": 0.0, f"{band}_db": -math.inf}
    for f in killed_hz:
        x = _tone(f)
        assert _level_db(_run(DjEq(), x, **gains), x) < -min_depth_db
    for f in kept_hz:
        x = _tone(f)
        assert abs(_level_db(_run(DjEq(), x, **gains), x)) < 0.5
    # -80 dB counts as a kill too
    gains[f"{band}_db"] = -80.0
    x = _tone(killed_hz[0])
    assert _level_db(_run(DjEq(), x, **gains), x) < -min_depth_db


def test_eq_boost_is_6db():
    x = _tone(50.0)
    assert abs(_level_db(_run(DjEq(), x, low_db=+6.0), x) - 6.0) < 0.1
    assert abs(_level_db(_run(DjEq(), x, low_db=+20.0), x) - 6.0) < 0.1  # clamped to +6


def test_eq_gain_changes_every_block_without_clicks():
    rng = np.random.default_rng(2)
    x = _tone(1000.0, 2.0)
    eq = DjEq()
    y = x.copy()
    for i, s in enumerate(range(0, len(y), 128)):
        # the mid band (where the tone is) jumps between +6 dB and kill on every block
        eq.process(y[s:s + 128], rng.uniform(-30, 6), (6.0, -math.inf)[i % 2], rng.choice([-math.inf, 0.0, 6.0]))
    assert np.isfinite(y).all()
    # at most the +6 dB sine's own slope (a gain jump would step by ~1.0)
    assert _max_step(y) < 2.0 * _max_step(x) * 1.05


# --------------------------------------------------------------------------- filter


def test_filter_centre_is_bit_exact():
    x = (np.random.default_rng(3).standard_normal((SR // 2, 2)) * 0.3).astype(np.float32)
    assert np.array_equal(_run(DjFilter(), x, knob=0.0), x)
    # after a move and a return to the centre, bypass is exact again once the knob has settled
    flt = DjFilter()
    _run(flt, x, knob=-0.7)
    _run(flt, x, knob=0.0)
    assert flt.knob == 0.0
    assert np.array_equal(_run(flt, x, knob=0.0), x)


@pytest.mark.parametrize("knob, cut_hz, pass_hz", [(-0.8, 5000.0, 100.0), (0.8, 100.0, 5000.0)])
def test_filter_low_and_high_pass(knob, cut_hz, pass_hz):
    for f, check in ((cut_hz, lambda db: db < -24.0), (pass_hz, lambda db: abs(db) < 1.0)):
        x = _tone(f)
        assert check(_level_db(_run(DjFilter(), x, knob=knob), x))


def test_filter_sweep_is_smooth():
    x = _tone(440.0, 3.0)
    flt = DjFilter()
    y = x.copy()
    n = len(x) // 200
    for i, knob in enumerate(np.linspace(-1.0, 1.0, 200)):
        flt.process(y[i * n:(i + 1) * n], knob)
    assert np.isfinite(y).all()
    assert _max_step(y[:200 * n]) < 1.5 * _max_step(x)
    # Jumps across the whole range in one block (through the centre, where the low-pass hands over to the
    # high-pass) are glided: the resonant sweep past 440 Hz rings up to ~0.8, but nothing steps like a click
    # (a switch between states would step by ~0.5).
    y = x[:SR // 2].copy()
    flt = DjFilter()
    for i, s in enumerate(range(0, len(y), 64)):
        flt.process(y[s:s + 64], (-1.0, 1.0, 0.0, -1.0, 0.0, 1.0)[(i // 20) % 6])
    assert np.isfinite(y).all() and _max_step(y) < 2.5 * _max_step(x)


# --------------------------------------------------------------------------- limiter


def test_limiter_overdriven_mix_respects_ceiling(mix):
    x = (mix * 4).astype(np.float32)  # +12 dB: peaks ~ +11 dBFS
    lim = Limiter(ceiling_db=-1.0)
    y = _run(lim, x, 512)
    assert np.abs(y).max() <= CEILING
    true_peak = np.abs(resample_poly(y.astype(np.float64), 4, 1, axis=0)).max()
    assert 20 * np.log10(true_peak / CEILING) <= 0.3
    # it limits, it does not silence: the loudness is right up against the ceiling
    assert 20 * np.log10(np.abs(y).max() / CEILING) > -0.1
    assert np.sqrt(np.mean(y.astype(np.float64) ** 2)) > 0.25 * CEILING


def test_limiter_block_size_does_not_matter(mix):
    x = (mix[: 4 * SR] * 4).astype(np.float32)
    assert np.array_equal(_run(Limiter(), x, 64), _run(Limiter(), x, 512))


def test_limiter_is_transparent_6db_under_ceiling(mix):
    x = (mix * (CEILING * 10 ** (-6 / 20) / np.abs(mix).max())).astype(np.float32)
    lim = Limiter()
    y = _run(lim, x, 300)
    lat = lim.latency_frames
    assert lat == round(0.0015 * SR)
    assert np.all(y[:lat] == 0.0)
    assert np.array_equal(y[lat:], x[:-lat])
    assert lim.gain == 1.0


def test_limiter_releases_after_a_peak():
    x = _tone(200.0, 3.0, amp=0.1)
    burst = slice(SR // 2, SR // 2 + 441)  # 10 ms at +9.5 dBFS
    x[burst] *= 30.0
    lim = Limiter(release_s=0.15)
    y = x.copy()
    gains = []
    for s in range(0, len(y), 256):
        lim.process(y[s:s + 256])
        gains.append(lim.gain)
    gains = np.array(gains)
    block_s = np.arange(len(gains)) * 256 / SR
    at = lambda seconds: gains[np.searchsorted(block_s, seconds)]  # noqa: E731
    assert at(0.4) == 1.0
    assert at(0.52) < 0.5  # limiting the burst (needs ~ -10.5 dB)
    assert 0.5 < at(0.7) < 0.95  # releasing
    assert at(1.2) > 0.98
    assert np.abs(y).max() <= CEILING
    # fully recovered: the tail is the input, delayed, bit for bit
    lat = lim.latency_frames
    tail = slice(int(2.7 * SR), len(x))
    assert np.array_equal(y[tail], x[tail.start - lat:tail.stop - lat])


# --------------------------------------------------------------------------- gains


def test_crossfader_curves():
    positions = np.linspace(-1.0, 1.0, 101)
    for p in positions:
        l, r = crossfader_gains(p, "power")
        assert l * l + r * r == pytest.approx(1.0, abs=1e-12)
        l, r = crossfader_gains(p, "linear")
        assert l + r == pytest.approx(1.0, abs=1e-12)
    assert crossfader_gains(-1.0, "power") == pytest.approx((1.0, 0.0))
    assert crossfader_gains(1.0, "power") == pytest.approx((0.0, 1.0))
    assert crossfader_gains(0.0, "power") == pytest.approx((math.sqrt(0.5), math.sqrt(0.5)))
    # scratch curve: both full over almost all the travel, each cut at its far edge
    assert crossfader_gains(0.0, "cut") == (1.0, 1.0)
    assert crossfader_gains(0.9, "cut") == (1.0, 1.0)
    assert crossfader_gains(1.0, "cut") == (0.0, 1.0)
    assert crossfader_gains(-1.0, "cut") == (1.0, 0.0)
    with pytest.raises(ValueError):
        crossfader_gains(0.0, "sigmoid")


def test_gain_ramp_is_linear_across_the_block():
    ramp = GainRamp(1.0)
    block = np.ones((100, 2), dtype=np.float32)
    ramp.process(block, 0.0)
    assert block[-1, 0] == 0.0 and block[0, 0] == pytest.approx(0.99)
    assert np.allclose(np.diff(block[:, 1]), -0.01, atol=1e-6)
    block = np.ones((64, 2), dtype=np.float32)
    ramp.process(block, 0.0)
    assert not block.any()


def test_bad_block_is_refused():
    with pytest.raises(ValueError, match="engine/dsp.py"):
        DjEq().process(np.zeros((64, 2), dtype=np.float64))
    with pytest.raises(ValueError, match="engine/dsp.py"):
        Limiter().process(np.zeros((64, 1), dtype=np.float32))
