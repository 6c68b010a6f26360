"""Jobs (one HTTP request) and the image tasks they split into.

A job asks for batch_size x n_iter images. Each image is its own task with its own prompt and
seed, so tasks from different jobs that share a `BatchKey` can run in one device batch, and an
image never depends on which batch it ran in. Each job belongs to a caller (its `owner`: the
identity the gateway passed, or "" for a client of the worker's own port), and the device is shared
between callers in turn.
"""

from __future__ import annotations

import asyncio
import itertools
import secrets
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

import torch
from PIL import Image

# What a task makes (and an img2img task may start from): an image, or for hires fix's latent modes the latent.
Picture = Image.Image | torch.Tensor


@dataclass(frozen=True)
class BatchKey:
    """What must be equal for images to share one pipeline call."""

    mode: Literal["txt2img", "img2img", "inpaint"]
    width: int
    height: int
    steps: int
    sampler: str
    schedule: str
    cfg_scale: float
    denoising_strength: float = 0.0
    eta: float | None = None
    clip_skip: int = 1
    tiling: bool = False  # seamless: every convolution pads circularly (A1111's "Tiling")
    latent: bool = False  # txt2img: the result is the latent, undecoded (a hires fix's first pass); img2img: the start
    latent_fill: Literal["noise", "nothing"] | None = None  # inpaint: the masked latent starts as noise or zeros
    networks: tuple[tuple[str, float, float], ...] = ()  # LoRAs merged for the batch: (name, te, unet multiplier)
    vae: str = ""  # the VAE file decoding the batch (A1111's sd_vae); "": the checkpoint's own


@dataclass(eq=False)
class Job:
    """Per-request state that progress, interrupt and skip act on."""

    id: str
    key: BatchKey
    image_count: int
    batch_size: int = 1
    owner: str = ""  # who asked: progress, interrupt and skip through the gateway reach only one's own jobs
    created: float = field(default_factory=time.monotonic)
    started: float | None = None
    images_done: int = 0
    running_images: int = 0
    sampling_step: int = 0
    sampling_steps: int = 0
    interrupted: bool = False
    skipped: bool = False

    @property
    def iterations(self) -> int:
        """A1111's n_iter: batches of batch_size images, run in turn."""
        return self.image_count // self.batch_size

    @property
    def iterations_done(self) -> int:
        return self.images_done // self.batch_size

    @staticmethod
    def new_id() -> str:
        return f"task({secrets.token_hex(8)})"

    @property
    def progress(self) -> float:
        if self.image_count == 0:
            return 1.0
        running = self.running_images * (self.sampling_step / self.sampling_steps if self.sampling_steps else 0.0)
        return min(1.0, (self.images_done + running) / self.image_count)

    @property
    def eta_relative(self) -> float:
        if self.started is None or self.progress <= 0.0:
            return 0.0
        elapsed = time.monotonic() - self.started
        return max(0.0, elapsed / self.progress - elapsed)


@dataclass(eq=False)
class ImageTask:
    """One image to make; `result` (set for queued tasks) resolves to the image, or None when the
    job was interrupted before it ran."""

    job: Job
    index: int
    prompt: str
    negative_prompt: str
    seed: int
    subseed: int
    subseed_strength: float
    init_image: Picture | None
    result: asyncio.Future[Picture | None] | None = None
    mask: Image.Image | None = None  # inpaint: white where the image is repainted, at the batch's size

    @property
    def key(self) -> BatchKey:
        return self.job.key


def take_batch(queue: list[ImageTask], max_batch: int, last_served: Mapping[str, int] | None = None) -> list[ImageTask]:
    """The next device batch: fair between owners, first in first out within one.

    The owner served longest ago (never, for a newcomer) goes first: its oldest task is the head, and
    the head's key is the batch's. The batch then takes tasks of that key from each owner in turn,
    oldest first, up to max_batch. So one caller's 64-image jobs delay another's image by at most the
    batch on the device: the newcomer heads the next batch, or joins it when it shares the key. With
    one owner (the worker's own port) this is plain FIFO by head.
    """
    if not queue:
        return []
    served = last_served or {}
    by_owner: dict[str, list[ImageTask]] = {}
    for task in queue:
        by_owner.setdefault(task.job.owner, []).append(task)
    owners = sorted(by_owner, key=lambda owner: served.get(owner, -1))  # stable: ties keep arrival order
    key = by_owner[owners[0]][0].key
    same_key = [[task for task in by_owner[owner] if task.key == key] for owner in owners]
    turns = itertools.chain.from_iterable(itertools.zip_longest(*same_key))
    return [task for task in turns if task is not None][:max_batch]
