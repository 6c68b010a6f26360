"""Runs one device batch through diffusers' Stable Diffusion pipelines.

Each image gets its own CPU generator seeded with its seed: the initial noise and any
ancestral noise are drawn per image, so an image depends on its seed, prompt and settings
alone. Interrupt and skip act per job: the rows of an interrupted job stop changing, the
others go on, and every row is decoded at the end (A1111 returns the partial image too).
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

# diffusers' top-level names are, to a type checker, placeholder classes: import from the defining modules.
from diffusers.pipelines.auto_pipeline import (
    AutoPipelineForImage2Image,
    AutoPipelineForInpainting,
    AutoPipelineForText2Image,
)
from diffusers.pipelines.pipeline_utils import DiffusionPipeline
from PIL import Image

from gpuroam.worker.accelerate import Acceleration, accelerate, default_acceleration, packages_for, to_uint8_images
from gpuroam.worker.checkpoints import INPAINTING_CHANNELS
from gpuroam.worker.graphs import GraphedForward, Inputs, Signature, resized, resized_signature
from gpuroam.worker.images import resize_for_generation
from gpuroam.worker.invariance import make_batch_invariant, use_batch_invariant_cpu_kernels
from gpuroam.worker.jobs import BatchKey, ImageTask, Job, Picture
from gpuroam.worker.library import AssetLibrary
from gpuroam.worker.models import LoadedModel
from gpuroam.worker.noise import overlapped_noise_copies
from gpuroam.worker.samplers import make_scheduler, resolve, training_sigmas
from gpuroam.worker.warmup import GraphShape, Need, Warmup

log = logging.getLogger("gpuroam.worker.engine")

# A compiled module's call seen during a batch: the module, the call's signature, a copy of its inputs.
Recorded = tuple[GraphedForward, Signature, Inputs]

OUT_OF_MEMORY = (torch.OutOfMemoryError, MemoryError)


# diffusers' callback_on_step_end: (pipeline, step, timestep, {"latents": ...}) -> the tensors to carry on with.
StepTensors = dict[str, torch.Tensor]
StepCallback = Callable[[DiffusionPipeline, int, object, StepTensors], StepTensors]


@dataclass(frozen=True)
class BatchResult:
    images: list[Picture]
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

    def __init__(
        self, model: LoadedModel, acceleration: Acceleration | None = None, assets: AssetLibrary | None = None
    ) -> None:
        self.model = model
        self.assets = assets  # LoRAs, VAEs and embeddings (worker/library.py), attached to the pipeline already
        self.acceleration = acceleration or default_acceleration(model.device)
        if model.device.type == "cpu" and not self.acceleration.compiles:
            use_batch_invariant_cpu_kernels()
            for component in model.pipeline.components.values():
                if isinstance(component, torch.nn.Module):
                    make_batch_invariant(component)
        self.packages = packages_for(model, self.acceleration)
        self.graphs = accelerate(model.pipeline, self.acceleration, self.packages, assets.weights if assets else None)
        self.warmup = Warmup(on_stop=self.packages.close) if self.packages else None
        if self.graphs:
            self.graphs[0].weights.on_replaced.append(self._weights_replaced)
        # Held while a batch runs: a CUDA graph is captured only between batches (worker/graphs.py).
        self._device_lock = self.graphs[0].device_lock if self.graphs else contextlib.nullcontext()
        self._txt2img = AutoPipelineForText2Image.from_pipe(model.pipeline)  # type: ignore[no-untyped-call]  # unannotated in diffusers
        self._img2img = AutoPipelineForImage2Image.from_pipe(model.pipeline)  # type: ignore[no-untyped-call]  # unannotated in diffusers
        self._inpaint = AutoPipelineForInpainting.from_pipe(model.pipeline)  # type: ignore[no-untyped-call]  # unannotated in diffusers
        self._base_scheduler_config = dict(model.pipeline.scheduler.config)
        self._noise_levels = training_sigmas(self._base_scheduler_config, model.is_sdxl)
        for pipeline in (self._txt2img, self._img2img, self._inpaint):
            pipeline.set_progress_bar_config(disable=True)

    def _weights_replaced(self) -> None:
        """New weights in place (a checkpoint switch): the compiled graphs are built again from their packages."""
        for graph in self.graphs:
            graph.forget()
        if self.warmup is not None:
            self.warmup.again()

    def warm_up(self, extra_sizes: Iterable[tuple[int, int]] = ()) -> float:
        """Before the worker says it is ready: generate once, eagerly, so a broken model never serves. With
        the fast path, that is one image of one step at each common size (and `extra_sizes`, those of a
        compiled artefact), with and without clip skip, recording how each compiled module is called, and
        the graphs of every bucket at those sizes are planned for the compile thread, which builds them
        while the worker serves. Returns the seconds it took (about a second per size on a GPU)."""
        started = time.perf_counter()
        if self.warmup is None:
            self.run([_probe_task(64, 64, 1)])
            return time.perf_counter() - started
        sizes = dict.fromkeys([*self.acceleration.sizes_for(self.model.is_sdxl), *extra_sizes])
        for index, (width, height) in enumerate(sizes):
            for clip_skip in (1, 2):  # clip skip asks the text encoder for its hidden states: graphs of their own
                tasks = [_probe_task(width, height, clip_skip)]
                self._plan(tasks, self._recorded(tasks), first=index == 0 and clip_skip == 1)
        log.info("graphs planned", extra={"sizes": len(sizes), "graphs": self.warmup.pending})
        return time.perf_counter() - started

    def runnable_now(self, key: BatchKey) -> bool:
        """Whether a batch of `key` would start at once: a tiled batch waits for a graph being compiled (the
        compile must not see circular padding), so it is not taken while one is (Batcher)."""
        return not key.tiling or not any(graph.module_lock.locked() for graph in self.graphs)

    def run(self, tasks: list[ImageTask], on_step: Callable[[int, int], None] | None = None) -> BatchResult:
        """Generate one image per task. A batch whose bucket has its graphs built is padded to that bucket
        (copies of the last task, whose images are dropped); any other runs as it is, eagerly, and a
        size asked for again is recorded on the way and planned for the compile thread."""
        key = tasks[0].key
        assert all(task.key == key for task in tasks), "a batch shares one key"
        started = time.perf_counter()
        wanted = len(tasks)
        if self.warmup is None:
            images = self._generate(tasks + [tasks[-1]] * (self.acceleration.bucket(wanted) - wanted), wanted, on_step)
            return BatchResult(images=images, seconds=time.perf_counter() - started)
        shape = GraphShape(key.width, key.height, self.acceleration.bucket(wanted), key.clip_skip)
        if key.tiling or key.networks or key.vae:  # graphs stand aside (zero padding, other weights): eager
            images = self._generate(tasks, wanted, on_step)
        elif self.warmup.ready(shape):
            images = self._generate(tasks + [tasks[-1]] * (shape.batch - wanted), wanted, on_step)
        elif key.latent:  # a hires fix pass calls only some of the modules: nothing learned from it
            images = self._generate(tasks, wanted, on_step)
        elif self.warmup.requested(shape.group, callers := {task.job.owner for task in tasks}):
            self.warmup.learned(shape.group, callers)
            recorded: list[Recorded] = []
            images = self._generate(tasks, wanted, on_step, record=recorded)
            self._plan(tasks, recorded, first=False)
            log.info("new size planned", extra={"width": key.width, "height": key.height, "clip_skip": key.clip_skip})
        else:
            images = self._generate(tasks, wanted, on_step)
        return BatchResult(images=images, seconds=time.perf_counter() - started)

    def _recorded(self, tasks: list[ImageTask]) -> list[Recorded]:
        recorded: list[Recorded] = []
        self._generate(tasks, len(tasks), None, record=recorded)
        return recorded

    def _plan(self, tasks: list[ImageTask], recorded: list[Recorded], first: bool) -> None:
        """Plan the graphs of every bucket at the tasks' size from the calls recorded for these tasks."""
        assert self.warmup is not None
        key, images = tasks[0].key, len(tasks)
        for batch in self.acceleration.buckets_at(key.width, key.height):
            needs: list[Need] = [
                (graph, resized_signature(example, images, batch), _resizer(example, images, batch))
                for graph, _, example in recorded
            ]
            self.warmup.plan(GraphShape(key.width, key.height, batch, key.clip_skip), needs, first=first)

    def _generate(
        self,
        tasks: list[ImageTask],
        wanted: int,
        on_step: Callable[[int, int], None] | None,
        record: list[Recorded] | None = None,
    ) -> list[Picture]:
        """Run the pipeline over `tasks` and keep the first `wanted` images (latents, for a txt2img key that asks
        for them); with `record`, append each compiled module's new calls to it."""
        key = tasks[0].key
        pipeline = self._pipeline(key)
        sampler, schedule = resolve(key.sampler, key.schedule)
        pipeline.scheduler = make_scheduler(sampler, schedule, self._base_scheduler_config, self._noise_levels)
        generators = [torch.Generator("cpu").manual_seed(task.seed) for task in tasks]
        kwargs: dict[str, Any] = {
            "prompt": [task.prompt for task in tasks],
            "negative_prompt": [task.negative_prompt for task in tasks],
            "num_inference_steps": key.steps,
            "guidance_scale": key.cfg_scale,
            "generator": generators,
            "output_type": "latent" if key.latent and key.mode == "txt2img" else "pt",
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
                "image": self._init_images(tasks),
                "strength": img2img_strength(key.steps, key.denoising_strength),
            }
        try:
            with contextlib.ExitStack() as stack:
                if key.tiling:  # before the device lock, as the compile thread takes them
                    stack.enter_context(tiled(pipeline, self.graphs))
                if self.assets is not None:
                    stack.enter_context(self.assets.applied(key.networks, key.vae, self.graphs))
                stack.enter_context(self._device_lock)
                seen = [(graph, stack.enter_context(graph.recording())) for graph in self.graphs if record is not None]
                stack.enter_context(torch.inference_mode())
                if pipeline is self._inpaint:  # a latent fill encodes: with this batch's VAE, under the device lock
                    kwargs |= self._inpaint_inputs(tasks, generators, kwargs.get("image"))
                stack.enter_context(overlapped_noise_copies(pipeline, pipeline.scheduler))
                made = pipeline(**kwargs).images[:wanted]
                if kwargs["output_type"] == "latent":
                    return list(made.float().cpu())  # the undecoded latents, one per image
                pixels = to_uint8_images(made.float())
        except torch.OutOfMemoryError:
            torch.cuda.empty_cache()  # give the cached blocks back before the smaller retries
            raise
        if record is not None:
            record.extend((graph, call, example) for graph, calls in seen for call, example in calls.items())
        return [Image.fromarray(row.numpy()) for row in pixels]

    @property
    def inpainting_model(self) -> bool:
        """An inpainting checkpoint's UNet takes the mask and the masked image beside the latent (9 channels)."""
        return int(self.model.pipeline.unet.config.in_channels) == INPAINTING_CHANNELS

    def _pipeline(self, key: BatchKey) -> Any:  # diffusers' AutoPipeline results are untyped
        """An inpainting model makes every image through the inpainting pipeline, as A1111 does: txt2img with
        all of a blank image masked, img2img with all of the image masked."""
        if key.mode == "inpaint" or self.inpainting_model:
            return self._inpaint
        return self._txt2img if key.mode == "txt2img" else self._img2img

    def _inpaint_inputs(
        self, tasks: list[ImageTask], generators: list[torch.Generator], image: list[Image.Image] | torch.Tensor | None
    ) -> dict[str, Any]:
        """The inpainting pipeline's mask and image: each task's own mask (all white when it has none); for txt2img
        a grey image, wholly masked, from pure noise (A1111's conditioning for an inpainting model); for a latent
        fill the encoded images with their masked latent replaced."""
        key = tasks[0].key
        masks = [task.mask or Image.new("L", (key.width, key.height), 255) for task in tasks]
        inputs: dict[str, Any] = {"mask_image": masks, "width": key.width, "height": key.height}
        if key.mode == "txt2img":
            return inputs | {"image": [Image.new("RGB", (key.width, key.height), (127, 127, 127))] * len(tasks)}
        if isinstance(image, list) and key.latent_fill is not None:
            latents = self._encoded(image, generators)
            masked = _latent_mask(masks, latents)
            filler = torch.zeros_like(latents)
            if key.latent_fill == "noise":  # each image's own, from its seed
                noises = [
                    torch.randn(latents[:1].shape, generator=torch.Generator().manual_seed(t.seed)) for t in tasks
                ]
                filler = torch.cat(noises).to(latents.device, latents.dtype)
            # What an inpainting UNet sees of the image: the kept pixels (a pixel tensor, which the pipeline
            # encodes); other UNets ignore it, so the masked latent saves an encode.
            kept = (
                self._pixels(image) * (self._pixels(masks) < 0.5) if self.inpainting_model else latents * (1 - masked)
            )
            return inputs | {"image": latents * (1 - masked) + filler * masked, "masked_image_latents": kept}
        if isinstance(image, torch.Tensor):  # a latent start (hires fix's second pass): the masked image is all masked
            inputs["masked_image_latents"] = torch.zeros(
                len(tasks), 3, key.height, key.width, device=image.device, dtype=image.dtype
            )
        return inputs

    def _pixels(self, images: list[Image.Image]) -> torch.Tensor:
        """Images as the VAE takes them: -1 to 1 (a mask: 0 to 1), on the model's device."""
        processor = self._inpaint.mask_processor if images[0].mode == "L" else self._inpaint.image_processor
        pixels: torch.Tensor = processor.preprocess(images, height=images[0].height, width=images[0].width)
        return pixels.to(self.model.device, self.model.dtype)

    def _encoded(self, images: list[Image.Image], generators: list[torch.Generator]) -> torch.Tensor:
        """Each image's latent, drawn with its own generator (as the pipeline encodes one)."""
        pixels = self._pixels(images)
        vae = self.model.pipeline.vae
        rows = [vae.encode(pixels[i : i + 1]).latent_dist.sample(generators[i]) for i in range(len(images))]
        latents: torch.Tensor = torch.cat(rows) * vae.config.scaling_factor
        return latents

    def _init_images(self, tasks: list[ImageTask]) -> list[Image.Image] | torch.Tensor:
        """img2img's starting points: images resized to the batch's size, or latents as they are (diffusers
        takes a 4-channel tensor as latents and skips the VAE's encoder)."""
        key = tasks[0].key
        if key.latent:
            latents = [_init_latent(task) for task in tasks]
            return torch.stack(latents).to(self.model.device, self.model.dtype)
        return [resize_for_generation(_init_image(task), key.width, key.height, 0) for task in tasks]

    def _initial_noise(self, tasks: list[ImageTask], generators: list[torch.Generator]) -> torch.Tensor:
        """Per-image noise from the image's own generator, blended with its subseed's if asked."""
        key = tasks[0].key
        scale = self.model.pipeline.vae_scale_factor
        shape = (1, self.model.pipeline.vae.config.latent_channels, key.height // scale, key.width // scale)
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


@contextlib.contextmanager
def tiled(pipeline: DiffusionPipeline, graphs: Iterable[GraphedForward]) -> Iterator[None]:
    """Every convolution of the pipeline pads circularly, so the image tiles seamlessly (A1111's Tiling), and the
    built graphs (which pad with zeros) stand aside; all as before afterwards, whatever happens."""
    convolutions = [
        layer
        for component in pipeline.components.values()
        if isinstance(component, torch.nn.Module)
        for layer in component.modules()
        if isinstance(layer, torch.nn.Conv2d)
    ]
    graphs = list(graphs)
    with contextlib.ExitStack() as held:
        for graph in graphs:  # wait for a compile in progress: it must not see circular padding
            held.enter_context(graph.module_lock)
        for layer in convolutions:
            layer.padding_mode = "circular"
        for graph in graphs:
            graph.eager_only = True
        try:
            yield
        finally:
            for layer in convolutions:
                layer.padding_mode = "zeros"
            for graph in graphs:
                graph.eager_only = False


def _probe_task(width: int, height: int, clip_skip: int) -> ImageTask:
    """One image of one step: the cheapest batch that makes every module call a batch of its size makes."""
    key = BatchKey("txt2img", width, height, 1, "Euler", "automatic", 7.0, clip_skip=clip_skip)
    return ImageTask(Job(id="warm-up", key=key, image_count=1), 0, "", "", 0, 0, 0.0, None)


def _resizer(example: Inputs, images: int, batch: int) -> Callable[[], Inputs]:
    """The example for a batch of `batch`, made when the compile thread builds it (not held meanwhile)."""
    return lambda: resized(example, images, batch)


def _latent_mask(masks: list[Image.Image], latents: torch.Tensor) -> torch.Tensor:
    """The masks at the latent's size, rounded to 0 or 1 (A1111 rounds its latent mask)."""
    height, width = latents.shape[-2:]
    rows = [torch.from_numpy(np.array(mask.resize((width, height), Image.Resampling.BILINEAR))) for mask in masks]
    return (torch.stack(rows)[:, None].float() / 255.0).round().to(latents.device, latents.dtype)


def _init_image(task: ImageTask) -> Image.Image:
    """An img2img task's image; the service gives every one of them an image."""
    if not isinstance(task.init_image, Image.Image):
        raise TypeError(f"img2img task {task.index} of job {task.job.id} has no init image")
    return task.init_image


def _init_latent(task: ImageTask) -> torch.Tensor:
    """A hires fix second pass's latent (the first pass's, upscaled)."""
    if not isinstance(task.init_image, torch.Tensor):
        raise TypeError(f"latent img2img task {task.index} of job {task.job.id} has no init latent")
    return task.init_image


def img2img_strength(steps: int, strength: float) -> float:
    """The strength to give diffusers, which runs int(steps x strength) steps and fails when that is none
    ("stack expects a non-empty TensorList", a 500 for img2img with steps 1 or a small denoising_strength).
    A1111 runs at least the last step of the schedule then; so does this."""
    return strength if int(steps * strength) >= 1 else min(1.0, 1.5 / steps)


def is_out_of_memory(error: BaseException) -> bool:
    return isinstance(error, OUT_OF_MEMORY) or "out of memory" in str(error).lower()
