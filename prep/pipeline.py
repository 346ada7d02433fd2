"""``ate prep``: scan a folder of music into its crate database, in parallel, resumably.

The main process scans the folder, asks the ``files`` cache which files are
unchanged since they were analysed (those are skipped without decoding), and
hands the rest to worker processes. A worker decodes a file, hashes the
audio, and analyses it only if that hash is not already in the crate (a
renamed, moved or copied file is recognised by content). When separation is
on, the worker first splits the track into four stems with the separator it
built once at start-up (so a demucs model is loaded once per worker), writes
them to the crate's stem folder (:mod:`prep.stems`) and analyses with them.
A track counts as done only when it has an analysis of the current version
and, if separation was asked for, stems from that same separator: stems from
the DSP fallback are redone once demucs weights are available. Only the main process
writes to the database, one transaction per track as results arrive, so an
interrupted or crashed run loses at most the tracks in flight and the next run
picks up where it stopped.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import shutil
import signal
import subprocess
import sys
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

import numpy as np
import soundfile as sf

from prep.analyze import ANALYSIS_VERSION, MIN_DURATION_S, analyze_audio
from prep.audio import AUDIO_EXTENSIONS, SAMPLE_RATE, AudioError, content_hash, load_audio
from prep.crate import Crate, default_db_path
from prep.overview import POINTS_PER_SECOND
from prep.progress import ProgressBar
from prep.steps import run_steps
from prep.runtime import environment, one_line
from prep.separate import SeparatorChoice
from prep.stems import (STEM_FILE_SUFFIX, STEM_NAMES, StemFileError, fit_stems, import_ni_stems,
                        read_stem_file, write_stem_file)

NI_STEMS_SUFFIX = ".stem.mp4"
"""Files with this ending carry their own stems (NI Stems); prep imports them instead of separating."""

THREAD_ENV_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS",
                   "VECLIB_MAXIMUM_THREADS", "NUMEXPR_NUM_THREADS")
"""Thread-pool sizes of the numeric libraries, capped in worker processes.

