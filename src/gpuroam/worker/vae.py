"""VAE files (A1111's `sd_vae`): another decoder and encoder for the loaded model, swapped in place.

A1111's VAE files hold the original (LDM) layout of `first_stage_model`, with or without that prefix;
diffusers-layout files are read as they are. The weights are copied into the pipeline's own VAE, so
every pipeline derived from it (txt2img, img2img) sees them, and the checkpoint's own weights are kept
aside to be copied back for "Automatic" or "None".
"""

from __future__ import annotations

from pathlib import Path

import torch
from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint
from diffusers.models.autoencoders.autoencoder_kl import AutoencoderKL
from safetensors.torch import load_file

from gpuroam.worker.fused import fused_layers, rebuild

SUFFIXES = (".pt", ".ckpt", ".safetensors")
OWN = ("Automatic", "None")  # A1111's values for "the checkpoint's own VAE" (no VAE file found or asked for)


class VaeError(ValueError):
    """A file that is not a VAE for the loaded model; the message says which and why."""


def read_vae(path: Path, vae: AutoencoderKL) -> dict[str, torch.Tensor]:
    """The file's weights as a state dict for `vae` (CPU, float32), checked against its shapes."""
    state = _read(path)
    state = {key: value for key, value in state.items() if not key.startswith(("loss.", "model_ema."))}
    if not any(key.startswith("decoder.up_blocks.") for key in state):
        state = convert_ldm_vae_checkpoint(state, vae.config)  # type: ignore[no-untyped-call]  # unannotated in diffusers
    own = vae.state_dict()
    wrong = [key for key, value in state.items() if key not in own or own[key].shape != value.shape]
    missing = [key for key in own if key not in state and not _fused_key(key)]
    if wrong or missing or not state:
        example = (wrong or missing or ["(no weights)"])[0]
        raise VaeError(
            f"{path.name} is not a VAE for the loaded model ({len(wrong)} unexpected and {len(missing)} missing "
            f"weights, e.g. {example}); use a VAE made for this model family"
        )
    return {key: value.float() for key, value in state.items()}


def _fused_key(key: str) -> bool:
    return ".to_qkv." in key or ".to_kv." in key


def _read(path: Path) -> dict[str, torch.Tensor]:
    try:
        if path.suffix.lower() == ".safetensors":
            return load_file(str(path))
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001 - a damaged or foreign file fails in many ways
        raise VaeError(f"{path.name} is not a readable VAE file ({type(error).__name__}: {error})") from None
    while isinstance(loaded, dict) and isinstance(loaded.get("state_dict"), dict):
        loaded = loaded["state_dict"]
    if not isinstance(loaded, dict):
        raise VaeError(f"{path.name} holds a {type(loaded).__name__}, not a VAE state dict")
    return {key: value for key, value in loaded.items() if isinstance(key, str) and isinstance(value, torch.Tensor)}


def own_weights(vae: AutoencoderKL) -> dict[str, torch.Tensor]:
    """A copy of the VAE's weights as they are now (the checkpoint's own), kept in host memory."""
    return {key: value.detach().to("cpu", copy=True) for key, value in vae.state_dict().items()}


def load_into(vae: AutoencoderKL, state: dict[str, torch.Tensor]) -> None:
    """Copy `state` into the VAE's own tensors (no tensor is replaced), then its fused projections."""
    with torch.no_grad():
        vae.load_state_dict(state, strict=False)
    for fused, parts in fused_layers(vae):
        rebuild(fused, parts)
