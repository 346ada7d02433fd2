"""MIDI transcription of a track's stems: basic-pitch on bass, vocals and other, drums to General MIDI drums.

The pitched stems go through Spotify's basic-pitch (Bittner et al., "A
lightweight instrument-agnostic model for polyphonic note transcription and
multipitch estimation", ICASSP 2022): its bundled ONNX model runs on
onnxruntime (:class:`BasicPitch`), and basic-pitch's own note-creation code
turns the model's note, onset and contour activations into notes. Each stem
has its own settings (:data:`STEM_SETTINGS`): the bass a low pitch range and
one note at a time, the vocals a voice's range and one note at a time, the
other stem the full range, polyphonic. The drums go through
:func:`prep.drums_transcribe.transcribe_drums`, from the drum stem, or from the
full mix when the stems are the DSP separator's (its drum stem transcribes
worse than the mix; ``drums_from``).

Then every note is quantized in beat space to the track's beat grid
(:mod:`prep.quantize`; strength 0..1, a grid of 1/4 beat by default, swing
measured from the track's own onsets when asked), and written as one MIDI
file per stem plus ``merged.mid`` (one track per stem, drums on channel 10),
each with the track's tempo map and bar lines (:mod:`prep.midi_file`).

Three ways in, one code path (:func:`transcribe_track`):

- ``ate transcribe TRACK`` separates a file (demucs, else the DSP
  fallback), analyses it and writes the MIDI files;
- ``ate transcribe TRACK --crate CRATE`` uses a prepared track's stems and analysis;
- ``ate prep CRATE --with transcribe`` (the opt-in prep step "transcribe")
  fills ``CRATE/.ate/midi/<hash[:2]>/<hash>/<stem>.mid`` and the crate's
  ``transcriptions`` table.

docs/transcription.md describes the settings and the measured figures.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from prep.audio import SAMPLE_RATE, to_mono
from prep.midi_file import NOTE_DTYPE, make_notes, write_midi
from prep.quantize import STRAIGHT, BeatGrid, measure_swing, parse_division, quantize_times

__all__ = [
    "BASIC_PITCH_DEFAULTS",
    "DRUM_SOURCES",
    "PITCHED_STEMS",
    "STEM_SETTINGS",
    "TRANSCRIBED_STEMS",
    "TRANSCRIBE_VERSION",
    "BasicPitch",
    "StemSettings",
    "TranscribeError",
    "TranscribeOptions",
    "Transcription",
    "grid_from_analysis",
    "model_path",
    "notes_from_activations",
    "register_cli",
    "transcribe_pitched",
    "transcribe_track",
    "transcriptions",
    "write_transcription",
]

TRANSCRIBE_VERSION = 1
"""Version of the transcription the crate stores; a newer one redoes older rows."""

PITCHED_STEMS = ("bass", "vocals", "other")
TRANSCRIBED_STEMS = PITCHED_STEMS + ("drums",)
MERGED = "merged"
DRUM_SOURCES = ("auto", "stem", "mix")


class TranscribeError(Exception):
    """A track cannot be transcribed. ``str(err)`` is one line: ``what: reason``."""


@dataclass(frozen=True)
class StemSettings:
    """How basic-pitch's activations become notes for one stem.

    Attributes
    ----------
    onset_threshold, frame_threshold : float
        basic-pitch's thresholds on its onset and note activations (0..1).
    min_note_s : float
        Shortest note kept, in seconds.
    min_hz, max_hz : float or None
        Pitch range kept, in Hz.
    melodia : bool
        basic-pitch's "melodia trick": also track notes that have no onset peak.
    monophonic : bool
        One note at a time: overlaps are resolved in favour of the note that is louder where both sound.
    """

    onset_threshold: float = 0.5
    frame_threshold: float = 0.3
    min_note_s: float = 0.1277
    min_hz: float | None = None
    max_hz: float | None = None
    melodia: bool = True
    monophonic: bool = False


BASIC_PITCH_DEFAULTS = StemSettings()
"""basic-pitch's own defaults (``basic-pitch`` on the command line), used for the full mix."""