Parallelism comes from one process per core; letting each one also start a
BLAS/OpenMP/numba pool per core oversubscribes the machine several times over.
"""

MAX_CRASHES_PER_FILE = 2
"""A file in flight when a worker process died this many times is tried alone, then failed."""

_TAG_NAMES = ("title", "artist", "album")


# -- what a run reports -------------------------------------------------------


@dataclass
class PrepReport:
    """What one ``ate prep`` run did.

    Attributes
    ----------
    files : int
        Audio files found by the scan.
    new : int
        Tracks analysed and added.
    updated : int
        Tracks re-analysed because their analysis came from an older analyser.
    known : int
        Files already in the crate (unchanged, or re-read and found identical).
    moved : int
        Known tracks found under a new path (renamed or moved); path updated, not re-analysed.
    duplicates : int
        Files whose audio is identical to a track that is still at its own path.
    failed : list of (str, str)
        ``(path, reason)`` of every file that could not be added; truthy when
        anything failed.
    elapsed_s : float
        Wall time of the whole run, in seconds.
    audio_s : float
        Seconds of audio analysed (new and updated tracks).
    interrupted : bool
        The run was stopped by Ctrl-C; what was committed is kept.
    pending : int
        Files left undone by an interrupted run.
    separator : str
        What made the stems (``"dsp"``, ``"demucs:htdemucs"``), or ``""`` without separation.
    separated : int
        Tracks separated in this run.
    warnings : list of (str, str)
        ``(path, note)`` for tracks added with a problem short of failure
        (separation failed: analysed from the mix, retried next run), and
        ``(title, "STEP: reason")`` for a prep step that failed on a track.
    steps : dict
        Tracks each prep step (:mod:`prep.steps`) did in this run, and ``"failed"``.
    """

    crate_dir: Path
    db_path: Path
    files: int = 0
    new: int = 0
    updated: int = 0
    known: int = 0
    moved: int = 0
    duplicates: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)
    elapsed_s: float = 0.0
    audio_s: float = 0.0
    interrupted: bool = False
    pending: int = 0
    separator: str = ""
    separated: int = 0
    warnings: list[tuple[str, str]] = field(default_factory=list)
    steps: dict[str, int] = field(default_factory=dict)

    @property
    def done(self) -> int:
        """Files dealt with (any outcome)."""
        return self.new + self.updated + self.known + self.moved + self.duplicates + len(self.failed)

    @property
    def realtime_factor(self) -> float:
        """Seconds of audio analysed per second of wall time (0 when nothing was analysed)."""
        return self.audio_s / self.elapsed_s if self.elapsed_s > 0 else 0.0

    def to_dict(self) -> dict:
        """JSON-ready summary."""
        return {
            "crate": str(self.crate_dir), "db": str(self.db_path), "files": self.files, "new": self.new,
            "updated": self.updated, "known": self.known, "moved": self.moved, "duplicates": self.duplicates,
            "failed": [list(f) for f in self.failed], "elapsed_s": round(self.elapsed_s, 3),
            "audio_s": round(self.audio_s, 3), "realtime_factor": round(self.realtime_factor, 2),
            "interrupted": self.interrupted, "separator": self.separator, "separated": self.separated,
            "warnings": [list(w) for w in self.warnings], "steps": dict(self.steps),
        }

    def print_summary(self, file: TextIO | None = None) -> None:
        """Print a short summary for people, failures one per line."""
        out = file or sys.stdout
        parts = [f"{self.new} new"]
        if self.updated:
            parts.append(f"{self.updated} re-analysed")
        parts.append(f"{self.known} already known")
        if self.moved:
            parts.append(f"{self.moved} moved/renamed")
        if self.duplicates:
            parts.append(f"{self.duplicates} duplicate{'s' if self.duplicates != 1 else ''}")
        parts.append(f"{len(self.failed)} failed")
        print(f"prep {self.crate_dir}: {self.files} audio files in {self.elapsed_s:.1f} s: {', '.join(parts)}",
              file=out)
        if self.audio_s > 0:
            stems = f", {self.separated} separated with {self.separator}" if self.separated else ""
            print(f"analysed {_format_duration(self.audio_s)} of audio, {self.realtime_factor:.1f}x realtime{stems}",
                  file=out)
        done_steps = {name: n for name, n in self.steps.items() if n and name != "failed"}
        if done_steps:
            print("steps: " + ", ".join(f"{name} {n}" for name, n in done_steps.items()), file=out)
        if self.warnings:
            print("warnings:", file=out)
            for path, note in self.warnings:
                print(f"  {path}: {note}", file=out)
        if self.failed:
            print("failed:", file=out)
            for path, reason in self.failed:
                print(f"  {path}: {reason}", file=out)
        if self.interrupted:
            print(f"interrupted: {self.done} of {self.files} files done and saved, {self.pending} left; "
                  "run again to resume", file=out)


def _format_duration(seconds: float) -> str:
    minutes, s = divmod(int(round(seconds)), 60)
    hours, m = divmod(minutes, 60)
    return f"{hours}:{m:02d}:{s:02d}" if hours else f"{m}:{s:02d}"


# -- scanning -------------------------------------------------------------------


def scan_folder(crate_dir: Path) -> list[Path]:
    """Audio files under ``crate_dir``, recursively, sorted.

    Hidden files and folders (the ``.ate`` database folder among them) are
    skipped; a file counts as audio by its extension (:data:`~prep.audio.AUDIO_EXTENSIONS`).
    """
    found = []
    for folder, dirnames, filenames in os.walk(crate_dir):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in filenames:
            if not name.startswith(".") and Path(name).suffix.lower() in AUDIO_EXTENSIONS:
                found.append(Path(folder) / name)
    return sorted(found)


def read_tags(path: str | Path) -> dict[str, str]:
    """Title, artist and album of an audio file, where it has them.

    libsndfile reads tags of wav, flac, ogg and mp3 in-process; other
    containers (m4a, ...) go through ``ffprobe``. Missing tags are left out;
    errors give an empty dict, tags never fail a track.
    """
    try:
        with sf.SoundFile(str(path)) as f:
            meta = f.copy_metadata()
        return {k: str(meta[k]).strip() for k in _TAG_NAMES if str(meta.get(k) or "").strip()}
    except Exception:  # noqa: BLE001 - any libsndfile refusal means "ask ffprobe"
        pass
    ffprobe = shutil.which("ffprobe")
    if ffprobe is None:
        return {}
    wanted = ",".join(_TAG_NAMES)
    cmd = [ffprobe, "-v", "error", "-show_entries", f"format_tags={wanted}:stream_tags={wanted}", "-of", "json",
           str(path)]
    try:
        proc = subprocess.run(cmd, capture_output=True, timeout=20, check=False)
        info = json.loads(proc.stdout or b"{}")
    except (OSError, subprocess.SubprocessError, ValueError):
        return {}
    tags: dict[str, str] = {}
    # Container tags first; stream tags (ogg/opus keep them there) fill gaps.
    sources = [info.get("format", {}).get("tags", {})] + [s.get("tags", {}) for s in info.get("streams", [])]
    for source in sources:
        for key, value in source.items():
            key = key.lower()
            if key in _TAG_NAMES and key not in tags and str(value).strip():
                tags[key] = str(value).strip()
    return tags


# -- the worker side --------------------------------------------------------------


@dataclass
class _Job:
    path: str          # absolute, for reading
    rel: str           # as stored in the crate
    size: int
    mtime_ns: int
    force: bool = False  # analyse even if the hash looks known
    crashes: int = 0


@dataclass
class _Outcome:
    job: _Job
    status: str        # "analysed", "known" or "failed"
    content_hash: str | None = None
    tags: dict | None = None
    analysis: dict | None = None
    duration_s: float = 0.0
    reason: str | None = None
    stems: dict | None = None          # where the stems were written: path, frames, model
    overview: bytes | None = None      # uint8 (lanes, points), see prep.overview
    overview_lanes: tuple[str, ...] = ()
    warning: str | None = None


@dataclass(frozen=True)
class _Separation:
    """What a worker needs to make stems: sent once, at start-up. ``choice`` None: import only, no separation."""

    choice: SeparatorChoice | None
    stems_dir: str


# Set once per worker process by _init_worker rather than sent with every job:
# the hashes already done when the run started (can be large), and the
# separator (a demucs model is loaded once per worker, on first use).
_known_hashes: frozenset[str] = frozenset()
_separation: _Separation | None = None
_separator = None


def _analyse_a_click_track() -> None:
    """Analyse 8 s of clicks and a tone: compiles (or loads) every numba cache the analysis uses."""
    t = np.arange(8 * SAMPLE_RATE) / SAMPLE_RATE
    y = 0.1 * np.sin(2 * np.pi * 220.0 * t)
    y[:: SAMPLE_RATE // 2] += 0.9
    analyze_audio(np.repeat(y[:, None], 2, axis=1).astype(np.float32))


def _compile_caches_once() -> None:
    """Fill numba's on-disk caches from one process before several workers start.

    Workers that compile the same ``@guvectorize(cache=True)`` function at once (librosa's beat
    tracker and peak pickers) can leave a mismatched pair of cache files behind, and every later
    process that loads them crashes (numba issue 10128). Done in a process of its own, so a cache
    already damaged costs a warning here rather than the run.
    """
    try:
        with ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn")) as pool:
            pool.submit(_analyse_a_click_track).result()
    except BrokenProcessPool:
        print("WARNING: the analysis crashed on a test signal: numba's cache may be damaged; deleting the "
              "*.nbi / *.nbc files under librosa's and ATE's __pycache__ folders lets it rebuild", file=sys.stderr)


def _init_worker(known: frozenset[str], separation: _Separation | None = None) -> None:
    global _known_hashes, _separation, _separator
    _known_hashes = known
    _separation = separation
    _separator = None
    # Ctrl-C is the main process's business: it cancels and terminates us.
    # SIGINT arrives blocked (see _sigint_blocked); ignoring it before
    # unblocking discards one that is pending.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})


def _process(job: _Job) -> _Outcome:
    """Decode, hash and (unless known) analyse one file. Never raises for a bad file."""
    try:
        samples = load_audio(job.path, min_duration_s=MIN_DURATION_S)
    except AudioError as err:
        return _Outcome(job, "failed", reason=err.reason)
    except Exception as err:  # noqa: BLE001 - one bad file must not stop the run
        return _Outcome(job, "failed", reason=f"cannot decode ({one_line(err)})")
    digest = content_hash(samples)
    tags = read_tags(job.path)
    duration_s = samples.shape[0] / SAMPLE_RATE
    if digest in _known_hashes and not job.force:
        return _Outcome(job, "known", content_hash=digest, tags=tags, duration_s=duration_s)
    stems = stems_info = warning = None
    if job.path.lower().endswith(NI_STEMS_SUFFIX):
        try:
            stems, stems_info = _imported_stems(job.path, samples, digest)
        except Exception as err:  # noqa: BLE001 - fall back to separating the master
            warning = f"its NI stems could not be read ({one_line(err)})"
    if stems is None and _separation is not None and _separation.choice is not None:
        try:
            stems, stems_info = _stems_for(samples, digest)
        except Exception as err:  # noqa: BLE001 - the mix can still be analysed
            warning = f"separation failed, analysed from the mix ({one_line(err)})"
    try:
        result = analyze_audio(samples, path=job.rel, stems=stems)
    except Exception as err:  # noqa: BLE001
        return _Outcome(job, "failed", content_hash=digest, reason=f"analysis failed ({one_line(err)})")
    lanes = STEM_NAMES if stems is not None else ("mix",)
    overview = result.overview.tobytes() if result.overview is not None else None
    return _Outcome(job, "analysed", content_hash=digest, tags=tags, analysis=result.to_dict(),
                    duration_s=duration_s, stems=stems_info, overview=overview, overview_lanes=lanes,
                    warning=warning)


def stem_file_path(stems_dir: str | Path, digest: str) -> Path:
    """Where the crate keeps a track's stems: ``STEMS_DIR/ab/abcdef….stems``."""
    return Path(stems_dir) / digest[:2] / f"{digest}{STEM_FILE_SUFFIX}"


