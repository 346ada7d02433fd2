"""The crate database: what ATE knows about a folder of music, in one SQLite file.

One crate is one folder of music plus ``<folder>/.ate/crate.sqlite``. Tracks
are identified by the hash of their decoded audio
(:func:`prep.audio.content_hash`), so a renamed, moved or re-tagged file is
still the same track. Paths are stored relative to the crate folder when the
file lies inside it, so the whole folder can be moved.

Several processes may use one crate at once (two ``ate prep`` runs, a player
reading while prep writes): the database runs in WAL mode with a long busy
timeout, every write transaction starts with ``BEGIN IMMEDIATE`` (so a writer
never has to upgrade a read lock, which SQLite cannot wait for), and inserts
use ``ON CONFLICT`` so two writers racing on the same track end with one row.

The schema is versioned with ``PRAGMA user_version``: :data:`MIGRATIONS` is an
ordered list, and migration *n* takes the database from version *n - 1* to
*n*. Later features add tables or columns by appending a migration, never by
editing an old one.
"""

from __future__ import annotations

import json
import os
import re
import sqlite3
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from types import TracebackType

import numpy as np

DB_DIRNAME = ".ate"
DB_FILENAME = "crate.sqlite"

BUSY_TIMEOUT_S = 60.0
"""How long a connection waits for another process's write lock, in seconds.

Write transactions last milliseconds, so this only matters under heavy
contention (many prep workers' results committing at once), where waiting is
right and failing is wrong.
"""

SORT_KEYS = ("title", "bpm", "key", "camelot", "duration", "lufs", "added")
"""The orders :meth:`Crate.list_tracks` accepts."""

