"""``ate midi learn``: build a preset by touching the controller's controls one after another.

For each control in a list (per deck: play, cue, sync, faders, knobs, jog, pads;
then crossfader and shift), the user is asked to move or press it; the first
message that arrives names it (status, channel, number), and what follows in
the next :data:`SETTLE_S` tells the rest: a CC at ``number + 0x20`` makes it a
14-bit control with that LSB, and a jog's values tell its encoding (1 / 127:
two's complement; 63 / 65: offset 64; 1 / 65: sign and magnitude). Enter skips a
control, ``q`` finishes early. The preset is written as TOML (with the
controller's port name) and read back through :func:`controllers.midi.parse_preset`,
so what ``learn`` writes always loads.
"""

from __future__ import annotations

import queue
import sys
import threading
import time
from pathlib import Path
from typing import IO

from controllers.midi import ABSOLUTE_ACTIONS, RELATIVE_ACTIONS, STATUS_KINDS, InputPump, open_port, parse_preset

__all__ = ["learn", "default_controls", "guess_encoding", "preset_toml", "SETTLE_S"]

SETTLE_S = 0.4
"""How long after a control's first message its other messages are gathered (and then ignored), seconds."""


def default_controls(n_decks: int = 2) -> list[dict]:
    """The controls ``learn`` asks for, in order: ``{"name", "action", "deck"?, ...arguments}``."""
    controls = []
    for d in range(1, n_decks + 1):
        p = f"deck{d}."
        controls += [{"name": p + "play", "action": "play_pause", "deck": d},
                     {"name": p + "cue", "action": "cue", "deck": d},
                     {"name": p + "sync", "action": "sync", "deck": d},
                     {"name": p + "pfl", "action": "pfl", "deck": d},
                     {"name": p + "volume", "action": "volume", "deck": d},
                     {"name": p + "eq_high", "action": "eq_high", "deck": d},
                     {"name": p + "eq_mid", "action": "eq_mid", "deck": d},
                     {"name": p + "eq_low", "action": "eq_low", "deck": d},
                     {"name": p + "filter", "action": "filter", "deck": d},
                     {"name": p + "gain", "action": "gain", "deck": d},
                     {"name": p + "pitch", "action": "pitch", "deck": d},
                     {"name": p + "jog", "action": "jog", "deck": d},
                     {"name": p + "jog_touch", "action": "jog_touch", "deck": d},
                     {"name": p + "loop", "action": "loop", "deck": d, "beats": 4},
                     {"name": p + "load", "action": "load", "deck": d}]
        controls += [{"name": f"{p}hotcue{n}", "action": "hotcue", "deck": d, "n": n} for n in range(1, 5)]
    controls += [{"name": "crossfader", "action": "crossfader"}, {"name": "shift", "action": "shift"},
                 {"name": "browse", "action": "browse"}]
    return controls


def guess_encoding(values: list[int]) -> str:
    """A relative control's encoding from the values it sent while turned."""
    if any(60 <= v <= 68 for v in values) and not any(v in (1, 127) for v in values):
        return "offset64"
    if any(65 <= v <= 80 for v in values) and not any(v > 100 for v in values):
        return "sign_magnitude"
    return "twos_complement"


def _toml_value(v: object) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, str):
        return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(v, list):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    if isinstance(v, int):
        return hex(v) if v > 9 else str(v)
    return repr(v)


def preset_toml(name: str, port: str, inputs: list[dict], n_decks: int = 2) -> str:
    """The TOML text of a preset (see docs/midi.md)."""
    lines = ["# Made by `ate midi learn`.", "", "[controller]", f"name = {_toml_value(name)}",
             f"port = {_toml_value(port)}", f"decks = {_toml_value(list(range(n_decks)))}",
             f"sources = [{_toml_value('learned from the controller with ate midi learn')}]", ""]
    order = ("name", "status", "channel", "number", "lsb", "deck", "action", "n", "beats", "encoding")
    for m in inputs:
        lines.append("[[input]]")
        lines += [f"{k} = {_toml_value(m[k])}" for k in order if k in m]
        lines.append("")
    return "\n".join(lines)


