"""Whole-track analysis: beat grid, downbeats, key, structure, loudness.

:func:`analyze_audio` is the one entry point the crate pipeline, the CLI and
the benchmarks call. It returns an :class:`Analysis`, whose
:meth:`Analysis.to_dict` is the JSON record stored in the crate and printed by
``ate analyze --json``.

Given the track's stems (drums, bass, vocals, other; from a separator or an
import) the analysis uses each where it is cleanest: meter and downbeats
take kick onsets from the drum stem and chords from the pitched stems, the
key is read from the pitched stems (drums only add noise to chroma), and the
vocals stem gives the vocal regions that mix points avoid. Beats still come
from the mix, which holds every instrument's onsets. Without stems the same
code runs on the mix alone and there are no vocal regions.

Rhythm, key and structure run on a mono 22050 Hz copy (enough bandwidth for
onsets and chroma, half the work); loudness and true peak run on the original
44.1 kHz stereo, as BS.1770 requires.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from prep.audio import SAMPLE_RATE, resample, to_mono
from prep.beats import track_beats
from prep.key import estimate_key
from prep.loudness import integrated_loudness_lufs, true_peak_dbtp
from prep.overview import waveform_overview
from prep.stems import STEM_NAMES
from prep.structure import analyze_structure
from prep.vocals import vocal_activity

ANALYSIS_SR = 22050
"""Sample rate of the mono signal rhythm, key and structure analysis use, in Hz."""

ANALYSIS_VERSION = 3
"""Bumped when results change meaning; the crate re-analyses older rows.
2: stem-aware analysis, vocal regions, per-stem loudness.
3: a steady grid reaches back to a first beat at the very start (its first bar and phrase were lost), and its
   phase and spacing are fitted to the attacks rather than its phase alone."""

MIN_DURATION_S = 8.0
"""Shorter files are rejected: no beat grid or key can be trusted below a few bars."""


@dataclass
class Analysis:
    """What ATE knows about one track. Times in seconds from the file's start.

    ``vocal_regions`` and ``stem_lufs`` exist only when stems were analysed;
    ``overview`` (see :mod:`prep.overview`) is stored beside the record, not in it.
    """

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
    vocal_regions: list[tuple[float, float]] | None = None
    stem_lufs: dict[str, float] | None = None
    overview: np.ndarray | None = field(default=None, repr=False)
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
            "analysed_from": "stems" if self.stem_lufs is not None else "mix",
            "vocal_regions": None if self.vocal_regions is None else [[a, b] for a, b in self.vocal_regions],
            "stem_lufs": None if self.stem_lufs is None else {k: round(v, 2) for k, v in self.stem_lufs.items()},
            **self.extra,
        }


def _analysis_mono(x: np.ndarray) -> np.ndarray:
    return resample(to_mono(x)[:, None], SAMPLE_RATE, ANALYSIS_SR)[:, 0]


def analyze_audio(samples: np.ndarray, path: str = "", stems: np.ndarray | None = None) -> Analysis:
    """Analyse float32 ``(frames, 2)`` audio at :data:`~prep.audio.SAMPLE_RATE`.

    Parameters
    ----------
    samples : np.ndarray
        The track, as returned by :func:`prep.audio.load_audio`.
    path : str
        Recorded in the result; not read.
    stems : np.ndarray, optional
        ``(4, frames, 2)`` float32 in :data:`prep.stems.STEM_NAMES` order, same
        length as ``samples``: switches on the stem-aware analysis.
    """
    duration_s = samples.shape[0] / SAMPLE_RATE
    y = _analysis_mono(samples)
    vocal_regions = stem_lufs = None
    if stems is None:
        grid = track_beats(y, ANALYSIS_SR)
        key = estimate_key(y, ANALYSIS_SR)
        overview = waveform_overview(samples, SAMPLE_RATE)
    else:
        if stems.shape[0] != len(STEM_NAMES) or stems.shape[1] != samples.shape[0]:
            raise ValueError(f"stems of shape {stems.shape} do not match audio of {samples.shape[0]} frames")
        index = {name: i for i, name in enumerate(STEM_NAMES)}
        drums = _analysis_mono(stems[index["drums"]])
        pitched = _analysis_mono(samples - stems[index["drums"]])
        vocals = _analysis_mono(stems[index["vocals"]])
        grid = track_beats(y, ANALYSIS_SR, drums=drums, harmonic=pitched)
        # A rough separation can pull harmonic content into the drum stem
        # (the DSP fallback does, under fast drum and bass): the pitched stems
        # win only when their key is clearer than the mix's.
        key = max(estimate_key(pitched, ANALYSIS_SR), estimate_key(y, ANALYSIS_SR), key=lambda k: k.confidence)
        vocal_regions = vocal_activity(vocals, y, ANALYSIS_SR)
        stem_lufs = {name: integrated_loudness_lufs(stems[i], SAMPLE_RATE) for i, name in enumerate(STEM_NAMES)}
        overview = waveform_overview(stems, SAMPLE_RATE)
    structure = analyze_structure(y, ANALYSIS_SR, grid.beats, grid.downbeats, grid.beats_per_bar, duration_s,
                                  vocal_regions=vocal_regions)
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
        vocal_regions=vocal_regions,
        stem_lufs=stem_lufs,
        overview=overview,
    )
