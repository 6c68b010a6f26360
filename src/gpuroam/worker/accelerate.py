"""The CUDA fast path: the same pipeline and the same arithmetic, scheduled better.

GPUs are the scarce part, so the worker's default on CUDA is:

- channels-last memory for the UNet and VAE (cuDNN's fast convolution layout);
- fused query/key/value projections (one matrix product instead of three);
- cuDNN autotuning of convolution algorithms;
- Inductor's compiled graphs of the UNet, the VAE decoder and the text encoder, built ahead of time
  by a compile process of their own (AOTInductor packages: worker/aot.py, worker/compile_process.py),
  each captured into a CUDA graph (`reduce-overhead`), which removes the per-kernel launch cost that
  dominates small batches;
- a few fixed batch sizes (buckets) at the common image sizes, each compiled once, in the
  background (worker/warmup.py): the worker serves eagerly from the moment its model is loaded,
  and each batch shape switches to its graph once that is built (worker/graphs.py). The batcher
  runs the largest bucket the queue fills, and the engine pads a batch up to a bucket whose graphs
  are built (padding rows are dropped).

Packages are kept on disk (`cache_dir`): a restart loads them, and the directory is an artefact that
starts a worker on another machine of the same GPU type (worker/artefact.py). None of this changes what is computed
beyond kernel-level rounding: `tests/worker/test_accelerate.py` checks the images against the eager
path on the CPU, every graph is checked against its eager module before use, and bench/gpu_engine.py
checks the images on the GPU.
"""

from __future__ import annotations

import bisect
import logging
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

# diffusers' top-level names are, to a type checker, placeholder classes: import from the defining modules.
from diffusers.pipelines.pipeline_utils import DiffusionPipeline

from gpuroam.worker.config import WorkerConfig
from gpuroam.worker.graphs import GraphedForward, WeightWrites
from gpuroam.worker.models import LoadedModel
from gpuroam.worker.packages import Packages
from gpuroam.worker.rewrites import compiled_modules, rewrite

log = logging.getLogger("gpuroam.worker.accelerate")

