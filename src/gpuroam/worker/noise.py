"""Per-image noise reaches the GPU without stalling it.

Every sampler that adds noise (Euler a, DPM2 a, DDIM with eta, the SDE solvers) draws it per image
from CPU generators, so an image depends on its seed alone, whatever GPU renders it. diffusers
moves that noise with a blocking `.to(device)`, and PyTorch makes a blocking host-to-device copy
wait until the GPU has finished everything queued: each sampling step then holds the CPU until
the GPU is idle, and the next step's kernels are queued only after that instead of while the
GPU works. With CUDA graphs at batch 1 a step is a few milliseconds, so the stall is a large part
of it.

`overlapped_noise_copies()` swaps diffusers' `randn_tensor`, in the modules a batch uses, for
one that draws the same numbers in the same order and copies them through pinned memory without
blocking (the pinned block is not reused until the copy is done: PyTorch's host allocator records
the copy). The images do not change.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable, Iterator

import torch
from diffusers.utils import torch_utils

_DIFFUSERS_RANDN: Callable[..., torch.Tensor] = torch_utils.randn_tensor  # diffusers leaves its return type out


def randn_tensor_without_sync(
    shape: tuple[int, ...] | list[int],
    generator: torch.Generator | list[torch.Generator] | None = None,
    device: str | torch.device | None = None,
    dtype: torch.dtype | None = None,
    layout: torch.layout | None = None,
) -> torch.Tensor:
    """diffusers' `randn_tensor`; when CPU generators feed a CUDA tensor, the copy does not block."""
    target = torch.device(device) if isinstance(device, str) else device
    if target is None or target.type != "cuda" or not _on_cpu(generator):
        return _DIFFUSERS_RANDN(shape, generator=generator, device=device, dtype=dtype, layout=layout)
    drawn = _DIFFUSERS_RANDN(shape, generator=generator, device=torch.device("cpu"), dtype=dtype, layout=layout)
    return drawn.pin_memory().to(target, non_blocking=True)


def _on_cpu(generator: torch.Generator | list[torch.Generator] | None) -> bool:
    first = generator[0] if isinstance(generator, list) else generator
    return first is not None and first.device.type == "cpu"


@contextlib.contextmanager
def overlapped_noise_copies(*users: object) -> Iterator[None]:
    """Within the block, the diffusers modules that define `users`' classes (the pipeline and its
    scheduler, base classes included) draw noise with `randn_tensor_without_sync`.

    Scoped to the objects a batch runs rather than installed once, because diffusers imports its
    schedulers lazily: a module loaded later would keep the blocking copy."""
    names = {cls.__module__ for user in users for cls in type(user).__mro__ if cls.__module__.startswith("diffusers.")}
    modules = [
        module
        for name in names
        if (module := sys.modules.get(name)) is not None and getattr(module, "randn_tensor", None) is _DIFFUSERS_RANDN
    ]
    for module in modules:
        module.randn_tensor = randn_tensor_without_sync  # type: ignore[attr-defined]  # patching diffusers
    try:
        yield
    finally:
        for module in modules:
            module.randn_tensor = _DIFFUSERS_RANDN  # type: ignore[attr-defined]  # patching diffusers
