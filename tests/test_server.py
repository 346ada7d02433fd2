"""The ZeroMQ protocol server on real loopback sockets: replies, malformed input, fuzzing, PUB stream."""

from __future__ import annotations

import json
import random
import threading
import time

import msgpack
import numpy as np
import pytest
import zmq

from controllers.server import MAX_MESSAGE_BYTES, ProtocolServer, is_msgpack
from engine.core import Engine
from engine.track import load_track

SR = 44100
TRACK = "synth:bpm=124,seed=4,bars=4"


@pytest.fixture(scope="module")
def track():
    return load_track(TRACK)


def _client(endpoint: str, kind: int = zmq.REQ) -> zmq.Socket:
    sock = zmq.Context.instance().socket(kind)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.RCVTIMEO, 5000)
    sock.connect(endpoint)
    return sock


def _ask(sock: zmq.Socket, payload) -> dict:
    sock.send(payload if isinstance(payload, bytes) else json.dumps(payload).encode())
    reply = sock.recv()
    return msgpack.unpackb(reply) if is_msgpack(reply) else json.loads(reply)


def _playing_engine(track) -> Engine:
    engine = Engine(n_decks=2)
    engine.load(0, track)
    engine.send({"cmd": "set", "deck": 0, "param": "filter", "value": -0.3})
    engine.send({"cmd": "play", "deck": 0, "at": {"frame": 0}})
    return engine