DEFAULT_BUCKETS = (1, 2, 4, 8, 12, 16, 24, 32)
COMPILE_MODES = ("none", "default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
# Inductor's mode for each: CUDA graphs are captured by worker/graphs.py, not by Inductor (see there).
INDUCTOR_MODES = {"reduce-overhead": "default", "max-autotune": "max-autotune-no-cudagraphs"}
CUDA_GRAPH_MODES = ("reduce-overhead", "max-autotune")

# A1111's common sizes, most requested first, then the hires-fix targets (2x) of the first three.
SD_SIZES = ((512, 512), (512, 768), (768, 512), (768, 768), (640, 640), (1024, 1024), (1024, 1536), (1536, 1024))
SDXL_SIZES = ((1024, 1024), (832, 1216), (1216, 832), (896, 1152), (1152, 896), (768, 1344), (1344, 768))
# Buckets compiled at a size hold at most this many pixels (32 images of 512x512): a hires-fix target
# gets the batches that fit the memory the common size's largest batch takes.
PIXEL_BUDGET = 32 * 512 * 512


def default_cache_dir() -> Path:
    return Path(os.environ.get("GPUROAM_COMPILE_CACHE", Path.home() / ".cache" / "gpuroam" / "inductor"))


@dataclass(frozen=True)
class Acceleration:
    """How the fast path is built; `Acceleration.off()` is the plain eager pipeline."""

    channels_last: bool = True
    fuse_qkv: bool = True
    compile_mode: str = "reduce-overhead"  # one of COMPILE_MODES; "none" keeps eager modules
    backend: str = "inductor"  # "eager": exported programs run by eager kernels (the CPU tests use it; worker/aot.py)
    buckets: tuple[int, ...] = DEFAULT_BUCKETS
    warm_sizes: tuple[tuple[int, int], ...] | None = None  # compiled after start; None: the model's common sizes
    cache_dir: Path = field(default_factory=default_cache_dir)

    def __post_init__(self) -> None:
        if self.compile_mode not in COMPILE_MODES:
            raise ValueError(f"compile mode {self.compile_mode!r}: use one of {', '.join(COMPILE_MODES)}")
        if not self.buckets or sorted(set(self.buckets)) != list(self.buckets) or self.buckets[0] < 1:
            raise ValueError(f"buckets {self.buckets!r}: give increasing batch sizes from 1, e.g. 1,2,4,8,16,32")

    @classmethod
    def off(cls) -> Acceleration:
        return cls(channels_last=False, fuse_qkv=False, compile_mode="none", buckets=(1,), warm_sizes=())

    @property
    def compiles(self) -> bool:
        return self.compile_mode != "none"

    @property
    def compiler(self) -> str:
        """What builds the packages: "inductor" and its mode, or "eager" (worker/aot.py)."""
        if self.backend != "inductor":
            return self.backend
        return f"inductor {INDUCTOR_MODES.get(self.compile_mode, self.compile_mode)}"

    def sizes_for(self, sdxl: bool) -> tuple[tuple[int, int], ...]:
        if self.warm_sizes is not None:
            return self.warm_sizes
        return SDXL_SIZES if sdxl else SD_SIZES

    def buckets_at(self, width: int, height: int) -> tuple[int, ...]:
        """The buckets compiled at a size, in build order: one image, the largest batch, then the rest."""
        fitting = [b for b in self.buckets if b == 1 or b * width * height <= PIXEL_BUDGET] or [self.buckets[0]]
        return (fitting[0], *sorted(fitting[1:], reverse=True))

    def bucket(self, size: int) -> int:
        """The batch size `size` images run at: the smallest bucket that holds them (or `size` above all)."""
        if not self.compiles:
            return size
        index = bisect.bisect_left(self.buckets, size)
        return self.buckets[index] if index < len(self.buckets) else size


def default_acceleration(device: torch.device) -> Acceleration:
    """On by default on CUDA; on the CPU the eager pipeline is kept (batch-invariant kernels matter more)."""
    return Acceleration() if device.type == "cuda" else Acceleration.off()


def acceleration_for(config: WorkerConfig, device: torch.device) -> Acceleration:
    """The worker's flags: `--compile auto` is the default for the device; `none` the eager pipeline."""
    if config.compile == "auto":
        chosen = default_acceleration(device)
    elif config.compile == "none":
        chosen = Acceleration.off()
    else:
        chosen = Acceleration(compile_mode=config.compile)
    if chosen.compiles and config.buckets:
        chosen = replace(chosen, buckets=config.buckets)
    if chosen.compiles:  # a bucket above the largest batch the batcher forms would never run
        chosen = replace(chosen, buckets=tuple(b for b in chosen.buckets if b <= config.max_batch) or (1,))
    if config.compile_sizes is not None:
        chosen = replace(chosen, warm_sizes=config.compile_sizes)
    if config.compile_cache:
        chosen = replace(chosen, cache_dir=Path(config.compile_cache))
    return chosen


def accelerate(
    pipeline: DiffusionPipeline,
    acceleration: Acceleration,
    packages: Packages | None = None,
    weights: WeightWrites | None = None,
) -> list[GraphedForward]:
    """Rebuild `pipeline`'s modules in place for speed; call before any pipeline is derived from it.
    Returns the compiled modules' forwards, whose graphs the compile thread has `packages` build (none
    yet); their checks exclude the in-place writes made under `weights` (worker/graphs.py)."""
    if pipeline.device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # picks each convolution's fastest algorithm once per shape
    rewrite(pipeline, acceleration.channels_last, acceleration.fuse_qkv)
    if packages is None:
        return []
    capture = pipeline.device.type == "cuda" and acceleration.compile_mode in CUDA_GRAPH_MODES
    device_lock, shared_weights = threading.Lock(), weights or WeightWrites()
    pool = torch.cuda.graph_pool_handle() if capture else None
    graphs = {
        name: GraphedForward(
            name, module.forward, packages.compiler(name, module), capture, device_lock, pool, weights=shared_weights
        )
        for name, module in compiled_modules(pipeline).items()
    }
    # In place: the pipeline keeps its own module classes, and derived pipelines share them.
    pipeline.unet.forward = _steady_inputs(graphs["unet"])
    pipeline.vae.decoder.forward = graphs["vae decoder"]
    pipeline.text_encoder.forward = graphs["text encoder"]
    log.info(
        "fast path on",
        extra={
            "compile": acceleration.compile_mode,
            "cuda_graphs": capture,
            "buckets": list(acceleration.buckets),
            "packages": str(packages.directory),
        },
    )
    return list(graphs.values())


def packages_for(model: LoadedModel, acceleration: Acceleration) -> Packages | None:
    """Where the fast path's graphs come from: None when it compiles nothing."""
    if not acceleration.compiles:
        return None
    return Packages(
        model, acceleration.compiler, acceleration.cache_dir, acceleration.channels_last, acceleration.fuse_qkv
    )


def _steady_inputs(compiled: GraphedForward) -> Callable[..., Any]:
    """The compiled UNet, always called with a float32 timestep, a contiguous sample and at least two rows.

    A compiled module is traced again for each new input dtype, memory layout or batch of one, and
    on a GPU that is minutes of compiling in front of a client. Euler's timesteps are float32, DPM++
    2M's and DDIM's int64, DPM2 Karras' float64; img2img's latents come from the channels-last VAE in
    its layout; one image without CFG (CFG 1, as LCM is run) is a UNet batch of one, which Dynamo
    compiles as a graph of its own (it never treats a size of 1 as dynamic). The UNet turns the
    timestep into float32 first thing (its sinusoidal embedding), the copy to a contiguous sample
    changes no value, and a batch of one runs as two copies of its row (the warmed graph of a one-image
    CFG batch) of which one is kept: the images do not change."""

    def forward(sample: torch.Tensor, timestep: torch.Tensor | float, *args: Any, **kwargs: Any) -> Any:
        if isinstance(timestep, torch.Tensor):
            timestep = timestep.float()
        if sample.shape[0] != 1:
            return compiled(sample.contiguous(), timestep, *args, **kwargs)
        doubled = compiled(*_twice((sample.contiguous(), timestep, *args)), **_twice(kwargs))
        if isinstance(doubled, tuple):  # return_dict=False, as the pipelines call it
            return tuple(output[:1] for output in doubled)
        return type(doubled)(sample=doubled.sample[:1])

    return forward


def _twice(inputs: Any) -> Any:
    """`inputs` with every tensor of one row (batch-first) repeated to two rows; the rest as they are."""
    if isinstance(inputs, torch.Tensor):
        return inputs.expand(2, *inputs.shape[1:]).contiguous() if inputs.dim() and inputs.shape[0] == 1 else inputs
    if isinstance(inputs, tuple):
        return tuple(_twice(item) for item in inputs)
    if isinstance(inputs, dict):
        return {name: _twice(item) for name, item in inputs.items()}
    return inputs


def to_uint8_images(images: torch.Tensor) -> list[torch.Tensor]:
    """Pipeline output in [0, 1] (N, C, H, W) -> uint8 HWC rows on the CPU; the rounding runs on the device."""
    pixels = images.clamp(0, 1).mul(255).round().to(torch.uint8).permute(0, 2, 3, 1).contiguous()
    return list(pixels.cpu())
