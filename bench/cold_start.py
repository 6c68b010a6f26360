"""Cold start of a worker process, through HTTP: to the first image, to full speed, and a new size.

For each variant a fresh `gpuroam worker` process is started (its own compile cache and its own
TMPDIR, so nothing of an earlier start is found) and timed from the moment it is spawned:

- ready: /internal/ping answers 200; first image: one 512x512 image (20 steps) has come back;
- new size: the first 512x768 image, asked for right after the first (no graph of that size exists);
- full speed: 32 closed-loop clients at 512x512 while the fast path compiles; the first 10 s window
  whose img/s reaches 95% of the variant's own steady rate, measured at the end (everything built);
- steady: img/s at 32 clients over 15 s, and one image's latency (median of 9), once all is built.

Variants: `empty` (this code, empty compile cache), `artefact` (this code, a fresh directory holding
only the compiled artefact the `empty` run wrote: a copy to another machine of the same GPU type),
`baseline` (the code under --baseline-src, today's worker, empty cache) and `eager` (--compile none:
the reference for a size without a graph).

    python bench/cold_start.py --variants empty,artefact,baseline,eager --baseline-src .base/src --json out.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import httpx

from gpuroam.providers.local import free_port

SRC = Path(__file__).resolve().parent.parent / "src"


@dataclass
class Start:
    variant: str
    ready_s: float = float("nan")
    first_image_s: float = float("nan")
    new_size_s: float = float("nan")  # the first 512x768 image, from its request
    new_size_again_s: float = float("nan")  # the next one: eager and warm (its graph is not built yet)
    full_speed_s: float | None = None  # from spawn; None if never reached within --follow
    steady_img_s: float = float("nan")
    one_image_s: float = float("nan")
    all_built_s: float | None = None
    windows: list[tuple[float, float, float]] = field(default_factory=list)  # (s from spawn, img/s, warmth)
    module_calls: dict[str, float] = field(default_factory=dict)  # gpuroam_worker_module_calls at the end
    log_tail: str = ""


def body(width: int, height: int, steps: int, seed: int) -> dict[str, object]:
    return {
        "prompt": "a lighthouse at dusk",
        "width": width,
        "height": height,
        "steps": steps,
        "seed": seed,
        "sampler_name": "Euler a",
        "cfg_scale": 7,
    }


async def generate(client: httpx.AsyncClient, url: str, width: int, height: int, steps: int, seed: int) -> float:
    started = time.monotonic()
    response = await client.post(f"{url}/sdapi/v1/txt2img", json=body(width, height, steps, seed), timeout=900)
    response.raise_for_status()
    return time.monotonic() - started


async def measure(variant: str, command: list[str], env: dict[str, str], args: argparse.Namespace) -> Start:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = tempfile.NamedTemporaryFile(prefix=f"cold-{variant}-", suffix=".log", delete=False)  # noqa: SIM115
    spawned = time.monotonic()
    process = subprocess.Popen([*command, "--port", str(port)], env=env, stdout=log, stderr=subprocess.STDOUT)  # noqa: ASYNC220 - returns at once
    start = Start(variant)
    try:
        async with httpx.AsyncClient() as client:
            while True:
                if process.poll() is not None:
                    raise RuntimeError(f"{variant}: the worker exited ({process.returncode})")
                try:
                    if (await client.get(f"{url}/internal/ping", timeout=2)).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                await asyncio.sleep(0.1)
            start.ready_s = time.monotonic() - spawned
            await generate(client, url, args.size, args.size, args.steps, 1)
            start.first_image_s = time.monotonic() - spawned
            if variant != "baseline":  # today's worker compiles a new size on the request: minutes (issue 23)
                start.new_size_s = await generate(client, url, *args.new_size, args.steps, 2)
                start.new_size_again_s = await generate(client, url, *args.new_size, args.steps, 3)
            if variant != "eager":
                await follow(client, url, spawned, start, args)
            start.steady_img_s = await throughput(client, url, args)
            start.one_image_s = statistics.median(
                [await generate(client, url, args.size, args.size, args.steps, 100 + i) for i in range(9)]
            )
            if variant == "eager":  # a size without a graph, warm: the reference for the new-size goal
                start.new_size_s = statistics.median(
                    [await generate(client, url, *args.new_size, args.steps, i) for i in range(3)]
                )
            start.module_calls = await module_calls(client, url)
    finally:
        process.terminate()
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
        log.close()
        start.log_tail = Path(log.name).read_text(errors="replace")[-4000:]
    return start


async def follow(client: httpx.AsyncClient, url: str, spawned: float, start: Start, args: argparse.Namespace) -> None:
    """32 clients while the graphs compile: img/s per 10 s window and the worker's warmth, until every
    graph is built (or --follow runs out)."""
    done: list[float] = []
    stop = asyncio.Event()

    async def client_loop(index: int) -> None:
        seed = 1000 * index
        while not stop.is_set():
            await generate(client, url, args.size, args.size, args.steps, seed)
            done.append(time.monotonic())
            seed += 1

    tasks = [asyncio.create_task(client_loop(i)) for i in range(args.clients)]
    began = time.monotonic()
    try:
        while time.monotonic() - began < args.follow:
            await asyncio.sleep(10)
            now = time.monotonic()
            info = (await client.get(f"{url}/gpuroam/worker", timeout=10)).json()
            rate = sum(1 for t in done if t > now - 10) / 10
            start.windows.append((round(now - spawned, 1), rate, info.get("warmth", 1.0)))
            if info.get("graphs_pending", 0) == 0 and start.all_built_s is None:
                start.all_built_s = round(now - spawned, 1)
                break
    finally:
        stop.set()
        await asyncio.gather(*tasks, return_exceptions=True)


async def throughput(client: httpx.AsyncClient, url: str, args: argparse.Namespace) -> float:
    done = 0
    deadline = time.monotonic() + args.steady

    async def loop(index: int) -> None:
        nonlocal done
        seed = 5000 * index
        while time.monotonic() < deadline:
            await generate(client, url, args.size, args.size, args.steps, seed)
            if time.monotonic() <= deadline:
                done += 1
            seed += 1

    began = time.monotonic()
    await asyncio.gather(*(loop(i) for i in range(args.clients)))
    return done / (min(time.monotonic(), deadline) - began)


async def module_calls(client: httpx.AsyncClient, url: str) -> dict[str, float]:
    """Each accelerated module's calls by path (compiled or eager), from the worker's /metrics."""
    text = (await client.get(f"{url}/metrics", timeout=10)).text
    return {
        line.split("{", 1)[1].split("}", 1)[0]: float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("gpuroam_worker_module_calls_total{")
    }


def worker_command(args: argparse.Namespace, src: Path, cache: Path, compile_mode: str) -> list[str]:
    command = [
        sys.executable,
        "-m",
        "gpuroam",
        "worker",
        "--model",
        args.model,
        "--device",
        args.device,
        "--max-batch",
        str(args.max_batch),
        "--buckets",
        args.buckets,
        "--compile",
        compile_mode,
        "--compile-cache",
        str(cache),
    ]
    if src == SRC and args.sizes:
        command += ["--compile-sizes", args.sizes]
    return command


def environment(src: Path, scratch: Path) -> dict[str, str]:
    """A process that finds nothing of an earlier start: its own TMPDIR, no inherited cache variables."""
    env = {k: v for k, v in os.environ.items() if k not in ("TORCHINDUCTOR_CACHE_DIR", "TRITON_CACHE_DIR")}
    tmp = scratch / "tmp"
    tmp.mkdir(parents=True, exist_ok=True)
    env |= {
        "TMPDIR": str(tmp),
        "PYTHONPATH": os.pathsep.join([str(src), env.get("PYTHONPATH", "")]),
        "PYTHONUNBUFFERED": "1",
        "HOME": str(scratch),
    }
    return env


def full_speed(start: Start) -> float | None:
    """The end of the first window at 95% of the steady rate."""
    return next((t for t, rate, _ in start.windows if rate >= 0.95 * start.steady_img_s), None)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variants", default="empty,artefact,baseline,eager")
    parser.add_argument("--model", default="sd15-random")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--size", type=int, default=512, help="the square size clients ask for")
    parser.add_argument(
        "--new-size", type=lambda v: tuple(int(x) for x in v.split("x")), default=(512, 768), help="WIDTHxHEIGHT"
    )
    parser.add_argument("--buckets", default="1,16,32")
    parser.add_argument("--max-batch", type=int, default=32)
    parser.add_argument("--sizes", default="512x512", help="--compile-sizes for this code's worker")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--follow", type=float, default=420, help="most seconds to follow the background compile")
    parser.add_argument("--steady", type=float, default=15)
    parser.add_argument("--baseline-src", type=Path, help="src/ of today's code, for the baseline variant")
    parser.add_argument("--scratch", type=Path, default=Path(tempfile.gettempdir()) / "gpuroam-cold")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    shutil.rmtree(args.scratch, ignore_errors=True)
    results: list[Start] = []
    for variant in args.variants.split(","):
        scratch = args.scratch / variant
        cache = scratch / "cache"
        cache.mkdir(parents=True)
        src = args.baseline_src.resolve() if variant == "baseline" else SRC
        if variant == "artefact":
            copied = list((args.scratch / "empty" / "cache").glob("compiled-*"))
            if not copied:
                raise SystemExit("the artefact variant needs the empty variant's artefact: run empty first")
            for path in copied:  # the manifest and the directory of packages
                (shutil.copytree if path.is_dir() else shutil.copy)(path, cache / path.name)
        mode = "none" if variant == "eager" else "reduce-overhead"
        start = await measure(variant, worker_command(args, src, cache, mode), environment(src, scratch), args)
        start.full_speed_s = full_speed(start)
        results.append(start)
        print(json.dumps({k: v for k, v in asdict(start).items() if k != "log_tail"}), flush=True)
        if args.json:
            args.json.write_text(
                json.dumps({"machine": platform.node(), "runs": [asdict(r) for r in results]}, indent=1)
            )
    columns = ["variant", "ready s", "first image s", "full speed s", "all built s", "first new size s"]
    columns += ["next new size s", "img/s at 32", "1 image s"]
    print("| " + " | ".join(columns) + " |")
    print("|---" * len(columns) + "|")
    for r in results:
        print(
            f"| {r.variant} | {r.ready_s:.1f} | {r.first_image_s:.1f} | {r.full_speed_s} | {r.all_built_s} | "
            f"{r.new_size_s:.2f} | {r.new_size_again_s:.2f} | {r.steady_img_s:.2f} | {r.one_image_s:.3f} |"
        )


if __name__ == "__main__":
    asyncio.run(main())
