"""``ate prep`` end to end: real files, real SQLite, real subprocesses, no mocks.

Tracks are short (about 12 s) synthetic songs from :mod:`prep.synth`, so
the real analysis runs on every one; bad inputs sit beside them.
"""

from __future__ import annotations

import json
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from prep.analyze import ANALYSIS_VERSION
from prep.audio import SAMPLE_RATE, write_audio
from prep.crate import Crate, CrateError, default_db_path
from prep.pipeline import prep_crate, scan_folder
from prep.report import format_analysis
from prep.synth import TrackSpec, generate

pytestmark = pytest.mark.slow  # real analysis in real subprocesses: seconds per test

ATE = str(Path(sys.executable).with_name("ate"))
HAVE_FFMPEG = shutil.which("ffmpeg") is not None

# (title, bpm, tonic, mode): short enough to keep the suite fast, long
# enough (6 bars, > MIN_DURATION_S) for a grid and a key.
SPECS = [("Glass Harbour", 122.0, 9, "minor"), ("Night Ferry", 124.0, 4, "minor"),
         ("Paper Suns", 126.0, 0, "major"), ("Open Window", 128.0, 7, "major"), ("Low Orbit", 118.0, 2, "minor")]


@pytest.fixture(scope="module")
def mixes() -> list[np.ndarray]:
    """Five distinct ~12 s tracks, rendered once for the whole module."""
    out = []
    for i, (title, bpm, tonic, mode) in enumerate(SPECS):
        spec = TrackSpec(bpm=bpm, tonic=tonic, mode=mode, structure=[["intro", 2], ["chorus", 4]], seed=11 + i,
                         title=title)
        out.append(generate(spec).mix)
    return out


def _ffmpeg_encode(wav: Path, out: Path, *extra: str) -> None:
    subprocess.run(["ffmpeg", "-nostdin", "-v", "error", "-y", "-i", str(wav), *extra, str(out)], check=True)


def _run_prep(crate_dir: Path, *args: str, timeout_s: float = 120) -> subprocess.CompletedProcess:
    # The crate mechanics are the subject here; separation has tests/test_prep_stems.py.
    return subprocess.run([ATE, "prep", str(crate_dir), "--no-progress", "--separator", "none", *args],
                          capture_output=True, text=True, timeout=timeout_s)


def _rows(db: Path) -> list[tuple]:
    """(content_hash, track id, added_at, analysis id, analyzed_at) of every track."""
    with sqlite3.connect(db) as conn:
        return conn.execute("SELECT t.content_hash, t.id, t.added_at, a.id, a.analyzed_at FROM tracks t "
                            "JOIN analysis a ON a.track_id = t.id ORDER BY t.content_hash").fetchall()


def _integrity_ok(db: Path) -> bool:
    with sqlite3.connect(db) as conn:
        return conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"


def _count(db: Path, table: str) -> int:
    with sqlite3.connect(db) as conn:
        return conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0]


def _write_wavs(folder: Path, mixes: list[np.ndarray], n: int) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        write_audio(folder / f"track{i}.wav", mixes[i], subtype="PCM_16")


# -- one mixed crate, prepped once by the CLI --------------------------------------


@pytest.fixture(scope="module")
def mixed_crate(tmp_path_factory: pytest.TempPathFactory, mixes: list[np.ndarray]) -> tuple[Path, subprocess.CompletedProcess]:
    """Good tracks in four formats (one in a subfolder), bad files beside them, and the first `ate prep` run."""
    if not HAVE_FFMPEG:
        pytest.skip("ffmpeg is needed to make the m4a and mp3 inputs")
    crate = tmp_path_factory.mktemp("crate")
    write_audio(crate / "Glass Harbour.wav", mixes[0], subtype="PCM_16")
    (crate / "deep" / "er").mkdir(parents=True)
    write_audio(crate / "deep" / "er" / "night_ferry.flac", mixes[1])
    tmp_wav = tmp_path_factory.mktemp("src")
    write_audio(tmp_wav / "suns.wav", mixes[2], subtype="PCM_16")
    write_audio(tmp_wav / "window.wav", mixes[3], subtype="PCM_16")
    _ffmpeg_encode(tmp_wav / "suns.wav", crate / "suns.m4a", "-c:a", "aac", "-b:a", "128k",
                   "-metadata", "title=Paper Suns", "-metadata", "artist=Synth Band")
    _ffmpeg_encode(tmp_wav / "window.wav", crate / "window.mp3", "-c:a", "libmp3lame", "-b:a", "160k")
    # The bad ones.
    (crate / "corrupt.mp3").write_bytes(np.random.default_rng(7).bytes(40_000))
    (crate / "empty.wav").write_bytes(b"")
    write_audio(crate / "short.flac", mixes[4][: 2 * SAMPLE_RATE])
    (crate / "not audio.wav").write_text("hello, I am a text file\n" * 50)
    # Ignored: not an audio extension, hidden.
    (crate / "notes.txt").write_text("setlist ideas\n")
    write_audio(crate / ".hidden.wav", mixes[4], subtype="PCM_16")
    result = _run_prep(crate, "--workers", "2")
    return crate, result


