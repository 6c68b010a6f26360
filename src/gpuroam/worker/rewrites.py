"""The served modules as the fast path runs them: rewrites that change no value, and which are compiled.

Both the serving process and the compile process (worker/compile_process.py) make the same rewrites,
so a package built by one fits the module the other serves.
"""

from __future__ import annotations

import torch

# diffusers' top-level names are, to a type checker, placeholder classes: import from the defining modules.
from diffusers.pipelines.pipeline_utils import DiffusionPipeline


def rewrite(pipeline: DiffusionPipeline, channels_last: bool, fuse_qkv: bool) -> None:
    """In place: fused query/key/value projections (one matrix product instead of three) and
    channels-last memory for the UNet and VAE (cuDNN's fast convolution layout)."""
    unet, vae = pipeline.unet, pipeline.vae
    if fuse_qkv:
        unet.fuse_qkv_projections()
        vae.fuse_qkv_projections()
    if channels_last:
        unet.to(memory_format=torch.channels_last)
        vae.to(memory_format=torch.channels_last)


def compiled_modules(pipeline: DiffusionPipeline) -> dict[str, torch.nn.Module]:
    """The modules the fast path compiles, by the name their graphs carry."""
    return {"unet": pipeline.unet, "vae decoder": pipeline.vae.decoder, "text encoder": pipeline.text_encoder}
