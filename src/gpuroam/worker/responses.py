"""The A1111 bodies the generation service builds, as TypedDicts: options, a generation result and its info."""

from __future__ import annotations

from typing import Any, TypedDict


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
