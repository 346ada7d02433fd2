"""Source separation: demucs models, where their weights come from, and the residual fold.

Every stems array in ATE is float32 ``(4, frames, 2)`` at 44.1 kHz in
:data:`STEM_NAMES` order (drums, bass, vocals, other). A :class:`Separator`
turns a mix ``(frames, 2)`` into such an array; :class:`DemucsSeparator` does it
with a demucs model (htdemucs by default), and :func:`separate_track` adds the
residual fold so that the four stems at unity gain give back the mix.

Design
------
- **demucs' own code, not its CLI.** Weights are read with
  ``demucs.states.load_model`` and combined with ``demucs.apply.BagOfModels``,
  exactly as ``demucs.repo.LocalRepo`` / ``BagOnlyRepo`` do; audio goes through
  ``demucs.apply.apply_model`` with the same normalisation as
  ``demucs.api.Separator.separate_tensor`` (mix minus its mean, over its
  standard deviation), with ``split=True`` so long tracks run in overlapping
  segments. With ``shifts=0`` the result equals ``python -m demucs --float32``
  sample for sample (``ate bench separate`` checks it). The model is loaded
  once per :class:`DemucsSeparator`.
- **Weights, offline only.** :func:`find_model` looks in this order: the model
  folder (``model_dir`` argument, else ``$ATE_MODEL_DIR``) in demucs'
  local-repo layout (``NAME.yaml`` listing ``models: [SIG, ...]`` beside
  ``SIG-CHECKSUM.th`` files; ``SIG.safetensors`` from the HuggingFace repos is
  accepted too); then demucs' caches: the torch hub checkpoints folder
  (``torch.hub.get_dir()/checkpoints``) holding the files that demucs'
  ``remote/files.txt`` names, and the HuggingFace hub cache that demucs 4.1
  downloads into. Nothing is ever downloaded: missing weights raise
  :class:`SeparationError` at once with one line naming the files, their
  public URLs and where to put them. A damaged file (checksum mismatch,
  truncated or garbage) raises it too, naming the file.
- **The residual fold.** A model's stems do not sum to the mix. The
  "spectral" rule (default) gives each stem the part of the residual that
  falls where it is loud: in each STFT bin the residual is split among the
  stems in proportion to their magnitudes there (a soft, Wiener-like mask;
  bins where every stem is below -120 dBFS go to "other"); "other" is then
  set to the mix minus the other three, which adds the tiny remainder of the
  inverse STFT to it and makes the sum exact to float32 rounding. The "other"
  rule adds the whole residual to "other". See :func:`fold_residual`.

torch and demucs are imported only when a model is loaded, so finding and
listing models and folding stay light.
"""

from __future__ import annotations

import hashlib
import os
import re
import sys
import time
import typing
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from prep.audio import SAMPLE_RATE
from prep.runtime import environment, one_line
from prep.stems import STEM_NAMES

__all__ = [
    "STEM_NAMES", "MODEL_DIR_ENV", "FOLD_RULES", "SeparationError", "Separator", "ModelSource", "DemucsSeparator",
    "find_model", "list_models", "default_device", "fold_residual", "fold_error", "separate_track",
    "SeparatorChoice", "SEPARATOR_KINDS", "choose_separator",
]

MODEL_DIR_ENV = "ATE_MODEL_DIR"
"""Environment variable naming the model folder when no ``model_dir`` is given."""

FOLD_RULES = ("spectral", "other", "none")
"""Residual fold rules accepted by :func:`fold_residual` and :func:`separate_track`."""

FOLD_N_FFT = 4096
FOLD_HOP = 2048
FOLD_SILENCE_DBFS = -120.0
"""Bins where all stems together are below a sinusoid of this level give their residual to "other"."""

_OTHER = STEM_NAMES.index("other")
_DEMUCS_ROOT_URL = "https://dl.fbaipublicfiles.com/demucs/"  # demucs.pretrained.ROOT_URL
_HF_NAMESPACE = "adefossez"  # demucs.hf.DEFAULT_NAMESPACE
_SIG_RE = re.compile(r"^[0-9a-f]{8}$")
_THREAD_ENV = ("ATE_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")


class SeparationError(Exception):
    """Separation cannot run: missing or damaged weights, bad settings. ``str(err)`` is one line."""


@typing.runtime_checkable
class Separator(typing.Protocol):
    """Anything that splits a mix into ATE's four stems."""

    name: str
    """What made the stems, e.g. ``"demucs:htdemucs"`` or ``"dsp"``; stored with them in the crate."""

    def separate(self, samples: np.ndarray, progress: Callable[[float], None] | None = None) -> np.ndarray:
        """float32 ``(frames, 2)`` at 44100 Hz -> float32 ``(4, frames, 2)`` in :data:`STEM_NAMES` order.

        Same length as the input, not folded (see :func:`separate_track`).
        ``progress`` receives fractions 0..1.
        """
        ...


# --------------------------------------------------------------------------- finding weights


