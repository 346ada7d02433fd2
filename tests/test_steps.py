"""Prep steps (prep/steps.py): run on the tracks that lack them, once, resumably; a failure is one warning."""

from __future__ import annotations

import json

import numpy as np
import pytest

from prep import steps as prep_steps
from prep.audio import write_audio
from prep.crate import Crate, default_db_path
from prep.pipeline import prep_crate
from prep.steps import PrepStep, register, run_steps
from prep.synth import TrackSpec, generate

STEP_VERSION = {"peak": 1}


def _run(track):
    if "broken" in track.path:
        raise ValueError("this one is broken on purpose")
    return {"peak": float(np.abs(track.mix).max()), "frames": len(track.mix), "bpm": track.analysis["bpm"],
            "has_stems": track.stems is not None}


def _store(crate, content_hash: str, result: dict) -> None:
    crate.connection.execute("CREATE TABLE IF NOT EXISTS test_peaks (hash TEXT PRIMARY KEY, version INT, json TEXT)")
    crate.connection.execute("INSERT OR REPLACE INTO test_peaks VALUES (?, ?, ?)",
                             (content_hash, STEP_VERSION["peak"], json.dumps(result)))


def _done(crate) -> set[str]:
    conn = crate.connection
    if not conn.execute("SELECT 1 FROM sqlite_master WHERE name = 'test_peaks'").fetchone():
        return set()
    return {h for (h,) in conn.execute("SELECT hash FROM test_peaks WHERE version = ?", (STEP_VERSION["peak"],))}


# Registered at import, as a real step module does: worker processes import this module to find it.
PEAK_STEP = PrepStep("peak", run=_run, store=_store, done=_done, default=False)
register(PEAK_STEP)


@pytest.fixture()
def peak_step():
    register(PEAK_STEP)
    return PEAK_STEP


@pytest.fixture(scope="module")
def crate_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("steps")
    for i, (name, bpm) in enumerate([("one", 120.0), ("two", 128.0), ("broken", 100.0)]):
        spec = TrackSpec(bpm=bpm, structure=[["intro", 2], ["chorus", 2]], seed=40 + i)
        write_audio(folder / f"{name}.wav", generate(spec).mix, 44100)
    report = prep_crate(folder, workers=1, progress=False, steps=[])
    assert report.new == 3 and not report.failed
    return folder


def _peaks(folder) -> dict:
    with Crate(default_db_path(folder)) as crate:
        titles = {t["content_hash"]: t["title"] for t in crate.list_tracks()}
        rows = crate.connection.execute("SELECT hash, json FROM test_peaks").fetchall()
    return {titles[h]: json.loads(j) for h, j in rows}


def test_a_step_runs_once_on_what_lacks_it_and_a_failure_is_a_warning(crate_dir, peak_step, monkeypatch):
    warnings = []
    with Crate(default_db_path(crate_dir)) as crate:
        counts = run_steps(crate, ["peak"], on_warning=warnings.append)
    assert counts == {"peak": 2, "failed": 1}
    assert warnings == ["broken: peak: ValueError: this one is broken on purpose"]
    peaks = _peaks(crate_dir)
    assert set(peaks) == {"one", "two"}
    assert peaks["two"]["bpm"] == pytest.approx(128.0, abs=0.5)      # it got the analysis
    assert peaks["one"]["frames"] > 8 * 44100 and 0.05 < peaks["one"]["peak"] <= 1.0
    # Done is done; the failed track is tried again (and fails again).
    with Crate(default_db_path(crate_dir)) as crate:
        assert run_steps(crate, ["peak"], on_warning=warnings.append) == {"peak": 0, "failed": 1}
    # A newer version of the step redoes every track (here in two worker processes).
    monkeypatch.setattr(prep_steps, "INLINE_JOBS", 0)
    STEP_VERSION["peak"] = 2
    try:
        with Crate(default_db_path(crate_dir)) as crate:
            assert run_steps(crate, ["peak"], workers=2, on_warning=warnings.append)["peak"] == 2
    finally:
        STEP_VERSION["peak"] = 1


def test_prep_runs_the_steps_asked_for_and_reports_them(crate_dir, peak_step):
    report = prep_crate(crate_dir, workers=1, progress=False, steps=["peak"])
    assert report.known == 3 and report.new == 0
    assert report.steps["failed"] == 1
    assert ("broken", "peak: ValueError: this one is broken on purpose") in report.warnings
    assert report.to_dict()["steps"] == report.steps


def test_unknown_step_is_a_clear_error():
    with pytest.raises(KeyError, match="unknown prep step 'nope'"):
        prep_steps.get_step("nope")
