"""Drum transcription of a drum stem into General MIDI drum notes: kick 36, snare 38, closed hat 42, open hat 46.

How :func:`transcribe_drums` works:

1. **Bands.** The power spectrogram (1024-point STFT, hop 256 samples,
   5.8 ms, 44.1 kHz) is summed into 16 bands from 20 Hz to 16 kHz, about
   half an octave wide (:data:`BAND_EDGES_HZ`).
2. **Onsets per band.** Three detection bands see the kit's three kinds of
   attack: low (< 120 Hz: the kick's body), mid (700 Hz-5.6 kHz: snare and
   clap noise) and high (> 8 kHz: hats, above most of a clap's or snare's
   ringing tail). In each, the rise of the band
   level over two frames (dB, floored 50 dB below the band's loudest frame)
   is peak-picked (:data:`ONSET_RISE_DB`, peaks 30 ms apart), so a quiet
   ghost hat is found beside a loud kick. Onsets of different bands within
   35 ms are one event (a clap's three bursts are one).
3. **Which drums, by spectral shape.** The band magnitudes (each band
   scaled by its mean) are factorised by semi-adaptive NMF (KL divergence,
   multiplicative updates) into three spectral templates, kick, snare and
   hat, and their activations over time. The templates start from the
   instruments' physics (a kick is low, a snare mid and broad, a hat high)
   and learn the track's own kit, held half-way to the prior
   (:data:`PRIOR_WEIGHT`) so that they cannot swap roles. Because every
   frame is fitted, not only the attacks, a snare's bright noise is learnt
   from its tail, where the hat struck with it has died away: a snare and a
   hat at one instant are two notes, and a snare alone is no hat.
   Each event's activation rise (mean over 6-29 ms after the onset minus the
   minimum just before) measures each class; the rise is taken after the
   first frames so that a kick's 2 ms click does not read as a snare. A class
   sounds where its rise is at least :data:`PRESENT_SHARE` of its typical
   clean hit (the median rise of events it dominates). A kick must also
   sweep down in pitch (:data:`KICK_SWEEP_OCT`): the low band of a
   separated drum stem carries bass notes, which hold their pitch.
4. **Open or closed.** The top octave (8-16 kHz) 58 ms after the attack
   (or just before the next event, if sooner) still holds more than
   :data:`OPEN_HAT_RATIO` of its peak when the hat rings open; a closed hat
   has died away. With a snare at the same instant, the hat must also outlast
   the snare's own noise band by :data:`SNARE_MARGIN`.

Known miss: a soft closed hat that chokes a ringing open hat at about its
level makes no rise in the hat band and is often not found.

Velocity is the square root of the rise relative to the class's clean hits;
drum notes last :data:`NOTE_LENGTH_S`, as drum notes in a DAW do. Works from
any drum stem (demucs, the DSP separator, a recording); a DSP-separated stem
carries bass and chord leakage and loses kick energy to the bass stem, so
:mod:`prep.transcribe` reads drums from the mix with DSP stems
(docs/transcription.md has the figures).
"""

from __future__ import annotations

import numpy as np
from scipy import signal

from prep.audio import SAMPLE_RATE, to_mono
from prep.midi_file import GM_DRUM_NOTES, NOTE_DTYPE

__all__ = [
    "DRUM_CLASSES",
    "ONSET_RISE_DB",
    "OPEN_HAT_RATIO",
    "PRESENT_SHARE",
    "drum_activations",
    "transcribe_drums",
]

DRUM_CLASSES = ("kick", "snare", "closed_hat", "open_hat")

N_FFT = 1024
HOP = 256
BAND_EDGES_HZ = np.array([20, 70, 120, 180, 250, 350, 500, 700, 1000, 1400, 2000, 2800, 4000, 5600, 8000,
                          11000, 16000], dtype=np.float64)
"""Band edges, Hz: each band holds at least one STFT bin at 44.1 kHz."""

DETECT_BANDS = {"low": (0, 2), "mid": (7, 13), "high": (14, 16)}
"""Detection bands as index ranges of the bands of :data:`BAND_EDGES_HZ`: < 120 Hz, 700 Hz-5.6 kHz, > 8 kHz."""

ONSET_RISE_DB = {"low": 9.0, "mid": 6.0, "high": 4.0}
"""Least rise of a detection band's level over two frames (11.6 ms) that is an onset, in dB."""

FLOOR_DB = 50.0
MERGE_S = 0.035
PRIOR_WEIGHT = 0.5
"""Share of the prior in each template after every NMF update (0: fully adaptive, 1: fixed)."""

NMF_ITERATIONS = 60
PRESENT_SHARE = 0.2
"""A class sounds in an event where its activation rise is at least this share of its typical clean hit."""

