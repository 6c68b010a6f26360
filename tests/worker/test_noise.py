"""Sampler noise goes through the non-blocking copy during a batch, and only then."""

from __future__ import annotations

import sys

import pytest
import torch
from diffusers.utils import torch_utils
from test_engine import tasks_for

from gpuroam.worker import noise
from gpuroam.worker.engine import Engine
from gpuroam.worker.jobs import BatchKey
from gpuroam.worker.models import LoadedModel

DIFFUSERS_RANDN = torch_utils.randn_tensor  # taken at import, outside any batch


def diffusers_modules_drawing_with(function: object) -> list[str]:
    return [
        n
        for n, m in list(sys.modules.items())
        if n.startswith("diffusers.") and m.__dict__.get("randn_tensor") is function
    ]


@pytest.mark.parametrize("sampler", ["Euler a", "DPM2 a", "DPM++ 2M SDE"])
def test_every_sampling_step_draws_its_noise_through_the_replacement(
    tiny_model: LoadedModel, sampler: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[tuple[int, ...]] = []

    def counting(shape, generator=None, device=None, dtype=None, layout=None):  # type: ignore[no-untyped-def]
        calls.append(tuple(shape))
        return DIFFUSERS_RANDN(shape, generator=generator, device=device, dtype=dtype, layout=layout)

    monkeypatch.setattr(noise, "randn_tensor_without_sync", counting)
    steps = 4
    Engine(tiny_model).run(
        tasks_for(BatchKey("txt2img", 64, 64, steps, sampler, "automatic", 7.0), [("a", 1), ("b", 2)])
    )
    assert len(calls) >= steps - 1, f"{sampler}: {len(calls)} noise draws went through the replacement in {steps} steps"
    assert all(shape[0] == 2 for shape in calls), "the noise is drawn for the whole batch, one generator per image"


def test_the_swap_is_undone_after_the_batch(tiny_model: LoadedModel) -> None:
    Engine(tiny_model).run(tasks_for(BatchKey("txt2img", 64, 64, 2, "Euler a", "automatic", 7.0), [("a", 1)]))
    assert diffusers_modules_drawing_with(noise.randn_tensor_without_sync) == []
    assert "diffusers.schedulers.scheduling_euler_ancestral_discrete" in diffusers_modules_drawing_with(DIFFUSERS_RANDN)


def test_cpu_targets_draw_exactly_what_diffusers_draws() -> None:
    def generators() -> list[torch.Generator]:
        return [torch.Generator("cpu").manual_seed(seed) for seed in (7, 8, 9)]

    shape = (3, 4, 8, 8)
    expected = DIFFUSERS_RANDN(shape, generator=generators(), device=torch.device("cpu"), dtype=torch.float32)
    drawn = noise.randn_tensor_without_sync(shape, generator=generators(), device="cpu", dtype=torch.float32)
    assert torch.equal(drawn, expected)
