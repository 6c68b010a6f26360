"""Attention projections fused for speed (worker/accelerate.py), kept in step with the layers they fuse.

diffusers' `fuse_qkv_projections` copies q, k and v (k and v for cross-attention) into one new layer and
runs that one; a change to the parts' weights (a LoRA, another VAE) must be copied into it again.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from diffusers.models.attention_processor import Attention


def fused_layers(root: torch.nn.Module) -> Iterator[tuple[torch.nn.Linear, list[torch.nn.Linear]]]:
    """Each fused projection under `root`, with the layers it was made of."""
    for module in root.modules():
        if not isinstance(module, Attention) or not getattr(module, "fused_projections", False):
            continue
        if module.is_cross_attention:
            fused, parts = getattr(module, "to_kv", None), [module.to_k, module.to_v]
        else:
            fused, parts = getattr(module, "to_qkv", None), [module.to_q, module.to_k, module.to_v]
        if isinstance(fused, torch.nn.Linear):
            yield fused, parts


def rebuild(fused: torch.nn.Linear, parts: list[torch.nn.Linear]) -> None:
    """Copy the parts' weights (and biases) into the fused layer, in place."""
    with torch.no_grad():
        fused.weight.copy_(torch.cat([part.weight for part in parts]))
        if fused.bias is not None:
            fused.bias.copy_(torch.cat([part.bias for part in parts if part.bias is not None]))
