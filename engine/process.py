"""The engine in its own process, so that nothing else in the application can starve the audio.

The engine's audio thread is Python (:meth:`engine.core.Engine.process`
calling ``numba`` kernels), so it needs the GIL: in the same process as a busy
UI, a garbage collection of a large heap or a slow request, it would wait for
it. (With ``ahead_blocks``, the default, the device's own callback is
GIL-free and the audio thread renders ahead of it: see :mod:`engine.ring`.)
:class:`EngineProcess` starts a child process (``multiprocessing`` "spawn"
context: a fresh interpreter, no inherited threads or locks) that builds the
:class:`~engine.core.Engine`, warms up its kernels
(:func:`engine.output.warm_up`), starts the stream
(:class:`engine.output.AudioOutput`) and then serves requests from a
``multiprocessing.Pipe``, one reply per request.

In the child:

- the garbage collector is tamed: after warm-up, ``gc.freeze()`` moves every
  object that exists (modules, the engine, the tracks loaded so far) out of the
  collector's sight and the thresholds are raised, so that a collection
  (which holds the GIL while it walks the heap) rarely runs;
- ``sys.setswitchinterval`` is lowered to :data:`SWITCH_INTERVAL_S`: when the
  audio thread comes back from a ``nogil`` kernel while the request thread runs
  Python, it gets the GIL within that time instead of CPython's default 5 ms
  (longer than a 128-frame block);
- :meth:`Engine.collect_garbage <engine.core.Engine.collect_garbage>` runs
  after every request and at least every :data:`IDLE_POLL_S`, freeing tracks
  that loads replaced outside the audio thread;
- the request thread (and the ZeroMQ server's) run real-time one priority
  under the audio thread, where the system allows it
  (:func:`engine.output.raise_helper_threads`): a thread that holds the GIL
  the audio thread waits for is then never preempted by another process;
- tracks are decoded in a further helper process
  (:class:`engine.loader.ProcessLoader`) and arrive in shared memory, so a
  load never holds this process' GIL for long.

:func:`handle_request` is the one place that turns a request into a reply;
the ZeroMQ server (issue 5) runs in the same child and reuses it. Requests are
engine commands (``{"cmd": ...}``, see :mod:`engine.commands`) or
``{"request": "state"}`` / ``{"request": "report"}``. An exception while
handling a request becomes an error reply; it never kills the child.
"""

from __future__ import annotations

import gc
import multiprocessing
import sys
import threading

__all__ = ["EngineProcess", "EngineProcessError", "handle_request", "SWITCH_INTERVAL_S", "IDLE_POLL_S",
           "GC_THRESHOLDS", "LIVE_BLOCK_FRAMES"]

SWITCH_INTERVAL_S = 0.0005
"""GIL switch interval in the engine process, seconds (CPython's default is 0.005)."""
IDLE_POLL_S = 0.1
"""Longest wait for a request before the child collects the engine's garbage anyway, seconds."""
GC_THRESHOLDS = (100_000, 50, 100)
"""``gc.set_threshold`` in the engine process (CPython's default is (700, 10, 10))."""
LIVE_BLOCK_FRAMES = 128
"""Frames per block of the engine process unless told otherwise (``ate engine``, ``ate live``): with the two
blocks rendered ahead of the device (:data:`engine.output.DEFAULT_AHEAD_BLOCKS`), 8.7 ms of output latency on
JACK at 44.1 kHz, and the render thread may be held off 5.8 ms (a keylock restart costs 2.2-2.5 ms)."""


class EngineProcessError(RuntimeError):
    """The engine process failed to start or is gone."""


