"""The engine on the tiny model: determinism, batch invariance, per-job interrupt."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest
import torch
from ldm_checkpoints import tiny_pipeline
from PIL import Image

from gpuroam.worker.engine import Engine
from gpuroam.worker.jobs import BatchKey, ImageTask, Job
from gpuroam.worker.models import LoadedModel


@pytest.fixture(scope="module")
def engine(tiny_model: LoadedModel) -> Engine:
    return Engine(tiny_model)


def tasks_for(
    key: BatchKey, specs: list[tuple[str, int]], init: Image.Image | None = None, subseed_strength: float = 0.0
) -> list[ImageTask]:
    loop = asyncio.new_event_loop()
    try:
        return [
            ImageTask(
                Job(id=f"j{i}", key=key, image_count=1),
                0,
                prompt,
                "",
                seed,
                seed + 1000,
                subseed_strength,
                init,
                loop.create_future(),
            )
            for i, (prompt, seed) in enumerate(specs)
        ]
    finally:
        loop.close()


def pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image)


SPECS = [("a cat", 1), ("a dog on a hill", 2), ("", 3), ("a red car " * 10, 4), ("x", 5)]


@pytest.mark.parametrize("sampler", ["Euler a", "DPM++ 2M", "DDIM"])
def test_an_image_is_the_same_whatever_it_is_batched_with(engine: Engine, sampler: str) -> None:
    key = BatchKey("txt2img", 128, 128, 6, sampler, "automatic", 7.0)
    batched = engine.run(tasks_for(key, SPECS)).images
    for (prompt, seed), image in zip(SPECS, batched):
        alone = engine.run(tasks_for(key, [(prompt, seed)])).images[0]
        assert np.array_equal(pixels(alone), pixels(image)), f"{prompt!r} seed {seed} changed when batched"
    reordered = engine.run(tasks_for(key, SPECS[::-1])).images[::-1]
    assert all(np.array_equal(pixels(a), pixels(b)) for a, b in zip(batched, reordered))


def test_seed_and_prompt_change_the_image(engine: Engine) -> None:
    key = BatchKey("txt2img", 64, 64, 3, "Euler", "automatic", 7.0)
    a, b, c = engine.run(tasks_for(key, [("a cat", 1), ("a cat", 2), ("a dog", 1)])).images
    assert not np.array_equal(pixels(a), pixels(b))
    assert not np.array_equal(pixels(a), pixels(c))


def test_variation_seed_blends_towards_the_subseed(engine: Engine) -> None:
    key = BatchKey("txt2img", 64, 64, 3, "Euler", "automatic", 7.0)
    plain = engine.run(tasks_for(key, [("a cat", 1)])).images[0]
    varied = engine.run(tasks_for(key, [("a cat", 1)], subseed_strength=0.5)).images[0]
    assert not np.array_equal(pixels(plain), pixels(varied))


def test_img2img_is_deterministic_and_batch_invariant(engine: Engine) -> None:
    key = BatchKey("img2img", 64, 64, 8, "Euler a", "automatic", 7.0, denoising_strength=0.5)
    init = Image.new("RGB", (64, 64), (200, 30, 30))
    batched = engine.run(tasks_for(key, [("a", 1), ("b", 2)], init=init)).images
    alone = engine.run(tasks_for(key, [("b", 2)], init=init)).images[0]
    assert batched[0].size == (64, 64)
    assert np.array_equal(pixels(batched[1]), pixels(alone))


def test_interrupting_one_job_leaves_the_others_untouched(engine: Engine) -> None:
    key = BatchKey("txt2img", 64, 64, 10, "Euler", "automatic", 7.0)
    full = engine.run(tasks_for(key, [("a", 1), ("b", 2)])).images
    tasks = tasks_for(key, [("a", 1), ("b", 2)])

    def on_step(step: int, total: int) -> None:
        if step == 3:
            tasks[0].job.interrupted = True

    images = engine.run(tasks, on_step).images
    assert np.array_equal(pixels(images[1]), pixels(full[1]))
    assert not np.array_equal(pixels(images[0]), pixels(full[0])), "the interrupted image stopped early"


def test_sdxl_pipelines_run_batched_with_per_image_seeds() -> None:
    pipeline = tiny_pipeline("sdxl")
    pipeline.set_progress_bar_config(disable=True)
    model = LoadedModel(
        pipeline=pipeline,
        name="tiny-xl",
        filename="mem",
        sha256="0" * 64,
        device=torch.device("cpu"),
        dtype=torch.float32,
    )
    assert model.is_sdxl
    engine = Engine(model)
    key = BatchKey("txt2img", 64, 64, 3, "Euler a", "automatic", 5.0)
    batched = engine.run(tasks_for(key, [("a", 1), ("b", 2)])).images
    alone = engine.run(tasks_for(key, [("b", 2)])).images[0]
    assert np.array_equal(pixels(batched[1]), pixels(alone))
    i2i = BatchKey("img2img", 64, 64, 4, "Euler", "automatic", 5.0, denoising_strength=0.5)
    assert engine.run(tasks_for(i2i, [("c", 3)], init=batched[0])).images[0].size == (64, 64)
