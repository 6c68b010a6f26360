"""The worker's engine on a GPU, eager against the fast path: start-up, latency, throughput, quality.

Generation alone (no HTTP, no PNG), through gpuroam's Engine as the worker runs it: per-image
seeds, Euler a, CFG 7, 512x512, 20 steps. For each variant: the time to build and warm it
(compiles included), one image's latency (median), images/s at each batch size, and how far its
images are from the eager engine's for the same seeds. For compiled variants also: one image's
latency when the sampler's noise is copied to the GPU with diffusers' blocking copy (what the
engine did before `gpuroam.worker.noise`), and how many times one image makes the CPU wait for
the GPU (PyTorch's sync debug mode), and whether any request unlike the warm-up's (other samplers,
img2img, clip skip, CFG 1) compiles in front of its client, and one image's time by stage (text
encoder, UNet steps, VAE decode).

    python bench/gpu_engine.py --model sd15-random --variants eager,reduce-overhead --batches 1,16,32
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import sys
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import torch
from diffusers.utils import torch_utils
from PIL import Image
from torch._dynamo.utils import counters

from gpuroam.worker import noise
from gpuroam.worker.accelerate import Acceleration
from gpuroam.worker.engine import Engine
from gpuroam.worker.jobs import BatchKey, ImageTask, Job
from gpuroam.worker.models import load_model, resolve_device

PROMPT = "a lighthouse on a cliff at dusk, detailed"
DIFFUSERS_RANDN = torch_utils.randn_tensor  # taken before any batch swaps it


def tasks(batch: int, size: int, steps: int, first_seed: int = 0) -> list[ImageTask]:
    key = BatchKey("txt2img", size, size, steps, "Euler a", "automatic", 7.0)
    job = Job(id="bench", key=key, image_count=batch)
    return [ImageTask(job, i, PROMPT, "blurry", first_seed + i, 0, 0.0, None) for i in range(batch)]


def first_requests(args: argparse.Namespace) -> list[tuple[BatchKey, int]]:
    """Requests unlike the warm-up's (other samplers' timestep dtypes, Karras, img2img, clip skip, one
    image without CFG), each with the images it asks for (3, padded to a bucket, where one holds 3)."""
    size, steps = args.size, args.steps
    keys = [BatchKey("txt2img", size, size, steps, name, "automatic", 7.0) for name in ("DPM++ 2M", "DDIM", "UniPC")]
    keys += [
        BatchKey("txt2img", size, size, steps, "DPM2", "karras", 7.0),
        BatchKey("txt2img", size, size, steps, "DPM++ 2M", "karras", 7.0, clip_skip=2),
        BatchKey("img2img", size, size, steps, "Euler a", "automatic", 7.0, denoising_strength=0.6),
    ]
    several = [(key, 3) for key in keys[:2]] if max(args.batches) >= 3 else []
    return [(key, 1) for key in keys] + several + [(BatchKey("txt2img", size, size, 4, "LCM", "automatic", 1.0), 1)]


def no_compile_after_warm_up(engine: Engine, args: argparse.Namespace) -> dict:
    """Each first request's seconds and the graphs Dynamo traced for it: a compile in front of a client
    shows as minutes and a new graph."""
    init = Image.new("RGB", (args.size, args.size), (120, 30, 200))
    graphs, slowest = counters["stats"]["unique_graphs"], 0.0
    for key, images in first_requests(args):
        job = Job(id="first", key=key, image_count=images)
        work = [
            ImageTask(job, i, PROMPT, "", i, 0, 0.0, init if key.mode == "img2img" else None) for i in range(images)
        ]
        slowest = max(slowest, timed(engine, work))
    return {
        "first_requests_slowest_s": round(slowest, 3),
        "graphs_after_warm_up": counters["stats"]["unique_graphs"] - graphs,
    }


def one_image_by_stage(engine: Engine, args: argparse.Namespace) -> dict:
    """Milliseconds of one CFG image's stages, each compiled module timed alone at its warmed shape
    (median of 5): the text encoder (prompt and negative), one UNet step, all the steps back to back,
    and the VAE decode. What the image's latency has beyond their sum is the sampler's own work, the
    noise, the uint8 conversion and any time the GPU waits for the CPU."""
    pipe, device = engine.model.pipeline, engine.model.device
    latent = args.size // pipe.vae_scale_factor

    def ms(work: Callable[[], object]) -> float:
        gpu_seconds(work)
        return round(1000 * statistics.median(gpu_seconds(work) for _ in range(5)), 2)

    with torch.inference_mode():
        prompt, negative = pipe.encode_prompt([PROMPT], device, 1, True, ["blurry"])
        context = torch.cat([negative, prompt])
        sample = torch.randn(2, pipe.unet.config.in_channels, latent, latent, device=device, dtype=context.dtype)
        timestep = torch.tensor(500.0, device=device)
        latents = sample[:1] / pipe.vae.config.scaling_factor

        def step() -> object:  # called as the pipeline calls it: other keywords would be another graph
            return pipe.unet(
                sample,
                timestep,
                encoder_hidden_states=context,
                timestep_cond=None,
                cross_attention_kwargs=None,
                added_cond_kwargs=None,
                return_dict=False,
            )

        stages = {
            "text_encoder_ms": ms(lambda: pipe.encode_prompt([PROMPT], device, 1, True, ["blurry"])),
            "unet_step_ms": ms(step),
            "unet_all_steps_ms": ms(lambda: [step() for _ in range(args.steps)]),
            "vae_decode_ms": ms(lambda: pipe.vae.decode(latents, return_dict=False)),
        }
    return stages


def gpu_seconds(work: Callable[[], object]) -> float:
    """Wall seconds of `work` and everything it queued on the GPU."""
    torch.cuda.synchronize()
    started = time.perf_counter()
    work()
    torch.cuda.synchronize()
    return time.perf_counter() - started


def timed(engine: Engine, work: list[ImageTask]) -> float:
    return gpu_seconds(lambda: engine.run(work))


@contextlib.contextmanager
def blocking_noise_copies() -> Iterator[None]:
    """The engine as it was before: noise reaches the GPU through diffusers' blocking copy."""
    swapped = noise.randn_tensor_without_sync
    noise.randn_tensor_without_sync = DIFFUSERS_RANDN
    try:
        yield
    finally:
        noise.randn_tensor_without_sync = swapped