def test_prep_analyses_good_files_and_reports_bad_ones(mixed_crate: tuple[Path, subprocess.CompletedProcess]) -> None:
    crate, result = mixed_crate
    assert result.returncode == 1, result.stdout + result.stderr
    out = result.stdout
    assert "4 new" in out and "4 failed" in out, out
    # One line per failure, naming the file and why.
    failures = {line.strip().split(":", 1)[0]: line for line in out.splitlines() if line.startswith("  ")}
    assert set(failures) == {"corrupt.mp3", "empty.wav", "short.flac", "not audio.wav"}, out
    assert "empty" in failures["empty.wav"]
    assert "too short" in failures["short.flac"]
    db = default_db_path(crate)
    with Crate(db, readonly=True) as c:
        tracks = {t["path"]: t for t in c.list_tracks()}
        assert set(tracks) == {"Glass Harbour.wav", "deep/er/night_ferry.flac", "suns.m4a", "window.mp3"}
        assert {p for p, _, _ in c.failures()} == set(failures)
        # Title from tags when the file has them, else from the file name.
        assert tracks["suns.m4a"]["title"] == "Paper Suns" and tracks["suns.m4a"]["artist"] == "Synth Band"
        assert tracks["deep/er/night_ferry.flac"]["title"] == "night_ferry"
        for t in tracks.values():
            # m4a and mp3 decoded to the full length (encoder padding aside).
            audio_length_s = t["duration_s"]  # decoded length of the file, not a timing
            assert abs(audio_length_s - 12.7) < 1.0, t
            assert t["version"] == ANALYSIS_VERSION and t["bpm"] and t["camelot"] and t["lufs"] is not None
            analysis = c.get_analysis(t["content_hash"])
            assert len(analysis["beats"]) > 8 and analysis["duration"] == pytest.approx(t["duration_s"], abs=1e-3)
    assert _integrity_ok(db)


def test_second_run_analyses_nothing_new(mixed_crate: tuple[Path, subprocess.CompletedProcess]) -> None:
    crate, _ = mixed_crate
    db = default_db_path(crate)
    before = _rows(db)
    result = _run_prep(crate, "--workers", "1")
    assert result.returncode == 1  # the bad files are still there
    assert "0 new" in result.stdout and "4 already known" in result.stdout, result.stdout
    assert "analysed" not in result.stdout  # no audio seconds analysed
    assert _rows(db) == before


