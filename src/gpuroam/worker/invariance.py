"""Batch invariance on the CPU: an image's bytes must not depend on what it was batched with.

Four CPU kernels compute a sample differently depending on the batch around it: oneDNN
convolutions (a separate path for batch 1), NNPACK convolutions (used from batch 16), PyTorch's
channels-last convolution, and small matrix products (BLAS picks kernels by row count). With
oneDNN and NNPACK off, PyTorch's own convolution on contiguous input loops over samples; here
every convolution gets contiguous input and every Linear layer runs one sample at a time. Measured on the
tiny model: bit-identical images for every batch composition, at some CPU speed.

On CUDA this is not applied: cuBLAS and cuDNN choose kernels by shape, so batched images match
unbatched ones within a tolerance rather than bit for bit, and speed matters more there.
"""

from __future__ import annotations

import functools
from typing import cast

import torch
import torch.nn.functional as F


def use_batch_invariant_cpu_kernels() -> None:
    """Process-wide: turn off the CPU convolution backends whose result depends on batch size."""
    torch.backends.mkldnn.enabled = False  # type: ignore[assignment]  # torch declares the flag as its ContextProp descriptor
    torch.backends.nnpack.set_flags(False)  # type: ignore[no-untyped-call]  # unannotated in torch


def _per_sample_linear(layer: torch.nn.Linear, x: torch.Tensor) -> torch.Tensor:
    if x.dim() < 2 or x.shape[0] == 1:
        return F.linear(x, layer.weight, layer.bias)
    return torch.cat([F.linear(x[i : i + 1], layer.weight, layer.bias) for i in range(x.shape[0])])


def _contiguous_conv(layer: torch.nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    return cast(torch.Tensor, layer._conv_forward(x.contiguous(), layer.weight, layer.bias))  # unannotated in torch


def make_batch_invariant(module: torch.nn.Module) -> None:
    """Every Linear and Conv2d in `module` computes each sample the same way whatever the batch."""
    for layer in module.modules():
        if isinstance(layer, torch.nn.Linear):
            layer.forward = functools.partial(_per_sample_linear, layer)  # type: ignore[method-assign]  # patching torch
        elif isinstance(layer, torch.nn.Conv2d):
            layer.forward = functools.partial(_contiguous_conv, layer)  # type: ignore[method-assign]  # patching torch
