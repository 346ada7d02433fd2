"""``ate demo``: a demo crate with known truth, prepared and checked.

Writes the tracks of :func:`prep.synth.demo_specs` as FLAC files (with their
``.truth.json``) into a folder, runs the crate prep over it, then prints the
crate next to the truth the generator used, so a newcomer sees in a minute
what ATE finds and how close it is. Run twice, it reuses the files and the
crate, and finishes in seconds.
"""

from __future__ import annotations

from pathlib import Path

from prep.crate import Crate, default_db_path
from prep.pipeline import prep_crate
from prep.report import format_track_table
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
    report = prep_crate(folder, workers=workers)
    report.print_summary()
    if report.interrupted:
        return 130
    with Crate(default_db_path(folder), readonly=True) as crate:
        rows = crate.list_tracks(sort="bpm")
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
    return 1 if report.failed else 0
