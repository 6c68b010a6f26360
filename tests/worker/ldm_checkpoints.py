"""Tiny SD/SDXL models, and writing them in the original LDM single-file layout, for the checkpoint tests.

Builds SD 1.x, SD 2.x and SDXL pipelines at toy size and converts them to the original LDM key
layout of a single .safetensors/.ckpt file: the reverse of diffusers' single_file_utils.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
from diffusers import (
    AutoencoderKL,
    DDIMScheduler,
    DiffusionPipeline,
    EulerDiscreteScheduler,
    StableDiffusionPipeline,
    StableDiffusionXLPipeline,
    UNet2DConditionModel,
)
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

from gpuroam.worker.tokenizer import EOS, clip_tokenizer

# --- tiny models -------------------------------------------------------------------------------


def _clip(hidden: int, act: str, projection_dim: int = 32, with_projection: bool = False) -> torch.nn.Module:
    config = CLIPTextConfig(
        vocab_size=49408,
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=77,
        hidden_act=act,
        projection_dim=projection_dim,
    )
    return CLIPTextModelWithProjection(config) if with_projection else CLIPTextModel(config)


def _vae() -> AutoencoderKL:
    return AutoencoderKL(
        block_out_channels=(32, 64),
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
        layers_per_block=1,
        latent_channels=4,
        sample_size=64,
    )


def tiny_pipeline(family: str, seed: int = 0, in_channels: int = 4) -> DiffusionPipeline:
    """SD-shaped at toy size: 2 UNet levels, 2 resnets each (as the real ones), 2 text layers; an inpainting
    model's UNet takes 9 channels."""
    torch.manual_seed(seed)
    if family == "sdxl":
        # The two text encoders must differ in width (768 and 1280 in the real model): diffusers
        # tells them apart by the position-embedding width.
        unet = UNet2DConditionModel(
            sample_size=32,
            block_out_channels=(32, 64),
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
            layers_per_block=2,
            in_channels=in_channels,
            transformer_layers_per_block=(1, 2),
            attention_head_dim=(2, 4),
            cross_attention_dim=32 + 48,
            use_linear_projection=True,
            addition_embed_type="text_time",
            addition_time_embed_dim=8,
            projection_class_embeddings_input_dim=6 * 8 + 32,
        )
        return StableDiffusionXLPipeline(
            unet=unet,
            vae=_vae(),
            text_encoder=_clip(32, "quick_gelu"),
            text_encoder_2=_clip(48, "gelu", projection_dim=32, with_projection=True),
            tokenizer=clip_tokenizer(EOS),
            tokenizer_2=clip_tokenizer("!"),
            scheduler=EulerDiscreteScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012),
            add_watermarker=False,
        )
    sd2 = family == "sd2"
    unet = UNet2DConditionModel(
        sample_size=32,
        block_out_channels=(32, 64),
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        layers_per_block=2,
        in_channels=in_channels,
        attention_head_dim=(2, 4) if sd2 else 8,
        use_linear_projection=sd2,
        cross_attention_dim=32,
    )
    scheduler = DDIMScheduler(
        beta_schedule="scaled_linear",
        beta_start=0.00085,
        beta_end=0.012,
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
        prediction_type="v_prediction" if sd2 else "epsilon",
    )
    return StableDiffusionPipeline(
        unet=unet,
        vae=_vae(),
        text_encoder=_clip(32, "gelu" if sd2 else "quick_gelu"),
        tokenizer=clip_tokenizer("!" if sd2 else EOS),
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )


def write_config_folder(pipeline: DiffusionPipeline, folder: Path) -> Path:
    """A diffusers folder without weights or tokenizer files: what assets/configs/<family> holds."""
    pipeline.save_pretrained(folder)
    for weights in folder.rglob("*.safetensors"):
        weights.unlink()
    for name in ("tokenizer", "tokenizer_2"):
        shutil.rmtree(folder / name, ignore_errors=True)
    return folder


# --- diffusers -> original LDM layout (the reverse of diffusers' single_file_utils) -------------

RESNET_TO_LDM = {
    "norm1": "in_layers.0",
    "conv1": "in_layers.2",
    "norm2": "out_layers.0",
    "conv2": "out_layers.3",
    "time_emb_proj": "emb_layers.1",
    "conv_shortcut": "skip_connection",
}
UNET_FIXED_TO_LDM = {
    "time_embedding.linear_1": "time_embed.0",
    "time_embedding.linear_2": "time_embed.2",
    "add_embedding.linear_1": "label_emb.0.0",
    "add_embedding.linear_2": "label_emb.0.2",
    "conv_in": "input_blocks.0.0",
    "conv_norm_out": "out.0",
    "conv_out": "out.2",
}


