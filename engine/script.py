"""Offline rendering of timed command scripts.

A script is a JSON or TOML file (chosen by extension) that lists engine
commands, each with its time, plus a few render settings; docs/scripts.md
describes the format with a full example. :func:`load_script` reads and
validates it without building an engine (every command goes through
:func:`engine.commands.parse_command`, so a typo is reported before any track
is generated); :func:`render_script` builds an :class:`engine.core.Engine`,
sends every command up front (timed commands wait in the engine's schedule)
and calls :meth:`engine.core.Engine.process` block by block, exactly as a
live audio callback would: with the same block size a script renders to the
same samples as live playback of the same commands, and two renders of one
script are identical.

Times in a script are the engine's: ``{"frame": N}``, ``{"seconds": T}`` or
``{"beat": B}`` (master beat). ``at`` is required for every command, because
"now" has no meaning in a file. When ``seconds`` is not given, the length is
the time of the last command (and of the end of its ramp) plus
``tail_seconds``; master beats are turned into seconds at an estimated
master tempo (see :func:`estimate_master_bpm`), so give ``seconds``
explicitly where the exact length matters.

Errors are :class:`ScriptError` with one line that names the file, the
command (``commands[i]``, 0-based) and the reason.
"""

from __future__ import annotations

import json
import math
import re
import time
import tomllib
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Callable

import numpy as np

from engine.commands import GLOBAL_PARAMS, CommandError, parse_command

__all__ = ["Script", "ScriptError", "load_script", "render_script", "write_render", "estimate_master_bpm",
           "default_script_path", "check_output_path", "DEFAULT_TAIL_S"]

DEFAULT_TAIL_S = 8.0
"""Audio rendered after the last command (and the end of its ramp) when ``seconds`` is not given, seconds."""
_SAMPLE_RATES = (44100,)
_TOP_KEYS = {"sample_rate", "block_frames", "channels", "decks", "seconds", "tail_seconds", "commands",
             "title", "description"}
_MAX_SECONDS = 4 * 3600.0


class ScriptError(Exception):
    """A script is malformed or a command was rejected: one line naming the file, the command and the reason."""


@dataclass
class Script:
    """A validated script.

    Attributes
    ----------
    path : str
        The file it came from (for messages).
    commands : list of dict
        Engine command dicts as :meth:`engine.core.Engine.send` takes them, each
        with ``at``; relative ``track`` / ``crate`` paths already resolved.
    sample_rate : int
        Output sample rate, Hz (44100).
    block_frames : int
        Frames per :meth:`engine.core.Engine.process` call (256).
    channels : int
        2 (master) or 4 (master + headphone cue).
    decks : int
        Number of decks of the engine (4).
    seconds : float or None
        Render length, seconds; None: the last command's time plus ``tail_seconds``.
    tail_seconds : float
        See ``seconds`` (:data:`DEFAULT_TAIL_S`).
    title : str
        Optional label.
    """

    path: str
    commands: list[dict] = field(default_factory=list)
    sample_rate: int = 44100
    block_frames: int = 256
    channels: int = 2
    decks: int = 4
    seconds: float | None = None
    tail_seconds: float = DEFAULT_TAIL_S
    title: str = ""

    def render_length_s(self, master_bpm: float | None = None) -> float:
        """Render length, seconds: ``seconds``, or the end of the last command plus ``tail_seconds``.

        Parameters
        ----------
        master_bpm : float, optional
            Master tempo used to turn beat times into seconds (default:
            :func:`estimate_master_bpm`).
        """
        if self.seconds is not None:
            return self.seconds
        bpm = master_bpm or estimate_master_bpm(self)
        sr = self.sample_rate
        end_s = 0.0
        for msg in self.commands:
            cmd = parse_command(msg, self.decks, sr)
            at_s = cmd.at_value * 60.0 / bpm if cmd.at_kind == "beat" else cmd.at_value / sr
            ramp_s = cmd.ramp_value * 60.0 / bpm if cmd.ramp_kind == "beats" else cmd.ramp_value / sr
            end_s = max(end_s, at_s + ramp_s)
        return end_s + self.tail_seconds


def default_script_path() -> Path:
    """The built-in demo script (``engine/scripts/demo_mix.toml``), what ``ate render`` plays without a SCRIPT."""
    return Path(str(resources.files("engine") / "scripts" / "demo_mix.toml"))