def _imported_stems(path: str, samples, digest: str):
    """The stems an NI Stems file carries (Traktor's format): no separation needed."""
    frames = samples.shape[0]
    fitted = fit_stems(import_ni_stems(path)[1], frames, path)
    assert _separation is not None
    target = stem_file_path(_separation.stems_dir, digest)
    write_stem_file(target, fitted, SAMPLE_RATE, meta={"separator": "import", "source": path})
    return fitted, {"path": str(target), "frames": frames, "model": "import", "reused": True}


def _stems_for(samples, digest: str):
    """The track's stems: reused from an earlier interrupted run, else separated and written."""
    global _separator
    assert _separation is not None and _separation.choice is not None
    choice = _separation.choice
    path = stem_file_path(_separation.stems_dir, digest)
    if path.exists():
        # A run that died between writing the stems and committing the
        # analysis leaves them behind; they are good if the same separator made them.
        try:
            stems, header = read_stem_file(path)
            if header.get("meta", {}).get("separator") == choice.name and stems.shape[1] == samples.shape[0]:
                return stems, {"path": str(path), "frames": stems.shape[1], "model": choice.name, "reused": True}
        except StemFileError:
            pass
    if _separator is None:
        _separator = choice.build()
    from prep.separate import separate_track

    stems = separate_track(samples, _separator)
    write_stem_file(path, stems, SAMPLE_RATE, meta={"separator": choice.name, "fold": "spectral",
                                                     "options": choice.options})
    return stems, {"path": str(path), "frames": stems.shape[1], "model": choice.name, "reused": False}


