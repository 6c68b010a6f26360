"""A1111 sampler and scheduler names, mapped to diffusers schedulers.

A1111 splits "how to step" (the sampler: Euler a, DPM++ 2M, ...) from "which noise levels"
(the schedule type: Karras, Exponential, ...); older clients send both in one name such as
"DPM++ 2M Karras". Every mapped sampler draws its noise from per-image generators, so an
image depends on its own seed only, never on the batch it ran in.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Any

import diffusers

# diffusers' top-level names are, to a type checker, placeholder classes: import from the defining modules.
from diffusers.schedulers.scheduling_utils import SchedulerMixin


@dataclass(frozen=True)
class Sampler:
    name: str
    scheduler_class: str
    config: dict[str, Any] = field(default_factory=dict)
    aliases: tuple[str, ...] = ()


@dataclass(frozen=True)
class Schedule:
    name: str
    label: str
    config: dict[str, Any] = field(default_factory=dict)
    aliases: tuple[str, ...] = ()


SAMPLERS: tuple[Sampler, ...] = (
    Sampler(
        "DPM++ 2M", "DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver++", "solver_order": 2}, ("k_dpmpp_2m",)
    ),
    Sampler(
        "DPM++ 2M SDE",
        "DPMSolverMultistepScheduler",
        {"algorithm_type": "sde-dpmsolver++", "solver_order": 2},
        ("k_dpmpp_2m_sde",),
    ),
    Sampler("Euler a", "EulerAncestralDiscreteScheduler", {}, ("k_euler_a", "k_euler_ancestral")),
    Sampler("Euler", "EulerDiscreteScheduler", {}, ("k_euler",)),
    Sampler("LMS", "LMSDiscreteScheduler", {}, ("k_lms",)),
    Sampler("Heun", "HeunDiscreteScheduler", {}, ("k_heun",)),
    Sampler("DPM2", "KDPM2DiscreteScheduler", {}, ("k_dpm_2",)),
    Sampler("DPM2 a", "KDPM2AncestralDiscreteScheduler", {}, ("k_dpm_2_a",)),
    Sampler("DDIM", "DDIMScheduler", {}, ()),
    Sampler("PLMS", "PNDMScheduler", {"skip_prk_steps": True}, ()),
    Sampler("UniPC", "UniPCMultistepScheduler", {}, ()),
    Sampler("LCM", "LCMScheduler", {}, ()),
)

SCHEDULES: tuple[Schedule, ...] = (
    Schedule("automatic", "Automatic"),
    Schedule("uniform", "Uniform", {"timestep_spacing": "linspace"}),
    Schedule("karras", "Karras", {"use_karras_sigmas": True}),
    Schedule("exponential", "Exponential", {"use_exponential_sigmas": True}),
    Schedule("sgm_uniform", "SGM Uniform", {"timestep_spacing": "trailing"}, ("SGMUniform",)),
    Schedule("beta", "Beta", {"use_beta_sigmas": True}),
)

DEFAULT_SAMPLER = "Euler"


class SamplerError(ValueError):
    """An unknown sampler or schedule name, or one that the sampler cannot use."""


def _sampler_lookup() -> dict[str, Sampler]:
    return {key.lower(): s for s in SAMPLERS for key in (s.name, *s.aliases)}


def _schedule_lookup() -> dict[str, Schedule]:
    return {key.lower(): s for s in SCHEDULES for key in (s.name, s.label, *s.aliases)}


def sampler_names() -> list[str]:
    return [s.name for s in SAMPLERS]


def schedule_names() -> list[str]:
    return [s.name for s in SCHEDULES]


def resolve(sampler_name: str | None, schedule_name: str | None) -> tuple[Sampler, Schedule]:
    """Accept "Euler a", "k_euler_a", "DPM++ 2M Karras" and a separate schedule name or label."""
    samplers, schedules = _sampler_lookup(), _schedule_lookup()
    raw = (sampler_name or DEFAULT_SAMPLER).strip()
    sampler = samplers.get(raw.lower())
    schedule = schedules.get((schedule_name or "automatic").strip().lower())
    if sampler is None:
        for suffix in sorted(schedules, key=len, reverse=True):
            head = raw[: -len(suffix)].strip()
            if raw.lower().endswith(" " + suffix) and head.lower() in samplers:
                sampler, combined = samplers[head.lower()], schedules[suffix]
                if schedule is None or schedule.name == "automatic":
                    schedule = combined
                break
    if sampler is None:
        raise SamplerError(f"unknown sampler {raw!r}; valid samplers: {', '.join(sampler_names())}")
    if schedule is None:
        raise SamplerError(f"unknown scheduler {schedule_name!r}; valid schedulers: {', '.join(schedule_names())}")
    accepted = inspect.signature(getattr(diffusers, sampler.scheduler_class).__init__).parameters
    if not set(schedule.config) <= set(accepted):
        usable = [s.name for s in SCHEDULES if set(s.config) <= set(accepted)]
        raise SamplerError(
            f"scheduler {schedule.name!r} cannot be used with sampler {sampler.name!r}; "
            f"with {sampler.name!r} use one of: {', '.join(usable)}"
        )
    return sampler, schedule


def make_scheduler(sampler: Sampler, schedule: Schedule, base_config: dict[str, Any]) -> SchedulerMixin:
    """A fresh scheduler from the model's own noise schedule (betas, prediction type)."""
    scheduler_class = getattr(diffusers, sampler.scheduler_class)
    scheduler = scheduler_class.from_config(base_config, **sampler.config, **schedule.config)
    assert isinstance(scheduler, SchedulerMixin)  # from_config returns a tuple only when asked to
    return scheduler
