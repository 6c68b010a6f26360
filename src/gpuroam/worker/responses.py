"""The A1111 bodies the generation service builds, as TypedDicts: options, a generation result and its info."""

from __future__ import annotations

import time
from typing import Any, NamedTuple, TypedDict

from gpuroam.worker.jobs import BatchKey, Job
from gpuroam.worker.schemas import GenerationRequest


class GenerationInfo(TypedDict):
    """A1111's `info` (sent as a JSON string): how the images were made, plus where (gpuroam_*)."""

    prompt: str
    all_prompts: list[str]
    negative_prompt: str
    all_negative_prompts: list[str]
    seed: int
    all_seeds: list[int]
    subseed: int
    all_subseeds: list[int]
    subseed_strength: float
    width: int
    height: int
    sampler_name: str
    scheduler: str
    cfg_scale: float
    steps: int
    batch_size: int
    restore_faces: bool
    sd_model_name: str
    sd_model_hash: str
    denoising_strength: float
    clip_skip: int
    index_of_first_image: int
    infotexts: list[str]
    styles: list[str]
    job_timestamp: str
    interrupted: bool
    version: str
    gpuroam_region: str | None
    gpuroam_gpu: str | None
    gpuroam_replica: str | None


class GenerationResult(TypedDict):
    """What txt2img and img2img answer (`GenerationResponse` is its published schema)."""

    images: list[str]
    parameters: dict[str, Any]
    info: str


class Seeds(NamedTuple):
    seed: int
    subseed: int
    all_seeds: list[int]  # one per image made
    all_subseeds: list[int]


class Served(NamedTuple):
    """The model that made the images and where it runs (gpuroam_* in info)."""

    model_name: str
    model_hash: str
    region: str | None
    gpu: str | None
    replica: str | None


def generation_info(
    request: GenerationRequest, key: BatchKey, seeds: Seeds, texts: list[str], job: Job, served: Served
) -> GenerationInfo:
    """A1111's info for the images made: one of each list per seed (a script may make fewer images than the
    request's batch_size x n_iter)."""
    count = len(seeds.all_seeds)
    return {
        "prompt": request.prompt,
        "all_prompts": [request.prompt] * count,
        "negative_prompt": request.negative_prompt,
        "all_negative_prompts": [request.negative_prompt] * count,
        "seed": seeds.seed,
        "all_seeds": seeds.all_seeds,
        "subseed": seeds.subseed,
        "all_subseeds": seeds.all_subseeds,
        "subseed_strength": request.subseed_strength,
        "width": key.width,
        "height": key.height,
        "sampler_name": key.sampler,
        "scheduler": key.schedule,
        "cfg_scale": key.cfg_scale,
        "steps": key.steps,
        "batch_size": request.batch_size,
        "restore_faces": False,
        "sd_model_name": served.model_name,
        "sd_model_hash": served.model_hash,
        "denoising_strength": key.denoising_strength,
        "clip_skip": key.clip_skip,
        "index_of_first_image": 0,
        "infotexts": texts,
        "styles": request.styles or [],
        "job_timestamp": time.strftime("%Y%m%d%H%M%S"),
        "interrupted": job.interrupted,
        "version": "gpuroam",
        "gpuroam_region": served.region,
        "gpuroam_gpu": served.gpu,
        "gpuroam_replica": served.replica,
    }
