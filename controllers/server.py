"""The engine's ZeroMQ face: a ROUTER socket for commands, a PUB socket for state and beats.

Every controller outside the engine process (the TUI, scripts, other programs)
speaks this protocol; docs/protocol.md is its reference. A request is one
ZeroMQ message whose last frame is a UTF-8 JSON object:

    {"v": 1, "id": 7, "cmd": "play", "deck": 0}          an engine command
    {"v": 1, "id": 8, "request": "state"}                 a snapshot of the engine

and gets exactly one reply, a JSON object with ``"ok"``, the echoed ``"id"``
and ``"v"``, and ``"error"`` (one line) when it was refused. A request may
also be a msgpack map (told apart by its first byte: a JSON object starts
with ``{`` or white space, a msgpack map with 0x80-0x8f, 0xde or 0xdf); its
reply is msgpack too. A message that is
too long, not JSON, not an object, of another protocol version, or a command
the engine rejects gets an error reply and leaves the engine as it was (the
engine validates every command before it reaches the audio thread). REQ and
DEALER clients both work: the reply carries the request's envelope frames.

The PUB socket sends ``state`` (the engine's :meth:`~engine.core.Engine.state`)
at :attr:`ProtocolServer.state_hz` and a ``beat`` event each time the master
beat clock passes a whole beat; each message is two frames, the topic and the
JSON body, so a subscriber can filter by topic.

Without keys, binding is to loopback (``tcp://127.0.0.1``, ``tcp://[::1]``,
``ipc://``, ``inproc://``) only. With ``curve_dir`` (made by ``ate keys``, see
:mod:`controllers.keys`) both sockets use CURVE and any interface is allowed:
only clients whose public key is in ``curve_dir/clients`` get through.
"""

from __future__ import annotations

import json
import threading
import time

import msgpack
import zmq

from engine.process import handle_request

__all__ = ["ProtocolServer", "PROTOCOL_VERSION", "MAX_MESSAGE_BYTES", "decode_request", "is_msgpack"]

PROTOCOL_VERSION = 1
MAX_MESSAGE_BYTES = 64 * 1024
"""Longest request, bytes (longer ones get an error reply; beyond 16 times that ZeroMQ drops the peer)."""
_LOOPBACK = ("tcp://127.0.0.1:", "tcp://localhost:", "tcp://[::1]:", "ipc://", "inproc://")


def is_msgpack(payload: bytes) -> bool:
    """Whether a request frame is a msgpack map (a JSON text never starts with these bytes)."""
    return bool(payload) and (0x80 <= payload[0] <= 0x8F or payload[0] in (0xDE, 0xDF))


def decode_request(payload: bytes) -> tuple[dict | None, str]:
    """Parse one request frame (JSON or msgpack): ``(message, "")`` or ``(None, "why it was refused")``."""
    if len(payload) > MAX_MESSAGE_BYTES:
        return None, f"message of {len(payload)} bytes is longer than {MAX_MESSAGE_BYTES}"
    try:
        if is_msgpack(payload):
            message = msgpack.unpackb(payload, raw=False, strict_map_key=True)
        else:
            message = json.loads(payload.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, msgpack.UnpackException) as err:
        kind = "msgpack" if is_msgpack(payload) else "UTF-8 JSON"
        return None, f"not {kind}: {str(err).splitlines()[0][:200] if str(err) else type(err).__name__}"
    if not isinstance(message, dict):
        return None, f"a request must be a JSON object, got {type(message).__name__}"
    version = message.pop("v", PROTOCOL_VERSION)
    if version != PROTOCOL_VERSION:
        return None, f"protocol version {version!r} is not supported (this engine speaks {PROTOCOL_VERSION})"
    return message, ""


