"""Benchmarks behind ``ate bench WHAT``: each returns a JSON-ready dict.

Figures are reported next to a peer measured in the same run (librosa,
rubberband, the demucs CLI), because absolute timings on shared machines are
noisy; see docs/benchmarks.md for how to read them.
"""

from __future__ import annotations

from collections.abc import Callable
from importlib import import_module

BENCHMARKS: dict[str, tuple[str, str]] = {
    "analysis": ("prep.bench", "bench_analysis"),
    "separate": ("prep.bench_separate", "bench_separate"),
    "stems": ("prep.bench_stems", "bench_stems"),
    "stretch": ("engine.bench_stretch", "bench_stretch"),
    "engine": ("engine.bench_engine", "bench_engine"),
    "live": ("engine.output", "bench_live"),
    "control": ("controllers.bench_control", "bench_control"),
    "automix": ("controllers.bench_automix", "bench_automix"),
    "similarity": ("prep.bench_similarity", "bench_similarity"),
    "transcribe": ("prep.bench_transcribe", "bench_transcribe"),
    "effects": ("engine.bench_effects", "bench_effects"),
    "autoeq": ("prep.bench_autoeq", "bench_autoeq"),
}
"""Benchmark name -> (module, function); modules import lazily (some load torch)."""


def run_benchmark(what: str, quick: bool = False, **options) -> dict:
    """Run the benchmark named ``what`` (one of :data:`BENCHMARKS`); ``options`` go to benchmarks that take
    them (``stretcher`` for ``automix``)."""
    if what not in BENCHMARKS:
        raise ValueError(f"unknown benchmark {what!r}; expected one of {', '.join(BENCHMARKS)}")
    module, function = BENCHMARKS[what]
    bench: Callable[..., dict] = getattr(import_module(module), function)
    return bench(quick=quick, **options)