def test_crate_command_prints_sorted_table(mixed_crate: tuple[Path, subprocess.CompletedProcess]) -> None:
    crate, _ = mixed_crate
    result = subprocess.run([ATE, "crate", str(crate), "--sort", "bpm"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].split() == ["#", "title", "artist", "BPM", "key", "camelot", "duration", "LUFS"]
    assert lines[-1].startswith("4 tracks")
    as_json = subprocess.run([ATE, "crate", str(crate), "--sort", "bpm", "--json"], capture_output=True, text=True,
                             timeout=60)
    rows = [json.loads(line) for line in as_json.stdout.splitlines()]
    bpms = [r["bpm"] for r in rows]
    assert bpms == sorted(bpms) and len(rows) == 4
    # The table shows the same order.
    for line, row in zip(lines[1:5], rows):
        assert row["title"] in line and f"{row['bpm']:.1f}" in line
    missing = subprocess.run([ATE, "crate", str(crate / "nowhere")], capture_output=True, text=True, timeout=60)
    assert missing.returncode == 2 and "no crate database" in missing.stderr


def test_format_analysis_reads_well(mixed_crate: tuple[Path, subprocess.CompletedProcess]) -> None:
    crate, _ = mixed_crate
    with Crate(default_db_path(crate), readonly=True) as c:
        analysis = c.get_analysis(c.list_tracks()[0]["id"])
    text = format_analysis(analysis, unicode=False)
    lines = text.splitlines()
    assert lines[0] == analysis["path"]
    assert any(line.split()[0] == "tempo" and "BPM" in line for line in lines[1:])
    assert f"({analysis['camelot']})" in text and "LUFS" in text and "dBTP" in text
    grid = next(i for i, line in enumerate(lines) if line.strip().startswith("grid"))
    assert lines[grid + 1].count("|") >= 4  # downbeats of the first bars


def test_moved_renamed_and_copied_files_are_recognised_by_content(
        mixed_crate: tuple[Path, subprocess.CompletedProcess], tmp_path: Path) -> None:
    # Move the whole crate folder (database included; mtimes kept): relative
    # paths keep the cache valid there.
    src, _ = mixed_crate
    crate = tmp_path / "moved crate"
    shutil.copytree(src, crate, copy_function=shutil.copy2)
    db = default_db_path(crate)
    with Crate(db, readonly=True) as c:
        before = {t["content_hash"]: t for t in c.list_tracks()}
    (crate / "deep" / "er" / "night_ferry.flac").rename(crate / "Night Ferry (edit).flac")
    shutil.copy2(crate / "Glass Harbour.wav", crate / "deep" / "Glass copy.wav")
    for bad in ("corrupt.mp3", "empty.wav", "short.flac", "not audio.wav"):
        (crate / bad).unlink()

    report = prep_crate(crate, workers=1, progress=False)
    assert (report.new, report.moved, report.duplicates, report.known, report.failed) == (0, 1, 1, 3, [])
    assert report.audio_s == 0.0  # nothing decoded was analysed again
    with Crate(db, readonly=True) as c:
        after = {t["content_hash"]: t for t in c.list_tracks()}
        assert c.failures() == []  # failures of deleted files are forgotten
    assert set(after) == set(before)
    moved = next(h for h, t in before.items() if t["path"] == "deep/er/night_ferry.flac")
    assert after[moved]["path"] == "Night Ferry (edit).flac"
    assert after[moved]["title"] == "Night Ferry (edit)"
    assert (after[moved]["id"], after[moved]["analyzed_at"]) == (before[moved]["id"], before[moved]["analyzed_at"])
    glass = next(h for h, t in before.items() if t["path"] == "Glass Harbour.wav")
    assert after[glass]["path"] == "Glass Harbour.wav"  # the original is still there: the copy is a duplicate
    assert _count(db, "files") == 5  # the copy is cached too, so it is not decoded again
    again = prep_crate(crate, workers=1, progress=False)
    assert (again.known, again.new, again.moved, again.duplicates) == (5, 0, 0, 0)


def test_scan_skips_hidden_and_non_audio(mixed_crate: tuple[Path, subprocess.CompletedProcess]) -> None:
    crate, _ = mixed_crate
    names = {p.name for p in scan_folder(crate)}
    assert ".hidden.wav" not in names and "notes.txt" not in names and "crate.sqlite" not in names
    assert "night_ferry.flac" in names and "not audio.wav" in names


# -- interruption and concurrency ---------------------------------------------------------


def _track_count(db: Path) -> int:
    try:
        with Crate(db, readonly=True) as c:
            return c.track_count()
    except (CrateError, sqlite3.Error):
        return 0  # not created or not migrated yet


def test_resume_after_killed_run(tmp_path: Path, mixes: list[np.ndarray]) -> None:
    crate = tmp_path / "crate"
    _write_wavs(crate, mixes, 5)
    db = default_db_path(crate)
    proc = subprocess.Popen([ATE, "prep", str(crate), "--workers", "1", "--no-progress"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 90
        while _track_count(db) < 1 and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait(timeout=30)
    done = _rows(db)
    assert 1 <= len(done) < 5, "the run should have been killed part-way"
    assert _integrity_ok(db)

    result = _run_prep(crate, "--workers", "1")
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"{5 - len(done)} new" in result.stdout and f"{len(done)} already known" in result.stdout, result.stdout
    after = _rows(db)
    assert len(after) == 5 == len({r[0] for r in after}) == _count(db, "files")
    # The tracks committed before the kill were not analysed again.
    assert set(done) <= set(after)
    assert _integrity_ok(db)


def test_interrupt_keeps_committed_tracks(tmp_path: Path, mixes: list[np.ndarray]) -> None:
    crate = tmp_path / "crate"
    _write_wavs(crate, mixes, 5)
    db = default_db_path(crate)
    proc = subprocess.Popen([ATE, "prep", str(crate), "--workers", "2", "--no-progress"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 90
    while _track_count(db) < 1 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=30)
    if proc.returncode == 0:
        pytest.skip("the run finished before the interrupt arrived")
    assert proc.returncode == 130, out + err
    n = _track_count(db)
    assert f"interrupted: {n} of 5 files done" in out, out + err
    assert "Traceback" not in err, err  # workers ignore Ctrl-C; the main process stops them
    assert _integrity_ok(db)


def test_concurrent_runs_on_one_crate(tmp_path: Path, mixes: list[np.ndarray]) -> None:
    crate = tmp_path / "crate"
    _write_wavs(crate, mixes, 3)
    db = default_db_path(crate)
    procs = [subprocess.Popen([ATE, "prep", str(crate), "--workers", "1", "--no-progress"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outputs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs
    rows = _rows(db)
    assert len(rows) == 3 == len({r[0] for r in rows})
    assert _count(db, "analysis") == 3 and _count(db, "files") == 3
    assert _integrity_ok(db)
    # Each track is "new" to exactly one run: whichever committed it first
    # (the other finds it there and counts it as known).
    new = [int(out.split(" new,")[0].rsplit(" ", 1)[1]) for out, _ in outputs]
    assert sum(new) == 3, outputs
