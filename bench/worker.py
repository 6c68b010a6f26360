"""Worker throughput and latency under concurrent HTTP clients, batching on vs off.

Starts `gpuroam worker` as a separate process per mode (batching off = --max-batch 1), warms
it up, then drives it with N closed-loop clients (each sends its next request when the last
one returns) for a fixed time, from this process. Prints a markdown table of images/s and
p50/p99 latency, end to end through HTTP with PNG encoding.

    python bench/worker.py                                   # CPU, tiny model
    python bench/worker.py --model sd15-random --device cuda --max-batch 32 --clients 1,8,32
    python bench/worker.py --model sd15-random --device cuda --modes on --gpus 2 --clients 64

With --gpus N (N > 1), one worker per GPU (CUDA_VISIBLE_DEVICES) starts at once, and the clients
go through `gpuroam gateway` in front of them, the way `gpuroam serve` runs several replicas on
one machine.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

from gpuroam.providers.local import free_port


@dataclass
class Run:
    mode: str
    clients: int
    width: int
    steps: int
    images: int
    seconds: float
    latencies: list[float]
    batches: float
    errors: int
    device_s: float  # the workers' mean time per batch on the device (generation_seconds)
    server_s: float  # the workers' mean time from request to response (request_seconds)

    @property
    def images_per_s(self) -> float:
        return self.images / self.seconds

    def percentile(self, q: float) -> float:
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


def spawn(command: list[str], env: dict[str, str] | None = None) -> tuple[subprocess.Popen, Path]:
    log = tempfile.NamedTemporaryFile(prefix="gpuroam-bench-", suffix=".log", delete=False)  # noqa: SIM115 - open while the process runs
    return subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env), Path(log.name)


def wait_ready(process: subprocess.Popen, log: Path, url: str, timeout: float, began: float) -> None:
    """Wait until `url` answers 200; `began` is when `process` was started."""
    while time.monotonic() < began + timeout:
        if process.poll() is not None:
            tail = log.read_text(errors="replace")[-3000:]
            raise SystemExit(f"exited with {process.returncode}: {' '.join(process.args)}\n{tail}")
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                print(f"  {url} ready in {time.monotonic() - began:.1f} s", file=sys.stderr)
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    process.kill()
    tail = log.read_text(errors="replace")[-3000:]
    raise SystemExit(f"{url} not ready after {timeout} s: {' '.join(process.args)}\n{tail}")


def start_workers(args: argparse.Namespace, max_batch: int) -> tuple[list[subprocess.Popen], list[str], str]:
    """One worker per GPU (all starting at once), and a gateway in front of them if there are several.
    Returns the processes, the workers' URLs and the URL clients use."""
    began = time.monotonic()
    started = [start_worker(args, max_batch, gpu if args.gpus > 1 else None) for gpu in range(args.gpus)]
    for process, log, url in started:
        wait_ready(process, log, f"{url}/internal/ping", args.start_timeout, began)  # load, compile, warm-up
    processes, urls = [p for p, _, _ in started], [url for _, _, url in started]
    if args.gpus == 1:
        return processes, urls, urls[0]
    port = free_port()
    gateway = [sys.executable, "-m", "gpuroam", "gateway", "--port", str(port), "--log-level", "warning"]
    gateway += [arg for url in urls for arg in ("--backend", url)]
    process, log = spawn(gateway)
    wait_ready(process, log, f"http://127.0.0.1:{port}/gpuroam/health", 60, time.monotonic())
    return [*processes, process], urls, f"http://127.0.0.1:{port}"


def start_worker(args: argparse.Namespace, max_batch: int, gpu: int | None) -> tuple[subprocess.Popen, Path, str]:
    port = free_port()
    command = [
        sys.executable,
        "-m",
        "gpuroam",
        "worker",
        "--port",
        str(port),
        "--model",
        args.model,
        "--device",
        args.device,
        "--max-batch",
        str(max_batch),
        "--batch-wait-ms",
        str(args.batch_wait_ms),
        "--max-queue",
        "4096",
        "--log-level",
        "warning",
        *args.worker_arg,
    ]
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": str(gpu)} if gpu is not None else None
    process, log = spawn(command, env)
    return process, log, f"http://127.0.0.1:{port}"


METRICS = {
    "batches": "gpuroam_worker_batch_images_count",
    "device_sum": "gpuroam_worker_generation_seconds_sum",
    "server_sum": 'gpuroam_worker_request_seconds_sum{route="/sdapi/v1/txt2img"}',
    "served": 'gpuroam_worker_request_seconds_count{route="/sdapi/v1/txt2img"}',
}


def worker_totals(urls: list[str]) -> dict[str, float]:
    """Batches run, device seconds and request seconds so far, summed over the workers' /metrics."""
    totals = dict.fromkeys(METRICS, 0.0)
    for url in urls:
        for line in httpx.get(f"{url}/metrics").text.splitlines():
            for name, series in METRICS.items():
                if line.startswith(series + " "):
                    totals[name] += float(line.rsplit(" ", 1)[1])
    return totals


