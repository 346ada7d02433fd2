"""``ate demo``: a demo crate with known truth, prepared and checked.

Writes the tracks of :func:`prep.synth.demo_specs` as FLAC files (with their
``.truth.json``) into a folder, runs the crate prep over it, then prints the
crate next to the truth the generator used, so a newcomer sees in a minute
what ATE finds and how close it is, and draws one track's stems. Prep
separates with demucs when its weights are installed, else with the DSP
fallback (and says so). It ends with an automix of the crate rendered to
``FOLDER/demo-mix.flac`` (with its cue sheet and report). Run twice, it
reuses the files and the crate, and only the mix is rendered again.
"""

from __future__ import annotations

from pathlib import Path

from prep.crate import Crate, default_db_path
from prep.overview import draw_overview
from prep.pipeline import prep_crate
from prep.report import format_clock, format_track_table
from prep.separate import choose_separator
from prep.synth import demo_specs, generate, write_track


def write_demo_crate(folder: Path) -> list[Path]:
    """Render the demo tracks into ``folder`` (skipping those already there)."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for spec in demo_specs():
        path = folder / f"{spec.title}.flac"
        if not path.exists():
            write_track(generate(spec), path)
        paths.append(path)
    return paths


def run_demo(folder: Path, workers: int | None = None) -> int:
    """Generate, prep and show the demo crate; returns the exit code."""
    print(f"demo crate: {folder.resolve()}")
    paths = write_demo_crate(folder)
    report = prep_crate(folder, workers=workers, separator=choose_separator("auto"))
    report.print_summary()
    if report.interrupted:
        return 130
    with Crate(default_db_path(folder), readonly=True) as crate:
        rows = crate.list_tracks(sort="bpm")
        first = rows[0] if rows else None
        overview = crate.get_overview(first["content_hash"]) if first else None
        analysis = crate.get_analysis(first["content_hash"]) if first else None
        stems = crate.get_stems(first["content_hash"]) if first else None
    print()
    print(format_track_table(rows))
    print()
    truth = {p.stem: spec for p, spec in zip(paths, demo_specs())}
    print("found vs truth:")
    exact = 0
    for row in rows:
        spec = truth.get(Path(row["path"]).stem)
        if spec is None:
            continue
        bpm_ok = abs(row["bpm"] - spec.bpm) <= 0.02 * spec.bpm
        key_ok = row["key"] == spec.key
        exact += bpm_ok and key_ok
        print(f"  {row['title']:<24} BPM {row['bpm']:7.2f} (truth {spec.bpm:6.1f}) {'ok' if bpm_ok else 'WRONG'}"
              f"   key {row['key']:<9} (truth {spec.key:<9}) {'ok' if key_ok else 'WRONG'}")
    print(f"{exact}/{len(rows)} tracks with tempo and key right")
    if overview is not None and analysis is not None:
        data, lanes, _ = overview
        origin = f"stems by {stems['model']}" if stems else "mix"
        print()
        print(f"{first['title']} ({origin}), start to end:")
        for line in draw_overview(data, width=72, names=tuple(lanes)):
            print(f"  {line}")
        regions = analysis.get("vocal_regions") or []
        print("  vocals sing " + (", ".join(f"{format_clock(a)}-{format_clock(b)}" for a, b in regions) or "nowhere")
              + f"; mix in {format_clock(analysis['mix_in'])}, out {format_clock(analysis['mix_out'])}")
    print()
    status = _render_mix(folder)
    return 1 if report.failed or status else 0


def _render_mix(folder: Path) -> int:
    """Automix the demo crate into ``folder/demo-mix.flac`` and say what it did."""
    from controllers.automix import order_tracks
    from controllers.automix_cli import describe_render
    from controllers.mixsession import load_crate_tracks, render_mix
    from engine.transitions import load_library

    tracks, notes = load_crate_tracks(folder)
    for note in notes:
        print(f"automix: {note}")
    if len(tracks) < 2:
        print("automix: fewer than two prepared tracks; no mix")
        return 1
    order = order_tracks(tracks)
    print("automix: " + " -> ".join(t.title for t in order))
    summary = render_mix(order, load_library(), folder, folder / "demo-mix.flac")
    print(describe_render(summary))
    for t in summary["transitions"]:
        print(f"  {t['out']} -> {t['in']}: {t['preset']} ({t['bars']} bars) at {t['start_s'] / 60:.0f}:"
              f"{t['start_s'] % 60:04.1f}, {t['start_bpm']:.1f} -> {t['end_bpm']:.1f} BPM, "
              f"{t['out_key']} -> {t['in_key_played']}")
    return 0
