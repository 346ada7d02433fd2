"""Whole-track analysis: beat grid, downbeats, key, structure, loudness.

:func:`analyze_audio` is the one entry point the crate pipeline, the CLI and
the benchmarks call. It works on the mix (the stem-aware path arrives with
separation) and returns an :class:`Analysis`, whose :meth:`Analysis.to_dict`
is the JSON record stored in the crate and printed by ``ate analyze --json``.

Rhythm, key and structure run on a mono 22050 Hz copy (enough bandwidth for
onsets and chroma, half the work); loudness and true peak run on the original
44.1 kHz stereo, as BS.1770 requires.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from prep.audio import SAMPLE_RATE, load_audio, resample, to_mono
from prep.beats import track_beats
from prep.key import estimate_key
from prep.loudness import integrated_loudness_lufs, true_peak_dbtp
from prep.structure import analyze_structure

ANALYSIS_SR = 22050
"""Sample rate of the mono signal rhythm, key and structure analysis use, in Hz."""

ANALYSIS_VERSION = 1
"""Bumped when results change meaning; the crate re-analyses older rows."""

MIN_DURATION_S = 8.0
"""Shorter files are rejected: no beat grid or key can be trusted below a few bars."""


@dataclass
class Analysis:
    """What ATE knows about one track. Times in seconds from the file's start."""

    duration: float
    bpm: float
    beats: np.ndarray
    downbeats: np.ndarray
    beats_per_bar: int
    steady_tempo: bool
    key: str
    camelot: str
    key_confidence: float
    segments: list[dict]
    phrases: list[dict]
    mix_in: float
    mix_out: float
    lufs: float
    true_peak_dbtp: float
    path: str = ""
    extra: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        """JSON-ready record: times rounded to 0.1 ms, levels to 0.01 dB."""
        return {
            "path": self.path,
            "version": ANALYSIS_VERSION,
            "duration": round(self.duration, 4),
            "bpm": round(self.bpm, 3),
            "steady_tempo": self.steady_tempo,
            "beats_per_bar": self.beats_per_bar,
            "beats": [round(float(t), 4) for t in self.beats],
            "downbeats": [round(float(t), 4) for t in self.downbeats],
            "key": self.key,
            "camelot": self.camelot,
            "key_confidence": round(self.key_confidence, 3),
            "segments": self.segments,
            "phrases": self.phrases,
            "mix_in": round(self.mix_in, 4),
            "mix_out": round(self.mix_out, 4),
            "lufs": round(self.lufs, 2),
            "true_peak_dbtp": round(self.true_peak_dbtp, 2),
            **self.extra,
        }


def analyze_audio(samples: np.ndarray, path: str = "") -> Analysis:
    """Analyse float32 ``(frames, 2)`` audio at :data:`~prep.audio.SAMPLE_RATE`.

    Parameters
    ----------
    samples : np.ndarray
        The track, as returned by :func:`prep.audio.load_audio`.
    path : str
        Recorded in the result; not read.
    """
    duration_s = samples.shape[0] / SAMPLE_RATE
    y = resample(to_mono(samples)[:, None], SAMPLE_RATE, ANALYSIS_SR)[:, 0]
    grid = track_beats(y, ANALYSIS_SR)
    key = estimate_key(y, ANALYSIS_SR)
    structure = analyze_structure(y, ANALYSIS_SR, grid.beats, grid.downbeats, grid.beats_per_bar, duration_s)
    s = structure.to_dict()
    return Analysis(
        duration=duration_s,
        bpm=grid.bpm,
        beats=grid.beats,
        downbeats=grid.downbeats,
        beats_per_bar=grid.beats_per_bar,
        steady_tempo=grid.steady,
        key=key.name,
        camelot=key.camelot,
        key_confidence=key.confidence,
        segments=s["segments"],
        phrases=s["phrases"],
        mix_in=structure.mix_in,
        mix_out=structure.mix_out,
        lufs=integrated_loudness_lufs(samples, SAMPLE_RATE),
        true_peak_dbtp=true_peak_dbtp(samples, SAMPLE_RATE),
        path=path,
    )


def analyze_file(path: str | Path) -> Analysis:
    """Decode ``path`` and analyse it; raises :class:`prep.audio.AudioError` on bad input."""
    samples = load_audio(path, min_duration_s=MIN_DURATION_S)
    return analyze_audio(samples, path=str(path))