async def drive(url: str, clients: int, body: dict, duration: float) -> tuple[int, float, list[float], int]:
    latencies: list[float] = []
    errors = 0
    images = 0
    stop_at = time.perf_counter() + duration

    async def client_loop(client: httpx.AsyncClient, index: int) -> None:
        nonlocal errors, images
        n = 0
        while time.perf_counter() < stop_at:
            started = time.perf_counter()
            response = await client.post(f"{url}/sdapi/v1/txt2img", json={**body, "seed": index * 100_000 + n})
            n += 1
            if response.status_code == 200:
                latencies.append(time.perf_counter() - started)
                images += len(response.json()["images"])
            else:
                errors += 1

    started = time.perf_counter()
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(timeout=600, limits=limits) as client:
        await asyncio.gather(*(client_loop(client, i) for i in range(clients)))
    return images, time.perf_counter() - started, latencies, errors


def worker_side(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    """Between two `worker_totals`: batches run, device seconds per batch, server seconds per request."""
    change = {name: after[name] - before[name] for name in METRICS}
    return {
        "batches": change["batches"],
        "device_s": change["device_sum"] / max(change["batches"], 1),
        "server_s": change["server_sum"] / max(change["served"], 1),
    }


def measure(args: argparse.Namespace, mode: str, max_batch: int) -> list[Run]:
    processes, workers, url = start_workers(args, max_batch)
    runs = []
    try:
        for width, steps in args.shapes:
            body = {
                "prompt": "a lighthouse on a cliff at dusk, detailed",
                "negative_prompt": "blurry",
                "width": width,
                "height": width,
                "steps": steps,
                "sampler_name": args.sampler,
                "cfg_scale": 7,
            }
            warm_clients = min(max_batch * args.gpus, max(args.clients))
            asyncio.run(drive(url, warm_clients, body, args.warmup))  # warm every batch size
            for clients in args.clients:
                before = worker_totals(workers)
                images, seconds, latencies, errors = asyncio.run(drive(url, clients, body, args.duration))
                side = worker_side(before, worker_totals(workers))
                run = Run(mode, clients, width, steps, images, seconds, latencies, errors=errors, **side)
                runs.append(run)
                print(
                    f"  {mode:13} {width}px/{steps} steps, {clients:3} clients: {run.images_per_s:7.2f} img/s, "
                    f"p50 {run.percentile(0.5):.3f} s, p99 {run.percentile(0.99):.3f} s, "
                    f"{run.images / max(run.batches, 1):.1f} img/batch, device {run.device_s:.3f} s/batch, "
                    f"server {run.server_s:.3f} s/request",
                    file=sys.stderr,
                )
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            process.wait(timeout=30)
    return runs


def table(runs: list[Run]) -> str:
    rows = [
        "| shape | clients | batching | img/s | p50 s | p99 s | images/batch | device s/batch | server s/request | errors |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for run in sorted(runs, key=lambda r: (r.width, r.steps, r.clients, r.mode)):
        rows.append(
            f"| {run.width}x{run.width}, {run.steps} steps | {run.clients} | {run.mode} | "
            f"{run.images_per_s:.2f} | {run.percentile(0.5):.3f} | {run.percentile(0.99):.3f} | "
            f"{run.images / max(run.batches, 1):.1f} | {run.device_s:.3f} | {run.server_s:.3f} | {run.errors} |"
        )
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="tiny")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--sampler", default="Euler a")
    parser.add_argument("--shapes", default="512:20,64:2", help="width:steps pairs (square images)")
    parser.add_argument("--clients", default="1,4,8", help="concurrency levels")
    parser.add_argument("--max-batch", type=int, default=8)
    parser.add_argument("--batch-wait-ms", type=float, default=5.0)
    parser.add_argument("--duration", type=float, default=15.0, help="seconds per measurement")
    parser.add_argument("--warmup", type=float, default=5.0)
    parser.add_argument("--start-timeout", type=float, default=600.0)
    parser.add_argument("--json", dest="json_out", help="also write the raw figures here")
    parser.add_argument("--modes", default="off,on", help="batching off (max batch 1), on (--max-batch), or both")
    parser.add_argument("--worker-arg", action="append", default=[], help="passed to `gpuroam worker` (repeat)")
    parser.add_argument("--gpus", type=int, default=1, help="workers, one per GPU, behind a gateway if more than 1")
    args = parser.parse_args()
    args.shapes = [tuple(int(v) for v in pair.split(":")) for pair in args.shapes.split(",")]
    args.clients = [int(c) for c in args.clients.split(",")]
    print(
        f"# {platform.node()} {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"model {args.model} on {args.device}, {time.strftime('%Y-%m-%d')}",
        file=sys.stderr,
    )
    modes = args.modes.split(",")
    gpus = f", {args.gpus} GPUs via gateway" if args.gpus > 1 else ""
    runs = measure(args, f"off (batch 1){gpus}", 1) if "off" in modes else []
    runs += measure(args, f"on (max {args.max_batch}){gpus}", args.max_batch) if "on" in modes else []
    print(table(runs))
    if args.json_out:
        with open(args.json_out, "w") as handle:
            json.dump(
                [
                    {
                        **run.__dict__,
                        "images_per_s": run.images_per_s,
                        "p50": run.percentile(0.5),
                        "p99": run.percentile(0.99),
                    }
                    for run in runs
                ],
                handle,
                indent=1,
            )


if __name__ == "__main__":
    main()
