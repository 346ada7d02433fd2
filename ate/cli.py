"""The ``ate`` command line: one subcommand per job.

Each subcommand parses its arguments here and calls one function of the
package that owns the work; heavy imports happen inside the handlers so that
``ate --help`` stays instant.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from importlib import import_module
from pathlib import Path

from ate.bench import BENCHMARKS
from prep.progress import ProgressBar

EXIT_OK = 0
EXIT_FAILURES = 1  # the job ran, but some inputs failed
EXIT_USAGE = 2


def _cmd_analyze(args: argparse.Namespace) -> int:
    from prep.analyze import MIN_DURATION_S, analyze_audio
    from prep.audio import AudioError, load_audio
    from prep.report import format_analysis
    from prep.separate import SeparationError, separate_track

    try:
        choice = _separator_choice(args)
        separator = choice.build() if choice is not None else None
    except (SeparationError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_USAGE
    status = EXIT_OK
    for path in args.paths:
        try:
            samples = load_audio(path, min_duration_s=MIN_DURATION_S)
            stems = separate_track(samples, separator) if separator is not None else None
            result = analyze_audio(samples, path=str(path), stems=stems).to_dict()
        except (AudioError, SeparationError) as err:
            print(f"error: {err}", file=sys.stderr)
            status = EXIT_FAILURES
            continue
        if args.json:
            print(json.dumps(result), flush=True)
        else:
            print(format_analysis(result), flush=True)
    return status


def _separator_choice(args: argparse.Namespace):
    """The separator the separation options name, or None for ``--separator none``."""
    from prep.separate import choose_separator

    if args.separator == "none":
        return None
    return choose_separator(args.separator, model=args.model, model_dir=args.model_dir, device=args.device,
                            shifts=args.shifts, overlap=args.overlap, segment=args.segment)


def _cmd_prep(args: argparse.Namespace) -> int:
    from prep.crate import CrateError
    from prep.pipeline import prep_crate
    from prep.separate import SeparationError

    try:
        choice = _separator_choice(args)
        report = prep_crate(Path(args.crate), db_path=args.db, workers=args.workers, progress=not args.no_progress,
                            separator=choice, steps=_prep_steps(args))
    except (NotADirectoryError, CrateError, ValueError, SeparationError) as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_USAGE
    report.print_summary()
    if report.interrupted:
        return 130  # what a shell reports for Ctrl-C
    return EXIT_FAILURES if report.failed else EXIT_OK


def _prep_steps(args: argparse.Namespace) -> list[str]:
    """The prep steps to run: the default ones, plus ``--with``, minus ``--without`` (unknown names: ValueError)."""
    from prep.steps import get_step, steps

    for name in args.with_steps + args.without_steps:
        try:
            get_step(name)
        except KeyError as err:
            raise ValueError(err.args[0]) from None
    return [s.name for s in steps() if (s.default or s.name in args.with_steps) and s.name not in args.without_steps]


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


def _cmd_separate(args: argparse.Namespace) -> int:
    from prep.audio import SAMPLE_RATE, AudioError, load_audio
    from prep.separate import SeparationError, separate_track
    from prep.stems import export_ni_stems, export_stem_folder

    try:
        choice = _separator_choice(args) if args.separator != "none" else None
        if choice is None:
            raise ValueError("--separator none makes no stems")
        separator = choice.build()
    except (SeparationError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_USAGE
    out = Path(args.output)
    status = EXIT_OK
    for path in args.paths:
        target = out if len(args.paths) == 1 else out / Path(path).name.split(".")[0]
        try:
            samples = load_audio(path)
            with ProgressBar(f"separate {Path(path).name} ({choice.name})") as progress:
                stems = separate_track(samples, separator, fold=args.fold, progress=progress)
        except (AudioError, SeparationError) as err:
            print(f"error: {err}", file=sys.stderr)
            status = EXIT_FAILURES
            continue
        if args.format == "stem.mp4":
            target.mkdir(parents=True, exist_ok=True)
            written = export_ni_stems(target / f"{Path(path).name.split('.')[0]}.stem.mp4", stems, mix=samples,
                                      sample_rate=SAMPLE_RATE)
            print(f"{path}: {written}")
        else:
            export_stem_folder(target, stems, sample_rate=SAMPLE_RATE, fmt=args.format,
                               subtype="FLOAT" if args.format == "wav" else "PCM_24")
            print(f"{path}: {target}/{{drums,bass,vocals,other}}.{args.format} ({choice.name}, fold {args.fold})")
    return status


def _cmd_models(args: argparse.Namespace) -> int:
    from prep.separate import MODEL_DIR_ENV, SeparationError, list_models

    try:
        models = list_models(args.model_dir)
    except SeparationError as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_USAGE
    if args.json:
        print(json.dumps(models))
        return EXIT_OK
    for m in models:
        where = m.get("location") or "-"
        print(f"{m['name']:<16} {m['status']:<10} {m.get('kind') or '':<6} {where}")
    if not any(m["status"] == "available" for m in models):
        print(f"no demucs weights found: prep falls back to the DSP separator. Put the model files into a folder "
              f"and pass --model-dir or set {MODEL_DIR_ENV} (see docs/separation.md)")
    return EXIT_OK


def _open_track(crate_arg: str, db_arg: str | None, query: str):
    """``(crate, track row)`` for a track query, or an error message."""
    from prep.crate import Crate, TrackNotFound, default_db_path

    db = Path(db_arg) if db_arg else default_db_path(Path(crate_arg))
    if not db.exists():
        return None, f"{db}: no crate database (run `ate prep {crate_arg}` first)"
    crate = Crate(db)
    try:
        return crate, crate.find_track(query)
    except TrackNotFound as err:
        crate.close()
        return None, str(err)


def _cmd_stems(args: argparse.Namespace) -> int:
    from prep.stems import (STEM_NAMES, StemFileError, export_ni_stems, export_stem_folder, fit_stems,
                            import_ni_stems, import_stem_folder, read_stem_file, write_stem_file)

    crate, track = _open_track(args.crate, args.db, args.track)
    if crate is None:
        print(f"error: {track}", file=sys.stderr)
        return EXIT_USAGE
    with crate:
        try:
            if args.action == "export":
                stored = crate.get_stems(track["content_hash"])
                if stored is None:
                    print(f"error: {track['path']}: no stems yet (run `ate prep` with separation)", file=sys.stderr)
                    return EXIT_USAGE
                stems, header = read_stem_file(stored["path"])
                out = Path(args.target)
                if out.name.endswith(".stem.mp4") or out.suffix in (".m4a", ".mp4"):
                    from prep.audio import load_audio

                    export_ni_stems(out, stems, mix=load_audio(track["abs_path"]), sample_rate=header["sample_rate"])
                else:
                    export_stem_folder(out, stems, sample_rate=header["sample_rate"], fmt=args.format,
                                       subtype="FLOAT" if args.format == "wav" else "PCM_24")
                print(f"{track['path']}: stems ({stored['model']}) written to {out}")
            else:
                from prep.audio import SAMPLE_RATE
                from prep.pipeline import stem_file_path

                src = Path(args.target)
                stems = import_stem_folder(src) if src.is_dir() else import_ni_stems(src)[1]
                frames = int(round((track["duration_s"] or 0) * SAMPLE_RATE))
                try:
                    stems = fit_stems(stems, frames, src)
                except StemFileError as err:  # stems of another edit: the user named the wrong file
                    print(f"error: {err}", file=sys.stderr)
                    return EXIT_USAGE
                path = stem_file_path(crate.stems_dir, track["content_hash"])
                write_stem_file(path, stems, SAMPLE_RATE, meta={"separator": "import", "source": str(src)})
                crate.set_stems(track["content_hash"], path, STEM_NAMES, fmt="ate-stems",
                                sample_rate=SAMPLE_RATE, frames=stems.shape[1], model="import")
                print(f"{track['path']}: stems imported from {src}")
        except StemFileError as err:
            print(f"error: {err}", file=sys.stderr)
            return EXIT_FAILURES
    return EXIT_OK


def _cmd_demo(args: argparse.Namespace) -> int:
    from prep.demo import run_demo

    return run_demo(Path(args.folder), workers=args.workers)


def _cmd_bench(args: argparse.Namespace) -> int:
    from ate.bench import run_benchmark

    options = {}
    if args.stretcher:
        if args.what != "automix":
            print("error: --stretcher is for ate bench automix", file=sys.stderr)
            return EXIT_USAGE
        options["stretcher"] = args.stretcher
    if args.ahead_blocks is not None:
        if args.what not in ("live", "control"):
            print("error: --ahead-blocks is for ate bench live and control", file=sys.stderr)
            return EXIT_USAGE
        options["ahead_blocks"] = args.ahead_blocks
    if args.baseline is not None:
        if args.what != "engine":
            print("error: --baseline is for ate bench engine", file=sys.stderr)
            return EXIT_USAGE
        options["baseline"] = args.baseline
    try:
        result = run_benchmark(args.what, quick=args.quick, **options)
    except ValueError as err:
        if args.baseline is None:
            raise
        print(f"error: {err}", file=sys.stderr)     # a --baseline that is not an ATE checkout
        return EXIT_USAGE
    if args.json:
        print(json.dumps(result))
    else:
        print(json.dumps(result, indent=2))
    return EXIT_OK


def _cmd_render(args: argparse.Namespace) -> int:
    from engine.script import (ScriptError, check_output_path, default_script_path, load_script, render_script,
                               write_render)

    try:
        check_output_path(args.output)
        script = load_script(args.script or default_script_path())
        if args.block_frames is not None:
            if not 1 <= args.block_frames <= 8192:
                raise ScriptError(f"--block-frames must be 1..8192, got {args.block_frames}")
            script.block_frames = args.block_frames
        if args.seconds is not None and not args.seconds > 0:
            raise ScriptError(f"--seconds must be > 0, got {args.seconds}")
        if args.json:  # keep stdout pure JSON
            audio, summary = render_script(script, seconds=args.seconds)
        else:
            with ProgressBar(f"render {Path(script.path).name}") as progress:
                audio, summary = render_script(script, progress=progress, seconds=args.seconds)
        write_render(audio, args.output, sample_rate=script.sample_rate)
    except ScriptError as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_USAGE
    summary["output"] = str(args.output)
    if args.json:
        print(json.dumps(summary))
    else:
        print(f"{args.output}: {summary['seconds']:.1f} s, {summary['channels']} ch, rendered "
              f"{summary['realtime_factor']:.1f}x realtime; peak {summary['peak_dbfs']:.1f} dBFS, true peak "
              f"{summary['true_peak_dbtp']:.1f} dBTP, {summary['integrated_lufs']:.1f} LUFS, limiter reduction "
              f"{summary['limiter_max_reduction_db']:.1f} dB max; {summary['commands_applied']}/"
              f"{summary['commands']} commands applied")
    return EXIT_OK


def _cmd_engine(args: argparse.Namespace) -> int:
    import signal

    from controllers.surfaces import SurfaceError, check_surface_spec
    from engine.process import EngineProcess, EngineProcessError

    try:
        if args.surface and args.curve:
            raise ValueError("--surface with --curve: surfaces connect without keys (run them with the engine "
                             "unencrypted on loopback, or as separate clients)")
        for spec in args.surface:
            check_surface_spec(spec)          # a typo is reported before the engine starts
        proc = EngineProcess(n_decks=args.decks, channels=args.channels, device=args.device,
                             block_frames=args.block_frames, latency=args.latency, host_api=args.host_api,
                             ahead_blocks=args.ahead_blocks,
                             endpoint=args.endpoint, pub_endpoint=args.pub, curve_dir=args.curve,
                             record_path=args.record, record_minutes=args.record_minutes)
    except (EngineProcessError, SurfaceError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_USAGE
    report = proc.start_report
    try:
        surfaces = _start_surfaces(args.surface, proc, args)
    except SurfaceError as err:
        print(f"error: {err}", file=sys.stderr)
        proc.close()
        return EXIT_USAGE
    print(json.dumps({"endpoint": proc.endpoint, "pub_endpoint": proc.pub_endpoint, "device": report.get("device"),
                      "host_api": report.get("host_api"), "latency_s": report.get("latency_s"),
                      "block_frames": report.get("block_frames"), "ahead_blocks": report.get("ahead_blocks"),
                      "surfaces": [s.describe() for s in surfaces]}),
          flush=True)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    while not stop.wait(0.5) and proc.send({"request": "state"}).get("ok"):
        pass
    for surface in surfaces:
        surface.close()
    proc.close()
    final = proc.final_report or {}
    print(f"engine stopped: {final.get('seconds', 0):.1f} s played, {final.get('xruns', 0)} xruns"
          + _recorded_note(final), file=sys.stderr)
    return EXIT_OK


def _start_surfaces(specs: list[str], proc, args: argparse.Namespace) -> list:
    """Start the ``--surface`` plugins on an engine process (its loopback endpoints; not with ``--curve``, whose
    server admits only the clients of its keys); if one fails, those started are closed again."""
    from controllers.client import EngineClient
    from controllers.surfaces import start_surface

    started: list = []
    try:
        for spec in specs:
            started.append(start_surface(spec, lambda: EngineClient(proc.endpoint, proc.pub_endpoint)))
    except Exception:
        for surface in started:
            surface.close()
        raise
    return started


def _recorded_note(report: dict) -> str:
    recorded = report.get("recorded")
    if not recorded:
        return ""
    if "error" in recorded:
        return f"; the recording was not written: {recorded['error']}"
    return f"; recorded {recorded['seconds']:.1f} s to {recorded['path']}"


def _add_engine_process_args(p: argparse.ArgumentParser) -> None:
    """What ``ate engine`` and ``ate live`` share: the decks, the sound card, the recording, surfaces."""
    from engine.process import LIVE_BLOCK_FRAMES

    p.add_argument("--decks", type=int, default=4, help="number of decks (4)")
    p.add_argument("--channels", type=int, choices=(2, 4), default=2, help="2, or 4 for a headphone cue on 3-4")
    p.add_argument("--device", default=None, help="output device: index or part of its name (default: PortAudio's)")
    p.add_argument("--host-api", default=None, help="host API to pick the device from, e.g. JACK or ALSA")
    p.add_argument("--block-frames", type=int, default=LIVE_BLOCK_FRAMES, metavar="N",
                   help=f"frames per engine block and device callback ({LIVE_BLOCK_FRAMES}: with the 2 blocks "
                        "ahead, 8.7 ms of output latency on JACK at 44.1 kHz)")
    p.add_argument("--latency", default=None, type=_latency_arg,
                   help="suggested output latency: seconds, or low/high (PortAudio's choice)")
    _add_ahead_arg(p)
    _add_record_args(p)
    _add_surface_arg(p)


def _ahead_arg(text: str) -> int:
    value = int(text)
    if not 0 <= value <= 16:
        raise argparse.ArgumentTypeError(f"must be 0..16, got {value}")
    return value


def _add_ahead_arg(p: argparse.ArgumentParser, which: str = "") -> None:
    p.add_argument("--ahead-blocks", type=_ahead_arg, default=None, metavar="N",
                   help=which + "blocks the engine renders ahead of a GIL-free device callback: it survives being held "
                        "off that long, and the latency grows as much (2 on Linux: engine.output.DEFAULT_AHEAD_BLOCKS;"
                        " 0: render inside a Python callback, the lowest latency)")


def _add_record_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--record", default=None, metavar="FILE", help="record the master output to FILE (.wav or .flac)")
    p.add_argument("--record-minutes", type=float, default=120.0, metavar="M",
                   help="longest recording, minutes (memory is taken at start: 21 MB a minute)")


def _add_surface_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--surface", action="append", default=[], metavar="NAME[:OPTIONS]",
                   help="start a control-surface plugin (ate plugins lists them), e.g. midi:pioneer-ddj-flx4,"
                        "api=jack; OPTIONS are key=value items joined by commas (repeatable)")


def _cmd_keys(args: argparse.Namespace) -> int:
    from controllers.keys import make_keys

    try:
        made = make_keys(args.directory, args.client or ["client"])
    except (OSError, ValueError) as err:
        print(f"error: {args.directory}: {err}", file=sys.stderr)
        return EXIT_USAGE
    print(json.dumps(made, indent=2))
    return EXIT_OK


def _preset_path(name: str) -> str:
    from controllers.midi import PRESETS_DIR

    shipped = PRESETS_DIR / f"{name}.toml"
    return str(shipped) if not Path(name).exists() and shipped.exists() else name


def _client_from_args(args: argparse.Namespace):
    from controllers.client import EngineClient

    return EngineClient(args.connect, args.pub, server_key=args.server_key, client_cert=args.client_cert)


def _cmd_midi(args: argparse.Namespace) -> int:
    from controllers.midi import (InputPump, MidiBridge, MidiPortError, PresetError, describe, list_ports,
                                  load_preset, open_port)

    try:
        if args.midi_cmd == "ports":
            print(json.dumps(list_ports(args.api), indent=2))
        elif args.midi_cmd == "check":
            for name in args.presets:
                preset = load_preset(_preset_path(name))
                print(f"{preset.path}: {preset.name}: {len(preset.inputs)} inputs, {len(preset.outputs)} LEDs, "
                      f"port {preset.port!r}")
        elif args.midi_cmd == "monitor":
            from controllers.midi import MidiMapper

            mapper = MidiMapper(load_preset(_preset_path(args.preset))) if args.preset else None
            port, full = open_port("input", args.port, args.api, "ate-midi-monitor")
            print(f"listening to {full} (Ctrl-C stops)", file=sys.stderr, flush=True)
            stop = threading.Event()
            t0 = time.monotonic()

            def show(message: list[int]) -> None:
                line = f"{time.monotonic() - t0:9.3f}  {describe(message)}"
                if mapper is not None:
                    m = mapper.lookup(message)[0]
                    line += f"  -> {m.name} ({m.action})" if m is not None else "  -> (not in the preset)"
                    mapper.handle(message)
                print(line, flush=True)

            pump = InputPump(port, show)
            try:
                stop.wait(args.seconds if args.seconds else None)
            except KeyboardInterrupt:
                pass
            pump.stop()
            port.close_port()
        elif args.midi_cmd == "learn":
            from controllers.midi_learn import learn

            result = learn(args.port, args.output, api=args.api, name=args.name, timeout_s=args.timeout)
            print(json.dumps(result, indent=2))
        elif args.midi_cmd == "run":
            import signal

            preset = load_preset(_preset_path(args.preset))
            decks = [int(d) for d in args.decks.split(",")] if args.decks else None
            client = _client_from_args(args)
            stop = threading.Event()
            for sig in (signal.SIGINT, signal.SIGTERM):
                signal.signal(sig, lambda *_: stop.set())
            with MidiBridge(preset, client, port=args.port, api=args.api, decks=decks, crate_dir=args.crate) as bridge:
                print(json.dumps({"preset": preset.name, "input": bridge.input_name, "output": bridge.output_name,
                                  "engine": args.connect}), flush=True)
                stop.wait()
            client.close()
    except (PresetError, MidiPortError, ValueError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_USAGE
    return EXIT_OK


def _cmd_tui(args: argparse.Namespace) -> int:
    from controllers.client import EngineClientError
    from tui.app import run_tui

    client = _client_from_args(args)
    try:
        client.request({"request": "state"}, timeout_s=args.timeout)
    except EngineClientError as err:
        print(f"error: {err}", file=sys.stderr)
        client.close()
        return EXIT_USAGE
    try:
        run_tui(client, args.crate, args.decks)
    finally:
        client.close()
    return EXIT_OK


def _cmd_live(args: argparse.Namespace) -> int:
    from controllers.client import EngineClient
    from controllers.midi import MidiBridge, MidiPortError, PresetError, load_preset
    from engine.process import EngineProcess, EngineProcessError
    from tui.app import run_tui

    from controllers.surfaces import SurfaceError, check_surface_spec

    try:
        presets = [load_preset(_preset_path(name)) for name in args.midi]
        for spec in args.surface:
            check_surface_spec(spec)
        proc = EngineProcess(n_decks=args.decks, channels=args.channels, device=args.device,
                             block_frames=args.block_frames, latency=args.latency, host_api=args.host_api,
                             ahead_blocks=args.ahead_blocks,
                             endpoint=args.endpoint, pub_endpoint=args.pub, record_path=args.record,
                             record_minutes=args.record_minutes)
    except (PresetError, EngineProcessError, SurfaceError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_USAGE
    bridges: list = []
    surfaces: list = []
    client = EngineClient(proc.endpoint, proc.pub_endpoint)
    try:
        for preset in presets:
            bridges.append(MidiBridge(preset, EngineClient(proc.endpoint, proc.pub_endpoint), api=args.midi_api,
                                      crate_dir=args.crate))
        surfaces = _start_surfaces(args.surface, proc, args)
        run_tui(client, args.crate, args.decks)
    except (MidiPortError, SurfaceError) as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_USAGE
    finally:
        for surface in surfaces:
            surface.close()
        for bridge in bridges:
            bridge.close()
            bridge.client.close()
        client.close()
        proc.close()
    final = proc.final_report or {}
    print(f"engine stopped: {final.get('seconds', 0):.1f} s played, {final.get('xruns', 0)} xruns"
          + _recorded_note(final), file=sys.stderr)
    return EXIT_OK


def _cmd_play(args: argparse.Namespace) -> int:
    from engine.output import find_device, play_commands
    from engine.script import ScriptError, default_script_path, load_script

    try:
        script = load_script(args.script or default_script_path())
        seconds = args.seconds or script.render_length_s()
        device = args.device
        if args.host_api or (device is not None and not device.isdigit()):
            device = find_device(host_api=args.host_api, name=device)
        elif device is not None:
            device = int(device)
        print(f"playing {Path(script.path).name} for {seconds:.1f} s ...", file=sys.stderr)
        report = play_commands(script.commands, seconds, device=device, block_frames=args.block_frames,
                               channels=script.channels, latency=args.latency, n_decks=script.decks,
                               ahead_blocks=args.ahead_blocks)
    except (ScriptError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_USAGE
    except Exception as err:  # PortAudio: no device, device busy, unsupported settings
        print(f"error: audio output: {err}", file=sys.stderr)
        return EXIT_USAGE
    if args.json:
        print(json.dumps(report))
    else:
        cost = report["cost_ms"]
        print(f"{report.get('device', '?')} ({report.get('host_api', '?')}): {report['seconds']:.1f} s in "
              f"{report['callbacks']} blocks of {report['block_frames']} frames, latency "
              f"{report.get('latency_s', 0) * 1e3:.1f} ms; xruns {report['xruns']}; callback cost median "
              f"{cost['median']:.2f} / p99 {cost['p99']:.2f} / max {cost['max']:.2f} ms; "
              f"{len(report['command_errors'])} command errors")
    return EXIT_OK


def _add_separation_options(p: argparse.ArgumentParser, allow_none: bool, default: str = "auto") -> None:
    choices = ["auto", "demucs", "dsp"] + (["none"] if allow_none else [])
    g = p.add_argument_group("separation")
    g.add_argument("--separator", default=default, choices=choices,
                   help="auto: demucs when its weights are found, else the DSP fallback (with a warning)"
                        + ("; none: no stems" if allow_none else "") + f" (default: {default})")
    g.add_argument("--model", default="htdemucs", help="demucs model name (default: htdemucs)")
    g.add_argument("--model-dir", default=None,
                   help="folder holding demucs models in its local-repo layout (default: $ATE_MODEL_DIR, "
                        "then demucs' own cache)")
    g.add_argument("--device", default=None, help="torch device, e.g. cpu or cuda:0 (default: CUDA when present)")
    g.add_argument("--shifts", type=int, default=1, help="demucs random shifts averaged (default: 1)")
    g.add_argument("--overlap", type=float, default=0.25, help="demucs segment overlap, 0..1 (default: 0.25)")
    g.add_argument("--segment", type=float, default=None,
                   help="demucs segment length in seconds (default: the model's, 7.8 for htdemucs)")


def _latency_arg(text: str) -> float | str:
    if text in ("low", "high"):
        return text
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"latency must be seconds, low or high, got {text!r}") from None


CLI_MODULES: tuple[str, ...] = ("controllers.automix_cli", "prep.similarity", "prep.transcribe", "prep.tonal",
                               "controllers.surfaces")
"""Modules that define subcommands beside their code: each has ``register_cli(subparsers)``, which adds its
parsers with ``set_defaults(func=...)``; a handler returns the exit code. Their top level imports only light
modules (heavy ones inside the handlers), so ``ate --help`` stays fast."""


def build_parser() -> argparse.ArgumentParser:
    """The ``ate`` argument parser (exposed for tests and docs)."""
    from controllers import DEFAULT_ENDPOINT, DEFAULT_PUB_ENDPOINT

    parser = argparse.ArgumentParser(
        prog="ate",
        description="ATE, the AutoMix & Transcription Engine: prepare a crate of music, then play and mix it.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for module in CLI_MODULES:
        import_module(module).register_cli(sub)

    p = sub.add_parser("demo", help="generate a demo crate, prep it and show what was found")
    p.add_argument("folder", nargs="?", default="demo-crate", help="where to write the demo crate (default: ./demo-crate)")
    p.add_argument("--workers", type=int, default=None, help="parallel workers (default: all cores)")
    p.set_defaults(func=_cmd_demo)

    p = sub.add_parser("analyze", help="analyse audio files: tempo, beats, downbeats, key, structure, loudness")
    p.add_argument("paths", nargs="+", metavar="PATH")
    p.add_argument("--json", action="store_true", help="one JSON object per line")
    _add_separation_options(p, allow_none=True, default="none")
    p.set_defaults(func=_cmd_analyze)

    p = sub.add_parser("prep", help="scan a folder of music into the crate: stems and analysis (resumable)")
    p.add_argument("crate", metavar="CRATE", help="folder of music, scanned recursively")
    p.add_argument("--db", default=None, help="crate database file (default: CRATE/.ate/crate.sqlite)")
    p.add_argument("--workers", type=int, default=None,
                   help="parallel workers (default: all cores; 1 when demucs runs on the CPU)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    _add_separation_options(p, allow_none=True)
    p.add_argument("--with", dest="with_steps", action="append", default=[], metavar="STEP",
                   help="also run an opt-in prep step (e.g. transcribe); repeatable")
    p.add_argument("--without", dest="without_steps", action="append", default=[], metavar="STEP",
                   help="skip a prep step that runs by default; repeatable")
    p.set_defaults(func=_cmd_prep)

    p = sub.add_parser("separate", help="split audio files into drums, bass, vocals and other stems")
    p.add_argument("paths", nargs="+", metavar="PATH")
    p.add_argument("-o", "--output", required=True, metavar="DIR",
                   help="where to write DIR/{drums,bass,vocals,other}.wav (DIR/NAME/... for several files)")
    p.add_argument("--format", default="wav", choices=["wav", "flac", "stem.mp4"],
                   help="wav (float32), flac (24 bit) or one NI Stems file (default: wav)")
    p.add_argument("--fold", default="spectral", choices=["spectral", "other", "none"],
                   help="how the residual (mix minus stems) is folded in so the stems sum to the mix "
                        "(default: spectral; see docs/separation.md)")
    _add_separation_options(p, allow_none=False)
    p.set_defaults(func=_cmd_separate)

    p = sub.add_parser("models", help="list the demucs models available offline, and where they come from")
    p.add_argument("--model-dir", default=None, help="a folder of demucs models (default: $ATE_MODEL_DIR)")
    p.add_argument("--json", action="store_true", help="JSON output")
    p.set_defaults(func=_cmd_models)

    p = sub.add_parser("stems", help="export a track's stems (NI Stems or a folder) or import stems you have")
    p.add_argument("action", choices=["export", "import"])
    p.add_argument("crate", metavar="CRATE")
    p.add_argument("track", metavar="TRACK", help="the track: path, title or content-hash prefix")
    p.add_argument("target", metavar="TARGET",
                   help="export: OUT.stem.mp4 or a folder; import: a .stem.mp4 file or a folder of four files")
    p.add_argument("--db", default=None, help="crate database file (default: CRATE/.ate/crate.sqlite)")
    p.add_argument("--format", default="wav", choices=["wav", "flac"], help="folder export format (default: wav)")
    p.set_defaults(func=_cmd_stems)

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
    p.add_argument("what", choices=list(BENCHMARKS), help="what to measure")
    p.add_argument("--json", action="store_true", help="compact JSON on one line")
    p.add_argument("--quick", action="store_true", help="a smaller set, for a fast check")
    p.add_argument("--stretcher", choices=("rubberband",), default=None,
                   help="automix: also render the planner's route with Rubber Band R3 stretching the decks")
    _add_ahead_arg(p, "live, control: ")
    p.add_argument("--baseline", default=None, metavar="DIR",
                   help="engine: instead, run this checkout's engine and DIR's (another checkout) in turns "
                        "and report their cost ratio")
    p.set_defaults(func=_cmd_bench)

    p = sub.add_parser("engine", help="run the engine in its own process, served over ZeroMQ (docs/protocol.md)")
    p.add_argument("--endpoint", default=DEFAULT_ENDPOINT, help="commands (ROUTER); loopback unless --curve")
    p.add_argument("--pub", default=DEFAULT_PUB_ENDPOINT, help="state and beat stream (PUB); loopback unless --curve")
    p.add_argument("--curve", default=None, metavar="DIR",
                   help="serve with CURVE keys made by `ate keys DIR` (needed for a non-loopback address)")
    _add_engine_process_args(p)
    p.set_defaults(func=_cmd_engine)

    p = sub.add_parser("live", help="play live: the engine, the terminal UI and MIDI controllers at once")
    p.add_argument("--crate", default=None, metavar="DIR", help="a prepared crate for the browser")
    p.add_argument("--midi", action="append", default=[], metavar="PRESET",
                   help="a controller to use (a preset name in presets/ or a file; repeatable)")
    p.add_argument("--midi-api", choices=("jack", "alsa"), default=None, help="MIDI system (default: rtmidi's)")
    p.add_argument("--endpoint", default=DEFAULT_ENDPOINT, help="also serve other programs here (loopback)")
    p.add_argument("--pub", default=DEFAULT_PUB_ENDPOINT, help="state and beat stream (loopback)")
    _add_engine_process_args(p)
    p.set_defaults(func=_cmd_live)

    p = sub.add_parser("tui", help="the terminal UI of an engine that runs elsewhere (ate engine)")
    _add_connect_args(p)
    p.add_argument("--crate", default=None, metavar="DIR", help="a prepared crate for the browser")
    p.add_argument("--decks", type=int, default=4, help="decks to show (4)")
    p.add_argument("--timeout", type=float, default=5.0, help="seconds to wait for the engine to answer")
    p.set_defaults(func=_cmd_tui)

    p = sub.add_parser("keys", help="make CURVE keys for serving the engine beyond loopback (docs/protocol.md)")
    p.add_argument("directory", help="folder for the keys (server keys are made once, then kept)")
    p.add_argument("--client", action="append", metavar="NAME", help="a client to allow (repeatable; default: client)")
    p.set_defaults(func=_cmd_keys)

    p = sub.add_parser("midi", help="MIDI controllers: ports, monitor, learn a preset, check presets, run a bridge")
    msub = p.add_subparsers(dest="midi_cmd", required=True)
    m = msub.add_parser("ports", help="list MIDI input and output ports (JSON)")
    m.add_argument("--api", choices=("jack", "alsa"), default=None, help="MIDI system (default: rtmidi's)")
    m = msub.add_parser("check", help="check presets (a name in presets/ or a file); errors are FILE:LINE: why")
    m.add_argument("presets", nargs="+", metavar="PRESET")
    m = msub.add_parser("monitor", help="print incoming MIDI messages (and what a preset maps them to)")
    m.add_argument("--port", required=True, help="part of the input port's name")
    m.add_argument("--api", choices=("jack", "alsa"), default=None)
    m.add_argument("--preset", default=None, help="show each message's mapping in this preset")
    m.add_argument("--seconds", type=float, default=0.0, help="stop after this long (default: Ctrl-C)")
    m = msub.add_parser("learn", help="build a preset by moving each control when asked (Enter skips, q ends)")
    m.add_argument("output", help="the preset file to write (TOML)")
    m.add_argument("--port", required=True, help="part of the controller's input port name")
    m.add_argument("--api", choices=("jack", "alsa"), default=None)
    m.add_argument("--name", default=None, help="controller name in the preset (default: the port's)")
    m.add_argument("--timeout", type=float, default=60.0, help="seconds to wait for each control")
    m = msub.add_parser("run", help="drive a running engine (ate engine) from a controller")
    m.add_argument("preset", help="a preset name in presets/ (e.g. pioneer-ddj-flx4) or a file")
    m.add_argument("--port", default=None, help="part of the port names (default: the preset's)")
    m.add_argument("--api", choices=("jack", "alsa"), default=None)
    m.add_argument("--decks", default=None, help="engine decks for the controller's decks, e.g. 2,3")
    m.add_argument("--crate", default=None, metavar="DIR", help="a prepared crate for the browse encoder and load")
    _add_connect_args(m)
    p.set_defaults(func=_cmd_midi)

    p = sub.add_parser("play", help="play a timed command script live on an audio device")
    p.add_argument("script", nargs="?", default=None, metavar="SCRIPT",
                   help=".toml or .json command script (default: the built-in demo mix; see docs/scripts.md)")
    p.add_argument("--device", default=None, help="output device: index or part of its name (default: PortAudio's)")
    p.add_argument("--host-api", default=None, help="host API to pick the device from, e.g. JACK or ALSA")
    p.add_argument("--block-frames", type=int, default=256, metavar="N", help="frames per callback (256)")
    p.add_argument("--latency", default=None, type=_latency_arg,
                   help="suggested output latency: seconds, or low/high (PortAudio's choice)")
    _add_ahead_arg(p)
    p.add_argument("--seconds", type=float, default=None, metavar="S", help="how long to play (default: the script's)")
    p.add_argument("--json", action="store_true", help="print the report as one JSON object")
    p.set_defaults(func=_cmd_play)

    p = sub.add_parser("render", help="render a timed command script to an audio file (offline, faster than live)")
    p.add_argument("script", nargs="?", default=None, metavar="SCRIPT",
                   help=".toml or .json command script (default: the built-in demo mix; see docs/scripts.md)")
    p.add_argument("-o", "--output", required=True, metavar="OUT", help="OUT.wav (float32) or OUT.flac (24 bit)")
    p.add_argument("--block-frames", type=int, default=None, metavar="N",
                   help="frames per engine block (default: the script's, 256)")
    p.add_argument("--seconds", type=float, default=None, metavar="S", help="render length (default: the script's)")
    p.add_argument("--json", action="store_true", help="print the summary as one JSON object (no progress bar)")
    p.set_defaults(func=_cmd_render)
    return parser


def _add_connect_args(p: argparse.ArgumentParser) -> None:
    from controllers import DEFAULT_ENDPOINT, DEFAULT_PUB_ENDPOINT

    p.add_argument("--connect", default=DEFAULT_ENDPOINT, metavar="ADDR", help="the engine's command endpoint")
    p.add_argument("--pub", default=DEFAULT_PUB_ENDPOINT, metavar="ADDR", help="the engine's state endpoint")
    p.add_argument("--server-key", default=None, metavar="FILE", help="the server's CURVE public key (ate keys)")
    p.add_argument("--client-cert", default=None, metavar="FILE", help="this client's CURVE .key_secret")


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
