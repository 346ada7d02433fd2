"""Loading tracks into the engine: from a prepared crate (stems and analysis), from a file, and failures."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from engine.core import Engine
from engine.grid import beat_at
from prep.audio import SAMPLE_RATE as SR
from prep.audio import write_audio
from prep.synth import TrackSpec, generate

ATE = str(Path(sys.executable).with_name("ate"))


@pytest.fixture(scope="module")
def crate(tmp_path_factory: pytest.TempPathFactory):
    """A crate of one generated song (122 BPM), prepared with the DSP separator; and its ground truth."""
    folder = tmp_path_factory.mktemp("enginecrate")
    song = generate(TrackSpec(bpm=122.0, structure=[["intro", 2], ["verse", 4]], seed=61, title="engine song"))
    write_audio(folder / "engine song.wav", song.mix, subtype="FLOAT")
    result = subprocess.run([ATE, "prep", str(folder), "--no-progress", "--separator", "dsp", "--workers", "1"],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    return folder, song


def test_a_crate_track_loads_with_its_stems_grid_and_loudness(crate):
    folder, song = crate
    engine = Engine(n_decks=1)
    reply = engine.send({"cmd": "load", "deck": 0, "track": "engine song", "crate": str(folder)})
    assert reply["ok"], reply
    assert reply["track"]["stems"] == ["drums", "bass", "vocals", "other"]
    assert reply["track"]["bpm"] == pytest.approx(122.0, abs=0.2)
    assert reply["track"]["lufs"] is not None
    assert engine.send({"cmd": "play", "deck": 0, "at": {"frame": 0}})["ok"]
    out = engine.render(4 * SR)
    deck = engine.decks[0]
    # The analysed grid is the true one: the analysis' beats, in frames, match the generator's.
    truth = np.asarray(song.truth.beats) * SR
    analysed = deck.track.beats_frames
    nearest = np.abs(analysed[:, None] - truth[None, :]).min(axis=1)
    assert np.median(nearest) < 0.01 * SR
    assert np.abs(out[SR:]).max() > 0.05
    assert beat_at(analysed, deck.position_frames) > 4.0
    # The stems are the crate's: the drum stem alone is a part of the deck, not all of it.
    drums = Engine(n_decks=1)
    drums.load(0, deck.track)
    drums.send({"cmd": "solo", "deck": 0, "stem": "drums", "on": True})
    drums.send({"cmd": "play", "deck": 0, "at": {"frame": 0}})
    only = drums.render(4 * SR)
    assert 0.05 < np.sqrt(np.mean(only[SR:] ** 2)) / np.sqrt(np.mean(out[SR:] ** 2)) < 0.95


def test_a_plain_file_is_analysed_on_load(tmp_path):
    song = generate(TrackSpec(bpm=128.0, structure=[["verse", 4]], seed=62))
    path = tmp_path / "loose.wav"
    write_audio(path, song.mix)
    engine = Engine(n_decks=1)
    reply = engine.send({"cmd": "load", "deck": 0, "track": str(path)})
    assert reply["ok"], reply
    assert reply["track"]["stems"] == ["mix"]
    assert reply["track"]["bpm"] == pytest.approx(128.0, abs=0.3)


@pytest.mark.parametrize("message, expect", [
    ({"track": "/no/such/file.wav"}, "/no/such/file.wav"),
    ({"track": "x", "crate": "/no/such/crate"}, "not a prepared crate"),
    ({"track": "synth:bpm=500"}, "bpm"),
    ({"track": "synth:tempo=1"}, "bad item"),
])
def test_load_failures_are_one_line_and_leave_the_deck_alone(message, expect):
    engine = Engine(n_decks=1)
    assert engine.send({"cmd": "load", "deck": 0, "track": "synth:bpm=124,bars=2"})["ok"]
    engine.render(256)
    reply = engine.send({"cmd": "load", "deck": 0, **message})
    assert not reply["ok"] and expect in reply["error"] and "\n" not in reply["error"]
    engine.render(256)
    assert engine.decks[0].track.title == "synth:bpm=124,bars=2"


def test_a_missing_track_in_a_crate_is_named(crate):
    folder, _ = crate
    reply = Engine(n_decks=1).send({"cmd": "load", "deck": 0, "track": "no such title", "crate": str(folder)})
    assert not reply["ok"] and "no track matches 'no such title'" in reply["error"]


def test_the_process_loader_hands_over_the_same_track_in_shared_memory():
    from engine.loader import SHM_DIR, ProcessLoader
    from engine.track import TrackLoadError, load_track

    loader = ProcessLoader()
    try:
        before = set(SHM_DIR.glob("ate-stems-*")) if SHM_DIR.is_dir() else set()
        track = loader("synth:bpm=126,seed=5,bars=2")
        local = load_track("synth:bpm=126,seed=5,bars=2")
        assert np.array_equal(track.stems, local.stems) and track.scale == local.scale
        assert np.array_equal(track.beats_frames, local.beats_frames) and track.title == local.title
        assert type(track.stems) is np.ndarray and track.stems.flags.writeable
        if SHM_DIR.is_dir():
            assert set(SHM_DIR.glob("ate-stems-*")) == before        # the name is gone, the pages stay mapped
        # It plays like any track.
        engine = Engine(n_decks=1)
        engine.load(0, track)
        engine.send({"cmd": "play", "deck": 0, "at": {"frame": 0}})
        assert np.abs(engine.render(SR)).max() > 0.05
        # Errors from the helper arrive as the same one-line TrackLoadError.
        with pytest.raises(TrackLoadError, match="bad item"):
            loader("synth:tempo=3")
    finally:
        loader.close()