@dataclass
class ModelSource:
    """Where a model's weights were found.

    Attributes
    ----------
    name : str
        Model (bag) name, e.g. ``"htdemucs"``, or a single signature.
    kind : str
        ``"local"`` (the model folder) or ``"cache"`` (demucs' caches).
    location : Path
        The folder holding the files.
    signatures : list of str
        The bag's model signatures, in bag order.
    files : list of Path
        One weights file per signature.
    weights : list of list of float, optional
        Per-model, per-source weights of the bag (None: equal).
    segment : float, optional
        Segment override of the bag definition, in seconds.
    origin : str
        ``"model-dir"``, ``"torch-hub"`` or ``"huggingface"``.
    definition : Path, optional
        The ``NAME.yaml`` used (None for a bare signature).
    """

    name: str
    kind: str
    location: Path
    signatures: list[str]
    files: list[Path] = field(default_factory=list)
    weights: list[list[float]] | None = None
    segment: float | None = None
    origin: str = ""
    definition: Path | None = None


def _demucs_remote_dir() -> Path:
    import demucs  # the package __init__ is tiny: no torch import

    return Path(demucs.__file__).parent / "remote"


def _remote_files() -> dict[str, str]:
    """Published signature -> download URL, from demucs' ``remote/files.txt``.

    Same parsing as ``demucs.pretrained._parse_remote_files`` (that module
    imports torch, which finding a file does not need).
    """
    root = ""
    urls: dict[str, str] = {}
    path = _demucs_remote_dir() / "files.txt"
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("root:"):
            root = line.split(":", 1)[1].strip()
        else:
            urls[line.split("-", 1)[0]] = _DEMUCS_ROOT_URL + root + line
    return urls


def _published_names() -> list[str]:
    return sorted(p.stem for p in _demucs_remote_dir().glob("*.yaml"))


def _read_bag(path: Path) -> dict[str, Any]:
    import yaml

    try:
        bag = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as err:
        raise SeparationError(f"{path}: cannot read the bag definition ({one_line(err)})") from None
    models = bag.get("models") if isinstance(bag, dict) else None
    if not isinstance(models, list) or not models or not all(isinstance(s, str) for s in models):
        raise SeparationError(f"{path}: not a demucs bag definition (needs 'models: [SIG, ...]')")
    weights = bag.get("weights")
    if weights is not None and (len(weights) != len(models)):
        raise SeparationError(f"{path}: 'weights' has {len(weights)} rows for {len(models)} models")
    segment = bag.get("segment")
    return {"models": list(models), "weights": weights, "segment": None if segment is None else float(segment)}


def _bag_for(name: str, folder: Path | None, urls: dict[str, str]) -> tuple[dict[str, Any], Path | None] | None:
    """The bag definition of ``name``: NAME.yaml in ``folder``, else demucs' published one, else a signature."""
    if folder is not None and (folder / f"{name}.yaml").is_file():
        path = folder / f"{name}.yaml"
        return _read_bag(path), path
    published = _demucs_remote_dir() / f"{name}.yaml"
    if published.is_file():
        return _read_bag(published), published
    if name in urls or (folder is not None and _SIG_RE.match(name)):
        return {"models": [name], "weights": None, "segment": None}, None
    return None


def _model_dir(model_dir: str | Path | None) -> Path | None:
    value = model_dir if model_dir not in (None, "") else os.environ.get(MODEL_DIR_ENV) or None
    if value is None:
        return None
    path = Path(value).expanduser()
    if not path.is_dir():
        origin = "model_dir" if model_dir not in (None, "") else MODEL_DIR_ENV
        raise SeparationError(f"{path}: model folder does not exist or is not a folder (from {origin})")
    return path


def _torch_hub_checkpoints() -> Path:
    """``torch.hub.get_dir()/checkpoints``, without importing torch unless it is loaded already."""
    if "torch" in sys.modules:
        import torch.hub

        return Path(torch.hub.get_dir()) / "checkpoints"
    # torch.hub._get_torch_home(): $TORCH_HOME, else $XDG_CACHE_HOME/torch, else ~/.cache/torch
    home = os.environ.get("TORCH_HOME") or os.path.join(os.environ.get("XDG_CACHE_HOME", "~/.cache"), "torch")
    return Path(os.path.expanduser(home)) / "hub" / "checkpoints"


def _hf_cache_dir() -> Path | None:
    value = os.environ.get("HF_HUB_CACHE")
    if not value and os.environ.get("HF_HOME"):
        value = os.path.join(os.environ["HF_HOME"], "hub")
    if not value:
        try:
            from huggingface_hub import constants
        except ImportError:
            return None
        value = constants.HF_HUB_CACHE
    return Path(os.path.expanduser(value))


def _hf_repo_id(name: str) -> str:
    # demucs.hf.hf_repo_name: htdemucs -> HTDemucs, htdemucs_ft -> HTDemucs-ft, mdx_extra_q -> Demucs-mdx_extra_q
    if name == "htdemucs":
        repo = "HTDemucs"
    elif name.startswith("htdemucs_"):
        repo = "HTDemucs-" + name[len("htdemucs_"):]
    else:
        repo = "Demucs-" + name
    return f"{_HF_NAMESPACE}/{repo}"


def _hf_cached(name: str, filename: str) -> Path | None:
    cache = _hf_cache_dir()
    if cache is None:
        return None
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return None
    found = try_to_load_from_cache(_hf_repo_id(name), filename, cache_dir=cache)
    return Path(found) if isinstance(found, str) and Path(found).is_file() else None


