"""Stem storage: ATE's own ``.stems`` file, and import/export of stems users have.

A track's four stems (:data:`STEM_NAMES` order: drums, bass, vocals, other)
live in one ``*.stems`` file, "ATE stems v1". It has to load into memory in
well under a second for a six-minute track on a two-core machine, stay
lossless on 16-bit samples, and cost about what FLAC costs on disk. FLAC
itself is too slow to decode (its entropy coder is serial, about 1.8 s for
four six-minute stems on one core), so the file uses a FLAC-style predictor
with a fast general-purpose back end instead:

1. **Quantise** the float32 stems to int16 with one per-track ``scale``
   (headroom: separated stems of a loud master peak above 1.0). Stems 0-2
   are rounded; the last stem takes the rounding error of the others, so
   that the four decoded stems sum to the float sum within half an LSB
   (see :func:`quantize_stems`).
2. **Predict** each block of 4096 frames with FLAC's fixed polynomial
   predictors (order 0-3, chosen per block and channel by the smallest sum
   of absolute residuals) on the best of three channel pairs: left/right,
   left/side or right/side (side = left - right). All arithmetic wraps
   modulo 2^16, which keeps every step exactly invertible.
3. **Zigzag** the residuals (small negative -> small odd number, so the high
   byte of a quiet residual is 0, not 0xFF) and split them into a low-byte
   and a high-byte plane: the high plane of a well-predicted signal is nearly
   all zeros and compresses to almost nothing.
4. **Compress** each stem's planes with zstd (level 3) as one independent
   frame with a content checksum.

Decoding is the reverse, one stem per thread: zstd and the numba kernels
(``nogil``) release the GIL, so four stems decode in parallel, straight
into a preallocated output array, in int16 (the engine's choice: half the
memory) or float32 (scaling fused into the same pass).

Measured numbers and the alternatives that lost are in ``docs/stems.md``;
``prep/bench_stems.py`` measures them again.

File layout (all integers little-endian)::

    offset 0    10 bytes  magic  b"ATE-STEMS\\n"
    offset 10   4 bytes   uint32 header_bytes
    offset 14   header_bytes  UTF-8 JSON header (see :func:`read_stem_header`)
    offset 14 + header_bytes  the stem blobs, at the offsets the header lists
                          (relative to the end of the header)

The user-facing formats:

- **NI Stems** (``.stem.mp4``, played by Traktor and Mixxx): five stereo
  audio streams, the master mix then drums, bass, other, vocals, and a JSON
  manifest in ``moov/udta/stem``. :func:`export_ni_stems` muxes it with
  ffmpeg (ALAC or AAC) and inserts the manifest box itself;
  :func:`import_ni_stems` decodes it with ffmpeg.
- **A folder of audio files** named after the stems
  (:func:`import_stem_folder`, :func:`export_stem_folder`).
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import struct
import subprocess
import tempfile
import warnings
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import zstandard
from numba import njit

from prep.audio import AUDIO_EXTENSIONS, SAMPLE_RATE, AudioError, load_audio, to_stereo, write_audio

__all__ = [
    "STEM_NAMES", "STEM_FILE_SUFFIX", "FORMAT_VERSION", "NI_STEM_ORDER", "NI_STEM_COLORS", "StemFileError", "fit_stems",
    "quantize_stems", "write_stem_file", "read_stem_file", "read_stem_file_int16", "read_stem_header",
    "export_ni_stems", "import_ni_stems", "read_ni_manifest", "import_stem_folder", "export_stem_folder",
]

STEM_NAMES = ("drums", "bass", "vocals", "other")
"""ATE's stem order, everywhere: arrays shaped ``(4, frames, 2)`` follow it."""

STEM_FILE_SUFFIX = ".stems"

FORMAT_VERSION = 1

MAGIC = b"ATE-STEMS\n"
_PREFIX = struct.Struct("<10sI")  # magic, header_bytes
_MAX_HEADER_BYTES = 16 << 20

CODEC_NAME = "fixed-lpc-zigzag-planes-zstd"
BLOCK_FRAMES = 4096
"""Frames per prediction block; each block chooses its own predictor orders and channel pair."""

SEGMENT_FRAMES = 16 * BLOCK_FRAMES
"""Frames per payload segment (parameters, then four byte planes): the unit decoded from cache."""

ZSTD_LEVEL = 3

_CHUNK_SEGMENTS = 4  # segments decompressed at a time (~1 MB): fits in L2 with room for the output

# Headroom of 2 LSB below full scale: the last stem carries up to 1.5 LSB of
# the other stems' rounding error plus its own 0.5, so it can never clip.
_FULL_SCALE = 32768.0
_HEADROOM_LSB = 2.0



class StemFileError(Exception):
    """A stem file could not be read or written. ``str(err)`` is one line: ``path: reason``."""

    def __init__(self, path: str | Path, reason: str):
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")


# --------------------------------------------------------------------------- quantisation

@njit(nogil=True, cache=True)
def _peak(stems):
    peak = 0.0
    finite = True
    for k in range(stems.shape[0]):
        for i in range(stems.shape[1]):
            for c in range(stems.shape[2]):
                v = float(stems[k, i, c])
                if not math.isfinite(v):
                    finite = False
                a = abs(v)
                if a > peak:
                    peak = a
    return peak, finite


@njit(nogil=True, cache=True)
def _quantize(stems, gain, out):
    # Error feedback: the last stem absorbs the rounding of the others, so the
    # int16 stems sum to round(gain * float_sum) exactly (when nothing clips).
    n_stems = stems.shape[0]
    clipped = 0
    for i in range(stems.shape[1]):
        for c in range(stems.shape[2]):
            total = 0.0
            acc = 0.0
            for k in range(n_stems):
                v = float(stems[k, i, c])
                total += v
                if k < n_stems - 1:
                    q = np.rint(v * gain)
                    if q > 32767.0:
                        q = 32767.0
                        clipped += 1
                    elif q < -32768.0:
                        q = -32768.0
                        clipped += 1
                    out[k, i, c] = np.int16(q)
                    acc += q
            q = np.rint(total * gain - acc)
            if q > 32767.0:
                q = 32767.0
                clipped += 1
            elif q < -32768.0:
                q = -32768.0
                clipped += 1
            out[n_stems - 1, i, c] = np.int16(q)
    return clipped