STEM_SETTINGS: dict[str, StemSettings] = {
    # Bass: E1 (41 Hz) .. G4 (392 Hz), one note at a time; a bass note is often a short 16th. The higher
    # frame threshold ends notes where their release starts (offset F-measure 0.53 -> 0.90 on true stems).
    "bass": StemSettings(onset_threshold=0.5, frame_threshold=0.5, min_note_s=0.05, min_hz=38.0, max_hz=400.0,
                         melodia=False, monophonic=True),
    # Vocals: E2 (82 Hz) .. C6 (1 kHz), one voice; high thresholds keep leakage out of a separated stem.
    "vocals": StemSettings(onset_threshold=0.7, frame_threshold=0.6, min_note_s=0.1, min_hz=78.0,
                           max_hz=1100.0, melodia=False, monophonic=True),
    # Other (keys, pads, guitars, leads): the whole range, polyphonic; the melodia trick finds chord
    # notes whose onset peak is masked by the other notes of the chord.
    "other": StemSettings(onset_threshold=0.6, frame_threshold=0.5, min_note_s=0.1, min_hz=None, max_hz=None,
                          melodia=True, monophonic=False),
}
"""Per-stem settings, chosen on generated tracks other than the benchmark's (docs/transcription.md)."""


# --------------------------------------------------------------------------- basic-pitch on onnxruntime

def model_path() -> Path:
    """The ONNX model bundled with the basic-pitch package (icassp_2022/nmp.onnx)."""
    from importlib.util import find_spec

    spec = find_spec("basic_pitch")
    if spec is None or not spec.submodule_search_locations:
        raise TranscribeError("basic-pitch: not installed (scripts/install.sh installs it without its "
                              "tensorflow dependency)")
    path = Path(next(iter(spec.submodule_search_locations))) / "saved_models" / "icassp_2022" / "nmp.onnx"
    if not path.is_file():
        raise TranscribeError(f"{path}: basic-pitch's ONNX model is missing")
    return path


def _note_creation():
    """basic-pitch's note-creation module, imported without its banner of warnings about absent backends."""
    previous = logging.root.manager.disable
    logging.disable(logging.WARNING)
    try:
        from basic_pitch import constants, note_creation
    finally:
        logging.disable(previous)
    return note_creation, constants


