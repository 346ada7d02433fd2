"""BS.1770-4 loudness, EBU 3342 loudness range and Annex 2 true peak."""

from __future__ import annotations

import math

import numpy as np
import pytest

from prep.loudness import (
    LOUDNESS_FLOOR_LUFS,
    PEAK_FLOOR_DB,
    integrated_loudness_lufs,
    k_weighting_sos,
    loudness_range_lu,
    oversampling_factor,
    sample_peak_dbfs,
    true_peak_dbtp,
    true_peak_full,
)


def _sine(freq_hz: float, seconds: float, sr: int, peak: float = 1.0, phase: float = 0.0) -> np.ndarray:
    t = np.arange(int(round(seconds * sr))) / sr
    return (peak * np.sin(2 * np.pi * freq_hz * t + phase)).astype(np.float32)


def _fade(x: np.ndarray, sr: int, seconds: float = 0.05) -> np.ndarray:
    """Raised-cosine fade in and out, so that a test tone has no edge transients."""
    n = int(seconds * sr)
    ramp = (0.5 - 0.5 * np.cos(np.linspace(0.0, np.pi, n))).astype(np.float32)
    y = x.copy()
    y[:n] *= ramp if y.ndim == 1 else ramp[:, None]
    y[-n:] *= ramp[::-1] if y.ndim == 1 else ramp[::-1, None]
    return y


@pytest.fixture(scope="module")
def music() -> np.ndarray:
    """About 30 s of generated stereo music at 44.1 kHz, with drums and a breakdown."""
    synth = pytest.importorskip("prep.synth")
    spec = synth.TrackSpec(bpm=128, tonic=4, mode="minor", seed=7,
                           structure=[["intro", 4], ["chorus", 8], ["breakdown", 4]])
    return synth.generate(spec).mix


# --------------------------------------------------------------------------- K-weighting & integrated loudness

def test_k_weighting_matches_bs1770_table_at_48k():
    sos = k_weighting_sos(48000)
    np.testing.assert_allclose(sos[0, :3], [1.53512485958697, -2.69169618940638, 1.19839281085285], atol=1e-9)
    np.testing.assert_allclose(sos[0, 3:], [1.0, -1.69065929318241, 0.73248077421585], atol=1e-9)
    np.testing.assert_allclose(sos[1, :3], [1.0, -2.0, 1.0], atol=0)
    np.testing.assert_allclose(sos[1, 3:], [1.0, -1.99004745483398, 0.99007225036621], atol=1e-9)


@pytest.mark.parametrize("sr", [44100, 48000, 96000])
def test_reference_tone_one_channel_reads_minus_3_01(sr):
    # BS.1770-4: a 0 dBFS 1 kHz sine on one channel reads -3.01 LKFS.
    assert integrated_loudness_lufs(_sine(997.0, 5.0, sr), sr) == pytest.approx(-3.01, abs=0.05)


@pytest.mark.parametrize("sr", [44100, 48000])
def test_stereo_sine_levels(sr):
    # EBU Tech 3341 case 1: a -23 dBFS (peak) 1 kHz sine on both channels reads
    # -23.0 LUFS. Each channel alone would read -26.01; the two add 3.01 dB.
    tone = _sine(997.0, 10.0, sr, peak=10 ** (-23 / 20))
    assert integrated_loudness_lufs(np.stack([tone, tone], axis=1), sr) == pytest.approx(-23.0, abs=0.1)
    # Hence a -20 dBFS sine reads -23.0 on one channel and -20.0 on both.
    tone = _sine(997.0, 10.0, sr, peak=10 ** (-20 / 20))
    assert integrated_loudness_lufs(np.stack([tone, np.zeros_like(tone)], axis=1), sr) == pytest.approx(-23.0, abs=0.1)
    assert integrated_loudness_lufs(np.stack([tone, tone], axis=1), sr) == pytest.approx(-20.0, abs=0.1)


def test_agrees_with_pyloudnorm_on_music(music):
    pyln = pytest.importorskip("pyloudnorm")
    ours = integrated_loudness_lufs(music, 44100)
    theirs = pyln.Meter(44100).integrated_loudness(music.astype(np.float64))
    assert ours == pytest.approx(theirs, abs=0.1)
    quiet = music * np.float32(0.1)
    assert integrated_loudness_lufs(quiet, 44100) == pytest.approx(ours - 20.0, abs=0.01)


