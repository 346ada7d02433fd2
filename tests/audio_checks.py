"""Checks on played audio shared by the live tests: xruns judged fairly, kick onsets, flams."""

from __future__ import annotations

import numpy as np
import pytest

KICK_HOP = 11
"""Frames per point of the kick envelope (0.25 ms at 44.1 kHz)."""


def check_xruns(report: dict, jack, block_frames: int, sample_rate: int = 44100, since_driver_xruns: int = 0,
                offline_s: np.ndarray | None = None) -> None:
    """Zero xruns; or, when this shared machine was too busy to judge, an expected failure that says so.

    An xrun is the engine's when its work was late: with ``offline_s`` (the same blocks' CPU time offline),
    when some callback in the window before the flag (``xrun_cpu_ms``) cost 80 % of a block both live and
    offline (noise seldom strikes the same block twice; work that is too slow is slow every time). Without
    it (commands arriving live), when JACK's own dummy driver thread did not wake late (it logs that, and no
    client can cause it) or a callback's CPU time reached 80 % of the block. Any xrun of the engine's fails.
    """
    if report["xruns"] == 0:
        return
    block_ms = 1000.0 * block_frames / sample_rate
    driver_late = jack.xruns_logged()["driver"] - since_driver_xruns
    detail = (f"{report['xruns']} xruns at callbacks {report['xrun_callbacks_at'][:8]} (window CPU ms "
              f"{report['xrun_cpu_ms'][:8]}), callback CPU ms {report['cpu_ms']}, wall ms {report['cost_ms']}, "
              f"JACK driver late {driver_late} times")
    if offline_s is not None:
        offline_ms = [1e3 * offline_s[max(i - 2, 0):i + 1].max() for i in report["xrun_callbacks_at"]]
        work_ms = [min(live, off) for live, off in zip(report["xrun_cpu_ms"], offline_ms)]
        detail += f", the same blocks offline {np.round(offline_ms, 3).tolist()} ms"
        assert max(work_ms) < 0.8 * block_ms, detail
    else:
        assert driver_late > 0 and report["cpu_ms"]["max"] < 0.8 * block_ms, detail
    pytest.xfail(f"machine too busy to judge: {detail}")


def kick_flux(audio: np.ndarray, sample_rate: int = 44100) -> np.ndarray:
    """Rise of the low band's (< 150 Hz) level in dB, one point every :data:`KICK_HOP` frames: kicks are its peaks."""
    from scipy.signal import butter, sosfilt

    mono = audio.mean(axis=1) if audio.ndim == 2 else audio
    low = sosfilt(butter(4, 150.0, "low", fs=sample_rate, output="sos"), mono.astype(np.float64))
    window = np.hanning(int(0.004 * sample_rate))
    level_db = 10.0 * np.log10(np.convolve(low ** 2, window / window.sum(), mode="same")[::KICK_HOP] + 1e-10)
    # Rises in dB: a kick's attack is tens of dB in a few ms; a fader being ridden is a fraction of a dB.
    return np.maximum(np.diff(level_db, prepend=level_db[:1]), 0.0)


def kick_profile(flux: np.ndarray, period_frames: float, start_s: float, stop_s: float,
                 sample_rate: int = 44100) -> np.ndarray:
    """The flux between two times folded at the beat period: where in the beat the kicks fall, one bin per hop.

    Folding many beats makes the kicks' common phase stand out from everything else; two decks whose kicks
    miss each other move it (by about the miss), and a deck that drifts moves it from window to window.
    """
    idx = np.arange(int(start_s * sample_rate / KICK_HOP), min(int(stop_s * sample_rate / KICK_HOP), len(flux)))
    n_bins = int(period_frames / KICK_HOP)
    bins = ((idx * KICK_HOP) % period_frames / KICK_HOP).astype(int)
    return np.bincount(np.minimum(bins, n_bins - 1), weights=flux[idx], minlength=n_bins)


def kick_phase_ms(flux: np.ndarray, period_frames: float, start_s: float, stop_s: float,
                  sample_rate: int = 44100) -> float:
    """The peak of :func:`kick_profile`, ms into the beat."""
    profile = kick_profile(flux, period_frames, start_s, stop_s, sample_rate)
    return float(np.argmax(profile)) * KICK_HOP / sample_rate * 1000.0


def profile_lag_ms(reference: np.ndarray, profile: np.ndarray, sample_rate: int = 44100) -> float:
    """How far ``profile`` sits after ``reference`` (two :func:`kick_profile` of one period), ms, within ±½ beat.

    By circular cross-correlation of the whole shapes, not their peaks: a kick's attack can rise in two steps
    a few ms apart (click, then body), and which step folds higher flips with what else plays, so two peaks
    can differ by the width of the attack while the kicks coincide.
    """
    n = len(reference)
    xcorr = np.fft.irfft(np.conj(np.fft.rfft(reference - reference.mean())) * np.fft.rfft(profile - profile.mean()), n)
    lag = int(np.argmax(xcorr))
    if lag > n // 2:
        lag -= n
    return lag * KICK_HOP / sample_rate * 1000.0
