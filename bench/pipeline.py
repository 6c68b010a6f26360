"""Plain diffusers, no HTTP and no PNG: the baseline the worker's figures are compared with.

Builds the model the worker would serve (same builder), then times the stock
StableDiffusionPipeline at several batch sizes: 512x512, 20 steps, CFG 7, Euler a.

    python bench/pipeline.py --model sd15-random --device cuda --batches 1,16,32
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from gpuroam.worker.models import load_model, resolve_device
from gpuroam.worker.samplers import make_scheduler, resolve


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="tiny")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--batches", default="1,4,16")
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    model = load_model(args.model, resolve_device(args.device))
    pipeline = model.pipeline
    pipeline.scheduler = make_scheduler(*resolve("Euler a", None), dict(pipeline.scheduler.config))
    sync = torch.cuda.synchronize if model.device.type == "cuda" else (lambda: None)
    print(f"| batch | img/s | s per batch (median of {args.repeats}) |\n|---|---|---|")
    for batch in (int(b) for b in args.batches.split(",")):
        prompts = ["a lighthouse on a cliff at dusk, detailed"] * batch

        def once() -> float:
            sync()
            started = time.perf_counter()
            pipeline(prompts, negative_prompt=["blurry"] * batch, num_inference_steps=args.steps, guidance_scale=7.0,
                     width=args.size, height=args.size, output_type="pil")
            sync()
            return time.perf_counter() - started

        once()  # warm-up
        seconds = statistics.median(once() for _ in range(args.repeats))
        print(f"| {batch} | {batch / seconds:.2f} | {seconds:.3f} |", flush=True)


if __name__ == "__main__":
    main()
