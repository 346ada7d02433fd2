"""``ate automix``: a continuous mix of a crate, rendered to a file or played live (docs/automix.md)."""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

__all__ = ["register_cli", "parse_duration", "describe_render"]


def parse_duration(text: str) -> float:
    """Seconds from ``"90"``, ``"90s"``, ``"45m"``, ``"1h30m"`` or ``"1:30:00"``; ValueError otherwise."""
    text = str(text).strip().lower()
    if re.fullmatch(r"\d+(\.\d+)?", text):
        return float(text)
    if re.fullmatch(r"\d+(:\d{1,2}){1,2}", text):
        seconds = 0.0
        for part in text.split(":"):
            seconds = 60.0 * seconds + float(part)
        return seconds
    m = re.fullmatch(r"(?:(\d+(?:\.\d+)?)h)?(?:(\d+(?:\.\d+)?)m)?(?:(\d+(?:\.\d+)?)s)?", text)
    if not text or not m or not any(m.groups()):
        raise ValueError(f"not a duration: {text!r} (e.g. 90s, 45m, 1h30m, 1:30:00)")
    h, mi, s = (float(g) if g else 0.0 for g in m.groups())
    return 3600.0 * h + 60.0 * mi + s


def _duration_arg(text: str) -> float:
    try:
        return parse_duration(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def register_cli(sub) -> None:
    p = sub.add_parser("automix", help="a continuous mix of a crate: rendered to a file, or live on the engine")
    p.add_argument("crate", metavar="CRATE", help="a prepared crate (ate prep CRATE)")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--render", metavar="OUT", help="render to OUT (.wav float or .flac 24-bit), with OUT.cue "
                                                      "and OUT.json (every transition)")
    mode.add_argument("--live", action="store_true", help="play on the sound card with the terminal UI "
                                                          "(A in the UI: take over)")
    mode.add_argument("--connect", metavar="ENDPOINT", help="drive an engine that is already running (ate engine)")
    mode.add_argument("--plan", action="store_true", help="print the route and the planned transitions only")
    p.add_argument("--duration", type=_duration_arg, default=None, metavar="TIME",
                   help="how long (90m, 1h30m, 5400); the route repeats if the crate is shorter. Default: every "
                        "track once")
    p.add_argument("--energy", choices=("steady", "build", "peak"), default="steady",
                   help="energy curve of the route (default steady)")
    p.add_argument("--tempo", choices=("drift", "meet", "steady"), default="drift",
                   help="tempo path: drift to each track's tempo (default), meet halfway, or steady")
    p.add_argument("--first", metavar="TRACK", help="start with this track (title, path or hash prefix)")
    p.add_argument("--tracks", metavar="T1,T2,...", help="only these tracks (the order is planned)")
    p.add_argument("--order", metavar="T1,T2,...", help="exactly these tracks in this order")
    p.add_argument("--transition", metavar="NAME", help="one preset for every transition (see presets/transitions)")
    p.add_argument("--block-frames", type=int, default=512, metavar="N", help="engine block (render: 512)")
    p.add_argument("--no-auto-eq", dest="auto_eq", action="store_false",
                   help="leave the incoming deck's EQ flat (default: matched to the outgoing track's tonal balance "
                        "during each transition, from the prep step tonal)")
    p.add_argument("--stretcher", choices=("engine", "rubberband"), default="engine",
                   help="with --render: what time-stretches the decks: the realtime keylock (default), or Rubber "
                        "Band R3 for a high-quality render (about 10x the CPU time; the same plan and points)")
    p.add_argument("--pub", default=None, help="with --connect: the engine's state stream")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.set_defaults(func=_cmd_automix)


def _resolve(crate_dir: str, tracks: list, spec: str | None) -> list:
    """Tracks named in a comma-separated list (title, path or hash prefix), in that order."""
    if not spec:
        return []
    from prep.crate import Crate, TrackNotFound, default_db_path

    by_hash = {t.content_hash: t for t in tracks}
    out = []
    with Crate(default_db_path(Path(crate_dir)), readonly=True, root=crate_dir) as crate:
        for query in [q.strip() for q in spec.split(",") if q.strip()]:
            try:
                row = crate.find_track(query)
            except TrackNotFound as err:
                raise ValueError(str(err)) from None
            if row["content_hash"] not in by_hash:
                raise ValueError(f"{crate_dir}: {row['title']!r} cannot be mixed (see the notes above)")
            out.append(by_hash[row["content_hash"]])
    return out


