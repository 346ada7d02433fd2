"""Benchmarks behind ``ate bench WHAT``: each returns a JSON-ready dict.

Figures are reported next to a peer measured in the same run (librosa,
rubberband, the demucs CLI), because absolute timings on shared machines are
noisy; see docs/benchmarks.md for how to read them.
"""

from __future__ import annotations


def run_benchmark(what: str, quick: bool = False) -> dict:
    """Run the benchmark named ``what`` ("analysis")."""
    if what == "analysis":
        from prep.bench import bench_analysis

        return bench_analysis(quick=quick)
    raise ValueError(f"unknown benchmark {what!r}")
