"""A controller's connection to a running engine (the client side of docs/protocol.md).

Every control surface outside the engine process — the TUI, the MIDI bridge,
the automix planner, other programs — talks to the engine the same way: a
DEALER socket to the engine's ROUTER for commands (any number in flight,
replies matched by ``id``) and a SUB socket to its PUB for state and beats.
:class:`EngineClient` wraps both:

- :meth:`request` sends one message and waits for its reply;
- :meth:`post` sends without waiting (a fader move, a jog tick): its reply is
  collected later, and a refused one is kept in :attr:`errors` for display;
- :meth:`poll` reads the state stream without blocking and keeps the latest
  snapshot in :attr:`state` and the beats since the last call.

One lock guards the command socket, so threads (a MIDI callback, a UI loop)
may share a client; ZeroMQ sockets themselves are not thread-safe. With
``server_key`` the connection is CURVE-encrypted and authenticated (see
:mod:`controllers.keys`).
"""

from __future__ import annotations

import collections
import itertools
import json
import threading
import time
from pathlib import Path

import zmq

__all__ = ["EngineClient", "EngineClientError", "DEFAULT_ENDPOINT", "DEFAULT_PUB_ENDPOINT"]

from controllers import DEFAULT_ENDPOINT, DEFAULT_PUB_ENDPOINT


class EngineClientError(RuntimeError):
    """The engine did not answer in time, or the connection is closed."""