def test_commands_and_state_round_trip(track):
    engine = Engine(n_decks=2)
    with ProtocolServer(engine, endpoint="tcp://127.0.0.1:*", pub_endpoint="tcp://127.0.0.1:*") as server:
        client = _client(server.endpoint)
        reply = _ask(client, {"v": 1, "id": "a", "cmd": "load", "deck": 1, "track": TRACK})
        assert reply["ok"] and reply["id"] == "a" and reply["v"] == 1 and reply["track"]["bpm"] == 124.0
        assert _ask(client, {"v": 1, "id": 2, "cmd": "play", "deck": 1})["ok"]
        engine.render(SR // 4)
        state = _ask(client, {"v": 1, "id": 3, "request": "state"})
        assert state["ok"] and state["id"] == 3 and state["state"]["decks"][1]["playing"]
        assert state["state"]["decks"][1]["track"]["title"] == TRACK
        client.close()


@pytest.mark.parametrize("payload, expect", [
    (b"\xff\xfe not utf-8", "not UTF-8 JSON"),
    (b"{not json", "not UTF-8 JSON"),
    (b"[1, 2, 3]", "must be a JSON object"),
    (json.dumps({"v": 2, "cmd": "play", "deck": 0}).encode(), "protocol version 2"),
    (json.dumps({"cmd": "teleport"}).encode(), "unknown command"),
    (json.dumps({"cmd": "set", "deck": 0, "param": "volume", "value": 7}).encode(), "within 0.0..1.0"),
    (b'{"cmd": "play", "deck": 0, "pad": "' + b"x" * MAX_MESSAGE_BYTES + b'"}', "longer than"),
])
def test_malformed_messages_get_one_line_errors(payload, expect):
    engine = Engine(n_decks=1)
    with ProtocolServer(engine, endpoint="tcp://127.0.0.1:*", pub_endpoint="tcp://127.0.0.1:*") as server:
        client = _client(server.endpoint)
        reply = _ask(client, payload)
        assert reply["ok"] is False and expect in reply["error"] and "\n" not in reply["error"]
        assert _ask(client, {"request": "state"})["ok"]      # and the server goes on
        client.close()


def _fuzz_messages(rng: random.Random, n: int) -> list[bytes]:
    """Random and mutated messages that the engine must all refuse."""
    valid = [{"cmd": "set", "deck": 0, "param": "eq_low_db", "value": -3.0}, {"cmd": "loop", "deck": 0, "beats": 4},
             {"cmd": "play", "deck": 1}, {"cmd": "bass_swap", "from_deck": 0, "to_deck": 1}]
    out = []
    for i in range(n):
        kind = i % 7
        base = dict(rng.choice(valid))
        if kind == 0:
            out.append(bytes(rng.randrange(256) for _ in range(rng.randrange(1, 200))))
        elif kind == 1:
            out.append(json.dumps(base).encode()[: rng.randrange(1, 20)])          # truncated
        elif kind == 2:
            base["deck"] = rng.choice([7, -1, "0", None, 1.5, True])                # bad deck
            out.append(json.dumps(base).encode())
        elif kind == 3:
            base[rng.choice(["bogus", "Cmd", "decks", "valu"])] = rng.random()       # unknown argument
            out.append(json.dumps(base).encode())
        elif kind == 4:
            key = rng.choice([k for k in base if k != "cmd"] or ["deck"])
            base[key] = rng.choice([[], {}, "loud", float("1e400"), 1e9, None])      # wrong type / range
            out.append(json.dumps(base).encode())
        elif kind == 5:
            out.append(json.dumps({"v": rng.choice([0, 2, "1", None]), **base}).encode())   # wrong version
        else:
            base["deck"] = rng.choice([7, -1, "0", None, 1.5, True, b"\x00"])              # msgpack, bad deck
            packed = msgpack.packb(base)
            out.append(packed[: rng.randrange(1, len(packed) + 1)])                          # maybe truncated
    return out


def test_fuzzing_leaves_the_audio_identical(track):
    """Random and mutated messages against a serving engine; its audio equals an untouched engine's."""
    fuzzed, reference = _playing_engine(track), _playing_engine(track)
    messages = _fuzz_messages(random.Random(11), 1500)
    replies: list = []
    with ProtocolServer(fuzzed, endpoint="tcp://127.0.0.1:*", pub_endpoint="tcp://127.0.0.1:*") as server:
        def fire() -> None:
            client = _client(server.endpoint)
            for payload in messages:
                replies.append(_ask(client, payload))
            client.close()

        sender = threading.Thread(target=fire)
        sender.start()
        blocks_a, blocks_b = [], []
        while sender.is_alive() or len(blocks_a) < 200:
            blocks_a.append(fuzzed.render(256))
            blocks_b.append(reference.render(256))
        sender.join()
    assert len(replies) == len(messages) and all(r["ok"] is False for r in replies)
    assert all("\n" not in r["error"] for r in replies)
    a, b = np.concatenate(blocks_a), np.concatenate(blocks_b)
    assert np.abs(a).max() > 0.05
    assert np.array_equal(a, b)


def test_a_client_leaving_mid_request_does_not_wedge_the_server(track):
    engine = Engine(n_decks=1)
    with ProtocolServer(engine, endpoint="tcp://127.0.0.1:*", pub_endpoint="tcp://127.0.0.1:*") as server:
        for _ in range(20):
            gone = _client(server.endpoint, zmq.DEALER)
            gone.send(json.dumps({"cmd": "load", "deck": 0, "track": TRACK}).encode())
            gone.close()                          # before the (slow) load is answered
        client = _client(server.endpoint)
        assert _ask(client, {"id": 1, "request": "state"})["id"] == 1
        client.close()


def test_pub_stream_sends_state_and_beats(track):
    engine = _playing_engine(track)
    with ProtocolServer(engine, endpoint="tcp://127.0.0.1:*", pub_endpoint="tcp://127.0.0.1:*",
                        state_hz=50.0) as server:
        sub = zmq.Context.instance().socket(zmq.SUB)
        sub.setsockopt(zmq.LINGER, 0)
        sub.setsockopt(zmq.RCVTIMEO, 5000)
        sub.setsockopt(zmq.SUBSCRIBE, b"")
        sub.connect(server.pub_endpoint)
        time.sleep(0.2)                          # let the subscription reach the publisher
        topics: dict = {}
        deadline = time.monotonic() + 10.0
        while time.monotonic() < deadline and not ("beat" in topics and len(topics.get("state", [])) >= 3):
            engine.render(SR // 10)              # 4 beats a second at 124 BPM
            try:
                while True:
                    topic, body = sub.recv_multipart(zmq.NOBLOCK)
                    topics.setdefault(topic.decode(), []).append(json.loads(body))
            except zmq.Again:
                time.sleep(0.02)
        sub.close()
    assert len(topics["state"]) >= 3 and topics["state"][-1]["decks"][0]["playing"]
    beats = [m["beat"] for m in topics["beat"]]
    assert beats == sorted(beats) and beats[-1] >= 1


def test_only_loopback_is_served():
    with pytest.raises(ValueError, match="only loopback"):
        ProtocolServer(Engine(n_decks=1), endpoint="tcp://0.0.0.0:*", pub_endpoint="tcp://127.0.0.1:*")


def test_msgpack_requests_get_msgpack_replies(track):
    import msgpack

    engine = Engine(n_decks=2)
    with ProtocolServer(engine, endpoint="tcp://127.0.0.1:*", pub_endpoint="tcp://127.0.0.1:*") as server:
        client = _client(server.endpoint)
        client.send(msgpack.packb({"v": 1, "id": 5, "cmd": "set", "deck": 0, "param": "eq_low_db", "value": -6.0}))
        reply = msgpack.unpackb(client.recv())
        assert reply == {"ok": True, "id": 5, "v": 1} or (reply["ok"] and reply["id"] == 5)
        engine.render(256)
        assert engine.decks[0].params["eq_low_db"] == -6.0
        client.send(b"\x82\xa1v")                 # a map of two entries, cut short
        reply = msgpack.unpackb(client.recv())
        assert reply["ok"] is False and reply["error"].startswith("not msgpack")
        client.close()


def test_engine_client_posts_requests_and_follows_state(track):
    from controllers.client import EngineClient, EngineClientError

    engine = _playing_engine(track)
    with ProtocolServer(engine, endpoint="tcp://127.0.0.1:*", pub_endpoint="tcp://127.0.0.1:*",
                        state_hz=50.0) as server, EngineClient(server.endpoint, server.pub_endpoint) as client:
        assert client.request({"cmd": "set", "deck": 0, "param": "volume", "value": 0.5})["ok"]
        client.post({"cmd": "set", "deck": 0, "param": "volume", "value": 7.0})     # out of range
        client.post({"cmd": "set", "deck": 0, "param": "gain_db", "value": -3.0})
        beats: list = []
        deadline = time.monotonic() + 10.0
        while time.monotonic() < deadline and not (beats and client.errors and client.state):
            engine.render(SR // 10)
            beats += client.poll(0.02)
        assert beats and beats[-1]["beat"] >= 1
        assert client.state["decks"][0]["params"]["gain_db"] == -3.0
        assert client.state["decks"][0]["params"]["volume"] == 0.5
        assert "volume" in client.errors[0]["error"]
    with EngineClient("tcp://127.0.0.1:1", None, timeout_s=0.2) as nobody:
        with pytest.raises(EngineClientError, match="no reply"):
            nobody.request({"request": "state"})


def test_curve_serves_other_interfaces_to_known_keys_only(tmp_path, track):
    from controllers.client import EngineClient, EngineClientError
    from controllers.keys import make_keys

    made = make_keys(tmp_path / "keys", ["tui"])
    engine = _playing_engine(track)
    with ProtocolServer(engine, endpoint="tcp://0.0.0.0:*", pub_endpoint="tcp://0.0.0.0:*",
                        curve_dir=tmp_path / "keys", state_hz=50.0) as server:
        port = server.endpoint.rsplit(":", 1)[1]
        pub_port = server.pub_endpoint.rsplit(":", 1)[1]
        address, pub_address = f"tcp://127.0.0.1:{port}", f"tcp://127.0.0.1:{pub_port}"
        with EngineClient(address, pub_address, server_key=made["server_key"],
                          client_cert=made["clients"]["tui"]) as allowed:
            reply = allowed.request({"cmd": "set", "deck": 0, "param": "eq_mid_db", "value": -4.0})
            assert reply["ok"]
            deadline = time.monotonic() + 10.0
            while time.monotonic() < deadline and allowed.state is None:
                engine.render(SR // 20)
                allowed.poll(0.02)
            assert allowed.state is not None
        # A stranger's key, and a plain (unencrypted) client, get nothing at all.
        with EngineClient(address, None, server_key=made["server_key"], timeout_s=1.0) as stranger:
            with pytest.raises(EngineClientError):
                stranger.request({"cmd": "set", "deck": 0, "param": "eq_mid_db", "value": -80.0})
        with EngineClient(address, None, timeout_s=1.0) as plain:
            with pytest.raises(EngineClientError):
                plain.request({"cmd": "set", "deck": 0, "param": "eq_mid_db", "value": -80.0})
        engine.render(256)
        assert engine.decks[0].params["eq_mid_db"] == -4.0
    # Keys are kept: a second client joins without replacing the server's.
    again = make_keys(tmp_path / "keys", ["midi"])
    assert open(again["server_secret"]).read() == open(made["server_secret"]).read()
    assert sorted(p.name for p in (tmp_path / "keys" / "clients").iterdir()) == ["midi.key", "tui.key"]
