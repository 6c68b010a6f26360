"""The compiled artefact: every compiled graph of a worker, packed to start another worker in seconds.

A worker that built all its graphs writes `compiled-<key>.bin` (PyTorch's portable cache
artefacts: Inductor's graphs, AOTAutograd's and Triton's kernels and autotuning, none of it tied to a
path) and `compiled-<key>.json` (the key and the sizes it holds) into its compile cache. A worker on
a fresh machine with that directory (a copied folder, a volume, a bucket mounted by the cluster)
loads it before compiling, and its compiles become cache reads. `gpuroam worker --build-cache`
builds one ahead, once per GPU type.

The key is everything the kernels depend on: the GPU architecture, torch, CUDA and Triton versions,
the model's architecture and dtype, the compile mode and the batch sizes. An artefact with another
key is refused with a log line naming what differs, and the worker compiles as without one.
PyTorch's own cache keys and the graphs' check against the eager modules (worker/graphs.py) stand
behind that: no kernel built for something else is ever run.
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

FORMAT = 1


@dataclass(frozen=True)
class ArtefactKey:
    device: str  # "cuda sm_90", or "cpu x86_64 avx512"
    torch: str
    cuda: str | None
    triton: str | None
    python: str
    model: str  # sha256 of the architecture (configs, dtype, layout), not of the weights
    compile_mode: str
    buckets: tuple[int, ...]
    dynamic_batch: bool
    format: int = FORMAT

    @property
    def digest(self) -> str:
        return hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:16]


@dataclass(frozen=True)
class Artefact:
    key: ArtefactKey
    sizes: tuple[tuple[int, int], ...]  # the image sizes its graphs cover, most useful first
    path: Path


def artefact_key(model: LoadedModel, compile_mode: str, buckets: tuple[int, ...], dynamic_batch: bool) -> ArtefactKey:
    return ArtefactKey(
        device=_device_architecture(model.device),
        torch=torch.__version__,
        cuda=torch.version.cuda,
        triton=_triton_version(),
        python=platform.python_version(),
        model=model_architecture(model),
        compile_mode=compile_mode,
        buckets=tuple(buckets),
        dynamic_batch=dynamic_batch,
    )


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
    """Pack what this process compiled into `cache_dir`; None when it compiled nothing."""
    saved = torch.compiler.save_cache_artifacts()
    if saved is None or not saved[0]:
        return None
    data = saved[0]
    stem = cache_dir / f"compiled-{key.digest}"
    manifest = {
        "key": asdict(key),
        "sizes": [list(size) for size in sizes],
        "sha256": hashlib.sha256(data).hexdigest(),
        "bytes": len(data),
    }
    cache_dir.mkdir(parents=True, exist_ok=True)
    _write_atomically(stem.with_suffix(".bin"), data)
    _write_atomically(stem.with_suffix(".json"), json.dumps(manifest, indent=2).encode())
    log.info("compiled artefact written", extra={"path": str(stem.with_suffix(".bin")), "bytes": len(data)})
    return stem.with_suffix(".bin")


def load_artefact(cache_dir: Path, key: ArtefactKey) -> Artefact | None:
    """Load the artefact for `key` from `cache_dir` into PyTorch's caches; refuse any other, saying why."""
    found = None
    for manifest_path in sorted(cache_dir.glob("compiled-*.json")):
        try:
            manifest = json.loads(manifest_path.read_text())
            theirs = ArtefactKey(**{**manifest["key"], "buckets": tuple(manifest["key"]["buckets"])})
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
    data_path = manifest_path.with_suffix(".bin")
    try:
        data = data_path.read_bytes()
        if hashlib.sha256(data).hexdigest() != manifest["sha256"]:
            raise ValueError("its sha256 does not match the manifest (cut short or changed)")
        torch.compiler.load_cache_artifacts(data)
    except Exception as error:  # noqa: BLE001 - a broken artefact costs a compile, never the worker
        log.warning(
            "compiled artefact refused; compiling instead", extra={"path": str(data_path), "error": repr(error)}
        )
        return None
    sizes = tuple((int(w), int(h)) for w, h in manifest.get("sizes", []))
    log.info("compiled artefact loaded", extra={"path": str(data_path), "bytes": len(data), "sizes": len(sizes)})
    return Artefact(key=theirs, sizes=sizes, path=data_path)


def _differences(theirs: ArtefactKey, ours: ArtefactKey) -> dict[str, list[Any]]:
    mine = asdict(ours)
    return {field: [value, mine[field]] for field, value in asdict(theirs).items() if value != mine[field]}


def _write_atomically(path: Path, data: bytes) -> None:
    """Other replicas may read the same volume: they see the old file or the whole new one."""
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    temporary.write_bytes(data)
    os.replace(temporary, path)