# Each entry is one schema version: the statements that take the database
# from the previous version to this one. Append only.
MIGRATIONS: list[tuple[str, ...]] = [
    # 1: the first schema.
    (
        """CREATE TABLE meta (
            key TEXT PRIMARY KEY,
            value TEXT NOT NULL
        )""",
        """CREATE TABLE tracks (
            id INTEGER PRIMARY KEY,
            content_hash TEXT NOT NULL UNIQUE,
            path TEXT NOT NULL,
            title TEXT NOT NULL,
            artist TEXT,
            album TEXT,
            duration_s REAL,
            added_at TEXT NOT NULL,
            updated_at TEXT NOT NULL
        )""",
        "CREATE INDEX tracks_path ON tracks(path)",
        "CREATE INDEX tracks_title ON tracks(title COLLATE NOCASE)",
        # A cache of decoded-content hashes, so an unchanged file is never
        # decoded again. Several paths may share one hash (copies).
        """CREATE TABLE files (
            path TEXT PRIMARY KEY,
            size INTEGER NOT NULL,
            mtime_ns INTEGER NOT NULL,
            content_hash TEXT NOT NULL,
            seen_at TEXT NOT NULL
        )""",
        "CREATE INDEX files_hash ON files(content_hash)",
        # The current analysis of each track; the scalar columns copy fields
        # of the JSON so the crate can be sorted and filtered without parsing.
        """CREATE TABLE analysis (
            id INTEGER PRIMARY KEY,
            track_id INTEGER NOT NULL UNIQUE REFERENCES tracks(id) ON DELETE CASCADE,
            version INTEGER NOT NULL,
            json TEXT NOT NULL,
            bpm REAL,
            key TEXT,
            camelot TEXT,
            camelot_number INTEGER,
            camelot_letter TEXT,
            key_confidence REAL,
            lufs REAL,
            true_peak_dbtp REAL,
            analyzed_at TEXT NOT NULL
        )""",
        "CREATE INDEX analysis_bpm ON analysis(bpm)",
        "CREATE INDEX analysis_key ON analysis(key)",
        "CREATE INDEX analysis_camelot ON analysis(camelot_number, camelot_letter)",
        "CREATE INDEX analysis_lufs ON analysis(lufs)",
        "CREATE INDEX analysis_version ON analysis(version)",
        """CREATE TABLE stems (
            id INTEGER PRIMARY KEY,
            track_id INTEGER NOT NULL REFERENCES tracks(id) ON DELETE CASCADE,
            stem TEXT NOT NULL,
            path TEXT NOT NULL,
            format TEXT NOT NULL,
            sample_rate INTEGER NOT NULL,
            frames INTEGER NOT NULL,
            model TEXT,
            created_at TEXT NOT NULL,
            UNIQUE (track_id, stem)
        )""",
        """CREATE TABLE mixes (
            id INTEGER PRIMARY KEY,
            created_at TEXT NOT NULL,
            output_path TEXT,
            json TEXT NOT NULL
        )""",
        """CREATE TABLE playlists (
            id INTEGER PRIMARY KEY,
            name TEXT NOT NULL UNIQUE,
            created_at TEXT NOT NULL
        )""",
        """CREATE TABLE playlist_tracks (
            playlist_id INTEGER NOT NULL REFERENCES playlists(id) ON DELETE CASCADE,
            position INTEGER NOT NULL,
            track_id INTEGER NOT NULL REFERENCES tracks(id) ON DELETE CASCADE,
            PRIMARY KEY (playlist_id, position)
        )""",
        "CREATE INDEX playlist_tracks_track ON playlist_tracks(track_id)",
        # The last prep failure of each path; cleared when the path succeeds.
        """CREATE TABLE failures (
            path TEXT PRIMARY KEY,
            reason TEXT NOT NULL,
            at TEXT NOT NULL
        )""",
    ),
    # 2: waveform overviews (prep/overview.py), one per track, drawn by the TUI.
    (
        """CREATE TABLE overviews (
            track_id INTEGER PRIMARY KEY REFERENCES tracks(id) ON DELETE CASCADE,
            lanes TEXT NOT NULL,
            points_per_second REAL NOT NULL,
            points INTEGER NOT NULL,
            data BLOB NOT NULL,
            created_at TEXT NOT NULL
        )""",
    ),
    # 3: results of the prep steps after the analysis (prep/steps.py): MIDI transcriptions, similarity
    # embeddings, tonal balance. Each row carries the version of the step that made it, so a newer step
    # redoes older rows.
    (
        """CREATE TABLE transcriptions (
            track_id INTEGER NOT NULL REFERENCES tracks(id) ON DELETE CASCADE,
            stem TEXT NOT NULL,
            path TEXT NOT NULL,
            notes INTEGER NOT NULL,
            version INTEGER NOT NULL,
            params TEXT NOT NULL,
            created_at TEXT NOT NULL,
            PRIMARY KEY (track_id, stem)
        )""",
        """CREATE TABLE embeddings (
            track_id INTEGER PRIMARY KEY REFERENCES tracks(id) ON DELETE CASCADE,
            version INTEGER NOT NULL,
            dim INTEGER NOT NULL,
            vector BLOB NOT NULL,
            features TEXT NOT NULL,
            created_at TEXT NOT NULL
        )""",
        """CREATE TABLE tonal (
            track_id INTEGER NOT NULL REFERENCES tracks(id) ON DELETE CASCADE,
            stem TEXT NOT NULL,
            version INTEGER NOT NULL,
            bands TEXT NOT NULL,
            created_at TEXT NOT NULL,
            PRIMARY KEY (track_id, stem)
        )""",
    ),
]

SCHEMA_VERSION = len(MIGRATIONS)
"""The schema version this code writes and expects."""


class CrateError(Exception):
    """The crate database cannot be used (missing, newer than this code, ...)."""


class TrackNotFound(LookupError):
    """A track query names no track of the crate, or several; the message says which in one line."""


def default_db_path(crate_dir: Path) -> Path:
    """The database file of the crate in ``crate_dir``: ``crate_dir/.ate/crate.sqlite``."""
    return Path(crate_dir) / DB_DIRNAME / DB_FILENAME


def now_iso() -> str:
    """The current UTC time as ISO 8601 with microseconds (sorts as text)."""
    return datetime.now(timezone.utc).isoformat(timespec="microseconds")


_CAMELOT_RE = re.compile(r"^\s*(\d{1,2})\s*([ABab])\s*$")


def parse_camelot(camelot: str | None) -> tuple[int | None, str | None]:
    """Split a Camelot code such as ``"8A"`` into ``(8, "A")``; ``(None, None)`` if it is not one."""
    if not camelot:
        return None, None
    m = _CAMELOT_RE.match(str(camelot))
    if not m or not 1 <= int(m.group(1)) <= 12:
        return None, None
    return int(m.group(1)), m.group(2).upper()


