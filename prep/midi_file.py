"""Note arrays and Standard MIDI Files that carry a track's tempo map, so they line up bar for bar in a DAW.

Notes travel through ATE as :data:`NOTE_DTYPE` structured arrays (onset and
offset in seconds of the audio, MIDI pitch, velocity 0..1). :func:`write_midi`
writes one type-1 file: a conductor track with the tempo map, time signatures,
the key and section markers, then one track per part (a stem), drums on
channel 10 with General MIDI drum notes.

The tempo map follows the audio's beat grid (:class:`prep.quantize.BeatGrid`):
every beat of the analysis is a whole MIDI beat, with a tempo event wherever
the beat length changes (each beat, on a drifting grid). Tempos are integer
microseconds per beat; they are rounded with the error carried to the next
beat, so that a beat of the file never drifts more than 0.5 µs from the
audio's. Notes sit on ticks of 1/960 beat (0.5 ms at 120 BPM, divisible by
2, 3, 4, 5, 6, 8 and 16, so every usual grid step is a whole tick). Tick 0 is
audio time 0: place the file at the start of the audio. When the music starts
after time 0 or with pickup beats, a shorter bar (say 3/4 before 4/4) fills
the time before the first downbeat, so that every later bar line of the file
is a downbeat of the audio.

:func:`read_midi` reads a file back through its own tempo map.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path

import numpy as np

from prep.quantize import BeatGrid

__all__ = [
    "DRUM_CHANNEL",
    "GM_DRUM_NOTES",
    "NOTE_DTYPE",
    "PPQ",
    "STEM_PROGRAMS",
    "MidiFileError",
    "make_notes",
    "read_midi",
    "tempo_map",
    "write_midi",
]

NOTE_DTYPE = np.dtype([("onset_s", "f8"), ("offset_s", "f8"), ("pitch", "i2"), ("velocity", "f4")])
"""One note: onset and offset (s, audio time), MIDI pitch (drums: General MIDI drum note), velocity 0..1."""

PPQ = 960
"""Ticks per beat (MIDI quarter note)."""

GM_DRUM_NOTES = {"kick": 36, "snare": 38, "closed_hat": 42, "open_hat": 46}
"""General MIDI drum notes (channel 10) of the drum classes ATE transcribes."""

DRUM_CHANNEL = 9
"""Channel 10, counted from 0 as MIDI messages do."""

STEM_PROGRAMS = {"bass": 33, "vocals": 53, "other": 4}
"""General MIDI programs (0-based) per pitched stem: fingered bass, voice oohs, electric piano."""

_MAX_TEMPO_US = 0xFFFFFF


class MidiFileError(Exception):
    """A MIDI file cannot be read. ``str(err)`` is one line: ``path: reason``."""


def make_notes(onset_s: Iterable[float] = (), offset_s: Iterable[float] = (), pitch: Iterable[int] = (),
               velocity: Iterable[float] | float = 0.8) -> np.ndarray:
    """A :data:`NOTE_DTYPE` array from columns (seconds, MIDI pitch, velocity 0..1), sorted by onset."""
    onset = np.asarray(list(onset_s), dtype=np.float64)
    notes = np.zeros(onset.size, dtype=NOTE_DTYPE)
    notes["onset_s"] = onset
    notes["offset_s"] = np.asarray(list(offset_s), dtype=np.float64)
    notes["pitch"] = np.asarray(list(pitch), dtype=np.int16)
    notes["velocity"] = np.broadcast_to(np.asarray(velocity if np.ndim(velocity) == 0 else list(velocity),
                                                   dtype=np.float32), onset.shape)
    return np.sort(notes, order=["onset_s", "pitch"])


def tempo_map(grid: BeatGrid) -> list[tuple[int, int]]:
    """``(tick, microseconds per beat)`` events that put MIDI beat ``k`` at ``grid.beats_s[k]``.

    One event per beat whose rounded length differs from the one before; the last tempo holds after
    the grid's last beat, as :meth:`BeatGrid.time_of` extrapolates.
    """
    target_us = grid.beats_s * 1e6
    events: list[tuple[int, int]] = []
    elapsed_us = 0
    for k in range(target_us.size - 1):
        tempo = int(min(max(round(target_us[k + 1] - elapsed_us), 1), _MAX_TEMPO_US))
        elapsed_us += tempo
        if not events or events[-1][1] != tempo:
            events.append((k * PPQ, tempo))
    return events


def _key_signature(key: str | None) -> str | None:
    """mido's key name (``"Am"``, ``"Eb"``) for an analysis key (``"A minor"``), None when unknown."""
    if not key:
        return None
    from prep.key import parse_key

    try:
        tonic, mode = parse_key(key)
    except ValueError:
        return None
    if mode == "major":
        return ("C", "Db", "D", "Eb", "E", "F", "F#", "G", "Ab", "A", "Bb", "B")[tonic]
    return ("Cm", "C#m", "Dm", "Ebm", "Em", "Fm", "F#m", "Gm", "G#m", "Am", "Bbm", "Bm")[tonic]


