"""A1111's view of running jobs: which jobs /progress, /interrupt and /skip act on, and the progress body."""

from __future__ import annotations

from typing import TypedDict

from gpuroam.worker.jobs import Job
from gpuroam.worker.service import GenerationService


class ProgressState(TypedDict):
    skipped: bool
    interrupted: bool
    job: str
    job_count: int
    job_timestamp: str
    job_no: int
    sampling_step: int
    sampling_steps: int


class Progress(TypedDict):
    """The body of GET /sdapi/v1/progress; no live previews, so `current_image` is always None."""

    progress: float
    eta_relative: float
    state: ProgressState
    current_image: None
    textinfo: None


def target_jobs(service: GenerationService | None, job_id: str | None, owner: str | None = None) -> list[Job]:
    """A named job, or (as A1111's global interrupt) every job on the device now. For a caller through
    the gateway (`owner`), only its own: the named job if it is the caller's, else the caller's jobs on
    the device, else its oldest waiting one."""
    if service is None:
        return []
    if job_id:
        job = service.jobs.get(job_id)
        return [job] if job is not None and (owner is None or job.owner == owner) else []
    if owner is None:
        return list(service.batcher.running)
    running = [job for job in service.batcher.running if job.owner == owner]
    waiting = [job for job in service.jobs.values() if job.owner == owner]
    return running or waiting[:1]


def progress_of(service: GenerationService | None, job_id: str | None, owner: str | None = None) -> Progress:
    """A1111's progress of one job: the named one, else the one on the device (or next in line); for a
    caller through the gateway only its own, so no caller ever sees another's job id or state."""
    job = _watched_job(service, job_id, owner)
    state = ProgressState(
        skipped=bool(job and job.skipped),
        interrupted=bool(job and job.interrupted),
        job=job.id if job else "",
        job_count=job.iterations if job else 0,
        job_timestamp="0",
        job_no=job.iterations_done if job else 0,
        sampling_step=job.sampling_step if job else 0,
        sampling_steps=job.sampling_steps if job else 0,
    )
    return Progress(
        progress=round(job.progress, 4) if job else 0.0,
        eta_relative=round(job.eta_relative, 3) if job else 0.0,
        state=state,
        current_image=None,
        textinfo=None,
    )


def _watched_job(service: GenerationService | None, job_id: str | None, owner: str | None) -> Job | None:
    if service is None:
        return None
    if job_id or owner is not None:
        return next(iter(target_jobs(service, job_id, owner)), None)
    jobs = list(service.jobs.values())
    return (service.batcher.running or jobs)[0] if jobs else None
