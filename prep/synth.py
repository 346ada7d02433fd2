"""Synthetic electronic/pop tracks with exactly known ground truth.

:func:`generate` renders a short arranged track (drums, bass, chords, a
vocal-like lead) from a :class:`TrackSpec`, and returns its four stems with a
:class:`Truth` that lists every beat, downbeat, section, note and drum hit the
synthesiser placed. The truth is exact by construction: an event at time
``t`` starts at sample ``round(t * SAMPLE_RATE)`` of its stem, and pitched
notes fall silent at their ``end_s`` (the release happens inside the note).

It is meant for tests, the demo crate and benchmarks of beat tracking,
downbeats, key, structure, vocal activity, transcription and separation:

>>> track = generate(TrackSpec(bpm=124, tonic=9, mode="minor", seed=1))
>>> write_track(track, "demo.flac")          # demo.flac + demo.truth.json
>>> specs = standard_set()                     # 12 varied benchmark specs

All randomness comes from ``np.random.default_rng(spec.seed)``, so a spec
always renders the same samples. Rendering is vectorised with numpy; notes
and chords that repeat (most of a pop arrangement) are rendered once and
reused, which keeps a three-minute track well under two seconds on one core.
"""

from __future__ import annotations

import functools
import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from scipy import signal

from prep.audio import SAMPLE_RATE, write_audio
from prep.key import PITCH_CLASSES, key_name

__all__ = [
    "STEMS", "SECTION_NAMES", "STYLES", "DRUM_KINDS", "PITCH_CLASSES", "DEFAULT_STRUCTURE", "DEFAULT_SECTION_STEMS",
    "TrackSpec", "Section", "Note", "Chord", "Truth", "GeneratedTrack",
    "generate", "write_track", "write_stems", "load_truth", "standard_set", "demo_specs", "key_name",
]

STEMS = ("drums", "bass", "vocals", "other")
"""Stem names, in the order they are summed into the mix."""

SECTION_NAMES = ("intro", "verse", "chorus", "breakdown", "outro")
STYLES = ("house", "breakbeat", "dnb", "hiphop", "waltz")
DRUM_KINDS = ("kick", "snare", "closed_hat", "open_hat")

DEFAULT_STRUCTURE: tuple[tuple[str, int], ...] = (
    ("intro", 16), ("verse", 16), ("chorus", 16), ("breakdown", 8), ("chorus", 16), ("outro", 16),
)

DEFAULT_SECTION_STEMS: dict[str, frozenset[str]] = {
    "intro": frozenset({"drums", "bass"}),
    "verse": frozenset(STEMS),
    "chorus": frozenset(STEMS),
    "breakdown": frozenset({"other", "vocals"}),
    "outro": frozenset({"drums", "bass"}),
}
"""Which stems play in each kind of section unless the spec says otherwise."""

_MAJOR_SCALE = (0, 2, 4, 5, 7, 9, 11)
_MINOR_SCALE = (0, 2, 3, 5, 7, 8, 10)

# Progressions as 0-based scale degrees; 'V' in minor takes the harmonic
# minor's raised seventh (a major dominant), written as degree 4 with a flag.
_PROGRESSIONS = {
    "minor": (((0, 5, 2, 6), False), ((0, 3, 6, 2), False), ((0, 5, 3, 4), True)),
    "major": (((0, 4, 5, 3), False), ((0, 5, 3, 4), False), ((0, 3, 5, 4), False)),
}

# Mix balance before peak normalisation: RMS of each stem while it plays, in dBFS.
_STEM_RMS_DB = {"drums": -15.0, "bass": -17.0, "vocals": -19.0, "other": -22.0}
_PEAK_DBFS = -1.0

_TAIL_S = 1.0
"""Room after the last bar for decays, in seconds."""


# --------------------------------------------------------------------------- spec & truth


@dataclass
class TrackSpec:
    """What to synthesise. Every field has a default; a few are usually enough.

    Parameters
    ----------
    bpm : float
        Tempo at the first downbeat, 60-180 BPM. With ``tempo_drift_bpm`` the
        tempo changes linearly in time to ``bpm + tempo_drift_bpm`` at the end
        of the last bar; :attr:`Truth.bpm` is the mean.
    beats_per_bar : int
        4 or 3.
    tonic : int
        Pitch class of the key, 0 = C ... 11 = B.
    mode : str
        "major" or "minor".
    structure : list of (name, bars) or (name, bars, stems)
        Sections in order; names from :data:`SECTION_NAMES`. A third element
        (an iterable of stem names) overrides which stems play there.
    style : str
        Drum style, one of :data:`STYLES`. "waltz" needs 3 beats per bar; other
        styles in 3/4 use the first three beats of their 4/4 patterns.
    tempo_drift_bpm : float
        Total linear tempo change from the first downbeat to the end, in BPM.
    lead_in_s : float
        Silence before the first downbeat, in seconds.
    seed : int
        Seed of the one random generator every choice comes from.
    title : str
        Free text, kept in the truth.
    section_stems : dict, optional
        Section name -> stems playing there, overriding :data:`DEFAULT_SECTION_STEMS`.
    swing : float
        Share of each 8th note that its first 16th takes: 0.5 straight (default), 2/3 a triplet
        shuffle, up to 0.75. Every event on an odd 16th moves later; beats and downbeats stay.
    """

    bpm: float = 124.0
    beats_per_bar: int = 4
    tonic: int = 9
    mode: str = "minor"
    structure: list = field(default_factory=lambda: [list(s) for s in DEFAULT_STRUCTURE])
    style: str = "house"
    tempo_drift_bpm: float = 0.0
    lead_in_s: float = 0.0
    seed: int = 0
    title: str = ""
    section_stems: dict | None = None
    swing: float = 0.5

    def __post_init__(self) -> None:
        if not 60.0 <= float(self.bpm) <= 180.0:
            raise ValueError(f"bpm must be within 60-180, got {self.bpm}")
        if float(self.bpm) + float(self.tempo_drift_bpm) < 30.0:
            raise ValueError("tempo_drift_bpm would slow the track below 30 BPM")
        if self.beats_per_bar not in (3, 4):
            raise ValueError(f"beats_per_bar must be 3 or 4, got {self.beats_per_bar}")
        if self.mode not in ("major", "minor"):
            raise ValueError(f"mode must be 'major' or 'minor', got {self.mode!r}")
        if not 0 <= int(self.tonic) <= 11:
            raise ValueError(f"tonic must be a pitch class 0-11, got {self.tonic}")
        if self.style not in STYLES:
            raise ValueError(f"style must be one of {STYLES}, got {self.style!r}")
        if self.style == "waltz" and self.beats_per_bar != 3:
            raise ValueError("style 'waltz' needs beats_per_bar=3")
        if not 0.5 <= float(self.swing) <= 0.75:
            raise ValueError(f"swing must be within 0.5-0.75, got {self.swing}")
        if self.lead_in_s < 0:
            raise ValueError("lead_in_s must be >= 0")
        if not self.structure:
            raise ValueError("structure must contain at least one section")
        for entry in self.structure:
            if len(entry) not in (2, 3) or entry[0] not in SECTION_NAMES or int(entry[1]) < 1:
                raise ValueError(f"bad structure entry {entry!r}: want (name, bars[, stems]) with name in {SECTION_NAMES}")
            if len(entry) == 3 and not set(entry[2]) <= set(STEMS):
                raise ValueError(f"bad stems in {entry!r}; stems are {STEMS}")
        for name, stems in (self.section_stems or {}).items():
            if name not in SECTION_NAMES or not set(stems) <= set(STEMS):
                raise ValueError(f"bad section_stems entry {name!r}: {stems!r}")

    @property
    def key(self) -> str:
        return key_name(self.tonic, self.mode)

    @property
    def total_bars(self) -> int:
        return sum(int(entry[1]) for entry in self.structure)

    def stems_for(self, index: int) -> frozenset[str]:
        """Stems playing in section number ``index`` of :attr:`structure`."""
        entry = self.structure[index]
        if len(entry) == 3:
            return frozenset(entry[2])
        overrides = self.section_stems or {}
        return frozenset(overrides.get(entry[0], DEFAULT_SECTION_STEMS[entry[0]]))

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["structure"] = [[e[0], int(e[1])] + ([sorted(e[2])] if len(e) == 3 else []) for e in self.structure]
        d["section_stems"] = None if self.section_stems is None else {k: sorted(v) for k, v in self.section_stems.items()}
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "TrackSpec":
        return cls(**d)