# -- running jobs ---------------------------------------------------------------


@contextmanager
def _sigint_blocked() -> Iterator[None]:
    """Hold Ctrl-C back while starting worker processes.

    A spawned worker inherits the blocked mask, so a Ctrl-C during its slow
    imports (before :func:`_init_worker` ignores SIGINT) prints no traceback.
    Blocking, unlike ignoring, keeps the signal pending for this process: it
    is raised here as soon as the block ends, never lost.
    """
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def _kill_pool(pool: ProcessPoolExecutor) -> None:
    # shutdown() alone lets running jobs finish (and the interpreter waits for
    # them at exit); after Ctrl-C we want out now, so the workers are
    # terminated too. _processes is private but stable since Python 3.2, and
    # must be read before shutdown(), which drops it.
    processes = list((getattr(pool, "_processes", None) or {}).values())
    pool.shutdown(wait=False, cancel_futures=True)
    for proc in processes:
        if proc.is_alive():
            proc.terminate()
    for proc in processes:
        proc.join(timeout=5)


class _Runner:
    """Feeds jobs to workers (or runs them in-process) and yields their outcomes as they finish."""

    def __init__(self, workers: int, known: set[str], still_needed: Callable[[_Job], bool],
                 on_start: Callable[[_Job], None] | None = None, separation: _Separation | None = None):
        self.workers = workers
        self.known = frozenset(known)
        self.separation = separation
        self.still_needed = still_needed
        self.on_start = on_start or (lambda job: None)
        self.queue: deque[_Job] = deque()

    def run(self, jobs: list[_Job]) -> Iterator[_Outcome]:
        """Outcomes of ``jobs`` (and of retried jobs), in completion order."""
        self.queue.extend(jobs)
        if self.workers <= 1:
            yield from self._run_inline()
        else:
            yield from self._run_pool()

    def retry(self, job: _Job) -> None:
        """Queue a job again, to be analysed even if its hash looked known."""
        job.force = True
        self.queue.append(job)

    def _take(self) -> _Job | _Outcome | None:
        """The next job to run, a "skipped" outcome for one no longer needed, or None."""
        if not self.queue:
            return None
        job = self.queue.popleft()
        # Checked at dispatch, not only at scan: a concurrent `ate prep` on
        # the same crate may have committed this file meanwhile.
        if job.force or job.crashes or self.still_needed(job):
            return job
        return _Outcome(job, "skipped")

    def _run_inline(self) -> Iterator[_Outcome]:
        global _known_hashes, _separation, _separator
        saved = _known_hashes, _separation, _separator
        _known_hashes, _separation, _separator = self.known, self.separation, None
        try:
            while (item := self._take()) is not None:
                if isinstance(item, _Job):
                    self.on_start(item)
                    item = _process(item)
                yield item
        finally:
            _known_hashes, _separation, _separator = saved

    def _run_pool(self) -> Iterator[_Outcome]:
        _compile_caches_once()
        isolate: list[_Job] = []
        while self.queue:
            crashed = yield from self._pool_round(self.workers)
            for job in crashed:
                job.crashes += 1
                (isolate if job.crashes >= MAX_CRASHES_PER_FILE else self.queue).append(job)
        # Files in flight during several worker deaths: run each alone, so
        # that only the one that kills its worker is blamed.
        for job in isolate:
            self.queue.append(job)
            for dead in (yield from self._pool_round(1)):
                yield _Outcome(dead, "failed", reason="worker process died while analysing it "
                                                      "(crash or out of memory)")

    def _pool_round(self, workers: int) -> Iterator[_Outcome]:
        """Run queued jobs in one pool until the queue is empty or the pool breaks.

        Returns (as the generator's value) the jobs lost when a worker died.
        """
        pool = ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn"),
                                   initializer=_init_worker, initargs=(self.known, self.separation))
        futures: dict[Future, _Job] = {}
        crashed: list[_Job] = []
        try:
            while True:
                # A small backlog per worker: enough that none idles, few
                # enough that Ctrl-C has little to cancel and the
                # dispatch-time check stays fresh.
                while len(futures) < 2 * workers and not crashed:
                    item = self._take()
                    if item is None:
                        break
                    if isinstance(item, _Outcome):
                        yield item
                        continue
                    with _sigint_blocked():
                        futures[pool.submit(_process, item)] = item
                if not futures:
                    break
                done, _ = wait(futures, return_when=FIRST_COMPLETED)
                for future in done:
                    job = futures.pop(future)
                    try:
                        outcome = future.result()
                    except BrokenProcessPool:
                        crashed.append(job)
                        continue
                    except Exception as err:  # noqa: BLE001 - e.g. an outcome that failed to pickle
                        outcome = _Outcome(job, "failed", reason=f"worker error ({one_line(err)})")
                    yield outcome
        except BaseException:
            # Ctrl-C, or the consumer stopped: stop the workers now.
            _kill_pool(pool)
            raise
        pool.shutdown(wait=True)
        return crashed