def estimate_master_bpm(script: Script, track_bpms: dict[int, float] | None = None) -> float:
    """The master tempo a script will (most likely) run at, BPM.

    The first engine-wide ``set master_bpm``; else the tempo of the track
    loaded on the first deck that is synced and played (it becomes the sync
    leader); else 120, the engine's internal clock. Pitch moves are ignored.

    Parameters
    ----------
    script : Script
    track_bpms : dict, optional
        Deck -> BPM of its track where known (from the engine's load replies);
        otherwise ``bpm=`` of a ``synth:`` spec, else 120.
    """
    def at_key(msg: dict) -> tuple:
        # Order by time within each kind; frames and beats are not comparable without a tempo, so seconds
        # and frames go first (scripts start their decks on a fixed time far more often than on a beat).
        kind, value = next(iter(msg["at"].items()))
        if kind == "seconds":
            return (0, value * script.sample_rate)
        return (0, value) if kind.startswith("frame") else (1, value)

    ordered = sorted(script.commands, key=at_key)
    for msg in ordered:
        if msg.get("cmd") == "set" and "deck" not in msg and msg.get("param") == "master_bpm":
            return float(msg["value"])
    synced: set[int] = set()
    loaded: dict[int, str] = {}
    for msg in ordered:
        name, deck = msg.get("cmd"), msg.get("deck")
        if name == "load":
            loaded[deck] = msg["track"]
        elif name == "sync":
            (synced.add if msg["on"] else synced.discard)(deck)
        elif name in ("play", "play_pause") and deck in synced:
            if track_bpms and deck in track_bpms:
                return float(track_bpms[deck])
            spec = loaded.get(deck, "")
            if spec.startswith("synth:"):
                for item in spec[6:].split(","):
                    key, _, raw = item.strip().partition("=")
                    if key == "bpm":
                        try:
                            return float(raw)
                        except ValueError:
                            break
                return 124.0  # engine.track.track_from_synth's default tempo
            break
    return GLOBAL_PARAMS["master_bpm"][2]


def _fail(path: str, where: str | None, reason: str) -> ScriptError:
    reason = " ".join(str(reason).split())  # one line, whatever the parser said
    return ScriptError(f"{path}: {where}: {reason}" if where else f"{path}: {reason}")


def _read(path: Path) -> dict:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise _fail(str(path), None, "no such file") from None
    except (OSError, UnicodeDecodeError) as err:
        raise _fail(str(path), None, f"cannot read: {err}") from None
    suffix = path.suffix.lower()
    if suffix == ".toml":
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as err:
            # tomllib puts "(at line L, column C)" in its message; move the line to the front like JSON's.
            found = re.search(r"\(at line (\d+), column (\d+)\)", str(err))
            if found is None:
                raise _fail(str(path), None, f"TOML syntax error: {err}") from None
            reason = str(err)[:found.start()].strip()
            raise _fail(str(path), f"line {found[1]}", f"TOML syntax error: {reason} (column {found[2]})") from None
    elif suffix == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as err:
            raise _fail(str(path), f"line {err.lineno}", f"JSON syntax error: {err.msg} (column {err.colno})") from None
    else:
        raise _fail(str(path), None, f"unknown script type {suffix or '(no extension)'!r}; use .toml or .json")
    if not isinstance(data, dict):
        raise _fail(str(path), None, f"the top level must be a table/object, got {type(data).__name__}")
    return data


def _int_setting(data: dict, key: str, default: int, allowed, path: str) -> int:
    value = data.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or value not in allowed:
        shown = f"{allowed[0]}..{allowed[-1]}" if isinstance(allowed, range) else " or ".join(map(str, allowed))
        raise _fail(path, key, f"must be {shown}, got {value!r}")
    return value


def _float_setting(data: dict, key: str, low: float, high: float, path: str) -> float | None:
    if key not in data:
        return None
    value = data[key]
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= high:
        raise _fail(path, key, f"must be a number of seconds within {low:g}..{high:g}, got {value!r}")
    return float(value)


def _resolve(msg: dict, folder: Path) -> dict:
    """Relative ``track`` / ``crate`` paths of a load, made relative to the script's folder."""
    if msg.get("cmd") != "load":
        return msg
    msg = dict(msg)
    crate = msg.get("crate")
    if isinstance(crate, str) and crate:
        p = Path(crate).expanduser()
        msg["crate"] = crate = str(p if p.is_absolute() else folder / p)
    track = msg.get("track")
    # With a crate, "track" is a query (path, title or hash prefix) inside the crate, not a file of ours.
    if isinstance(track, str) and track and not track.startswith("synth:") and not crate:
        p = Path(track).expanduser()
        msg["track"] = str(p if p.is_absolute() else folder / p)
    return msg


