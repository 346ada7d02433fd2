"""CURVE keys: who may drive the engine from another machine.

The engine serves loopback without authentication. To listen on another
interface it needs ZeroMQ CURVE (encryption plus public-key authentication):
``ate keys DIR`` makes the server's certificate and one for each named
client, in ZeroMQ's certificate format (``zmq.auth``)::

    DIR/server.key              the server's public key: give it to clients
    DIR/server.key_secret       the server's keypair: stays with the engine
    DIR/clients/NAME.key        each allowed client's public key (the server reads this folder)
    DIR/NAME.key_secret         that client's keypair: give it to that client only

``ate engine --curve DIR --endpoint tcp://0.0.0.0:5555`` then accepts only
clients whose public key is in ``DIR/clients``; a client connects with the
server's public key and its own keypair (:class:`controllers.client.EngineClient`
``server_key=`` / ``client_cert=``, or ``ate tui --server-key --client-cert``).
Adding a client is ``ate keys DIR --client NAME`` (the server's keys are kept).
"""

from __future__ import annotations

from pathlib import Path

import zmq
import zmq.auth

__all__ = ["make_keys", "load_public_key", "load_secret_cert", "CurveAuth"]


def make_keys(directory: str | Path, clients: list[str] | tuple[str, ...] = ("client",)) -> dict:
    """Create the server certificate (unless present) and one certificate per client name.

    Returns
    -------
    dict
        Paths: ``server_key``, ``server_secret``, ``clients`` (name -> secret file), ``allowed`` (folder).
    """
    directory = Path(directory)
    allowed = directory / "clients"
    allowed.mkdir(parents=True, exist_ok=True)
    server_public, server_secret = directory / "server.key", directory / "server.key_secret"
    if not server_secret.exists():
        zmq.auth.create_certificates(directory, "server")
    made = {}
    for name in clients:
        if not name or "/" in name or name == "server":
            raise ValueError(f"{name!r}: a client name is a plain word other than 'server'")
        public, secret = zmq.auth.create_certificates(directory, name)
        Path(public).replace(allowed / f"{name}.key")
        made[name] = str(secret)
    server_secret.chmod(0o600)
    for secret in made.values():
        Path(secret).chmod(0o600)
    return {"server_key": str(server_public), "server_secret": str(server_secret), "clients": made,
            "allowed": str(allowed)}


def load_public_key(key: str | Path) -> bytes:
    """A CURVE public key from a certificate file or its 40-character Z85 text."""
    text = str(key)
    if len(text) == 40 and not Path(text).exists():
        return text.encode("ascii")
    try:
        public, _ = zmq.auth.load_certificate(Path(key))
    except (OSError, ValueError) as err:
        raise ValueError(f"{key}: not a ZeroMQ certificate ({err})") from None
    return public


def load_secret_cert(path: str | Path) -> tuple[bytes, bytes]:
    """``(public, secret)`` from a ``.key_secret`` certificate file."""
    try:
        public, secret = zmq.auth.load_certificate(Path(path))
    except (OSError, ValueError) as err:
        raise ValueError(f"{path}: not a ZeroMQ certificate ({err})") from None
    if secret is None:
        raise ValueError(f"{path}: holds no secret key (the .key_secret file is needed, not the .key)")
    return public, secret


class CurveAuth:
    """Server side: CURVE on the given sockets, clients limited to the public keys in ``DIR/clients``.

    Runs ZeroMQ's authenticator (ZAP) in a thread for the context; :meth:`close` stops it.
    """

    def __init__(self, context: zmq.Context, directory: str | Path, sockets: list[zmq.Socket]):
        from zmq.auth.thread import ThreadAuthenticator

        directory = Path(directory)
        public, secret = load_secret_cert(directory / "server.key_secret")
        allowed = directory / "clients"
        if not allowed.is_dir():
            raise ValueError(f"{allowed}: no folder of allowed client keys (make it with `ate keys {directory}`)")
        self.allowed = allowed
        self._auth = ThreadAuthenticator(context)
        self._auth.start()
        self._auth.configure_curve(domain="*", location=str(allowed))
        for sock in sockets:
            sock.curve_server = True
            sock.curve_publickey = public
            sock.curve_secretkey = secret

    def close(self) -> None:
        """Stop the authenticator."""
        self._auth.stop()