def _cmd_automix(args: argparse.Namespace) -> int:
    from controllers.automix import order_tracks
    from controllers.mixsession import load_crate_tracks
    from engine.transitions import TransitionError, load_library
    from prep.crate import CrateError

    try:
        library = load_library()
        if args.transition and args.transition not in library:
            raise ValueError(f"unknown transition {args.transition!r}; known: {', '.join(sorted(library))}")
        tracks, notes = load_crate_tracks(args.crate)
        for note in notes:
            print(f"automix: {note}", file=sys.stderr)
        fixed = _resolve(args.crate, tracks, args.order) or None
        subset = _resolve(args.crate, tracks, args.tracks) or tracks
        first = (_resolve(args.crate, tracks, args.first) or [None])[0]
        if first is not None and first not in subset:
            subset = [first] + subset
        order = order_tracks(subset, args.energy, first=first, fixed=fixed)
        if not order:
            raise ValueError(f"{args.crate}: no prepared track to mix (run ate prep {args.crate})")
    except (CrateError, TransitionError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if args.stretcher != "engine" and not args.render:
        print(f"error: --stretcher {args.stretcher} is for --render (it cannot keep up live)", file=sys.stderr)
        return 2
    if args.plan:
        return _print_plan(order, library, args)
    if args.render:
        return _render(order, library, args)
    return _live(order, library, args)


def _print_plan(order, library, args) -> int:
    from controllers.automix import plan_transition

    plans = []
    master = order[0].bpm
    for a, b in zip(order, order[1:]):
        plan = plan_transition(a, b, library, after_beat=a.mix_in_beat, master_bpm=master, tempo=args.tempo,
                               preset=args.transition)
        plans.append(plan.to_dict() if plan else {"out": a.title, "in": b.title, "error": "no room"})
        master = plan.end_bpm if plan else b.bpm
    if args.json:
        print(json.dumps({"order": [t.title for t in order], "transitions": plans}))
        return 0
    for i, t in enumerate(order, 1):
        print(f"{i:3d}. {t.title:<32} {t.bpm:7.2f} BPM  {t.camelot:>3}  energy {t.energy:.2f}")
    for p in plans:
        if "error" in p:
            print(f"  {p['out']} -> {p['in']}: {p['error']}")
            continue
        why = "; ".join(p["reasons"]) or "keys and tempo mix"
        print(f"  {p['out']} -> {p['in']}: {p['preset']} ({p['bars']} bars), beat {p['out_beat']} -> "
              f"{p['in_beat']}, key {p['out_key']}->{p['in_key_played']}: {why}")
    return 0


def _render(order, library, args) -> int:
    from controllers.mixsession import render_mix

    try:
        summary = render_mix(order, library, args.crate, args.render, duration_s=args.duration, tempo=args.tempo,
                             transition=args.transition, energy=args.energy, block_frames=args.block_frames,
                             stretcher=args.stretcher, auto_eq=args.auto_eq)
    except OSError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(summary))
    else:
        print(describe_render(summary))
    return 130 if summary["stopped_by"] == "interrupted" else 0


def describe_render(summary: dict) -> str:
    """Two or more lines for people about a finished render (its notes last)."""
    lines = [f"{summary['output']}: {len(summary['tracks'])} tracks, {len(summary['transitions'])} transitions, "
             f"{summary['seconds'] / 60:.1f} min in {summary['wall_s']:.0f} s ({summary['realtime_factor']}× "
             f"realtime); cue sheet {Path(summary['cue']).name}, report {Path(summary['report']).name}"]
    lines += [f"  note: {note}" for note in summary["notes"]]
    return "\n".join(lines)


def _live(order, library, args) -> int:
    import threading

    from controllers import DEFAULT_ENDPOINT, DEFAULT_PUB_ENDPOINT
    from controllers.client import EngineClient, EngineClientError
    from controllers.mixsession import LivePort, MixSession

    stop = threading.Event()
    session = MixSession(order, library, args.crate, tempo=args.tempo, duration_s=args.duration,
                         transition=args.transition, energy=args.energy, auto_eq=args.auto_eq)
    if args.connect:
        client = EngineClient(args.connect, args.pub)
        try:
            report = session.run(LivePort(client, stop=stop.is_set))
        except EngineClientError as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
        except KeyboardInterrupt:
            report = session.report
        finally:
            client.close()
        print(json.dumps(report.to_dict()) if args.json else f"automix: {len(report.tracks)} tracks played; "
              f"{report.stopped_by or 'done'}")
        return 0
    from engine.process import EngineProcess, EngineProcessError
    from tui.app import run_tui

    try:
        proc = EngineProcess(n_decks=4, endpoint=DEFAULT_ENDPOINT, pub_endpoint=DEFAULT_PUB_ENDPOINT)
    except (EngineProcessError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    result: dict = {}

    def drive() -> None:
        client = EngineClient(proc.endpoint, proc.pub_endpoint)
        try:
            result["report"] = session.run(LivePort(client, stop=stop.is_set))
        except EngineClientError as err:
            result["error"] = str(err)
        finally:
            client.close()

    thread = threading.Thread(target=drive, name="ate-automix", daemon=True)
    thread.start()
    ui = EngineClient(proc.endpoint, proc.pub_endpoint)
    try:
        run_tui(ui, args.crate, 4)
    finally:
        stop.set()
        thread.join(timeout=5.0)
        ui.close()
        proc.close()
    if "error" in result:
        print(f"error: {result['error']}", file=sys.stderr)
        return 2
    return 0