def _scan_folder(folder: Path) -> dict[str, list[Path]]:
    """Signature -> weights files in ``folder`` (``SIG-CHECKSUM.th``, ``SIG.th``, ``SIG.safetensors``)."""
    found: dict[str, list[Path]] = {}
    try:
        entries = sorted(folder.iterdir())
    except OSError:
        return found
    for file in entries:
        if file.suffix == ".th":
            sig = file.stem.rsplit("-", 1)[0] if "-" in file.stem else file.stem  # as demucs.repo.LocalRepo
        elif file.suffix == ".safetensors":
            sig = file.stem
        else:
            continue
        if file.is_file():
            found.setdefault(sig, []).append(file)
    return found


def _pick(sig: str, files: list[Path]) -> Path:
    th = [f for f in files if f.suffix == ".th"]
    if len(th) > 1:
        names = ", ".join(f.name for f in th)
        raise SeparationError(f"{th[0].parent}: several weights files for signature {sig} ({names}); keep one")
    return th[0] if th else files[0]


def _find_in(name: str, folder: Path, urls: dict[str, str], kind: str, origin: str) -> ModelSource | None:
    found = _bag_for(name, folder, urls)
    if found is None:
        return None
    bag, definition = found
    files = _scan_folder(folder)
    if not all(sig in files for sig in bag["models"]):
        return None
    return ModelSource(name=name, kind=kind, location=folder, signatures=list(bag["models"]),
                       files=[_pick(sig, files[sig]) for sig in bag["models"]], weights=bag["weights"],
                       segment=bag["segment"], origin=origin, definition=definition)


def _find_torch_hub(name: str, urls: dict[str, str]) -> ModelSource | None:
    folder = _torch_hub_checkpoints()
    found = _bag_for(name, None, urls)
    if found is None or not folder.is_dir():
        return None
    bag, definition = found
    # torch.hub.load_state_dict_from_url saves a URL under its basename.
    files = [folder / urls[sig].rsplit("/", 1)[1] if sig in urls else None for sig in bag["models"]]
    if not all(f is not None and f.is_file() for f in files):
        return None
    return ModelSource(name=name, kind="cache", location=folder, signatures=list(bag["models"]),
                       files=typing.cast(list[Path], files), weights=bag["weights"], segment=bag["segment"],
                       origin="torch-hub", definition=definition)


def _find_hf(name: str) -> ModelSource | None:
    if not re.match(r"^[A-Za-z0-9_.]+$", name):
        return None
    definition = _hf_cached(name, f"{name}.yaml")
    if definition is None:
        return None
    bag = _read_bag(definition)
    files = [_hf_cached(name, f"{sig}.safetensors") for sig in bag["models"]]
    if not all(files):
        return None
    return ModelSource(name=name, kind="cache", location=definition.parent, signatures=list(bag["models"]),
                       files=typing.cast(list[Path], files), weights=bag["weights"], segment=bag["segment"],
                       origin="huggingface", definition=definition)


def find_model(model: str = "htdemucs", model_dir: str | Path | None = None) -> ModelSource:
    """Locate a demucs model's weights on this machine, without any network access.

    Parameters
    ----------
    model : str
        A bag name (``htdemucs``, ``htdemucs_ft``, ``mdx_extra_q``, ... or any
        ``NAME.yaml`` in the model folder) or a single model signature.
    model_dir : str or Path, optional
        Model folder in demucs' local-repo layout; default ``$ATE_MODEL_DIR``.

    Returns
    -------
    ModelSource
        The first complete set of files among: the model folder, the torch hub
        checkpoints folder, the HuggingFace hub cache.

    Raises
    ------
    SeparationError
        No complete set of files was found (the message names each missing
        file, its public URL and where to put it), or the model folder is not
        a folder, or a bag definition is unreadable.
    """
    folder = _model_dir(model_dir)
    urls = _remote_files()
    if folder is not None:
        found = _find_in(model, folder, urls, "local", "model-dir")
        if found is not None:
            return found
    found = _find_torch_hub(model, urls) or _find_hf(model)
    if found is not None:
        return found
    raise SeparationError(_missing_message(model, folder, urls))


def _missing_message(model: str, folder: Path | None, urls: dict[str, str]) -> str:
    hub = _torch_hub_checkpoints()
    where = (f"model folder {folder}" if folder is not None
             else f"model folder (none: no --model-dir, {MODEL_DIR_ENV} unset)")
    found = _bag_for(model, folder, urls)
    if found is None:
        return (f"{model}: unknown model: no {model}.yaml in the {where} and not a published demucs model "
                f"(published: {', '.join(_published_names())})")
    bag, definition = found
    sigs = bag["models"]
    present = _scan_folder(folder) if folder is not None else {}
    needed = []
    for sig in sigs:
        if sig in present:
            continue
        if sig in urls:
            needed.append(f"{urls[sig].rsplit('/', 1)[1]} ({urls[sig]})")
        else:
            needed.append(f"{sig}-CHECKSUM.th (not a published signature: no public URL)")
    files = f"{len(sigs)} file{'s' if len(sigs) > 1 else ''}"
    if len(needed) < len(sigs):
        files += f", {len(needed)} missing"
    listing = f"[{', '.join(sigs)}]"
    them = "them" if len(needed) > 1 else "it"
    if definition is not None and folder is not None and definition.parent == folder:
        fix = f"put {them} into {folder} beside {definition.name}"
    elif definition is not None and folder is not None:
        fix = f"download {them} into {folder} (its {model}.yaml is optional: demucs' own is used), or into {hub}"
    elif definition is not None:
        fix = (f"download {them} into a folder DIR with {model}.yaml (a copy of {definition}: models: {listing}) "
               f"and pass --model-dir DIR or set {MODEL_DIR_ENV}=DIR, or put {them} into {hub}")
    elif folder is not None:
        fix = f"put {them} into {folder}"
    else:
        fix = f"put {them} into a folder DIR and pass --model-dir DIR or set {MODEL_DIR_ENV}=DIR"
    return (f"{model}: no weights found (looked in the {where}, the torch hub cache {hub} and the HuggingFace "
            f"cache); needs {files}: {'; '.join(needed)}; to provide them: {fix}")