def unet_key_to_ldm(key: str, config: Any) -> str:
    """LDM numbers blocks flat: input_blocks.N.0 is a resnet, .1 its attention, .0.op a downsampler."""
    per_level = config.layers_per_block + 1
    if m := re.fullmatch(r"down_blocks\.(\d+)\.resnets\.(\d+)\.(\w+)\.(.+)", key):
        i, j, name, rest = int(m[1]), int(m[2]), m[3], m[4]
        return f"input_blocks.{per_level * i + j + 1}.0.{RESNET_TO_LDM[name]}.{rest}"
    if m := re.fullmatch(r"down_blocks\.(\d+)\.attentions\.(\d+)\.(.+)", key):
        return f"input_blocks.{per_level * int(m[1]) + int(m[2]) + 1}.1.{m[3]}"
    if m := re.fullmatch(r"down_blocks\.(\d+)\.downsamplers\.0\.conv\.(.+)", key):
        return f"input_blocks.{per_level * (int(m[1]) + 1)}.0.op.{m[2]}"
    if m := re.fullmatch(r"mid_block\.resnets\.(\d+)\.(\w+)\.(.+)", key):
        return f"middle_block.{2 * int(m[1])}.{RESNET_TO_LDM[m[2]]}.{m[3]}"
    if m := re.fullmatch(r"mid_block\.attentions\.0\.(.+)", key):
        return f"middle_block.1.{m[1]}"
    if m := re.fullmatch(r"up_blocks\.(\d+)\.resnets\.(\d+)\.(\w+)\.(.+)", key):
        i, j, name, rest = int(m[1]), int(m[2]), m[3], m[4]
        return f"output_blocks.{per_level * i + j}.0.{RESNET_TO_LDM[name]}.{rest}"
    if m := re.fullmatch(r"up_blocks\.(\d+)\.attentions\.(\d+)\.(.+)", key):
        return f"output_blocks.{per_level * int(m[1]) + int(m[2])}.1.{m[3]}"
    if m := re.fullmatch(r"up_blocks\.(\d+)\.upsamplers\.0\.conv\.(.+)", key):
        i = int(m[1])
        slot = 2 if "CrossAttn" in config.up_block_types[i] else 1
        return f"output_blocks.{per_level * i + per_level - 1}.{slot}.conv.{m[2]}"
    module, param = key.rsplit(".", 1)
    return f"{UNET_FIXED_TO_LDM[module]}.{param}"


def vae_key_to_ldm(key: str, value: torch.Tensor, num_blocks: int) -> tuple[str, torch.Tensor]:
    """The LDM VAE counts decoder levels the other way round and keeps attention as 1x1 convs."""
    key = key.replace("conv_norm_out", "norm_out").replace("conv_shortcut", "nin_shortcut")
    if m := re.fullmatch(r"encoder\.down_blocks\.(\d+)\.resnets\.(\d+)\.(.+)", key):
        return f"encoder.down.{m[1]}.block.{m[2]}.{m[3]}", value
    if m := re.fullmatch(r"encoder\.down_blocks\.(\d+)\.downsamplers\.0\.(.+)", key):
        return f"encoder.down.{m[1]}.downsample.{m[2]}", value
    if m := re.fullmatch(r"decoder\.up_blocks\.(\d+)\.resnets\.(\d+)\.(.+)", key):
        return f"decoder.up.{num_blocks - 1 - int(m[1])}.block.{m[2]}.{m[3]}", value
    if m := re.fullmatch(r"decoder\.up_blocks\.(\d+)\.upsamplers\.0\.(.+)", key):
        return f"decoder.up.{num_blocks - 1 - int(m[1])}.upsample.{m[2]}", value
    if m := re.fullmatch(r"(encoder|decoder)\.mid_block\.resnets\.(\d+)\.(.+)", key):
        return f"{m[1]}.mid.block_{int(m[2]) + 1}.{m[3]}", value
    attention_names = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}
    if m := re.fullmatch(r"(encoder|decoder)\.mid_block\.attentions\.0\.(\w+|to_out\.0)\.(\w+)", key):
        name = attention_names[m[2]]
        if value.ndim == 2:
            value = value[:, :, None, None]
        return f"{m[1]}.mid.attn_1.{name}.{m[3]}", value
    return key, value