class ProtocolServer:
    """Serve an engine over ZeroMQ from a background thread.

    Parameters
    ----------
    engine : engine.core.Engine
        The engine (its :meth:`send` is thread-safe).
    output : engine.output.AudioOutput, optional
        Its audio output, for ``{"request": "report"}``.
    endpoint : str
        Where the ROUTER binds; ``tcp://127.0.0.1:*`` picks a free port (see :attr:`endpoint`).
    pub_endpoint : str
        Where the PUB binds.
    state_hz : float
        State messages per second on the PUB socket.
    curve_dir : str or Path, optional
        Keys made by ``ate keys`` (:mod:`controllers.keys`): serve with CURVE,
        on any interface, to the clients whose keys are in ``curve_dir/clients``.

    Attributes
    ----------
    endpoint, pub_endpoint : str
        The addresses actually bound (with the port chosen).
    requests, errors : int
        Requests served, and how many got an error reply.
    """

    def __init__(self, engine, output=None, endpoint: str = "tcp://127.0.0.1:5555",
                 pub_endpoint: str = "tcp://127.0.0.1:5556", state_hz: float = 20.0, curve_dir=None):
        for address in (endpoint, pub_endpoint):
            if curve_dir is None and not address.startswith(_LOOPBACK):
                raise ValueError(f"{address}: without keys only loopback addresses (tcp://127.0.0.1, tcp://[::1], "
                                 f"ipc://) are served; make keys with `ate keys DIR` and serve with --curve DIR")
        self.engine = engine
        self.output = output
        self.state_hz = float(state_hz)
        self.requests = 0
        self.errors = 0
        self._context = zmq.Context.instance()
        self._router = self._context.socket(zmq.ROUTER)
        self._pub = self._context.socket(zmq.PUB)
        for sock in (self._router, self._pub):
            sock.setsockopt(zmq.LINGER, 0)
            sock.setsockopt(zmq.SNDHWM, 1000)
        self._auth = None
        if curve_dir is not None:
            from controllers.keys import CurveAuth

            self._auth = CurveAuth(self._context, curve_dir, [self._router, self._pub])
        for sock, address in ((self._router, endpoint), (self._pub, pub_endpoint)):
            if "[" in address:
                sock.setsockopt(zmq.IPV6, 1)
        self._router.setsockopt(zmq.MAXMSGSIZE, 16 * MAX_MESSAGE_BYTES)
        self._router.bind(endpoint)
        self._pub.bind(pub_endpoint)
        self.endpoint = self._router.getsockopt_string(zmq.LAST_ENDPOINT)
        self.pub_endpoint = self._pub.getsockopt_string(zmq.LAST_ENDPOINT)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="ate-zmq", daemon=True)
        self._thread.start()

    @property
    def thread_id(self) -> int:
        """Native id of the serving thread (the engine process runs it real-time: see
        :func:`engine.output.raise_helper_threads`)."""
        return self._thread.native_id

    def _reply(self, frames: list[bytes]) -> None:
        envelope, payload = frames[:-1], frames[-1]
        message, why = decode_request(payload)
        if message is None:
            reply: dict = {"ok": False, "error": why}
        else:
            reply = handle_request(self.engine, self.output, message)
        reply["v"] = PROTOCOL_VERSION
        self.requests += 1
        self.errors += not reply.get("ok", False)
        body = msgpack.packb(reply, default=str) if is_msgpack(payload) else json.dumps(reply, default=str).encode()
        # A client that went away is not an error: ROUTER drops replies to unknown peers.
        self._router.send_multipart(envelope + [body], zmq.NOBLOCK)

    def _publish(self, topic: bytes, body: dict) -> None:
        try:
            self._pub.send_multipart([topic, json.dumps(body).encode()], zmq.NOBLOCK)
        except zmq.Again:
            pass     # slow subscribers lose messages; the engine never waits for them

    def _serve(self) -> None:
        poller = zmq.Poller()
        poller.register(self._router, zmq.POLLIN)
        period = 1.0 / self.state_hz
        next_state = time.monotonic()
        last_beat = None
        while not self._stop.is_set():
            timeout_ms = max(0.0, min(next_state - time.monotonic(), 0.005)) * 1000.0
            for _ in poller.poll(timeout_ms):
                while True:
                    try:
                        frames = self._router.recv_multipart(zmq.NOBLOCK)
                    except zmq.Again:
                        break
                    try:
                        self._reply(frames)
                    except zmq.ZMQError:
                        pass      # the peer is gone or its queue is full: nothing to deliver
            beat = int(self.engine.master_beat // 1.0)
            if last_beat is not None and beat != last_beat:
                self._publish(b"beat", {"beat": beat, "clock_frames": self.engine.clock_frames,
                                        "master_bpm": self.engine.beats_per_frame * 60.0 * self.engine.sample_rate})
            last_beat = beat
            now = time.monotonic()
            if now >= next_state:
                self._publish(b"state", self.engine.state())
                next_state = max(next_state + period, now)
        self._router.close(0)
        self._pub.close(0)

    def close(self) -> None:
        """Stop serving and close the sockets."""
        self._stop.set()
        self._thread.join(timeout=5.0)
        if self._auth is not None:
            self._auth.close()

    def __enter__(self) -> ProtocolServer:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
