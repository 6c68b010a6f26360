"""A1111's schedule types as noise levels: shapes every sampler relies on, and A1111's own numbers."""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from gpuroam.worker.models import SD_SCHEDULER_CONFIG
from gpuroam.worker.samplers import training_sigmas
from gpuroam.worker.schedules import AYS_SD15, SCHEDULE_FUNCTIONS, ddim, karras, normal, simple, uniform

MODEL = training_sigmas(SD_SCHEDULER_CONFIG, is_sdxl=False)


def levels(name: str, n: int) -> int:
    """n + 1, but A1111's DDIM schedule takes every (1000 // n)th training level: as many as that gives."""
    return len(range(1, 1000, max(1000 // n, 1))) + 1 if name == "ddim" else n + 1


@given(st.sampled_from(sorted(SCHEDULE_FUNCTIONS)), st.integers(1, 200))
def test_every_schedule_gives_n_plus_one_levels_from_the_top_down(name: str, n: int) -> None:
    sigmas = SCHEDULE_FUNCTIONS[name](n, MODEL)
    assert sigmas.shape == (levels(name, n),) and np.all(np.isfinite(sigmas))
    assert np.all(np.diff(sigmas) <= 1e-9), "noise only ever goes down"
    assert sigmas[0] <= MODEL.sigma_max * (1 + 1e-4) and sigmas[-1] >= 0  # AYS's table starts at 14.615
    if name != "kl_optimal":  # A1111's KL Optimal stops at the model's smallest level, not at 0
        assert sigmas[-1] == 0


@given(st.floats(0.03, 14.6))
def test_sigma_and_timestep_convert_back_and_forth(sigma: float) -> None:
    t = MODEL.sigma_to_t(np.array([sigma]))
    assert 0 <= t[0] <= 999 and np.isclose(MODEL.t_to_sigma(t)[0], sigma, rtol=1e-6)


def test_a1111s_numbers() -> None:
    assert np.isclose(MODEL.sigma_max, 14.6146, atol=1e-3) and np.isclose(MODEL.sigma_min, 0.0292, atol=1e-3)
    assert np.allclose(uniform(20, MODEL), normal(20, MODEL)), "for SD both run from t=999 to t=0"
    assert np.allclose(SCHEDULE_FUNCTIONS["align_your_steps"](11, MODEL)[:-1], AYS_SD15), "11 levels: the table"
    assert np.isclose(karras(20, MODEL)[1], 11.725, atol=1e-3)
    assert np.isclose(ddim(20, MODEL)[0], MODEL.sigmas[951]), "every 50th training level from t=1, highest first"
    assert np.isclose(simple(20, MODEL)[1], MODEL.sigmas[-51]), "every 50th training level from the top"


@pytest.mark.parametrize("n", [1, 2, 7, 1000, 2000])
def test_odd_step_counts_still_give_a_usable_schedule(n: int) -> None:
    for name, schedule in SCHEDULE_FUNCTIONS.items():
        assert len(schedule(n, MODEL)) == levels(name, n), name