def handle_request(engine, output, message: object) -> dict:
    """One request -> one reply; never raises.

    Parameters
    ----------
    engine : Engine
        The engine.
    output : AudioOutput or None
        Its output (for ``{"request": "report"}``).
    message : object
        ``{"cmd": ...}`` (an engine command, replied to by
        :meth:`Engine.send <engine.core.Engine.send>`), ``{"request": "state"}``
        (reply ``{"ok": true, "state": engine.state()}``) or
        ``{"request": "report", "since": N}`` (reply ``{"ok": true, "report": output.report(N)}``;
        ``since``, optional: cost statistics from block ``N`` on, a previous report's ``blocks``), or
        ``{"request": "track", "deck": D}`` (reply ``{"ok": true, "deck": D, "track": {...}}``: the
        summary, ``beats_s``/``downbeats_s``/``phrases_s``/``cue_s`` and ``waveform`` (per stem, peak
        per ``1 / waveform_rate_hz`` seconds, 0-255), or ``null`` for an empty deck).
        An ``"id"`` is echoed in the reply.

    Returns
    -------
    dict
        ``{"ok": true, ...}`` or ``{"ok": false, "error": "one line"}``.
    """
    try:
        if isinstance(message, dict) and "request" in message and "cmd" not in message:
            kind = message["request"]
            if kind == "state":
                reply = {"ok": True, "state": engine.state()}
            elif kind == "track":
                reply = _track_reply(engine, message)
            elif kind == "report":
                if output is None:
                    reply = {"ok": False, "error": "report: no audio output"}
                else:
                    reply = {"ok": True, "report": output.report(int(message.get("since", 0)))}
            else:
                reply = {"ok": False, "error": f"unknown request {kind!r}; known: state, track, report"}
            if "id" in message:
                reply["id"] = message["id"]
            return reply
        return engine.send(message)
    except Exception as err:  # noqa: BLE001 -- a request must never kill the engine
        reply = {"ok": False, "error": f"internal error: {type(err).__name__}: {err}"}
        if isinstance(message, dict) and "id" in message:
            reply["id"] = message["id"]
        return reply


def _track_reply(engine, message: dict) -> dict:
    """``{"request": "track", "deck": D}``: the loaded track's summary, grid and per-stem waveform."""
    deck = message.get("deck")
    if isinstance(deck, bool) or not isinstance(deck, int) or not 0 <= deck < len(engine.decks):
        return {"ok": False, "error": f"track: deck must be 0..{len(engine.decks) - 1}, got {deck!r}"}
    track = engine.decks[deck].track
    if track is None:
        return {"ok": True, "deck": deck, "track": None}
    from engine.track import WAVEFORM_RATE_HZ

    peaks = track.waveform()
    return {"ok": True, "deck": deck,
            "track": {**track.summary(), **track.grid(), "waveform_rate_hz": WAVEFORM_RATE_HZ,
                      "waveform": {name: peaks[i].tolist() for i, name in enumerate(track.stem_names)}}}


def _child_main(conn, config: dict) -> None:
    """The engine process: build, warm up, play, serve ``conn`` until told to close or the parent goes."""
    sys.setswitchinterval(SWITCH_INTERVAL_S)
    from engine.core import Engine
    from engine.loader import ProcessLoader
    from engine.output import AudioOutput, find_device, raise_helper_threads, warm_up

    output = None
    server = None
    loader = ProcessLoader()
    try:
        engine = Engine(n_decks=config["n_decks"], channels=config["channels"], loader=loader)
        device = config["device"]
        if device is None and config["host_api"] is not None:
            device = find_device(host_api=config["host_api"])
        warm_s = warm_up(config["channels"], config["block_frames"])
        record_s = 60.0 * config["record_minutes"] if config["record_path"] else 0.0
        output = AudioOutput(engine, device=device, block_frames=config["block_frames"], latency=config["latency"],
                             capture_seconds=record_s, ahead_blocks=config["ahead_blocks"])
        if config["endpoint"]:
            from controllers.server import ProtocolServer

            server = ProtocolServer(engine, output, config["endpoint"], config["pub_endpoint"] or
                                    config["endpoint"].rsplit(":", 1)[0] + ":*", curve_dir=config["curve_dir"])
        gc.collect()
        gc.freeze()
        gc.set_threshold(*GC_THRESHOLDS)
        output.start()
        helpers = [threading.get_native_id()] + ([server.thread_id] if server is not None else [])
        helper_priority = raise_helper_threads(output, helpers)
    except Exception as err:  # noqa: BLE001 -- reported to the parent, which raises
        if server is not None:
            server.close()
        if output is not None:
            output.stop()
        conn.send({"ok": False, "error": f"engine process: {type(err).__name__}: {err}"})
        conn.close()
        return
    endpoints = {"endpoint": server.endpoint, "pub_endpoint": server.pub_endpoint} if server else {}
    conn.send({"ok": True, "warm_up_s": round(warm_s, 3), "report": output.report(),
               "helper_thread_priority": helper_priority, **endpoints})
    final = None
    try:
        while True:
            if conn.poll(IDLE_POLL_S):
                try:
                    message = conn.recv()
                except EOFError:
                    break          # the parent is gone
                except Exception as err:  # noqa: BLE001 -- e.g. a message that does not unpickle here
                    conn.send({"ok": False, "error": f"unreadable request: {type(err).__name__}: {err}"})
                    continue
                if isinstance(message, dict) and message.get("request") == "close" and "cmd" not in message:
                    final = message
                    break
                conn.send(handle_request(engine, output, message))
            engine.collect_garbage()
    finally:
        if server is not None:
            server.close()
        output.stop()
        loader.close()
        report = output.report()
        if config["record_path"]:
            report["recorded"] = _write_recording(output, config["record_path"])
        if final is not None:
            conn.send({"ok": True, "report": report})
        conn.close()


