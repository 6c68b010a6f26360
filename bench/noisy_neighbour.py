"""A small client's latency while heavy clients saturate the service: before and after issue 20.

One `gpuroam gateway` in front of one `gpuroam worker` (tiny model by default), each run from the
code under test. A small client sends one image at a time, closed loop, and its latency is timed;
meanwhile `--heavy` clients each keep a job of `--heavy-images` images (batch_size 8) in flight. Every
client keeps its own cookies, so the gateway tells them apart (the code before issue 20 knows only
one user per address, which is the point of the comparison); each client first fetches its session
cookie, as a browser does with the page. First the small client alone, then with the heavy ones; per
variant a fresh worker and gateway. The worker's images/s over the run come from its /metrics.

    python bench/noisy_neighbour.py --baseline-src .base20/src --json out.json

`.base20/src` is `git archive 797d809^ src`: the code before issue 20's fair queue and limits.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
from gpuroam.providers.local import free_port


@contextlib.contextmanager
def service(src: Path, args: argparse.Namespace) -> Iterator[tuple[str, str]]:
    """A worker and a gateway in front of it, from the code in `src`; the gateway's URL and the worker's."""
    env = {**os.environ, "PYTHONPATH": str(src.resolve()), "PYTHONUNBUFFERED": "1"}
    worker_port, gateway_port = free_port(), free_port()
    worker = [sys.executable, "-m", "gpuroam", "worker", "--port", str(worker_port), "--model", args.model]
    worker += ["--device", args.device, "--max-batch", "8", "--max-queue", "4096", "--log-level", "warning"]
    gateway = [sys.executable, "-m", "gpuroam", "gateway", "--port", str(gateway_port), "--log-level", "warning"]
    gateway += ["--backend", f"http://127.0.0.1:{worker_port}", "--upstream-timeout", "3600"]
    processes = [subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL) for command in (worker, gateway)]
    try:
        deadline = time.monotonic() + 300
        while not _ready(f"http://127.0.0.1:{worker_port}/internal/ping", f"http://127.0.0.1:{gateway_port}/"):
            if time.monotonic() > deadline or any(p.poll() is not None for p in processes):
                raise RuntimeError(f"the service from {src} did not start")
            time.sleep(0.2)
        yield f"http://127.0.0.1:{gateway_port}", f"http://127.0.0.1:{worker_port}"
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            process.wait(30)


def _ready(ping: str, endpoint: str) -> bool:
    try:
        return httpx.get(ping, timeout=2).status_code == 200 and httpx.get(endpoint, timeout=2).status_code < 500
    except httpx.HTTPError:
        return False


def body(args: argparse.Namespace, seed: int, images: int = 1) -> dict[str, object]:
    batch = min(images, 8)
    return {"prompt": "a boat", "steps": args.steps, "width": args.size, "height": args.size, "seed": seed,
            "batch_size": batch, "n_iter": images // batch, "sampler_name": "Euler a"}  # fmt: skip


async def small_client(url: str, args: argparse.Namespace, seconds: float) -> list[float]:
    latencies: list[float] = []
    async with httpx.AsyncClient(base_url=url, timeout=3600) as client:
        await client.get("/sdapi/v1/progress")  # its session cookie
        end = time.monotonic() + seconds
        seed = 0
        while time.monotonic() < end:
            started = time.monotonic()
            (await client.post("/sdapi/v1/txt2img", json=body(args, seed))).raise_for_status()
            latencies.append(time.monotonic() - started)
            seed += 1
    return latencies


async def heavy_client(url: str, args: argparse.Namespace) -> None:
    async with httpx.AsyncClient(base_url=url, timeout=3600) as client:
        await client.get("/sdapi/v1/progress")  # its session cookie
        seed = 10_000
        while True:
            await client.post("/sdapi/v1/txt2img", json=body(args, seed, args.heavy_images))
            seed += 1


def images_made(worker: str) -> float:
    text = httpx.get(f"{worker}/metrics").text
    return float(next(line.split()[-1] for line in text.splitlines() if line.startswith("gpuroam_worker_images_total")))


async def run(url: str, worker: str, args: argparse.Namespace) -> dict[str, object]:
    await small_client(url, args, 3)  # warm
    alone = await small_client(url, args, args.seconds)
    heavy = [asyncio.create_task(heavy_client(url, args)) for _ in range(args.heavy)]
    await asyncio.sleep(2)  # the heavy jobs queue first
    started, made = time.monotonic(), images_made(worker)
    beside = await small_client(url, args, args.seconds)
    img_s = (images_made(worker) - made) / (time.monotonic() - started)
    for task in heavy:
        task.cancel()
    await asyncio.gather(*heavy, return_exceptions=True)
    return {"alone": summary(alone), "beside_heavy": summary(beside), "worker_img_s": img_s}


def summary(latencies: list[float]) -> dict[str, float]:
    ordered = sorted(latencies)
    return {"n": len(ordered), "p50_s": statistics.median(ordered), "p99_s": ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))]}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--baseline-src", type=Path, help="src/ of the code before issue 20")
    parser.add_argument("--model", default="tiny")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--heavy", type=int, default=5, help="heavy clients")
    parser.add_argument("--heavy-images", type=int, default=64)
    parser.add_argument("--seconds", type=float, default=30.0, help="the small client's run, alone and beside")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    variants = {"this": Path(__file__).resolve().parents[1] / "src"}
    if args.baseline_src:
        variants = {"before": args.baseline_src, **variants}
    results = {}
    for name, src in variants.items():
        with service(src, args) as (url, worker):
            results[name] = asyncio.run(run(url, worker, args))
        print(json.dumps({name: results[name]}), flush=True)
    print(f"| code | small client alone p50 / p99 | beside {args.heavy} heavy clients p50 / p99 | worker img/s |")
    print("|---|---|---|---|")
    for name, result in results.items():
        alone, beside = result["alone"], result["beside_heavy"]
        assert isinstance(alone, dict) and isinstance(beside, dict)
        print(
            f"| {name} | {alone['p50_s']:.3f} / {alone['p99_s']:.3f} s | {beside['p50_s']:.3f} / {beside['p99_s']:.3f} s "
            f"(n={beside['n']}) | {result['worker_img_s']:.1f} |"
        )
    if args.json:
        args.json.write_text(json.dumps({"machine": platform.node(), "args": vars(args) | {"json": str(args.json),
                             "baseline_src": str(args.baseline_src)}, "results": results}, indent=1))  # fmt: skip


if __name__ == "__main__":
    main()
