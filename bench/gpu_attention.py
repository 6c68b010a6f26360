"""Attention kernels at Stable Diffusion 1.5's shapes: which SDPA backend is fastest on this GPU.

SD 1.5 at 512x512 attends over 4096 latent pixels with 8 heads of 40 channels, where most
fast kernels are tuned for heads of 64 or 128; the VAE's one attention block has a single head of
512 channels. Each shape is timed (CUDA events, median of --repeats) with every backend that
accepts it, and with PyTorch's own choice ("auto"); TFLOP/s counts the two matrix products.

    python bench/gpu_attention.py --batch 32
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

BACKENDS = {
    "auto": None,
    "flash": SDPBackend.FLASH_ATTENTION,
    "cudnn": SDPBackend.CUDNN_ATTENTION,
    "efficient": SDPBackend.EFFICIENT_ATTENTION,
}


def shapes(images: int) -> list[tuple[str, int, int, int, int, int]]:
    """(name, batch, heads, query length, key length, head size); the UNet runs both CFG halves at once."""
    rows = 2 * images
    return [
        ("unet self 64x64", rows, 8, 4096, 4096, 40),
        ("unet cross 64x64", rows, 8, 4096, 77, 40),
        ("unet self 32x32", rows, 8, 1024, 1024, 80),
        ("unet self 16x16", rows, 8, 256, 256, 160),
        ("vae mid 64x64", images, 1, 4096, 4096, 512),
    ]


def time_ms(backend: SDPBackend | None, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, repeats: int) -> float:
    def call() -> torch.Tensor:
        if backend is None:
            return F.scaled_dot_product_attention(q, k, v)
        with sdpa_kernel(backend):
            return F.scaled_dot_product_attention(q, k, v)

    for _ in range(3):
        call()
    samples = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        call()
        end.record()
        end.synchronize()
        samples.append(start.elapsed_time(end))
    return statistics.median(samples)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 32], help="images per batch")
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    print(f"{torch.cuda.get_device_name()}, torch {torch.__version__}, cuDNN {torch.backends.cudnn.version()}")
    results = []
    print("| images | shape | " + " | ".join(f"{b} ms (TFLOP/s)" for b in BACKENDS) + " |")
    print("|---|---|" + "---|" * len(BACKENDS))
    for images in args.batch:
        for name, batch, heads, q_len, k_len, size in shapes(images):
            q = torch.randn(batch, heads, q_len, size, device="cuda", dtype=torch.float16)
            k = torch.randn(batch, heads, k_len, size, device="cuda", dtype=torch.float16)
            v = torch.randn_like(k)
            flop = 4 * batch * heads * q_len * k_len * size
            cells, row = [], {"images": images, "shape": name}
            for label, backend in BACKENDS.items():
                try:
                    ms = time_ms(backend, q, k, v, args.repeats)
                except RuntimeError:  # the backend does not take this shape
                    cells.append("-")
                    continue
                row[label] = round(ms, 3)
                cells.append(f"{ms:.3f} ({flop / ms / 1e9:.0f})")
            results.append(row)
            print(f"| {images} | {name} | " + " | ".join(cells) + " |", flush=True)
    if args.json:
        args.json.write_text(json.dumps({"device": torch.cuda.get_device_name(), "rows": results}, indent=1))


if __name__ == "__main__":
    main()