def _ticks(grid: BeatGrid, times_s: np.ndarray) -> np.ndarray:
    return np.maximum(np.round(grid.beat_of(times_s) * PPQ), 0).astype(np.int64)


def _absolute_to_track(events: list[tuple[int, int, object]], name: str):
    """A mido track from ``(tick, order, message)`` with absolute ticks; order breaks ties (note-offs first)."""
    import mido

    track = mido.MidiTrack()
    track.append(mido.MetaMessage("track_name", name=name, time=0))
    now = 0
    for tick, _, msg in sorted(events, key=lambda e: (e[0], e[1])):
        track.append(msg.copy(time=int(tick - now)))
        now = tick
    track.append(mido.MetaMessage("end_of_track", time=0))
    return track


def write_midi(path: str | Path, parts: Mapping[str, np.ndarray], grid: BeatGrid, *,
               drum_parts: Iterable[str] = ("drums",), key: str | None = None,
               markers: Iterable[tuple[float, str]] = (), title: str | None = None) -> Path:
    """Write parts (name -> :data:`NOTE_DTYPE` notes) into one type-1 MIDI file with the grid's tempo map.

    Parameters
    ----------
    path : str or Path
        The ``.mid`` file to write (its folder is created).
    parts : mapping
        One MIDI track per entry, in order; pitched parts get :data:`STEM_PROGRAMS` and a channel each.
    grid : BeatGrid
        The track's beats: tempo map and bar lines.
    drum_parts : iterable of str
        Parts played on channel 10 (General MIDI drums).
    key : str, optional
        The analysis key (``"A minor"``), written as a key signature.
    markers : iterable of (seconds, text)
        Marker events in the conductor track (section labels).
    title : str, optional
        Name of the conductor track.
    """
    import mido

    path = Path(path)
    drum_parts = set(drum_parts)
    conductor: list[tuple[int, int, object]] = []
    for tick, tempo in tempo_map(grid):
        conductor.append((tick, 0, mido.MetaMessage("set_tempo", tempo=tempo)))
    partial = grid.downbeat_index % grid.beats_per_bar
    if partial:
        conductor.append((0, 1, mido.MetaMessage("time_signature", numerator=partial, denominator=4)))
    conductor.append((partial * PPQ, 1, mido.MetaMessage("time_signature", numerator=grid.beats_per_bar,
                                                         denominator=4)))
    signature = _key_signature(key)
    if signature:
        conductor.append((0, 2, mido.MetaMessage("key_signature", key=signature)))
    for time_s, text in markers:
        conductor.append((int(_ticks(grid, np.array([time_s]))[0]), 3, mido.MetaMessage("marker", text=str(text))))

    midi = mido.MidiFile(type=1, ticks_per_beat=PPQ)
    midi.tracks.append(_absolute_to_track(conductor, title or "tempo"))
    channel = 0
    for name, notes in parts.items():
        notes = np.asarray(notes, dtype=NOTE_DTYPE)
        if name in drum_parts:
            ch, program = DRUM_CHANNEL, None
        else:
            ch = channel
            channel += 1 + (channel + 1 == DRUM_CHANNEL)  # skip channel 10
            program = STEM_PROGRAMS.get(name, 0)
        events: list[tuple[int, int, object]] = []
        if program is not None:
            events.append((0, 0, mido.Message("program_change", channel=ch, program=program)))
        on = _ticks(grid, notes["onset_s"])
        off = np.maximum(_ticks(grid, notes["offset_s"]), on + 1)
        velocity = np.clip(np.round(notes["velocity"] * 127), 1, 127).astype(int)
        for a, b, p, v in zip(on, off, notes["pitch"], velocity):
            p = int(np.clip(p, 0, 127))
            # At one tick, note-offs go first so that a repeated note is not cut by its predecessor's end.
            events.append((int(a), 2, mido.Message("note_on", channel=ch, note=p, velocity=int(v))))
            events.append((int(b), 1, mido.Message("note_off", channel=ch, note=p, velocity=0)))
        midi.tracks.append(_absolute_to_track(events, name))
    path.parent.mkdir(parents=True, exist_ok=True)
    midi.save(str(path))
    return path


