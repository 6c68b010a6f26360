"""Compiled graphs built ahead of time in another process, loaded here without tracing.

A package holds one module's graph for one call signature, without the weights: the weights are the
serving module's own tensors, handed over by reference, so in-place weight writes (a LoRA merged, a
checkpoint switched, an embedding written in) reach the package as they reach the eager module.

- `inductor`: an AOTInductor package (`.pt2`): the kernels and the code that launches them. Loading
  it opens a shared library (milliseconds, no Python tracing, no GIL held for minutes).
- `eager`: the exported program alone, run by PyTorch's eager kernels: what the CPU tests use to
  check the whole path (export, hand-over, check, use) in seconds instead of a C++ compile each.

Compiling in the serving process held the interpreter for minutes: on an H100 an eager forward
beside a compiling thread took 574x as long (bench/gil_convoy.py), and no compiled graph was ready
after 270 s under load (bench/RESULTS.md, issue 23). The compile process (worker/compile_process.py)
calls `export`; the serving process calls `load`.

Beside each package, `<package>.json` lists the tensors it reads (name, shape, dtype): a module whose
tensors differ (a resized token table, another architecture) is refused before anything runs.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch

from gpuroam.worker.artefact import write_atomically
from gpuroam.worker.graphs import Inputs, Runner

BACKENDS = ("inductor", "eager")
# Inductor's settings for every package: the weights stay out of it (they are the serving module's), and
# what Inductor derives from them (a bias reshaped, a weight transposed) is derived when the package runs,
# not frozen at compile time: folded at compile time, such a copy kept the compile process's values and
# missed every later write in place.
_PACKAGE_CONFIG: dict[str, Any] = {
    "aot_inductor.package_constants_in_so": False,
    "aot_inductor.use_runtime_constant_folding": True,
}
_FOLDED = "_FOLDED_CONST_"  # the constants a package derives itself


class PackageMismatch(KeyError):
    """A package built for other tensors than the module's: it is never used."""


def export(module: torch.nn.Module, example: Inputs, path: Path, backend: str, max_autotune: bool = False) -> Path:
    """Export `module` as called with `example` and write its package to `path` (whole or not at all:
    other replicas may read the same volume), with the list of tensors it reads beside it."""
    args, kwargs = example
    with torch.no_grad():
        program = torch.export.export(module, args, kwargs, strict=False)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.stem}.{os.getpid()}.tmp.pt2")
    if backend == "inductor":
        from torch._inductor import aoti_compile_and_package

        configs = {**_PACKAGE_CONFIG, "max_autotune": max_autotune}
        aoti_compile_and_package(program, package_path=str(temporary), inductor_configs=configs)
    elif backend == "eager":
        torch.export.save(program, str(temporary))
    else:
        raise ValueError(f"backend {backend!r}: use one of {', '.join(BACKENDS)}")
    write_atomically(_manifest_path(path), json.dumps(_tensor_list(module), sort_keys=True).encode())
    os.replace(temporary, path)
    return path


def load(path: Path, module: torch.nn.Module, backend: str) -> Runner:
    """The package at `path`, run on `module`'s own tensors. Raises PackageMismatch when the package
    reads tensors the module lacks or has in another shape or dtype."""
    tensors = _tensors(module)
    _check_tensors(path, tensors)
    if backend == "eager":
        graph = torch.export.load(str(path)).module()

        def run(*args: Any, **kwargs: Any) -> Any:
            return torch.func.functional_call(graph, tensors, args, kwargs, strict=False)

        return run
    from torch._inductor import aoti_load_package

    compiled = aoti_load_package(str(path))
    wanted = [name for name in compiled.get_constant_fqns() if not name.startswith(_FOLDED)]
    missing = [name for name in wanted if name not in tensors]
    if missing:
        raise PackageMismatch(f"{path.name} reads tensors the module lacks: {', '.join(missing[:3])}")
    compiled.load_constants({name: tensors[name] for name in wanted}, check_full_update=False, user_managed=True)
    runner: Runner = compiled
    return runner


def _tensors(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return dict(module.named_parameters()) | dict(module.named_buffers())


def _tensor_list(module: torch.nn.Module) -> dict[str, list[Any]]:
    return {name: [list(tensor.shape), str(tensor.dtype)] for name, tensor in _tensors(module).items()}


def _manifest_path(path: Path) -> Path:
    return path.with_name(f"{path.name}.json")


def _check_tensors(path: Path, tensors: dict[str, torch.Tensor]) -> None:
    try:
        built_for = json.loads(_manifest_path(path).read_text())
    except (OSError, ValueError) as error:
        raise PackageMismatch(f"{path.name}: its tensor list is missing or unreadable ({error})") from error
    differs = [
        name
        for name, (shape, dtype) in built_for.items()
        if name not in tensors or list(tensors[name].shape) != shape or str(tensors[name].dtype) != dtype
    ]
    if differs:
        raise PackageMismatch(f"{path.name} was built for other tensors: {', '.join(sorted(differs)[:3])}")