def list_models(model_dir: str | Path | None = None) -> list[dict]:
    """Every demucs model this machine has, and the published ones it lacks (for ``ate models``).

    Parameters
    ----------
    model_dir : str or Path, optional
        Model folder; default ``$ATE_MODEL_DIR`` (if set).

    Returns
    -------
    list of dict
        One entry per model and place: ``name``, ``status`` ("available",
        "incomplete" or "missing"), ``kind`` ("local", "cache" or None),
        ``origin`` ("model-dir", "torch-hub", "huggingface" or None),
        ``location`` (folder as str, or None), ``signatures``, ``files`` (each
        ``{"signature", "file", "path", "size_bytes", "url"}``; ``path`` and
        ``size_bytes`` are None for a missing file) and ``size_bytes`` (total
        present). Checksums are not verified here; loading does that.

    Raises
    ------
    SeparationError
        The model folder (argument or ``$ATE_MODEL_DIR``) is not a folder, or
        holds two weights files for one signature.
    """
    folder = _model_dir(model_dir)
    urls = _remote_files()
    entries: list[dict] = []
    covered: set[str] = set()

    def entry(name: str, kind: str | None, origin: str | None, location: Path | None, sigs: list[str],
              files: dict[str, Path | None]) -> dict:
        rows = []
        for sig in sigs:
            path = files.get(sig)
            size = path.stat().st_size if path is not None else None
            url = urls.get(sig)
            rows.append({"signature": sig, "file": path.name if path is not None else (url or sig).rsplit("/", 1)[-1],
                         "path": str(path) if path is not None else None, "size_bytes": size, "url": url})
        n_present = sum(r["path"] is not None for r in rows)
        status = "available" if n_present == len(rows) else ("incomplete" if n_present else "missing")
        if status == "available":
            covered.add(name)
        return {"name": name, "status": status, "kind": kind if n_present else None,
                "origin": origin if n_present else None, "location": str(location) if n_present and location else None,
                "signatures": sigs, "files": rows,
                "size_bytes": int(sum(r["size_bytes"] or 0 for r in rows))}

    if folder is not None:
        present = _scan_folder(folder)
        used: set[str] = set()
        for definition in sorted(folder.glob("*.yaml")):
            try:
                bag = _read_bag(definition)
            except SeparationError:
                continue
            used.update(bag["models"])
            files = {sig: _pick(sig, present[sig]) for sig in bag["models"] if sig in present}
            entries.append(entry(definition.stem, "local", "model-dir", folder, bag["models"], files))
        for sig in sorted(set(present) - used):
            entries.append(entry(sig, "local", "model-dir", folder, [sig], {sig: _pick(sig, present[sig])}))
        for name in _published_names():  # published bags whose files are here work without their yaml
            if name in covered or (folder / f"{name}.yaml").exists():
                continue
            source = _find_in(name, folder, urls, "local", "model-dir")
            if source is not None:
                entries.append(entry(name, "local", "model-dir", folder, source.signatures,
                                     dict(zip(source.signatures, source.files))))
    hub = _torch_hub_checkpoints()
    for name in _published_names():
        source = _find_torch_hub(name, urls)
        if source is None and hub.is_dir():
            bag = _bag_for(name, None, urls)
            sigs = bag[0]["models"] if bag else []
            partial = {s: hub / urls[s].rsplit("/", 1)[1] for s in sigs
                       if s in urls and (hub / urls[s].rsplit("/", 1)[1]).is_file()}
            if partial:
                entries.append(entry(name, "cache", "torch-hub", hub, sigs, partial))
        if source is not None:
            entries.append(entry(name, "cache", "torch-hub", hub, source.signatures,
                                 dict(zip(source.signatures, source.files))))
        hf = _find_hf(name)
        if hf is not None:
            entries.append(entry(name, "cache", "huggingface", hf.location, hf.signatures,
                                 dict(zip(hf.signatures, hf.files))))
    for name in _published_names():
        if name not in covered and not any(e["name"] == name for e in entries):
            bag = _bag_for(name, None, urls)
            entries.append(entry(name, None, None, None, bag[0]["models"] if bag else [], {}))
    return entries


# --------------------------------------------------------------------------- loading


def default_device() -> str:
    """``"cuda"`` when torch sees a CUDA device, else ``"cpu"``."""
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def _sha256(path: Path) -> str:
    sha = hashlib.sha256()
    with open(path, "rb") as f:
        for buf in iter(lambda: f.read(1 << 20), b""):
            sha.update(buf)
    return sha.hexdigest()