def learn(port: str, out_path: str | Path, api: str | None = None, controls: list[dict] | None = None,
          answers: IO[str] | None = None, prompt: IO[str] | None = None, name: str | None = None,
          timeout_s: float = 60.0) -> dict:
    """Ask for each control, learn its messages, write the preset; returns ``{"path", "learned", "skipped"}``.

    Parameters
    ----------
    port : str
        Part of the controller's MIDI input port name.
    out_path : str or Path
        The preset file to write.
    api : str, optional
        ``"jack"`` or ``"alsa"``.
    controls : list of dict, optional
        What to ask for (default :func:`default_controls`).
    answers, prompt : file, optional
        Where Enter / ``q`` are read (stdin) and the prompts are written (stderr).
    name : str, optional
        The preset's controller name (default: the port's name).
    timeout_s : float
        Longest wait for one control before it is skipped, seconds.
    """
    answers = sys.stdin if answers is None else answers
    prompt = sys.stderr if prompt is None else prompt
    controls = default_controls() if controls is None else controls
    messages: queue.Queue = queue.Queue()
    keys: queue.Queue = queue.Queue()
    midi_in, full_name = open_port("input", port, api, "ate-midi-learn")
    pump = InputPump(midi_in, lambda message: messages.put((message, time.monotonic())))

    def read_keys() -> None:
        for line in answers:
            keys.put(line.strip().lower())
        keys.put("q")

    threading.Thread(target=read_keys, daemon=True).start()
    learned, skipped = [], []
    taken: set = set()
    try:
        for control in controls:
            kind = "move" if control["action"] in ABSOLUTE_ACTIONS or control["action"] in RELATIVE_ACTIONS else "press"
            _drain(messages)       # before asking: what comes after the prompt belongs to this control
            print(f"{kind} {control['name']}  (Enter: skip, q: finish)", file=prompt, flush=True)
            got = _wait(messages, keys, timeout_s)
            if got == "q":
                break
            if got is None:
                skipped.append(control["name"])
                continue
            first, t0 = got
            burst = [first] + _gather(messages, t0 + SETTLE_S)
            mapping = _mapping(control, burst)
            if mapping is None or (mapping["status"], mapping["channel"], mapping["number"]) in taken:
                why = "already mapped" if mapping is not None else "not a note, CC or pitch bend"
                print(f"  {control['name']}: skipped ({why})", file=prompt, flush=True)
                skipped.append(control["name"])
                continue
            taken.add((mapping["status"], mapping["channel"], mapping["number"]))
            if "lsb" in mapping:
                taken.add(("cc", mapping["channel"], mapping["lsb"]))
            learned.append(mapping)
            print(f"  {control['name']}: {mapping['status']} ch {mapping['channel']} 0x{mapping['number']:02X}"
                  + (f" (14-bit, LSB 0x{mapping['lsb']:02X})" if "lsb" in mapping else "")
                  + (f" ({mapping['encoding']})" if "encoding" in mapping else ""), file=prompt, flush=True)
    finally:
        pump.stop()
        midi_in.close_port()
        midi_in.delete()
    n_decks = max([m.get("deck", 1) for m in learned] + [2])
    text = preset_toml(name or full_name, port, learned, n_decks)
    parse_preset(text, str(out_path))        # what learn writes must load
    Path(out_path).write_text(text, encoding="utf-8")
    return {"path": str(out_path), "learned": [m["name"] for m in learned], "skipped": skipped}


def _drain(q: queue.Queue, quiet_s: float = 0.15, longest_s: float = 2.0) -> None:
    """Drop what is queued and wait until the controller has been quiet ``quiet_s`` (a knob still turning)."""
    deadline = time.monotonic() + longest_s
    while time.monotonic() < deadline:
        try:
            q.get(timeout=quiet_s)
        except queue.Empty:
            return


def _wait(messages: queue.Queue, keys: queue.Queue, timeout_s: float):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            key = keys.get_nowait()
            return "q" if key == "q" else None
        except queue.Empty:
            pass
        try:
            return messages.get(timeout=0.01)
        except queue.Empty:
            continue
    return None


def _gather(messages: queue.Queue, until: float) -> list[list[int]]:
    out = []
    while (left := until - time.monotonic()) > 0:
        try:
            out.append(messages.get(timeout=left)[0])
        except queue.Empty:
            break
    return out


def _mapping(control: dict, burst: list[list[int]]) -> dict | None:
    first = burst[0]
    kind = STATUS_KINDS.get(first[0] & 0xF0)
    if kind is None or len(first) < 2:
        return None
    channel = (first[0] & 0x0F) + 1
    m = {k: v for k, v in control.items()}
    m.update(status=kind, channel=channel, number=0 if kind == "pitchbend" else first[1])
    action = control["action"]
    if kind == "cc" and action in ABSOLUTE_ACTIONS:
        partners = {msg[1] for msg in burst[1:] if msg[0] == first[0]}
        if first[1] < 0x20 and first[1] + 0x20 in partners:
            m["lsb"] = first[1] + 0x20
        elif first[1] >= 0x20 and first[1] - 0x20 in partners:     # the LSB came first
            m["number"], m["lsb"] = first[1] - 0x20, first[1]
    if action in RELATIVE_ACTIONS:
        if kind == "pitchbend":
            return None
        m["encoding"] = guess_encoding([msg[2] for msg in burst if len(msg) > 2 and msg[:2] == first[:2]])
    return m
