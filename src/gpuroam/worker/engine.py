"""Runs one device batch through diffusers' Stable Diffusion pipelines.

Each image gets its own CPU generator seeded with its seed: the initial noise and any
ancestral noise are drawn per image, so an image depends on its seed, prompt and settings
alone. Interrupt and skip act per job: the rows of an interrupted job stop changing, the
others go on, and every row is decoded at the end (A1111 returns the partial image too).
"""

from __future__ import annotations

import itertools
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

# diffusers' top-level names are, to a type checker, placeholder classes: import from the defining modules.
from diffusers.pipelines.auto_pipeline import AutoPipelineForImage2Image, AutoPipelineForText2Image
from diffusers.pipelines.pipeline_utils import DiffusionPipeline
from PIL import Image

from gpuroam.worker.accelerate import Acceleration, accelerate, default_acceleration, to_uint8_images
from gpuroam.worker.images import resize_for_generation
from gpuroam.worker.invariance import make_batch_invariant, use_batch_invariant_cpu_kernels
from gpuroam.worker.jobs import BatchKey, ImageTask, Job
from gpuroam.worker.models import LoadedModel
from gpuroam.worker.noise import overlapped_noise_copies
from gpuroam.worker.samplers import make_scheduler, resolve

log = logging.getLogger("gpuroam.worker.engine")

OUT_OF_MEMORY = (torch.OutOfMemoryError, MemoryError)


# diffusers' callback_on_step_end: (pipeline, step, timestep, {"latents": ...}) -> the tensors to carry on with.
StepTensors = dict[str, torch.Tensor]
StepCallback = Callable[[DiffusionPipeline, int, object, StepTensors], StepTensors]


@dataclass(frozen=True)
class BatchResult:
    images: list[Image.Image]
    seconds: float


def slerp(weight: float, low: torch.Tensor, high: torch.Tensor) -> torch.Tensor:
    """Spherical interpolation of two noises (A1111's variation seeds)."""
    low_n, high_n = low / low.norm(), high / high.norm()
    omega = torch.acos((low_n * high_n).sum().clamp(-1.0, 1.0))
    if omega.abs() < 1e-6:
        return (1.0 - weight) * low + weight * high
    so = torch.sin(omega)
    return (torch.sin((1.0 - weight) * omega) / so) * low + (torch.sin(weight * omega) / so) * high