def _write_recording(output, path: str) -> dict:
    """Write what the output played (its preallocated capture) to ``path``; never raises."""
    from prep.audio import write_audio

    audio = output.captured()
    try:
        # WAV as 32-bit float: the file holds the very samples played; FLAC is 24-bit.
        subtype = "FLOAT" if path.lower().endswith(".wav") else "PCM_24" if path.lower().endswith(".flac") else None
        write_audio(path, audio[:, :2], output.sample_rate, subtype=subtype)
    except Exception as err:  # noqa: BLE001 -- a failed write must not hide the session's report
        return {"path": path, "error": f"{path}: {type(err).__name__}: {err}"}
    return {"path": path, "seconds": round(len(audio) / output.sample_rate, 3)}


class EngineProcess:
    """An :class:`~engine.core.Engine` playing on an output device in a child process.

    Parameters
    ----------
    n_decks : int
        Decks of the engine.
    channels : int
        2 (master) or 4 (master and headphones).
    device : int or str, optional
        Output device (as :class:`engine.output.AudioOutput` takes it); the
        index refers to the child's PortAudio enumeration, which is made when
        the child starts.
    block_frames : int
        Frames per engine block and device callback (default :data:`LIVE_BLOCK_FRAMES`).
    ahead_blocks : int, optional
        Blocks the engine renders ahead of a GIL-free device callback (0: it renders inside a Python
        callback; default :data:`engine.output.DEFAULT_AHEAD_BLOCKS`); see :class:`engine.output.AudioOutput`.
    latency : float or str, optional
        Suggested output latency, seconds, or "low"/"high".
    host_api : str, optional
        With no ``device``: the first output device of this host API
        (:func:`engine.output.find_device`), e.g. "JACK".
    start_timeout_s : float
        Longest wait for the child to be playing, seconds (warm-up included).
    endpoint, pub_endpoint : str, optional
        Serve the ZeroMQ protocol there from the child (:class:`controllers.server.ProtocolServer`:
        commands on ``endpoint``, state and beats on ``pub_endpoint``); loopback only without ``curve_dir``.
    record_path : str, optional
        Record the master output (what the device played, sample for sample) and write it there (WAV or
        FLAC, by the suffix) when the process closes; the final report's ``"recorded"`` says where and how long.
    record_minutes : float
        Longest recording, minutes (reserved at start, 21 MB a minute of stereo float32; the pages are
        committed as the recording reaches them).
    curve_dir : str, optional
        CURVE keys made by ``ate keys`` (:mod:`controllers.keys`): serve encrypted, on any interface, to the
        clients whose public keys are in ``curve_dir/clients``.

    Raises
    ------
    EngineProcessError
        If the child fails to start (the message is the child's error).

    Notes
    -----
    :meth:`send`, :meth:`state` and :meth:`report` may be called from many
    threads: a lock keeps each request and its reply together on the pipe.
    The child inherits ``os.environ`` (e.g. ``JACK_DEFAULT_SERVER``).
    """

    def __init__(self, n_decks: int = 4, channels: int = 2, device: int | str | None = None,
                 block_frames: int = LIVE_BLOCK_FRAMES,
                 latency: float | str | None = None, host_api: str | None = None, start_timeout_s: float = 120.0,
                 endpoint: str | None = None, pub_endpoint: str | None = None, curve_dir: str | None = None,
                 record_path: str | None = None, record_minutes: float = 120.0, ahead_blocks: int | None = None):
        config = {"n_decks": n_decks, "channels": channels, "device": device, "block_frames": block_frames,
                  "ahead_blocks": ahead_blocks,
                  "latency": latency, "host_api": host_api, "endpoint": endpoint, "pub_endpoint": pub_endpoint,
                  "curve_dir": None if curve_dir is None else str(curve_dir),
                  "record_path": None if record_path is None else str(record_path),
                  "record_minutes": float(record_minutes)}
        ctx = multiprocessing.get_context("spawn")
        self._conn, child_conn = ctx.Pipe()
        self._lock = threading.Lock()
        self._closed = False
        self.final_report: dict | None = None
        self._proc = ctx.Process(target=_child_main, args=(child_conn, config), name="ate-engine", daemon=True)
        self._proc.start()
        child_conn.close()
        ready = None
        try:
            if self._conn.poll(start_timeout_s):
                ready = self._conn.recv()
        except EOFError:
            pass
        if not ready or not ready.get("ok"):
            self._kill()
            self._closed = True
            self._conn.close()
            if ready:
                why = ready["error"]
            elif self._proc.exitcode is not None:
                why = f"engine process: exited with code {self._proc.exitcode} before it was ready"
            else:
                why = f"engine process: not ready within {start_timeout_s:g} s"
            raise EngineProcessError(why)
        self.warm_up_s = ready["warm_up_s"]
        self.start_report = ready["report"]
        self.helper_thread_priority: int | None = ready["helper_thread_priority"]
        self.endpoint: str | None = ready.get("endpoint")       # where the ZeroMQ protocol is served, if asked
        self.pub_endpoint: str | None = ready.get("pub_endpoint")

    @property
    def pid(self) -> int | None:
        """The child's process id."""
        return self._proc.pid

    def _request(self, message: object) -> dict:
        with self._lock:
            if self._closed:
                raise EngineProcessError("engine process: closed")
            try:
                self._conn.send(message)
            except (TypeError, AttributeError, ValueError) as err:   # does not pickle: nothing was written
                return {"ok": False, "error": f"request does not serialise: {type(err).__name__}: {err}"}
            except OSError as err:
                raise EngineProcessError(f"engine process: gone ({err})") from None
            try:
                return self._conn.recv()
            except (EOFError, OSError):
                raise EngineProcessError(f"engine process: gone (exit code {self._proc.exitcode})") from None

    def send(self, message: dict) -> dict:
        """Send one engine command; returns its reply (``{"ok": ...}``, see :func:`handle_request`)."""
        return self._request(message)

    def state(self) -> dict:
        """The engine's :meth:`~engine.core.Engine.state` snapshot."""
        reply = self._request({"request": "state"})
        if not reply.get("ok"):
            raise EngineProcessError(reply.get("error", "state failed"))
        return reply["state"]

    def report(self, since: int = 0) -> dict:
        """The output's :meth:`~engine.output.AudioOutput.report` (after :meth:`close`: the final one);
        ``since``: cost statistics from that block index on (a previous report's ``blocks``)."""
        if self._closed and self.final_report is not None:
            return self.final_report
        reply = self._request({"request": "report", "since": since})
        if not reply.get("ok"):
            raise EngineProcessError(reply.get("error", "report failed"))
        return reply["report"]

    def close(self, timeout_s: float = 10.0) -> None:
        """Stop the stream and end the child (killed if it does not end within ``timeout_s``)."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            try:
                self._conn.send({"request": "close"})
                if self._conn.poll(timeout_s):
                    reply = self._conn.recv()
                    self.final_report = reply.get("report")
            except (EOFError, OSError):
                pass
            self._proc.join(timeout_s)
            self._kill()
            self._conn.close()

    def _kill(self) -> None:
        if self._proc.is_alive():
            self._proc.terminate()
            self._proc.join(5.0)
        if self._proc.is_alive():
            self._proc.kill()
            self._proc.join(5.0)

    def __enter__(self) -> EngineProcess:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            if not self._closed:
                self.close(timeout_s=2.0)
        except Exception:  # noqa: BLE001 -- interpreter shutdown
            pass
