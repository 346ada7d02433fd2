"""What a deck plays: a track's stems in memory with its beat grid and loudness.

:class:`DeckTrack` is built off the audio thread (decoding, reading a ``.stems``
file, resampling) and handed to the engine whole; the audio thread only swaps a
reference. Stems are kept as int16 with the per-track scale of the ``.stems``
format (half the memory of float32: a 6-minute four-stem track is 254 MB); the
stretcher converts the frames it reads. A track without stems is loaded as one
"stem", its mix.

Loaders
-------
- :func:`track_from_crate` reads a prepared crate: stems (or the decoded mix),
  the analysis' beat grid, cue points and loudness.
- :func:`track_from_arrays` takes float stems and beat times, e.g. from
  :mod:`prep.synth` (tests, benchmarks).
- :func:`track_from_file` decodes any audio file and analyses it on the spot
  (a few seconds per minute of audio) when it is not in a crate.
- :func:`track_from_synth` generates a track with :mod:`prep.synth` from a
  spec string such as ``"synth:bpm=124,seed=3,bars=32"`` (its true grid and
  stems): the built-in material of demos, scripts and tests.
- :func:`load_track` picks one of these from a script's or a command's
  ``track`` / ``crate`` fields.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from engine.grid import check_grid
from prep.audio import SAMPLE_RATE, AudioError, load_audio, to_stereo
from prep.stems import STEM_NAMES, quantize_stems, read_stem_file_int16

__all__ = ["DeckTrack", "track_from_arrays", "track_from_crate", "track_from_file", "track_from_synth", "load_track",
           "TrackLoadError", "REFERENCE_LUFS"]

REFERENCE_LUFS = -18.0
"""Loudness every deck is brought to by auto-gain, LUFS (ReplayGain 2's reference; leaves headroom for two
decks playing together before the limiter)."""


class TrackLoadError(Exception):
    """A track could not be loaded: the message is one line naming the file and the reason."""


WAVEFORM_RATE_HZ = 50.0
"""Points per second of :meth:`DeckTrack.waveform` (20 ms: a beat at 174 BPM is 17 points)."""


@dataclass
class DeckTrack:
    """A track ready for a deck.

    Attributes
    ----------
    stems : np.ndarray
        int16 ``(n_stems, frames, 2)`` at the engine's sample rate: 4 stems in
        :data:`prep.stems.STEM_NAMES` order, or 1 (the mix).
    scale : float
        Float sample value = ``stems / (32768 * scale)``.
    beats_frames : np.ndarray
        float64 beat positions, source frames, strictly increasing (>= 2).
    downbeats_frames : np.ndarray
        float64 downbeat positions, source frames (may be empty).
    lufs : float
        Integrated loudness of the mix, LUFS (nan when unknown: no auto-gain).
    cue_frames : float
        Default cue point (the analysis' mix-in point, else the first beat), source frames.
    title : str
        What to show.
    path : str
        Where it came from.
    key, camelot : str
        The analysis' key ("A minor") and Camelot code ("8A"); empty when unknown.
    phrases_frames : np.ndarray
        float64 phrase starts (the analysis' 8- or 16-bar phrases), source frames (may be empty).
    """

    stems: np.ndarray
    scale: float
    beats_frames: np.ndarray
    downbeats_frames: np.ndarray = field(default_factory=lambda: np.zeros(0))
    lufs: float = math.nan
    cue_frames: float = 0.0
    title: str = ""
    path: str = ""
    key: str = ""
    camelot: str = ""
    phrases_frames: np.ndarray = field(default_factory=lambda: np.zeros(0))
    _waveforms: dict = field(default_factory=dict, repr=False, compare=False)

    @property
    def frames(self) -> int:
        return int(self.stems.shape[1])

    @property
    def n_stems(self) -> int:
        return int(self.stems.shape[0])

    @property
    def stem_names(self) -> tuple[str, ...]:
        return STEM_NAMES if self.n_stems == len(STEM_NAMES) else ("mix",)

    @property
    def bpm(self) -> float:
        """Median tempo of the grid, beats per minute at the engine's sample rate."""
        return 60.0 * SAMPLE_RATE / float(np.median(np.diff(self.beats_frames)))

    @property
    def memory_bytes(self) -> int:
        return int(self.stems.nbytes + self.beats_frames.nbytes + self.downbeats_frames.nbytes)

    def summary(self) -> dict:
        """JSON-ready description for replies and state."""
        return {"title": self.title, "path": self.path, "frames": self.frames, "seconds": self.frames / SAMPLE_RATE,
                "bpm": round(self.bpm, 3), "stems": list(self.stem_names),
                "lufs": None if math.isnan(self.lufs) else round(self.lufs, 2), "key": self.key,
                "camelot": self.camelot}

    def waveform(self, rate_hz: float = WAVEFORM_RATE_HZ) -> np.ndarray:
        """Peak level of each stem in windows of ``1 / rate_hz`` seconds, uint8 ``(n_stems, points)``: 255 = full scale.

        Computed once per track (numpy reductions, which release the GIL) and kept.
        """
        cached = self._waveforms.get(rate_hz)
        if cached is None:
            hop = max(1, int(round(SAMPLE_RATE / rate_hz)))
            n = self.frames // hop
            peaks = np.zeros((self.n_stems, n + (self.frames > n * hop)), np.float32)
            for s in range(self.n_stems):
                a = np.abs(self.stems[s, :n * hop].reshape(n, hop * 2)).max(axis=1)
                peaks[s, :n] = a
                if self.frames > n * hop:
                    peaks[s, n] = np.abs(self.stems[s, n * hop:]).max()
            cached = np.clip(np.round(peaks / (32768.0 * self.scale) * 255.0), 0, 255).astype(np.uint8)
            self._waveforms[rate_hz] = cached
        return cached

    def grid(self) -> dict:
        """Beats, downbeats and phrase starts in seconds, for display (JSON-ready).

        Without phrases from an analysis, every 8th downbeat starts one (the common 8-bar phrase).
        """
        phrases = self.phrases_frames if len(self.phrases_frames) else self.downbeats_frames[::8]
        return {"beats_s": (self.beats_frames / SAMPLE_RATE).round(4).tolist(),
                "downbeats_s": (self.downbeats_frames / SAMPLE_RATE).round(4).tolist(),
                "phrases_s": (phrases / SAMPLE_RATE).round(4).tolist(),
                "cue_s": round(self.cue_frames / SAMPLE_RATE, 4)}


def track_from_arrays(stems: np.ndarray, beats_s: np.ndarray, downbeats_s: np.ndarray | None = None,
                      lufs: float = math.nan, cue_s: float | None = None, title: str = "",
                      path: str = "") -> DeckTrack:
    """Build a :class:`DeckTrack` from float stems at 44.1 kHz.

    Parameters
    ----------
    stems : np.ndarray
        float ``(n_stems, frames, 2)`` (4 stems or 1 mix) or ``(frames, 2)`` (a mix).
    beats_s, downbeats_s : np.ndarray
        Beat and downbeat times, seconds.
    lufs : float
        Integrated loudness, LUFS (nan: no auto-gain).
    cue_s : float, optional
        Cue point, seconds (default: the first beat).
    """
    where = path or title or "track"
    x = np.asarray(stems, dtype=np.float32)
    if x.ndim == 2:
        x = x[None]
    if x.ndim != 3 or x.shape[0] not in (1, len(STEM_NAMES)) or x.shape[2] != 2:
        raise TrackLoadError(f"{where}: stems must be (4 or 1, frames, 2), got {x.shape}")
    q, scale, _ = quantize_stems(x)
    beats = check_grid(np.asarray(beats_s, dtype=np.float64) * SAMPLE_RATE, where)
    down = np.asarray(downbeats_s if downbeats_s is not None else [], dtype=np.float64) * SAMPLE_RATE
    cue = float(beats[0]) if cue_s is None else float(cue_s) * SAMPLE_RATE
    return DeckTrack(stems=np.ascontiguousarray(q), scale=float(scale), beats_frames=beats, downbeats_frames=down,
                     lufs=float(lufs), cue_frames=cue, title=title, path=path)


def _from_analysis(stems: np.ndarray, scale: float, analysis: dict, title: str, path: str) -> DeckTrack:
    where = path or title
    try:
        beats = check_grid(np.asarray(analysis["beats"], dtype=np.float64) * SAMPLE_RATE, where)
    except (KeyError, ValueError) as err:
        raise TrackLoadError(f"{where}: no usable beat grid in the analysis ({err})") from None
    down = np.asarray(analysis.get("downbeats") or [], dtype=np.float64) * SAMPLE_RATE
    mix_in = analysis.get("mix_in")
    cue = float(mix_in) * SAMPLE_RATE if mix_in is not None else float(beats[0])
    lufs = analysis.get("lufs")
    phrases = np.asarray([p["start"] for p in analysis.get("phrases") or [] if "start" in p], np.float64)
    return DeckTrack(stems=stems, scale=scale, beats_frames=beats, downbeats_frames=down,
                     lufs=math.nan if lufs is None else float(lufs), cue_frames=cue, title=title, path=path,
                     key=analysis.get("key") or "", camelot=analysis.get("camelot") or "",
                     phrases_frames=phrases * SAMPLE_RATE)


def track_from_crate(crate_dir: str | Path, query: str, use_stems: bool = True) -> DeckTrack:
    """Load a prepared track from a crate.

    Parameters
    ----------
    crate_dir : str or Path
        The crate folder (its database is ``CRATE/.ate/crate.db``).
    query : str
        Track path, content-hash prefix or title (as :meth:`prep.crate.Crate.find_tracks`).
    use_stems : bool
        Load the stored stems when there are some (else the decoded mix).
    """
    from prep.crate import Crate, TrackNotFound, default_db_path

    db = default_db_path(Path(crate_dir))
    if not db.exists():
        raise TrackLoadError(f"{crate_dir}: not a prepared crate (no {db}); run `ate prep {crate_dir}` first")
    with Crate(db, readonly=True, root=crate_dir) as crate:
        try:
            track = crate.find_track(query)
        except TrackNotFound as err:
            raise TrackLoadError(str(err)) from None
        analysis = crate.get_analysis(track["id"]) or {}
        stems_info = crate.get_stems(track["id"]) if use_stems else None
    title = track.get("title") or Path(track["abs_path"]).stem
    if stems_info is not None and stems_info["format"] == "ate-stems" and Path(stems_info["path"]).exists():
        try:
            q, scale, _ = read_stem_file_int16(stems_info["path"])
        except Exception as err:  # a damaged stems file falls back to the mix, with the reason kept
            raise TrackLoadError(f"{stems_info['path']}: {err}") from None
        return _from_analysis(q, scale, analysis, title, track["abs_path"])
    try:
        mix = load_audio(track["abs_path"])
    except AudioError as err:
        raise TrackLoadError(str(err)) from None
    q, scale, _ = quantize_stems(to_stereo(mix)[None])
    return _from_analysis(q, scale, analysis, title, track["abs_path"])


def track_from_file(path: str | Path) -> DeckTrack:
    """Decode and analyse an audio file that is not in a crate (the mix as a single stem)."""
    from prep.analyze import analyze_audio

    try:
        mix = to_stereo(load_audio(path))
    except AudioError as err:
        raise TrackLoadError(str(err)) from None
    analysis = analyze_audio(mix, str(path)).to_dict()
    q, scale, _ = quantize_stems(mix[None])
    return _from_analysis(q, scale, analysis, Path(path).stem, str(path))


_SYNTH_KEYS = {"bpm": float, "seed": int, "bars": int, "beats_per_bar": int, "tonic": int, "mode": str, "style": str,
               "drift": float}


def track_from_synth(spec: str) -> DeckTrack:
    """Generate a four-stem track with its true beat grid.

    Parameters
    ----------
    spec : str
        ``"synth:"`` followed by comma-separated ``key=value`` pairs: ``bpm``
        (124), ``seed`` (0), ``bars`` (32: 4 intro, the rest verse),
        ``beats_per_bar`` (4), ``tonic`` (0-11), ``mode`` (major/minor),
        ``style`` (a :data:`prep.synth.STYLES` name), ``drift`` (BPM of linear
        tempo change over the track).
    """
    from prep.loudness import integrated_loudness_lufs
    from prep.synth import TrackSpec, generate

    body = spec[len("synth:"):] if spec.startswith("synth:") else spec
    values: dict = {}
    for item in filter(None, (p.strip() for p in body.split(","))):
        key, sep, raw = item.partition("=")
        if not sep or key not in _SYNTH_KEYS:
            raise TrackLoadError(f"{spec}: bad item {item!r}; use key=value with keys {', '.join(_SYNTH_KEYS)}")
        try:
            values[key] = _SYNTH_KEYS[key](raw)
        except ValueError:
            raise TrackLoadError(f"{spec}: {key} wants a {_SYNTH_KEYS[key].__name__}, got {raw!r}") from None
    bars = values.pop("bars", 32)
    drift = values.pop("drift", 0.0)
    if not 2 <= bars <= 512:
        raise TrackLoadError(f"{spec}: bars must be 2..512, got {bars}")
    intro = min(4, bars // 2)
    try:
        g = generate(TrackSpec(structure=[("intro", intro), ("verse", bars - intro)], tempo_drift_bpm=drift,
                               title=spec, **values))
    except ValueError as err:
        raise TrackLoadError(f"{spec}: {err}") from None
    from prep.key import camelot

    stems = np.stack([g.stems[name] for name in STEM_NAMES])
    track = track_from_arrays(stems, g.truth.beats, g.truth.downbeats,
                              lufs=integrated_loudness_lufs(g.mix, SAMPLE_RATE), title=spec, path=spec)
    track.key, track.camelot = g.truth.key, camelot(g.truth.tonic, g.truth.mode)
    return track


def load_track(track: str, crate: str | None = None) -> DeckTrack:
    """The track a ``load`` command names: ``synth:...``, a crate track (with ``crate``), or an audio file."""
    if track.startswith("synth:"):
        return track_from_synth(track)
    if crate:
        return track_from_crate(crate, track)
    return track_from_file(track)
