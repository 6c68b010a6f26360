"""A1111 sampler and scheduler names, mapped to diffusers schedulers.

A1111 splits "how to step" (the sampler: Euler a, DPM++ 2M, ...) from "which noise levels"
(the schedule type: Karras, Normal, ...); older clients send both in one name such as
"DPM++ 2M Karras". As in A1111: an unknown schedule is Automatic, Automatic is the sampler's own
default (Karras for DPM++ 2M, Exponential for DPM++ 2M SDE, the model's uniform levels for the
rest), and the timestep samplers (DDIM, PLMS, UniPC) take no schedule at all. The first-order
samplers step through exactly the sigmas A1111's schedule gives (worker/schedules.py); the
second-order ones (Heun, DPM2, DPM2 a) take the schedules diffusers builds into them.
Every mapped sampler draws its noise from per-image generators, so an image depends on its own
seed only, never on the batch it ran in.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Any, Literal

import diffusers
import numpy as np
import torch

# diffusers' top-level names are, to a type checker, placeholder classes: import from the defining modules.
from diffusers.schedulers.scheduling_utils import SchedulerMixin

from gpuroam.worker.schedules import SCHEDULE_FUNCTIONS, TrainingSigmas

# How a schedule reaches a sampler: its sigmas set outright, a diffusers option, or not at all.
Steps = Literal["sigmas", "options", "timesteps"]


@dataclass(frozen=True)
class Sampler:
    name: str
    scheduler_class: str
    config: dict[str, Any] = field(default_factory=dict)
    aliases: tuple[str, ...] = ()
    steps: Steps = "sigmas"
    default_schedule: str = "uniform"  # what Automatic means for it (A1111's sampler options)


@dataclass(frozen=True)
class Schedule:
    name: str
    label: str
    options: dict[str, Any] | None = None  # the diffusers option for the second-order samplers; None: none
    aliases: tuple[str, ...] = ()
    default_rho: float = -1.0
    need_inner_model: bool = False  # A1111's flag: computed from the model's own noise levels


SAMPLERS: tuple[Sampler, ...] = (
    Sampler(
        "DPM++ 2M",
        "DPMSolverMultistepScheduler",
        {"algorithm_type": "dpmsolver++", "solver_order": 2},
        ("k_dpmpp_2m",),
        default_schedule="karras",
    ),
    Sampler(
        "DPM++ 2M SDE",
        "DPMSolverMultistepScheduler",
        {"algorithm_type": "sde-dpmsolver++", "solver_order": 2},
        ("k_dpmpp_2m_sde",),
        default_schedule="exponential",
    ),
    Sampler(
        "DPM++ 2M SDE Heun",
        "DPMSolverMultistepScheduler",
        {"algorithm_type": "sde-dpmsolver++", "solver_order": 2, "solver_type": "heun"},
        ("k_dpmpp_2m_sde_heun",),
        default_schedule="exponential",
    ),
    Sampler(
        "DPM++ 3M SDE",
        "DPMSolverMultistepScheduler",
        {"algorithm_type": "sde-dpmsolver++", "solver_order": 3},
        ("k_dpmpp_3m_sde",),
        default_schedule="exponential",
    ),
    Sampler("Euler a", "EulerAncestralDiscreteScheduler", {}, ("k_euler_a", "k_euler_ancestral")),
    Sampler("Euler", "EulerDiscreteScheduler", {}, ("k_euler",)),
    Sampler("LMS", "LMSDiscreteScheduler", {}, ("k_lms",)),
    Sampler("Heun", "HeunDiscreteScheduler", {}, ("k_heun",), steps="options"),
    Sampler("DPM2", "KDPM2DiscreteScheduler", {}, ("k_dpm_2",), steps="options"),
    Sampler("DPM2 a", "KDPM2AncestralDiscreteScheduler", {}, ("k_dpm_2_a",), steps="options"),
    Sampler("DDIM", "DDIMScheduler", {}, (), steps="timesteps"),
    Sampler("PLMS", "PNDMScheduler", {"skip_prk_steps": True}, (), steps="timesteps"),
    Sampler("UniPC", "UniPCMultistepScheduler", {}, (), steps="timesteps"),
    Sampler("LCM", "LCMScheduler", {}, (), steps="timesteps"),
)

_LINSPACE = {"timestep_spacing": "linspace"}
SCHEDULES: tuple[Schedule, ...] = (
    Schedule("automatic", "Automatic"),
    Schedule("uniform", "Uniform", _LINSPACE, need_inner_model=True),
    Schedule("karras", "Karras", {"use_karras_sigmas": True}, default_rho=7.0),
    Schedule("exponential", "Exponential", {"use_exponential_sigmas": True}),
    Schedule("polyexponential", "Polyexponential", {"use_exponential_sigmas": True}, default_rho=1.0),
    Schedule("sgm_uniform", "SGM Uniform", {"timestep_spacing": "trailing"}, ("SGMUniform",), need_inner_model=True),
    Schedule("kl_optimal", "KL Optimal"),
    Schedule("align_your_steps", "Align Your Steps"),
    Schedule("simple", "Simple", need_inner_model=True),
    Schedule("normal", "Normal", _LINSPACE, need_inner_model=True),
    Schedule("ddim", "DDIM", need_inner_model=True),
    Schedule("beta", "Beta", {"use_beta_sigmas": True}, need_inner_model=True),
)

DEFAULT_SAMPLER = "Euler"


class SamplerError(ValueError):
    """An unknown sampler name, or a schedule the (second-order) sampler cannot take here."""


class UnknownSampler(SamplerError):
    """No sampler of that name (A1111 answers 404 "Sampler not found")."""


def _sampler_lookup() -> dict[str, Sampler]:
    return {key.lower(): s for s in SAMPLERS for key in (s.name, *s.aliases)}


def _schedule_lookup() -> dict[str, Schedule]:
    return {key.lower(): s for s in SCHEDULES for key in (s.name, s.label, *s.aliases)}


def sampler_names() -> list[str]:
    return [s.name for s in SAMPLERS]


def schedule_names() -> list[str]:
    return [s.name for s in SCHEDULES]


def schedule_label(name: str) -> str:
    """How A1111 writes a schedule in an image's infotext ("Karras", "Align Your Steps")."""
    return next((s.label for s in SCHEDULES if s.name == name), name)