class EngineClient:
    """Commands and state of one engine over ZeroMQ.

    Parameters
    ----------
    endpoint : str
        The engine's command (ROUTER) address.
    pub_endpoint : str or None
        Its state (PUB) address; None for a command-only client.
    timeout_s : float
        How long :meth:`request` waits for a reply, seconds.
    server_key : str or Path, optional
        The server's CURVE public key (a ``.key`` certificate file written by
        ``ate keys``, or the Z85 text): encrypt and authenticate.
    client_cert : str or Path, optional
        This client's CURVE certificate (``.key_secret`` file); a fresh
        keypair if omitted (accepted only by a server that allows any client).

    Attributes
    ----------
    state : dict or None
        The latest ``state`` message (see :meth:`poll`).
    errors : collections.deque
        The last 100 error replies to :meth:`post` messages (``{"ok": false, "error": ...}``).
    """

    def __init__(self, endpoint: str = DEFAULT_ENDPOINT, pub_endpoint: str | None = DEFAULT_PUB_ENDPOINT, *,
                 timeout_s: float = 5.0, server_key: str | Path | None = None,
                 client_cert: str | Path | None = None):
        self.endpoint = endpoint
        self.pub_endpoint = pub_endpoint
        self.timeout_s = float(timeout_s)
        self.state: dict | None = None
        self.errors: collections.deque = collections.deque(maxlen=100)
        self._ids = itertools.count(1)
        self._lock = threading.Lock()
        self._state_lock = threading.Lock()
        self._context = zmq.Context.instance()
        self._dealer = self._context.socket(zmq.DEALER)
        self._sub = self._context.socket(zmq.SUB) if pub_endpoint else None
        for sock in filter(None, (self._dealer, self._sub)):
            sock.setsockopt(zmq.LINGER, 0)
            if server_key is not None:
                _curve_client(sock, server_key, client_cert)
            if "[" in endpoint:
                sock.setsockopt(zmq.IPV6, 1)
        self._dealer.connect(endpoint)
        if self._sub is not None:
            self._sub.setsockopt(zmq.SUBSCRIBE, b"")
            self._sub.connect(pub_endpoint)

    # ------------------------------------------------------------------ commands

    def _send(self, message: dict) -> object:
        rid = message.get("id")
        if rid is None:
            rid = f"c{next(self._ids)}"
            message = {**message, "id": rid}
        self._dealer.send_multipart([b"", json.dumps({"v": 1, **message}).encode()])
        return rid

    def _collect(self, wait_for: object = None, timeout_s: float = 0.0) -> dict | None:
        """Read replies (lock held); return the one whose id is ``wait_for`` if it came within ``timeout_s``."""
        deadline = time.monotonic() + timeout_s
        while True:
            left_ms = max(0.0, deadline - time.monotonic()) * 1000.0
            if not self._dealer.poll(left_ms if wait_for is not None else 0):
                return None
            frames = self._dealer.recv_multipart()
            try:
                reply = json.loads(frames[-1])
            except ValueError:
                continue
            rid = reply.get("id")
            if rid is not None and rid == wait_for:
                return reply
            if not reply.get("ok", False):
                self.errors.append(reply)

    def request(self, message: dict, timeout_s: float | None = None) -> dict:
        """Send ``message`` (a command or ``{"request": ...}``) and return the engine's reply.

        Raises
        ------
        EngineClientError
            No reply within ``timeout_s`` (default :attr:`timeout_s`).
        """
        with self._lock:
            if self._dealer.closed:
                raise EngineClientError(f"{self.endpoint}: the client is closed")
            rid = self._send(message)
            reply = self._collect(rid, self.timeout_s if timeout_s is None else timeout_s)
        if reply is None:
            raise EngineClientError(f"{self.endpoint}: no reply to {message.get('cmd') or message.get('request')!r} "
                                    f"within {self.timeout_s if timeout_s is None else timeout_s:g} s "
                                    f"(is `ate engine` running there?)")
        return reply

    def post(self, message: dict) -> None:
        """Send ``message`` without waiting; an error reply lands in :attr:`errors` when replies are next read."""
        with self._lock:
            if self._dealer.closed:
                raise EngineClientError(f"{self.endpoint}: the client is closed")
            self._collect()
            self._send(message)

    # ------------------------------------------------------------------ state

    def poll(self, timeout_s: float = 0.0) -> list[dict]:
        """Read everything the state stream has sent; return the ``beat`` events among it.

        Waits up to ``timeout_s`` for the first message. The newest ``state``
        snapshot is kept in :attr:`state`. Also collects replies to :meth:`post`.
        """
        beats: list[dict] = []
        if self._sub is None:
            return beats
        with self._state_lock:
            wait_ms = timeout_s * 1000.0
            while self._sub.poll(wait_ms):
                wait_ms = 0
                topic, body = self._sub.recv_multipart()[:2]
                try:
                    message = json.loads(body)
                except ValueError:
                    continue
                if topic == b"state":
                    self.state = message
                elif topic == b"beat":
                    beats.append(message)
        if self._lock.acquire(blocking=False):
            try:
                self._collect()
            finally:
                self._lock.release()
        return beats

    def wait_state(self, timeout_s: float = 5.0) -> dict:
        """The next ``state`` message from the stream (after this call), or EngineClientError."""
        deadline = time.monotonic() + timeout_s
        with self._state_lock:
            self.state = None
        while time.monotonic() < deadline:
            self.poll(min(0.05, max(0.0, deadline - time.monotonic())))
            if self.state is not None:
                return self.state
        raise EngineClientError(f"{self.pub_endpoint}: no state within {timeout_s:g} s")

    # ------------------------------------------------------------------ life

    def close(self) -> None:
        """Close both sockets (idempotent)."""
        with self._lock, self._state_lock:
            for sock in filter(None, (self._dealer, self._sub)):
                sock.close(0)

    def __enter__(self) -> EngineClient:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _curve_client(sock: zmq.Socket, server_key: str | Path, client_cert: str | Path | None) -> None:
    from controllers.keys import load_public_key, load_secret_cert

    sock.curve_serverkey = load_public_key(server_key)
    if client_cert is None:
        public, secret = zmq.curve_keypair()
    else:
        public, secret = load_secret_cert(client_cert)
    sock.curve_publickey = public
    sock.curve_secretkey = secret
