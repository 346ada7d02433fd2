"""Prep steps after the analysis: work that needs a track's audio, stems and analysis, stored in the crate.

:func:`prep.pipeline.prep_crate` first decodes, separates and analyses every
new track; then, for each enabled :class:`PrepStep`, it finds the tracks that
lack the step's current result (new tracks, tracks prepared before the step
existed, tracks whose result is of an older version) and runs the step on
them, in worker processes, one transaction per track. So a step added to ATE
fills itself in on the next ``ate prep`` without re-analysing anything, an
interrupted run resumes, and a track the step fails on is a warning that
names it, never the end of the run.

A step is registered once, at import of its module, with :func:`register`;
:data:`STEP_MODULES` lists the modules that define the built-in steps (they
are imported lazily, since some load heavy models).

Example
-------
>>> def run(track: TrackInput) -> dict:            # in a worker process
...     return {"peak": float(abs(track.mix).max())}
>>> def store(crate, content_hash: str, result: dict) -> None:  # in the main process, in a transaction
...     ...
>>> def done(crate) -> set[str]:
...     ...
>>> register(PrepStep("peak", run=run, store=store, done=done))  # doctest: +SKIP
"""

from __future__ import annotations

import multiprocessing
import sys
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import dataclass
from importlib import import_module

import numpy as np

from prep.progress import ProgressBar

__all__ = ["PrepStep", "TrackInput", "register", "steps", "get_step", "run_steps", "load_track_input",
           "STEP_MODULES"]

STEP_MODULES: tuple[str, ...] = ("prep.embed", "prep.transcribe", "prep.tonal")
"""Modules whose import registers the built-in steps."""


@dataclass(frozen=True)
class TrackInput:
    """What a step gets for one track.

    Attributes
    ----------
    content_hash : str
        The track's identity in the crate.
    path : str
        The audio file (absolute).
    mix : ndarray
        float32 ``(frames, 2)`` at 44.1 kHz, as decoded.
    stems : ndarray or None
        float32 ``(4, frames, 2)`` in :data:`prep.stems.STEM_NAMES` order, or None when the track has no stems.
    analysis : dict
        The analysis record (docs/analysis.md).
    stems_model : str
        What made the stems (``"dsp"``, ``"demucs:htdemucs"``, ``"import"``); ``""`` without stems.
    """

    content_hash: str
    path: str
    mix: np.ndarray
    stems: np.ndarray | None
    analysis: dict
    stems_model: str = ""


@dataclass(frozen=True)
class PrepStep:
    """One step: how to compute it, store it and know it is done.

    Attributes
    ----------
    name : str
        Short name, as in ``ate prep --no-STEP`` / ``--STEP`` and in warnings.
    run : callable
        ``run(TrackInput) -> result``, in a worker process; a module-level function (it is pickled by
        name). The result is pickled back to the main process. Raising fails this track for this step only.
    store : callable
        ``store(crate, content_hash, result)``, in the main process, inside a crate transaction.
    done : callable
        ``done(crate) -> set of content hashes`` whose current result is stored.
    default : bool
        True: runs in every ``ate prep``; False: only when asked for (``--STEP``).
    needs_stems : bool
        Skip tracks without stems (they are retried once stems exist).
    description : str
        One line for ``ate prep --help``.
    """

    name: str
    run: Callable[[TrackInput], object]
    store: Callable[[object, str, object], None]
    done: Callable[[object], set[str]]
    default: bool = True
    needs_stems: bool = False
    description: str = ""


_STEPS: dict[str, PrepStep] = {}
_imported = False


def register(step: PrepStep) -> None:
    """Add a step (or replace the one of that name)."""
    _STEPS[step.name] = step


def _import_builtin() -> None:
    global _imported
    if not _imported:
        _imported = True
        for module in STEP_MODULES:
            import_module(module)


def steps() -> list[PrepStep]:
    """Every registered step, in registration order."""
    _import_builtin()
    return list(_STEPS.values())


def get_step(name: str) -> PrepStep:
    """The step called ``name``; ``KeyError`` with the known names otherwise."""
    _import_builtin()
    if name not in _STEPS:
        raise KeyError(f"unknown prep step {name!r}; known: {', '.join(_STEPS) or 'none'}")
    return _STEPS[name]


