"""Random demucs models written the way demucs publishes them, for tests and benchmarks.

:func:`write_model` builds a randomly initialised :class:`demucs.htdemucs.HTDemucs`
(sources drums, bass, other, vocals at 44.1 kHz) with a fixed torch seed,
serialises it like demucs' ``tools/export.py`` (``serialize_model(...,
half=True)`` then ``demucs.states.save_with_checksum``: a ``SIG-CHECKSUM.th``
file whose CHECKSUM is the first 8 hex digits of the file's sha256) and writes
``NAME.yaml`` (``models: [SIG]``) beside it: demucs' local-repo layout, what
``python -m demucs --repo DIR -n NAME`` and ATE's ``--model-dir DIR`` read.

Two sizes:

- :data:`TINY_KWARGS`: 0.19 M parameters, a 10 s mix separates in well under
  a second on one core, for tests;
- :data:`HTDEMUCS_KWARGS`: the published ``htdemucs`` architecture (the
  ``mmi`` grid of demucs with 512 bottom channels and a 7.8 s segment:
  41.98 M parameters, the published size is 42 M), for the benchmark. Random
  weights cost exactly the compute of trained ones.

:func:`write_hf_cache` writes the same model the way demucs 4.1 finds it in the
HuggingFace hub cache (``NAME.yaml`` and ``SIG.safetensors``).
"""

from __future__ import annotations

import hashlib
import json
from fractions import Fraction
from pathlib import Path

SOURCES = ["drums", "bass", "other", "vocals"]
"""demucs' source order (ATE reorders to drums, bass, vocals, other)."""

TINY_KWARGS = dict(channels=8, depth=4, t_layers=1, t_heads=4, dconv_mode=0, rewrite=False, segment=Fraction(4))
"""A small HTDemucs: every part of the real one (STFT and time branches, cross transformer), few channels."""

HTDEMUCS_KWARGS = dict(channels=48, depth=4, dconv_mode=3, t_layers=5, t_dropout=0.02, bottom_channels=512,
                       segment=Fraction(39, 5))
"""The published htdemucs (signature 955717e8): HTDemucs defaults plus the mmi grid's settings."""


def build_htdemucs(seed: int = 0, full: bool = False, **overrides):
    """A randomly initialised HTDemucs, same weights for the same seed and settings."""
    import torch
    from demucs.htdemucs import HTDemucs

    kwargs = dict(HTDEMUCS_KWARGS if full else TINY_KWARGS, samplerate=44100, audio_channels=2)
    kwargs.update(overrides)
    torch.manual_seed(seed)
    model = HTDemucs(sources=list(SOURCES), **kwargs)
    model.eval()
    return model


def signature_for(seed: int, full: bool, **overrides) -> str:
    """A stable 8-hex-digit signature (demucs' experiment signatures look the same)."""
    text = json.dumps({"seed": seed, "full": full, **{k: str(v) for k, v in sorted(overrides.items())}})
    return hashlib.sha1(text.encode()).hexdigest()[:8]


def package(model) -> dict:
    """What demucs' tools/export.py saves: ``serialize_model(model, args, half=True)`` plus metrics."""
    from demucs.states import get_state

    args, kwargs = model._init_args_kwargs
    # serialize_model also stores the training args via omegaconf, which only training needs.
    return {"klass": model.__class__, "args": args, "kwargs": kwargs, "state": get_state(model, None, half=True),
            "training_args": {}, "metrics": (None, None)}


def write_model(folder: str | Path, name: str = "htdemucs", seed: int = 0, full: bool = False,
                write_yaml: bool = True, **overrides) -> Path:
    """Write a random model into ``folder`` in demucs' local-repo layout.

    Returns
    -------
    Path
        The ``SIG-CHECKSUM.th`` file written.
    """
    from demucs.states import save_with_checksum

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    sig = signature_for(seed, full, **overrides)
    before = set(folder.glob(f"{sig}-*.th"))
    save_with_checksum(package(build_htdemucs(seed, full, **overrides)), folder / f"{sig}.th")
    written = sorted(set(folder.glob(f"{sig}-*.th")) - before) or sorted(folder.glob(f"{sig}-*.th"))
    if write_yaml:
        (folder / f"{name}.yaml").write_text(f"models: ['{sig}']\n")
    return written[0]


def write_tiny_model(folder: str | Path, name: str = "htdemucs", seed: int = 0) -> Path:
    """:func:`write_model` with :data:`TINY_KWARGS`."""
    return write_model(folder, name, seed=seed, full=False)


def write_full_htdemucs(folder: str | Path, name: str = "htdemucs", seed: int = 0) -> Path:
    """:func:`write_model` with the published htdemucs architecture (about 84 MB on disk, half floats)."""
    return write_model(folder, name, seed=seed, full=True)


def write_hf_cache(cache_dir: str | Path, name: str = "htdemucs", seed: int = 0, full: bool = False) -> Path:
    """Write a random model into a HuggingFace hub cache as demucs 4.1 downloads it.

    Layout: ``models--adefossez--HTDemucs/{refs/main, snapshots/REV/NAME.yaml,
    snapshots/REV/SIG.safetensors}``; the safetensors metadata holds the
    class, args and kwargs as demucs' ``tools/export_hf.py`` writes them.

    Returns
    -------
    Path
        The ``.safetensors`` file.
    """
    from safetensors.torch import save_file

    model = build_htdemucs(seed, full)
    sig = signature_for(seed, full)
    repo = {"htdemucs": "HTDemucs"}.get(name, "HTDemucs-" + name.removeprefix("htdemucs_"))
    revision = "0" * 40
    root = Path(cache_dir) / f"models--adefossez--{repo}"
    snap = root / "snapshots" / revision
    snap.mkdir(parents=True, exist_ok=True)
    (root / "refs").mkdir(exist_ok=True)
    (root / "refs" / "main").write_text(revision)
    args, kwargs = model._init_args_kwargs

    def encode(v):
        if isinstance(v, Fraction):
            return {"_type": "fraction", "numerator": v.numerator, "denominator": v.denominator}
        return v

    state = {k: v.half().contiguous() for k, v in model.state_dict().items()}
    meta = {"klass": f"{type(model).__module__}.{type(model).__name__}", "args": json.dumps(list(args)),
            "kwargs": json.dumps({k: encode(v) for k, v in kwargs.items()})}
    path = snap / f"{sig}.safetensors"
    save_file(state, str(path), metadata=meta)
    (snap / f"{name}.yaml").write_text(f"models: ['{sig}']\n")
    return path