# -- the main side ----------------------------------------------------------------


def _is_same_file(crate: Crate, stored_path: str, content_hash_: str) -> bool:
    """True if ``stored_path`` still exists, unchanged since it was hashed to ``content_hash_``."""
    path = crate.resolve_path(stored_path)
    try:
        st = path.stat()
    except OSError:
        return False
    return crate.lookup_file(stored_path, st.st_size, st.st_mtime_ns) == content_hash_


def _commit(crate: Crate, outcome: _Outcome, report: PrepReport, runner: _Runner) -> None:
    """Write one outcome to the crate, in one transaction, and count it."""
    job = outcome.job
    if outcome.status == "skipped":
        report.known += 1
        return
    if outcome.status == "failed":
        crate.record_failure(job.rel, outcome.reason or "unknown error")
        report.failed.append((job.rel, outcome.reason or "unknown error"))
        return
    digest = outcome.content_hash
    assert digest is not None
    with crate.transaction():
        existing = crate.get_track(digest)
        if outcome.status == "analysed":
            if existing is None or existing["version"] != ANALYSIS_VERSION or outcome.stems is not None:
                crate.add_track(digest, job.rel, outcome.tags, outcome.analysis or {}, size=job.size,
                                mtime_ns=job.mtime_ns)
                _commit_extras(crate, digest, outcome, report)
                if existing is None:
                    report.new += 1
                else:
                    report.updated += 1
                report.audio_s += outcome.duration_s
                return
            # Analysed twice (a copy in this run, or a concurrent run won the
            # race): the stored analysis stands; treat this file as known.
        elif existing is None:
            # Known at the start but gone now (should not happen): analyse it.
            runner.retry(job)
            return
        if existing["path"] == job.rel:
            crate.relocate_track(digest, job.rel, outcome.tags, size=job.size, mtime_ns=job.mtime_ns)
            report.known += 1
        elif _is_same_file(crate, existing["path"], digest):
            crate.record_file(job.rel, job.size, job.mtime_ns, digest)
            report.duplicates += 1
        else:
            crate.relocate_track(digest, job.rel, outcome.tags, size=job.size, mtime_ns=job.mtime_ns)
            report.moved += 1