def quantize_stems(stems: np.ndarray, threads: int | None = None) -> tuple[np.ndarray, float, int]:
    """Quantise float stems to int16 with a per-track scale, preserving their sum.

    ``scale = min(1, (32768 - 2) / (32768 * peak))`` where ``peak`` is the
    largest absolute sample of any stem, so stems that peak above 1.0 fit.
    Stems ``0..n-2`` are rounded: ``q_k = round(x_k * scale * 32768)``; the
    last stem takes their rounding error:
    ``q_last = round(scale * 32768 * sum_k x_k - sum_{k<last} q_k)``, with
    the float sum taken in float64. So the quantised stems sum to
    ``round(scale * 32768 * sum_float)`` exactly. Decoded with a gain of
    ``1 / (scale * 32768)``, stems ``0..n-2`` are within 0.5 LSB of their float
    values, the last within 2 LSB, and their sum within 0.5 LSB of the float
    sum, i.e. ``0.5 / (32768 * scale)`` of full scale (-96.3 dBFS at scale 1).

    Parameters
    ----------
    stems : np.ndarray
        Float ``(n_stems, frames, 2)``, any level.
    threads : int, optional
        Worker threads over frame ranges; default ``os.cpu_count()``.

    Returns
    -------
    q : np.ndarray
        int16 ``(n_stems, frames, 2)``.
    scale : float
        The factor applied before quantising (``<= 1``).
    clipped_samples : int
        Samples that had to be clipped. The 2 LSB of headroom make this 0
        for finite input; it is counted (and reported) all the same.

    Raises
    ------
    ValueError
        Non-finite samples.
    """
    x = np.asarray(stems)
    if x.dtype not in (np.float32, np.float64):
        x = x.astype(np.float32)
    x = np.ascontiguousarray(x)
    frames = x.shape[1]
    workers = max(1, min(threads or os.cpu_count() or 1, frames // 65536 + 1))
    bounds = np.linspace(0, frames, workers + 1).astype(int)
    spans = list(zip(bounds[:-1], bounds[1:]))
    q = np.empty(x.shape, dtype=np.int16)
    with ThreadPoolExecutor(workers) as pool:
        peaks = list(pool.map(lambda s: _peak(x[:, s[0]:s[1]]), spans))
        if not all(finite for _, finite in peaks):
            raise ValueError("stems contain NaN or infinite samples")
        peak = max((p for p, _ in peaks), default=0.0)
        scale = 1.0 if peak <= 0.0 else min(1.0, (_FULL_SCALE - _HEADROOM_LSB) / (_FULL_SCALE * peak))
        gain = scale * _FULL_SCALE
        clipped = sum(pool.map(lambda s: int(_quantize(x[:, s[0]:s[1]], gain, q[:, s[0]:s[1]])), spans))
    return q, float(scale), clipped


# --------------------------------------------------------------------------- codec kernels

@njit(nogil=True, cache=True, inline="always")
def _wrap16(v):
    return ((v + 32768) & 0xFFFF) - 32768


@njit(nogil=True, cache=True)
def _fixed_residual(v, order, e):
    """``e[j] = v[j + 3] - prediction`` for FLAC's fixed predictor ``order`` (0-3), unwrapped.

    ``v`` holds three frames of history, then the block.
    """
    m = e.shape[0]
    if order == 0:
        for j in range(m):
            e[j] = v[j + 3]
    elif order == 1:
        for j in range(m):
            e[j] = v[j + 3] - v[j + 2]
    elif order == 2:
        for j in range(m):
            e[j] = v[j + 3] - 2 * v[j + 2] + v[j + 1]
    else:
        for j in range(m):
            e[j] = v[j + 3] - 3 * v[j + 2] + 3 * v[j + 1] - v[j]


@njit(nogil=True, cache=True)
def _segment_planes(payload, pos, nb, m):
    """Views of one segment of a stem payload: ``nb`` block parameter bytes, then
    the low and high byte planes of both channels' residuals, ``m`` bytes each
    (encoder and decoder share this one definition of the layout)."""
    return (payload[pos:pos + nb], payload[pos + nb:pos + nb + m], payload[pos + nb + m:pos + nb + 2 * m],
            payload[pos + nb + 2 * m:pos + nb + 3 * m], payload[pos + nb + 3 * m:pos + nb + 4 * m])


@njit(nogil=True, cache=True)
def _encode_stem(x, block_frames, segment_frames, payload):
    """int16 ``(n, 2)`` -> payload, one segment after another.

    A segment of ``m`` frames is ``[one parameter byte per block][lo0: m]
    [lo1: m][hi0: m][hi1: m]``: the low and high bytes of the zigzagged
    residuals of the two coded channels. A parameter byte is ``order0 |
    order1 << 2 | pair << 4`` with pair 0 = left/right, 1 = left/side,
    2 = right/side (side = left - right, wrapped to 16 bits).
    """
    n = x.shape[0]
    vals = np.zeros((3, block_frames + 3), dtype=np.int64)  # L, R, S with 3 frames of history
    e = np.zeros(block_frames, dtype=np.int64)
    cost = np.zeros((3, 4), dtype=np.int64)
    pos = 0
    for s0 in range(0, n, segment_frames):
        m = min(segment_frames, n - s0)
        nb = (m + block_frames - 1) // block_frames
        params, lo0, lo1, hi0, hi1 = _segment_planes(payload, pos, nb, m)
        pos += nb + 4 * m
        for b in range(nb):
            i0 = s0 + b * block_frames
            mb = min(s0 + m, i0 + block_frames) - i0
            for j in range(-3, mb):
                i = i0 + j
                if i >= 0:
                    lv = np.int64(x[i, 0])
                    rv = np.int64(x[i, 1])
                else:
                    lv = 0
                    rv = 0
                vals[0, j + 3] = lv
                vals[1, j + 3] = rv
                vals[2, j + 3] = _wrap16(lv - rv)
            eb = e[:mb]
            for ch in range(3):
                v = vals[ch]
                c0 = c1 = c2 = c3 = 0
                for j in range(mb):
                    d1 = v[j + 3] - v[j + 2]
                    d1p = v[j + 2] - v[j + 1]
                    d2 = d1 - d1p
                    d3 = d2 - (d1p - (v[j + 1] - v[j]))
                    c0 += abs(v[j + 3])
                    c1 += abs(_wrap16(d1))
                    c2 += abs(_wrap16(d2))
                    c3 += abs(_wrap16(d3))
                cost[ch, 0] = c0
                cost[ch, 1] = c1
                cost[ch, 2] = c2
                cost[ch, 3] = c3
            best = np.zeros(3, dtype=np.int64)
            for ch in range(3):
                for o in range(1, 4):
                    if cost[ch, o] < cost[ch, best[ch]]:
                        best[ch] = o
            c_l, c_r, c_s = cost[0, best[0]], cost[1, best[1]], cost[2, best[2]]
            pair = 0
            ch0, ch1 = 0, 1
            if c_l + c_s < c_l + c_r and c_l + c_s <= c_r + c_s:
                pair = 1
                ch0, ch1 = 0, 2
            elif c_r + c_s < c_l + c_r:
                pair = 2
                ch0, ch1 = 1, 2
            params[b] = np.uint8(best[ch0] | (best[ch1] << 2) | (pair << 4))
            j0 = i0 - s0
            _fixed_residual(vals[ch0, :mb + 3], best[ch0], eb)
            for j in range(mb):
                r = _wrap16(eb[j])
                u = ((r << 1) ^ (r >> 63)) & 0xFFFF
                lo0[j0 + j] = np.uint8(u & 0xFF)
                hi0[j0 + j] = np.uint8(u >> 8)
            _fixed_residual(vals[ch1, :mb + 3], best[ch1], eb)
            for j in range(mb):
                r = _wrap16(eb[j])
                u = ((r << 1) ^ (r >> 63)) & 0xFFFF
                lo1[j0 + j] = np.uint8(u & 0xFF)
                hi1[j0 + j] = np.uint8(u >> 8)


@njit(nogil=True, cache=True)
def _undo_prediction(t, order, h1, h2, h3):
    """In place: residuals -> samples for fixed predictor ``order``; history ``h1`` (latest) .. ``h3``.

    Values are left unwrapped (exact modulo 2^16); within one block they
    stay far inside int64.
    """
    m = t.shape[0]
    if order == 1:
        p1 = h1
        for j in range(m):
            p1 = t[j] + p1
            t[j] = p1
    elif order == 2:
        p1, p2 = h1, h2
        for j in range(m):
            v = t[j] + 2 * p1 - p2
            t[j] = v
            p2 = p1
            p1 = v
    elif order == 3:
        p1, p2, p3 = h1, h2, h3
        for j in range(m):
            v = t[j] + 3 * (p1 - p2) + p3
            t[j] = v
            p3 = p2
            p2 = p1
            p1 = v


@njit(nogil=True, cache=True)
def _decode_segments(payload, n, block_frames, segment_frames, state, out_i16, out_f32, gain):
    """Inverse of :func:`_encode_stem` for ``n`` frames of whole segments.

    ``state`` (int64[6]: last three left samples, newest first, then the
    right ones) carries the predictor history in and out, so a stem can be
    decoded in pieces. Writes ``out_i16``, or, if that is empty,
    ``out_f32 = samples * gain``.
    """
    to_float = out_i16.shape[0] == 0
    g = np.float32(gain)
    t0 = np.empty(block_frames, dtype=np.int64)
    t1 = np.empty(block_frames, dtype=np.int64)
    hist = np.empty((2, 3), dtype=np.int64)
    l1, l2, l3, r1, r2, r3 = state[0], state[1], state[2], state[3], state[4], state[5]
    pos = 0
    for s0 in range(0, n, segment_frames):
        m = min(segment_frames, n - s0)
        nb = (m + block_frames - 1) // block_frames
        params, lo0, lo1, hi0, hi1 = _segment_planes(payload, pos, nb, m)
        pos += nb + 4 * m
        for b in range(nb):
            j0 = b * block_frames
            mb = min(m, j0 + block_frames) - j0
            p = np.int64(params[b])
            pair = (p >> 4) & 3
            a = t0[:mb]
            c = t1[:mb]
            for j in range(mb):  # un-zigzag (vectorises)
                u0 = np.int64(lo0[j0 + j]) | (np.int64(hi0[j0 + j]) << 8)
                u1 = np.int64(lo1[j0 + j]) | (np.int64(hi1[j0 + j]) << 8)
                a[j] = (u0 >> 1) ^ -(u0 & 1)
                c[j] = (u1 >> 1) ^ -(u1 & 1)
            s1, s2, s3 = _wrap16(l1 - r1), _wrap16(l2 - r2), _wrap16(l3 - r3)
            if pair == 0:
                _undo_prediction(a, p & 3, l1, l2, l3)
                _undo_prediction(c, (p >> 2) & 3, r1, r2, r3)
            elif pair == 1:
                _undo_prediction(a, p & 3, l1, l2, l3)
                _undo_prediction(c, (p >> 2) & 3, s1, s2, s3)
                for j in range(mb):
                    c[j] = a[j] - c[j]
            else:
                _undo_prediction(a, p & 3, r1, r2, r3)
                _undo_prediction(c, (p >> 2) & 3, s1, s2, s3)
                for j in range(mb):
                    v = a[j]
                    a[j] = v + c[j]
                    c[j] = v
            # a = left, c = right, exact modulo 2^16: the int16 cast wraps.
            i0 = s0 + j0
            if to_float:
                for j in range(mb):
                    out_f32[i0 + j, 0] = np.float32(np.int16(a[j])) * g
                    out_f32[i0 + j, 1] = np.float32(np.int16(c[j])) * g
            else:
                for j in range(mb):
                    out_i16[i0 + j, 0] = np.int16(a[j])
                    out_i16[i0 + j, 1] = np.int16(c[j])
            for j in range(max(0, mb - 3), mb):
                l3, l2, l1 = l2, l1, _wrap16(a[j])
                r3, r2, r1 = r2, r1, _wrap16(c[j])
    state[0], state[1], state[2], state[3], state[4], state[5] = l1, l2, l3, r1, r2, r3


def _payload_bytes(frames: int, block_frames: int, segment_frames: int) -> int:
    """Bytes of a stem's uncompressed payload: one parameter byte per block, four per frame."""
    full, rest = divmod(frames, segment_frames)
    return full * (segment_frames // block_frames) + (rest + block_frames - 1) // block_frames + 4 * frames


def _encode_blob(q: np.ndarray, level: int) -> tuple[bytes, int]:
    payload = np.empty(_payload_bytes(q.shape[0], BLOCK_FRAMES, SEGMENT_FRAMES), dtype=np.uint8)
    _encode_stem(q, BLOCK_FRAMES, SEGMENT_FRAMES, payload)
    cctx = zstandard.ZstdCompressor(level=level, write_checksum=True, write_content_size=True)
    return cctx.compress(payload), payload.size


# --------------------------------------------------------------------------- the .stems file

def _as_stem_array(stems: np.ndarray | Mapping[str, np.ndarray]) -> np.ndarray:
    if isinstance(stems, Mapping):
        missing = [name for name in STEM_NAMES if name not in stems]
        if missing:
            raise ValueError(f"stems mapping lacks {', '.join(missing)}; need {STEM_NAMES}")
        stems = np.stack([np.asarray(stems[name]) for name in STEM_NAMES])
    x = np.asarray(stems)
    if x.ndim != 3 or x.shape[0] != len(STEM_NAMES) or x.shape[2] != 2:
        raise ValueError(f"stems must be shaped (4, frames, 2) in {STEM_NAMES} order, got {x.shape}")
    if x.dtype.kind != "f":
        raise ValueError(f"stems must be float (full scale 1.0), got {x.dtype}")
    return x


def write_stem_file(path: str | Path, stems: np.ndarray | Mapping[str, np.ndarray], sample_rate: int = SAMPLE_RATE,
                    meta: dict | None = None, *, threads: int | None = None, level: int = ZSTD_LEVEL) -> dict:
    """Write four float stems to an ATE stems v1 file.

    The write is atomic: the data goes to a temporary file in the same
    folder, which is synced and then renamed over ``path``, so a reader never
    sees half a file.

    Parameters
    ----------
    path : str or Path
        Destination, conventionally ending in :data:`STEM_FILE_SUFFIX`.
    stems : np.ndarray or mapping
        Float ``(4, frames, 2)`` in :data:`STEM_NAMES` order, or a mapping
        from those names to ``(frames, 2)`` arrays. May peak above 1.0.
    sample_rate : int
        In Hz; stored, not converted.
    meta : dict, optional
        Free-form JSON-serialisable information (separation model, fold
        rule, source file hash...), stored under ``"meta"``.
    threads : int, optional
        Worker threads for quantising and encoding (one stem each); default
        ``os.cpu_count()``. The file does not depend on it.
    level : int
        zstd level; 3 is the measured sweet spot (higher levels save 1-2 %
        at several times the encoding time; decoding speed is the same).

    Returns
    -------
    dict
        The header as written (see :func:`read_stem_header`).

    Raises
    ------
    ValueError
        Wrong shape, dtype, non-finite samples, or ``meta`` not JSON.
    StemFileError
        The file could not be written.
    """
    path = Path(path)
    x = _as_stem_array(stems)
    q, scale, clipped = quantize_stems(x, threads)
    if clipped:
        warnings.warn(f"{path}: {clipped} samples clipped while quantising stems", RuntimeWarning, stacklevel=2)
    frames = int(q.shape[1])
    workers = max(1, min(len(STEM_NAMES), threads or os.cpu_count() or 1))
    with ThreadPoolExecutor(workers) as pool:
        encoded = list(pool.map(lambda k: _encode_blob(q[k], level), range(len(STEM_NAMES))))
    blobs = []
    offset = 0
    for name, (blob, raw) in zip(STEM_NAMES, encoded):
        blobs.append({"name": name, "offset": offset, "bytes": len(blob), "raw_bytes": raw})
        offset += len(blob)
    header: dict[str, Any] = {
        "format": "ATE stems",
        "format_version": FORMAT_VERSION,
        "sample_rate": int(sample_rate),
        "frames": frames,
        "channels": 2,
        "stems": list(STEM_NAMES),
        "sample_format": "int16",
        "scale": scale,
        "clipped_samples": clipped,
        "codec": {"name": CODEC_NAME, "block_frames": BLOCK_FRAMES, "segment_frames": SEGMENT_FRAMES,
                  "zstd_level": int(level),
                  "checksum": "zstd frame xxh64"},
        "blobs": blobs,
        "data_bytes": offset,
        "meta": dict(meta or {}),
    }
    try:
        header_json = (json.dumps(header, separators=(",", ":"), allow_nan=False) + "\n").encode()
    except (TypeError, ValueError) as exc:
        raise ValueError(f"meta must be JSON-serialisable: {exc}") from exc
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(_PREFIX.pack(MAGIC, len(header_json)))
            f.write(header_json)
            for blob, _ in encoded:
                f.write(blob)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        Path(tmp).unlink(missing_ok=True)
        raise StemFileError(path, f"cannot write ({exc.strerror or exc})") from exc
    return header


def _parse_header(path: Path, head: bytes, file_size: int) -> tuple[dict, int]:
    """Validate the prefix and header; return the header and the offset of the data."""
    if len(head) < _PREFIX.size:
        raise StemFileError(path, f"truncated: {file_size} bytes, too short for an ATE stems file")
    magic, header_bytes = _PREFIX.unpack_from(head)
    if magic != MAGIC:
        raise StemFileError(path, "not an ATE stems file (bad magic)")
    if header_bytes > _MAX_HEADER_BYTES:
        raise StemFileError(path, f"corrupt header length ({header_bytes} bytes)")
    data_offset = _PREFIX.size + header_bytes
    if file_size < data_offset:
        raise StemFileError(path, f"truncated inside the header ({file_size} of at least {data_offset} bytes)")
    try:
        header = json.loads(head[_PREFIX.size:data_offset].decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise StemFileError(path, f"corrupt header ({exc})") from exc
    if not isinstance(header, dict):
        raise StemFileError(path, "corrupt header (not a JSON object)")
    version = header.get("format_version")
    if version != FORMAT_VERSION:
        raise StemFileError(path, f"unsupported format version {version!r} (this reader reads {FORMAT_VERSION})")
    try:
        frames = int(header["frames"])
        blobs = header["blobs"]
        codec = header["codec"]
        if codec["name"] != CODEC_NAME:
            raise StemFileError(path, f"unknown codec {codec['name']!r}")
        if header["channels"] != 2 or header["sample_format"] != "int16" or len(blobs) != len(header["stems"]):
            raise StemFileError(path, "corrupt header (channels, sample format or stem list)")
        float(header["scale"])
        block_frames, segment_frames = int(codec["block_frames"]), int(codec["segment_frames"])
        if block_frames < 1 or segment_frames < block_frames or segment_frames % block_frames:
            raise StemFileError(path, "corrupt header (block or segment size)")
        data_bytes = 0
        for blob in blobs:
            if int(blob["offset"]) != data_bytes or int(blob["bytes"]) < 0 or not isinstance(blob["name"], str):
                raise StemFileError(path, "corrupt header (blob offsets)")
            data_bytes += int(blob["bytes"])
    except (KeyError, TypeError, ValueError) as exc:
        raise StemFileError(path, f"corrupt header (bad or missing field {exc})") from exc
    if frames < 0 or data_bytes != header.get("data_bytes"):
        raise StemFileError(path, "corrupt header (frames or blob sizes)")
    expected = data_offset + data_bytes
    if file_size < expected:
        raise StemFileError(path, f"truncated: {file_size} bytes, header promises {expected}")
    if file_size > expected:
        raise StemFileError(path, f"size mismatch: {file_size} bytes, header promises {expected}")
    return header, data_offset


def _open_checked(path: str | Path):
    path = Path(path)
    try:
        f = open(path, "rb")
    except FileNotFoundError:
        raise StemFileError(path, "no such file") from None
    except IsADirectoryError:
        raise StemFileError(path, "is a directory, not a stem file") from None
    except OSError as exc:
        raise StemFileError(path, f"cannot open ({exc.strerror or exc})") from exc
    return path, f


def read_stem_header(path: str | Path) -> dict:
    """Read and check a stem file's header without decoding any audio.

    Returns
    -------
    dict
        ``format`` ("ATE stems"), ``format_version`` (1), ``sample_rate``
        (Hz), ``frames``, ``channels`` (2), ``stems`` (names, in order),
        ``sample_format`` ("int16"), ``scale`` (decoded float = int16 /
        (32768 * scale)), ``clipped_samples``, ``codec`` (``name``,
        ``block_frames``, ``zstd_level``, ``checksum``), ``blobs`` (per stem:
        ``name``, ``offset`` from the end of the header, ``bytes``,
        ``raw_bytes``), ``data_bytes``, ``meta`` (free-form), plus
        ``duration_s`` and ``file_bytes`` added on reading.

    Raises
    ------
    StemFileError
        Missing, truncated, not a stem file, unsupported version, corrupt
        header, or a size that does not match the header.
    """
    path, f = _open_checked(path)
    with f:
        header, _, size = _read_checked_header(path, f)
    return _with_derived(header, size)


def _read_checked_header(path: Path, f) -> tuple[dict, int, int]:
    size = os.fstat(f.fileno()).st_size
    if size == 0:
        raise StemFileError(path, "truncated: empty file (0 bytes)")
    head = f.read(_PREFIX.size)
    if len(head) == _PREFIX.size and head[:len(MAGIC)] == MAGIC:
        head += f.read(min(_PREFIX.unpack(head)[1], _MAX_HEADER_BYTES))
    header, data_offset = _parse_header(path, head, size)
    return header, data_offset, size


def _with_derived(header: dict, file_size: int) -> dict:
    header["duration_s"] = header["frames"] / header["sample_rate"] if header["sample_rate"] else 0.0
    header["file_bytes"] = file_size
    return header


def _read(path: str | Path, threads: int | None, to_float: bool) -> tuple[np.ndarray, dict]:
    path, f = _open_checked(path)
    with f:
        header, data_offset, size = _read_checked_header(path, f)
        frames = header["frames"]
        block_frames = int(header["codec"]["block_frames"])
        segment_frames = int(header["codec"]["segment_frames"])
        n_stems = len(header["blobs"])
        out = np.empty((n_stems, frames, 2), dtype=np.float32 if to_float else np.int16)
        gain = 1.0 / (_FULL_SCALE * float(header["scale"]))
        chunk_frames = _CHUNK_SEGMENTS * segment_frames
        fd = f.fileno()

        def decode(k: int) -> None:
            blob = header["blobs"][k]
            name = blob["name"]
            compressed = os.pread(fd, int(blob["bytes"]), data_offset + int(blob["offset"]))
            state = np.zeros(6, dtype=np.int64)
            no_i16 = np.empty((0, 2), dtype=np.int16)
            no_f32 = np.empty((0, 2), dtype=np.float32)
            # A few segments at a time through a small buffer that stays in cache.
            buf = np.empty(_payload_bytes(min(chunk_frames, frames), block_frames, segment_frames), dtype=np.uint8)
            try:
                reader = zstandard.ZstdDecompressor().stream_reader(compressed, read_across_frames=False)
                for c0 in range(0, frames, chunk_frames):
                    m = min(chunk_frames, frames - c0)
                    want = _payload_bytes(m, block_frames, segment_frames)
                    got = 0
                    while got < want:
                        step = reader.readinto(buf[got:want])
                        if step == 0:
                            raise StemFileError(path, f"stem {name!r}: size mismatch (data ends at frame {c0})")
                        got += step
                    if to_float:
                        _decode_segments(buf[:want], m, block_frames, segment_frames, state, no_i16,
                                         out[k, c0:c0 + m], gain)
                    else:
                        _decode_segments(buf[:want], m, block_frames, segment_frames, state, out[k, c0:c0 + m],
                                         no_f32, gain)
                # Reading past the end makes zstd check the frame's checksum.
                if reader.read(1):
                    raise StemFileError(path, f"stem {name!r}: size mismatch (more data than {frames} frames)")
            except zstandard.ZstdError as exc:
                raise StemFileError(path, f"stem {name!r} is corrupt ({exc})") from None

        workers = max(1, min(n_stems, threads or os.cpu_count() or 1))
        if workers == 1:
            for k in range(n_stems):
                decode(k)
        else:
            with ThreadPoolExecutor(workers) as pool:
                list(pool.map(decode, range(n_stems)))
    return out, _with_derived(header, size)


def read_stem_file(path: str | Path, threads: int | None = None) -> tuple[np.ndarray, dict]:
    """Load a stem file as float32.

    Parameters
    ----------
    path : str or Path
        An ATE stems v1 file.
    threads : int, optional
        Stems decoded at once (one thread each); default ``os.cpu_count()``.
        The result does not depend on it.

    Returns
    -------
    stems : np.ndarray
        float32 ``(4, frames, 2)`` in the header's stem order
        (:data:`STEM_NAMES`), ``int16 / (32768 * scale)``.
    header : dict
        As :func:`read_stem_header`.

    Raises
    ------
    StemFileError
        Missing, truncated, bad magic, unsupported version, corrupt data
        (zstd checksum) or sizes that do not match the header.
    """
    return _read(path, threads, to_float=True)


def read_stem_file_int16(path: str | Path, threads: int | None = None) -> tuple[np.ndarray, float, dict]:
    """Load a stem file as int16, for the engine (half the memory of float32).

    Returns
    -------
    stems : np.ndarray
        int16 ``(4, frames, 2)``, exactly the samples that were stored.
    scale : float
        Float value = ``stems / (32768 * scale)``.
    header : dict
        As :func:`read_stem_header`.
    """
    q, header = _read(path, threads, to_float=False)
    return q, float(header["scale"]), header


# --------------------------------------------------------------------------- NI Stems (.stem.mp4)

NI_STEM_ORDER = ("drums", "bass", "other", "vocals")
"""Stem order of the four stem streams (1-4) of an NI Stems file; stream 0 is the master mix."""

NI_STEM_COLORS = {"drums": "#009E73", "bass": "#D55E00", "other": "#CC79A7", "vocals": "#56B4E9"}
"""Colours of NI's reference manifest (also Mixxx's defaults for a manifest without colours)."""

_NI_DEFAULT_NAMES = {"drums": "Drums", "bass": "Bass", "other": "Other", "vocals": "Vocals"}
_NI_TO_ATE = [NI_STEM_ORDER.index(name) for name in STEM_NAMES]  # ATE index -> NI stem index
_NI_DEFAULT_DSP = {
    # NI's reference manifest, with both processors off so the stems sum to the master unaltered.
    "compressor": {"enabled": False, "ratio": 3, "output_gain": 0.5, "release": 0.3, "attack": 0.003,
                   "input_gain": 0.5, "threshold": 0, "hp_cutoff": 300, "dry_wet": 50},
    "limiter": {"enabled": False, "release": 0.05, "threshold": 0, "ceiling": -0.35},
}
_BOX = struct.Struct(">I4s")


def _tool(name: str, path: Path) -> str:
    exe = shutil.which(name)
    if exe is None:
        raise StemFileError(path, f"needs {name}, which is not installed (run scripts/install.sh)")
    return exe


def _boxes(f, start: int, end: int):
    """Yield ``(type, offset, header_bytes, size)`` for the MP4 boxes between ``start`` and ``end``."""
    pos = start
    while pos + 8 <= end:
        f.seek(pos)
        size, kind = _BOX.unpack(f.read(8))
        header = 8
        if size == 1:
            size = struct.unpack(">Q", f.read(8))[0]
            header = 16
        elif size == 0:
            size = end - pos
        if size < header or pos + size > end:
            raise ValueError(f"box {kind!r} at byte {pos} runs past its parent")
        yield kind, pos, header, size
        pos += size


def _find_box(f, path: tuple[bytes, ...], start: int, end: int) -> tuple[int, int, int] | None:
    for kind, pos, header, size in _boxes(f, start, end):
        if kind == path[0]:
            if len(path) == 1:
                return pos, header, size
            return _find_box(f, path[1:], pos + header, pos + size)
    return None


def _check_mp4(path: Path, f) -> int:
    size = os.fstat(f.fileno()).st_size
    head = f.read(8)
    if len(head) < 8 or head[4:8] not in (b"ftyp", b"free", b"skip", b"mdat", b"moov", b"wide"):
        raise StemFileError(path, "not an MP4 file (no MP4 box at the start)")
    return size


def read_ni_manifest(path: str | Path) -> dict:
    """The JSON manifest in an NI Stems file's ``moov/udta/stem`` box, or ``{}`` if there is none.

    Raises
    ------
    StemFileError
        Missing file, not an MP4, or a broken box structure.
    """
    path = Path(path)
    if not path.is_file():
        raise StemFileError(path, "no such file")
    with open(path, "rb") as f:
        size = _check_mp4(path, f)
        try:
            found = _find_box(f, (b"moov", b"udta", b"stem"), 0, size)
        except ValueError as exc:
            raise StemFileError(path, f"broken MP4 box structure ({exc})") from None
        if found is None:
            return {}
        pos, header, box_size = found
        f.seek(pos + header)
        body = f.read(box_size - header)
    # Some writers NUL-terminate the JSON (Mixxx strips them too).
    try:
        manifest = json.loads(body.rstrip(b"\0").decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        warnings.warn(f"{path}: stem manifest is not valid JSON; ignored", RuntimeWarning, stacklevel=2)
        return {}
    return manifest if isinstance(manifest, dict) else {}


def _insert_stem_box(path: Path, manifest: bytes) -> None:
    """Append a ``stem`` box to ``moov/udta`` (creating ``udta`` if needed) and fix the parents' sizes.

    Only for files whose media data all lie before ``moov`` (ffmpeg without
    ``+faststart``): growing ``moov`` then moves no sample, so the chunk
    offsets in ``stco``/``co64`` stay valid.
    """
    stem_box = _BOX.pack(8 + len(manifest), b"stem") + manifest
    with open(path, "r+b") as f:
        end = os.fstat(f.fileno()).st_size
        top = list(_boxes(f, 0, end))
        moov = next(((pos, header, size) for kind, pos, header, size in top if kind == b"moov"), None)
        if moov is None:
            raise StemFileError(path, "muxed file has no moov box")
        moov_pos, moov_header, moov_size = moov
        if any(kind == b"mdat" and pos > moov_pos for kind, pos, _, _ in top):
            raise StemFileError(path, "moov precedes mdat; inserting the manifest would move the samples")
        f.seek(moov_pos)
        moov_bytes = bytearray(f.read(moov_size))
        udta = _find_box(f, (b"udta",), moov_pos + moov_header, moov_pos + moov_size)
        if udta is None:
            insert_at = moov_size
            addition = _BOX.pack(8 + len(stem_box), b"udta") + stem_box
            parents = [(0, moov_header)]
        else:
            udta_pos, udta_header, udta_size = udta
            insert_at = udta_pos - moov_pos + udta_size
            addition = stem_box
            parents = [(0, moov_header), (udta_pos - moov_pos, udta_header)]
        moov_bytes[insert_at:insert_at] = addition
        for rel, header in parents:
            if header == 16:
                old = struct.unpack_from(">Q", moov_bytes, rel + 8)[0]
                struct.pack_into(">Q", moov_bytes, rel + 8, old + len(addition))
            else:
                old = struct.unpack_from(">I", moov_bytes, rel)[0]
                if old + len(addition) >= 1 << 32:
                    raise StemFileError(path, "moov box would exceed 4 GiB")
                struct.pack_into(">I", moov_bytes, rel, old + len(addition))
        tail_start = moov_pos + moov_size
        f.seek(tail_start)
        tail = f.read(end - tail_start)  # boxes after moov (usually none): no offsets point there
        f.seek(moov_pos)
        f.write(moov_bytes)
        f.write(tail)
        f.truncate()


def _names_in_ate_order(values, default: dict[str, str], what: str) -> dict[str, str]:
    if values is None:
        return dict(default)
    if isinstance(values, Mapping):
        unknown = set(values) - set(STEM_NAMES)
        if unknown:
            raise ValueError(f"{what}: unknown stems {sorted(unknown)}; stems are {STEM_NAMES}")
        return {**default, **{k: str(v) for k, v in values.items()}}
    values = list(values)
    if len(values) != len(STEM_NAMES):
        raise ValueError(f"{what}: need {len(STEM_NAMES)} values in {STEM_NAMES} order, got {len(values)}")
    return {name: str(v) for name, v in zip(STEM_NAMES, values)}


def export_ni_stems(path: str | Path, stems: np.ndarray | Mapping[str, np.ndarray], mix: np.ndarray | None = None,
                    sample_rate: int = SAMPLE_RATE, codec: str = "alac", names=None, *, colors=None,
                    bits: int = 16, aac_bitrate: str = "256k", mastering_dsp: dict | None = None) -> dict:
    """Write an NI Stems file (``.stem.mp4``) that Traktor and Mixxx play.

    Five stereo audio streams, muxed by ffmpeg: 0 the master ``mix``, 1-4 the
    stems in NI's order (:data:`NI_STEM_ORDER`: drums, bass, other, vocals).
    Only stream 0 is flagged default/enabled, so ordinary players play the
    mix. The NI manifest (stem names and colours, mastering DSP off) goes
    into a ``stem`` box in ``moov/udta``.

    Parameters
    ----------
    path : str or Path
        Destination; NI's convention is ``NAME.stem.mp4``.
    stems : np.ndarray or mapping
        Float ``(4, frames, 2)`` in ATE's :data:`STEM_NAMES` order, or a
        mapping from those names.
    mix : np.ndarray, optional
        Float ``(frames, 2)`` master; default the sum of the stems.
    sample_rate : int
        Of the given audio, in Hz; kept.
    codec : {"alac", "aac"}
        ALAC is lossless (``bits`` 16 or 24); AAC uses ffmpeg's encoder at
        ``aac_bitrate``.
    names, colors : sequence or mapping, optional
        Manifest labels and ``#RRGGBB`` colours, in ATE order (or by stem
        name); default "Drums", "Bass", "Vocals", "Other" and
        :data:`NI_STEM_COLORS`.
    mastering_dsp : dict, optional
        The manifest's ``mastering_dsp`` (compressor and limiter settings);
        default NI's reference settings with both disabled.

    Returns
    -------
    dict
        ``manifest`` (as written), ``gain_db`` (applied to all five streams
        to avoid clipping; 0 unless something peaked above full scale),
        ``codec``, ``streams`` (names of streams 0-4).

    Raises
    ------
    ValueError
        Bad shapes, codec or names.
    StemFileError
        ffmpeg missing or failing, or the muxed file cannot take the manifest.
    """
    path = Path(path)
    x = _as_stem_array(stems).astype(np.float32, copy=False)
    if codec not in ("alac", "aac"):
        raise ValueError(f"codec must be 'alac' or 'aac', got {codec!r}")
    if bits not in (16, 24):
        raise ValueError(f"bits must be 16 or 24, got {bits}")
    master = x.sum(axis=0, dtype=np.float32) if mix is None else to_stereo(mix)
    if master.shape != x.shape[1:]:
        raise ValueError(f"mix must be shaped {x.shape[1:]}, like one stem; got {master.shape}")
    streams = [master] + [x[STEM_NAMES.index(name)] for name in NI_STEM_ORDER]
    peak = max(float(np.max(np.abs(s), initial=0.0)) for s in streams)
    if not math.isfinite(peak):
        raise ValueError("stems or mix contain NaN or infinite samples")
    full = 1.0 - 1.0 / (1 << (bits - 1))
    gain = 1.0 if codec == "aac" or peak <= full else full / peak
    if gain < 1.0:
        warnings.warn(f"{path}: audio peaks at {20 * math.log10(peak):+.2f} dBFS; all streams lowered by "
                      f"{-20 * math.log10(gain):.2f} dB to fit {bits}-bit ALAC", RuntimeWarning, stacklevel=2)
    label = _names_in_ate_order(names, {k: _NI_DEFAULT_NAMES[k] for k in STEM_NAMES}, "names")
    color = _names_in_ate_order(colors, {k: NI_STEM_COLORS[k] for k in STEM_NAMES}, "colors")
    manifest = {
        "version": 1,
        "mastering_dsp": dict(mastering_dsp) if mastering_dsp is not None else json.loads(json.dumps(_NI_DEFAULT_DSP)),
        "stems": [{"name": label[name], "color": color[name]} for name in NI_STEM_ORDER],
    }
    ffmpeg = _tool("ffmpeg", path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="ate-ni-stems-") as tmp:
        inputs = []
        for i, s in enumerate(streams):
            raw = Path(tmp) / f"{i}.raw"
            if codec == "aac":
                np.ascontiguousarray(s, dtype="<f4").tofile(raw)
                fmt = "f32le"
            elif bits == 16:
                np.clip(np.rint(s * (gain * 32768.0)), -32768, 32767).astype("<i2").tofile(raw)
                fmt = "s16le"
            else:  # 24-bit samples in the top of 32-bit words, as ffmpeg's s32 ALAC input expects
                q24 = np.clip(np.rint(s.astype(np.float64) * (gain * 8388608.0)), -8388608, 8388607)
                (q24.astype("<i4") << 8).tofile(raw)
                fmt = "s32le"
            inputs += ["-f", fmt, "-ar", str(int(sample_rate)), "-ac", "2", "-i", str(raw)]
        out_tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp.mp4")
        cmd = [ffmpeg, "-nostdin", "-v", "error", "-y", *inputs]
        for i in range(5):
            cmd += ["-map", f"{i}:a"]
        if codec == "alac":
            cmd += ["-c:a", "alac", "-sample_fmt", "s16p" if bits == 16 else "s32p"]
        else:
            cmd += ["-c:a", "aac", "-b:a", aac_bitrate]
        for i, name in enumerate(("mix",) + NI_STEM_ORDER):
            cmd += [f"-disposition:a:{i}", "default" if i == 0 else "0", f"-metadata:s:a:{i}", f"title={name}"]
        # No +faststart: moov stays after mdat, so the manifest can grow it in place.
        cmd += ["-f", "mp4", str(out_tmp)]
        try:
            proc = subprocess.run(cmd, capture_output=True, check=False)
            if proc.returncode != 0:
                lines = proc.stderr.decode(errors="replace").strip().splitlines()
                raise StemFileError(path, f"ffmpeg failed ({lines[-1] if lines else f'exit {proc.returncode}'})")
            _insert_stem_box(out_tmp, json.dumps(manifest, separators=(",", ":")).encode())
            os.replace(out_tmp, path)
        finally:
            out_tmp.unlink(missing_ok=True)
    return {"manifest": manifest, "gain_db": 20 * math.log10(gain), "codec": codec,
            "streams": ["mix", *NI_STEM_ORDER]}


def _ffprobe_audio_streams(path: Path) -> list[dict]:
    ffprobe = _tool("ffprobe", path)
    proc = subprocess.run([ffprobe, "-v", "error", "-select_streams", "a", "-show_entries",
                           "stream=index,codec_name,sample_rate,channels,duration_ts,time_base", "-of", "json",
                           str(path)],
                          capture_output=True, check=False)
    if proc.returncode != 0:
        lines = proc.stderr.decode(errors="replace").strip().splitlines()
        raise StemFileError(path, f"ffprobe cannot read it ({lines[-1] if lines else f'exit {proc.returncode}'})")
    try:
        return json.loads(proc.stdout or b"{}").get("streams", [])
    except json.JSONDecodeError:
        raise StemFileError(path, "ffprobe printed no stream list") from None


def _decode_stream(path: Path, ffmpeg: str, index: int) -> np.ndarray:
    cmd = [ffmpeg, "-nostdin", "-v", "error", "-i", str(path), "-map", f"0:a:{index}",
           "-af", "aresample=resampler=soxr", "-f", "f32le", "-acodec", "pcm_f32le", "-ac", "2",
           "-ar", str(SAMPLE_RATE), "-"]
    proc = subprocess.run(cmd, capture_output=True, check=False)
    if proc.returncode != 0:
        lines = proc.stderr.decode(errors="replace").strip().splitlines()
        raise StemFileError(path, f"ffmpeg cannot decode audio stream {index} "
                                  f"({lines[-1] if lines else f'exit {proc.returncode}'})")
    return np.frombuffer(proc.stdout, dtype="<f4").reshape(-1, 2)


def import_ni_stems(path: str | Path) -> tuple[np.ndarray, np.ndarray, dict]:
    """Decode an NI Stems file to the master mix, ATE-ordered stems and its manifest.

    Streams are decoded by ffmpeg one at a time (``-map 0:a:N``, float32 at
    :data:`SAMPLE_RATE`, soxr if it resamples). Stem streams 1-4 are taken in
    NI's order (drums, bass, other, vocals) unless the manifest names all
    four as a different permutation of ATE's stems (e.g. "Vocals" first),
    in which case the names win.

    Returns
    -------
    mix : np.ndarray
        float32 ``(frames, 2)``.
    stems : np.ndarray
        float32 ``(4, frames, 2)`` in :data:`STEM_NAMES` order, each padded
        or trimmed to the mix's length (AAC streams can differ by a frame).
    manifest : dict
        The ``moov/udta/stem`` JSON, or ``{}`` if the file has none.

    Raises
    ------
    StemFileError
        Missing file, not an MP4, fewer than five audio streams, ffmpeg
        missing or failing.
    """
    path = Path(path)
    if not path.is_file():
        raise StemFileError(path, "no such file")
    with open(path, "rb") as f:
        _check_mp4(path, f)
    streams = _ffprobe_audio_streams(path)
    if len(streams) < 5:
        raise StemFileError(path, f"not an NI Stems file: {len(streams)} audio streams, need 5 (mix + 4 stems)")
    manifest = read_ni_manifest(path)
    ffmpeg = _tool("ffmpeg", path)
    with ThreadPoolExecutor(min(5, os.cpu_count() or 1)) as pool:
        decoded = list(pool.map(lambda i: _decode_stream(path, ffmpeg, i), range(5)))
    frames = decoded[0].shape[0]
    if frames == 0:
        raise StemFileError(path, "the mix stream contains no audio")
    # AAC decodes to whole 1024-sample packets; the stream's duration says where the audio ends.
    try:
        num, den = (int(v) for v in str(streams[0]["time_base"]).split("/"))
        frames = min(frames, round(int(streams[0]["duration_ts"]) * num * SAMPLE_RATE / den))
    except (KeyError, ValueError, ZeroDivisionError):
        pass
    order = list(NI_STEM_ORDER)
    labels = [s.get("name", "") for s in manifest.get("stems", [])] if isinstance(manifest.get("stems"), list) else []
    guessed = [_stem_for_name(str(label)) for label in labels[:4]]
    if len(guessed) == 4 and None not in guessed and len(set(guessed)) == 4:
        order = guessed
    mix = np.ascontiguousarray(decoded[0][:frames], dtype=np.float32)
    out = np.zeros((len(STEM_NAMES), frames, 2), dtype=np.float32)
    for i, name in enumerate(order):
        s = decoded[1 + i][:frames]
        out[STEM_NAMES.index(name), :s.shape[0]] = s
    return mix, out, manifest


# --------------------------------------------------------------------------- a folder of stem files

_STEM_ALIASES = {
    "drums": {"drums", "drum", "drm", "percussion", "perc", "beat", "beats"},
    "bass": {"bass", "bassline", "sub", "subbass"},
    "vocals": {"vocals", "vocal", "vox", "voice", "voices", "acapella", "acappella", "singing", "vocs"},
    "other": {"other", "others", "melody", "melodies", "melodic", "instrumental", "instruments", "inst", "synth",
              "synths", "music", "accompaniment", "keys", "harmony", "rest", "chords"},
}
_ALIAS_TO_STEM = {word: stem for stem, words in _STEM_ALIASES.items() for word in words}
_NEGATIONS = {"no", "without", "minus", "non", "not"}


def _stem_for_name(name: str) -> str | None:
    """ATE stem that a file or label name stands for, or None.

    The last word that names a stem wins ("Beat It - Vocals" is vocals); a
    negation just before it ("no_vocals") means the file is not a stem.
    Digits around a word are ignored ("04Vox", "drums1"); a name with no
    stem word at all may still contain a long alias glued to other text
    ("synthstem").
    """
    tokens = [t.strip("0123456789") for t in re.split(r"[^a-z0-9]+", name.lower())]
    tokens = [t for t in tokens if t]
    for i in range(len(tokens) - 1, -1, -1):
        stem = _ALIAS_TO_STEM.get(tokens[i])
        if stem is not None:
            return None if i > 0 and tokens[i - 1] in _NEGATIONS else stem
    joined = "".join(tokens)
    hits = {stem for word, stem in _ALIAS_TO_STEM.items() if len(word) >= 5 and word in joined}
    return hits.pop() if len(hits) == 1 else None


def _audio_name(p: Path) -> str:
    name = p.name
    for suffix in reversed(p.suffixes):  # "song.drums.wav" -> "song.drums"
        if suffix.lower() in AUDIO_EXTENSIONS:
            name = name[: -len(suffix)]
            break
    return name


def _strip_common(names: list[str]) -> list[str]:
    """Drop the prefix and suffix all names share ("Song - Drums", "Song - Bass" -> "Drums", "Bass")."""
    if len(names) < 2:
        return names
    prefix = os.path.commonprefix(names)
    suffix = os.path.commonprefix([n[::-1] for n in names])[::-1]
    out = []
    for n in names:
        core = n[len(prefix):len(n) - len(suffix)] if len(prefix) + len(suffix) < len(n) else n
        out.append(core or n)
    return out


def import_stem_folder(folder: str | Path, max_length_mismatch_s: float = 0.1) -> np.ndarray:
    """Load four stem files from a folder, as ATE's ``(4, frames, 2)`` float32 at :data:`SAMPLE_RATE`.

    Files are recognised by the words in their names, case-insensitively:
    drums (drum, percussion, perc...), bass (bassline, sub...), vocals
    (vocal, vox, voice, acapella...), other (melody, instrumental, synth,
    music, accompaniment, keys...). "no_vocals", "mix" and unrelated files
    are ignored. Any extension :mod:`prep.audio` reads; any sample rate
    (resampled with soxr); mono is doubled.

    Parameters
    ----------
    folder : str or Path
        Folder holding the stems (not searched recursively).
    max_length_mismatch_s : float
        Largest difference between the longest and shortest stem, in
        seconds; shorter stems are padded with silence to the longest.

    Raises
    ------
    StemFileError
        No such folder, a stem missing or given twice, a file that cannot be
        decoded, or lengths that differ by more than ``max_length_mismatch_s``.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise StemFileError(folder, "no such folder")
    found: dict[str, Path] = {}
    files = [p for p in sorted(folder.iterdir())
             if p.is_file() and p.suffix.lower() in AUDIO_EXTENSIONS and not p.name.startswith(".")]
    cores = _strip_common([_audio_name(p) for p in files])
    for p, core in zip(files, cores):
        # The shared part of the names is usually the song title; its words must not decide.
        stem = _stem_for_name(core) or _stem_for_name(_audio_name(p))
        if stem is None:
            continue
        if stem in found:
            raise StemFileError(folder, f"two files for {stem}: {found[stem].name} and {p.name}")
        found[stem] = p
    missing = [s for s in STEM_NAMES if s not in found]
    if missing:
        seen = ", ".join(f"{p.name} -> {s}" for s, p in found.items()) or "no stem files"
        hint = "; ".join(f"{s}: e.g. {', '.join(sorted(_STEM_ALIASES[s])[:4])}" for s in missing)
        raise StemFileError(folder, f"missing {', '.join(missing)} (name a file after the stem: {hint}; "
                                    f"found {seen})")

    def load(name: str) -> np.ndarray:
        try:
            return load_audio(found[name])
        except AudioError as exc:
            raise StemFileError(exc.path, exc.reason) from None

    with ThreadPoolExecutor(min(4, os.cpu_count() or 1)) as pool:
        audio = list(pool.map(load, STEM_NAMES))
    lengths = [a.shape[0] for a in audio]
    spread_s = (max(lengths) - min(lengths)) / SAMPLE_RATE
    if spread_s > max_length_mismatch_s:
        detail = ", ".join(f"{found[n].name} {ln / SAMPLE_RATE:.3f} s" for n, ln in zip(STEM_NAMES, lengths))
        raise StemFileError(folder, f"stem lengths differ by {spread_s:.3f} s (more than {max_length_mismatch_s:g} s): "
                                    f"{detail}")
    out = np.zeros((len(STEM_NAMES), max(lengths), 2), dtype=np.float32)
    for k, a in enumerate(audio):
        out[k, :a.shape[0]] = a
    return out


def fit_stems(stems: np.ndarray, frames: int, source: str | Path, max_mismatch_s: float = 0.1) -> np.ndarray:
    """Imported stems padded with silence or trimmed to the track's ``frames``.

    Raises
    ------
    StemFileError
        Naming ``source``, when the lengths differ by more than ``max_mismatch_s`` seconds
        (the stems belong to another edit of the track).
    """
    if abs(stems.shape[1] - frames) > max_mismatch_s * SAMPLE_RATE:
        raise StemFileError(source, f"stems last {stems.shape[1] / SAMPLE_RATE:.2f} s, the track "
                                    f"{frames / SAMPLE_RATE:.2f} s")
    fitted = np.zeros((stems.shape[0], frames, stems.shape[2]), dtype=np.float32)
    n = min(frames, stems.shape[1])
    fitted[:, :n] = stems[:, :n]
    return fitted


def export_stem_folder(folder: str | Path, stems: np.ndarray | Mapping[str, np.ndarray],
                       sample_rate: int = SAMPLE_RATE, fmt: str = "wav", subtype: str = "PCM_24") -> list[Path]:
    """Write ``drums``, ``bass``, ``vocals`` and ``other`` as ``{name}.{fmt}`` in ``folder``.

    Parameters
    ----------
    stems : np.ndarray or mapping
        Float ``(4, frames, 2)`` in :data:`STEM_NAMES` order, or a mapping.
    sample_rate : int
        In Hz; written as is.
    fmt : {"wav", "flac"}
    subtype : str
        libsndfile subtype: "PCM_16", "PCM_24" (default), or "FLOAT" (wav
        only; keeps levels above full scale). Integer subtypes clip samples
        beyond +-1.0, with a warning.

    Returns
    -------
    list of Path
        The four files, in :data:`STEM_NAMES` order.
    """
    folder = Path(folder)
    x = _as_stem_array(stems)
    if fmt not in ("wav", "flac"):
        raise ValueError(f"fmt must be 'wav' or 'flac', got {fmt!r}")
    peak = float(np.max(np.abs(x), initial=0.0))
    is_float = subtype.upper() in ("FLOAT", "DOUBLE")
    if peak > 1.0 and not is_float:
        warnings.warn(f"{folder}: stems peak at {20 * math.log10(peak):+.2f} dBFS and will clip in {subtype}; "
                      "use subtype='FLOAT' (wav) to keep them", RuntimeWarning, stacklevel=2)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for k, name in enumerate(STEM_NAMES):
        dest = folder / f"{name}.{fmt}"
        tmp = folder / f".{name}.{os.getpid()}.tmp.{fmt}"
        data = x[k] if is_float else np.clip(x[k], -1.0, 1.0)  # libsndfile would wrap, not clip
        try:
            write_audio(tmp, data, sr=int(sample_rate), subtype=subtype)
            os.replace(tmp, dest)
        except (OSError, RuntimeError, ValueError) as exc:
            tmp.unlink(missing_ok=True)
            raise StemFileError(dest, f"cannot write ({exc})") from exc
        paths.append(dest)
    return paths
