"""Generation alone, no HTTP and no PNG: plain diffusers, or gpuroam's engine, at several batch sizes.

Builds the model the worker would serve (same builder), then times either the stock
StableDiffusionPipeline (the baseline the worker's HTTP figures are compared with) or
gpuroam's Engine (per-image seeds; on the CPU its batch-invariant mode). Euler a, CFG 7.

    python bench/pipeline.py --model sd15-random --device cuda --batches 1,16,32
    python bench/pipeline.py --engine --threads 1 --batches 1 --shapes 512:20,64:2
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch

from gpuroam.worker.engine import Engine
from gpuroam.worker.jobs import BatchKey, ImageTask, Job
from gpuroam.worker.models import LoadedModel, load_model, resolve_device
from gpuroam.worker.samplers import make_scheduler, resolve

PROMPT = "a lighthouse on a cliff at dusk, detailed"


def stock_pipeline(model: LoadedModel, batch: int, size: int, steps: int) -> Callable[[], None]:
    pipeline = model.pipeline
    pipeline.scheduler = make_scheduler(*resolve("Euler a", None), dict(pipeline.scheduler.config))
    return lambda: pipeline(
        [PROMPT] * batch,
        negative_prompt=["blurry"] * batch,
        num_inference_steps=steps,
        guidance_scale=7.0,
        width=size,
        height=size,
        output_type="pil",
    )


def engine_batch(engine: Engine, batch: int, size: int, steps: int) -> Callable[[], None]:
    key = BatchKey("txt2img", size, size, steps, "Euler a", "automatic", 7.0)
    tasks = [
        ImageTask(Job(id="bench", key=key, image_count=batch), i, PROMPT, "blurry", i, i, 0.0, None)
        for i in range(batch)
    ]
    return lambda: engine.run(tasks)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="tiny")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--batches", default="1,4,16")
    parser.add_argument("--shapes", default="512:20", help="width:steps pairs (square images)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, help="torch CPU threads")
    parser.add_argument("--engine", action="store_true", help="time gpuroam's Engine instead of stock diffusers")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    model = load_model(args.model, resolve_device(args.device))
    engine = Engine(model) if args.engine else None
    sync = torch.cuda.synchronize if model.device.type == "cuda" else (lambda: None)
    print(
        f"{'gpuroam Engine' if engine else 'stock diffusers'}, {args.model} on {model.device}, "
        f"{torch.get_num_threads()} CPU threads, median of {args.repeats} after a warm-up"
    )
    print("| shape | batch | img/s | s per batch |\n|---|---|---|---|")
    for size, steps in (tuple(int(v) for v in pair.split(":")) for pair in args.shapes.split(",")):
        for batch in (int(b) for b in args.batches.split(",")):
            step = engine_batch(engine, batch, size, steps) if engine else stock_pipeline(model, batch, size, steps)

            def once(step: Callable[[], None] = step) -> float:
                sync()
                started = time.perf_counter()
                step()
                sync()
                return time.perf_counter() - started

            once()
            seconds = statistics.median(once() for _ in range(args.repeats))
            print(f"| {size}x{size}, {steps} steps | {batch} | {batch / seconds:.2f} | {seconds:.4f} |", flush=True)


if __name__ == "__main__":
    main()