OPEN_HAT_LAG_S = 0.058
OPEN_HAT_RATIO = 0.35
"""A hat is open when the top octave (8-16 kHz) keeps more than this share of its peak magnitude 58 ms on
(or just before the next event); a closed hat (decay < 50 ms) keeps less than 0.2, an open one 0.5-0.9."""

SNARE_MARGIN = 0.15
"""With a snare, a hat is open only if the top octave keeps this much more than the snare's band (1.4-5.6 kHz)."""

_TOP_BANDS = slice(14, 16)
_SNARE_BANDS = slice(9, 13)

KICK_SWEEP_OCT = 0.15
"""Least fall of the low band's centroid (octaves) over an event's first 50 ms for a kick: a kick's body
sweeps down (0.4-0.8 octave on the generated kits), a bass note that leaked into the drum stem does not."""

NOTE_LENGTH_S = 0.1
_CLASS_ROWS = ("kick", "snare", "hat")


def _prior_templates() -> np.ndarray:
    """Initial kick, snare and hat templates (band magnitudes, columns summing to 1)."""
    octave = np.log2(np.sqrt(BAND_EDGES_HZ[:-1] * BAND_EDGES_HZ[1:]))
    kick = np.exp(-0.5 * ((octave - np.log2(80.0)) / 1.2) ** 2) + 0.04      # body 50-170 Hz, a click above
    snare = np.exp(-0.5 * ((octave - np.log2(3000.0)) / 1.5) ** 2) + 0.005  # noise centred near 3 kHz
    hat = np.exp(-0.5 * ((octave - np.log2(11000.0)) / 0.7) ** 2) + 0.002   # metal and noise above 6 kHz
    w = np.stack([kick, snare, hat], axis=1)
    return w / w.sum(axis=0)


def band_magnitudes(y: np.ndarray, sr: int = SAMPLE_RATE) -> np.ndarray:
    """Magnitude (root of summed power) per band of :data:`BAND_EDGES_HZ` and STFT frame: ``(16, frames)``.

    Frame ``k`` is centred on sample ``k * HOP``.
    """
    f, _, z = signal.stft(y, fs=sr, window="hann", nperseg=N_FFT, noverlap=N_FFT - HOP, boundary="even",
                          padded=True)
    power = z.real ** 2 + z.imag ** 2
    index = np.searchsorted(BAND_EDGES_HZ, f, side="right") - 1
    out = np.zeros((BAND_EDGES_HZ.size - 1, power.shape[1]))
    for b in range(out.shape[0]):
        out[b] = power[index == b].sum(axis=0)
    return np.sqrt(out)


def _band_onsets(level_db: np.ndarray, rise_db: float, min_gap: int) -> np.ndarray:
    rise = np.zeros_like(level_db)
    rise[2:] = level_db[2:] - level_db[:-2]
    peaks, _ = signal.find_peaks(rise, height=rise_db, distance=max(min_gap, 1))
    return peaks


def _events(mags: np.ndarray, frame_rate: float) -> np.ndarray:
    """Frames of onsets found in any detection band, those within :data:`MERGE_S` merged (earliest kept)."""
    found = []
    for name, (a, b) in DETECT_BANDS.items():
        power = (mags[a:b] ** 2).sum(axis=0)
        top = power.max()
        if top <= 0:
            continue
        db = 10 * np.log10(np.maximum(power, top * 10 ** (-FLOOR_DB / 10)))
        found.append(_band_onsets(db, ONSET_RISE_DB[name], int(0.03 * frame_rate)))
    frames = np.sort(np.concatenate(found)) if found else np.zeros(0, dtype=np.int64)
    if frames.size == 0:
        return frames.astype(np.int64)
    keep = [frames[0]]
    for f in frames[1:]:
        if f - keep[-1] > MERGE_S * frame_rate:
            keep.append(f)
    return np.asarray(keep, dtype=np.int64)


def drum_activations(mags: np.ndarray, iterations: int = NMF_ITERATIONS) -> tuple[np.ndarray, np.ndarray]:
    """Semi-adaptive NMF of band magnitudes into kick, snare and hat: ``(templates (16, 3), activations (3, frames))``.

    KL-divergence multiplicative updates; the templates adapt after 10 rounds and are pulled back to
    the prior by :data:`PRIOR_WEIGHT` after each update, so each keeps its instrument.
    """
    eps = 1e-12
    scale = mags.mean(axis=1) + eps
    v = mags / scale[:, None]
    prior = _prior_templates() / scale[:, None]
    prior /= prior.sum(axis=0)
    w = prior.copy()
    h = np.full((w.shape[1], v.shape[1]), v.mean() / w.shape[1] + eps)
    for it in range(iterations):
        h *= (w.T @ (v / (w @ h + eps))) / (w.sum(axis=0)[:, None] + eps)
        if it >= 10:
            w *= ((v / (w @ h + eps)) @ h.T) / (h.sum(axis=1)[None, :] + eps)
            w = PRIOR_WEIGHT * prior + (1 - PRIOR_WEIGHT) * w / w.sum(axis=0)
            norm = w.sum(axis=0)
            w /= norm
            h *= norm[:, None]
    return w * scale[:, None], h