class Engine:
    """Owns the pipelines; called from the single device thread only."""

    def __init__(self, model: LoadedModel, acceleration: Acceleration | None = None) -> None:
        self.model = model
        self.acceleration = acceleration or default_acceleration(model.device)
        if model.device.type == "cpu" and not self.acceleration.compiles:
            use_batch_invariant_cpu_kernels()
            for component in model.pipeline.components.values():
                if isinstance(component, torch.nn.Module):
                    make_batch_invariant(component)
        accelerate(model.pipeline, self.acceleration)
        self._txt2img = AutoPipelineForText2Image.from_pipe(model.pipeline)  # type: ignore[no-untyped-call]  # unannotated in diffusers
        self._img2img = AutoPipelineForImage2Image.from_pipe(model.pipeline)  # type: ignore[no-untyped-call]  # unannotated in diffusers
        self._base_scheduler_config = dict(model.pipeline.scheduler.config)
        for pipeline in (self._txt2img, self._img2img):
            pipeline.set_progress_bar_config(disable=True)

    def warm_up(self) -> float:
        """Generate before the worker says it is ready, so no client waits for a compile: with the
        fast path every bucket at every warm size, with and without clip skip (kernels compiled or
        read from the cache, CUDA graphs recorded), else one small image. Other samplers and img2img
        reuse these graphs (see accelerate._steady_inputs). Returns the seconds it took."""
        started = time.perf_counter()
        warm = self.acceleration.warm_sizes
        sizes = [(w, h, b) for w, h in warm for b in self.acceleration.buckets] if warm else [(64, 64, 1)]
        # Clip skip asks the text encoder for its hidden states, which it runs as graphs of their own.
        clip_skips = (1, 2) if self.acceleration.compiles else (1,)
        for (width, height, batch), clip_skip in itertools.product(sizes, clip_skips):
            key = BatchKey("txt2img", width, height, 2, "Euler", "automatic", 7.0, clip_skip=clip_skip)
            job = Job(id="warm-up", key=key, image_count=batch)
            tasks = [ImageTask(job, i, "", "", i, 0, 0.0, None) for i in range(batch)]
            seconds = self.run(tasks).seconds
            log.info(
                "warmed up",
                extra={
                    "width": width,
                    "height": height,
                    "batch": batch,
                    "clip_skip": clip_skip,
                    "seconds": round(seconds, 2),
                },
            )
        return time.perf_counter() - started

    def run(self, tasks: list[ImageTask], on_step: Callable[[int, int], None] | None = None) -> BatchResult:
        """Generate one image per task; a batch is padded to its bucket (copies of the last task) and
        the copies' images are dropped."""
        key = tasks[0].key
        assert all(task.key == key for task in tasks), "a batch shares one key"
        started = time.perf_counter()
        wanted = len(tasks)
        tasks = tasks + [tasks[-1]] * (self.acceleration.bucket(wanted) - wanted)
        pipeline = self._txt2img if key.mode == "txt2img" else self._img2img
        sampler, schedule = resolve(key.sampler, key.schedule)
        pipeline.scheduler = make_scheduler(sampler, schedule, self._base_scheduler_config)
        generators = [torch.Generator("cpu").manual_seed(task.seed) for task in tasks]
        kwargs: dict[str, Any] = {
            "prompt": [task.prompt for task in tasks],
            "negative_prompt": [task.negative_prompt for task in tasks],
            "num_inference_steps": key.steps,
            "guidance_scale": key.cfg_scale,
            "generator": generators,
            "output_type": "pt",
            "callback_on_step_end": self._step_callback(tasks, on_step),
            "callback_on_step_end_tensor_inputs": ["latents"],
        }
        if key.clip_skip > 1:
            kwargs["clip_skip"] = key.clip_skip - 1
        if key.eta is not None:
            kwargs["eta"] = key.eta  # the pipeline passes it on only to samplers that take it
        if key.mode == "txt2img":
            kwargs |= {"width": key.width, "height": key.height, "latents": self._initial_noise(tasks, generators)}
        else:
            kwargs |= {
                "image": [resize_for_generation(_init_image(task), key.width, key.height, 0) for task in tasks],
                "strength": img2img_strength(key.steps, key.denoising_strength),
            }
        try:
            with torch.inference_mode(), overlapped_noise_copies(pipeline, pipeline.scheduler):
                pixels = to_uint8_images(pipeline(**kwargs).images[:wanted].float())
        except torch.OutOfMemoryError:
            torch.cuda.empty_cache()  # give the cached blocks back before the smaller retries
            raise
        images = [Image.fromarray(row.numpy()) for row in pixels]
        return BatchResult(images=images, seconds=time.perf_counter() - started)

    def _initial_noise(self, tasks: list[ImageTask], generators: list[torch.Generator]) -> torch.Tensor:
        """Per-image noise from the image's own generator, blended with its subseed's if asked."""
        key = tasks[0].key
        scale = self.model.pipeline.vae_scale_factor
        shape = (1, self.model.pipeline.unet.config.in_channels, key.height // scale, key.width // scale)
        noises = []
        for task, generator in zip(tasks, generators):
            noise = torch.randn(shape, generator=generator, dtype=torch.float32)
            if task.subseed_strength > 0:
                sub = torch.randn(shape, generator=torch.Generator("cpu").manual_seed(task.subseed))
                noise = slerp(task.subseed_strength, noise, sub)
            noises.append(noise)
        return torch.cat(noises).to(self.model.device, self.model.dtype)

    @staticmethod
    def _step_callback(tasks: list[ImageTask], on_step: Callable[[int, int], None] | None) -> StepCallback:
        frozen: dict[int, torch.Tensor] = {}

        def callback(pipe: DiffusionPipeline, step: int, timestep: object, tensors: StepTensors) -> StepTensors:
            latents = tensors["latents"]
            for row, task in enumerate(tasks):
                if row in frozen:
                    latents[row] = frozen[row]
                elif task.job.interrupted or task.job.skipped:
                    frozen[row] = latents[row].clone()
            if len(frozen) == len(tasks):
                pipe._interrupt = True
            if on_step is not None:
                on_step(step + 1, pipe.num_timesteps)
            return {"latents": latents}

        return callback


def _init_image(task: ImageTask) -> Image.Image:
    """An img2img task's image; the service gives every one of them an image."""
    if task.init_image is None:
        raise ValueError(f"img2img task {task.index} of job {task.job.id} has no init image")
    return task.init_image


def img2img_strength(steps: int, strength: float) -> float:
    """The strength to give diffusers, which runs int(steps x strength) steps and fails when that is none
    ("stack expects a non-empty TensorList", a 500 for img2img with steps 1 or a small denoising_strength).
    A1111 runs at least the last step of the schedule then; so does this."""
    return strength if int(steps * strength) >= 1 else min(1.0, 1.5 / steps)


def is_out_of_memory(error: BaseException) -> bool:
    return isinstance(error, OUT_OF_MEMORY) or "out of memory" in str(error).lower()