def read_midi(path: str | Path) -> dict[str, np.ndarray]:
    """The notes of each named track of a MIDI file, timed through the file's own tempo map.

    Returns
    -------
    dict
        Track name -> :data:`NOTE_DTYPE` notes (seconds from the file's start); tracks without notes are left out.

    Raises
    ------
    MidiFileError
        The file is missing or not a Standard MIDI File.
    """
    import mido

    try:
        midi = mido.MidiFile(str(path))
    except (OSError, EOFError, ValueError, KeyError, IndexError) as err:
        raise MidiFileError(f"{path}: not a readable MIDI file ({err})") from None
    tempo_changes: list[tuple[int, int]] = [(0, 500000)]
    for track in midi.tracks:
        tick = 0
        for msg in track:
            tick += msg.time
            if msg.type == "set_tempo":
                tempo_changes.append((tick, msg.tempo))
    tempo_changes.sort(key=lambda e: e[0])
    ticks = np.array([t for t, _ in tempo_changes], dtype=np.float64)
    tempos = np.array([u for _, u in tempo_changes], dtype=np.float64)
    # Seconds at each tempo change, so a tick's time is the last change's time plus ticks at its tempo.
    starts_s = np.concatenate([[0.0], np.cumsum(np.diff(ticks) * tempos[:-1] / 1e6 / midi.ticks_per_beat)])

    def seconds(tick: float) -> float:
        i = int(np.searchsorted(ticks, tick, side="right") - 1)
        return float(starts_s[i] + (tick - ticks[i]) * tempos[i] / 1e6 / midi.ticks_per_beat)

    out: dict[str, np.ndarray] = {}
    for index, track in enumerate(midi.tracks):
        name = next((m.name for m in track if m.type == "track_name"), f"track {index}")
        sounding: dict[tuple[int, int], list[tuple[int, int]]] = {}
        rows = []
        tick = 0
        for msg in track:
            tick += msg.time
            if msg.type == "note_on" and msg.velocity > 0:
                sounding.setdefault((msg.channel, msg.note), []).append((tick, msg.velocity))
            elif msg.type in ("note_off", "note_on") and sounding.get((msg.channel, msg.note)):
                start, velocity = sounding[(msg.channel, msg.note)].pop(0)
                rows.append((seconds(start), seconds(tick), msg.note, velocity / 127.0))
        if rows:
            a, b, p, v = zip(*rows)
            out[name] = make_notes(a, b, p, v)
    return out