def _verify(path: Path, url: str | None) -> None:
    """Check a file against the checksum its name carries (demucs' and torch hub's convention)."""
    again = f"; download it again from {url}" if url else "; replace it"
    expected = None
    if path.suffix == ".th" and "-" in path.stem:
        expected = path.stem.rsplit("-", 1)[1]
    elif path.is_symlink() and re.fullmatch(r"[0-9a-f]{64}", path.resolve().name):
        expected = path.resolve().name  # HuggingFace cache blobs are named by their sha256
    if expected:
        actual = _sha256(path)[: len(expected)]
        if actual != expected:
            size = path.stat().st_size
            raise SeparationError(f"{path}: bad checksum (sha256 starts {actual}, the file name says {expected}; "
                                  f"{size} bytes): the file is damaged or truncated{again}")


def _load_one(path: Path, url: str | None):
    _verify(path, url)
    again = f"; download it again from {url}" if url else ""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if path.suffix == ".safetensors":
                from demucs.hf import load_safetensors_model

                return load_safetensors_model(path)
            from demucs.states import load_model

            return load_model(path)
    except SystemExit:  # demucs.states calls sys.exit when a quantised model needs diffq
        raise SeparationError(f"{path}: a quantised model: it needs the diffq package (pip install diffq)") from None
    except Exception as err:  # noqa: BLE001 - torch.load fails in many ways on a bad file
        raise SeparationError(f"{path}: not a readable demucs model ({one_line(err)}){again}") from None