def open_clip_to_ldm(state_dict: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """OpenCLIP keeps q, k and v in one in_proj and transposes the text projection."""
    state_dict = {
        k if k.startswith(("text_model.", "text_projection")) else f"text_model.{k}": v for k, v in state_dict.items()
    }
    fixed = {
        "text_model.embeddings.token_embedding.weight": "token_embedding.weight",
        "text_model.embeddings.position_embedding.weight": "positional_embedding",
        "text_model.final_layer_norm.weight": "ln_final.weight",
        "text_model.final_layer_norm.bias": "ln_final.bias",
    }
    out = {prefix + ldm: state_dict[ours] for ours, ldm in fixed.items()}
    hidden = state_dict["text_model.embeddings.token_embedding.weight"].shape[1]
    out[prefix + "text_projection"] = state_dict.get("text_projection.weight", torch.eye(hidden)).T.contiguous()
    layers = {int(m[1]) for k in state_dict if (m := re.match(r"text_model\.encoder\.layers\.(\d+)\.", k))}
    for i in sorted(layers):
        ours, ldm = f"text_model.encoder.layers.{i}.", f"{prefix}transformer.resblocks.{i}."
        for kind in ("weight", "bias"):
            qkv = [state_dict[f"{ours}self_attn.{p}_proj.{kind}"] for p in "qkv"]
            out[f"{ldm}attn.in_proj_{kind}"] = torch.cat(qkv)
            out[f"{ldm}attn.out_proj.{kind}"] = state_dict[f"{ours}self_attn.out_proj.{kind}"]
            out[f"{ldm}ln_1.{kind}"] = state_dict[f"{ours}layer_norm1.{kind}"]
            out[f"{ldm}ln_2.{kind}"] = state_dict[f"{ours}layer_norm2.{kind}"]
            out[f"{ldm}mlp.c_fc.{kind}"] = state_dict[f"{ours}mlp.fc1.{kind}"]
            out[f"{ldm}mlp.c_proj.{kind}"] = state_dict[f"{ours}mlp.fc2.{kind}"]
    out[prefix + "logit_scale"] = torch.tensor(4.6052)
    return out


def openai_clip_to_ldm(state_dict: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    out = {prefix + (k if k.startswith("text_model.") else f"text_model.{k}"): v for k, v in state_dict.items()}
    out[prefix + "text_model.embeddings.position_ids"] = torch.arange(77)[None]  # A1111 files carry it
    return out


def to_ldm_state_dict(pipeline: DiffusionPipeline, family: str) -> dict[str, torch.Tensor]:
    """The whole pipeline as one original-format state dict, with the extras real files carry."""
    unet = pipeline.unet
    out = {f"model.diffusion_model.{unet_key_to_ldm(k, unet.config)}": v for k, v in unet.state_dict().items()}
    num_vae_blocks = len(pipeline.vae.config.block_out_channels)
    for key, value in pipeline.vae.state_dict().items():
        ldm_key, ldm_value = vae_key_to_ldm(key, value, num_vae_blocks)
        out[f"first_stage_model.{ldm_key}"] = ldm_value
    text_state = pipeline.text_encoder.state_dict()
    if family == "sd1":
        out |= openai_clip_to_ldm(text_state, "cond_stage_model.transformer.")
    elif family == "sd2":
        out |= open_clip_to_ldm(text_state, "cond_stage_model.model.")
    else:
        out |= openai_clip_to_ldm(text_state, "conditioner.embedders.0.transformer.")
        out |= open_clip_to_ldm(pipeline.text_encoder_2.state_dict(), "conditioner.embedders.1.model.")
    out["alphas_cumprod"] = pipeline.scheduler.alphas_cumprod.clone()
    out["model_ema.decay"] = torch.tensor(0.9999)
    return {k: v.contiguous() for k, v in out.items()}


def assert_same_weights(loaded: DiffusionPipeline, original: DiffusionPipeline) -> None:
    names = [n for n in ("unet", "vae", "text_encoder", "text_encoder_2") if hasattr(original, n)]
    for name in names:
        want, got = getattr(original, name).state_dict(), getattr(loaded, name).state_dict()
        want = {k: v for k, v in want.items() if not k.endswith("position_ids")}
        got = {k: v for k, v in got.items() if not k.endswith("position_ids")}
        assert got.keys() == want.keys(), name
        for key, value in want.items():
            assert torch.equal(got[key], value), f"{name}.{key} differs"


def generate(pipeline: DiffusionPipeline) -> np.ndarray:
    pipeline.set_progress_bar_config(disable=True)
    result = pipeline(
        prompt="a photo of a cat",
        num_inference_steps=2,
        height=64,
        width=64,
        output_type="np",
        generator=torch.Generator().manual_seed(0),
    )
    return result.images