def load_track_input(crate, content_hash: str) -> TrackInput:
    """Read one track's mix, stems and analysis from a crate (the mix decoded from its file)."""
    from prep.audio import load_audio
    from prep.stems import read_stem_file

    track = crate.get_track(content_hash)
    if track is None:
        raise KeyError(f"{content_hash}: not in the crate")
    path = str(crate.resolve_path(track["path"]))
    mix = load_audio(path)
    stored = crate.get_stems(content_hash)
    stems = None
    if stored is not None:
        stems, _ = read_stem_file(stored["path"])
        n = min(len(mix), stems.shape[1])
        mix, stems = mix[:n], stems[:, :n]
    return TrackInput(content_hash, path, mix, stems, crate.get_analysis(content_hash) or {},
                      (stored["model"] or "") if stored is not None else "")


@dataclass(frozen=True)
class _Job:
    step: str
    content_hash: str
    title: str


_worker_crate = None


def _init_worker(db_path: str, root: str, modules: Sequence[str]) -> None:
    global _worker_crate
    import signal

    from prep.crate import Crate

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    for module in modules:
        import_module(module)
    _worker_crate = Crate(db_path, readonly=True, root=root)


def _run_job(job: _Job):
    track = load_track_input(_worker_crate, job.content_hash)
    step = get_step(job.step)
    if step.needs_stems and track.stems is None:
        return None
    return step.run(track)


def _pending(crate, chosen: Sequence[PrepStep]) -> list[_Job]:
    tracks = crate.list_tracks("title")
    with_stems = set(crate.stem_models()) if any(s.needs_stems for s in chosen) else set()
    jobs = []
    for step in chosen:
        done = step.done(crate)
        for t in tracks:
            h = t["content_hash"]
            if h in done or (step.needs_stems and h not in with_stems):
                continue
            jobs.append(_Job(step.name, h, t["title"]))
    return jobs


def run_steps(crate, names: Sequence[str] | None = None, workers: int = 1, progress: bool = False,
              on_warning: Callable[[str], None] | None = None) -> dict[str, int]:
    """Run the steps named (default: every default step) on the crate's tracks that lack them.

    Parameters
    ----------
    crate : prep.crate.Crate
        An open, writable crate.
    names : sequence of str, optional
        Steps to run, in order.
    workers : int
        Worker processes (1 runs here, in this process).
    progress : bool
        A progress bar with rate and ETA (on a terminal).
    on_warning : callable, optional
        Gets one line per track a step failed on (``TITLE: STEP: reason``); default: stderr.

    Returns
    -------
    dict
        ``{step name: tracks done}``, plus ``"failed"``.
    """
    from prep.runtime import one_line

    chosen = [get_step(n) for n in names] if names is not None else [s for s in steps() if s.default]
    counts = {s.name: 0 for s in chosen}
    counts["failed"] = 0
    jobs = _pending(crate, chosen)
    if not jobs:
        return counts
    warn = on_warning or (lambda line: print(f"WARNING: {line}", file=sys.stderr))
    modules = sorted({s.run.__module__ for s in chosen})

    def finish(job: _Job, result=None, error: BaseException | None = None) -> None:
        if error is not None:
            counts["failed"] += 1
            warn(f"{job.title}: {job.step}: {one_line(error)}")
            return
        if result is None:
            return
        with crate.transaction():
            get_step(job.step).store(crate, job.content_hash, result)
        counts[job.step] += 1

    with ProgressBar("prep steps", len(jobs), "tracks", enabled=progress and sys.stdout.isatty()) as bar:
        for job, result, error in _execute(crate, jobs, workers, modules):
            finish(job, result, error)
            bar.advance(f"{job.step}: {job.title}")
    return counts


INLINE_JOBS = 3
"""Up to this many jobs run in this process: starting worker processes (imports, model loads) costs more."""


def _execute(crate, jobs: list[_Job], workers: int, modules: Sequence[str]) -> Iterator[tuple]:
    if workers <= 1 or len(jobs) <= INLINE_JOBS:
        global _worker_crate
        _worker_crate = crate
        for job in jobs:
            try:
                yield job, _run_job(job), None
            except Exception as err:  # noqa: BLE001 - one track must not stop the others
                yield job, None, err
        return
    ctx = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=min(workers, len(jobs)), mp_context=ctx, initializer=_init_worker,
                             initargs=(str(crate.db_path), str(crate.root), tuple(modules))) as pool:
        futures = {pool.submit(_run_job, job): job for job in jobs}
        pending = set(futures)
        while pending:
            finished, pending = wait(pending, return_when=FIRST_COMPLETED)
            for future in finished:
                err = future.exception()
                yield futures[future], (None if err else future.result()), err