def title_from_path(path: str | Path) -> str:
    """A track's title when its tags have none: the file name without its extension (``.stem.mp4`` as one)."""
    name = Path(path).name
    for suffix in (".stem.mp4", ".stem.m4a"):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return Path(name).stem


def _optional_float(value: object) -> float | None:
    # Raises on junk (a string, a list) rather than storing it: a bad
    # analysis record must abort the whole track's transaction.
    if value is None:
        return None
    return float(value)  # type: ignore[arg-type]


def _tag(tags: dict | None, name: str) -> str | None:
    if not tags:
        return None
    value = tags.get(name)
    if value is None:
        return None
    value = str(value).strip()
    return value or None


_TRACK_COLUMNS = """
    t.id, t.content_hash, t.path, t.title, t.artist, t.album, t.duration_s,
    t.added_at, t.updated_at,
    a.version, a.bpm, a.key, a.camelot, a.key_confidence, a.lufs,
    a.true_peak_dbtp, a.analyzed_at
"""

# Missing values sort last in both directions; ties fall back to title.
_SORT_SQL = {
    "title": "t.title COLLATE NOCASE {d}, t.id {d}",
    "bpm": "(a.bpm IS NULL), a.bpm {d}, t.title COLLATE NOCASE",
    "key": "(a.camelot_number IS NULL), a.camelot_number {d}, a.camelot_letter {d}, t.title COLLATE NOCASE",
    "camelot": "(a.camelot_number IS NULL), a.camelot_number {d}, a.camelot_letter {d}, t.title COLLATE NOCASE",
    "duration": "(t.duration_s IS NULL), t.duration_s {d}, t.title COLLATE NOCASE",
    "lufs": "(a.lufs IS NULL), a.lufs {d}, t.title COLLATE NOCASE",
    "added": "t.added_at {d}, t.id {d}",
}


