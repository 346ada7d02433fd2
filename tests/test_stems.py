"""Tests of prep.stems: the .stems file, NI Stems and stem folders, on generated audio."""

from __future__ import annotations

import json
import shutil
import struct
import subprocess

import numpy as np
import pytest
import soundfile as sf

from prep.audio import SAMPLE_RATE as SR
from prep.stems import (
    NI_STEM_COLORS, NI_STEM_ORDER, STEM_FILE_SUFFIX, STEM_NAMES, StemFileError, export_ni_stems, export_stem_folder,
    import_ni_stems, import_stem_folder, quantize_stems, read_ni_manifest, read_stem_file, read_stem_file_int16,
    read_stem_header, write_stem_file,
)
from prep.synth import TrackSpec, generate

needs_ffmpeg = pytest.mark.skipif(shutil.which("ffmpeg") is None or shutil.which("ffprobe") is None,
                                  reason="ffmpeg/ffprobe not installed")

# One distinct tone per stem, so a stem that lands in the wrong place is obvious.
TONE_HZ = {"drums": 220.0, "bass": 330.0, "vocals": 550.0, "other": 770.0}


@pytest.fixture(scope="module")
def loud_stems() -> np.ndarray:
    """~11 s of generated stems, boosted so two of them peak above full scale."""
    track = generate(TrackSpec(bpm=128, tonic=2, mode="minor", structure=[["verse", 4], ["breakdown", 2]], seed=3))
    x = np.stack([track.stems[name] for name in STEM_NAMES])
    return (x * np.float32(1.6 / np.abs(x).max())).astype(np.float32)


def tone_stems(seconds: float = 4.0, sr: int = SR) -> np.ndarray:
    t = np.arange(int(seconds * sr)) / sr
    return np.stack([np.stack([0.25 * np.sin(2 * np.pi * TONE_HZ[n] * t), 0.2 * np.sin(2 * np.pi * TONE_HZ[n] * t)],
                              axis=1) for n in STEM_NAMES]).astype(np.float32)


def dominant_hz(x: np.ndarray, sr: int = SR) -> float:
    mono = x.mean(axis=1) if x.ndim == 2 else x
    spec = np.abs(np.fft.rfft(mono * np.hanning(len(mono))))
    return float(np.fft.rfftfreq(len(mono), 1 / sr)[np.argmax(spec)])


def dbfs(x: float) -> float:
    return 20 * np.log10(max(float(x), 1e-12))


# --------------------------------------------------------------------------- the .stems file

def test_round_trip_is_bit_exact_and_keeps_the_sum(tmp_path, loud_stems):
    path = tmp_path / f"track{STEM_FILE_SUFFIX}"
    header = write_stem_file(path, loud_stems, meta={"model": "htdemucs", "fold": "none"})
    assert np.abs(loud_stems).max() > 1.0
    assert header["scale"] < 1.0 and header["clipped_samples"] == 0

    q_ref, scale_ref, _ = quantize_stems(loud_stems)
    q, scale, h = read_stem_file_int16(path)
    assert q.dtype == np.int16 and q.shape == loud_stems.shape
    assert np.array_equal(q, q_ref) and scale == scale_ref
    assert h["meta"] == {"model": "htdemucs", "fold": "none"} and h["stems"] == list(STEM_NAMES)

    x, _ = read_stem_file(path)
    assert x.dtype == np.float32 and x.shape == loud_stems.shape
    lsb = 1.0 / (32768 * scale)
    err = np.abs(x.astype(np.float64) - loud_stems)
    f32 = 4 * 2.0 ** -24 * 2  # float32 rounding of the decoded samples (|x| < 2)
    assert err[:-1].max() <= 0.5 * lsb + f32  # rounded stems
    assert err[-1].max() <= 2.0 * lsb + f32   # the last stem carries the others' rounding
    sum_err = np.abs(x.astype(np.float64).sum(axis=0) - loud_stems.astype(np.float64).sum(axis=0)).max()
    assert sum_err <= 0.5 * lsb + f32
    assert dbfs(sum_err) < -90.0