def load_script(path: str | Path) -> Script:
    """Read and validate a script (JSON or TOML, by extension).

    Parameters
    ----------
    path : str or Path
        The script file. Relative track and crate paths inside it are resolved
        against its folder.

    Returns
    -------
    Script

    Raises
    ------
    ScriptError
        One line naming the file, the setting or command (``commands[i]``,
        0-based) and the reason; syntax errors name the line.
    """
    path = Path(path)
    where = str(path)
    data = _read(path)
    unknown = sorted(set(data) - _TOP_KEYS)
    if unknown:
        raise _fail(where, None, f"unknown setting(s) {', '.join(unknown)}; known: {', '.join(sorted(_TOP_KEYS))}")
    sample_rate = _int_setting(data, "sample_rate", 44100, _SAMPLE_RATES, where)
    block_frames = _int_setting(data, "block_frames", 256, range(1, 8193), where)
    channels = _int_setting(data, "channels", 2, (2, 4), where)
    decks = _int_setting(data, "decks", 4, range(1, 17), where)
    seconds = _float_setting(data, "seconds", 0.01, _MAX_SECONDS, where)
    tail = _float_setting(data, "tail_seconds", 0.0, 3600.0, where)
    title = data.get("title", "")
    if not isinstance(title, str):
        raise _fail(where, "title", f"must be a string, got {title!r}")
    raw = data.get("commands")
    if not isinstance(raw, list) or not raw:
        raise _fail(where, "commands", "a script needs a non-empty list of commands ([[commands]] tables in TOML)")
    folder = path.resolve().parent
    commands = []
    for i, msg in enumerate(raw):
        label = f"commands[{i}]"
        if not isinstance(msg, dict):
            raise _fail(where, label, f"a command must be a table/object, got {type(msg).__name__}")
        if msg.get("at") is None:
            raise _fail(where, label, f"{msg.get('cmd', 'command')}: missing 'at' (a script command needs a time: "
                                      "{frame = N}, {seconds = T} or {beat = B})")
        try:
            parse_command(msg, decks, sample_rate)
        except CommandError as err:
            raise _fail(where, label, str(err)) from None
        msg = _resolve(msg, folder)
        if msg["cmd"] == "load":
            crate, track = msg.get("crate"), msg["track"]
            if crate and not Path(crate).is_dir():
                raise _fail(where, label, f"load: crate folder {crate} does not exist")
            if not crate and not track.startswith("synth:") and not Path(track).is_file():
                raise _fail(where, label, f"load: track file {track} does not exist")
        commands.append(msg)
    return Script(path=where, commands=commands, sample_rate=sample_rate, block_frames=block_frames,
                  channels=channels, decks=decks, seconds=seconds,
                  tail_seconds=DEFAULT_TAIL_S if tail is None else tail, title=title)


