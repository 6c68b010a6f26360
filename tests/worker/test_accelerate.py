"""The CUDA fast path's pieces, checked on the CPU: the same images as the eager path.

On the GPU the modules compile with Inductor and CUDA graphs; here they are traced by Dynamo
whole (fullgraph, backend "eager": a graph break or a wrong trace fails the test) with
channels-last memory, fused attention projections and bucket padding, and must give the eager
engine's images within rounding. tests/worker/test_warmup.py compiles with Inductor in the
background; bench/gpu_engine.py checks Inductor's images on the GPU.
"""

from __future__ import annotations

import asyncio
import os
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from PIL import Image

from gpuroam.worker.accelerate import Acceleration, acceleration_for, to_uint8_images
from gpuroam.worker.compile_process import use_compile_cache
from gpuroam.worker.config import WorkerConfig
from gpuroam.worker.engine import Engine
from gpuroam.worker.jobs import BatchKey, ImageTask, Job
from gpuroam.worker.models import load_model
from gpuroam.worker.samplers import sampler_names

KEY = BatchKey("txt2img", 128, 128, 6, "Euler a", "automatic", 7.0)
SPECS = [("a cat", 1), ("a dog on a hill", 2), ("a red car", 3)]
# Channels-last and fused projections reorder float sums: measured, 1 level in 1 pixel in 20,000.
MAX_MEAN_DIFF, MAX_PIXEL_DIFF = 0.05, 2


def tasks(specs: list[tuple[str, int]], key: BatchKey = KEY) -> list[ImageTask]:
    loop = asyncio.new_event_loop()
    try:
        return [
            ImageTask(Job(id=f"j{i}", key=key, image_count=1), 0, prompt, "", seed, 0, 0.0, None, loop.create_future())
            for i, (prompt, seed) in enumerate(specs)
        ]
    finally:
        loop.close()


def as_array(images: list) -> np.ndarray:
    return np.stack([np.asarray(image, dtype=np.int16) for image in images])


@pytest.fixture(scope="module")
def eager() -> Engine:
    return Engine(load_model("tiny", torch.device("cpu")), Acceleration.off())


def built(acceleration: Acceleration, cache: Path) -> Engine:
    """An engine whose planned graphs are all built (by its compile process, here and now: not on a
    compile thread), as exported programs the eager kernels run (worker/aot.py: seconds, not a C++ compile)."""
    acceleration = replace(acceleration, backend="eager", cache_dir=cache)
    engine = Engine(load_model("tiny", torch.device("cpu")), acceleration)
    engine.warm_up()
    assert engine.warmup is not None and engine.packages is not None
    try:
        engine.warmup.build_all()
    finally:
        engine.packages.close()
    assert engine.warmup.pending == 0 and all(not graph.failed for graph in engine.graphs)
    return engine


@pytest.fixture(scope="module")
def fast(tmp_path_factory: pytest.TempPathFactory) -> Engine:
    acceleration = Acceleration(compile_mode="default", buckets=(1, 2, 4), warm_sizes=((128, 128),))
    return built(acceleration, tmp_path_factory.mktemp("cache"))


@pytest.mark.parametrize("sampler", ["Euler a", "DPM++ 2M"])  # float32 and int64 timesteps
def test_the_fast_path_gives_the_eager_images(eager: Engine, fast: Engine, sampler: str) -> None:
    key = BatchKey("txt2img", 128, 128, 6, sampler, "automatic", 7.0)
    reference = as_array(eager.run(tasks(SPECS, key)).images)
    unet = fast.graphs[0]
    assert unet.name == "unet"
    compiled_before = unet.calls["compiled"]
    result = fast.run(tasks(SPECS, key))  # 3 images run padded to the bucket of 4
    assert len(result.images) == 3
    assert unet.calls["compiled"] - compiled_before == 6, "every step ran the compiled graph"
    diff = np.abs(as_array(result.images) - reference)
    assert diff.mean() <= MAX_MEAN_DIFF and diff.max() <= MAX_PIXEL_DIFF, (diff.mean(), diff.max())


def test_one_image_without_cfg_gives_the_eager_image(eager: Engine, fast: Engine) -> None:
    """CFG 1 and one image is a UNet batch of one, which the fast path runs as two copies of its row."""
    key = BatchKey("txt2img", 128, 128, 6, "LCM", "automatic", 1.0)
    reference = as_array(eager.run(tasks(SPECS[:1], key)).images)
    diff = np.abs(as_array(fast.run(tasks(SPECS[:1], key)).images) - reference)
    assert diff.mean() <= MAX_MEAN_DIFF and diff.max() <= MAX_PIXEL_DIFF, (diff.mean(), diff.max())


def test_padding_and_batching_do_not_change_an_image(fast: Engine) -> None:
    batched = as_array(fast.run(tasks(SPECS)).images)
    for row, spec in enumerate(SPECS):
        alone = as_array(fast.run(tasks([spec])).images)[0]
        assert np.abs(alone - batched[row]).max() <= MAX_PIXEL_DIFF