def _load_bag(source: ModelSource):
    from demucs.apply import BagOfModels

    urls = _remote_files()
    # Belt and braces: no hub library may reach the network while a model loads.
    with environment({"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}):
        models = [_load_one(path, urls.get(sig)) for sig, path in zip(source.signatures, source.files)]
    try:
        bag = BagOfModels(models, source.weights, source.segment)
    except AssertionError:
        raise SeparationError(f"{source.definition or source.files[0]}: the bag's models do not match "
                              "(sources, sample rate, channels or weights)") from None
    bag.eval()
    return bag


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


class DemucsSeparator:
    """Separation with a demucs model, loaded once and reused for every track.

    Parameters
    ----------
    model : str
        Model (bag) name or signature; see :func:`find_model`.
    model_dir : str or Path, optional
        Model folder; default ``$ATE_MODEL_DIR``, then demucs' caches.
    device : str, optional
        torch device (``"cpu"``, ``"cuda"``, ``"cuda:1"``); default
        :func:`default_device`. On the CPU, torch uses every core the process
        may run on unless ``ATE_THREADS``, ``OMP_NUM_THREADS`` or
        ``MKL_NUM_THREADS`` is set (``ATE_THREADS`` sets the count).
    shifts : int
        Random time shifts (0-0.5 s) averaged; 0 is deterministic, each one
        more costs a full pass.
    overlap : float
        Overlap of consecutive segments, 0 <= overlap < 1.
    segment : float, optional
        Segment length in seconds; default the model's (7.8 s for htdemucs),
        which is also its maximum.
    jobs : int
        Segments run in parallel threads on the CPU (demucs' ``-j``); 0 runs
        them one after another, each using all torch threads.

    Raises
    ------
    SeparationError
        Weights missing or damaged, device not available, bad settings.
    """

    def __init__(self, model: str = "htdemucs", model_dir: str | Path | None = None, device: str | None = None,
                 shifts: int = 1, overlap: float = 0.25, segment: float | None = None, jobs: int = 0):
        if int(shifts) != shifts or shifts < 0:
            raise SeparationError(f"{model}: shifts must be a whole number >= 0, got {shifts}")
        if not 0.0 <= float(overlap) < 1.0:
            raise SeparationError(f"{model}: overlap must be within [0, 1), got {overlap}")
        if int(jobs) != jobs or jobs < 0:
            raise SeparationError(f"{model}: jobs must be a whole number >= 0, got {jobs}")
        if segment is not None and not float(segment) > 0:
            raise SeparationError(f"{model}: segment must be positive, got {segment} s")
        self.model_name = model
        self.name = f"demucs:{model}"
        self.shifts, self.overlap, self.jobs = int(shifts), float(overlap), int(jobs)
        self.source = find_model(model, model_dir)

        import torch

        self.device = device or default_device()
        try:
            dev = torch.device(self.device)
        except (RuntimeError, TypeError) as err:
            raise SeparationError(f"{model}: bad device {self.device!r} ({one_line(err)})") from None
        if dev.type == "cuda" and not torch.cuda.is_available():
            raise SeparationError(f"{model}: device {self.device!r} asked for, but torch sees no CUDA device")
        if dev.type == "mps" and not torch.backends.mps.is_available():
            raise SeparationError(f"{model}: device {self.device!r} asked for, but MPS is not available")
        if dev.type == "cpu" and not any(os.environ.get(k) for k in _THREAD_ENV):
            torch.set_num_threads(_cores())
        elif os.environ.get("ATE_THREADS"):
            torch.set_num_threads(max(1, int(os.environ["ATE_THREADS"])))
        self.threads = torch.get_num_threads()

        started = time.perf_counter()
        self._model = _load_bag(self.source)
        self.load_s = time.perf_counter() - started
        """Seconds spent reading and building the model."""
        self.sources: list[str] = list(self._model.sources)
        self.max_segment_s = float(self._model.max_allowed_segment)
        if self._model.samplerate != SAMPLE_RATE or self._model.audio_channels != 2:
            raise SeparationError(f"{model}: the model works on {self._model.audio_channels} channels at "
                                  f"{self._model.samplerate} Hz; ATE needs stereo at {SAMPLE_RATE} Hz")
        if segment is not None and float(segment) > self.max_segment_s:
            raise SeparationError(f"{model}: segment {float(segment):g} s is longer than the model's maximum of "
                                  f"{self.max_segment_s:g} s (a transformer model cannot run on longer segments "
                                  "than it was trained on)")
        self.segment = None if segment is None else float(segment)
        self._index = [STEM_NAMES.index(s) if s in STEM_NAMES else _OTHER for s in self.sources]

    def __repr__(self) -> str:
        return (f"DemucsSeparator({self.model_name!r}, {self.source.kind}: {self.source.location}, "
                f"device={self.device!r}, shifts={self.shifts}, overlap={self.overlap}, segment={self.segment})")

    def separate(self, samples: np.ndarray, progress: Callable[[float], None] | None = None) -> np.ndarray:
        """Split a mix into drums, bass, vocals and other.

        Parameters
        ----------
        samples : np.ndarray
            float32 ``(frames, 2)`` at 44100 Hz.
        progress : callable, optional
            Called with the fraction done (0..1) after each segment; an
            exception raised from it stops the separation and propagates.

        Returns
        -------
        np.ndarray
            float32 ``(4, frames, 2)`` in :data:`STEM_NAMES` order, not
            folded. A model with more sources (htdemucs_6s) has its extra
            ones (guitar, piano) added into "other".
        """
        import torch
        from demucs.apply import apply_model

        x = _check_mix(samples)
        frames = x.shape[0]
        stems = np.zeros((len(STEM_NAMES), frames, 2), np.float32)
        if frames == 0:
            return stems
        wav = torch.from_numpy(np.ascontiguousarray(x.T))
        # demucs.api.Separator.separate_tensor, verbatim: normalise by the mono mix's mean and std.
        ref = wav.mean(0)
        mean = ref.mean()
        std = ref.std() + 1e-8
        callback = self._progress_callback(progress, frames) if progress is not None else None
        out = apply_model(self._model, ((wav - mean) / std)[None], segment=self.segment, shifts=self.shifts,
                          split=True, overlap=self.overlap, device=self.device, num_workers=self.jobs,
                          callback=callback, callback_arg={"audio_length": frames}, progress=False)
        out = (out * std + mean)[0].cpu().numpy()
        for i, k in enumerate(self._index):
            stems[k] += out[i].T
        if progress is not None:
            progress(1.0)
        return stems

    def _progress_callback(self, progress: Callable[[float], None], frames: int) -> Callable[[dict], None]:
        passes = max(1, self.shifts)
        n_models = len(self._model.models)
        segment_s = self.segment or min(self.max_segment_s, float(self._model.models[0].segment))
        segment_n = int(SAMPLE_RATE * segment_s)
        length = frames + (int(0.5 * SAMPLE_RATE) if self.shifts else 0)  # apply_model pads shifted passes
        best = [0.0]

        def callback(info: dict) -> None:
            if info.get("state") != "end":
                return
            within = min(1.0, (info.get("segment_offset", 0) + segment_n) / length)
            done = (info.get("model_idx_in_bag", 0) * passes + info.get("shift_idx", 0) + within) / (n_models * passes)
            if done > best[0]:  # segments may finish out of order with jobs > 0
                best[0] = done
                progress(min(done, 1.0))

        return callback


def _check_mix(samples: np.ndarray) -> np.ndarray:
    x = np.asarray(samples)
    if x.ndim != 2 or x.shape[1] != 2:
        raise ValueError(f"mix must be shaped (frames, 2), got {x.shape}")
    x = x.astype(np.float32, copy=False)
    if not np.all(np.isfinite(x)):
        raise ValueError("mix contains NaN or infinite samples")
    return x


# --------------------------------------------------------------------------- the residual fold


def fold_residual(mix: np.ndarray, stems: np.ndarray, rule: str = "spectral") -> np.ndarray:
    """Make stems sum to the mix by sharing out the residual ``mix - sum(stems)``.

    Rules
    -----
    ``"spectral"`` (default)
        The residual is taken to the STFT domain (4096-point periodic
        sqrt-Hann windows, hop 2048, per channel). In every bin it is split
        among the four stems in proportion to each stem's magnitude in that
        bin, ``|S_k| / sum_j |S_j|`` (a soft mask, like a Wiener split with
        exponent 1), so a stem receives residual where it is loud. Bins where
        all stems together are below a -120 dBFS sinusoid give their residual
        to "other". Drums, bass and vocals get their share back by inverse
        STFT (weighted overlap-add); "other" is then set to
        ``mix - drums - bass - vocals``, which is "other" plus its share plus
        the tiny remainder of the inverse STFT, so the sum is exact to float32
        rounding (about -140 dBFS peak).
    ``"other"``
        The whole residual is added to "other" (also exact).
    ``"none"``
        The stems are returned unchanged (as float32).

    Parameters
    ----------
    mix : np.ndarray
        ``(frames, 2)``.
    stems : np.ndarray
        ``(4, frames, 2)`` in :data:`STEM_NAMES` order.
    rule : str
        One of :data:`FOLD_RULES`.

    Returns
    -------
    np.ndarray
        float32 ``(4, frames, 2)``; a new array.

    Notes
    -----
    Cost: 16 real FFTs of 4096 points per 2048 frames (10 forward: four
    stems and the residual, two channels; 6 inverse), in blocks of 128 STFT
    frames, so memory beyond the input and output copies stays small; about
    half a second per minute of audio on two cores (``ate bench separate``).
    """
    if rule not in FOLD_RULES:
        raise ValueError(f"unknown fold rule {rule!r}; expected one of {', '.join(FOLD_RULES)}")
    m = _check_mix(mix)
    s = np.asarray(stems)
    if s.ndim != 3 or s.shape[0] != len(STEM_NAMES) or s.shape[2] != 2:
        raise ValueError(f"stems must be shaped (4, frames, 2) in {STEM_NAMES} order, got {s.shape}")
    if s.shape[1] != m.shape[0]:
        raise ValueError(f"stems have {s.shape[1]} frames, the mix {m.shape[0]}")
    out = np.array(s, dtype=np.float32, copy=True)
    if rule == "none" or m.shape[0] == 0:
        return out
    if rule == "spectral":
        _spectral_shares(m, s, out)
    keep = [k for k in range(len(STEM_NAMES)) if k != _OTHER]
    rest = out[keep[0]].copy()
    for k in keep[1:]:
        rest += out[k]
    np.subtract(m, rest, out=out[_OTHER])
    return out


def _spectral_shares(mix: np.ndarray, stems: np.ndarray, out: np.ndarray, n_fft: int = FOLD_N_FFT,
                     hop: int = FOLD_HOP, block: int = 128) -> None:
    """Add to drums, bass and vocals in ``out`` their magnitude-proportional share of the residual, in place.

    ``stems`` (unchanged) gives the masks and the residual; ``out`` starts as its copy.
    """
    from scipy import fft as sp_fft

    assert _OTHER == len(STEM_NAMES) - 1 and n_fft % hop == 0
    n_keep = len(STEM_NAMES) - 1
    frames = mix.shape[0]
    window = np.sqrt(0.5 - 0.5 * np.cos(2 * np.pi * np.arange(n_fft) / n_fft)).astype(np.float32)
    synthesis = (window * hop / float(np.sum(window ** 2))).astype(np.float32)  # shifted w**2 sum to n_fft/2/hop
    floor = np.float32(10 ** (FOLD_SILENCE_DBFS / 20) * window.sum() / 2)
    workers = _cores()
    ratio = n_fft // hop
    pad = n_fft - hop  # the first frame ends at sample ``hop``: every sample lies in ``ratio`` frames
    n_frames = (frames + pad) // hop + 1
    for f0 in range(0, n_frames, block):
        f1 = min(n_frames, f0 + block)
        n = f1 - f0
        start = f0 * hop - pad
        stop = start + (n + ratio - 1) * hop
        lo, hi = max(start, 0), min(stop, frames)
        seg = np.zeros((len(STEM_NAMES) + 1, 2, n + ratio - 1, hop), np.float32)
        flat = seg.reshape(len(STEM_NAMES) + 1, 2, -1)[:, :, lo - start:hi - start]
        flat[:-1] = stems[:, lo:hi].transpose(0, 2, 1)
        np.subtract(mix[lo:hi].T, flat[:-1].sum(axis=0), out=flat[-1])
        # frame i is hop-blocks i .. i+ratio-1 of the segment, windowed
        framed = np.empty((len(STEM_NAMES) + 1, 2, n, ratio, hop), np.float32)
        for j in range(ratio):
            np.multiply(seg[:, :, j:j + n], window[j * hop:(j + 1) * hop], out=framed[:, :, :, j])
        spec = sp_fft.rfft(framed.reshape(len(STEM_NAMES) + 1, 2, n, n_fft), axis=-1, workers=workers)
        mag = np.abs(spec[:-1])
        total = mag.sum(axis=0)
        gain = np.where(total > floor, np.float32(1) / np.maximum(total, floor), np.float32(0))
        residual = spec[-1]
        residual *= gain
        shares = mag[:n_keep] * residual
        frames_out = sp_fft.irfft(shares, n=n_fft, axis=-1, workers=workers)
        frames_out *= synthesis
        parts = frames_out.reshape(n_keep, 2, n, ratio, hop)
        acc = np.zeros((n_keep, 2, n + ratio - 1, hop), np.float32)
        for j in range(ratio):
            acc[:, :, j:j + n] += parts[:, :, :, j]
        acc = acc.reshape(n_keep, 2, -1)
        for k in range(n_keep):
            out[k, lo:hi] += acc[k, :, lo - start:hi - start].T


def fold_error(mix: np.ndarray, stems: np.ndarray) -> tuple[float, float]:
    """How far the stems' sum is from the mix.

    Returns
    -------
    peak_error_dbfs : float
        ``20 log10 max |mix - sum(stems)|`` (-inf when exact).
    error_energy_db : float
        Energy of the error relative to the mix's energy, in dB.
    """
    m = np.asarray(mix, dtype=np.float64)
    err = m.copy()
    for stem in stems:  # one stem at a time: a six-minute track stays light
        err -= stem
    peak = float(np.max(np.abs(err))) if err.size else 0.0
    energy = float(np.sum(err ** 2))
    ref = float(np.sum(m ** 2))
    with np.errstate(divide="ignore"):
        return float(20 * np.log10(peak)), float(10 * np.log10(energy / ref)) if ref > 0 else float("-inf")


def separate_track(samples: np.ndarray, separator: Separator, fold: str = "spectral",
                   progress: Callable[[float], None] | None = None) -> np.ndarray:
    """Separate a mix and fold the residual back in, so the stems sum to the mix.

    Parameters
    ----------
    samples : np.ndarray
        float32 ``(frames, 2)`` at 44100 Hz.
    separator : Separator
        e.g. :class:`DemucsSeparator`.
    fold : str
        Residual rule, see :func:`fold_residual`.
    progress : callable, optional
        Receives the separation's fraction done, 0..1.

    Returns
    -------
    np.ndarray
        float32 ``(4, frames, 2)`` in :data:`STEM_NAMES` order.
    """
    if fold not in FOLD_RULES:
        raise ValueError(f"unknown fold rule {fold!r}; expected one of {', '.join(FOLD_RULES)}")
    mix = _check_mix(samples)
    stems = separator.separate(mix, progress)
    if stems.shape != (len(STEM_NAMES),) + mix.shape:
        raise SeparationError(f"{getattr(separator, 'name', separator)}: returned stems shaped {stems.shape}, "
                              f"expected {(len(STEM_NAMES),) + mix.shape}")
    return fold_residual(mix, stems, fold)


# -- choosing a separator --------------------------------------------------------


@dataclass(frozen=True)
class SeparatorChoice:
    """A separator picked by kind and options; small and picklable, built where it runs.

    The crate pipeline sends this to each worker process, which builds the
    separator once (loading a demucs model once per worker).
    """

    kind: str                                    # "demucs" or "dsp"
    options: dict = field(default_factory=dict)  # DemucsSeparator keyword arguments

    @property
    def name(self) -> str:
        """What the crate records as the stems' origin: ``"dsp"`` or ``"demucs:MODEL"``."""
        if self.kind == "demucs":
            return f"demucs:{self.options.get('model', 'htdemucs')}"
        return self.kind

    def build(self) -> Separator:
        """The separator itself (for demucs this loads the model)."""
        if self.kind == "demucs":
            return DemucsSeparator(**self.options)
        if self.kind == "dsp":
            from prep.dsp_separate import DspSeparator

            return DspSeparator()
        raise ValueError(f"unknown separator {self.kind!r}")

    def default_workers(self) -> int:
        """Parallel prep workers that suit this separator on this machine.

        demucs on the CPU already uses every core, so one worker; on a GPU two
        workers let one track's separation overlap another's CPU analysis.
        The DSP separator is single-threaded: one worker per core.
        """
        cores = os.cpu_count() or 1
        if self.kind != "demucs":
            return cores
        device = self.options.get("device") or default_device()
        return min(2, cores) if device.startswith("cuda") else 1


SEPARATOR_KINDS = ("auto", "demucs", "dsp")
"""What ``--separator`` accepts."""


def choose_separator(kind: str = "auto", *, model: str = "htdemucs", model_dir: str | Path | None = None,
                     device: str | None = None, shifts: int = 1, overlap: float = 0.25,
                     segment: float | None = None,
                     warn: Callable[[str], None] | None = None) -> SeparatorChoice:
    """Pick the separator for a run, checking that it can work before any track starts.

    Parameters
    ----------
    kind : {"auto", "demucs", "dsp"}
        ``auto`` takes demucs when the model's weights are found (see
        :func:`find_model`) and otherwise falls back to ``dsp``, saying so
        through ``warn``. ``demucs`` without weights raises.
    model, model_dir, device, shifts, overlap, segment
        demucs settings, see :class:`DemucsSeparator`.
    warn : callable, optional
        Receives the fallback notice; default: print it to stderr.

    Raises
    ------
    SeparationError
        ``kind="demucs"`` and the weights are missing or unreadable.
    """
    if kind not in SEPARATOR_KINDS:
        raise ValueError(f"unknown separator {kind!r}; expected one of {', '.join(SEPARATOR_KINDS)}")
    if kind == "dsp":
        return SeparatorChoice("dsp")
    options = {"model": model, "model_dir": str(model_dir) if model_dir else None, "device": device,
               "shifts": shifts, "overlap": overlap, "segment": segment}
    try:
        find_model(model, model_dir)
    except SeparationError as err:
        if kind == "demucs":
            raise
        notice = (f"WARNING: demucs is not available ({err}). Falling back to the DSP separator: its stems "
                  f"are far rougher than demucs'. Provide the weights and run prep again to redo them.")
        (warn or (lambda text: print(text, file=sys.stderr)))(notice)
        return SeparatorChoice("dsp")
    return SeparatorChoice("demucs", options)
