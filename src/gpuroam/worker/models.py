"""Load the Stable Diffusion model a worker serves: built-in random-weight models or a checkpoint.

`tiny` is a small SD-shaped model built locally with fixed-seed random weights: real diffusion
through diffusers' pipelines at a fraction of the compute, so tests and the local demo need no
download. `sd15-random` is the full SD 1.5 architecture with random weights: the same compute
as the released model, for GPU benchmarks where weights cannot be downloaded.
"""

from __future__ import annotations

import hashlib
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TypedDict

import torch

# diffusers' top-level names are, to a type checker, placeholder classes: import from the defining modules.
from diffusers.models.autoencoders.autoencoder_kl import AutoencoderKL
from diffusers.models.unets.unet_2d_condition import UNet2DConditionModel
from diffusers.pipelines.pipeline_utils import DiffusionPipeline
from diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion import StableDiffusionPipeline
from diffusers.schedulers.scheduling_ddim import DDIMScheduler
from transformers import CLIPTextConfig, CLIPTextModel

from gpuroam.worker.checkpoints import CONFIGS_DIR, load_checkpoint
from gpuroam.worker.tokenizer import clip_tokenizer

log = logging.getLogger("gpuroam.worker.models")

BUILTIN_MODELS = ("tiny", "sd15-random")

# The Stable Diffusion noise schedule (SD 1.x and 2.x base).
SD_SCHEDULER_CONFIG = {
    "num_train_timesteps": 1000,
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "clip_sample": False,
    "set_alpha_to_one": False,
    "steps_offset": 1,
    "prediction_type": "epsilon",
}


@dataclass(frozen=True)
class LoadedModel:
    """A pipeline ready to serve, with the names A1111 clients see."""

    pipeline: DiffusionPipeline
    name: str
    filename: str
    sha256: str
    device: torch.device
    dtype: torch.dtype

    @property
    def short_hash(self) -> str:
        return self.sha256[:10]

    @property
    def title(self) -> str:
        return f"{self.name} [{self.short_hash}]"

    @property
    def is_sdxl(self) -> bool:
        return "XL" in type(self.pipeline).__name__