def test_extreme_int16_content_is_lossless(tmp_path):
    # Full-scale noise, a full-scale square wave and independent channels make
    # every predictor residual wrap around 16 bits somewhere.
    rng = np.random.default_rng(0)
    n = 70_001  # two segments, a short last block
    q = np.empty((4, n, 2), dtype=np.int16)
    q[0] = rng.integers(-32766, 32767, (n, 2))
    q[1] = np.where((np.arange(n) // 3) % 2, 32766, -32766)[:, None]
    q[2, :, 0] = rng.integers(-32766, 32767, n)
    q[2, :, 1] = -q[2, :, 0]
    q[3] = 0
    q[3, 5000:5003] = [[32766, -32766], [-32766, 32766], [7, -7]]
    path = tmp_path / "extreme.stems"
    write_stem_file(path, q.astype(np.float32) / 32768)
    back, scale, _ = read_stem_file_int16(path)
    assert scale == 1.0
    assert np.array_equal(back, q)


def test_thread_count_does_not_change_the_result(tmp_path, loud_stems):
    path = tmp_path / "t.stems"
    write_stem_file(path, loud_stems, threads=1)
    other = tmp_path / "t4.stems"
    write_stem_file(other, loud_stems, threads=4)
    assert path.read_bytes() == other.read_bytes()
    a, _ = read_stem_file(path, threads=1)
    b, _ = read_stem_file(path, threads=4)
    assert np.array_equal(a, b)
    qa, _, _ = read_stem_file_int16(path, threads=1)
    qb, _, _ = read_stem_file_int16(path, threads=4)
    assert np.array_equal(qa, qb)


def test_header_is_read_without_decoding(tmp_path, loud_stems):
    path = tmp_path / "h.stems"
    written = write_stem_file(path, {name: loud_stems[k] for k, name in enumerate(STEM_NAMES)}, meta={"bpm": 128})
    # Corrupt the audio of every stem: the header must still read, the audio must not.
    data = bytearray(path.read_bytes())
    start = len(data) - written["data_bytes"]
    for blob in written["blobs"]:
        data[start + blob["offset"] + blob["bytes"] // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    header = read_stem_header(path)
    assert header["frames"] == loud_stems.shape[1] and header["sample_rate"] == SR
    assert header["format_version"] == 1 and header["meta"] == {"bpm": 128}
    assert header["duration_s"] == pytest.approx(loud_stems.shape[1] / SR)
    with pytest.raises(StemFileError, match="corrupt") as err:
        read_stem_file(path)
    assert str(path) in str(err.value)


def _rewrite_header(path, change) -> None:
    data = path.read_bytes()
    magic, n = struct.unpack_from("<10sI", data)
    header = json.loads(data[14:14 + n])
    change(header)
    new = (json.dumps(header) + "\n").encode()
    path.write_bytes(struct.pack("<10sI", magic, len(new)) + new + data[14 + n:])


def test_bad_files_raise_stem_file_error_naming_the_path(tmp_path, loud_stems):
    good = tmp_path / "good.stems"
    write_stem_file(good, loud_stems[:, :20000])
    data = good.read_bytes()

    missing = tmp_path / "missing.stems"
    with pytest.raises(StemFileError, match="no such file") as err:
        read_stem_file(missing)
    assert str(err.value).startswith(str(missing))

    bad_magic = tmp_path / "magic.stems"
    bad_magic.write_bytes(b"RIFF" + data[4:])
    with pytest.raises(StemFileError, match="bad magic") as err:
        read_stem_header(bad_magic)
    assert str(bad_magic) in str(err.value)

    for cut in (5, 30, len(data) // 2, len(data) - 1):
        truncated = tmp_path / f"cut{cut}.stems"
        truncated.write_bytes(data[:cut])
        with pytest.raises(StemFileError, match="truncated") as err:
            read_stem_file(truncated)
        assert str(truncated) in str(err.value)

    longer = tmp_path / "longer.stems"
    longer.write_bytes(data + b"\0")
    with pytest.raises(StemFileError, match="size mismatch"):
        read_stem_file_int16(longer)

    version = tmp_path / "v2.stems"
    version.write_bytes(data)
    _rewrite_header(version, lambda h: h.update(format_version=2))
    with pytest.raises(StemFileError, match="unsupported format version 2") as err:
        read_stem_file(version)
    assert str(version) in str(err.value)

    frames = tmp_path / "frames.stems"
    frames.write_bytes(data)
    _rewrite_header(frames, lambda h: h.update(frames=h["frames"] + 1))
    with pytest.raises(StemFileError, match="size mismatch"):
        read_stem_file(frames)


def test_write_rejects_bad_input_and_leaves_no_file(tmp_path, loud_stems):
    path = tmp_path / "bad.stems"
    with pytest.raises(ValueError, match=r"\(4, frames, 2\)"):
        write_stem_file(path, loud_stems[:3])
    nan = loud_stems.copy()
    nan[1, 100, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        write_stem_file(path, nan)
    assert not path.exists() and list(tmp_path.iterdir()) == []


# --------------------------------------------------------------------------- NI Stems

def _ffprobe_streams(path) -> list[dict]:
    out = subprocess.run(["ffprobe", "-v", "error", "-show_entries", "stream=index,codec_type,codec_name,channels",
                          "-of", "json", str(path)], capture_output=True, check=True).stdout
    return json.loads(out)["streams"]


@needs_ffmpeg
def test_ni_stems_round_trip_alac(tmp_path):
    stems = tone_stems()
    path = tmp_path / "song.stem.mp4"
    info = export_ni_stems(path, stems, names=["Beats", "Low", "Voice", "Synth"])
    assert info["gain_db"] == 0.0 and info["streams"] == ["mix", *NI_STEM_ORDER]

    streams = _ffprobe_streams(path)
    assert [s["codec_type"] for s in streams] == ["audio"] * 5
    assert all(s["codec_name"] == "alac" and s["channels"] == 2 for s in streams)

    # The file itself: stream 0 is the mix, streams 1-4 follow NI's order (drums, bass, other, vocals).
    for i, name in enumerate(NI_STEM_ORDER, start=1):
        raw = subprocess.run(["ffmpeg", "-v", "error", "-i", str(path), "-map", f"0:a:{i}", "-f", "f32le", "-ac", "2",
                              "-"], capture_output=True, check=True).stdout
        assert dominant_hz(np.frombuffer(raw, "<f4").reshape(-1, 2)) == pytest.approx(TONE_HZ[name], abs=1.0)

    manifest = read_ni_manifest(path)
    assert manifest["version"] == 1
    assert [s["name"] for s in manifest["stems"]] == ["Beats", "Low", "Synth", "Voice"]
    assert [s["color"] for s in manifest["stems"]] == [NI_STEM_COLORS[n] for n in NI_STEM_ORDER]
    assert manifest["mastering_dsp"]["limiter"]["enabled"] is False

    mix, back, manifest2 = import_ni_stems(path)
    assert manifest2 == manifest
    assert back.shape == stems.shape and mix.shape == stems.shape[1:]
    assert np.abs(back - stems).max() < 1e-4
    assert np.abs(mix - stems.sum(axis=0)).max() < 1e-4
    for k, name in enumerate(STEM_NAMES):
        assert dominant_hz(back[k]) == pytest.approx(TONE_HZ[name], abs=1.0)


@needs_ffmpeg
def test_ni_stems_import_errors(tmp_path):
    wav = tmp_path / "song.stem.mp4"
    sf.write(str(wav), tone_stems(1.0)[0], SR, format="WAV")  # a WAV under an NI name
    with pytest.raises(StemFileError, match="not an MP4") as err:
        import_ni_stems(wav)
    assert str(wav) in str(err.value)

    one_stream = tmp_path / "plain.m4a"
    subprocess.run(["ffmpeg", "-v", "error", "-f", "lavfi", "-i", "sine=frequency=440:duration=1", "-c:a", "alac",
                    str(one_stream)], check=True)
    with pytest.raises(StemFileError, match="1 audio streams, need 5") as err:
        import_ni_stems(one_stream)
    assert str(one_stream) in str(err.value)
    assert read_ni_manifest(one_stream) == {}

    with pytest.raises(StemFileError, match="no such file"):
        import_ni_stems(tmp_path / "nothing.stem.mp4")


# --------------------------------------------------------------------------- stem folders

def test_folder_import_with_odd_names_and_a_48k_file(tmp_path):
    stems = tone_stems(3.0)
    t48 = np.arange(int(3.0 * 48000)) / 48000
    vocals_48k = np.stack([0.25 * np.sin(2 * np.pi * TONE_HZ["vocals"] * t48)] * 2, axis=1)
    sf.write(str(tmp_path / "Night Drive - DRUMS.wav"), stems[0], SR)
    sf.write(str(tmp_path / "Night Drive - Bass.flac"), stems[1], SR, subtype="PCM_24")
    sf.write(str(tmp_path / "Night Drive - Vox.WAV"), vocals_48k, 48000)
    sf.write(str(tmp_path / "Night Drive - Melody.flac"), stems[3][:, 0], SR)  # mono
    sf.write(str(tmp_path / "Night Drive - Full Mix.wav"), stems.sum(axis=0), SR)  # not a stem
    (tmp_path / "notes.txt").write_text("not audio")

    x = import_stem_folder(tmp_path)
    assert x.dtype == np.float32 and x.shape == (4, stems.shape[1], 2)
    for k, name in enumerate(STEM_NAMES):
        assert dominant_hz(x[k]) == pytest.approx(TONE_HZ[name], abs=1.0)
    assert np.abs(x[1] - stems[1]).max() < 1e-5
    assert np.abs(x[3, :, 1] - stems[3][:, 0]).max() < 1e-4  # mono doubled
    mid = slice(SR // 2, -SR // 2)  # resampled: compare away from the edges
    assert np.abs(x[2, mid] - 0.25 * np.sin(2 * np.pi * 550.0 * np.arange(x.shape[1]) / SR)[mid, None]).max() < 1e-3


def test_folder_with_a_missing_stem_or_unequal_lengths_is_refused(tmp_path):
    stems = tone_stems(2.0)
    for name, data in (("drum", stems[0]), ("bass", stems[1]), ("instrumental", stems[3])):
        sf.write(str(tmp_path / f"{name}.wav"), data, SR)
    with pytest.raises(StemFileError, match="missing vocals") as err:
        import_stem_folder(tmp_path)
    assert str(tmp_path) in str(err.value)

    sf.write(str(tmp_path / "vocals.wav"), stems[2][: -SR // 4], SR)  # 0.25 s short
    with pytest.raises(StemFileError, match="lengths differ by 0.250 s"):
        import_stem_folder(tmp_path)

    sf.write(str(tmp_path / "vocal.flac"), stems[2], SR)
    with pytest.raises(StemFileError, match="two files for vocals"):
        import_stem_folder(tmp_path)


def test_folder_export_round_trip(tmp_path):
    stems = tone_stems(2.0)
    paths = export_stem_folder(tmp_path / "out", stems, fmt="flac")
    assert [p.name for p in paths] == [f"{n}.flac" for n in STEM_NAMES]
    assert sf.info(str(paths[0])).subtype == "PCM_24"
    back = import_stem_folder(tmp_path / "out")
    assert np.abs(back - stems).max() < 1e-6
    with pytest.warns(RuntimeWarning, match="clip"):
        export_stem_folder(tmp_path / "loud", stems * 5, subtype="PCM_16")