def test_the_modules_were_rebuilt_for_speed(fast: Engine) -> None:
    unet = fast.model.pipeline.unet
    assert unet.conv_in.weight.is_contiguous(memory_format=torch.channels_last)
    assert any("to_qkv" in name for name, _ in unet.named_modules()), "fused query/key/value projections"
    assert "forward" in vars(unet) and fast.graphs[0].name == "unet", "the UNet's forward runs its compiled graphs"


def test_every_kind_of_request_runs_the_graphs_built_for_its_shape(tmp_path: Path) -> None:
    """Samplers hand the UNet float32, int64 or float64 timesteps, img2img hands it channels-last
    latents, clip skip changes the text encoder's call, one image at CFG 1 is a UNet batch of one.
    Once a size's graphs are built, none of these may trace a new graph or miss the built one: a
    trace on a GPU is minutes of compiling, and a miss is the eager speed."""
    engine = built(Acceleration(compile_mode="default", buckets=(1, 2), warm_sizes=((64, 64),)), tmp_path)
    assert engine.packages is not None
    packages = sorted(engine.packages.directory.glob("*.pt2"))
    keys = [BatchKey("txt2img", 64, 64, 3, name, "automatic", 7.0) for name in sampler_names()]
    keys += [
        BatchKey("txt2img", 64, 64, 3, "DPM2", "karras", 7.0),
        BatchKey("txt2img", 64, 64, 3, "DPM++ 2M", "karras", 7.0, clip_skip=2),
        BatchKey("txt2img", 64, 64, 3, "Euler a", "automatic", 1.0),
        BatchKey("img2img", 64, 64, 4, "Euler a", "automatic", 7.0, denoising_strength=0.6),
        BatchKey("img2img", 64, 64, 4, "DPM++ 2M", "automatic", 7.0, denoising_strength=0.6, clip_skip=2),
    ]
    init = Image.new("RGB", (64, 64), (120, 30, 200))
    for key, images in [(key, 2) for key in keys] + [(BatchKey("txt2img", 64, 64, 3, "LCM", "automatic", 1.0), 1)]:
        job = Job(id="x", key=key, image_count=images)
        init_image = init if key.mode == "img2img" else None
        eager_calls = {graph.name: graph.calls["eager"] for graph in engine.graphs}
        engine.run([ImageTask(job, i, "a", "", i, 0, 0.0, init_image) for i in range(images)])
        assert sorted(engine.packages.directory.glob("*.pt2")) == packages, f"{key}, {images} image(s): a new graph"
        assert {graph.name: graph.calls["eager"] for graph in engine.graphs} == eager_calls, f"{key}: ran eagerly"


@given(size=st.integers(1, 100))
def test_a_batch_runs_at_the_smallest_bucket_that_holds_it(size: int) -> None:
    acceleration = Acceleration(buckets=(1, 2, 4, 8, 16, 32))
    bucket = acceleration.bucket(size)
    assert bucket >= size
    assert bucket == size or bucket in acceleration.buckets
    assert all(b < size for b in acceleration.buckets if b < bucket)
    assert Acceleration.off().bucket(size) == size


def test_uint8_conversion_matches_diffusers_pil_output() -> None:
    from diffusers.image_processor import VaeImageProcessor

    images = torch.rand(2, 3, 8, 8)
    expected = VaeImageProcessor.numpy_to_pil(VaeImageProcessor.pt_to_numpy(images))
    assert all(np.array_equal(row.numpy(), np.asarray(pil)) for row, pil in zip(to_uint8_images(images), expected))


def test_worker_flags_choose_the_fast_path() -> None:
    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    assert acceleration_for(WorkerConfig(), cuda).compile_mode == "reduce-overhead"
    assert not acceleration_for(WorkerConfig(), cpu).compiles
    assert not acceleration_for(WorkerConfig(compile="none"), cuda).compiles
    chosen = acceleration_for(WorkerConfig(compile="max-autotune", buckets=(1, 8)), cpu)
    assert chosen.compile_mode == "max-autotune" and chosen.buckets == (1, 8)
    assert acceleration_for(WorkerConfig(max_batch=8), cuda).buckets == (1, 2, 4, 8), "none the batcher never forms"
    assert acceleration_for(WorkerConfig(), cuda).compiler == "inductor default", "CUDA graphs are captured here"
    assert (
        acceleration_for(WorkerConfig(compile="max-autotune"), cuda).compiler == "inductor max-autotune-no-cudagraphs"
    )
    with pytest.raises(ValueError, match="buckets"):
        Acceleration(buckets=(4, 2))


def test_the_compile_cache_holds_inductors_graphs_and_tritons_kernels(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Importing diffusers points Inductor at /tmp/torchinductor_<user> before the worker starts; the
    worker's cache must win, or a restart on a fresh machine finds no graph in it (issue 23)."""
    import diffusers  # noqa: F401  (what the worker imports first)
    from torch._inductor.runtime.cache_dir_utils import cache_dir

    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", cache_dir())
    monkeypatch.setenv("TRITON_CACHE_DIR", "/tmp/elsewhere")
    assert cache_dir() != str(tmp_path)
    use_compile_cache(tmp_path / "cache")
    assert cache_dir() == str(tmp_path / "cache"), "Inductor's graphs (FX graph and AOT caches) go there"
    assert os.environ["TRITON_CACHE_DIR"] == str(tmp_path / "cache" / "triton")