class Crate:
    """An open crate database.

    Parameters
    ----------
    db_path : str or Path
        The SQLite file; created (with its folder) unless ``readonly``.
    readonly : bool
        Open without write access; the database must exist and be at
        :data:`SCHEMA_VERSION`.
    root : str or Path, optional
        The crate folder that relative paths are relative to. Defaults to the
        folder holding ``.ate/`` when the database sits in one, else the
        folder recorded by the last ``ate prep``.
    busy_timeout_s : float
        How long to wait for another process's write lock.

    Raises
    ------
    CrateError
        The database is missing (readonly), not SQLite, or has a schema this
        code does not know.

    Examples
    --------
    >>> with Crate(default_db_path(Path("music"))) as crate:  # doctest: +SKIP
    ...     rows = crate.list_tracks(sort="bpm")
    """

    def __init__(self, db_path: str | Path, readonly: bool = False, root: str | Path | None = None,
                 busy_timeout_s: float = BUSY_TIMEOUT_S):
        self.db_path = Path(db_path)
        self.readonly = readonly
        try:
            if readonly:
                if not self.db_path.is_file():
                    raise CrateError(f"{self.db_path}: no crate database")
                uri = f"{self.db_path.resolve().as_uri()}?mode=ro"
                self._conn = sqlite3.connect(uri, uri=True, timeout=busy_timeout_s, isolation_level=None)
            else:
                self.db_path.parent.mkdir(parents=True, exist_ok=True)
                self._conn = sqlite3.connect(str(self.db_path), timeout=busy_timeout_s, isolation_level=None)
        except sqlite3.Error as err:
            raise CrateError(f"{self.db_path}: cannot open ({err})") from err
        self._conn.row_factory = sqlite3.Row
        try:
            self._configure(busy_timeout_s)
            self._migrate()
        except sqlite3.DatabaseError as err:
            self._conn.close()
            raise CrateError(f"{self.db_path}: not a usable crate database ({err})") from err
        except CrateError:
            self._conn.close()
            raise
        self.root = Path(root).resolve() if root is not None else self._default_root()

    # -- connection ---------------------------------------------------------

    def _configure(self, busy_timeout_s: float) -> None:
        conn = self._conn
        conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout_s * 1000)}")
        conn.execute("PRAGMA foreign_keys = ON")
        if self.readonly:
            conn.execute("PRAGMA query_only = ON")
        else:
            # WAL lets readers (a player, `ate crate`) run while prep writes.
            mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                raise CrateError(f"{self.db_path}: cannot switch to WAL mode (got {mode!r})")
            # NORMAL is durable against process crashes in WAL mode; only a
            # power cut can lose the last transactions, never corrupt.
            conn.execute("PRAGMA synchronous = NORMAL")

    def _migrate(self) -> None:
        version = self.schema_version
        if version > SCHEMA_VERSION:
            raise CrateError(f"{self.db_path}: schema version {version} is newer than this ATE "
                             f"understands ({SCHEMA_VERSION}); update ATE")
        if version == SCHEMA_VERSION:
            return
        if self.readonly:
            raise CrateError(f"{self.db_path}: schema version {version} is older than {SCHEMA_VERSION}; "
                             "run `ate prep` once to upgrade it")
        with self.transaction():
            # Re-read under the write lock: another process may have just
            # migrated the same file.
            version = self.schema_version
            for number in range(version + 1, SCHEMA_VERSION + 1):
                for statement in MIGRATIONS[number - 1]:
                    self._conn.execute(statement)
                # user_version lives in the header and is transactional, so a
                # crash mid-migration leaves the old version and no new tables.
                self._conn.execute(f"PRAGMA user_version = {number}")

    @property
    def schema_version(self) -> int:
        """The database's ``PRAGMA user_version``."""
        return int(self._conn.execute("PRAGMA user_version").fetchone()[0])

    @property
    def connection(self) -> sqlite3.Connection:
        """The underlying connection, for features that own their own tables."""
        return self._conn

    def close(self) -> None:
        """Close the connection (idempotent)."""
        if self._conn is not None:
            self._conn.close()
            self._conn = None  # type: ignore[assignment]

    def __enter__(self) -> Crate:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """A write transaction: committed on success, rolled back on any exception.

        Nested uses join the outermost transaction, so several writes can be
        grouped into one atomic unit by wrapping them.
        """
        if self.readonly:
            raise CrateError(f"{self.db_path}: opened read-only")
        if self._conn.in_transaction:
            yield self._conn
            return
        # IMMEDIATE takes the write lock up front: a deferred transaction that
        # reads then writes gets SQLITE_BUSY at once (no waiting) if another
        # process committed in between.
        self._conn.execute("BEGIN IMMEDIATE")
        try:
            yield self._conn
        except BaseException:
            self._conn.execute("ROLLBACK")
            raise
        self._conn.execute("COMMIT")

    # -- paths and metadata --------------------------------------------------

    def _default_root(self) -> Path | None:
        if self.db_path.parent.name == DB_DIRNAME:
            return self.db_path.parent.parent.resolve()
        stored = self.get_meta("root")
        return Path(stored) if stored else None

    def get_meta(self, key: str) -> str | None:
        """A value of the ``meta`` table, or None."""
        row = self._conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return row[0] if row else None

    def set_meta(self, key: str, value: str) -> None:
        """Set a value of the ``meta`` table."""
        with self.transaction() as conn:
            conn.execute("INSERT INTO meta (key, value) VALUES (?, ?) "
                         "ON CONFLICT (key) DO UPDATE SET value = excluded.value", (key, value))

    def relative_path(self, path: str | Path) -> str:
        """How ``path`` is stored: relative to the crate folder (POSIX) when inside it, else absolute."""
        p = Path(path)
        if not p.is_absolute():
            if self.root is None:
                return p.as_posix()
            p = self.root / p
        p = Path(os.path.abspath(p))
        if self.root is not None:
            # The root is resolved; a path reached through a symlinked
            # folder only matches it once resolved too.
            for candidate in (p, p.resolve()):
                try:
                    return candidate.relative_to(self.root).as_posix()
                except ValueError:
                    pass
        return str(p)

    def resolve_path(self, stored: str) -> Path:
        """The absolute file path for a stored (possibly relative) path."""
        p = Path(stored)
        if p.is_absolute() or self.root is None:
            return p
        return self.root / p

    # -- reads --------------------------------------------------------------

    def known_hashes(self, version: int | None = None) -> set[str]:
        """Content hashes of analysed tracks.

        Parameters
        ----------
        version : int, optional
            Only tracks whose analysis has exactly this version (so that rows
            written by an older analyser count as unknown and are redone).
        """
        if version is None:
            rows = self._conn.execute("SELECT t.content_hash FROM tracks t JOIN analysis a ON a.track_id = t.id")
        else:
            rows = self._conn.execute("SELECT t.content_hash FROM tracks t JOIN analysis a ON a.track_id = t.id "
                                      "WHERE a.version = ?", (version,))
        return {r[0] for r in rows}

    def is_analysed(self, content_hash: str, version: int | None = None) -> bool:
        """Whether a track with this hash has an analysis (of exactly ``version``, when given)."""
        sql = "SELECT 1 FROM tracks t JOIN analysis a ON a.track_id = t.id WHERE t.content_hash = ?"
        params: tuple = (content_hash,)
        if version is not None:
            sql += " AND a.version = ?"
            params += (version,)
        return self._conn.execute(sql, params).fetchone() is not None

    @property
    def stems_dir(self) -> Path:
        """Where prep keeps this crate's stem files: beside the database, in ``stems/``."""
        return self.db_path.parent / "stems"

    def stem_models(self) -> dict[str, str]:
        """Content hash -> separator name (``"dsp"``, ``"demucs:htdemucs"``, ``"import"``) of tracks with stems."""
        rows = self._conn.execute("SELECT DISTINCT t.content_hash, s.model FROM stems s "
                                  "JOIN tracks t ON s.track_id = t.id")
        return {r[0]: r[1] or "" for r in rows}

    def get_stems(self, track: int | str) -> dict | None:
        """Where a track's stems are stored, or None.

        Returns
        -------
        dict
            ``path`` (absolute), ``format``, ``sample_rate``, ``frames``,
            ``model``, ``stems`` (names, in storage order), ``created_at``.
        """
        where, params = self._where_track(track)
        rows = self._conn.execute(f"SELECT s.stem, s.path, s.format, s.sample_rate, s.frames, s.model, s.created_at "
                                  f"FROM stems s JOIN tracks t ON s.track_id = t.id WHERE {where} ORDER BY s.id",
                                  params).fetchall()
        if not rows:
            return None
        first = rows[0]
        return {"path": str(self.resolve_path(first["path"])), "format": first["format"],
                "sample_rate": first["sample_rate"], "frames": first["frames"], "model": first["model"],
                "stems": [r["stem"] for r in rows], "created_at": first["created_at"]}

    def get_overview(self, track: int | str) -> tuple[np.ndarray, list[str], float] | None:
        """A track's waveform overview: ``(uint8 (lanes, points), lane names, points per second)``, or None."""
        where, params = self._where_track(track)
        row = self._conn.execute(f"SELECT o.lanes, o.points_per_second, o.points, o.data FROM overviews o "
                                 f"JOIN tracks t ON o.track_id = t.id WHERE {where}", params).fetchone()
        if row is None:
            return None
        lanes = json.loads(row["lanes"])
        data = np.frombuffer(row["data"], dtype=np.uint8).reshape(len(lanes), row["points"]).copy()
        return data, lanes, float(row["points_per_second"])

    def lookup_file(self, path: str | Path, size: int, mtime_ns: int) -> str | None:
        """The cached content hash of ``path`` if its size and mtime are unchanged, else None."""
        row = self._conn.execute("SELECT content_hash FROM files WHERE path = ? AND size = ? AND mtime_ns = ?",
                                 (self.relative_path(path), int(size), int(mtime_ns))).fetchone()
        return row[0] if row else None

    def _where_track(self, track: int | str) -> tuple[str, tuple]:
        if isinstance(track, int):
            return "t.id = ?", (track,)
        return "t.content_hash = ?", (str(track),)

    def get_track(self, track: int | str) -> dict | None:
        """One track (by id or content hash) with its analysis columns, or None."""
        where, params = self._where_track(track)
        row = self._conn.execute(f"SELECT {_TRACK_COLUMNS} FROM tracks t LEFT JOIN analysis a ON a.track_id = t.id "
                                 f"WHERE {where}", params).fetchone()
        return self._track_dict(row) if row else None

    def find_tracks(self, query: str) -> list[dict]:
        """Tracks a person may mean by ``query``: a stored or absolute path, a content-hash prefix, or a title.

        Exact path and hash matches win; otherwise titles equal to the query
        (case-insensitive), then titles containing it.
        """
        rows = self.list_tracks()
        q = str(query)
        absolute = str(Path(q).resolve()) if q else q
        for test in (lambda r: r["path"] == q or r["abs_path"] == absolute,
                     lambda r: len(q) >= 6 and r["content_hash"].startswith(q),
                     lambda r: r["title"].casefold() == q.casefold(),
                     lambda r: q.casefold() in r["title"].casefold()):
            found = [r for r in rows if test(r)]
            if found:
                return found
        return []

    def find_track(self, query: str) -> dict:
        """The one track ``query`` names (:meth:`find_tracks`); :class:`TrackNotFound` (one line: no match, or
        which several match) otherwise."""
        found = self.find_tracks(query)
        if len(found) == 1:
            return found[0]
        where = self.root or self.db_path
        if not found:
            raise TrackNotFound(f"{where}: no track matches {query!r}")
        names = ", ".join(t["title"] for t in found[:4])
        raise TrackNotFound(f"{where}: {query!r} matches {len(found)} tracks ({names}{', ...' if len(found) > 4 else ''}"
                            "); give its path or a content-hash prefix")

    def get_analysis(self, track: int | str) -> dict | None:
        """The stored analysis record (the dict of :meth:`prep.analyze.Analysis.to_dict`) of a track, or None.

        Parameters
        ----------
        track : int or str
            Track id, or content hash.
        """
        where, params = self._where_track(track)
        row = self._conn.execute(f"SELECT a.json FROM analysis a JOIN tracks t ON a.track_id = t.id WHERE {where}",
                                 params).fetchone()
        return json.loads(row[0]) if row else None

    def list_tracks(self, sort: str = "title", descending: bool = False) -> list[dict]:
        """All tracks with their analysis columns, sorted.

        Parameters
        ----------
        sort : str
            One of :data:`SORT_KEYS`. ``"key"`` and ``"camelot"`` both sort by
            Camelot number then letter (1A, 1B, 2A, ...), so neighbours on the
            wheel are neighbours in the list. Tracks missing the value sort last.
        descending : bool
            Reverse the order (missing values still last).

        Returns
        -------
        list of dict
            Keys: ``id, content_hash, path, abs_path, title, artist, album,
            duration_s, added_at, updated_at, version, bpm, key, camelot,
            key_confidence, lufs, true_peak_dbtp, analyzed_at``.
        """
        if sort not in _SORT_SQL:
            raise ValueError(f"unknown sort {sort!r}; expected one of {', '.join(SORT_KEYS)}")
        order = _SORT_SQL[sort].format(d="DESC" if descending else "ASC")
        rows = self._conn.execute(f"SELECT {_TRACK_COLUMNS} FROM tracks t LEFT JOIN analysis a ON a.track_id = t.id "
                                  f"ORDER BY {order}")
        return [self._track_dict(r) for r in rows]

    def _track_dict(self, row: sqlite3.Row) -> dict:
        d = dict(row)
        d["abs_path"] = str(self.resolve_path(d["path"]))
        return d

    def track_count(self) -> int:
        """Number of tracks."""
        return int(self._conn.execute("SELECT count(*) FROM tracks").fetchone()[0])

    def failures(self) -> list[tuple[str, str, str]]:
        """The last prep failure of each path: ``(path, reason, at)``, sorted by path."""
        return [tuple(r) for r in self._conn.execute("SELECT path, reason, at FROM failures ORDER BY path")]

    # -- writes -------------------------------------------------------------

    def add_track(self, content_hash: str, path: str | Path, tags: dict | None, analysis: dict,
                  *, size: int | None = None, mtime_ns: int | None = None) -> int:
        """Insert or update one analysed track, atomically.

        The track row, its analysis row, its ``files`` cache row (when
        ``size`` and ``mtime_ns`` are given) and the clearing of the path's
        failure are one transaction: a crash or an exception leaves either all
        of them or none.

        If the hash is already in the crate (another process got there first,
        or a re-analysis after a version bump), the existing row is updated
        and keeps its id and ``added_at``.

        Parameters
        ----------
        content_hash : str
            :func:`prep.audio.content_hash` of the decoded audio.
        path : str or Path
            Where the file is now.
        tags : dict, optional
            ``title``, ``artist``, ``album``; a missing title falls back to the
            file name without extension.
        analysis : dict
            :meth:`prep.analyze.Analysis.to_dict`.
        size, mtime_ns : int, optional
            The file's ``stat`` at scan time, for the rescan cache.

        Returns
        -------
        int
            The track id.
        """
        stored = self.relative_path(path)
        record = json.dumps(analysis, allow_nan=True, separators=(",", ":"))
        title = _tag(tags, "title") or title_from_path(stored)
        stamp = now_iso()
        with self.transaction() as conn:
            track_id = conn.execute(
                """INSERT INTO tracks (content_hash, path, title, artist, album, duration_s, added_at, updated_at)
                   VALUES (?, ?, ?, ?, ?, ?, ?, ?)
                   ON CONFLICT (content_hash) DO UPDATE SET
                     path = excluded.path, title = excluded.title, artist = excluded.artist,
                     album = excluded.album, duration_s = excluded.duration_s, updated_at = excluded.updated_at
                   RETURNING id""",
                (content_hash, stored, title, _tag(tags, "artist"), _tag(tags, "album"),
                 _optional_float(analysis.get("duration")), stamp, stamp),
            ).fetchone()[0]
            camelot = analysis.get("camelot") or None
            number, letter = parse_camelot(camelot)
            version = analysis.get("version")
            conn.execute(
                """INSERT INTO analysis (track_id, version, json, bpm, key, camelot, camelot_number, camelot_letter,
                                         key_confidence, lufs, true_peak_dbtp, analyzed_at)
                   VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
                   ON CONFLICT (track_id) DO UPDATE SET
                     version = excluded.version, json = excluded.json, bpm = excluded.bpm, key = excluded.key,
                     camelot = excluded.camelot, camelot_number = excluded.camelot_number,
                     camelot_letter = excluded.camelot_letter, key_confidence = excluded.key_confidence,
                     lufs = excluded.lufs, true_peak_dbtp = excluded.true_peak_dbtp,
                     analyzed_at = excluded.analyzed_at""",
                (track_id, int(version) if version is not None else 0, record,
                 _optional_float(analysis.get("bpm")), analysis.get("key") or None, camelot, number, letter,
                 _optional_float(analysis.get("key_confidence")), _optional_float(analysis.get("lufs")),
                 _optional_float(analysis.get("true_peak_dbtp")), stamp),
            )
            if size is not None and mtime_ns is not None:
                self.record_file(stored, size, mtime_ns, content_hash)
            self.clear_failure(stored)
        return int(track_id)

    def relocate_track(self, content_hash: str, path: str | Path, tags: dict | None = None,
                       *, size: int | None = None, mtime_ns: int | None = None) -> int | None:
        """Point a known track at a new path (the file was renamed or moved), without touching its analysis.

        Tags are refreshed when given (the title falls back to the new file
        name). The ``files`` row and the failure clearing share the transaction.

        Returns
        -------
        int or None
            The track id, or None if no track has this hash.
        """
        stored = self.relative_path(path)
        with self.transaction() as conn:
            if tags is None:
                row = conn.execute("UPDATE tracks SET path = ?, updated_at = ? WHERE content_hash = ? RETURNING id",
                                   (stored, now_iso(), content_hash)).fetchone()
            else:
                row = conn.execute(
                    "UPDATE tracks SET path = ?, title = ?, artist = ?, album = ?, updated_at = ? "
                    "WHERE content_hash = ? RETURNING id",
                    (stored, _tag(tags, "title") or title_from_path(stored), _tag(tags, "artist"),
                     _tag(tags, "album"),
                     now_iso(), content_hash)).fetchone()
            if row is None:
                return None
            if size is not None and mtime_ns is not None:
                self.record_file(stored, size, mtime_ns, content_hash)
            self.clear_failure(stored)
        return int(row[0])

    def _track_id(self, content_hash: str) -> int:
        row = self._conn.execute("SELECT id FROM tracks WHERE content_hash = ?", (content_hash,)).fetchone()
        if row is None:
            raise CrateError(f"{self.db_path}: no track with hash {content_hash}")
        return int(row[0])

    def set_stems(self, content_hash: str, path: str | Path, stems: Sequence[str], *, fmt: str,
                  sample_rate: int, frames: int, model: str) -> None:
        """Record (or replace) where a track's stems are stored.

        One row per stem; ATE's own stem file holds all of them, so the rows
        share ``path``. ``model`` names what made them (``"dsp"``,
        ``"demucs:htdemucs"``, ``"import"``), so a later prep with a better
        separator knows which tracks to redo.
        """
        with self.transaction() as conn:
            track_id = self._track_id(content_hash)
            conn.execute("DELETE FROM stems WHERE track_id = ?", (track_id,))
            now = now_iso()
            conn.executemany(
                "INSERT INTO stems (track_id, stem, path, format, sample_rate, frames, model, created_at) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                [(track_id, name, self.relative_path(path), fmt, int(sample_rate), int(frames), model, now)
                 for name in stems])

    def set_overview(self, content_hash: str, overview: np.ndarray, lanes: Sequence[str],
                     points_per_second: float) -> None:
        """Store a track's waveform overview (``uint8 (len(lanes), points)``, see :mod:`prep.overview`)."""
        data = np.ascontiguousarray(overview, dtype=np.uint8)
        if data.ndim != 2 or data.shape[0] != len(lanes):
            raise ValueError(f"overview of shape {data.shape} does not match lanes {list(lanes)}")
        with self.transaction() as conn:
            track_id = self._track_id(content_hash)
            conn.execute(
                "INSERT INTO overviews (track_id, lanes, points_per_second, points, data, created_at) "
                "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT(track_id) DO UPDATE SET lanes = excluded.lanes, "
                "points_per_second = excluded.points_per_second, points = excluded.points, data = excluded.data, "
                "created_at = excluded.created_at",
                (track_id, json.dumps(list(lanes)), float(points_per_second), data.shape[1], data.tobytes(),
                 now_iso()))

    def record_file(self, path: str | Path, size: int, mtime_ns: int, content_hash: str) -> None:
        """Remember that ``path`` with this size and mtime decodes to ``content_hash``; clears its failure."""
        stored = self.relative_path(path)
        with self.transaction() as conn:
            conn.execute(
                """INSERT INTO files (path, size, mtime_ns, content_hash, seen_at) VALUES (?, ?, ?, ?, ?)
                   ON CONFLICT (path) DO UPDATE SET size = excluded.size, mtime_ns = excluded.mtime_ns,
                     content_hash = excluded.content_hash, seen_at = excluded.seen_at""",
                (stored, int(size), int(mtime_ns), content_hash, now_iso()))
            self.clear_failure(stored)

    def record_failure(self, path: str | Path, reason: str) -> None:
        """Remember why ``path`` failed (replacing its previous failure) and drop its cache row."""
        stored = self.relative_path(path)
        with self.transaction() as conn:
            conn.execute("""INSERT INTO failures (path, reason, at) VALUES (?, ?, ?)
                            ON CONFLICT (path) DO UPDATE SET reason = excluded.reason, at = excluded.at""",
                         (stored, reason, now_iso()))
            # The file changed into something unreadable: its old hash is stale.
            conn.execute("DELETE FROM files WHERE path = ?", (stored,))

    def clear_failure(self, path: str | Path) -> None:
        """Forget the failure of ``path``, if any."""
        with self.transaction() as conn:
            conn.execute("DELETE FROM failures WHERE path = ?", (self.relative_path(path),))

    def forget_missing(self, present: Sequence[str | Path]) -> int:
        """Drop ``files`` and ``failures`` rows of crate-relative paths not in ``present``.

        Called after a full scan of the crate folder, so the cache and the
        failure list describe files that exist. Tracks are kept: their
        analysis stays useful if the file comes back.

        Returns
        -------
        int
            Rows removed.
        """
        keep = {self.relative_path(p) for p in present}
        removed = 0
        with self.transaction() as conn:
            for table in ("files", "failures"):
                stale = [r[0] for r in conn.execute(f"SELECT path FROM {table}")
                         if r[0] not in keep and not Path(r[0]).is_absolute()]
                conn.executemany(f"DELETE FROM {table} WHERE path = ?", [(p,) for p in stale])
                removed += len(stale)
        return removed

