"""Decoding audio files to ATE's working format, and hashing their content.

ATE works on float32 stereo at 44.1 kHz, shaped ``(frames, 2)``. Every file
that enters the crate goes through :func:`load_audio`; a file that cannot be
decoded raises :class:`AudioError` with a one-line message naming the file and
the reason.

Decoding tries libsndfile first (wav, flac, aiff, ogg/vorbis, opus, mp3 with
libsndfile >= 1.1) and falls back to ``ffmpeg`` for everything else (m4a/aac,
mp4, wma, ...). Resampling uses soxr (high quality).
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr

SAMPLE_RATE = 44100
"""The engine's and the crate's sample rate, in Hz."""

CHANNELS = 2

AUDIO_EXTENSIONS = frozenset(
    {".wav", ".wave", ".flac", ".aif", ".aiff", ".aifc", ".mp3", ".ogg", ".oga",
     ".opus", ".m4a", ".mp4", ".aac", ".alac", ".wma", ".webm"}
)
"""File name extensions that a crate scan treats as audio."""


class AudioError(Exception):
    """A file could not be turned into audio. ``str(err)`` is one line: ``path: reason``."""

    def __init__(self, path: str | Path, reason: str):
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")


def to_stereo(samples: np.ndarray) -> np.ndarray:
    """Return ``samples`` as C-contiguous float32 ``(frames, 2)``.

    Mono is duplicated to both channels; more than two channels are folded to
    two (odd channels left, even channels right, averaged).
    """
    x = np.asarray(samples, dtype=np.float32)
    if x.ndim == 1:
        x = x[:, None]
    if x.shape[1] == 1:
        x = np.repeat(x, 2, axis=1)
    elif x.shape[1] > 2:
        x = np.stack([x[:, 0::2].mean(axis=1), x[:, 1::2].mean(axis=1)], axis=1)
    return np.ascontiguousarray(x, dtype=np.float32)


def resample(samples: np.ndarray, sr_in: int, sr_out: int = SAMPLE_RATE) -> np.ndarray:
    """Resample ``(frames, channels)`` float32 audio from ``sr_in`` to ``sr_out`` Hz."""
    if sr_in == sr_out:
        return samples
    return np.ascontiguousarray(soxr.resample(samples, sr_in, sr_out, quality="HQ"), dtype=np.float32)


def _decode_sndfile(path: Path) -> tuple[np.ndarray, int]:
    data, sr = sf.read(str(path), dtype="float32", always_2d=True)
    return data, int(sr)


def _decode_ffmpeg(path: Path) -> tuple[np.ndarray, int]:
    ffmpeg = shutil.which("ffmpeg")
    if ffmpeg is None:
        raise AudioError(path, "format needs ffmpeg, which is not installed (run scripts/install.sh)")
    cmd = [ffmpeg, "-nostdin", "-v", "error", "-i", str(path), "-map", "0:a:0",
           "-f", "f32le", "-acodec", "pcm_f32le", "-ac", str(CHANNELS), "-ar", str(SAMPLE_RATE), "-"]
    proc = subprocess.run(cmd, capture_output=True, check=False)
    if proc.returncode != 0:
        first = proc.stderr.decode(errors="replace").strip().splitlines()
        detail = first[-1] if first else f"ffmpeg exited with {proc.returncode}"
        raise AudioError(path, f"cannot decode ({detail})")
    data = np.frombuffer(proc.stdout, dtype=np.float32).reshape(-1, CHANNELS)
    return data, SAMPLE_RATE


def load_audio(path: str | Path, min_duration_s: float = 0.0) -> np.ndarray:
    """Decode a file to float32 stereo at :data:`SAMPLE_RATE`.

    Parameters
    ----------
    path : str or Path
        Any file libsndfile or ffmpeg can read.
    min_duration_s : float
        Reject files shorter than this, in seconds.

    Returns
    -------
    np.ndarray
        ``(frames, 2)`` float32, C-contiguous.

    Raises
    ------
    AudioError
        Missing, empty, undecodable, silent-length or too-short files, with a
        one-line reason.
    """
    path = Path(path)
    if not path.is_file():
        raise AudioError(path, "no such file")
    if path.stat().st_size == 0:
        raise AudioError(path, "empty file (0 bytes)")
    try:
        data, sr = _decode_sndfile(path)
    except (sf.LibsndfileError, RuntimeError, ValueError):
        data, sr = _decode_ffmpeg(path)
    if data.shape[0] == 0:
        raise AudioError(path, "contains no audio frames")
    if not np.all(np.isfinite(data)):
        raise AudioError(path, "contains NaN or infinite samples")
    samples = resample(to_stereo(data), sr)
    duration_s = samples.shape[0] / SAMPLE_RATE
    if duration_s < min_duration_s:
        raise AudioError(path, f"too short ({duration_s:.2f} s; at least {min_duration_s:g} s needed)")
    return samples


def content_hash(samples: np.ndarray) -> str:
    """Hash of decoded audio, stable across container, tags and file name.

    The samples are quantised to 16 bits before hashing so that the same
    recording decoded by two decoder versions (which may differ in the last
    float bits) still hashes the same.

    Returns
    -------
    str
        32 hex characters (BLAKE2b-128).
    """
    q = np.clip(np.round(np.asarray(samples, dtype=np.float32) * 32767.0), -32768, 32767).astype("<i2")
    return hashlib.blake2b(q.tobytes(), digest_size=16).hexdigest()


def write_audio(path: str | Path, samples: np.ndarray, sr: int = SAMPLE_RATE, subtype: str | None = None) -> None:
    """Write ``(frames, channels)`` float audio; the format follows the extension (wav, flac, ogg, ...)."""
    sf.write(str(path), samples, sr, subtype=subtype)


def to_mono(samples: np.ndarray) -> np.ndarray:
    """Average ``(frames, channels)`` audio to ``(frames,)`` float32."""
    x = np.asarray(samples, dtype=np.float32)
    return x.mean(axis=1) if x.ndim == 2 else x
