"""Loading tracks in a helper process, so that decoding never holds the engine process' GIL.

Reading a crate's stems, decoding a file or generating a track runs numpy
code that holds the GIL for tens of milliseconds at a time; in the engine
process the audio callback would wait for it (an xrun at 128-frame blocks).
:class:`ProcessLoader` is an ``Engine(loader=...)`` that does the work in a
separate process and hands the stems over through shared memory: the helper
writes them into a file in ``/dev/shm`` (tmpfs: memory, not disk), the engine
process maps that file and removes its name at once, so the pages live exactly
as long as the deck's array and nothing is left behind if a process dies.
Only the small parts of the track (grid, loudness, title) are pickled.

Where ``/dev/shm`` does not exist, :class:`ProcessLoader` loads in the
caller's process, as :func:`engine.track.load_track` does.
"""

from __future__ import annotations

import dataclasses
import os
import pickle
import struct
import subprocess
import sys
import uuid
from pathlib import Path

import numpy as np

from engine.track import DeckTrack, TrackLoadError, load_track

__all__ = ["ProcessLoader", "SHM_DIR"]

SHM_DIR = Path("/dev/shm")
"""Where the stems travel between the processes (a tmpfs)."""


def _load_into_shm(track: str, crate: str | None) -> dict:
    """In the helper process: load, write the stems to a new file in :data:`SHM_DIR`, return the rest."""
    deck_track = load_track(track, crate)
    path = SHM_DIR / f"ate-stems-{os.getpid()}-{uuid.uuid4().hex}"
    stems = deck_track.stems
    shared = np.memmap(path, dtype=stems.dtype, mode="w+", shape=stems.shape)
    try:
        shared[:] = stems
        shared.flush()
    except BaseException:
        path.unlink(missing_ok=True)
        raise
    finally:
        del shared
    fields = {f.name: getattr(deck_track, f.name) for f in dataclasses.fields(deck_track) if f.name != "stems"}
    return {"path": str(path), "dtype": stems.dtype.str, "shape": stems.shape, "fields": fields}


class ProcessLoader:
    """A track loader for :class:`engine.core.Engine` that decodes in a helper process.

    Call it as ``loader(track, crate) -> DeckTrack`` (what ``Engine(loader=...)`` expects);
    :class:`engine.track.TrackLoadError` from the helper reaches the caller unchanged. The helper is a
    plain child interpreter (``python -m engine.loader``) speaking length-prefixed pickles on its
    stdin/stdout, so it can be started from a daemonic process such as the engine's.
    """

    def __init__(self):
        self._proc: subprocess.Popen | None = None
        self.in_process = not SHM_DIR.is_dir()

    def __call__(self, track: str, crate: str | None = None) -> DeckTrack:
        if self.in_process:
            return load_track(track, crate)
        try:
            if self._proc is None or self._proc.poll() is not None:
                self._proc = subprocess.Popen([sys.executable, "-m", "engine.loader"], stdin=subprocess.PIPE,
                                              stdout=subprocess.PIPE)
            _send(self._proc.stdin, (track, crate))
            ok, handed = _receive(self._proc.stdout)
        except (OSError, EOFError, pickle.PickleError) as err:
            self.close()
            raise TrackLoadError(f"{track}: loader process failed: {type(err).__name__}: {err}") from None
        if not ok:
            raise handed
        path = Path(handed["path"])
        try:
            mapped = np.memmap(path, dtype=np.dtype(handed["dtype"]), mode="r+", shape=tuple(handed["shape"]))
        finally:
            path.unlink(missing_ok=True)     # the mapping keeps the pages; the name is not needed any more
        # A plain ndarray view (its base keeps the mapping alive): the kernels are compiled for ndarrays.
        return DeckTrack(stems=mapped.view(np.ndarray), **handed["fields"])

    def close(self) -> None:
        """Stop the helper process (a later call starts a new one)."""
        proc, self._proc = self._proc, None
        if proc is not None:
            try:
                proc.stdin.close()
                proc.wait(timeout=5)
            except (OSError, subprocess.TimeoutExpired):
                proc.kill()


def _send(stream, obj) -> None:
    data = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
    stream.write(struct.pack("<Q", len(data)) + data)
    stream.flush()


def _receive(stream):
    head = stream.read(8)
    if len(head) < 8:
        raise EOFError("the loader process closed its pipe")
    (size,) = struct.unpack("<Q", head)
    return pickle.loads(stream.read(size))


def _serve() -> None:
    """The helper's loop: a request ``(track, crate)`` -> ``(True, handed)`` or ``(False, TrackLoadError)``."""
    requests, replies = sys.stdin.buffer, sys.stdout.buffer
    sys.stdout = sys.stderr            # nothing else may write into the reply pipe
    while True:
        try:
            track, crate = _receive(requests)
        except EOFError:
            return
        try:
            reply = (True, _load_into_shm(track, crate))
        except TrackLoadError as err:
            reply = (False, err)
        except Exception as err:  # noqa: BLE001 -- any failure of one load is that load's error
            reply = (False, TrackLoadError(f"{track}: {type(err).__name__}: {err}"))
        _send(replies, reply)


if __name__ == "__main__":
    _serve()
