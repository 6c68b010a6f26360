"""The compiled artefact: every compiled graph of a worker, kept to start another worker in seconds.

The compile process writes each graph as a package (worker/aot.py) into `compiled-<key>/` in the
compile cache, and the worker writes `compiled-<key>.json` (the key and the image sizes the packages
cover) once all its planned graphs are built. A worker on a fresh machine with that directory (a
copied folder, a volume, a bucket mounted by the cluster) plans those sizes at start and loads their
packages instead of compiling: opening a shared library each, no tracing. `gpuroam worker
--build-cache` builds one ahead, once per GPU type.

The key is everything the kernels depend on: the GPU architecture, torch, CUDA and Triton versions,
the model's architecture and dtype, and how the graphs are compiled. Packages of another key live in
another directory and are never read; an artefact with another key is refused with a log line naming
what differs. Each package also lists the tensors it reads and is checked against them and against the
eager module before use (worker/aot.py, worker/graphs.py): no kernel built for something else is run.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import platform
from dataclasses import asdict, dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import torch

from gpuroam.worker.models import LoadedModel

log = logging.getLogger("gpuroam.worker.artefact")

FORMAT = 2  # 1: PyTorch's cache artefacts in one file; 2: a directory of packages


@dataclass(frozen=True)
class ArtefactKey:
    device: str  # "cuda sm_90", or "cpu x86_64 avx512"
    torch: str
    cuda: str | None
    triton: str | None
    python: str
    model: str  # sha256 of the architecture (configs, dtype, layout), not of the weights
    compiler: str  # "inductor default", "inductor max-autotune", or "eager" (the CPU tests' packages)
    format: int = FORMAT

    @property
    def digest(self) -> str:
        return hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:16]


@dataclass(frozen=True)
class Artefact:
    key: ArtefactKey
    sizes: tuple[tuple[int, int], ...]  # the image sizes its graphs cover, most useful first
    path: Path  # the directory of its packages


def artefact_key(model: LoadedModel, compiler: str) -> ArtefactKey:
    return ArtefactKey(
        device=_device_architecture(model.device),
        torch=torch.__version__,
        cuda=torch.version.cuda,
        triton=_triton_version(),
        python=platform.python_version(),
        model=model_architecture(model),
        compiler=compiler,
    )


def packages_dir(cache_dir: Path, key: ArtefactKey) -> Path:
    """Where the packages of `key` are written and read."""
    return cache_dir / f"compiled-{key.digest}"


def model_architecture(model: LoadedModel) -> str:
    """The modules' configurations, dtype and memory layout: what the compiled graphs are built for."""
    configs: dict[str, Any] = {"dtype": str(model.dtype)}
    for name, component in sorted(model.pipeline.components.items()):
        config = getattr(component, "config", None)
        if isinstance(component, torch.nn.Module) and config is not None:
            values = config.to_dict() if hasattr(config, "to_dict") else dict(config)
            configs[name] = {k: v for k, v in values.items() if not k.startswith("_")}
            configs[name]["__class__"] = type(component).__name__
    return hashlib.sha256(json.dumps(configs, sort_keys=True, default=str).encode()).hexdigest()


def _device_architecture(device: torch.device) -> str:
    if device.type == "cuda":
        major, minor = torch.cuda.get_device_capability(device)
        return f"cuda sm_{major}{minor}"
    from torch._inductor.cpu_vec_isa import pick_vec_isa

    return f"cpu {platform.machine()} {pick_vec_isa()}"


def _triton_version() -> str | None:
    try:
        return version("triton")
    except PackageNotFoundError:  # no GPU build of torch here
        return None


def save_artefact(cache_dir: Path, key: ArtefactKey, sizes: list[tuple[int, int]]) -> Path | None:
    """Record the sizes the packages of `key` in `cache_dir` cover; None when no package was built."""
    directory = packages_dir(cache_dir, key)
    packages = sorted(directory.glob("*.pt2")) if directory.is_dir() else []
    if not packages:
        return None
    manifest = {
        "key": asdict(key),
        "sizes": [list(size) for size in sizes],
        "packages": len(packages),
        "bytes": sum(path.stat().st_size for path in packages),
    }
    path = directory.with_suffix(".json")
    write_atomically(path, json.dumps(manifest, indent=2).encode())
    log.info("compiled artefact written", extra={"path": str(directory), "packages": len(packages)})
    return directory


def load_artefact(cache_dir: Path, key: ArtefactKey) -> Artefact | None:
    """The artefact for `key` in `cache_dir`, if any; every other one is refused, saying why."""
    found = None
    for manifest_path in sorted(cache_dir.glob("compiled-*.json")):
        try:
            manifest = json.loads(manifest_path.read_text())
            theirs = ArtefactKey(**manifest["key"])
        except (OSError, ValueError, TypeError, KeyError) as error:
            log.warning(
                "compiled artefact unreadable; ignored", extra={"path": str(manifest_path), "error": repr(error)}
            )
            continue
        if theirs != key:
            log.warning(
                "compiled artefact refused: built for something else; compiling instead",
                extra={"path": str(manifest_path), "differs": _differences(theirs, key)},
            )
            continue
        found = (manifest_path, manifest, theirs)
    if found is None:
        return None
    manifest_path, manifest, theirs = found
    sizes = tuple((int(w), int(h)) for w, h in manifest.get("sizes", []))
    directory = packages_dir(cache_dir, theirs)
    log.info("compiled artefact found", extra={"path": str(directory), "sizes": len(sizes)})
    return Artefact(key=theirs, sizes=sizes, path=directory)


def _differences(theirs: ArtefactKey, ours: ArtefactKey) -> dict[str, list[Any]]:
    mine = asdict(ours)
    return {field: [value, mine[field]] for field, value in asdict(theirs).items() if value != mine[field]}


def write_atomically(path: Path, data: bytes) -> None:
    """Other replicas may read the same volume: they see the old file or the whole new one."""
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    temporary.write_bytes(data)
    os.replace(temporary, path)
