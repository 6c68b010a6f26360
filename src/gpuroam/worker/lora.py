"""LoRA files in A1111's formats, merged into a pipeline's weights for one batch and taken out after.

A LoRA holds, per layer, a low-rank pair (`up`, `down`) and optionally `alpha`; the layer's weight
gains `up @ down * alpha / rank * multiplier`, the multiplier being the prompt's text-encoder weight
for text-encoder layers and its UNet weight for UNet layers (A1111's arithmetic). Layer names come
in kohya's form (`lora_unet_down_blocks_0_..._to_q`, `lora_te_text_model_...`, SDXL's `lora_te1_`,
`lora_te2_` and LDM-numbered `lora_unet_input_blocks_4_1_...`) or diffusers' (`unet.down_blocks.0...
.lora_A.weight`, and its older `...attn1.processor.to_q_lora.down.weight` and `...to_q.lora_layer.down
.weight`); every form is matched against the pipeline's own module names. A layer whose pair does not fit
together makes the file a LoraError: the library skips it with a log line.

Merged, not hooked: a batch runs the same modules with changed weights, so the only cost is the merge
(once per batch). The original weights are copied before and copied back after, exactly, so a batch
without LoRA after one with it computes what it did before. Attention layers whose q, k and v were
fused for speed (worker/accelerate.py) get their fused weight rebuilt from the merged ones.
"""

from __future__ import annotations

import contextlib
import logging
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from diffusers.pipelines.pipeline_utils import DiffusionPipeline
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file

from gpuroam.worker.fused import fused_layers, rebuild
from gpuroam.worker.graphs import WeightWrites

log = logging.getLogger("gpuroam.worker.lora")

Part = Literal["te", "unet"]

# Key endings in the formats A1111 reads: kohya's, diffusers' PEFT (`lora_A`), and diffusers' own
# (`to_q.lora.down`, `q_proj.lora_linear_layer.down`, LoRACompatibleLinear's `to_q.lora_layer.down`).
ROLES = {
    ".lora_down.weight": "down",
    ".lora_up.weight": "up",
    ".lora_A.weight": "down",
    ".lora_B.weight": "up",
    ".lora.down.weight": "down",
    ".lora.up.weight": "up",
    ".lora_linear_layer.down.weight": "down",
    ".lora_linear_layer.up.weight": "up",
    ".lora_layer.down.weight": "down",
    ".lora_layer.up.weight": "up",
    ".alpha": "alpha",
}
# diffusers' attention-processor LoRAs (`attn1.processor.to_q_lora.down.weight`): the layer each names.
PROCESSOR_LORA = re.compile(r"(?:\.processor)?\.(to_q|to_k|to_v|to_out)_lora\.(down|up)\.weight$")
PROCESSOR_LAYERS = {
    "unet": {"to_q": "to_q", "to_k": "to_k", "to_v": "to_v", "to_out": "to_out.0"},
    "te": {"to_q": "q_proj", "to_k": "k_proj", "to_v": "v_proj", "to_out": "out_proj"},
}
UNET_BLOCKS = ("down_blocks.", "mid_block.", "up_blocks.")  # diffusers' old UNet files leave out `unet.`
DIFFUSERS_PREFIXES = {"unet.": "lora_unet_", "text_encoder.": "lora_te1_", "text_encoder_2.": "lora_te2_"}
RESNET_TO_LDM = {
    "norm1": "in_layers_0",
    "conv1": "in_layers_2",
    "norm2": "out_layers_0",
    "conv2": "out_layers_3",
    "time_emb_proj": "emb_layers_1",
    "conv_shortcut": "skip_connection",
}


class LoraError(ValueError):
    """A file that is not a LoRA this worker can read; the message says which and why."""


@dataclass(frozen=True)
class LoraLayer:
    up: torch.Tensor
    down: torch.Tensor
    alpha: float | None

    def delta(self, shape: torch.Size, multiplier: float, device: torch.device) -> torch.Tensor:
        """The change to a weight of `shape`, in float32 on `device`."""
        up = self.up.to(device, torch.float32).flatten(1)
        down = self.down.to(device, torch.float32).flatten(1)
        scale = self.alpha / down.shape[0] if self.alpha is not None else 1.0
        return (up @ down * (scale * multiplier)).reshape(shape)


