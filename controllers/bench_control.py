"""``ate bench control``: command round trip over ZeroMQ, and command-to-audio latency.

Everything runs on real parts: a private JACK dummy server (128-frame
periods), the engine playing on it through PortAudio, the ZeroMQ server on
loopback and a REQ client in another thread.

- **Round trip**: ``{"request": "state"}`` and a cheap command (``set`` a
  fader) from send to reply, against the same JSON payloads echoed by a bare
  ZeroMQ REP socket in the same run (the transport's own floor).
- **Command to audio**: deck 0 plays a generated track with its channel
  fader at 0; the client sends ``set volume 1`` at ``t0``; the first output
  block that is not silent began rendering at ``tc``; the command is heard at
  ``tc + latency`` (the output latency: PortAudio's, plus the blocks the
  engine renders ahead of the device, ``ahead_blocks``), so the latency is
  ``tc + latency - t0``. Repeated with the fader going back to 0 in between.
"""

from __future__ import annotations

import json
import threading
import time

import numpy as np

__all__ = ["bench_control"]


def _stats_ms(x: list[float]) -> dict:
    a = np.asarray(x) * 1000.0
    return {"median": round(float(np.median(a)), 4), "p99": round(float(np.percentile(a, 99)), 4),
            "max": round(float(a.max()), 4), "n": int(len(a))}


def _req(endpoint: str):
    """A REQ client connected to ``endpoint`` (10 s receive timeout, no linger)."""
    import zmq

    sock = zmq.Context.instance().socket(zmq.REQ)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.RCVTIMEO, 10000)
    sock.connect(endpoint)
    return sock


def _round_trips(endpoint: str, payloads: list[bytes], n: int) -> list[float]:
    sock = _req(endpoint)
    times = []
    for i in range(n):
        t0 = time.perf_counter()
        sock.send(payloads[i % len(payloads)])
        sock.recv()
        times.append(time.perf_counter() - t0)
    sock.close()
    return times


def _echo_server(endpoint_holder: list, stop: threading.Event) -> None:
    import zmq

    sock = zmq.Context.instance().socket(zmq.REP)
    sock.setsockopt(zmq.LINGER, 0)
    sock.bind("tcp://127.0.0.1:*")
    endpoint_holder.append(sock.getsockopt_string(zmq.LAST_ENDPOINT))
    poller = zmq.Poller()
    poller.register(sock, zmq.POLLIN)
    while not stop.is_set():
        if poller.poll(50):
            message = sock.recv()
            sock.send(json.dumps({"ok": True, "echo": len(message)}).encode())
    sock.close()


def bench_control(quick: bool = False, ahead_blocks: int | None = None) -> dict:
    """Measure the control path; returns a JSON-ready dict (see the module docstring). ``ahead_blocks`` as for
    :class:`engine.output.AudioOutput` (default: its default)."""
    from controllers.server import ProtocolServer
    from engine.core import Engine
    from engine.output import AudioOutput, JackDummyServer, find_device, warm_up
    from engine.track import load_track

    n_trips = 300 if quick else 3000
    n_audio = 10 if quick else 60
    block = 128
    state = json.dumps({"v": 1, "request": "state"}).encode()
    fader = [json.dumps({"v": 1, "cmd": "set", "deck": 1, "param": "volume", "value": v}).encode()
             for v in (0.5, 0.6)]
    with JackDummyServer(period_frames=block, realtime=JackDummyServer.realtime_allowed()):
        engine = Engine(n_decks=2)
        engine.load(0, load_track("synth:bpm=124,seed=2,bars=16"))
        engine.send({"cmd": "set", "deck": 0, "param": "volume", "value": 0.0})
        engine.send({"cmd": "play", "deck": 0})
        warm_up(block_frames=block)
        output = AudioOutput(engine, device=find_device(host_api="JACK"), block_frames=block, ahead_blocks=ahead_blocks)
        output.start()
        server = ProtocolServer(engine, output, "tcp://127.0.0.1:*", "tcp://127.0.0.1:*")
        try:
            time.sleep(0.5)
            trips_state = _round_trips(server.endpoint, [state], n_trips)
            trips_cmd = _round_trips(server.endpoint, fader, n_trips)
            holder: list = []
            stop = threading.Event()
            echo = threading.Thread(target=_echo_server, args=(holder, stop))
            echo.start()
            while not holder:
                time.sleep(0.01)
            trips_echo_state = _round_trips(holder[0], [state], n_trips)
            trips_echo_cmd = _round_trips(holder[0], fader, n_trips)
            stop.set()
            echo.join()
            latency_s = output.report()["latency_s"]
            to_audio = _command_to_audio(server.endpoint, engine, output, n_audio, latency_s)
            report = output.report()
        finally:
            server.close()
            output.stop()
    med = lambda x: float(np.median(x))  # noqa: E731
    return {
        "block_frames": block, "ahead_blocks": output.ahead_blocks, "output_latency_ms": round(latency_s * 1000.0, 3),
        "round_trip_ms": {"state": _stats_ms(trips_state), "command": _stats_ms(trips_cmd)},
        "peer_bare_zmq_echo_ms": {"state_payload": _stats_ms(trips_echo_state),
                                  "command_payload": _stats_ms(trips_echo_cmd)},
        "ratio_over_bare_zmq": {"state": round(med(trips_state) / med(trips_echo_state), 2),
                                "command": round(med(trips_cmd) / med(trips_echo_cmd), 2)},
        "command_to_audio_ms": _stats_ms(to_audio) if to_audio else None,
        "command_to_audio_floor_ms": round((block / engine.sample_rate + latency_s) * 1000.0, 3),
        "xruns": report["xruns"], "quick": quick,
        "notes": ["command_to_audio = start of the first audible block's rendering + the output latency (PortAudio's "
                  "and the blocks rendered ahead) - the time the command was sent; its floor is up to one block of "
                  "waiting plus the latency."],
    }


def _command_to_audio(endpoint: str, engine, output, n: int, latency_s: float) -> list[float]:
    """Send ``volume 1`` to the muted, playing deck 0; time until its first audible block is heard."""
    sock = _req(endpoint)
    results = []
    for _ in range(n):
        since = output.blocks
        t0 = time.perf_counter()
        sock.send(json.dumps({"v": 1, "cmd": "set", "deck": 0, "param": "volume", "value": 1.0}).encode())
        sock.recv()
        deadline = time.monotonic() + 2.0
        heard = None
        while heard is None and time.monotonic() < deadline:
            time.sleep(0.005)
            peaks = output.peaks_since(since)
            loud = np.flatnonzero(peaks > 1e-4)
            if len(loud):
                heard = output.starts_s(since)[loud[0]] + latency_s
        if heard is not None:
            results.append(heard - t0)
        sock.send(json.dumps({"v": 1, "cmd": "set", "deck": 0, "param": "volume", "value": 0.0}).encode())
        sock.recv()
        time.sleep(0.1)
    sock.close()
    return results
