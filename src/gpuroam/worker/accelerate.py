"""The CUDA fast path: the same pipeline and the same arithmetic, scheduled better.

GPUs are the scarce part, so the worker's default on CUDA is:

- channels-last memory for the UNet and VAE (cuDNN's fast convolution layout);
- fused query/key/value projections (one matrix product instead of three);
- cuDNN autotuning of convolution algorithms;
- `torch.compile` (Inductor) of the UNet, the VAE decoder and the text encoder, with CUDA graphs
  (`reduce-overhead`), which removes the per-kernel launch cost that dominates small batches;
- a few fixed batch sizes (buckets), each compiled and its CUDA graph recorded once, at start,
  instead of in front of a client: the batcher runs the largest bucket the queue fills, and the
  engine pads any other batch up to a bucket (padding rows are dropped).

Compiled kernels are cached on disk (`cache_dir`), so a restarted worker skips most of the compile.
None of this changes what is computed beyond kernel-level rounding: `tests/worker/test_accelerate.py`
checks the images against the eager path on the CPU, and bench/gpu_engine.py on the GPU.
"""

from __future__ import annotations

import bisect
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, TypedDict

import torch

# diffusers' top-level names are, to a type checker, placeholder classes: import from the defining modules.
from diffusers.pipelines.pipeline_utils import DiffusionPipeline

from gpuroam.worker.config import WorkerConfig

log = logging.getLogger("gpuroam.worker.accelerate")

DEFAULT_BUCKETS = (1, 2, 4, 8, 12, 16, 24, 32)
COMPILE_MODES = ("none", "default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")


def default_cache_dir() -> Path:
    return Path(os.environ.get("GPUROAM_COMPILE_CACHE", Path.home() / ".cache" / "gpuroam" / "inductor"))


@dataclass(frozen=True)
class Acceleration:
    """How the fast path is built; `Acceleration.off()` is the plain eager pipeline."""

    channels_last: bool = True
    fuse_qkv: bool = True
    compile_mode: str = "reduce-overhead"  # one of COMPILE_MODES; "none" keeps eager modules
    backend: str = "inductor"  # "eager" traces with Dynamo but runs eager kernels (the CPU tests use it)
    buckets: tuple[int, ...] = DEFAULT_BUCKETS
    warm_sizes: tuple[tuple[int, int], ...] = ((512, 512),)
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

    def bucket(self, size: int) -> int:
        """The batch size `size` images run at: the smallest bucket that holds them (or `size` above all)."""
        if not self.compiles:
            return size
        index = bisect.bisect_left(self.buckets, size)
        return self.buckets[index] if index < len(self.buckets) else size


class CompileOptions(TypedDict, total=False):
    """What torch.compile gets for every compiled module; a mode only with Inductor, which reads it."""

    backend: str
    mode: str


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
    if config.compile_cache:
        chosen = replace(chosen, cache_dir=Path(config.compile_cache))
    return chosen


def accelerate(pipeline: DiffusionPipeline, acceleration: Acceleration) -> None:
    """Rebuild `pipeline`'s modules in place for speed; call before any pipeline is derived from it."""
    if acceleration.compiles:
        use_compile_cache(acceleration.cache_dir)
    if pipeline.device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # picks each convolution's fastest algorithm once per shape
    unet, vae = pipeline.unet, pipeline.vae
    if acceleration.fuse_qkv:
        unet.fuse_qkv_projections()
        vae.fuse_qkv_projections()
    if acceleration.channels_last:
        unet.to(memory_format=torch.channels_last)
        vae.to(memory_format=torch.channels_last)
    if not acceleration.compiles:
        return
    # Dynamo's default: the first shape compiles static, the second makes the batch dimension dynamic, so
    # two compiles serve every bucket (CUDA graphs are recorded per bucket). dynamic=True, which makes
    # every dimension symbolic, took over 5 minutes for the UNet alone on an H200 (bench/RESULTS.md).
    options = CompileOptions(backend=acceleration.backend)
    if acceleration.backend == "inductor":
        options["mode"] = acceleration.compile_mode
    # In place: the pipeline keeps its own module classes, and derived pipelines share them.
    unet.forward = _steady_inputs(torch.compile(unet.forward, fullgraph=True, **options))
    vae.decoder.compile(fullgraph=True, **options)
    pipeline.text_encoder.compile(**options)  # transformers' text model may break the graph: that is allowed
    log.info(
        "fast path on",
        extra={
            "compile": acceleration.compile_mode,
            "buckets": list(acceleration.buckets),
            "cache": str(acceleration.cache_dir),
        },
    )


def _steady_inputs(compiled: Callable[..., Any]) -> Callable[..., Any]:
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


def use_compile_cache(cache_dir: Path) -> None:
    """Inductor's on-disk caches (compiled graphs, autotuning) and Triton's kernels under `cache_dir`,
    kept across restarts. Set, not defaulted: importing diffusers already pointed Inductor at
    /tmp/torchinductor_<user> (its own default, written into the environment on first use), so a
    default here left every graph in /tmp and only Triton's kernels in `cache_dir`."""
    cache_dir.mkdir(parents=True, exist_ok=True)
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(cache_dir.resolve())
    os.environ["TRITON_CACHE_DIR"] = str((cache_dir / "triton").resolve())
    import torch._inductor.config as inductor_config

    inductor_config.fx_graph_cache = True
    inductor_config.autotune_local_cache = True
    inductor_config.conv_1x1_as_mm = True  # SD's many 1x1 convolutions run as matrix products
    torch._dynamo.config.cache_size_limit = max(torch._dynamo.config.cache_size_limit, 64)  # one graph per bucket


def to_uint8_images(images: torch.Tensor) -> list[torch.Tensor]:
    """Pipeline output in [0, 1] (N, C, H, W) -> uint8 HWC rows on the CPU; the rounding runs on the device."""
    pixels = images.clamp(0, 1).mul(255).round().to(torch.uint8).permute(0, 2, 3, 1).contiguous()
    return list(pixels.cpu())