def _low_sweep(mags: np.ndarray, frames: np.ndarray) -> np.ndarray:
    """How far, in octaves, the centroid of the new power below 350 Hz (above its level just before the
    event, so a bass note already sounding does not count) falls from the first 12 ms to 35-52 ms on."""
    octave = np.log2(np.sqrt(BAND_EDGES_HZ[:5] * BAND_EDGES_HZ[1:6]))
    power = mags[:5] ** 2
    n = power.shape[1]
    out = np.zeros(frames.size)
    for j, f in enumerate(frames):
        before = power[:, max(f - 4, 0):max(f - 1, 1)].min(axis=1)
        early = np.maximum(power[:, min(f, n - 1):min(f + 2, n)].sum(axis=1) - 2 * before, 0.0)
        late = np.maximum(power[:, min(f + 6, n - 1):min(f + 9, n)].sum(axis=1) - 3 * before, 0.0)
        if early.sum() > 0 and late.sum() > 0:
            out[j] = early @ octave / early.sum() - late @ octave / late.sum()
    return out


def _decay(level: np.ndarray, frames: np.ndarray, lag: int) -> np.ndarray:
    """Share of each event's peak level (within 3 frames of it) left ``lag`` frames later, or just before
    the next event when that comes sooner."""
    n = level.size
    gap = np.diff(np.append(frames, n + lag + 2))
    out = np.zeros(frames.size)
    for j, f in enumerate(frames):
        peak = f + int(np.argmax(level[f:min(f + 3, n)]))
        k = min(peak + lag, f + gap[j] - 2, n - 1)
        out[j] = level[max(k, peak)] / max(level[peak], 1e-20)
    return out


def transcribe_drums(samples: np.ndarray, sr: int = SAMPLE_RATE) -> np.ndarray:
    """Drum notes of a drum stem.

    Parameters
    ----------
    samples : ndarray
        float ``(frames, channels)`` or ``(frames,)`` audio of the drums alone.
    sr : int
        Sample rate, in Hz.

    Returns
    -------
    ndarray
        :data:`prep.midi_file.NOTE_DTYPE` notes with General MIDI drum pitches (:data:`GM_DRUM_NOTES`),
        sorted by onset.
    """
    y = to_mono(samples).astype(np.float64)
    if y.size < N_FFT or not np.any(y):
        return np.zeros(0, dtype=NOTE_DTYPE)
    mags = band_magnitudes(y, sr)
    frame_rate = sr / HOP
    frames = _events(mags, frame_rate)
    if frames.size == 0:
        return np.zeros(0, dtype=NOTE_DTYPE)
    _, h = drum_activations(mags)
    n = h.shape[1]
    rise = np.zeros((3, frames.size))
    for j, f in enumerate(frames):
        before = h[:, max(f - 4, 0):max(f - 1, 1)].min(axis=1)
        # 6-29 ms after the onset: past a kick's click, still inside a closed hat.
        after = h[:, min(f + 1, n - 1):min(f + 5, n)].mean(axis=1)
        rise[:, j] = np.maximum(after - before, 0.0)
    share = rise / (rise.sum(axis=0) + 1e-20)
    typical = np.empty(3)
    for c in range(3):
        clean = rise[c][share[c] > 0.6]
        typical[c] = np.median(clean) if clean.size >= 4 else np.percentile(rise[c], 90)
    relative = rise / (typical[:, None] + 1e-20)
    present = relative >= PRESENT_SHARE
    present[0] &= _low_sweep(mags, frames) >= KICK_SWEEP_OCT
    # Open or closed from the top octave's own decay; with a snare, the hat must outlast the snare's noise.
    lag = round(OPEN_HAT_LAG_S * frame_rate)
    high = _decay(mags[_TOP_BANDS].sum(axis=0), frames, lag)
    snare_band = _decay(mags[_SNARE_BANDS].sum(axis=0), frames, lag)
    ringing = (high > OPEN_HAT_RATIO) & (~present[1] | (high > snare_band + SNARE_MARGIN))

    onset_s = frames / frame_rate
    rows = []
    for j in range(frames.size):
        for c, kind in enumerate(_CLASS_ROWS):
            if not present[c, j]:
                continue
            if kind == "hat":
                kind = "open_hat" if ringing[j] else "closed_hat"
            velocity = float(np.clip(np.sqrt(relative[c, j] / 2.0), 0.05, 1.0))
            rows.append((onset_s[j], onset_s[j] + NOTE_LENGTH_S, GM_DRUM_NOTES[kind], velocity))
    notes = np.array(rows, dtype=NOTE_DTYPE) if rows else np.zeros(0, dtype=NOTE_DTYPE)
    return np.sort(notes, order=["onset_s", "pitch"])