def resolve(sampler_name: str | None, schedule_name: str | None) -> tuple[Sampler, Schedule]:
    """Accept "Euler a", "k_euler_a", "DPM++ 2M Karras" and a separate schedule name or label; the schedule
    returned is the one that runs (never Automatic)."""
    samplers, schedules = _sampler_lookup(), _schedule_lookup()
    raw = (sampler_name or DEFAULT_SAMPLER).strip()
    sampler = samplers.get(raw.lower())
    schedule = schedules.get((schedule_name or "automatic").strip().lower(), SCHEDULES[0])  # unknown: Automatic
    if sampler is None:
        for suffix in sorted(schedules, key=len, reverse=True):
            head = raw[: -len(suffix)].strip()
            if raw.lower().endswith(" " + suffix) and head.lower() in samplers:
                sampler, combined = samplers[head.lower()], schedules[suffix]
                if schedule.name == "automatic":
                    schedule = combined
                break
    if sampler is None:
        raise UnknownSampler(f"unknown sampler {raw!r}; valid samplers: {', '.join(sampler_names())}")
    if schedule.name == "automatic":
        schedule = schedules[sampler.default_schedule]
    if sampler.steps == "options" and not _takes(sampler, schedule):
        usable = [s.name for s in SCHEDULES[1:] if _takes(sampler, s)]
        raise SamplerError(
            f"scheduler {schedule.name!r} cannot be used with sampler {sampler.name!r} here; "
            f"with {sampler.name!r} use one of: {', '.join(usable)} (or a first-order sampler such as Euler)"
        )
    return sampler, schedule


def _takes(sampler: Sampler, schedule: Schedule) -> bool:
    if schedule.options is None:
        return False
    accepted = inspect.signature(getattr(diffusers, sampler.scheduler_class).__init__).parameters
    return set(schedule.options) <= set(accepted)


def make_scheduler(
    sampler: Sampler, schedule: Schedule, base_config: dict[str, Any], model: TrainingSigmas
) -> SchedulerMixin:
    """A fresh scheduler from the model's own noise schedule (betas, prediction type), stepping through the
    schedule's sigmas."""
    scheduler_class = getattr(diffusers, sampler.scheduler_class)
    options = (schedule.options or {}) if sampler.steps == "options" else {}
    scheduler = scheduler_class.from_config(base_config, **sampler.config, **options)
    assert isinstance(scheduler, SchedulerMixin)  # from_config returns a tuple only when asked to
    if sampler.steps == "sigmas":
        _step_through(scheduler, schedule.name, model)
    if sampler.scheduler_class == "LCMScheduler":
        _any_step_count(scheduler)
    return scheduler


def _any_step_count(scheduler: SchedulerMixin) -> None:
    """diffusers' LCM picks its steps among `original_inference_steps` (50) and refuses more; A1111 runs any
    count. Past 50 steps the original grid grows to the count asked; at 50 or fewer nothing changes."""
    plain = scheduler.set_timesteps  # type: ignore[attr-defined]  # every diffusers scheduler has it
    original = int(scheduler.config.original_inference_steps)  # type: ignore[attr-defined]

    def set_timesteps(num_inference_steps: int, device: str | torch.device | None = None, **options: Any) -> None:
        options.setdefault("original_inference_steps", max(original, num_inference_steps))
        plain(num_inference_steps, device=device, **options)

    scheduler.set_timesteps = set_timesteps  # type: ignore[attr-defined]


def _step_through(scheduler: SchedulerMixin, schedule: str, model: TrainingSigmas) -> None:
    """After diffusers lays out its steps, put the schedule's sigmas (and their timesteps) in their place.
    The first-order samplers read nothing else of the layout, so they step exactly through these."""
    plain = scheduler.set_timesteps  # type: ignore[attr-defined]  # every diffusers scheduler has it
    levels = SCHEDULE_FUNCTIONS[schedule]

    def set_timesteps(num_inference_steps: int, device: str | torch.device | None = None, **options: Any) -> None:
        plain(num_inference_steps, device=device, **options)
        sigmas = levels(num_inference_steps, model)
        before_sigmas, before_timesteps = scheduler.sigmas, scheduler.timesteps  # type: ignore[attr-defined]
        scheduler.sigmas = torch.from_numpy(sigmas.astype(np.float32)).to(before_sigmas.device)  # type: ignore[attr-defined]
        timesteps = torch.from_numpy(model.sigma_to_t(sigmas[:-1]))
        scheduler.timesteps = timesteps.to(before_timesteps.device, before_timesteps.dtype)  # type: ignore[attr-defined]

    scheduler.set_timesteps = set_timesteps  # type: ignore[attr-defined]


def training_sigmas(base_config: dict[str, Any], is_sdxl: bool) -> TrainingSigmas:
    """The model's noise level at each training timestep, from its scheduler's betas."""
    ddpm = diffusers.EulerDiscreteScheduler.from_config(base_config)  # type: ignore[no-untyped-call]  # unannotated in diffusers
    return TrainingSigmas.from_alphas_cumprod(ddpm.alphas_cumprod.numpy(), is_sdxl)
