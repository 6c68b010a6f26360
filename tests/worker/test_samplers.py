import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gpuroam.worker.models import SD_SCHEDULER_CONFIG
from gpuroam.worker.samplers import SAMPLERS, SCHEDULES, SamplerError, make_scheduler, resolve, sampler_names


def test_names_clients_send_are_accepted() -> None:
    assert resolve("Euler a", "automatic")[0].name == "Euler a"
    assert resolve("k_euler_a", None)[0].name == "Euler a"
    assert resolve(None, None)[0].name == "Euler"
    sampler, schedule = resolve("DPM++ 2M Karras", None)
    assert (sampler.name, schedule.name) == ("DPM++ 2M", "karras")
    assert resolve("DPM++ 2M", "Karras")[1].name == "karras"
    assert resolve("Euler", "SGMUniform")[1].name == "sgm_uniform"


def test_unknown_sampler_lists_the_valid_ones() -> None:
    with pytest.raises(SamplerError) as error:
        resolve("Nope 3000", None)
    for name in sampler_names():
        assert name in str(error.value)


def test_unknown_scheduler_lists_the_valid_ones() -> None:
    with pytest.raises(SamplerError, match="valid schedulers: automatic"):
        resolve("Euler", "zigzag")


def test_schedule_a_sampler_cannot_use_is_refused_with_the_usable_ones() -> None:
    with pytest.raises(SamplerError, match="with 'Euler a' use one of: automatic"):
        resolve("Euler a", "karras")


# DPM2 and DPM2 a take 0.2 to 1 s to build on a 2-core CPU (LMS and Heun with beta sigmas about 0.2 s), past
# hypothesis' 200 ms default deadline, so this failed on every run; it checks that each combination builds, not how fast.
@settings(deadline=None)
@given(st.sampled_from(SAMPLERS), st.sampled_from(SCHEDULES))
def test_every_accepted_combination_builds_a_scheduler(sampler, schedule) -> None:  # type: ignore[no-untyped-def]
    try:
        resolved = resolve(sampler.name, schedule.name)
    except SamplerError as error:
        assert "use one of" in str(error)
        return
    scheduler = make_scheduler(*resolved, SD_SCHEDULER_CONFIG)
    scheduler.set_timesteps(5)
    assert len(scheduler.timesteps) >= 5
    assert scheduler.config.beta_schedule == "scaled_linear"
