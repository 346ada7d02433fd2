"""``ate prep`` with separation, ``ate separate``, ``ate stems``, ``ate models``: end to end, real files.

No demucs weights exist on the test machine, so the crate runs use the DSP
separator (and ``auto``'s fallback to it); the demucs path itself is tested
with a small random model in tests/test_separate.py.
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from prep.audio import SAMPLE_RATE, load_audio, write_audio
from prep.crate import Crate, default_db_path
from prep.stems import STEM_NAMES, read_stem_file
from prep.synth import TrackSpec, generate

pytestmark = pytest.mark.slow

ATE = str(Path(sys.executable).with_name("ate"))


def _env(tmp: Path) -> dict:
    """No model folder, and an empty torch hub cache: what a machine without weights sees."""
    env = dict(os.environ)
    env.pop("ATE_MODEL_DIR", None)
    env["TORCH_HOME"] = str(tmp / "torch-home")
    env["HF_HOME"] = str(tmp / "hf-home")
    return env


def _ate(tmp: Path, *args: str, timeout_s: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([ATE, *args], capture_output=True, text=True, timeout=timeout_s, env=_env(tmp))


@pytest.fixture(scope="module")
def tracks():
    """Two ~16 s generated songs with vocals."""
    out = []
    for i, (bpm, tonic) in enumerate(((122.0, 9), (126.0, 2))):
        spec = TrackSpec(bpm=bpm, tonic=tonic, structure=[["intro", 2], ["verse", 4], ["chorus", 2]], seed=40 + i,
                         title=f"stem song {i}")
        out.append(generate(spec))
    return out


@pytest.fixture(scope="module")
def prepped(tmp_path_factory: pytest.TempPathFactory, tracks) -> tuple[Path, subprocess.CompletedProcess]:
    crate = tmp_path_factory.mktemp("stemcrate")
    for i, t in enumerate(tracks):
        write_audio(crate / f"song{i}.wav", t.mix, subtype="FLOAT")
    result = _ate(crate.parent, "prep", str(crate), "--no-progress", "--workers", "2")
    return crate, result


def test_auto_falls_back_to_dsp_loudly_and_stores_stems(prepped, tracks) -> None:
    crate, result = prepped
    assert result.returncode == 0, result.stdout + result.stderr
    assert "WARNING" in result.stderr and "DSP" in result.stderr and "htdemucs" in result.stderr
    assert "2 separated with dsp" in result.stdout
    db = default_db_path(crate)
    with Crate(db, readonly=True) as c:
        for i, t in enumerate(tracks):
            row = c.find_tracks(f"song{i}.wav")[0]
            stored = c.get_stems(row["content_hash"])
            assert stored["model"] == "dsp" and stored["stems"] == list(STEM_NAMES)
            assert stored["frames"] == t.mix.shape[0]
            stems, header = read_stem_file(stored["path"])
            # The stored stems sum back to the track (the fold, then int16 with error feedback).
            err = np.abs(stems.sum(axis=0) - t.mix).max()
            assert 20 * np.log10(err + 1e-12) < -90
            record = c.get_analysis(row["content_hash"])
            assert record["analysed_from"] == "stems" and record["vocal_regions"]
            overview, lanes, pps = c.get_overview(row["content_hash"])
            assert lanes == list(STEM_NAMES) and overview.shape[0] == 4
            assert overview.shape[1] == int(np.ceil(t.mix.shape[0] / SAMPLE_RATE * pps))
            # The drum lane is busiest where the drums play: every overview point in the intro has drums.
            assert overview[0].mean() > 0


def test_second_run_keeps_dsp_stems(prepped, tmp_path: Path) -> None:
    crate, _ = prepped
    again = _ate(crate.parent, "prep", str(crate), "--no-progress", "--separator", "dsp")
    assert again.returncode == 0, again.stderr
    assert "0 new" in again.stdout and "2 already known" in again.stdout


def test_stems_export_and_import_round_trip(prepped, tmp_path: Path, tracks) -> None:
    crate, _ = prepped
    out = tmp_path / "song0.stem.mp4"
    exported = _ate(crate.parent, "stems", "export", str(crate), "song0.wav", str(out))
    assert exported.returncode == 0, exported.stderr
    probe = subprocess.run(["ffprobe", "-v", "error", "-select_streams", "a", "-show_entries", "stream=index",
                            "-of", "csv=p=0", str(out)], capture_output=True, text=True, check=True)
    assert len(probe.stdout.split()) == 5
    folder = tmp_path / "folder"
    assert _ate(crate.parent, "stems", "export", str(crate), "song0.wav", str(folder)).returncode == 0
    assert sorted(p.name for p in folder.iterdir()) == sorted(f"{n}.wav" for n in STEM_NAMES)
    # Import the exported NI file onto the other track's stems? No: its length differs -> refused.
    wrong = _ate(crate.parent, "stems", "import", str(crate), "song1.wav", str(out))
    assert wrong.returncode == 2 and "stems last" in wrong.stderr
    imported = _ate(crate.parent, "stems", "import", str(crate), "song0.wav", str(folder))
    assert imported.returncode == 0, imported.stderr
    with Crate(default_db_path(crate), readonly=True) as c:
        row = c.find_tracks("song0.wav")[0]
        assert c.get_stems(row["content_hash"])["model"] == "import"
    missing = _ate(crate.parent, "stems", "export", str(crate), "no such track", str(out))
    assert missing.returncode == 2 and "no track" in missing.stderr


def test_separate_command_writes_four_wavs(tmp_path: Path, tracks) -> None:
    src = tmp_path / "in.wav"
    write_audio(src, tracks[1].mix, subtype="FLOAT")
    result = _ate(tmp_path, "separate", str(src), "-o", str(tmp_path / "out"), "--separator", "dsp")
    assert result.returncode == 0, result.stderr
    stems = [sf.read(tmp_path / "out" / f"{n}.wav", dtype="float32")[0] for n in STEM_NAMES]
    assert all(s.shape == tracks[1].mix.shape for s in stems)
    np.testing.assert_allclose(np.sum(stems, axis=0), load_audio(src), atol=1e-5)
    # demucs explicitly, without weights: one line naming the model and the fix, exit 2.
    refused = _ate(tmp_path, "separate", str(src), "-o", str(tmp_path / "x"), "--separator", "demucs")
    assert refused.returncode == 2
    lines = [line for line in refused.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "htdemucs" in lines[0] and ("--model-dir" in lines[0] or "ATE_MODEL_DIR" in lines[0])


def test_models_command_lists_what_is_missing(tmp_path: Path) -> None:
    result = _ate(tmp_path, "models", "--json")
    assert result.returncode == 0, result.stderr
    models = json.loads(result.stdout)
    names = {m["name"]: m for m in models}
    assert "htdemucs" in names and names["htdemucs"]["status"] != "available"
    plain = _ate(tmp_path, "models")
    assert "DSP separator" in plain.stdout


def test_prep_without_separation_keeps_mix_analysis(tmp_path: Path, tracks) -> None:
    crate = tmp_path / "plain"
    crate.mkdir()
    write_audio(crate / "a.wav", tracks[0].mix, subtype="PCM_16")
    result = _ate(tmp_path, "prep", str(crate), "--no-progress", "--separator", "none")
    assert result.returncode == 0, result.stderr
    with sqlite3.connect(default_db_path(crate)) as conn:
        assert conn.execute("SELECT count(*) FROM stems").fetchone()[0] == 0
        record = json.loads(conn.execute("SELECT json FROM analysis").fetchone()[0])
        lanes = json.loads(conn.execute("SELECT lanes FROM overviews").fetchone()[0])
    assert record["analysed_from"] == "mix" and lanes == ["mix"]


def test_ni_stems_files_bring_their_own_stems(tmp_path: Path, tracks) -> None:
    from prep.stems import export_ni_stems

    crate = tmp_path / "traktor"
    crate.mkdir()
    t = tracks[0]
    true_stems = np.stack([t.stems[name] for name in STEM_NAMES])
    export_ni_stems(crate / "song.stem.mp4", true_stems, mix=t.mix)
    result = _ate(tmp_path, "prep", str(crate), "--no-progress", "--separator", "none")
    assert result.returncode == 0, result.stdout + result.stderr
    with Crate(default_db_path(crate), readonly=True) as c:
        row = c.list_tracks()[0]
        stored = c.get_stems(row["content_hash"])
        assert stored["model"] == "import"
        stems, _ = read_stem_file(stored["path"])
        # ALAC is lossless on 16-bit audio: the stems are the ones written, in ATE's order.
        np.testing.assert_allclose(stems, true_stems[:, : stems.shape[1]], atol=2e-4)
        assert c.get_analysis(row["content_hash"])["analysed_from"] == "stems"