def resolve_device(device: str) -> torch.device:
    """`auto` picks CUDA when present; asking for CUDA without it is a clear error."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda was asked for but no CUDA GPU is visible; use --device cpu or auto")
    if device not in ("cpu", "cuda"):
        raise ValueError(f"unknown --device {device!r}; use auto, cpu or cuda")
    return torch.device(device)


def default_dtype(device: torch.device) -> torch.dtype:
    return torch.float16 if device.type == "cuda" else torch.float32


class RandomComponents(TypedDict):
    """The weighted modules of a built-in model; the pipeline adds tokenizer and scheduler."""

    unet: UNet2DConditionModel
    vae: AutoencoderKL
    text_encoder: CLIPTextModel


def _tiny_components() -> RandomComponents:
    """A 4-level UNet with cross-attention only at the coarsest level (8x8 for 512 px).

    Attention at high resolution dominates CPU time; this layout keeps a 512x512, 20-step
    image near a second on one core (see shared/reference/offline-sd.md).
    """
    unet = UNet2DConditionModel(
        sample_size=64,
        in_channels=4,
        out_channels=4,
        down_block_types=("DownBlock2D", "DownBlock2D", "DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D", "UpBlock2D", "UpBlock2D"),
        block_out_channels=(8, 16, 32, 32),
        layers_per_block=1,
        norm_num_groups=8,
        cross_attention_dim=32,
        attention_head_dim=4,
    )
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(4, 4, 8, 8),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=2,
        sample_size=512,
        mid_block_add_attention=False,
    )
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=49408,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=2,
            max_position_embeddings=77,
            projection_dim=32,
            bos_token_id=49406,
            eos_token_id=49407,
            pad_token_id=49407,
        )
    )
    return RandomComponents(unet=unet, vae=vae, text_encoder=text_encoder)


def _sd15_components() -> RandomComponents:
    """The SD 1.5 architecture as published (UNet 860M, VAE 84M, CLIP ViT-L/14 text), built from
    the bundled config that single-file loading uses too."""
    folder = CONFIGS_DIR / "sd1"
    return RandomComponents(
        unet=UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(folder / "unet")),
        vae=AutoencoderKL.from_config(AutoencoderKL.load_config(folder / "vae")),
        text_encoder=CLIPTextModel(CLIPTextConfig.from_pretrained(folder / "text_encoder")),
    )


def build_random_pipeline(name: str, seed: int = 0) -> StableDiffusionPipeline:
    """Fixed-seed random weights: the same model, and so the same images, on every start."""
    builders = {"tiny": _tiny_components, "sd15-random": _sd15_components}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        components = builders[name]()
    for module in (components["unet"], components["vae"], components["text_encoder"]):
        module.eval().requires_grad_(False)
    return StableDiffusionPipeline(
        **components,
        tokenizer=clip_tokenizer(),
        scheduler=DDIMScheduler.from_config(SD_SCHEDULER_CONFIG),
        safety_checker=None,  # type: ignore[arg-type]  # diffusers types it without None, which it takes (and A1111 has none)
        feature_extractor=None,  # type: ignore[arg-type]  # same: typed without None, only the safety checker reads it
        requires_safety_checker=False,
    )


def _bridge_transformers_5(pipeline: DiffusionPipeline) -> None:
    """diffusers 0.42 reads `text_encoder.text_model.final_layer_norm` for clip skip; transformers 5
    flattened CLIPTextModel. Alias it (unregistered, so no module cycle) until diffusers catches up."""
    for name in ("text_encoder", "text_encoder_2"):
        encoder = getattr(pipeline, name, None)
        if encoder is not None and not hasattr(encoder, "text_model") and hasattr(encoder, "final_layer_norm"):
            object.__setattr__(encoder, "text_model", encoder)


def weights_sha256(pipeline: DiffusionPipeline) -> str:
    """A stable fingerprint of every weight, so clients can tell two models apart."""
    digest = hashlib.sha256()
    for component_name, component in sorted(pipeline.components.items()):
        if not isinstance(component, torch.nn.Module):
            continue
        for key, tensor in sorted(component.state_dict().items()):
            digest.update(f"{component_name}.{key}".encode())
            digest.update(memoryview(tensor.detach().cpu().contiguous().view(torch.uint8).numpy()))
    return digest.hexdigest()


def file_sha256(path: Path) -> str:
    """A1111's model hash: sha256 of the checkpoint file (first 10 hex digits shown)."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def load_model(model: str, device: torch.device, dtype: torch.dtype | None = None) -> LoadedModel:
    """`model` is a built-in name (tiny, sd15-random) or a path to a checkpoint.

    A checkpoint's weights are read once: with `accelerate` installed, diffusers builds each module
    without weights and puts the file's tensors (memory-mapped, already in `dtype` when the file is)
    in place, so the only copy is the one to the device; the file's hash (A1111's model hash) is
    computed meanwhile on another thread. bench/model_load.py measures it."""
    dtype = dtype or default_dtype(device)
    started = time.perf_counter()
    pipeline: DiffusionPipeline
    if model in BUILTIN_MODELS:
        pipeline = build_random_pipeline(model)
        sha256 = weights_sha256(pipeline) if model == "tiny" else hashlib.sha256(model.encode()).hexdigest()
        name, filename = model, f"builtin:{model}"
    else:
        path = Path(model).expanduser()
        with ThreadPoolExecutor(1, thread_name_prefix="gpuroam-hash") as hasher:
            file_hash = hasher.submit(file_sha256, path) if path.is_file() else None
            pipeline = load_checkpoint(path, dtype)
            sha256 = file_hash.result() if file_hash is not None else weights_sha256(pipeline)
        name, filename = path.stem if path.is_file() else path.name, str(path)
    read_s = time.perf_counter() - started
    _bridge_transformers_5(pipeline)
    if device.type != "cpu" or dtype != torch.float32:
        pipeline = pipeline.to(device=device, dtype=dtype)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    pipeline.set_progress_bar_config(disable=True)  # type: ignore[no-untyped-call]  # unannotated in diffusers
    log.info(
        "model loaded",
        extra={
            "model": model,
            "device": str(device),
            "read_s": round(read_s, 2),
            "to_device_s": round(time.perf_counter() - started - read_s, 2),
        },
    )
    return LoadedModel(pipeline=pipeline, name=name, filename=filename, sha256=sha256, device=device, dtype=dtype)
