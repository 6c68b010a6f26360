"""Small LoRA, embedding and VAE files in A1111's formats, built by the tests for the tiny model."""

from __future__ import annotations

from pathlib import Path

import torch
from diffusers import AutoencoderKL
from diffusers.pipelines.pipeline_utils import DiffusionPipeline
from ldm_checkpoints import vae_key_to_ldm
from safetensors.torch import save_file


def lora_state(
    pipeline: DiffusionPipeline, seed: int = 0, rank: int = 2, alpha: float = 1.0
) -> dict[str, torch.Tensor]:
    """kohya's layout: every attention projection of the UNet and the text encoder gets a random pair."""
    generator = torch.Generator().manual_seed(seed)
    state: dict[str, torch.Tensor] = {}
    layers = [("lora_unet_", name, module) for name, module in pipeline.unet.named_modules()]
    layers += [("lora_te_text_model_", name, module) for name, module in pipeline.text_encoder.named_modules()]
    for prefix, name, module in layers:
        if not isinstance(module, torch.nn.Linear) or not name.endswith(("to_q", "to_k", "to_v", "q_proj", "v_proj")):
            continue
        key = prefix + name.replace(".", "_")
        state[f"{key}.lora_down.weight"] = torch.randn(rank, module.in_features, generator=generator)
        state[f"{key}.lora_up.weight"] = torch.randn(module.out_features, rank, generator=generator)
        state[f"{key}.alpha"] = torch.tensor(alpha)
    return state


def write_lora(path: Path, pipeline: DiffusionPipeline, seed: int = 0, metadata: dict[str, str] | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(lora_state(pipeline, seed), str(path), metadata=metadata)
    return path


def write_embedding_pt(path: Path, vectors: torch.Tensor, step: int = 500) -> Path:
    """A1111's own training output."""
    path.parent.mkdir(parents=True, exist_ok=True)
    data = {
        "string_to_token": {"*": 265},
        "string_to_param": {"*": vectors},
        "name": path.stem,
        "step": step,
        "sd_checkpoint": "0123456789",
        "sd_checkpoint_name": "tiny",
    }
    torch.save(data, path)
    return path


def write_embedding_safetensors(path: Path, vectors: torch.Tensor) -> Path:
    """kohya's layout: one tensor, `emb_params`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({"emb_params": vectors.contiguous()}, str(path))
    return path


def write_vae(path: Path, pipeline: DiffusionPipeline, seed: int = 1) -> Path:
    """A VAE of the pipeline's shape with other weights, in the LDM layout A1111's VAE files use."""
    torch.manual_seed(seed)
    other = AutoencoderKL.from_config(pipeline.vae.config)
    blocks = len(other.config.block_out_channels)
    state = dict(vae_key_to_ldm(key, value, blocks) for key, value in other.state_dict().items())
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({key: value.contiguous() for key, value in state.items()}, str(path))
    return path