class BasicPitch:
    """basic-pitch's model on onnxruntime, loaded once and reused.

    Parameters
    ----------
    path : str or Path, optional
        The ONNX model (default: :func:`model_path`).
    threads : int, optional
        onnxruntime intra-op threads (default: 1, so that prep workers and the engine share cores fairly).
    batch : int
        Windows of two seconds run per model call.
    """

    def __init__(self, path: str | Path | None = None, threads: int | None = 1, batch: int = 8):
        import onnxruntime as ort

        self.path = Path(path) if path is not None else model_path()
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = int(threads)
            options.inter_op_num_threads = 1
        try:
            self.session = ort.InferenceSession(str(self.path), options, providers=["CPUExecutionProvider"])
        except Exception as err:
            raise TranscribeError(f"{self.path}: cannot load the basic-pitch model ({err})") from err
        self.batch = int(batch)
        self.input = self.session.get_inputs()[0].name
        # The model's outputs, named by TensorFlow's export: contour, note, onset.
        self.outputs = ["StatefulPartitionedCall:0", "StatefulPartitionedCall:1", "StatefulPartitionedCall:2"]

    def activations(self, samples: np.ndarray, sr: int = SAMPLE_RATE) -> dict[str, np.ndarray]:
        """Note, onset and contour activations of audio, as basic-pitch's ``run_inference`` makes them.

        Parameters
        ----------
        samples : ndarray
            ``(frames, channels)`` or ``(frames,)`` float audio.
        sr : int
            Its sample rate, in Hz.

        Returns
        -------
        dict
            ``note`` and ``onset`` ``(model frames, 88)``, ``contour`` ``(model frames, 264)``; 86.13 model
            frames a second.
        """
        import soxr

        _, c = _note_creation()
        y = to_mono(samples)
        if sr != c.AUDIO_SAMPLE_RATE:
            y = soxr.resample(y, sr, c.AUDIO_SAMPLE_RATE, quality="HQ")
        y = np.ascontiguousarray(y, dtype=np.float32)
        n_overlap = 30  # frames, as basic-pitch's inference does
        overlap = n_overlap * c.FFT_HOP
        hop = c.AUDIO_N_SAMPLES - overlap
        n = y.size
        padded = np.concatenate([np.zeros(overlap // 2, np.float32), y])
        starts = np.arange(0, padded.size, hop)
        windows = np.zeros((starts.size, c.AUDIO_N_SAMPLES, 1), dtype=np.float32)
        for i, s in enumerate(starts):
            chunk = padded[s:s + c.AUDIO_N_SAMPLES]
            windows[i, :chunk.size, 0] = chunk
        parts: dict[str, list[np.ndarray]] = {"contour": [], "note": [], "onset": []}
        for b in range(0, starts.size, self.batch):
            contour, note, onset = self.session.run(self.outputs, {self.input: windows[b:b + self.batch]})
            parts["contour"].append(contour)
            parts["note"].append(note)
            parts["onset"].append(onset)
        n_frames = int(np.floor(n * c.ANNOTATIONS_FPS / c.AUDIO_SAMPLE_RATE))
        out = {}
        for key, chunks in parts.items():
            x = np.concatenate(chunks)[:, n_overlap // 2:-(n_overlap // 2), :]
            out[key] = x.reshape(-1, x.shape[2])[:n_frames]
        return out


_MODEL: BasicPitch | None = None


def _default_model() -> BasicPitch:
    """One model per process (prep workers load it once)."""
    global _MODEL
    if _MODEL is None:
        _MODEL = BasicPitch()
    return _MODEL


def _monophonic(notes: np.ndarray, note_act: np.ndarray, times_s: np.ndarray) -> np.ndarray:
    """One note at a time: the earlier of two overlapping notes ends where the later starts, unless both
    start within 30 ms (an octave or harmonic ghost): then the louder (mean note activation at its pitch
    over the overlap) stays and the other goes. A note cut to under 50 ms and half its length goes too."""
    if notes.size < 2:
        return notes
    notes = np.sort(notes, order=["onset_s", "pitch"]).copy()
    keep = np.ones(notes.size, dtype=bool)
    fps = 1.0 / (times_s[1] - times_s[0]) if times_s.size > 1 else 86.13

    def strength(i: int, a: float, b: float) -> float:
        fa, fb = int(a * fps), max(int(b * fps), int(a * fps) + 1)
        return float(note_act[fa:fb, notes["pitch"][i] - 21].mean()) if fb <= note_act.shape[0] else 0.0

    last = 0
    for i in range(1, notes.size):
        if not keep[last]:
            last = i
            continue
        a, b = notes["onset_s"][i], min(notes["offset_s"][i], notes["offset_s"][last])
        if a >= notes["offset_s"][last]:
            last = i
            continue
        if a - notes["onset_s"][last] > 0.03 or strength(i, a, b) >= strength(last, a, b):
            # A later onset, or a louder note at the same instant: the earlier note ends here.
            length = notes["offset_s"][last] - notes["onset_s"][last]
            notes["offset_s"][last] = a
            if a - notes["onset_s"][last] < 0.5 * length and a - notes["onset_s"][last] < 0.05:
                keep[last] = False
            last = i
        else:
            keep[i] = False
    return notes[keep]


def notes_from_activations(activations: Mapping[str, np.ndarray], settings: StemSettings) -> np.ndarray:
    """Notes (:data:`NOTE_DTYPE`) from :meth:`BasicPitch.activations`, with basic-pitch's note creation."""
    nc, c = _note_creation()
    frames = np.array(activations["note"], dtype=np.float64)
    onsets = np.array(activations["onset"], dtype=np.float64)
    if frames.shape[0] < 3:
        return np.zeros(0, dtype=NOTE_DTYPE)
    min_len = round(settings.min_note_s * c.AUDIO_SAMPLE_RATE / c.FFT_HOP)
    events = nc.output_to_notes_polyphonic(frames, onsets, onset_thresh=settings.onset_threshold,
                                           frame_thresh=settings.frame_threshold, min_note_len=min_len,
                                           infer_onsets=True, max_freq=settings.max_hz, min_freq=settings.min_hz,
                                           melodia_trick=settings.melodia)
    times_s = nc.model_frames_to_time(frames.shape[0])
    if not events:
        return np.zeros(0, dtype=NOTE_DTYPE)
    start, end, pitch, amplitude = (np.array(col) for col in zip(*events))
    end = np.minimum(end, times_s.size - 1)
    notes = make_notes(times_s[start], times_s[end], pitch, np.clip(amplitude, 0.0, 1.0))
    notes = notes[notes["offset_s"] > notes["onset_s"]]
    if settings.monophonic:
        notes = _monophonic(notes, np.asarray(activations["note"]), times_s)
    return notes


def transcribe_pitched(samples: np.ndarray, stem: str = "other", model: BasicPitch | None = None,
                       settings: StemSettings | None = None, sr: int = SAMPLE_RATE) -> np.ndarray:
    """Notes of a pitched stem (``bass``, ``vocals``, ``other``) with its :data:`STEM_SETTINGS`."""
    model = model or _default_model()
    return notes_from_activations(model.activations(samples, sr), settings or STEM_SETTINGS.get(stem,
                                                                                                 STEM_SETTINGS["other"]))


# --------------------------------------------------------------------------- a whole track

@dataclass(frozen=True)
class TranscribeOptions:
    """What :func:`transcribe_track` does.

    Attributes
    ----------
    stems : tuple of str
        Stems to transcribe, of :data:`TRANSCRIBED_STEMS`.
    strength : float
        Quantize strength, 0 (none) .. 1 (on the grid).
    grid : str
        Grid step as a fraction of a beat: ``"1/4"`` (default, a 16th in 4/4), ``"1/8"``, ``"1/3"`` (triplets)...
    swing : bool
        Measure the track's swing (from all the stems' onsets) and quantize to a grid swung as much.
    drums_from : str
        Where the drums are read: ``"stem"`` (the drum stem), ``"mix"`` (the full mix) or ``"auto"``: the
        mix when the stems come from the DSP separator (whose drum stem loses kicks to the bass stem and
        holds leakage: drums F-measure 0.56-0.76 per class from its stem, 0.78-0.93 from the mix,
        docs/transcription.md), else the stem.
    """

    stems: tuple[str, ...] = TRANSCRIBED_STEMS
    strength: float = 1.0
    grid: str = "1/4"
    swing: bool = False
    drums_from: str = "auto"

    def __post_init__(self) -> None:
        unknown = [s for s in self.stems if s not in TRANSCRIBED_STEMS]
        if unknown or not self.stems:
            raise ValueError(f"stems {','.join(unknown) or '(none)'}: choose from {','.join(TRANSCRIBED_STEMS)}")
        if not 0.0 <= float(self.strength) <= 1.0:
            raise ValueError(f"quantize strength must be within 0..1, got {self.strength}")
        parse_division(self.grid)
        if self.drums_from not in DRUM_SOURCES:
            raise ValueError(f"drums_from {self.drums_from!r}: choose from {', '.join(DRUM_SOURCES)}")

    @property
    def division(self) -> float:
        return float(parse_division(self.grid))

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class Transcription:
    """A track's notes per stem, and how they were made.

    Attributes
    ----------
    notes : dict
        Stem -> :data:`NOTE_DTYPE` notes, quantized as asked (what the MIDI files hold).
    raw : dict
        Stem -> notes before quantization.
    grid : BeatGrid
        The track's beats.
    swing : float
        The swing quantized to (0.5 straight).
    options : TranscribeOptions
    analysis : dict
        The analysis record used (key and segments go into the files).
    drums_from : str
        ``"stem"`` or ``"mix"``: where the drums were read.
    """

    notes: dict[str, np.ndarray]
    raw: dict[str, np.ndarray]
    grid: BeatGrid
    swing: float
    options: TranscribeOptions
    analysis: dict = field(default_factory=dict)
    drums_from: str = "stem"

    @property
    def params(self) -> dict:
        """What the crate stores beside each file: options, swing, settings and versions."""
        return {"options": self.options.to_dict(), "swing": round(float(self.swing), 4),
                "drums_from": self.drums_from,
                "settings": {s: asdict(STEM_SETTINGS[s]) for s in self.notes if s in STEM_SETTINGS},
                "version": TRANSCRIBE_VERSION}


def _as_stem_dict(stems: Mapping[str, np.ndarray] | np.ndarray) -> dict[str, np.ndarray]:
    if isinstance(stems, Mapping):
        return dict(stems)
    from prep.stems import STEM_NAMES

    arr = np.asarray(stems)
    if arr.ndim != 3 or arr.shape[0] != len(STEM_NAMES):
        raise TranscribeError(f"stems shaped {arr.shape}: expected (4, frames, channels) in {STEM_NAMES} order")
    return {name: arr[i] for i, name in enumerate(STEM_NAMES)}


def _quantize(notes: np.ndarray, grid: BeatGrid, division: float, strength: float, swing: float) -> np.ndarray:
    """Onsets onto the grid; each note keeps its length (at least a tenth of a grid step)."""
    if notes.size == 0 or strength == 0.0:
        return notes.copy()
    out = notes.copy()
    onset = quantize_times(notes["onset_s"], grid, division, strength, swing)
    # Lengths are kept in beats, so a note keeps its musical length where the tempo drifts.
    length_beats = np.maximum(grid.beat_of(notes["offset_s"]) - grid.beat_of(notes["onset_s"]), 0.1 / division)
    out["onset_s"] = onset
    out["offset_s"] = grid.time_of(grid.beat_of(onset) + length_beats)
    return np.sort(out, order=["onset_s", "pitch"])


def grid_from_analysis(analysis: Mapping) -> BeatGrid:
    """The :class:`BeatGrid` of an analysis record; a clear error when it has no usable beats."""
    try:
        return BeatGrid.from_analysis(analysis.get("beats") or [], analysis.get("downbeats") or [],
                                      int(analysis.get("beats_per_bar") or 4))
    except ValueError as err:
        raise TranscribeError(f"{analysis.get('path') or 'track'}: no beat grid to quantize to ({err})") from None


def transcribe_track(stems: Mapping[str, np.ndarray] | np.ndarray, analysis: Mapping,
                     options: TranscribeOptions | None = None, model: BasicPitch | None = None,
                     progress: Callable[[str], None] | None = None, sr: int = SAMPLE_RATE,
                     stems_model: str = "", mix: np.ndarray | None = None) -> Transcription:
    """Transcribe a track's stems and quantize them to its beat grid.

    Parameters
    ----------
    stems : mapping or ndarray
        Stem name -> ``(frames, channels)`` audio, or ``(4, frames, 2)`` in :data:`prep.stems.STEM_NAMES` order.
    analysis : mapping
        The analysis record (``beats``, ``downbeats``, ``beats_per_bar``; ``key`` and ``segments`` if present).
    options : TranscribeOptions, optional
    model : BasicPitch, optional
        A loaded model (default: one per process).
    progress : callable, optional
        Called with each stem's name once it is done.
    stems_model : str
        What made the stems (``"dsp"``, ``"demucs:htdemucs"``...), for ``drums_from="auto"``.
    mix : ndarray, optional
        The full mix, for drums read from it (default: the sum of the stems, which is the mix after ATE's
        separation).
    """
    from prep.drums_transcribe import transcribe_drums

    options = options or TranscribeOptions()
    audio = _as_stem_dict(stems)
    grid = grid_from_analysis(analysis)
    drums_from = options.drums_from
    if drums_from == "auto":
        drums_from = "mix" if stems_model == "dsp" else "stem"
    raw: dict[str, np.ndarray] = {}
    for stem in options.stems:
        if stem not in audio:
            raise TranscribeError(f"{analysis.get('path') or 'track'}: no {stem} stem")
        if stem == "drums":
            if drums_from == "mix":
                source = mix if mix is not None else sum(np.asarray(x, dtype=np.float32) for x in audio.values())
            else:
                source = audio[stem]
            raw[stem] = transcribe_drums(source, sr)
        else:
            raw[stem] = transcribe_pitched(audio[stem], stem, model or _default_model(), sr=sr)
        if progress is not None:
            progress(stem)
    division = options.division
    swing = STRAIGHT
    if options.swing:
        onsets = np.concatenate([n["onset_s"] for n in raw.values()]) if raw else np.zeros(0)
        swing = measure_swing(onsets, grid, division)
    notes = {s: _quantize(n, grid, division, float(options.strength), swing) for s, n in raw.items()}
    return Transcription(notes, raw, grid, swing, options, dict(analysis), drums_from)


def _markers(analysis: Mapping) -> list[tuple[float, str]]:
    return [(float(s["start"]), str(s.get("label", ""))) for s in analysis.get("segments") or [] if "start" in s]


def write_transcription(transcription: Transcription, folder: str | Path, title: str | None = None) -> dict[str, Path]:
    """Write ``STEM.mid`` for each stem and ``merged.mid`` (all stems, one track each) into ``folder``.

    Returns
    -------
    dict
        Stem (and ``"merged"``) -> the file written.
    """
    folder = Path(folder)
    key = transcription.analysis.get("key")
    markers = _markers(transcription.analysis)
    written: dict[str, Path] = {}
    for stem, notes in transcription.notes.items():
        written[stem] = write_midi(folder / f"{stem}.mid", {stem: notes}, transcription.grid, key=key,
                                   markers=markers, title=title)
    written[MERGED] = write_midi(folder / f"{MERGED}.mid", transcription.notes, transcription.grid, key=key,
                                 markers=markers, title=title)
    return written


# --------------------------------------------------------------------------- the prep step and its table

def _midi_folder(crate, content_hash: str) -> Path:
    """``CRATE/.ate/midi/ab/abcdef…/``: beside the database, as the stems are."""
    return Path(crate.db_path).parent / "midi" / content_hash[:2] / content_hash


def _step_run(track) -> dict:
    """In a prep worker: transcribe a track's stored stems with the default options; the files travel back
    as bytes, written by :func:`_step_store` in the main process with the crate rows."""
    import tempfile

    result = transcribe_track(track.stems, track.analysis, TranscribeOptions(), stems_model=track.stems_model,
                              mix=track.mix)
    with tempfile.TemporaryDirectory() as tmp:
        paths = write_transcription(result, tmp, title=Path(track.path).stem)
        files = {stem: path.read_bytes() for stem, path in paths.items()}
    counts = {stem: int(n.size) for stem, n in result.notes.items()}
    counts[MERGED] = sum(counts.values())
    return {"files": files, "notes": counts, "params": result.params}


def _step_store(crate, content_hash: str, result: dict) -> None:
    from prep.crate import now_iso

    folder = _midi_folder(crate, content_hash)
    folder.mkdir(parents=True, exist_ok=True)
    conn = crate.connection
    row = conn.execute("SELECT id FROM tracks WHERE content_hash = ?", (content_hash,)).fetchone()
    if row is None:
        return  # the track left the crate while it was being transcribed
    track_id = int(row[0])
    conn.execute("DELETE FROM transcriptions WHERE track_id = ?", (track_id,))
    params = json.dumps(result["params"])
    now = now_iso()
    for stem, data in result["files"].items():
        path = folder / f"{stem}.mid"
        tmp = path.with_suffix(".mid.tmp")
        tmp.write_bytes(data)
        os.replace(tmp, path)
        conn.execute("INSERT INTO transcriptions (track_id, stem, path, notes, version, params, created_at) "
                     "VALUES (?, ?, ?, ?, ?, ?, ?)",
                     (track_id, stem, crate.relative_path(path), int(result["notes"][stem]), TRANSCRIBE_VERSION,
                      params, now))


def _step_done(crate) -> set[str]:
    rows = crate.connection.execute("SELECT DISTINCT t.content_hash FROM transcriptions x JOIN tracks t "
                                    "ON x.track_id = t.id WHERE x.stem = ? AND x.version = ?",
                                    (MERGED, TRANSCRIBE_VERSION))
    return {r[0] for r in rows}


def transcriptions(crate, track: int | str) -> dict[str, dict]:
    """A track's stored transcriptions: stem (and ``"merged"``) -> ``{path (absolute), notes, version, params}``."""
    where, value = ("t.id = ?", track) if isinstance(track, int) else ("t.content_hash = ?", str(track))
    rows = crate.connection.execute(f"SELECT x.stem, x.path, x.notes, x.version, x.params FROM transcriptions x "
                                    f"JOIN tracks t ON x.track_id = t.id WHERE {where}", (value,)).fetchall()
    return {r[0]: {"path": str(crate.resolve_path(r[1])), "notes": int(r[2]), "version": int(r[3]),
                   "params": json.loads(r[4])} for r in rows}


def _register_step() -> None:
    from prep.steps import PrepStep, register

    register(PrepStep("transcribe", run=_step_run, store=_step_store, done=_step_done, default=False,
                      needs_stems=True,
                      description="MIDI files of the stems (basic-pitch, drums), quantized to the beat grid"))


_register_step()


# --------------------------------------------------------------------------- ate transcribe

def register_cli(subparsers) -> None:
    """Add ``ate transcribe`` to the ``ate`` command line."""
    from ate.cli import _add_separation_options

    p = subparsers.add_parser("transcribe", help="MIDI files of a track's stems, on its beat grid (basic-pitch, "
                                                 "drums to GM drums)")
    p.add_argument("track", metavar="TRACK", help="an audio file, or with --crate a track of it (path, title or "
                                                  "hash prefix)")
    p.add_argument("-o", "--output", default=None, metavar="DIR",
                   help="where to write STEM.mid and merged.mid (default: ./NAME-midi)")
    p.add_argument("--crate", default=None, metavar="CRATE", help="use a prepared crate's stems and analysis")
    p.add_argument("--db", default=None, help="crate database file (default: CRATE/.ate/crate.sqlite)")
    p.add_argument("--stems", default=",".join(TRANSCRIBED_STEMS),
                   help=f"stems to transcribe, comma-separated (default: {','.join(TRANSCRIBED_STEMS)})")
    p.add_argument("--quantize", type=float, default=1.0, metavar="STRENGTH",
                   help="quantize strength, 0 (off) .. 1 (on the grid; default)")
    p.add_argument("--grid", default="1/4", help="grid step in beats: 1/4 (default, 16ths), 1/8, 1/2, 1/3 "
                                                 "(8th triplets), 1/6 ...")
    p.add_argument("--swing", action="store_true", help="measure the track's swing and quantize to a swung grid")
    p.add_argument("--drums-from", default="auto", choices=DRUM_SOURCES,
                   help="read the drums from the drum stem or the full mix; auto: the mix when the stems come "
                        "from the DSP separator, else the stem (default: auto)")
    p.add_argument("--threads", type=int, default=None, help="onnxruntime threads (default: all cores)")
    _add_separation_options(p, allow_none=False)
    p.set_defaults(func=_cmd_transcribe)


def _cmd_transcribe(args) -> int:
    from prep.audio import AudioError
    from prep.progress import ProgressBar
    from prep.separate import SeparationError

    try:
        options = TranscribeOptions(stems=tuple(s.strip() for s in args.stems.split(",") if s.strip()),
                                    strength=args.quantize, grid=args.grid, swing=args.swing,
                                    drums_from=args.drums_from)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    try:
        if args.crate:
            stems, analysis, name, stems_model = _from_crate(args)
        else:
            stems, analysis, name, stems_model = _from_file(args)
        model = BasicPitch(threads=args.threads or os.cpu_count()) \
            if any(s in PITCHED_STEMS for s in options.stems) else None
        with ProgressBar(f"transcribe {name}", len(options.stems), "stems") as bar:
            bar.starting(options.stems[0])
            result = transcribe_track(stems, analysis, options, model=model, progress=bar.advance,
                                      stems_model=stems_model)
    except (AudioError, SeparationError, TranscribeError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    except _UsageError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    out = Path(args.output) if args.output else Path.cwd() / f"{name}-midi"
    written = write_transcription(result, out, title=name)
    swing = f", swing {result.swing:.2f}" if options.swing else ""
    drums = f", drums from the {result.drums_from}" if "drums" in options.stems else ""
    print(f"{name}: {result.grid.beats_s.size} beats, quantize {options.strength:g} to {options.grid}{swing}{drums}")
    for stem, path in written.items():
        count = sum(n.size for n in result.notes.values()) if stem == MERGED else result.notes[stem].size
        print(f"  {stem:<7} {count:5d} notes  {path}")
    return 0


class _UsageError(Exception):
    pass


def _from_crate(args) -> tuple[np.ndarray, dict, str, str]:
    from ate.cli import _open_track
    from prep.stems import read_stem_file

    crate, track = _open_track(args.crate, args.db, args.track)
    if crate is None:
        raise _UsageError(track)
    with crate:
        stored = crate.get_stems(track["content_hash"])
        analysis = crate.get_analysis(track["content_hash"]) or {}
    if stored is None:
        raise TranscribeError(f"{track['path']}: no stems yet (run `ate prep` with separation)")
    stems, _ = read_stem_file(stored["path"])
    return stems, analysis, Path(track["path"]).stem, stored["model"] or ""


def _from_file(args) -> tuple[np.ndarray, dict, str, str]:
    from ate.cli import _separator_choice
    from prep.analyze import MIN_DURATION_S, analyze_audio
    from prep.audio import load_audio
    from prep.progress import ProgressBar
    from prep.separate import SeparationError, separate_track

    path = Path(args.track)
    try:  # a separator that cannot work is a usage error, found before any audio is decoded
        choice = _separator_choice(args)
        separator = choice.build()
    except (ValueError, SeparationError) as err:
        raise _UsageError(str(err)) from None
    samples = load_audio(path, min_duration_s=MIN_DURATION_S)
    with ProgressBar(f"separate {path.name} ({choice.name})") as progress:
        stems = separate_track(samples, separator, progress=progress)
    analysis = analyze_audio(samples, path=str(path), stems=stems).to_dict()
    return stems, analysis, path.name.split(".")[0], choice.name
