"""What a busy Python thread (the compile thread) costs an eager forward on another thread.

Every torch op called from Python lets go of the GIL while its kernel runs (CPU) or is launched
(CUDA) and takes it back afterwards. While another thread runs pure Python (Dynamo tracing, Inductor
lowering), taking it back waits for that thread to be forced off: up to `sys.getswitchinterval()`
(5 ms by default) per op. An eager SD UNet step is about a thousand ops, so a worker that serves
eagerly while it compiles in the same process serves at a crawl unless the interval is short.

For each switch interval this times a module of many small ops (`--ops` linear+GELU pairs, like an
eager UNet's stream of small kernels) alone and with a thread busy in Python beside it, and how much
Python work the busy thread got done in the meantime (the compile's own slowdown).

    python bench/gil_convoy.py --device cuda --json out.json
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import threading
import time

import torch


def _forward(layers: list[torch.nn.Linear], x: torch.Tensor) -> torch.Tensor:
    for layer in layers:
        x = torch.nn.functional.gelu(layer(x))
    return x


def _time_forward(layers: list[torch.nn.Linear], x: torch.Tensor, device: torch.device, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        _forward(layers, x)
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _busy(stop: threading.Event, done: list[int]) -> None:
    while not stop.is_set():
        sum(i * i for i in range(1000))
        done[0] += 1


def measure(device: torch.device, ops: int, width: int, repeats: int, interval: float) -> dict[str, float]:
    torch.manual_seed(0)
    layers = [torch.nn.Linear(width, width).to(device) for _ in range(ops // 2)]
    x = torch.randn(8, width, device=device)
    previous = sys.getswitchinterval()
    sys.setswitchinterval(interval)
    try:
        with torch.inference_mode():
            _time_forward(layers, x, device, 3)
            alone = _time_forward(layers, x, device, repeats)
            stop, done = threading.Event(), [0]
            busy = threading.Thread(target=_busy, args=(stop, done))
            busy_start = time.perf_counter()
            busy.start()
            time.sleep(0.05)
            contended = _time_forward(layers, x, device, repeats)
            stop.set()
            busy.join()
            busy_rate = done[0] / (time.perf_counter() - busy_start)
            stop, done = threading.Event(), [0]
            busy_start = time.perf_counter()
            _busy_for(0.5, done)
            busy_alone_rate = done[0] / (time.perf_counter() - busy_start)
    finally:
        sys.setswitchinterval(previous)
    return {
        "switch_interval_ms": interval * 1e3,
        "forward_alone_ms": alone * 1e3,
        "forward_beside_busy_thread_ms": contended * 1e3,
        "slowdown": contended / alone,
        "busy_thread_share": busy_rate / busy_alone_rate,
    }


def _busy_for(seconds: float, done: list[int]) -> None:
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        sum(i * i for i in range(1000))
        done[0] += 1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--ops", type=int, default=400, help="ops per forward (linear and GELU pairs)")
    parser.add_argument("--width", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--intervals-ms", default="5,1,0.2,0.05")
    parser.add_argument("--json")
    args = parser.parse_args()
    device = torch.device(args.device)
    if device.type == "cpu":
        torch.set_num_threads(1)  # one core's kernels: the wait being measured is the GIL's, not OpenMP's
    rows = [measure(device, args.ops, args.width, args.repeats, float(ms) / 1e3) for ms in args.intervals_ms.split(",")]
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu"
    print(f"{args.ops} ops per forward on {name}, Python {platform.python_version()}, torch {torch.__version__}")
    print("| switch interval | forward alone | beside a busy Python thread | slowdown | busy thread's share |")
    print("|---|---|---|---|---|")
    for row in rows:
        print(
            f"| {row['switch_interval_ms']:g} ms | {row['forward_alone_ms']:.2f} ms "
            f"| {row['forward_beside_busy_thread_ms']:.2f} ms | {row['slowdown']:.1f}x | {row['busy_thread_share']:.0%} |"
        )
    if args.json:
        with open(args.json, "w") as out:
            json.dump({"device": name, "ops": args.ops, "rows": rows}, out, indent=1)


if __name__ == "__main__":
    main()
