"""A1111's schedule types ("which noise levels"): the sigmas each one gives for `n` steps.

The formulas are A1111's (modules/sd_schedulers.py, k-diffusion's sampling.get_sigmas_*), written here
over the model's own training noise levels, so a request with `scheduler: "normal"` steps through the
same sigmas as in the A1111 Web UI. Pure numpy: no model, no device. Each schedule returns n + 1
sigmas, from the largest down to a final 0.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray
from scipy import stats  # type: ignore[import-untyped]  # no stubs pinned

Sigmas = NDArray[np.float64]

BETA_ALPHA = BETA_BETA = 0.6  # A1111's beta_dist_alpha / beta_dist_beta defaults
# NVIDIA's Align Your Steps noise levels for 10 steps (A1111's, from the paper's how-to).
AYS_SD15 = (14.615, 6.475, 3.861, 2.697, 1.886, 1.396, 0.963, 0.652, 0.399, 0.152, 0.029)
AYS_SDXL = (14.615, 6.315, 3.771, 2.181, 1.342, 0.862, 0.555, 0.380, 0.234, 0.113, 0.029)


@dataclass(frozen=True)
class TrainingSigmas:
    """The model's noise level at each training timestep (ascending: t = 0 is the least noise)."""

    sigmas: Sigmas
    is_sdxl: bool = False

    @classmethod
    def from_alphas_cumprod(cls, alphas_cumprod: NDArray[np.floating], is_sdxl: bool = False) -> TrainingSigmas:
        alphas = np.asarray(alphas_cumprod, dtype=np.float64)
        return cls(np.sqrt((1.0 - alphas) / alphas), is_sdxl)

    @property
    def sigma_min(self) -> float:
        return float(self.sigmas[0])

    @property
    def sigma_max(self) -> float:
        return float(self.sigmas[-1])

    def sigma_to_t(self, sigma: Sigmas) -> Sigmas:
        """The (fractional) timestep of each noise level: linear in log sigma between training steps."""
        log_sigmas = np.log(self.sigmas)
        log_sigma = np.log(np.maximum(np.asarray(sigma, dtype=np.float64), 1e-10))
        low = np.clip(np.searchsorted(log_sigmas, log_sigma, side="right") - 1, 0, len(log_sigmas) - 2)
        weight = np.clip((log_sigmas[low] - log_sigma) / (log_sigmas[low] - log_sigmas[low + 1]), 0.0, 1.0)
        return np.asarray((1.0 - weight) * low + weight * (low + 1), dtype=np.float64)

    def t_to_sigma(self, t: Sigmas) -> Sigmas:
        t = np.asarray(t, dtype=np.float64)
        low, high = np.floor(t).astype(int), np.ceil(t).astype(int)
        log_sigmas = np.log(self.sigmas)
        return np.asarray(np.exp((1.0 - (t - low)) * log_sigmas[low] + (t - low) * log_sigmas[high]))


def _zero(sigmas: Sigmas) -> Sigmas:
    return np.append(np.asarray(sigmas, dtype=np.float64), 0.0)


def uniform(n: int, model: TrainingSigmas) -> Sigmas:
    """The model's own discretisation: timesteps evenly from the last to the first (k-diffusion get_sigmas)."""
    return _zero(model.t_to_sigma(np.linspace(len(model.sigmas) - 1, 0, n)))


def karras(n: int, model: TrainingSigmas, rho: float = 7.0) -> Sigmas:
    ramp = np.linspace(0.0, 1.0, n)
    low, high = model.sigma_min ** (1.0 / rho), model.sigma_max ** (1.0 / rho)
    return _zero((high + ramp * (low - high)) ** rho)


def exponential(n: int, model: TrainingSigmas) -> Sigmas:
    return _zero(np.exp(np.linspace(np.log(model.sigma_max), np.log(model.sigma_min), n)))


def polyexponential(n: int, model: TrainingSigmas, rho: float = 1.0) -> Sigmas:
    ramp = np.linspace(1.0, 0.0, n) ** rho
    low, high = np.log(model.sigma_min), np.log(model.sigma_max)
    return _zero(np.exp(ramp * (high - low) + low))


def _between_extremes(n: int, model: TrainingSigmas, sgm: bool) -> Sigmas:
    start = model.sigma_to_t(np.array([model.sigma_max]))[0]
    end = model.sigma_to_t(np.array([model.sigma_min]))[0]
    timesteps = np.linspace(start, end, n + 1)[:-1] if sgm else np.linspace(start, end, n)
    return _zero(model.t_to_sigma(timesteps))


def sgm_uniform(n: int, model: TrainingSigmas) -> Sigmas:
    return _between_extremes(n, model, sgm=True)


def normal(n: int, model: TrainingSigmas) -> Sigmas:
    return _between_extremes(n, model, sgm=False)


def kl_optimal(n: int, model: TrainingSigmas) -> Sigmas:
    """Ends at sigma_min, not 0, as A1111's does (n + 1 levels of tan-interpolated angles)."""
    low, high = np.arctan(model.sigma_min), np.arctan(model.sigma_max)
    index = np.arange(n + 1) / n
    return np.asarray(np.tan(index * low + (1.0 - index) * high), dtype=np.float64)


def align_your_steps(n: int, model: TrainingSigmas) -> Sigmas:
    """NVIDIA's 10-step levels, log-linearly interpolated to `n` steps."""
    levels = np.array(AYS_SDXL if model.is_sdxl else AYS_SD15)
    if n == len(levels):
        return _zero(levels)
    ys = np.interp(np.linspace(0.0, 1.0, n), np.linspace(0.0, 1.0, len(levels)), np.log(levels[::-1]))
    return _zero(np.exp(ys)[::-1])


def simple(n: int, model: TrainingSigmas) -> Sigmas:
    stride = len(model.sigmas) / n
    return _zero(np.array([model.sigmas[-(1 + int(x * stride))] for x in range(n)]))


def ddim(n: int, model: TrainingSigmas) -> Sigmas:
    stride = max(len(model.sigmas) // n, 1)
    return _zero(model.sigmas[1::stride][::-1])


def beta(n: int, model: TrainingSigmas) -> Sigmas:
    """Beta Sampling (Lee et al., 2024) with A1111's default alpha = beta = 0.6."""
    quantiles = stats.beta.ppf(1.0 - np.linspace(0.0, 1.0, n), BETA_ALPHA, BETA_BETA)
    return _zero(model.sigma_min + quantiles * (model.sigma_max - model.sigma_min))


SCHEDULE_FUNCTIONS: dict[str, Callable[[int, TrainingSigmas], Sigmas]] = {
    "uniform": uniform,
    "karras": karras,
    "exponential": exponential,
    "polyexponential": polyexponential,
    "sgm_uniform": sgm_uniform,
    "kl_optimal": kl_optimal,
    "align_your_steps": align_your_steps,
    "simple": simple,
    "normal": normal,
    "ddim": ddim,
    "beta": beta,
}
