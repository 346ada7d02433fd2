"""The crate database: schema, migrations, atomic writes, sorting, read-only use."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from prep import crate as crate_module
from prep.crate import SCHEMA_VERSION, Crate, CrateError, default_db_path, parse_camelot
from prep.report import format_track_table

TABLES = {"meta", "tracks", "files", "analysis", "stems", "mixes", "playlists", "playlist_tracks", "failures"}


def _analysis(bpm: float | None, camelot: str | None, key: str = "A minor", lufs: float = -9.0,
              duration: float = 180.0, version: int = 1) -> dict:
    return {"version": version, "duration": duration, "bpm": bpm, "key": key, "camelot": camelot,
            "key_confidence": 0.8, "lufs": lufs, "true_peak_dbtp": -0.5, "beats": [0.5, 1.0], "downbeats": [0.5]}


def _tables(db: Path) -> set[str]:
    with sqlite3.connect(db) as conn:
        return {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}


def test_default_db_path(tmp_path: Path) -> None:
    assert default_db_path(tmp_path) == tmp_path / ".ate" / "crate.sqlite"


def test_schema_created_with_version_wal_and_foreign_keys(tmp_path: Path) -> None:
    db = default_db_path(tmp_path)
    with Crate(db) as crate:
        assert crate.schema_version == SCHEMA_VERSION == len(crate_module.MIGRATIONS)
        assert crate.connection.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert crate.connection.execute("PRAGMA foreign_keys").fetchone()[0] == 1
        assert crate.connection.execute("PRAGMA busy_timeout").fetchone()[0] >= 10_000
        assert crate.root == tmp_path.resolve()
    assert TABLES <= _tables(db)
    with sqlite3.connect(db) as conn:
        columns = {r[1] for r in conn.execute("PRAGMA table_info(analysis)")}
        assert {"track_id", "version", "json", "bpm", "key", "camelot", "lufs", "true_peak_dbtp",
                "key_confidence"} <= columns
        indexes = {r[1] for r in conn.execute("PRAGMA index_list(analysis)")}
        assert {"analysis_bpm", "analysis_camelot", "analysis_lufs"} <= indexes


def test_migrations_run_once_and_appended_ones_apply(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    db = tmp_path / "c.sqlite"
    Crate(db).close()
    Crate(db).close()  # a second open must not re-run migration 1 (CREATE TABLE would fail)
    # A later issue appends a migration: an existing crate gets just that one.
    extra = ("CREATE TABLE cue_points (track_id INTEGER NOT NULL REFERENCES tracks(id), at_s REAL NOT NULL)",)
    monkeypatch.setattr(crate_module, "MIGRATIONS", crate_module.MIGRATIONS + [extra])
    monkeypatch.setattr(crate_module, "SCHEMA_VERSION", SCHEMA_VERSION + 1)
    with Crate(db) as crate:
        assert crate.schema_version == SCHEMA_VERSION + 1
    assert "cue_points" in _tables(db)
    Crate(db).close()
    # Back to the old code: it refuses a newer schema instead of misreading it.
    monkeypatch.undo()
    with pytest.raises(CrateError, match="newer"):
        Crate(db)


def test_add_track_and_read_back(tmp_path: Path) -> None:
    with Crate(default_db_path(tmp_path)) as crate:
        track_id = crate.add_track("h1", tmp_path / "sub" / "song one.flac", {"title": "Song One", "artist": "X"},
                                   _analysis(124.0, "8A"), size=10, mtime_ns=20)
        crate.add_track("h2", tmp_path / "untagged.wav", {}, _analysis(128.0, "9B"))
        assert crate.known_hashes() == {"h1", "h2"}
        assert crate.known_hashes(version=2) == set()
        assert crate.is_analysed("h1", 1) and not crate.is_analysed("h1", 2)
        assert crate.lookup_file("sub/song one.flac", 10, 20) == "h1"
        assert crate.lookup_file(tmp_path / "sub" / "song one.flac", 10, 20) == "h1"
        assert crate.lookup_file("sub/song one.flac", 10, 21) is None
        t = crate.get_track(track_id)
        assert t is not None and t == crate.get_track("h1")
        assert t["path"] == "sub/song one.flac" and Path(t["abs_path"]) == tmp_path.resolve() / "sub/song one.flac"
        assert (t["title"], t["artist"], t["bpm"], t["camelot"], t["duration_s"]) == ("Song One", "X", 124.0, "8A", 180.0)
        assert crate.get_track("h2")["title"] == "untagged"  # file name without extension
        assert crate.get_analysis("h1")["beats"] == [0.5, 1.0]
        assert crate.get_analysis(track_id) == crate.get_analysis("h1")
        assert crate.get_analysis("nope") is None
        # The same audio again (a race, or a re-analysis): one row, same id and added_at.
        added_at = t["added_at"]
        again = crate.add_track("h1", tmp_path / "moved.flac", {"title": "Song One"}, _analysis(125.0, "8A", version=2))
        assert again == track_id and crate.track_count() == 2
        t2 = crate.get_track("h1")
        assert (t2["added_at"], t2["path"], t2["bpm"], t2["version"]) == (added_at, "moved.flac", 125.0, 2)


def test_failures_recorded_and_cleared_on_success(tmp_path: Path) -> None:
    with Crate(default_db_path(tmp_path)) as crate:
        crate.record_failure(tmp_path / "a.wav", "empty file (0 bytes)")
        crate.record_failure("a.wav", "too short (2.00 s; at least 8 s needed)")
        assert [(p, r) for p, r, _ in crate.failures()] == [("a.wav", "too short (2.00 s; at least 8 s needed)")]
        crate.add_track("h", "a.wav", None, _analysis(120.0, "1A"), size=1, mtime_ns=1)
        assert crate.failures() == []


def test_track_write_is_atomic(tmp_path: Path) -> None:
    db = default_db_path(tmp_path)
    with Crate(db) as crate:
        # The tracks row is inserted before the bad bpm is converted: the
        # error must roll it back with everything else.
        with pytest.raises(ValueError):
            crate.add_track("bad", "bad.wav", None, {**_analysis(120.0, "8A"), "bpm": "fast"}, size=1, mtime_ns=1)
        # Writes grouped by the caller are one unit too.
        with pytest.raises(RuntimeError):
            with crate.transaction():
                crate.add_track("h1", "one.wav", None, _analysis(120.0, "8A"), size=1, mtime_ns=1)
                crate.record_failure("other.wav", "x")
                raise RuntimeError("crash mid-track")
        crate.add_track("h2", "two.wav", None, _analysis(121.0, "8A"), size=2, mtime_ns=2)
    with sqlite3.connect(db) as conn:
        counts = {t: conn.execute(f"SELECT count(*) FROM {t}").fetchone()[0]
                  for t in ("tracks", "analysis", "files", "failures")}
    assert counts == {"tracks": 1, "analysis": 1, "files": 1, "failures": 0}


def test_sorting(tmp_path: Path) -> None:
    rows_in = [("h1", "Delta", 128.0, "10A", -7.0, 200.0), ("h2", "alpha", 122.0, "8B", -9.0, 150.0),
               ("h3", "Charlie", 174.0, "8A", -6.0, 300.0), ("h4", "bravo", 90.5, "1B", -12.0, 100.0),
               ("h5", "Echo", None, None, -8.0, 120.0)]
    with Crate(default_db_path(tmp_path)) as crate:
        for h, title, bpm, camelot, lufs, duration in rows_in:
            crate.add_track(h, f"{h}.wav", {"title": title}, _analysis(bpm, camelot, lufs=lufs, duration=duration))

        def titles(sort: str, descending: bool = False) -> list[str]:
            return [r["title"] for r in crate.list_tracks(sort=sort, descending=descending)]

        assert titles("title") == ["alpha", "bravo", "Charlie", "Delta", "Echo"]
        assert titles("bpm") == ["bravo", "alpha", "Delta", "Charlie", "Echo"]  # unknown BPM last
        assert titles("bpm", descending=True) == ["Charlie", "Delta", "alpha", "bravo", "Echo"]
        # Camelot number (numerically: 10 after 8), then letter.
        assert titles("key") == ["bravo", "Charlie", "alpha", "Delta", "Echo"]
        assert titles("camelot") == titles("key")
        assert titles("key", descending=True) == ["Delta", "alpha", "Charlie", "bravo", "Echo"]
        assert titles("duration") == ["bravo", "Echo", "alpha", "Delta", "Charlie"]
        assert titles("lufs") == ["bravo", "alpha", "Echo", "Delta", "Charlie"]
        assert titles("added") == ["Delta", "alpha", "Charlie", "bravo", "Echo"]
        with pytest.raises(ValueError):
            crate.list_tracks(sort="colour")
        table = format_track_table(crate.list_tracks(sort="bpm"))
    lines = table.splitlines()
    assert lines[0].split() == ["#", "title", "BPM", "key", "camelot", "duration", "LUFS"]
    assert "bravo" in lines[1] and "90.5" in lines[1] and "1B" in lines[1] and "1:40" in lines[1]
    assert lines[-1].startswith("5 tracks")


def test_parse_camelot() -> None:
    assert parse_camelot("8A") == (8, "A")
    assert parse_camelot(" 12b ") == (12, "B")
    assert parse_camelot("13A") == (None, None)
    assert parse_camelot("") == (None, None)
    assert parse_camelot(None) == (None, None)


def test_readonly_open(tmp_path: Path) -> None:
    db = default_db_path(tmp_path)
    with pytest.raises(CrateError, match="no crate database"):
        Crate(db, readonly=True)
    with Crate(db) as crate:
        crate.add_track("h1", "a.wav", {"title": "A"}, _analysis(120.0, "8A"))
        # A reader alongside an open writer (WAL) sees committed tracks.
        with Crate(db, readonly=True) as reader:
            assert [r["title"] for r in reader.list_tracks()] == ["A"]
    with Crate(db, readonly=True) as reader:
        assert reader.track_count() == 1
        assert reader.get_analysis("h1")["bpm"] == 120.0
        with pytest.raises(CrateError, match="read-only"):
            reader.add_track("h2", "b.wav", None, _analysis(120.0, "8A"))
        with pytest.raises(sqlite3.OperationalError):
            reader.connection.execute("DELETE FROM tracks")
    assert Crate(db, readonly=True).track_count() == 1


def test_not_a_database(tmp_path: Path) -> None:
    bad = tmp_path / "junk.sqlite"
    bad.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(CrateError):
        Crate(bad)


def test_paths_outside_the_crate_stay_absolute(tmp_path: Path) -> None:
    outside = tmp_path / "elsewhere" / "x.wav"
    with Crate(default_db_path(tmp_path / "crate")) as crate:
        crate.add_track("h", outside, None, _analysis(120.0, "8A"))
        assert crate.get_track("h")["path"] == str(outside)
        assert crate.resolve_path(str(outside)) == outside