def _commit_extras(crate: Crate, digest: str, outcome: _Outcome, report: PrepReport) -> None:
    """Stems and overview of a freshly analysed track (inside the caller's transaction)."""
    if outcome.stems is not None:
        crate.set_stems(digest, outcome.stems["path"], STEM_NAMES, fmt="ate-stems", sample_rate=SAMPLE_RATE,
                        frames=outcome.stems["frames"], model=outcome.stems["model"])
        report.separated += 0 if outcome.stems.get("reused") else 1
    if outcome.overview is not None:
        lanes = outcome.overview_lanes
        data = np.frombuffer(outcome.overview, dtype=np.uint8).reshape(len(lanes), -1)
        crate.set_overview(digest, data, lanes, POINTS_PER_SECOND)
    if outcome.warning:
        report.warnings.append((outcome.job.rel, outcome.warning))


def prep_crate(crate_dir: Path, db_path: str | Path | None = None, workers: int | None = None,
               progress: bool = True, separator: SeparatorChoice | None = None,
               steps: Sequence[str] | None = None) -> PrepReport:
    """Scan ``crate_dir`` for audio and analyse what is new into the crate database.

    Parameters
    ----------
    crate_dir : Path
        Folder of music, scanned recursively (hidden files and ``.ate`` skipped).
    db_path : str or Path, optional
        The database; default ``crate_dir/.ate/crate.sqlite``.
    workers : int, optional
        Worker processes. Default: all cores, or one when demucs runs on the
        CPU (it uses every core itself). 1 runs in this process.
    progress : bool
        Show a progress bar (only when stdout is a terminal).
    separator : prep.separate.SeparatorChoice, optional
        Separate every track into stems with this (see
        :func:`prep.separate.choose_separator`); None analyses mixes only.
    steps : sequence of str, optional
        The prep steps (:mod:`prep.steps`) to run after the analysis, on every track that lacks
        their result; default: the steps that run by default. ``[]`` runs none.

    Returns
    -------
    PrepReport
        Counts, failures and timings. After Ctrl-C it comes back with
        ``interrupted`` set instead of raising; everything committed is kept.

    Raises
    ------
    NotADirectoryError
        ``crate_dir`` is not a folder.
    prep.crate.CrateError
        The database cannot be used.
    """
    started = time.monotonic()
    crate_dir = Path(crate_dir)
    if not crate_dir.is_dir():
        raise NotADirectoryError(f"{crate_dir}: not a folder")
    root = crate_dir.resolve()
    db = Path(db_path) if db_path is not None else default_db_path(root)
    if workers is None:
        workers = separator.default_workers() if separator is not None else (os.cpu_count() or 1)
    workers = int(workers)
    if workers < 1:
        raise ValueError(f"workers must be at least 1, got {workers}")
    report = PrepReport(crate_dir=crate_dir, db_path=db, separator=separator.name if separator else "")

    with Crate(db, root=root) as crate:
        separation = _Separation(separator, str(crate.stems_dir))
        if crate.get_meta("root") != str(root):
            crate.set_meta("root", str(root))
        known = crate.known_hashes(ANALYSIS_VERSION)
        if separator is not None:
            with_stems = crate.stem_models()
            known = {h for h in known if with_stems.get(h) in (separator.name, "import")}
        paths = scan_folder(root)
        report.files = len(paths)
        jobs: list[_Job] = []
        for path in paths:
            rel = crate.relative_path(path)
            try:
                st = path.stat()
            except OSError as err:
                crate.record_failure(rel, f"cannot read ({err.strerror or err})")
                report.failed.append((rel, f"cannot read ({err.strerror or err})"))
                continue
            cached = crate.lookup_file(rel, st.st_size, st.st_mtime_ns)
            if cached is not None and cached in known:
                report.known += 1
            else:
                jobs.append(_Job(str(path), rel, st.st_size, st.st_mtime_ns))

        def still_needed(job: _Job) -> bool:
            cached = crate.lookup_file(job.rel, job.size, job.mtime_ns)
            if cached is None or not crate.is_analysed(cached, ANALYSIS_VERSION):
                return True
            if separator is None:
                return False
            stored = crate.get_stems(cached)
            return stored is None or stored["model"] not in (separator.name, "import")

        pool_size = max(1, min(workers, len(jobs)))
        bar = ProgressBar("prep", len(jobs), "tracks", note=f"({report.known} unchanged skipped) " if report.known else "",
                          enabled=progress and sys.stdout.isatty())
        runner = _Runner(pool_size, known, still_needed, on_start=lambda job: bar.starting(Path(job.rel).name),
                         separation=separation)
        # One process per core already uses the machine; with fewer workers
        # than cores each may use the spare cores for its own threads.
        threads = max(1, (os.cpu_count() or 1) // pool_size)
        # Caps the numeric libraries' thread pools in the spawned workers, which
        # read these at import; this process's libraries are already set up.
        limits = (environment({name: str(threads) for name in THREAD_ENV_VARS}) if pool_size > 1
                  else nullcontext())
        outcomes = runner.run(jobs)
        try:
            with limits, bar:
                for outcome in outcomes:
                    _commit(crate, outcome, report, runner)
                    bar.advance(Path(outcome.job.rel).name)
        except KeyboardInterrupt:
            report.interrupted = True
        finally:
            outcomes.close()  # stops the workers if we left early
        if report.interrupted:
            report.pending = report.files - report.done
        else:
            crate.forget_missing(paths)
            try:
                report.steps = run_steps(crate, steps, workers=pool_size if jobs else workers, progress=progress,
                                         on_warning=lambda line: report.warnings.append(tuple(line.split(": ", 1))))
            except KeyboardInterrupt:
                report.interrupted = True
    report.failed.sort()
    report.elapsed_s = time.monotonic() - started
    return report