@dataclass(frozen=True)
class LoraNetwork:
    """One LoRA file's layers, by kohya-style layer name."""

    name: str
    layers: Mapping[str, LoraLayer]


def read_lora(path: Path, name: str) -> LoraNetwork:
    """The layers of a .safetensors or .pt LoRA file (a .pt is read with weights_only: no code runs)."""
    state = _read_tensors(path)
    parts: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in state.items():
        found = _layer_and_role(key)
        if found is not None:
            parts.setdefault(_kohya_name(found[0]), {})[found[1]] = value
    layers = {layer: _layer(path, layer, roles) for layer, roles in parts.items() if "up" in roles and "down" in roles}
    if not layers:
        raise LoraError(f"{path.name} holds no LoRA layers (no lora_up/lora_down or lora_A/lora_B weights)")
    return LoraNetwork(name=name, layers=layers)


def _layer_and_role(key: str) -> tuple[str, str] | None:
    if m := PROCESSOR_LORA.search(key):
        base = key[: m.start()]
        part = "te" if base.startswith("text_encoder") else "unet"
        return f"{base}.{PROCESSOR_LAYERS[part][m[1]]}", m[2]
    for ending, role in ROLES.items():
        if key.endswith(ending):
            return key[: -len(ending)], role
    return None


def _layer(path: Path, layer: str, roles: dict[str, torch.Tensor]) -> LoraLayer:
    """A layer's pair checked to be one (a malformed file is a LoraError: skipped, never a failed batch)."""
    up, down, alpha = roles["up"], roles["down"], roles.get("alpha")
    if up.dim() < 2 or down.dim() < 2 or up.flatten(1).shape[1] != down.shape[0]:
        raise LoraError(
            f"{path.name}: layer {layer[:128]} has up {tuple(up.shape)} and down {tuple(down.shape)}, whose ranks "
            "differ; the file is damaged or not a LoRA"
        )
    if alpha is not None and alpha.numel() != 1:
        raise LoraError(f"{path.name}: layer {layer[:128]} has an alpha of shape {tuple(alpha.shape)}, not a number")
    return LoraLayer(up=up, down=down, alpha=None if alpha is None else float(alpha))


def read_metadata(path: Path) -> dict[str, str]:
    """A .safetensors file's header metadata (kohya's training notes); {} for other files."""
    if path.suffix.lower() != ".safetensors":
        return {}
    try:
        with safe_open(str(path), framework="pt") as handle:
            return dict(handle.metadata() or {})
    except (SafetensorError, OSError):
        return {}


def _read_tensors(path: Path) -> dict[str, torch.Tensor]:
    try:
        if path.suffix.lower() == ".safetensors":
            return load_file(str(path))
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001 - a damaged file fails in many ways
        raise LoraError(f"{path.name} is not a readable LoRA file ({type(error).__name__}: {error})") from None
    if not isinstance(loaded, dict):
        raise LoraError(f"{path.name} holds a {type(loaded).__name__}, not a state dict of LoRA weights")
    return {key: value for key, value in loaded.items() if isinstance(key, str) and isinstance(value, torch.Tensor)}


def _kohya_name(layer: str) -> str:
    """`unet.down_blocks.0.x` (or `down_blocks.0.x`) -> `lora_unet_down_blocks_0_x`; a kohya name as it is."""
    for prefix, kohya in DIFFUSERS_PREFIXES.items():
        if layer.startswith(prefix):
            return kohya + layer[len(prefix) :].replace(".", "_")
    if layer.startswith(UNET_BLOCKS):
        return "lora_unet_" + layer.replace(".", "_")
    return layer


@dataclass(frozen=True)
class Target:
    part: Part
    module: torch.nn.Module


def layer_index(pipeline: DiffusionPipeline) -> dict[str, Target]:
    """Every weighted layer of the pipeline under each kohya-style name a LoRA may give it."""
    index: dict[str, Target] = {}
    encoders = (("text_encoder", ("lora_te_", "lora_te1_")), ("text_encoder_2", ("lora_te2_",)))
    for attribute, prefixes in encoders:
        encoder = getattr(pipeline, attribute, None)
        if encoder is None:
            continue
        for name, module in _weighted(encoder):
            name = name if name.startswith("text_model.") else f"text_model.{name}"  # transformers 5 flattened it
            for prefix in prefixes:
                index[prefix + name.replace(".", "_")] = Target("te", module)
    unet = pipeline.unet
    for name, module in _weighted(unet):
        index["lora_unet_" + name.replace(".", "_")] = Target("unet", module)
        ldm = _ldm_name(name, unet.config)
        if ldm is not None:
            index["lora_unet_" + ldm] = Target("unet", module)
    return index


