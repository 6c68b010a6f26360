import inspect

import diffusers
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from gpuroam.worker.models import SD_SCHEDULER_CONFIG
from gpuroam.worker.samplers import (
    SAMPLERS,
    SCHEDULES,
    SamplerError,
    make_scheduler,
    resolve,
    sampler_names,
    training_sigmas,
)
from gpuroam.worker.schedules import SCHEDULE_FUNCTIONS

MODEL = training_sigmas(SD_SCHEDULER_CONFIG, is_sdxl=False)


def test_names_clients_send_are_accepted() -> None:
    assert resolve("Euler a", "automatic")[0].name == "Euler a"
    assert resolve("k_euler_a", None)[0].name == "Euler a"
    assert resolve(None, None)[0].name == "Euler"
    sampler, schedule = resolve("DPM++ 2M Karras", None)
    assert (sampler.name, schedule.name) == ("DPM++ 2M", "karras")
    assert resolve("DPM++ 2M", "Karras")[1].name == "karras"
    assert resolve("Euler", "SGMUniform")[1].name == "sgm_uniform"
    assert resolve("Euler", "Align Your Steps")[1].name == "align_your_steps"


def test_automatic_is_the_samplers_own_default_as_in_a1111() -> None:
    assert resolve("DPM++ 2M", "automatic")[1].name == "karras"
    assert resolve("DPM++ 2M SDE", None)[1].name == "exponential"
    assert resolve("Euler a", "automatic")[1].name == "uniform"


def test_an_unknown_scheduler_is_automatic_as_in_a1111() -> None:
    assert resolve("Euler", "zigzag")[1].name == "uniform"
    assert resolve("DPM++ 2M", "zigzag")[1].name == "karras"


def test_unknown_sampler_lists_the_valid_ones() -> None:
    with pytest.raises(SamplerError) as error:
        resolve("Nope 3000", None)
    for name in sampler_names():
        assert name in str(error.value)


def test_a_schedule_diffusers_does_not_build_into_a_second_order_sampler_is_refused_with_the_usable_ones() -> None:
    with pytest.raises(SamplerError, match="with 'Heun' use one of: uniform, karras"):
        resolve("Heun", "kl_optimal")


@pytest.mark.parametrize("sampler", ["DDIM", "PLMS", "UniPC"])
def test_the_timestep_samplers_take_any_schedule_and_ignore_it_as_a1111_does(sampler: str) -> None:
    plain = make_scheduler(*resolve(sampler, "automatic"), SD_SCHEDULER_CONFIG, MODEL)
    plain.set_timesteps(10)
    for schedule in ("normal", "karras", "beta", "align_your_steps"):
        scheduler = make_scheduler(*resolve(sampler, schedule), SD_SCHEDULER_CONFIG, MODEL)
        scheduler.set_timesteps(10)
        assert torch.equal(scheduler.timesteps, plain.timesteps)


@pytest.mark.parametrize("sampler", [s.name for s in SAMPLERS if s.steps == "sigmas"])
@pytest.mark.parametrize("schedule", ["karras", "exponential", "uniform"])
def test_a_schedule_set_outright_steps_exactly_as_the_one_diffusers_builds(sampler: str, schedule: str) -> None:
    """The same levels reached two ways (diffusers' own option, and gpuroam's A1111 formulas put in place)
    give the same steps and the same image: setting the sigmas changes nothing else of the sampler."""
    resolved = resolve(sampler, schedule)
    scheduler_class = getattr(diffusers, resolved[0].scheduler_class)
    option = {"karras": {"use_karras_sigmas": True}, "exponential": {"use_exponential_sigmas": True}}
    wanted = option.get(schedule, {"timestep_spacing": "linspace"})
    if not set(wanted) <= set(inspect.signature(scheduler_class.__init__).parameters):
        pytest.skip(f"diffusers builds no {schedule} schedule into {sampler}: nothing to compare with")
    ours = make_scheduler(*resolved, SD_SCHEDULER_CONFIG, MODEL)
    theirs = scheduler_class.from_config(SD_SCHEDULER_CONFIG, **resolved[0].config, **wanted)
    theirs.set_timesteps(12)
    if not np.allclose(theirs.sigmas.numpy(), SCHEDULE_FUNCTIONS[schedule](12, MODEL), rtol=1e-4, atol=1e-5):
        pytest.skip(f"diffusers' own {schedule} levels for {sampler} are not A1111's: nothing to compare with")
    finals = []
    for scheduler in (ours, theirs):
        scheduler.set_timesteps(12)
        sample = torch.ones(1, 4, 8, 8) * scheduler.init_noise_sigma
        noise = {"generator": torch.Generator().manual_seed(1)} if "generator" in _parameters(scheduler.step) else {}
        for t in scheduler.timesteps:
            model_output = 0.1 * scheduler.scale_model_input(sample, t)  # a stand-in denoiser, the same for both
            sample = scheduler.step(model_output, t, sample, **noise).prev_sample
        finals.append(sample)
    assert np.allclose(ours.sigmas.numpy(), theirs.sigmas.numpy(), rtol=1e-4, atol=1e-5)
    assert torch.allclose(finals[0], finals[1], rtol=1e-3, atol=1e-4)


def _parameters(function: object) -> set[str]:
    return set(inspect.signature(function).parameters)  # type: ignore[arg-type]


# DPM2 and DPM2 a take 0.2 to 1 s to build on a 2-core CPU, past hypothesis' 200 ms default deadline.
@settings(deadline=None, max_examples=60)
@given(st.sampled_from(SAMPLERS), st.sampled_from(SCHEDULES), st.integers(1, 60))
def test_every_accepted_combination_steps_through_its_schedule(sampler, schedule, steps) -> None:  # type: ignore[no-untyped-def]
    try:
        resolved = resolve(sampler.name, schedule.name)
    except SamplerError as error:
        assert "use one of" in str(error)
        return
    scheduler = make_scheduler(*resolved, SD_SCHEDULER_CONFIG, MODEL)
    scheduler.set_timesteps(steps)
    assert scheduler.config.beta_schedule == "scaled_linear"
    if resolved[0].steps == "sigmas":
        assert len(scheduler.sigmas) == len(scheduler.timesteps) + 1
        assert np.allclose(scheduler.sigmas.numpy(), SCHEDULE_FUNCTIONS[resolved[1].name](steps, MODEL), rtol=1e-5)


@pytest.mark.parametrize("schedule", [s.name for s in SCHEDULES])
@pytest.mark.parametrize("sampler", [s.name for s in SAMPLERS])
def test_every_accepted_combination_runs_to_the_end(sampler: str, schedule: str) -> None:
    try:
        resolved = resolve(sampler, schedule)
    except SamplerError:
        return  # refused with the usable ones (checked above)
    for steps in (1, 9):
        scheduler = make_scheduler(*resolved, SD_SCHEDULER_CONFIG, MODEL)
        scheduler.set_timesteps(steps)
        sample = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0)) * scheduler.init_noise_sigma
        noise = {"generator": torch.Generator().manual_seed(1)} if "generator" in _parameters(scheduler.step) else {}
        for t in scheduler.timesteps:
            model_output = 0.1 * scheduler.scale_model_input(sample, t)
            sample = scheduler.step(model_output, t, sample, **noise).prev_sample
        assert torch.isfinite(sample).all(), (sampler, schedule, steps)