def syncs_in_one_image(engine: Engine, args: argparse.Namespace) -> int:
    """How many times one image's generation makes the CPU wait for the GPU."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            engine.run(tasks(1, args.size, args.steps))
        finally:
            torch.cuda.set_sync_debug_mode("default")
    return sum("synchroniz" in str(warning.message) for warning in caught)


def profile_kernels(engine: Engine, args: argparse.Namespace, batch: int, top: int = 25) -> None:
    """Print where one batch's GPU time goes, by kernel (a variant's eager kernels: convolutions,
    matrix products and attention are the same kernels the compiled path calls)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CUDA]) as profiler:
        engine.run(tasks(batch, args.size, args.steps))
        torch.cuda.synchronize()
    kernels = [e for e in profiler.key_averages() if e.device_time_total > 0]
    total = sum(e.device_time_total for e in kernels)
    print(f"GPU time by kernel, batch {batch}: {total / 1e6:.2f} s in all", flush=True)
    for event in sorted(kernels, key=lambda e: -e.device_time_total)[:top]:
        share = 100 * event.device_time_total / total
        print(f"  {share:5.1f}%  {event.count:6d}x  {event.key[:110]}", flush=True)


def acceleration(variant: str, buckets: tuple[int, ...], size: int) -> Acceleration:
    """`eager`, or a compile mode."""
    if variant == "eager":
        return Acceleration.off()
    return Acceleration(compile_mode=variant, buckets=buckets, warm_sizes=((size, size),))


def measure(variant: str, args: argparse.Namespace, reference: np.ndarray | None) -> dict:
    buckets = tuple(sorted({1, *args.batches}))
    began = time.perf_counter()
    model = load_model(args.model, resolve_device("cuda"))
    loaded = time.perf_counter() - began
    engine = Engine(model, acceleration(variant, buckets, args.size))
    warm = engine.warm_up()
    if engine.warmup is not None:  # the worker builds these in the background; here, before measuring
        engine.warmup.build_all()
    row: dict = {
        "variant": variant,
        "load_s": round(loaded, 1),
        "warm_up_s": round(time.perf_counter() - began - loaded, 1),
    }
    row["probe_s"] = round(warm, 1)
    if variant != "eager":
        row |= no_compile_after_warm_up(engine, args)
    latencies = [timed(engine, tasks(1, args.size, args.steps)) for _ in range(args.repeats * 3)]
    row["latency_s"] = round(statistics.median(latencies), 4)
    if variant != "eager":
        with blocking_noise_copies():
            blocking = [timed(engine, tasks(1, args.size, args.steps)) for _ in range(args.repeats * 3)]
        row["latency_blocking_noise_s"] = round(statistics.median(blocking), 4)
    row["syncs_per_image"] = syncs_in_one_image(engine, args)
    if variant != "eager":
        graphs = counters["stats"]["unique_graphs"]
        row |= one_image_by_stage(engine, args)
        assert counters["stats"]["unique_graphs"] == graphs, "a stage was timed on a graph of its own"
    for batch in args.batches:
        work = tasks(batch, args.size, args.steps)
        timed(engine, work)
        seconds = statistics.median(timed(engine, work) for _ in range(args.repeats))
        row[f"img/s@{batch}"] = round(batch / seconds, 2)
    if variant in args.profile:
        profile_kernels(engine, args, max(args.batches))
    images = np.stack([np.asarray(i, dtype=np.int16) for i in engine.run(tasks(4, args.size, args.steps, 100)).images])
    if reference is not None:
        diff = np.abs(images - reference)
        mse = float((diff.astype(np.float64) ** 2).mean())
        row |= {
            "mean_abs_diff": round(float(diff.mean()), 3),
            "max_diff": int(diff.max()),
            "psnr_db": round(10 * np.log10(255**2 / mse), 1) if mse else float("inf"),
        }
    row["peak_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 1)
    print(json.dumps(row), flush=True)
    del engine, model
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    return {"row": row, "images": images}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="sd15-random")
    parser.add_argument("--variants", default="eager,reduce-overhead")
    parser.add_argument("--batches", default="16,32")
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--profile", default="", help="variants whose GPU time is printed by kernel")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    args.profile = args.profile.split(",")
    args.batches = [int(b) for b in args.batches.split(",")]
    print(f"{torch.cuda.get_device_name()}, torch {torch.__version__}, {args.size}px, {args.steps} steps", flush=True)
    rows, reference = [], None
    for variant in args.variants.split(","):
        result = measure(variant, args, reference)
        reference = result["images"] if reference is None else reference
        rows.append(result["row"])
    columns = list(dict.fromkeys(key for row in rows for key in row))
    print("| " + " | ".join(columns) + " |\n|" + "---|" * len(columns))
    for row in rows:
        print("| " + " | ".join(str(row.get(c, "")) for c in columns) + " |")
    if args.json:
        args.json.write_text(json.dumps({"device": torch.cuda.get_device_name(), "rows": rows}, indent=1))
    sys.stdout.flush()


if __name__ == "__main__":
    main()