def test_gating_ignores_a_long_silent_section(music):
    silence = np.zeros((44100 * 40, 2), dtype=np.float32)
    with_gap = np.concatenate([music[: len(music) // 2], silence, music[len(music) // 2:]])
    assert integrated_loudness_lufs(with_gap, 44100) == pytest.approx(integrated_loudness_lufs(music, 44100), abs=0.1)


def test_relative_gate_drops_blocks_more_than_10_lu_down():
    sr = 48000
    loud = _sine(997.0, 10.0, sr, peak=10 ** (-20 / 20))
    very_quiet = _sine(997.0, 10.0, sr, peak=10 ** (-45 / 20))  # 25 LU down: gated away
    # (only the three blocks that straddle the step are partly loud and stay)
    assert integrated_loudness_lufs(np.concatenate([loud, very_quiet]), sr) == pytest.approx(
        integrated_loudness_lufs(loud, sr), abs=0.1)
    near = _sine(997.0, 10.0, sr, peak=10 ** (-25 / 20))  # 5 LU down: kept, pulls the result down
    assert integrated_loudness_lufs(np.concatenate([loud, near]), sr) < integrated_loudness_lufs(loud, sr) - 1.0


def test_silence_and_too_short_input_read_the_floor():
    assert integrated_loudness_lufs(np.zeros((44100 * 3, 2), np.float32), 44100) == LOUDNESS_FLOOR_LUFS
    assert integrated_loudness_lufs(_sine(997.0, 0.3, 44100)[:, None], 44100) == LOUDNESS_FLOOR_LUFS
    assert math.isfinite(integrated_loudness_lufs(np.zeros((0, 2), np.float32), 44100))


# --------------------------------------------------------------------------- loudness range

def test_loudness_range_of_two_levels_10_lu_apart():
    sr = 44100
    rng = np.random.default_rng(3)
    noise = rng.standard_normal(sr * 60).astype(np.float32)
    levels = np.repeat([0.1, 0.1 * 10 ** (-10 / 20)] * 3, sr * 10).astype(np.float32)
    lra = loudness_range_lu(noise * levels, sr)
    assert lra == pytest.approx(10.0, abs=1.0)
    assert loudness_range_lu(noise * np.float32(0.1), sr) < 0.5
    assert loudness_range_lu(np.zeros(sr, np.float32), sr) == 0.0


# --------------------------------------------------------------------------- peaks

def test_sample_peak():
    x = np.array([[0.0, -0.5], [0.25, 0.1]], dtype=np.float32)
    assert sample_peak_dbfs(x) == pytest.approx(20 * math.log10(0.5))
    assert sample_peak_dbfs(np.zeros((10, 2))) == PEAK_FLOOR_DB


def test_true_peak_of_quarter_rate_sine_between_samples():
    sr = 48000
    # fs/4 with phase pi/4: every sample is +-0.707, the waveform peaks at 1.0 in between.
    x = _fade(_sine(sr / 4, 2.0, sr, phase=math.pi / 4), sr)
    assert sample_peak_dbfs(x) == pytest.approx(-3.01, abs=0.01)
    assert true_peak_dbtp(x, sr) == pytest.approx(0.0, abs=0.2)
    assert true_peak_dbtp(np.stack([x, 0.5 * x], axis=1), 44100) == pytest.approx(0.0, abs=0.2)


def test_oversampling_factor_follows_annex_2():
    assert oversampling_factor(44100) == 4 and oversampling_factor(48000) == 4
    assert oversampling_factor(96000) == 2 and oversampling_factor(192000) == 1
    x = _fade(_sine(96000 / 4, 1.0, 96000, phase=math.pi / 4), 96000)
    assert true_peak_dbtp(x, 96000) == pytest.approx(0.0, abs=0.2)  # 2x: the peak sits on a new sample
    assert true_peak_dbtp(x, 192000) == pytest.approx(sample_peak_dbfs(x))


def test_true_peak_never_below_sample_peak(music):
    rng = np.random.default_rng(0)
    signals = [music, rng.standard_normal((20000, 2)).astype(np.float32) * 0.3,
               np.tanh(4 * rng.standard_normal((20000, 2))).astype(np.float32),
               np.array([[1.0, 0.0]], dtype=np.float32)]
    for x in signals:
        assert true_peak_dbtp(x, 44100) >= sample_peak_dbfs(x)
    assert true_peak_dbtp(np.zeros((100, 2), np.float32), 44100) == PEAK_FLOOR_DB


def test_fast_path_equals_full_oversampling(music):
    rng = np.random.default_rng(1)
    clipped = np.clip(rng.standard_normal((30000, 2)) * 0.5, -0.9, 0.9).astype(np.float32)
    bright = _sine(15000.0, 0.5, 44100, peak=0.8, phase=0.3)[:, None] + 0.01 * rng.standard_normal((22050, 1))
    for x in (music, clipped, bright.astype(np.float32)):
        full = true_peak_full(x, 44100)
        assert true_peak_dbtp(x, 44100) == pytest.approx(full, abs=1e-6)
        assert true_peak_dbtp(x, 44100, margin_db=float("inf")) == pytest.approx(full, abs=1e-6)
    assert true_peak_full(music, 44100) > sample_peak_dbfs(music) - 1e-9


def test_true_peak_of_a_six_minute_track_matches_full_oversampling():
    rng = np.random.default_rng(2)
    n = 44100 * 360
    # Music-like: a loud low-frequency body with a little top end, peaking near 0 dBFS.
    body = np.sin(2 * np.pi * 55.0 * np.arange(n) / 44100).astype(np.float32)
    x = np.empty((n, 2), dtype=np.float32)
    x[:, 0] = 0.6 * body + 0.1 * rng.standard_normal(n).astype(np.float32)
    x[:, 1] = 0.6 * body + 0.1 * rng.standard_normal(n).astype(np.float32)
    # Speed belongs to benchmarks; here the region-restricted scan must give
    # exactly what oversampling the whole six minutes gives.
    assert true_peak_dbtp(x, 44100) == pytest.approx(true_peak_full(x, 44100), abs=1e-6)