@dataclass(frozen=True)
class Section:
    """One section of the arrangement; ``end_s`` is the next section's start."""

    name: str
    start_s: float
    end_s: float
    start_bar: int
    bars: int
    stems_present: frozenset[str]


@dataclass(frozen=True)
class Note:
    """A pitched note; sound starts at ``start_s`` and is silent again at ``end_s``."""

    start_s: float
    end_s: float
    pitch: int
    velocity: float


@dataclass(frozen=True)
class Chord:
    """The harmony of one bar: root pitch class, quality ("maj", "min", "maj7", "min7", "7")."""

    start_s: float
    end_s: float
    root: int
    quality: str

    @property
    def label(self) -> str:
        suffix = {"maj": "", "min": "m", "maj7": "maj7", "min7": "m7", "7": "7"}[self.quality]
        return PITCH_CLASSES[self.root] + suffix


@dataclass
class Truth:
    """Everything the synthesiser knows about a generated track. Times in seconds from sample 0."""

    bpm: float
    beats: np.ndarray
    downbeats: np.ndarray
    beats_per_bar: int
    tonic: int
    mode: str
    key: str
    sections: list[Section]
    notes: dict[str, list[Note]]
    drum_hits: list[tuple[float, str]]
    vocal_regions: list[tuple[float, float]]
    chords: list[Chord]
    spec: TrackSpec

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable form; :meth:`from_dict` inverts it."""
        return {
            "bpm": float(self.bpm),
            "beats": [float(t) for t in self.beats],
            "downbeats": [float(t) for t in self.downbeats],
            "beats_per_bar": int(self.beats_per_bar),
            "tonic": int(self.tonic),
            "mode": self.mode,
            "key": self.key,
            "sections": [{"name": s.name, "start_s": s.start_s, "end_s": s.end_s, "start_bar": s.start_bar,
                          "bars": s.bars, "stems_present": sorted(s.stems_present)} for s in self.sections],
            "notes": {stem: [[n.start_s, n.end_s, n.pitch, n.velocity] for n in notes]
                      for stem, notes in self.notes.items()},
            "notes_columns": ["start_s", "end_s", "pitch", "velocity"],
            "drum_hits": [[t, kind] for t, kind in self.drum_hits],
            "vocal_regions": [[a, b] for a, b in self.vocal_regions],
            "chords": [[c.start_s, c.end_s, c.label, c.root, c.quality] for c in self.chords],
            "spec": self.spec.to_dict(),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Truth":
        return cls(
            bpm=d["bpm"], beats=np.asarray(d["beats"], dtype=float), downbeats=np.asarray(d["downbeats"], dtype=float),
            beats_per_bar=d["beats_per_bar"], tonic=d["tonic"], mode=d["mode"], key=d["key"],
            sections=[Section(s["name"], s["start_s"], s["end_s"], s["start_bar"], s["bars"],
                              frozenset(s["stems_present"])) for s in d["sections"]],
            notes={stem: [Note(a, b, int(p), v) for a, b, p, v in notes] for stem, notes in d["notes"].items()},
            drum_hits=[(t, k) for t, k in d["drum_hits"]],
            vocal_regions=[(a, b) for a, b in d["vocal_regions"]],
            chords=[Chord(a, b, int(r), q) for a, b, _label, r, q in d.get("chords", [])],
            spec=TrackSpec.from_dict(d["spec"]),
        )


@dataclass
class GeneratedTrack:
    """Four float32 ``(frames, 2)`` stems at :data:`SAMPLE_RATE` and their truth."""

    stems: dict[str, np.ndarray]
    truth: Truth
    sample_rate: int = SAMPLE_RATE

    @property
    def mix(self) -> np.ndarray:
        """Sum of the stems in :data:`STEMS` order, float32 (bit-identical on every call)."""
        out = self.stems[STEMS[0]].copy()
        for name in STEMS[1:]:
            out += self.stems[name]
        return out

    @property
    def duration_s(self) -> float:
        return self.stems["drums"].shape[0] / self.sample_rate


# --------------------------------------------------------------------------- time grid

class _Clock:
    """Beat position <-> time for a tempo that changes linearly in time.

    With tempo ``b(t) = b0 + k t`` (BPM, t in seconds from the first downbeat)
    the beat position is ``p(t) = (b0 t + k t^2 / 2) / 60``; we invert it in
    the cancellation-free form so that ``k = 0`` needs no special case.
    """

    def __init__(self, bpm0: float, drift_bpm: float, n_beats: int, offset_s: float, sr: int):
        self.bpm0 = float(bpm0)
        self.span_s = 60.0 * n_beats / (self.bpm0 + 0.5 * float(drift_bpm))
        self.k = float(drift_bpm) / self.span_s
        self.offset_s = float(offset_s)
        self.sr = sr

    def time(self, pos_beats):
        pos = np.asarray(pos_beats, dtype=float)
        t = 120.0 * pos / (self.bpm0 + np.sqrt(self.bpm0 ** 2 + 120.0 * self.k * pos))
        return t + self.offset_s

    def sample(self, pos_beats) -> Any:
        return np.round(self.time(pos_beats) * self.sr).astype(np.int64)


# --------------------------------------------------------------------------- DSP helpers

def _saw(phase_cycles: np.ndarray, dt: np.ndarray | float) -> np.ndarray:
    """Band-limited (polyBLEP) sawtooth from an unwrapped phase in cycles; ``dt`` = f / sr."""
    t = phase_cycles % 1.0
    y = 2.0 * t - 1.0
    if np.ndim(dt) == 0:
        # Constant pitch: the discontinuities are one sample wide, so only
        # the few samples next to each wrap need the correction.
        i = np.flatnonzero(t < dt)
        x = t[i] / dt
        y[i] -= x + x - x * x - 1.0
        i = np.flatnonzero(t > 1.0 - dt)
        x = (t[i] - 1.0) / dt
        y[i] -= x * x + x + x + 1.0
        return y
    m = t < dt
    x = t[m] / dt[m]
    y[m] -= x + x - x * x - 1.0
    m = t > 1.0 - dt
    x = (t[m] - 1.0) / dt[m]
    y[m] -= x * x + x + x + 1.0
    return y


def _square(phase_cycles: np.ndarray, dt: np.ndarray | float) -> np.ndarray:
    return 0.5 * (_saw(phase_cycles, dt) - _saw(phase_cycles + 0.5, dt))


def _lowpass_sos(fc_hz: float, q: float, sr: int) -> np.ndarray:
    """RBJ-cookbook biquad low-pass as one sos row."""
    w0 = 2.0 * math.pi * min(fc_hz, 0.45 * sr) / sr
    alpha = math.sin(w0) / (2.0 * q)
    c = math.cos(w0)
    a0 = 1.0 + alpha
    return np.array([[(1 - c) / 2 / a0, (1 - c) / a0, (1 - c) / 2 / a0, 1.0, -2 * c / a0, (1 - alpha) / a0]])


def _bandpass_sos(fc_hz: float, q: float, sr: int) -> np.ndarray:
    """RBJ band-pass with 0 dB peak gain."""
    w0 = 2.0 * math.pi * fc_hz / sr
    alpha = math.sin(w0) / (2.0 * q)
    a0 = 1.0 + alpha
    return np.array([[alpha / a0, 0.0, -alpha / a0, 1.0, -2 * math.cos(w0) / a0, (1 - alpha) / a0]])


def _butter(order: int, cutoff_hz, kind: str, sr: int) -> np.ndarray:
    return signal.butter(order, cutoff_hz, btype=kind, fs=sr, output="sos")


@functools.lru_cache(maxsize=64)
def _ramp_up(n: int) -> np.ndarray:
    return (np.arange(1, n + 1) / n).astype(np.float32)


@functools.lru_cache(maxsize=64)
def _ramp_down(n: int) -> np.ndarray:
    """Raised-cosine fade from 1 to exactly 0 over ``n`` samples."""
    return (0.5 + 0.5 * np.cos(np.linspace(0.0, math.pi, n))).astype(np.float32)


def _env_ar(n: int, attack_n: int, release_n: int) -> np.ndarray:
    """Linear-attack, raised-cosine-release float32 gate of length ``n`` that ends at exactly 0."""
    env = np.ones(n, dtype=np.float32)
    a = min(attack_n, n)
    if a > 0:
        env[:a] = _ramp_up(a)
    r = min(release_n, n - a)
    if r > 0:
        env[n - r:] *= _ramp_down(r)
    if n:
        env[-1] = 0.0
    return env


def _pan_gains(pan: float) -> tuple[float, float]:
    """Constant-power pan, -1 = left ... +1 = right."""
    theta = (pan + 1.0) * math.pi / 4.0
    return math.cos(theta), math.sin(theta)


def _add(buf: np.ndarray, start: int, x: np.ndarray, gain_l: float, gain_r: float) -> None:
    """Add mono ``x`` into stereo ``buf`` at frame ``start``, clipped to the buffer."""
    end = min(start + x.shape[0], buf.shape[0])
    if end <= start:
        return
    seg = x[: end - start]
    buf[start:end, 0] += gain_l * seg
    buf[start:end, 1] += gain_r * seg


def _add_stereo(buf: np.ndarray, start: int, x: np.ndarray, gain: float) -> None:
    end = min(start + x.shape[0], buf.shape[0])
    if end > start:
        buf[start:end] += gain * x[: end - start]


def _midi_hz(pitch: float) -> float:
    return 440.0 * 2.0 ** ((pitch - 69.0) / 12.0)


# --------------------------------------------------------------------------- drum one-shots

def _drum_kit(rng: np.random.Generator, sr: int, n_variants: int = 4) -> dict[str, list[np.ndarray]]:
    """A few timbre variants per drum kind, mono float64, each starting with sound at sample 0."""
    kit: dict[str, list[np.ndarray]] = {k: [] for k in DRUM_KINDS}
    kit["clap"] = []
    click_hp = _butter(2, 2500, "high", sr)
    snare_bp = _butter(2, [1500, 9000], "bandpass", sr)
    clap_bp = _butter(2, [900, 4500], "bandpass", sr)
    hat_hp = _butter(4, 7000, "high", sr)
    for _ in range(n_variants):
        # Kick: a sine sweeping down from ~170 Hz to ~50 Hz with a noise click
        # so that the attack is sharp at sample 0.
        n = int(0.45 * sr)
        t = np.arange(n) / sr
        f_hi, f_lo = rng.uniform(150, 190), rng.uniform(46, 56)
        f = f_lo + (f_hi - f_lo) * np.exp(-t / rng.uniform(0.03, 0.045))
        phase = 2 * np.pi * (np.cumsum(f) - f[0]) / sr
        body = np.sin(phase + 0.35) * np.exp(-t / rng.uniform(0.15, 0.22))
        click = signal.sosfilt(click_hp, rng.standard_normal(n)) * np.exp(-t / 0.0018) * rng.uniform(0.3, 0.45)
        kick = np.tanh(1.6 * (body + click)) / np.tanh(1.6)
        kick[-int(0.01 * sr):] *= np.linspace(1, 0, int(0.01 * sr))
        kit["kick"].append(kick)

        n = int(0.32 * sr)
        t = np.arange(n) / sr
        f0 = rng.uniform(175, 200)
        tone = (0.6 * np.sin(2 * np.pi * f0 * t) + 0.3 * np.sin(2 * np.pi * 1.78 * f0 * t)) * np.exp(-t / 0.05)
        noise = signal.sosfilt(snare_bp, rng.standard_normal(n)) * np.exp(-t / rng.uniform(0.11, 0.15))
        snare = tone + 1.4 * noise
        snare[-int(0.01 * sr):] *= np.linspace(1, 0, int(0.01 * sr))
        kit["snare"].append(snare / np.max(np.abs(snare)))

        # Clap: three quick noise bursts then a short tail, like hands slightly out of sync.
        env = np.zeros(n)
        for i, dt_s in enumerate((0.0, rng.uniform(0.009, 0.012), rng.uniform(0.019, 0.024))):
            k0 = int(dt_s * sr)
            env[k0:] = np.maximum(env[k0:], np.exp(-t[: n - k0] / 0.0045) * (1.0 - 0.1 * i))
        k0 = int(0.026 * sr)
        env[k0:] = np.maximum(env[k0:], 0.7 * np.exp(-t[: n - k0] / rng.uniform(0.09, 0.13)))
        clap = signal.sosfilt(clap_bp, rng.standard_normal(n)) * env
        clap[-int(0.01 * sr):] *= np.linspace(1, 0, int(0.01 * sr))
        kit["clap"].append(clap / np.max(np.abs(clap)))

        # Hats: high-passed noise plus the classic six detuned square waves for a metallic ring.
        for kind, dur_s, decay_s in (("closed_hat", 0.12, rng.uniform(0.025, 0.04)),
                                     ("open_hat", 0.7, rng.uniform(0.2, 0.3))):
            n = int(dur_s * sr)
            t = np.arange(n) / sr
            detune = rng.uniform(0.97, 1.03)
            metal = sum(np.sign(np.sin(2 * np.pi * f * detune * t + rng.uniform(0, 6.28)))
                        for f in (205.3, 304.4, 369.6, 522.7, 540.0, 800.0))
            src = 0.6 * rng.standard_normal(n) + 0.25 * metal
            hat = signal.sosfilt(hat_hp, src) * np.exp(-t / decay_s)
            hat[-int(0.005 * sr):] *= np.linspace(1, 0, int(0.005 * sr))
            kit[kind].append(hat / np.max(np.abs(hat)))
    return {k: [v.astype(np.float32) for v in vs] for k, vs in kit.items()}


# Patterns: one character per 16th; 'x' = hit, 'o' = soft (ghost) hit, '.' = rest.
_DRUM_PATTERNS: dict[str, dict[str, tuple[str, ...]]] = {
    "house": {
        "kick": ("x...x...x...x...",),
        "snare": ("....x.......x...",),
        "closed_hat": ("oo.ooo.ooo.ooo.o", "o..oo..oo..oo..o"),
        "open_hat": ("..x...x...x...x.",),
    },
    "breakbeat": {
        "kick": ("x.........x.....", "x.....x...x.....", "x.x.......x....."),
        "snare": ("....x.......x...", "....x..o....x..o", "....x.o.....x..."),
        "closed_hat": ("x.x.x.x.x.x.x.x.", "x.xxx.x.x.xxx.x.", "xxx.x.xxx.x.x.xx"),
        "open_hat": ("..............x.", "......x.........", "................"),
    },
    "hiphop": {
        "kick": ("x......x..x.....", "x.........x.....", "x.x.......x..x.."),
        "snare": ("....x.......x...",),
        "closed_hat": ("x.x.x.x.x.x.x.x.", "x.o.x.o.x.o.x.o."),
        "open_hat": ("..............x.", "................"),
    },
    "waltz": {
        "kick": ("x...........", "x.........o."),
        "snare": ("....o...o...",),
        "closed_hat": ("x.x.x.x.x.x.", "x.o.x.o.x.o."),
        "open_hat": ("......x.....", "............"),
    },
}
_DRUM_PATTERNS["dnb"] = _DRUM_PATTERNS["breakbeat"]

_DRUM_GAIN = {"kick": 1.0, "snare": 0.62, "closed_hat": 0.2, "open_hat": 0.22}
_DRUM_PAN = {"kick": 0.0, "snare": 0.05, "closed_hat": 0.3, "open_hat": -0.25}
_HIT_VELOCITY = {"x": 1.0, "o": 0.55}

# Bass riffs: one character per 16th; 'R' root, 'F' fifth, 'O' octave,
# '-' holds the previous note, '.' is silence.
_BASS_PATTERNS: dict[str, tuple[str, ...]] = {
    "house": ("..R-..R-..O-..R-", "R-.RR-.R..F-.OR-", "..R...R.R.O...F.", "R.RRO.R.R.RFO.R."),
    "breakbeat": ("R-----..R-.F----", "R---...R--R-F---", "R-.R....R-O-F-.."),
    "hiphop": ("R-----.R--..F---", "R--.....R-.FO---", "R-----R-..F-R-.."),
    "waltz": ("R---..F-..F-", "R-----O---F-", "R---F---O---"),
}
_BASS_PATTERNS["dnb"] = _BASS_PATTERNS["breakbeat"]

# Chord comping for the electric piano: 'X' onset, '-' hold, '.' rest.
_COMP_PATTERNS: dict[int, tuple[str, ...]] = {
    16: ("..X-..X-..X-..X-", "X--.X--.X-.X--..", "X-------..X-X---"),
    12: ("X---X---X---", "X-----X-----", "X---..X-X---"),
}

_VOWELS = {  # formant centre frequencies (Hz) and bandwidths (Hz) of sung vowels
    "a": ((800, 1150, 2900), (80, 90, 120)),
    "e": ((400, 1600, 2700), (60, 80, 120)),
    "i": ((350, 1700, 2700), (50, 100, 120)),
    "o": ((450, 800, 2830), (70, 80, 100)),
    "u": ((325, 700, 2530), (50, 60, 170)),
}


def _pattern_for_meter(pattern: str, steps_per_bar: int) -> str:
    """Fit a 16-step pattern to a 12-step (3/4) bar by keeping its first three beats."""
    return pattern[:steps_per_bar] if len(pattern) >= steps_per_bar else (pattern * 2)[:steps_per_bar]


def _runs(pattern: str, onset_chars: str) -> list[tuple[int, int, str]]:
    """Parse '-'-holds: returns (start_step, length_steps, char) per note."""
    out: list[list] = []
    for i, ch in enumerate(pattern):
        if ch in onset_chars:
            out.append([i, 1, ch])
        elif ch == "-" and out and out[-1][0] + out[-1][1] == i:
            out[-1][1] += 1
    return [(a, b, c) for a, b, c in out]


# --------------------------------------------------------------------------- harmony

@dataclass(frozen=True)
class _ChordPlan:
    root: int          # pitch class
    pcs: tuple[int, ...]  # pitch classes, root first
    quality: str


def _chord(tonic: int, mode: str, degree: int, raised_dominant: bool, seventh: bool) -> _ChordPlan:
    scale = list(_MINOR_SCALE if mode == "minor" else _MAJOR_SCALE)
    if mode == "minor" and raised_dominant and degree == 4:
        scale[6] = 11  # harmonic minor: the V chord gets its leading tone
    steps = (0, 2, 4, 6) if seventh else (0, 2, 4)
    intervals = [scale[(degree + s) % 7] + 12 * ((degree + s) // 7) - scale[degree] for s in steps]
    root = (tonic + scale[degree]) % 12
    third, fifth = intervals[1], intervals[2]
    if third == 4 and fifth == 7:
        quality = "maj"
    elif third == 3 and fifth == 7:
        quality = "min"
    else:  # diminished triads never appear in our progressions; treat as minor for labelling
        quality = "min"
    if seventh:
        sev = intervals[3]
        quality = {("maj", 11): "maj7", ("maj", 10): "7", ("min", 10): "min7"}.get((quality, sev), quality)
    return _ChordPlan(root, tuple((root + i) % 12 for i in intervals), quality)


def _voice(pcs: tuple[int, ...]) -> list[int]:
    """Place a chord in the mid register (lowest note E3-D#4), the inversion nearest to D4.

    A fixed voicing per chord (rather than chained voice leading, which
    drifts) keeps repeated sections identical and lets renders be reused.
    """
    options = []
    for inv in range(len(pcs)):
        order = pcs[inv:] + pcs[:inv]
        notes = [52 + (order[0] - 52) % 12]
        for pc in order[1:]:
            notes.append(notes[-1] + (pc - notes[-1]) % 12)
        options.append(notes)
    return min(options, key=lambda v: (abs(float(np.mean(v)) - 62.0), v[0]))


# --------------------------------------------------------------------------- the renderer

@dataclass
class _Bar:
    index: int          # global bar number
    section: int        # index into the structure
    name: str
    in_section: int     # bar number within the section
    section_bars: int
    stems: frozenset[str]
    chord: _ChordPlan | None = None


class _Synth:
    """Renders one track. Caches repeat renders of identical notes and chords."""

    _BUCKET_N = 2048  # note bodies are rendered to a multiple of this length and cut to size

    def __init__(self, spec: TrackSpec, sr: int):
        self.spec = spec
        self.sr = sr
        self.rng = np.random.default_rng(spec.seed)
        self.bpb = spec.beats_per_bar
        self.spb = 4 * self.bpb  # 16th steps per bar
        self._cache: dict[tuple, np.ndarray] = {}

        self.bars: list[_Bar] = []
        for si, entry in enumerate(spec.structure):
            name, n = entry[0], int(entry[1])
            stems = spec.stems_for(si)
            for b in range(n):
                self.bars.append(_Bar(len(self.bars), si, name, b, n, stems))
        self.n_bars = len(self.bars)
        self.clock = _Clock(spec.bpm, spec.tempo_drift_bpm, self.n_bars * self.bpb, spec.lead_in_s, sr)
        end_s = float(self.clock.time(self.n_bars * self.bpb))
        self.n_frames = int(round((end_s + _TAIL_S) * sr))

    # ---- grid

    def _swung(self, step: float) -> float:
        """A 16th step moved by the spec's swing: within each 8th, [0, 1) -> [0, 2 swing), [1, 2) -> [2 swing, 2)."""
        r = float(self.spec.swing)
        if r == 0.5:
            return step  # straight: exactly the step, so straight renders never change
        pair, within = divmod(float(step), 2.0)
        within = within * 2.0 * r if within < 1.0 else 2.0 * r + (within - 1.0) * 2.0 * (1.0 - r)
        return 2.0 * pair + within

    def step_sample(self, bar: int, step: float) -> int:
        return int(self.clock.sample((bar * self.spb + self._swung(step)) / 4.0))

    def step_time(self, bar: int, step: float) -> float:
        return float(self.clock.time((bar * self.spb + self._swung(step)) / 4.0))

    def bucket(self, n: int) -> int:
        return -(-n // self._BUCKET_N) * self._BUCKET_N

    # ---- plan

    def plan_harmony(self) -> None:
        rng, spec = self.rng, self.spec
        progs = _PROGRESSIONS[spec.mode]
        weights = np.array([0.4, 0.35, 0.25])
        chorus_prog = progs[rng.choice(3, p=weights)]
        verse_prog = chorus_prog if rng.random() < 0.3 else progs[rng.choice(3, p=weights)]
        sevenths = {"verse": rng.random() < 0.35, "chorus": rng.random() < 0.35, "breakdown": rng.random() < 0.5}
        for bar in self.bars:
            prog = verse_prog if bar.name == "verse" else chorus_prog
            degree = prog[0][bar.in_section % 4]
            # Intros open and outros close on a tonic pedal, as DJ edits do; it also
            # leaves no doubt about the key.
            half = bar.section_bars // 2
            if (bar.name == "intro" and bar.in_section < half) or (bar.name == "outro" and bar.in_section >= half):
                degree = 0
            bar.chord = _chord(spec.tonic, spec.mode, degree, prog[1], sevenths.get(bar.name, False))

    # ---- drums

    def render_drums(self) -> tuple[np.ndarray, list[tuple[float, str]]]:
        rng, spb = self.rng, self.spb
        kit = _drum_kit(rng, self.sr)
        style_patterns = _DRUM_PATTERNS[self.spec.style]
        chosen = {kind: _pattern_for_meter(style_patterns[kind][rng.integers(len(style_patterns[kind]))], spb)
                  for kind in DRUM_KINDS}
        use_clap = self.spec.style == "house"

        hits: list[tuple[int, float, str, float]] = []  # (sample, time_s, kind, velocity)
        for bar in self.bars:
            if "drums" not in bar.stems:
                continue
            pats = dict(chosen)
            # Arrangement: a thinner kit at the start of the intro and in verses.
            if bar.name == "intro" and bar.in_section < bar.section_bars // 2:
                pats["snare"] = "." * spb
                pats["open_hat"] = "." * spb
            if bar.name == "verse":
                pats["open_hat"] = "." * spb
            last_of_phrase = (bar.in_section + 1) % 8 == 0 or bar.in_section == bar.section_bars - 1
            next_bar = self.bars[bar.index + 1] if bar.index + 1 < self.n_bars else None
            fill = (last_of_phrase and next_bar is not None and "drums" in next_bar.stems
                    and (next_bar.section != bar.section or rng.random() < 0.4))
            if fill:
                # A snare roll over the last beat(s), crescendo into the next phrase.
                start = spb - (8 if rng.random() < 0.5 else 4)
                roll = ["."] * spb
                for s in range(start, spb):
                    roll[s] = "x" if (s - start) % 2 == 0 or s >= spb - 4 else "o"
                pats["snare"] = pats["snare"][:start] + "".join(roll[start:])
                pats["kick"] = pats["kick"][:start] + "." * (spb - start)
                pats["open_hat"] = pats["open_hat"][:start] + "." * (spb - start)
            for kind in DRUM_KINDS:
                for step, ch in enumerate(pats[kind]):
                    if ch in _HIT_VELOCITY:
                        vel = _HIT_VELOCITY[ch]
                        if fill and kind == "snare" and step >= spb - 8:
                            vel *= 0.55 + 0.45 * (step - (spb - 8)) / 7.0
                        hits.append((self.step_sample(bar.index, step), self.step_time(bar.index, step), kind, vel))
        hits.sort(key=lambda h: (h[0], DRUM_KINDS.index(h[2])))

        # A hit may not ring into a section without drums (their truth is
        # "silent"), and an open hat is choked by the next closed hat.
        stop_samples = np.array(sorted(
            {self.step_sample(b.index, 0) for b in self.bars if "drums" not in b.stems} | {self.n_frames}))
        closed = np.array([h[0] for h in hits if h[2] == "closed_hat"] + [self.n_frames])
        fade_n = int(0.004 * self.sr)
        buf = np.zeros((self.n_frames, 2), dtype=np.float32)
        for start, _, kind, vel in hits:
            src_kind = "clap" if (kind == "snare" and use_clap) else kind
            shot = kit[src_kind][rng.integers(len(kit[src_kind]))]
            gain = _DRUM_GAIN[kind] * vel * 10 ** (rng.uniform(-1.0, 1.0) / 20)
            stop = stop_samples[np.searchsorted(stop_samples, start, side="right")]
            if kind == "open_hat":
                stop = min(stop, closed[np.searchsorted(closed, start, side="right")])
            n = min(shot.shape[0], stop - start)
            if n < shot.shape[0]:
                shot = shot[:n].copy()
                f = min(fade_n, n)
                shot[n - f:] *= np.linspace(1.0, 0.0, f)
            gl, gr = _pan_gains(_DRUM_PAN[kind] + rng.uniform(-0.05, 0.05))
            _add(buf, start, shot, gain * gl, gain * gr)
        return buf, [(t, kind) for _, t, kind, _ in hits]

    # ---- bass

    def _bass_note(self, pitch: int, n: int) -> np.ndarray:
        """Saw + square + sine through a resonant low-pass whose cutoff falls after the attack."""
        body_n = self.bucket(n)
        key = ("bass", pitch, body_n)
        if key not in self._cache:
            sr = self.sr
            f0 = _midi_hz(pitch)
            phase = f0 * np.arange(body_n) / sr
            dt = f0 / sr
            # The sine is subtracted because a rising saw's fundamental is -sin:
            # added, it would cancel the very fundamental it is there to thicken.
            src = 0.55 * _saw(phase, dt) + 0.35 * _square(phase, dt) - 0.4 * np.sin(2 * np.pi * phase)
            # Time-varying filter in blocks with carried state: coefficients only
            # change during the sweep, after which one call filters the rest.
            base_hz, env_hz, tau_s = 2.0 * f0 + 60.0, 1000.0, 0.06
            block = 256
            sweep_n = min(body_n, int(0.35 * sr))
            out = np.empty(body_n)
            zi = np.zeros((2, 2))
            pos = 0
            while pos < body_n:
                end = min(pos + block, body_n) if pos < sweep_n else body_n
                fc = base_hz + env_hz * math.exp(-(pos / sr) / tau_s)
                sos = np.vstack([_lowpass_sos(fc, 2.2, sr), _lowpass_sos(fc, 0.707, sr)])
                out[pos:end], zi = signal.sosfilt(sos, src[pos:end], zi=zi)
                pos = end
            self._cache[key] = np.tanh(1.3 * out).astype(np.float32)
        y = self._cache[key][:n] * _env_ar(n, int(0.003 * self.sr), int(0.025 * self.sr))
        return y

    def render_bass(self) -> tuple[np.ndarray, list[Note]]:
        rng, spb = self.rng, self.spb
        # 3/4 bars take the waltz riffs whatever the drum style: 4/4 riffs cut short sound broken.
        options = _BASS_PATTERNS[self.spec.style if self.spb == 16 else "waltz"]
        section_pattern = {name: _pattern_for_meter(options[rng.integers(len(options))], spb) for name in SECTION_NAMES}
        buf = np.zeros(self.n_frames, dtype=np.float32)
        notes: list[Note] = []
        for bar in self.bars:
            if "bass" not in bar.stems:
                continue
            root = 31 + (bar.chord.root - 31) % 12  # G1..F#2, so octaves stay below ~190 Hz
            pattern = section_pattern[bar.name]
            if bar.name == "breakdown" or "drums" not in bar.stems:
                pattern = "R" + "-" * (spb - 1)  # no beat: hold the root
            elif bar.name == "intro" and bar.in_section < bar.section_bars // 2:
                pattern = "".join(c if c in "R-." else "R" for c in pattern)
            for step, length, ch in _runs(pattern, "RFO"):
                pitch = root + {"R": 0, "F": 7, "O": 12}[ch]
                start = self.step_sample(bar.index, step)
                stop = self.step_sample(bar.index, step + length)
                n = stop - start - int(0.004 * self.sr)  # a hair of space so repeated notes re-articulate
                vel = min(1.0, (0.95 if step % 4 == 0 else 0.82) * 10 ** (rng.uniform(-0.5, 0.5) / 20))
                buf[start:start + n] += vel * self._bass_note(pitch, n)
                notes.append(Note(self.step_time(bar.index, step), (start + n) / self.sr, pitch, round(vel, 3)))
        return buf, notes

    # ---- chords (the "other" stem)

    def _pad_voice(self, pitch: int, body_n: int) -> np.ndarray:
        """One pad note: detuned saws, low-passed; left and right get different detunes for width.

        Cached per pitch (filtering is linear, so chords are sums of these),
        since the chords of a progression share most of their notes.
        """
        key = ("padvoice", pitch, body_n)
        if key not in self._cache:
            sr = self.sr
            t = np.arange(body_n) / sr
            out = np.zeros((body_n, 2))
            f0 = _midi_hz(pitch)
            for ch, cents in ((0, (-9.0, 4.0)), (1, (-4.0, 9.0))):
                for c, ph0 in zip(cents, (0.13, 0.61)):
                    f = f0 * 2 ** (c / 1200)
                    out[:, ch] += _saw(f * t + ph0 + 0.21 * pitch, f / sr)
            out = signal.sosfilt(_butter(2, 1600.0, "low", sr), out, axis=0)
            out *= _env_ar(body_n, int(0.12 * sr), 0)[:, None]
            self._cache[key] = out.astype(np.float32)
        return self._cache[key]

    def _pad(self, pitches: tuple[int, ...], n: int) -> np.ndarray:
        body_n = self.bucket(n)
        key = ("pad", pitches, body_n)
        if key not in self._cache:
            out = sum(self._pad_voice(p, body_n) for p in pitches)
            self._cache[key] = out * np.float32(1.0 / (2.0 * len(pitches)))
        return self._cache[key][:n] * _env_ar(n, 0, int(0.15 * self.sr))[:, None]

    def _epiano(self, pitch: int, n: int) -> np.ndarray:
        """Two-operator FM with a decaying index: a soft electric-piano tine."""
        body_n = self.bucket(n)
        key = ("ep", pitch, body_n)
        if key not in self._cache:
            sr = self.sr
            t = np.arange(body_n) / sr
            f0 = _midi_hz(pitch)
            index = 1.8 * np.exp(-t / 0.25) + 0.25
            y = np.sin(2 * np.pi * f0 * t + index * np.sin(2 * np.pi * f0 * t))
            y += 0.12 * np.sin(2 * np.pi * 14.0 * f0 * t) * np.exp(-t / 0.02)  # the tine's bark
            y *= np.exp(-t / 1.1) * _env_ar(body_n, int(0.002 * sr), 0)
            self._cache[key] = y.astype(np.float32)
        return self._cache[key][:n] * _env_ar(n, 0, int(0.03 * self.sr))

    def render_other(self) -> tuple[np.ndarray, list[Note]]:
        rng, spb = self.rng, self.spb
        use_epiano = rng.random() < 0.45
        comp = _COMP_PATTERNS[spb][rng.integers(len(_COMP_PATTERNS[spb]))]
        buf = np.zeros((self.n_frames, 2), dtype=np.float32)
        notes: list[Note] = []
        for bar in self.bars:
            voicing = _voice(bar.chord.pcs)
            if "other" not in bar.stems:
                continue
            level = 0.8 if bar.name == "verse" else 1.0
            if use_epiano and bar.name != "breakdown":  # breakdowns always get the sustained pad
                for step, length, _ in _runs(comp, "X"):
                    start = self.step_sample(bar.index, step)
                    n = self.step_sample(bar.index, step + length) - start - int(0.01 * self.sr)
                    for pitch in voicing:
                        vel = level * 0.8 * 10 ** (rng.uniform(-1, 1) / 20)
                        gl, gr = _pan_gains((pitch - 62) / 18.0)  # low notes left, high right, like a stage piano
                        _add(buf, start, self._epiano(pitch, n) * vel * 0.5, gl, gr)
                        notes.append(Note(self.step_time(bar.index, step), (start + n) / self.sr, pitch, round(vel, 3)))
            else:
                start = self.step_sample(bar.index, 0)
                n = self.step_sample(bar.index, spb) - start
                _add_stereo(buf, start, self._pad(tuple(voicing), n), level)
                for pitch in voicing:
                    notes.append(Note(self.step_time(bar.index, 0), (start + n) / self.sr, pitch, round(0.7 * level, 3)))
        return buf, notes

    # ---- lead (the "vocals" stem)

    def _phrase_rhythm(self, dense: bool) -> list[tuple[int, int]]:
        """(start_step, length_steps) in a two-bar phrase that leaves at least a beat to breathe."""
        rng, spb = self.rng, self.spb
        limit = 2 * spb - 4
        pos = int(rng.choice([0, 0, 2, 4]))
        lengths = np.array([2, 4, 6, 8, 3])
        p = np.array([0.35, 0.35, 0.1, 0.1, 0.1]) if dense else np.array([0.45, 0.3, 0.1, 0.05, 0.1])
        out = []
        while pos < limit - 1:
            length = int(min(rng.choice(lengths, p=p), limit - pos))
            out.append((pos, length))
            pos += length
            if rng.random() < (0.12 if dense else 0.25) and pos < limit - 4:
                pos += 2  # a short catch of breath mid-phrase
        if out:
            s, _ = out[-1]
            out[-1] = (s, limit - s)  # hold the phrase's last note up to the breath
        return out

    def _motif(self, chords: list[_ChordPlan], dense: bool, centre_shift: int) -> list[tuple[int, int, int, str, float]]:
        """A four-bar motif: (start_step, length_steps, pitch, vowel, velocity) relative to its first bar.

        The melody walks through the scale, landing on chord tones on the beat.
        """
        rng, spb, spec = self.rng, self.spb, self.spec
        scale = _MINOR_SCALE if spec.mode == "minor" else _MAJOR_SCALE
        tonic_midi = 57 + (spec.tonic - 57) % 12  # A3..G#4: a tenor/alto range around the tonic
        lo, hi = tonic_midi - 3, tonic_midi + 16
        rhythm_a = self._phrase_rhythm(dense)
        rhythm_b = rhythm_a if rng.random() < 0.6 else self._phrase_rhythm(dense)
        out = []
        centre = tonic_midi + 5 + centre_shift
        current = centre
        vowels = list(_VOWELS)
        for half, rhythm in ((0, rhythm_a), (1, rhythm_b)):
            for i, (step, length) in enumerate(rhythm):
                abs_step = half * 2 * spb + step
                chord = chords[abs_step // spb]
                allowed = {(spec.tonic + s) % 12 for s in scale}
                for pc in chord.pcs:  # follow the harmonic-minor V's leading tone
                    if pc not in allowed:
                        allowed.discard((pc - 1) % 12)
                        allowed.add(pc)
                candidates = [p for p in range(lo, hi + 1) if p % 12 in allowed]
                chord_tones = [p for p in candidates if p % 12 in chord.pcs[:3]]
                last = i == len(rhythm) - 1
                if step % 4 == 0 or last:
                    pool = chord_tones
                    if last:
                        pool = [p for p in chord_tones if p % 12 in chord.pcs[:2]]
                else:
                    pool = candidates
                dist = np.array([abs(p - current) for p in pool], dtype=float)
                pull = np.array([abs(p - centre) for p in pool], dtype=float)
                # Prefer small steps and the middle of the range; usually move
                # rather than repeat, as sung lines do.
                w = np.exp(-0.5 * (dist / 2.5) ** 2 - 0.08 * pull)
                if len(pool) > 1 and rng.random() < 0.7:
                    w = w * (dist > 0)
                w = w + 1e-9
                current = int(rng.choice(pool, p=w / w.sum()))
                vel = 0.85 if step % 8 == 0 else 0.72
                out.append((abs_step, length, current, vowels[rng.integers(len(vowels))], vel))
        return out

    def _voice_note(self, pitch: int, n: int, vowel: str, from_pitch: int | None) -> np.ndarray:
        body_n = self.bucket(n)
        key = ("vox", pitch, body_n, vowel, from_pitch)
        if key not in self._cache:
            sr = self.sr
            t = np.arange(body_n) / sr
            semis = np.full(body_n, float(pitch))
            if from_pitch is not None:  # a singer's short slide from the previous note
                glide = t < 0.06
                semis[glide] = from_pitch + (pitch - from_pitch) * (0.5 - 0.5 * np.cos(np.pi * t[glide] / 0.06))
            depth = 0.25 * np.clip((t - 0.18) / 0.25, 0.0, 1.0)  # vibrato grows in after the attack
            semis = semis + depth * np.sin(2 * np.pi * 5.3 * t)
            f = 440.0 * 2 ** ((semis - 69) / 12)
            phase = np.cumsum(f) / sr
            src = 0.7 * _saw(phase, f / sr) + 0.3 * _square(phase * 1.0 + 0.1, f / sr)
            freqs, bws = _VOWELS[vowel]
            y = 0.35 * signal.sosfilt(_butter(2, 900.0, "low", sr), src)  # body below the first formant
            for fc, bw, g in zip(freqs, bws, (1.0, 0.6, 0.35)):
                y += g * signal.sosfilt(_bandpass_sos(fc, fc / bw, sr), src)
            self._cache[key] = (y * _env_ar(body_n, int(0.05 * sr), 0)).astype(np.float32)
        return self._cache[key][:n] * _env_ar(n, 0, int(0.06 * self.sr))

    def render_vocals(self) -> tuple[np.ndarray, list[Note]]:
        spb = self.spb
        motifs: dict[str, list] = {}
        chords_of = {}
        for bar in self.bars:  # each section kind's first four chords, for writing its motif
            chords_of.setdefault(bar.name, [])
            if len(chords_of[bar.name]) < 4 and bar.in_section == len(chords_of[bar.name]):
                chords_of[bar.name].append(bar.chord)
        for name, shift, dense in (("verse", 0, False), ("chorus", 3, True)):
            chords = chords_of.get(name) or chords_of.get("chorus") or [b.chord for b in self.bars[:4]]
            chords = (chords * 4)[:4]
            motifs[name] = self._motif(chords, dense, shift)
        motifs["breakdown"] = motifs["chorus"]  # the breakdown teases the chorus hook
        motifs["intro"] = motifs["outro"] = motifs["verse"]

        buf = np.zeros(self.n_frames, dtype=np.float32)
        notes: list[Note] = []
        prev: tuple[int, int] | None = None  # (end sample, pitch)
        for bar in self.bars:
            if "vocals" not in bar.stems or bar.in_section % 4:
                continue
            n_groups = -(-bar.section_bars // 4)
            group = bar.in_section // 4
            max_step = spb * 4
            if bar.name == "breakdown" and bar.in_section < bar.section_bars // 2:
                continue  # the first half of a breakdown is instrumental
            if bar.name in ("intro", "outro"):
                continue
            if bar.name == "verse" and n_groups >= 3 and group == n_groups - 1:
                max_step = spb * 2  # leave room before the chorus
            for step, length, pitch, vowel, vel in motifs[bar.name]:
                if step >= max_step or bar.in_section + (step + length) / spb > bar.section_bars:
                    continue
                start = self.step_sample(bar.index, step)
                end = self.step_sample(bar.index, step + length)
                n = max(end - start - int(0.03 * self.sr), int(0.05 * self.sr))
                from_pitch = prev[1] if prev is not None and start - prev[0] < int(0.08 * self.sr) else None
                buf[start:start + n] += vel * self._voice_note(pitch, n, vowel, from_pitch)
                notes.append(Note(self.step_time(bar.index, step), (start + n) / self.sr, pitch, vel))
                prev = (start + n, pitch)
        return buf, notes


def _merge_regions(notes: list[Note], gap_s: float = 0.3) -> list[tuple[float, float]]:
    regions: list[list[float]] = []
    for n in sorted(notes, key=lambda n: n.start_s):
        if regions and n.start_s - regions[-1][1] < gap_s:
            regions[-1][1] = max(regions[-1][1], n.end_s)
        else:
            regions.append([n.start_s, n.end_s])
    return [(a, b) for a, b in regions]


def _active_rms(x: np.ndarray, spans: list[tuple[int, int]]) -> float:
    total, count = 0.0, 0
    for a, b in spans:
        seg = x[a:b]
        total += float(np.sum(seg * seg))
        count += seg.size
    return math.sqrt(total / count) if count and total > 0 else 0.0


def _mix_peak(raw: dict[str, np.ndarray], gains: dict[str, float], block: int = 1 << 16) -> float:
    """Peak of the gain-weighted sum of stems, in cache-sized blocks (no full-length temporaries)."""
    peak = 0.0
    g = {k: np.float32(v) for k, v in gains.items()}
    for a in range(0, raw["drums"].shape[0], block):
        b = a + block
        m = raw["drums"][a:b] * g["drums"] + raw["other"][a:b] * g["other"]
        m += (raw["bass"][a:b] * g["bass"] + raw["vocals"][a:b] * g["vocals"])[:, None]
        peak = max(peak, float(m.max()), -float(m.min()))
    return peak


# --------------------------------------------------------------------------- public API

def generate(spec: TrackSpec | None = None) -> GeneratedTrack:
    """Render a track and its exact truth.

    Parameters
    ----------
    spec : TrackSpec, optional
        What to render; the defaults give a ~2.8 min A-minor house track.

    Returns
    -------
    GeneratedTrack
        ``stems`` ("drums", "bass", "vocals", "other"), each float32
        ``(frames, 2)`` at :data:`SAMPLE_RATE`, summing to ``mix`` whose peak
        is about -1 dBFS; ``truth`` describes every event placed.
    """
    spec = spec or TrackSpec()
    sr = SAMPLE_RATE
    s = _Synth(spec, sr)
    s.plan_harmony()
    # Fixed rendering order keeps the random stream, hence the audio, reproducible.
    drums, drum_hits = s.render_drums()
    bass, bass_notes = s.render_bass()
    other, other_notes = s.render_other()
    vocals, vocal_notes = s.render_vocals()
    raw = {"drums": drums, "bass": bass, "vocals": vocals, "other": other}

    # Sections and the spans where each stem is meant to play, for balancing.
    sections: list[Section] = []
    spans: dict[str, list[tuple[int, int]]] = {k: [] for k in STEMS}
    bar0 = 0
    for si, entry in enumerate(spec.structure):
        n = int(entry[1])
        stems = spec.stems_for(si)
        a, b = s.step_sample(bar0, 0), s.step_sample(bar0 + n, 0)
        sections.append(Section(entry[0], float(s.clock.time(bar0 * s.bpb)), float(s.clock.time((bar0 + n) * s.bpb)),
                                bar0, n, stems))
        for k in stems:
            spans[k].append((a, b))
        bar0 += n
    vocal_regions = _merge_regions(vocal_notes)
    spans["vocals"] = [(int(a * sr), int(b * sr)) for a, b in vocal_regions]

    # Balance the stems by their RMS while playing, then give all of them the
    # same gain so that the mix peaks at _PEAK_DBFS and still is their sum.
    gains = {}
    for k in STEMS:
        rms = _active_rms(raw[k], spans[k])
        gains[k] = 10 ** (_STEM_RMS_DB[k] / 20) / rms if rms > 0 else 1.0
    norm = 10 ** (_PEAK_DBFS / 20) / (_mix_peak(raw, gains) or 1.0)
    stems = {}
    for k in STEMS:
        g = np.float32(gains[k] * norm)
        x = raw[k]
        if x.ndim == 1:  # bass and vocals are rendered mono and centred
            out = np.empty((x.shape[0], 2), dtype=np.float32)
            np.multiply(x, g, out=out[:, 0])
            out[:, 1] = out[:, 0]
        else:
            out = x
            out *= g
        stems[k] = out

    beats = s.clock.time(np.arange(s.n_bars * s.bpb))
    span_s = float(s.clock.time(s.n_bars * s.bpb)) - spec.lead_in_s
    truth = Truth(
        bpm=60.0 * s.n_bars * s.bpb / span_s,
        beats=beats,
        downbeats=beats[:: s.bpb].copy(),
        beats_per_bar=spec.beats_per_bar,
        tonic=int(spec.tonic),
        mode=spec.mode,
        key=spec.key,
        sections=sections,
        notes={"bass": bass_notes, "vocals": vocal_notes, "other": other_notes},
        drum_hits=drum_hits,
        vocal_regions=vocal_regions,
        chords=[Chord(float(s.clock.time(b.index * s.bpb)), float(s.clock.time((b.index + 1) * s.bpb)),
                      b.chord.root, b.chord.quality) for b in s.bars],
        spec=spec,
    )
    return GeneratedTrack(stems=stems, truth=truth, sample_rate=sr)


def write_track(track: GeneratedTrack, path: str | Path, subtype: str | None = None) -> Path:
    """Write the mix to ``path`` (format from its extension) and the truth beside it.

    Returns
    -------
    Path
        The truth file, ``path.with_suffix('.truth.json')``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_audio(path, track.mix, track.sample_rate, subtype=subtype)
    truth_path = path.with_suffix(".truth.json")
    truth_path.write_text(json.dumps(track.truth.to_dict(), indent=1))
    return truth_path


def write_stems(track: GeneratedTrack, folder: str | Path, subtype: str | None = None) -> list[Path]:
    """Write ``drums.wav``, ``bass.wav``, ``vocals.wav`` and ``other.wav`` into ``folder``."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for name in STEMS:
        p = folder / f"{name}.wav"
        write_audio(p, track.stems[name], track.sample_rate, subtype=subtype)
        paths.append(p)
    return paths


def load_truth(path: str | Path) -> Truth:
    """Read a ``.truth.json`` written by :func:`write_track`."""
    return Truth.from_dict(json.loads(Path(path).read_text()))


def _structure_for_bars(total_bars: int) -> list[list]:
    """An arrangement of 8-bar phrases totalling ``total_bars`` that always has a breakdown."""
    if total_bars % 8 or total_bars < 32:
        raise ValueError(f"duration_bars must be a multiple of 8 and at least 32, got {total_bars}")
    units = total_bars // 8
    if units == 4:
        plan = ["intro", "chorus", "breakdown", "outro"]
    elif units == 5:
        plan = ["intro", "verse", "chorus", "breakdown", "outro"]
    else:
        plan = ["intro", "verse", "chorus", "breakdown", "chorus", "outro"]
    bars = {i: 8 for i in range(len(plan))}
    grow = [1, 2, 4] if len(plan) == 6 else [1, 2]
    extra = units - len(plan)
    i = 0
    while extra > 0:  # lengthen verses and choruses to 16, 24, ... bars
        bars[grow[i % len(grow)]] += 8
        extra -= 1
        i += 1
    return [[name, bars[j]] for j, name in enumerate(plan)]


def standard_set(n: int = 12, seed: int = 0, duration_bars: int = 48) -> list[TrackSpec]:
    """Benchmark specs that cover tempo, meter, key, mode, drift and lead-in.

    The first twelve are fixed recipes (house 110-128, breakbeat 136/160,
    dnb 174/178, hiphop 72/86, two 3/4 tracks, two with tempo drift, one with a
    1.5 s lead-in); their keys are twelve distinct tonics, half major and half
    minor, drawn with ``seed``. More than twelve cycle the recipes with new keys
    and seeds. Every track has a breakdown without drums.

    Parameters
    ----------
    n : int
        Number of specs.
    seed : int
        Seeds the key assignment and each track's own seed.
    duration_bars : int
        Bars per track (multiple of 8, >= 32); 48 bars is 1.5-2.5 minutes.
    """
    recipes = [  # (style, bpm, beats_per_bar, mode, drift_bpm, lead_in_s)
        ("house", 124.0, 4, "minor", 0.0, 0.0),
        ("dnb", 174.0, 4, "minor", 0.0, 0.0),
        ("hiphop", 86.0, 4, "major", 0.0, 0.0),
        ("waltz", 96.0, 3, "major", 0.0, 0.0),
        ("house", 128.0, 4, "major", 0.0, 0.0),
        ("breakbeat", 136.0, 4, "minor", 4.0, 0.0),
        ("house", 120.0, 4, "major", 0.0, 1.5),
        ("hiphop", 72.0, 4, "minor", 0.0, 0.0),
        ("waltz", 150.0, 3, "minor", 0.0, 0.0),
        ("breakbeat", 160.0, 4, "major", -3.0, 0.0),
        ("house", 110.0, 4, "minor", 0.0, 0.0),
        ("dnb", 178.0, 4, "major", 0.0, 0.0),
    ]
    rng = np.random.default_rng(seed)
    specs = []
    for i in range(n):
        style, bpm, bpb, mode, drift, lead_in = recipes[i % len(recipes)]
        if i % len(recipes) == 0:
            tonics = rng.permutation(12)
        tonic = int(tonics[i % len(recipes)])
        specs.append(TrackSpec(
            bpm=bpm, beats_per_bar=bpb, tonic=tonic, mode=mode, structure=_structure_for_bars(duration_bars),
            style=style, tempo_drift_bpm=drift, lead_in_s=lead_in, seed=int(rng.integers(2 ** 31)),
            title=f"bench-{i + 1:02d} {style} {bpm:g} {key_name(tonic, mode)}",
        ))
    return specs


def demo_specs() -> list[TrackSpec]:
    """Five DJ-friendly tracks for a demo crate, in neighbouring Camelot keys (7A 8A 8B 9A 9B)."""
    return [
        TrackSpec(bpm=122.0, tonic=9, mode="minor", style="house", seed=101, title="Glass Harbour"),   # 8A
        TrackSpec(bpm=124.0, tonic=4, mode="minor", style="house", seed=202, title="Night Ferry"),     # 9A
        TrackSpec(bpm=126.0, tonic=0, mode="major", style="house", seed=303, title="Paper Suns"),      # 8B
        TrackSpec(bpm=128.0, tonic=7, mode="major", style="house", seed=404, title="Open Window"),     # 9B
        TrackSpec(bpm=174.0, tonic=2, mode="minor", style="dnb", seed=505, title="Low Orbit",          # 7A
                  structure=[["intro", 16], ["verse", 16], ["chorus", 32], ["breakdown", 16], ["chorus", 32],
                             ["outro", 16]]),
    ]
