"""The ``ate`` command line: one subcommand per job.

Each subcommand parses its arguments here and calls one function of the
package that owns the work; heavy imports happen inside the handlers so that
``ate --help`` stays instant.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

EXIT_OK = 0
EXIT_FAILURES = 1  # the job ran, but some inputs failed
EXIT_USAGE = 2


def _cmd_analyze(args: argparse.Namespace) -> int:
    from prep.analyze import analyze_file
    from prep.audio import AudioError
    from prep.report import format_analysis

    status = EXIT_OK
    for path in args.paths:
        try:
            result = analyze_file(path).to_dict()
        except AudioError as err:
            print(f"error: {err}", file=sys.stderr)
            status = EXIT_FAILURES
            continue
        if args.json:
            print(json.dumps(result), flush=True)
        else:
            print(format_analysis(result), flush=True)
    return status


def _cmd_prep(args: argparse.Namespace) -> int:
    from prep.crate import CrateError
    from prep.pipeline import prep_crate

    try:
        report = prep_crate(Path(args.crate), db_path=args.db, workers=args.workers, progress=not args.no_progress)
    except (NotADirectoryError, CrateError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_USAGE
    report.print_summary()
    if report.interrupted:
        return 130  # what a shell reports for Ctrl-C
    return EXIT_FAILURES if report.failed else EXIT_OK


def _cmd_crate(args: argparse.Namespace) -> int:
    from prep.crate import Crate, default_db_path
    from prep.report import format_track_table

    db = Path(args.db) if args.db else default_db_path(Path(args.crate))
    if not db.exists():
        print(f"error: {db}: no crate database (run `ate prep {args.crate}` first)", file=sys.stderr)
        return EXIT_USAGE
    with Crate(db, readonly=True) as crate:
        rows = crate.list_tracks(sort=args.sort, descending=args.reverse)
    if args.json:
        for row in rows:
            print(json.dumps(row))
    else:
        print(format_track_table(rows))
    return EXIT_OK


def _cmd_demo(args: argparse.Namespace) -> int:
    from prep.demo import run_demo

    return run_demo(Path(args.folder), workers=args.workers)


def _cmd_bench(args: argparse.Namespace) -> int:
    from ate.bench import run_benchmark

    result = run_benchmark(args.what, quick=args.quick)
    if args.json:
        print(json.dumps(result))
    else:
        print(json.dumps(result, indent=2))
    return EXIT_OK


def build_parser() -> argparse.ArgumentParser:
    """The ``ate`` argument parser (exposed for tests and docs)."""
    parser = argparse.ArgumentParser(
        prog="ate",
        description="ATE, the AutoMix & Transcription Engine: prepare a crate of music, then play and mix it.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = sub.add_parser("demo", help="generate a demo crate, prep it and show what was found")
    p.add_argument("folder", nargs="?", default="demo-crate", help="where to write the demo crate (default: ./demo-crate)")
    p.add_argument("--workers", type=int, default=None, help="parallel workers (default: all cores)")
    p.set_defaults(func=_cmd_demo)

    p = sub.add_parser("analyze", help="analyse audio files: tempo, beats, downbeats, key, structure, loudness")
    p.add_argument("paths", nargs="+", metavar="PATH")
    p.add_argument("--json", action="store_true", help="one JSON object per line")
    p.set_defaults(func=_cmd_analyze)

    p = sub.add_parser("prep", help="scan a folder of music into the crate database (resumable)")
    p.add_argument("crate", metavar="CRATE", help="folder of music, scanned recursively")
    p.add_argument("--db", default=None, help="crate database file (default: CRATE/.ate/crate.sqlite)")
    p.add_argument("--workers", type=int, default=None, help="parallel workers (default: all cores)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_prep)

    p = sub.add_parser("crate", help="show the tracks of a prepared crate")
    p.add_argument("crate", metavar="CRATE")
    p.add_argument("--db", default=None, help="crate database file (default: CRATE/.ate/crate.sqlite)")
    p.add_argument("--sort", default="title",
                   choices=["title", "bpm", "key", "camelot", "duration", "lufs", "added"],
                   help="sort column (default: title)")
    p.add_argument("-r", "--reverse", action="store_true", help="descending order")
    p.add_argument("--json", action="store_true", help="one JSON object per track")
    p.set_defaults(func=_cmd_crate)

    p = sub.add_parser("bench", help="measure quality and speed against peer tools (prints JSON)")
    p.add_argument("what", choices=["analysis"], help="what to measure")
    p.add_argument("--json", action="store_true", help="compact JSON on one line")
    p.add_argument("--quick", action="store_true", help="a smaller set, for a fast check")
    p.set_defaults(func=_cmd_bench)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``ate`` console script."""
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