def _weighted(module: torch.nn.Module) -> Iterator[tuple[str, torch.nn.Module]]:
    for name, child in module.named_modules():
        if isinstance(child, torch.nn.Linear | torch.nn.Conv2d):
            yield name, child


def _ldm_name(name: str, config: Any) -> str | None:
    """The LDM (original SD) name of a UNet layer inside an attention or resnet block, as SDXL LoRAs give
    it: `down_blocks.1.attentions.0.x` -> `input_blocks_4_1_x`."""
    per_level = config.layers_per_block + 1
    if m := re.fullmatch(r"down_blocks\.(\d+)\.(attentions|resnets)\.(\d+)\.(.+)", name):
        block = f"input_blocks_{per_level * int(m[1]) + int(m[3]) + 1}"
    elif m := re.fullmatch(r"up_blocks\.(\d+)\.(attentions|resnets)\.(\d+)\.(.+)", name):
        block = f"output_blocks_{per_level * int(m[1]) + int(m[3])}"
    elif m := re.fullmatch(r"mid_block\.(attentions|resnets)\.(\d+)\.(.+)", name):
        kind, index, rest = m[1], int(m[2]), m[3]
        slot = "1" if kind == "attentions" else str(2 * index)
        return f"middle_block_{slot}_{_inner(kind, rest)}"
    else:
        return None
    slot = "1" if m[2] == "attentions" else "0"
    return f"{block}_{slot}_{_inner(m[2], m[4])}"


def _inner(kind: str, rest: str) -> str:
    if kind == "resnets":
        rest = RESNET_TO_LDM.get(rest, rest)
    return rest.replace(".", "_")


@contextlib.contextmanager
def merged(
    pipeline: DiffusionPipeline,
    networks: Sequence[tuple[LoraNetwork, float, float]],
    index: Mapping[str, Target],
    weights: WeightWrites | None = None,
) -> Iterator[None]:
    """Within the block, each (network, te multiplier, unet multiplier) is merged into the pipeline's
    weights; afterwards every weight is what it was, bit for bit, whatever happened. The merge and the
    restore each hold `weights` (not the block: the graphs' checks wait only for the writes)."""
    writes = weights or WeightWrites()
    backups: dict[torch.nn.Module, torch.Tensor] = {}
    try:
        with torch.no_grad(), writes.changing():
            for network, te, unet in networks:
                _merge(network, te, unet, index, backups)
            _refresh_fused(pipeline, backups)
        yield
    finally:
        with torch.no_grad(), writes.changing():
            for module, weight in backups.items():
                module.weight.copy_(weight)  # type: ignore[operator]  # every backed-up module has a weight


def _merge(
    network: LoraNetwork,
    te: float,
    unet: float,
    index: Mapping[str, Target],
    backups: dict[torch.nn.Module, torch.Tensor],
) -> None:
    unmatched = 0
    for name, layer in network.layers.items():
        target = index.get(name)
        if target is None:
            unmatched += 1
            continue
        multiplier = te if target.part == "te" else unet
        weight = target.module.weight
        assert isinstance(weight, torch.Tensor)
        if multiplier == 0.0:
            continue
        if layer.up.shape[0] * layer.down.flatten(1).shape[1] != weight.numel():
            unmatched += 1
            continue
        backups.setdefault(target.module, weight.detach().clone())
        weight.copy_(weight.float() + layer.delta(weight.shape, multiplier, weight.device))
    if unmatched:
        log.warning("LoRA layers not matched", extra={"lora": network.name, "unmatched": unmatched})


def _refresh_fused(pipeline: DiffusionPipeline, backups: dict[torch.nn.Module, torch.Tensor]) -> None:
    """Rebuild the fused q/k/v layers (worker/fused.py) whose parts a LoRA changed."""
    for fused, parts in fused_layers(pipeline.unet):
        if any(part in backups for part in parts):
            backups.setdefault(fused, fused.weight.detach().clone())
            rebuild(fused, parts)
