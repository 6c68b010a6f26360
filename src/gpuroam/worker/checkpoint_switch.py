"""Another checkpoint of --ckpt-dir (A1111's sd_model_checkpoint), switched to on the worker's own port.

The new checkpoint is read on a thread of its own, then its weights are copied into the served pipeline's
own tensors on the device thread, between two batches: every derived pipeline, the compiled graphs (which
read weights where they live) and the token rows kept for embeddings stay as they are. So a switch takes
a checkpoint of the same architecture as the one the worker started with; another one (SD 1.x to SDXL,
say) is a 422 that says to start a worker with it. Through the gateway the model is never switched: every
caller shares it (worker/service.py refuses another model's name there). One switch runs at a time: two
at once would hold two checkpoints in memory.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import anyio
import torch
from diffusers.pipelines.pipeline_utils import DiffusionPipeline

from gpuroam.worker.checkpoints import CheckpointError, load_checkpoint
from gpuroam.worker.discovery import Found, OutsideDirectory, checked
from gpuroam.worker.fused import fused_layers, rebuild
from gpuroam.worker.models import LoadedModel, file_sha256
from gpuroam.worker.schemas import RequestError
from gpuroam.worker.service import GenerationService

COMPONENTS = ("unet", "vae", "text_encoder", "text_encoder_2")
CheckpointLoader = Callable[[Path, torch.dtype], DiffusionPipeline]


@dataclass
class Switcher:
    """How this worker reads a checkpoint of --ckpt-dir (tests pass one that reads tiny ones), and the lock
    that lets one switch run at a time."""

    load: CheckpointLoader = load_checkpoint
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    async def switch(self, service: GenerationService, value: object) -> None:
        async with self.lock:
            await switch(service, value, self.load)


def listed(service: GenerationService) -> list[dict[str, Any]]:
    """GET /sdapi/v1/sd-models: the served model first, then the other files of --ckpt-dir (A1111 shows a
    hash only once it has computed it: None until then)."""
    model = service.model
    entries = [_entry(model.title, model.name, model.short_hash, model.sha256, model.filename)]
    for relative, found in service.assets.checkpoints.items():
        if str(found.path) != model.filename:
            entries.append(_entry(relative, found.stem, None, None, str(found.path)))
    return entries


def _entry(title: str, name: str, short: str | None, sha256: str | None, filename: str) -> dict[str, Any]:
    return {"title": title, "model_name": name, "hash": short, "sha256": sha256, "filename": filename, "config": None}


def find(service: GenerationService, value: object) -> Found | None:
    """A checkpoint of the directory by A1111's title (its path there, maybe with ` [hash]`) or model name."""
    if not isinstance(value, str):
        return None
    checkpoints = service.assets.checkpoints
    title = value.rsplit(" [", 1)[0] if value.endswith("]") else value
    return checkpoints.get(title) or next((f for f in checkpoints.values() if f.stem == value), None)


async def switch(service: GenerationService, value: object, load: CheckpointLoader) -> None:
    """Serve the checkpoint `value` names, read with `load`; nothing happens when it names the served one.
    Callers serialise switches (`Switcher`)."""
    model = service.model
    if isinstance(value, str) and value in {model.title, model.name, model.filename, model.short_hash}:
        return
    found, root = find(service, value), service.assets.dirs.ckpt
    if found is not None and str(found.path) == model.filename:  # named by its path in the directory
        return
    if found is None or root is None:
        choices = ", ".join([model.title, *service.assets.checkpoints][:20])
        raise RequestError(
            "sd_model_checkpoint", f"checkpoint {str(value)[:128]!r} is not on this worker; use one of {choices}"
        )
    try:
        path = checked(found, root)
        source, sha256 = await anyio.to_thread.run_sync(_read, path, model.dtype, load)
        await service.batcher.on_device(lambda: _take_weights(model, source, service))
    except (CheckpointError, OutsideDirectory) as error:
        raise RequestError("sd_model_checkpoint", str(error)) from None
    service.model = replace(model, name=found.stem, filename=str(found.path), sha256=sha256)


def _read(path: Path, dtype: torch.dtype, load: CheckpointLoader) -> tuple[DiffusionPipeline, str]:
    return load(path, dtype), file_sha256(path)


def _take_weights(model: LoadedModel, source: DiffusionPipeline, service: GenerationService) -> None:
    """Copy `source`'s weights into the served pipeline in place, once every one is known to fit."""
    target = model.pipeline
    pairs = _matched(target, source)
    with torch.no_grad(), service.assets.weights.changing():
        for own, new in pairs:
            own[: new.shape[0]].copy_(new)  # a token table keeps its rows for embeddings beyond the checkpoint's
        for component in (target.unet, target.vae):
            for fused, parts in fused_layers(component):
                rebuild(fused, parts)
    service.assets.weights.replaced()
    service.assets.checkpoint_changed()


def _matched(target: DiffusionPipeline, source: DiffusionPipeline) -> list[tuple[torch.Tensor, torch.Tensor]]:
    if target.scheduler.config.get("prediction_type") != source.scheduler.config.get("prediction_type"):
        raise CheckpointError(_other_architecture("its prediction type differs"))
    pairs = []
    for name in COMPONENTS:
        own_module, new_module = getattr(target, name, None), getattr(source, name, None)
        if (own_module is None) != (new_module is None):
            raise CheckpointError(_other_architecture(f"it {'lacks' if new_module is None else 'adds'} a {name}"))
        if own_module is None or new_module is None:
            continue
        own, new = own_module.state_dict(), new_module.state_dict()
        for key, value in new.items():
            mine = own.get(key)
            if mine is None or mine.shape[1:] != value.shape[1:] or mine.shape[:1] < value.shape[:1]:
                raise CheckpointError(_other_architecture(f"{name}.{key} does not fit"))
            if mine.shape != value.shape and not key.endswith("token_embedding.weight"):
                raise CheckpointError(_other_architecture(f"{name}.{key} does not fit"))
            pairs.append((mine, value))
    return pairs


def _other_architecture(why: str) -> str:
    return (
        f"that checkpoint is not of the served model's architecture ({why}); a worker switches only between "
        "checkpoints of one architecture: start another worker with --model set to it"
    )