def render_script(script: Script, progress: Callable[[float], None] | None = None,
                  seconds: float | None = None) -> tuple[np.ndarray, dict]:
    """Render a script offline.

    Builds an engine, sends every command (tracks are loaded here), then calls
    :meth:`engine.core.Engine.process` once per ``block_frames`` like a live
    audio callback.

    Parameters
    ----------
    script : Script
    progress : callable, optional
        Called with the fraction done (0..1) as rendering goes (about 200 times).
    seconds : float, optional
        Render length, seconds; overrides the script's.

    Returns
    -------
    audio : np.ndarray
        float32 ``(frames, channels)``: master on channels 0-1 (and the
        headphone cue on 2-3 for a 4-channel script).
    summary : dict
        JSON-ready: ``seconds``, ``frames``, ``channels``, ``block_frames``,
        ``load_s`` and ``render_s`` (wall-clock, seconds), ``realtime_factor``
        (audio seconds per render second), ``peak_dbfs`` and ``true_peak_dbtp``
        and ``integrated_lufs`` (master), ``limiter_max_reduction_db``
        (largest master limiter gain reduction seen at a block end, dB),
        ``commands`` (in the script) and ``commands_applied`` (reached before
        the end), ``master_bpm`` (at the end).

    Raises
    ------
    ScriptError
        A command the engine rejects (e.g. a track that fails to load), with
        the engine's reason.
    """
    from engine.core import Engine
    from prep.loudness import integrated_loudness_lufs, sample_peak_dbfs, true_peak_dbtp

    sr = script.sample_rate
    block = script.block_frames
    engine = Engine(n_decks=script.decks, sample_rate=sr, channels=script.channels, max_block_frames=block)
    t0 = time.perf_counter()
    track_bpms: dict[int, float] = {}
    for i, msg in enumerate(script.commands):
        reply = engine.send(msg)
        if not reply["ok"]:
            raise _fail(script.path, f"commands[{i}]", reply["error"])
        if "track" in reply:
            track_bpms[msg["deck"]] = reply["track"]["bpm"]
    load_s = time.perf_counter() - t0
    if seconds is None:
        seconds = script.render_length_s(estimate_master_bpm(script, track_bpms))
    if not 0.0 < seconds <= _MAX_SECONDS:
        raise _fail(script.path, "seconds", f"render length must be within 0..{_MAX_SECONDS:g} s, got {seconds!r}")
    n_frames = int(round(seconds * sr))
    out = np.zeros((n_frames, script.channels), np.float32)
    n_blocks = -(-n_frames // block)
    report_every = max(1, n_blocks // 200)   # a progress bar redraw costs more than a block
    min_gain = 1.0
    t1 = time.perf_counter()
    for b, start in enumerate(range(0, n_frames, block)):
        engine.process(out[start:start + block])
        min_gain = min(min_gain, engine.limiter.gain)
        engine.collect_garbage()   # an empty deque check when no load replaced a track
        if progress is not None and b % report_every == 0:
            progress(start / n_frames)
    render_s = time.perf_counter() - t1
    if progress is not None:
        progress(1.0)
    master = out[:, :2]
    summary = {
        "script": script.path,
        "seconds": n_frames / sr,
        "frames": n_frames,
        "sample_rate": sr,
        "channels": script.channels,
        "block_frames": block,
        "load_s": round(load_s, 3),
        "render_s": round(render_s, 3),
        "realtime_factor": round(n_frames / sr / max(render_s, 1e-9), 2),
        "peak_dbfs": round(sample_peak_dbfs(master), 2),
        "true_peak_dbtp": round(true_peak_dbtp(master, sr), 2),
        "integrated_lufs": round(integrated_loudness_lufs(master, sr), 2),
        "limiter_max_reduction_db": round(max(0.0, -20.0 * math.log10(max(min_gain, 1e-9))), 2),
        "commands": len(script.commands),
        "commands_applied": engine.commands_applied,
        "master_bpm": round(engine.state()["master_bpm"], 3),
    }
    return out, summary


def check_output_path(path: str | Path, sample_format: str = "float32") -> str:
    """Check that :func:`write_render` can write ``path`` (before spending time on a render).

    Returns
    -------
    str
        The soundfile subtype it will use ("FLOAT" or "PCM_24").

    Raises
    ------
    ScriptError
        Unknown extension or sample format, or a folder that does not exist.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if sample_format not in ("float32", "pcm24"):
        raise _fail(str(path), None, f"sample format must be float32 or pcm24, got {sample_format!r}")
    if suffix == ".wav":
        subtype = "FLOAT" if sample_format == "float32" else "PCM_24"
    elif suffix == ".flac":
        subtype = "PCM_24"
    else:
        raise _fail(str(path), None, f"unknown output type {suffix or '(no extension)'!r}; use .wav or .flac")
    if not path.parent.is_dir():
        raise _fail(str(path), None, f"folder {path.parent} does not exist")
    return subtype


def write_render(audio: np.ndarray, path: str | Path, sample_format: str = "float32",
                 sample_rate: int = 44100) -> None:
    """Write rendered audio to a WAV or FLAC file (by extension).

    Parameters
    ----------
    audio : np.ndarray
        float ``(frames, channels)``, full scale = 1.0.
    path : str or Path
        ``.wav`` or ``.flac``.
    sample_format : str
        WAV: "float32" (default, lossless for the engine's output) or "pcm24".
        FLAC is always 24-bit PCM.
    sample_rate : int
        Hz.

    Raises
    ------
    ScriptError
        Unknown extension or format, or the file cannot be written.
    """
    from prep.audio import write_audio

    path = Path(path)
    subtype = check_output_path(path, sample_format)
    try:
        write_audio(path, np.asarray(audio, dtype=np.float32), sample_rate, subtype=subtype)
    except Exception as err:  # soundfile raises several types (LibsndfileError, RuntimeError, TypeError)
        raise _fail(str(path), None, f"cannot write: {err}") from None
