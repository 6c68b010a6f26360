"""AOTInductor packages against the in-process compile, module by module (issue 23).

For each compiled module of the worker (UNet, VAE decoder, text encoder) as one 512x512 image with
CFG calls it: the time to export and compile a package, the time to load it on the module's own
weights, and the time per call of: the eager module, today's in-process compile (Inductor, captured
into a CUDA graph as worker/graphs.py does), and the package (also captured). The outputs are
checked against the eager module. Run on the GPU:

    python3 bench/aot_packages.py --model sd15-random --json $OUT/aot.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import torch
from torch.utils._pytree import tree_flatten

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from gpuroam.worker.aot import export, load
from gpuroam.worker.compile_process import use_compile_cache
from gpuroam.worker.graphs import CapturedGraph, check_close, copy_inputs
from gpuroam.worker.models import load_model, resolve_device
from gpuroam.worker.rewrites import compiled_modules, rewrite


def recorded_calls(pipeline: Any, size: int) -> dict[str, tuple[tuple[Any, ...], dict[str, Any]]]:
    """The first call of each compiled module in one generation, its inputs copied."""
    seen: dict[str, tuple[tuple[Any, ...], dict[str, Any]]] = {}
    modules = compiled_modules(pipeline)
    originals = {name: module.forward for name, module in modules.items()}

    def spy(name: str) -> Any:
        def forward(*args: Any, **kwargs: Any) -> Any:
            seen.setdefault(name, copy_inputs((args, kwargs)))
            return originals[name](*args, **kwargs)

        return forward

    for name, module in modules.items():
        module.forward = spy(name)
    try:
        with torch.no_grad():
            pipeline("a cat", num_inference_steps=2, width=size, height=size, output_type="pt")
    finally:
        for name, module in modules.items():
            module.forward = originals[name]
    return seen


def per_call_ms(run: Any, inputs: tuple[tuple[Any, ...], dict[str, Any]], repeats: int) -> float:
    args, kwargs = inputs
    synchronize = torch.cuda.synchronize if torch.cuda.is_available() else lambda: None
    timings = []
    for _ in range(3):
        run(*args, **kwargs)
    for _ in range(repeats):
        synchronize()
        started = time.perf_counter()
        run(*args, **kwargs)
        synchronize()
        timings.append((time.perf_counter() - started) * 1000)
    return statistics.median(timings)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="sd15-random")
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--modules", default="unet,vae decoder,text encoder")
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--json", type=Path)
    options = parser.parse_args()

    device = resolve_device("auto")
    started = time.perf_counter()
    model = load_model(options.model, device)
    loaded_s = time.perf_counter() - started
    rewrite(model.pipeline, channels_last=True, fuse_qkv=True)
    calls = recorded_calls(model.pipeline, options.size)
    pool = torch.cuda.graph_pool_handle() if device.type == "cuda" else None
    lock = threading.Lock()
    results: dict[str, Any] = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "torch": torch.__version__,
        "model": options.model,
        "model_load_s": round(loaded_s, 2),
        "modules": {},
    }
    with tempfile.TemporaryDirectory() as scratch:
        use_compile_cache(Path(scratch) / "cache")  # empty: every build is a compile
        for name in options.modules.split(","):
            module = compiled_modules(model.pipeline)[name]
            args, kwargs = calls[name]
            row: dict[str, Any] = {
                "inputs": [tuple(t.shape) for t in tree_flatten((args, kwargs))[0] if isinstance(t, torch.Tensor)]
            }
            began = time.perf_counter()
            path = export(module, (args, kwargs), Path(scratch) / f"{name.replace(' ', '-')}.pt2", "inductor")
            row["package_build_s"] = round(time.perf_counter() - began, 1)
            row["package_mb"] = round(path.stat().st_size / 1e6, 1)
            began = time.perf_counter()
            package = load(path, module, "inductor")
            row["package_load_s"] = round(time.perf_counter() - began, 3)
            began = time.perf_counter()
            compiled = torch.compile(module, fullgraph=name != "text encoder")
            with torch.no_grad():
                compiled(*args, **kwargs)
            row["in_process_compile_s"] = round(time.perf_counter() - began, 1)
            with torch.no_grad():
                eager_out = module(*args, **kwargs)
                check_close(package(*args, **kwargs), eager_out, f"{name} package")
                runners: dict[str, Any] = {"eager": module, "package": package}
                if device.type == "cuda":
                    for label, runner in (("in-process compile", compiled), ("package", package), ("eager", module)):
                        graph = CapturedGraph(runner, (args, kwargs), pool, lock)
                        check_close(graph(*args, **kwargs), eager_out, f"{name} {label} graph")
                        runners[f"{label} + CUDA graph"] = graph
                row["ms_per_call"] = {
                    label: round(per_call_ms(run, (args, kwargs), options.repeats), 3) for label, run in runners.items()
                }
            results["modules"][name] = row
            print(json.dumps({name: row}), flush=True)
    if options.json:
        options.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
