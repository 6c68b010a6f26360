"""Model load time for a real-size checkpoint: one SD 1.5 .safetensors file (random weights, built here).

Writes the full SD 1.5 architecture (UNet 860M, VAE 84M, CLIP text 123M parameters) with fixed-seed
random weights in the original single-file layout A1111 users download (the same bytes a real
checkpoint has: about 2.1 GB in float16), then times `load_model` on it in fresh processes, each
from the moment it starts: reading and converting the file, hashing it, moving the weights to the
device, and the peak memory of the process (and of the GPU).

    python bench/model_load.py --device cuda --runs 3 --json out.json
    python bench/model_load.py --device cuda --baseline-src .base/src   # today's code, side by side

The baseline runs as it was installed: without `accelerate` (hidden from it in its process).

The page cache is dropped before each run when the process may (root); otherwise the file is read
from memory and the figure says so.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SRC = Path(__file__).resolve().parent.parent / "src"
ROOT = SRC.parent

# The child: load the model, then report the time and the peak memory as one JSON line.
CHILD = """
import json, resource, sys, time
started = time.perf_counter()
if sys.argv[4] == "without-accelerate":
    sys.modules["accelerate"] = None  # find_spec then says absent: diffusers loads as it did without it
import torch
from gpuroam.worker.models import load_model
imported = time.perf_counter()
device = torch.device(sys.argv[2])
model = load_model(sys.argv[1], device, getattr(torch, sys.argv[3]))
if device.type == "cuda":
    torch.cuda.synchronize()
loaded = time.perf_counter()
print(json.dumps({
    "import_s": imported - started,
    "load_s": loaded - imported,
    "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
    "gpu_peak_gb": torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else 0.0,
    "sha256": model.sha256,
}))
"""


def build_checkpoint(path: Path) -> None:
    """The SD 1.5 architecture with random weights, in float16, as one original-layout file."""
    import torch
    from safetensors.torch import save_file

    sys.path.insert(0, str(ROOT))
    from tests.worker.ldm_checkpoints import to_ldm_state_dict

    from gpuroam.worker.models import build_random_pipeline

    started = time.perf_counter()
    pipeline = build_random_pipeline("sd15-random")
    state = {key: value.to(torch.float16) for key, value in to_ldm_state_dict(pipeline, "sd1").items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(state, str(path))
    print(f"built {path} ({path.stat().st_size / 2**30:.2f} GiB) in {time.perf_counter() - started:.0f} s", flush=True)


def drop_page_cache() -> bool:
    try:
        os.sync()
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
    except OSError:
        return False
    return True


def load_once(src: Path, checkpoint: Path, packages: str, args: argparse.Namespace) -> dict[str, object]:
    cold = drop_page_cache()
    env = os.environ | {"PYTHONPATH": os.pathsep.join([str(src), os.environ.get("PYTHONPATH", "")])}
    result = subprocess.run(
        [sys.executable, "-c", CHILD, str(checkpoint), args.device, args.dtype, packages],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        raise SystemExit(f"load failed ({src}):\n{result.stderr[-3000:]}")
    report: dict[str, object] = json.loads(result.stdout.strip().splitlines()[-1])
    report["page_cache_dropped"] = cold
    report["log"] = [line for line in result.stderr.splitlines() if '"model loaded"' in line]
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--dtype", default="float16")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument(
        "--checkpoint", type=Path, default=Path(tempfile.gettempdir()) / "gpuroam-load" / "sd15.safetensors"
    )
    parser.add_argument("--baseline-src", type=Path, help="src/ of today's code, loaded side by side")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    if not args.checkpoint.exists():
        build_checkpoint(args.checkpoint)
    variants = {"this": SRC} | ({"baseline": args.baseline_src.resolve()} if args.baseline_src else {})
    runs: dict[str, list[dict[str, object]]] = {name: [] for name in variants}
    for _ in range(args.runs):  # alternated, so drift on a noisy machine falls on both alike
        for name, src in variants.items():
            # today's code came without accelerate (this change added it to the dependencies)
            packages = "without-accelerate" if name == "baseline" else "as-installed"
            report = load_once(src, args.checkpoint, packages, args)
            runs[name].append(report)
            print(name, json.dumps({k: v for k, v in report.items() if k != "log"}), flush=True)
    print(f"| code | load s (median of {args.runs}) | peak RSS GiB | GPU peak GiB | page cache dropped |")
    print("|---|---|---|---|---|")
    for name, reports in runs.items():
        median = statistics.median(float(str(r["load_s"])) for r in reports)
        rss = max(float(str(r["peak_rss_gb"])) for r in reports)
        gpu = max(float(str(r["gpu_peak_gb"])) for r in reports)
        print(f"| {name} | {median:.2f} | {rss:.2f} | {gpu:.2f} | {reports[0]['page_cache_dropped']} |")
    if args.json:
        args.json.write_text(
            json.dumps(
                {"machine": platform.node(), "checkpoint_bytes": args.checkpoint.stat().st_size, "runs": runs},
                indent=1,
            )
        )


if __name__ == "__main__":
    main()
