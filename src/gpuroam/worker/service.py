"""Turns an A1111 request into image tasks, waits for them, and builds A1111's response."""

from __future__ import annotations

import asyncio
import json
import random
from collections.abc import Mapping
from dataclasses import replace
from typing import Any

import anyio
import torch
from fastapi import HTTPException
from PIL import Image

from gpuroam.worker.batcher import Batcher
from gpuroam.worker.config import WorkerConfig
from gpuroam.worker.extra_networks import ParsedPrompt, parse_prompt
from gpuroam.worker.hires import HiresPlan, hires_fields, hires_sampler, plan_hires, upscale_image, upscale_latent
from gpuroam.worker.images import decode_image, decode_image_any_mode, encode_png, resize_for_generation
from gpuroam.worker.infotext import infotext
from gpuroam.worker.inpaint import InpaintSettings, Prepared, mask_of, paste_back_all, prepare_all
from gpuroam.worker.jobs import BatchKey, ImageTask, Job, Picture
from gpuroam.worker.library import AssetDirs, AssetLibrary
from gpuroam.worker.models import LoadedModel
from gpuroam.worker.options import OptionError, WorkerOptions, check_value, is_setting
from gpuroam.worker.responses import GenerationResult, Seeds, Served, generation_info
from gpuroam.worker.samplers import UnknownSampler, resolve
from gpuroam.worker.schemas import GenerationRequest, Img2ImgRequest, RequestError, Txt2ImgRequest
from gpuroam.worker.sd_upscale import SCRIPT_NAME, SdUpscale, blend_iterations, tile_seed_offset

MAX_SEED = 4294967294
MAX_CALLER_OPTIONS_BYTES = 16_384
MAX_INIT_PIXELS = 64 * 1024 * 1024  # of a request's init images together (four 4096x4096)


class GenerationService:
    def __init__(
        self, config: WorkerConfig, model: LoadedModel, batcher: Batcher, assets: AssetLibrary | None = None
    ) -> None:
        self.config = config
        self.model = model
        self.batcher = batcher
        self.assets = assets or AssetLibrary(AssetDirs())
        self.options = WorkerOptions()
        self.jobs: dict[str, Job] = {}
        self.max_clip_skip = max_clip_skip(model)

    def checked_options(self, values: Mapping[str, object]) -> dict[str, object]:
        """`values` checked: each an A1111 setting of the right kind, and the ones this worker acts on checked
        against the loaded model (a 422 names the first that is wrong); what a caller's generations may be
        given as `override_settings`."""
        checked: dict[str, object] = {}
        for key, value in values.items():
            if not is_setting(key):
                continue  # an extension's setting, say: ignored (worker/options.py)
            try:
                checked[key] = check_value(key, value)
            except OptionError as error:
                raise RequestError(error.key, str(error)) from None
        if "sd_model_checkpoint" in values:
            self._check_model_name(values["sd_model_checkpoint"], "sd_model_checkpoint")
        if "CLIP_stop_at_last_layers" in values:
            checked["CLIP_stop_at_last_layers"] = self._clip_skip(values, "CLIP_stop_at_last_layers")
        if "sd_vae" in values:
            self.assets.vae_name(values["sd_vae"], "sd_vae")
        for eta in ("eta_ddim", "eta_ancestral"):
            if eta in values:
                checked[eta] = _float_option(values, eta, 0.0, 1.0)
        return checked

    def caller_options(self, values: Mapping[str, object]) -> dict[str, object]:
        """Checked options for a caller through the gateway, which keeps them for that caller and sends them with
        each of its generations: at most MAX_CALLER_OPTIONS_BYTES of them, so one caller cannot make the
        gateway hold or copy megabytes (a 422 says so)."""
        checked = self.checked_options(values)
        size = len(json.dumps(checked))
        if size > MAX_CALLER_OPTIONS_BYTES:
            raise RequestError(
                next(iter(checked), "options"),
                f"these options take {size:,} bytes; a caller's options take at most {MAX_CALLER_OPTIONS_BYTES:,}",
            )
        return checked

    def update_options(self, values: Mapping[str, object]) -> None:
        """Set this worker's own options (A1111's single-user behaviour, for its own port)."""
        checked = self.checked_options(values)
        checked.pop("sd_model_checkpoint", None)  # the loaded model's, always
        self.options.update(checked)

    def options_as_a1111(self) -> dict[str, Any]:
        return self.options.as_a1111(self.model.title, self.model.sha256)

    def _clip_skip(self, values: Mapping[str, object], field_name: str) -> int:
        """CLIP skip n uses the text encoder's n-th layer from the end: at most as many as it has."""
        value = values["CLIP_stop_at_last_layers"]
        high = self.max_clip_skip
        if (
            isinstance(value, bool)
            or not isinstance(value, int | float)
            or not 1 <= value <= high
            or int(value) != value
        ):
            raise RequestError(
                field_name,
                f"CLIP_stop_at_last_layers must be an integer from 1 to {high} (the loaded model's text encoder "
                f"has {high} layers); got {value!r}",
            )
        return int(value)

    def _check_model_name(self, value: object, field_name: str) -> None:
        names = {self.model.title, self.model.name, self.model.filename, self.model.short_hash}
        if not isinstance(value, str) or value not in names:  # a list or an object is unhashable: a 422, not a 500
            raise RequestError(
                field_name,
                f"model {value!r} is not loaded on this worker; it serves {self.model.title!r} (a request or a "
                "caller through the endpoint cannot switch the model every caller shares: POST sd_model_checkpoint "
                "to /sdapi/v1/options on the worker's own port, or start a worker with --model)",
            )

    def batch_key(self, request: GenerationRequest, prompt: ParsedPrompt) -> BatchKey:
        """Validate sampler, schedule and overrides; everything a batch must share (`prompt`: the request's,
        parsed)."""
        try:
            sampler, schedule = resolve(request.requested_sampler, request.scheduler)
        except UnknownSampler:
            raise  # A1111's 404 (worker/errors.py)
        except ValueError as error:
            raise RequestError("sampler_name", str(error)) from error
        overrides = request.override_settings or {}
        if "sd_model_checkpoint" in overrides:
            self._check_model_name(overrides["sd_model_checkpoint"], "override_settings.sd_model_checkpoint")
        clip_skip = int(self.options.get("CLIP_stop_at_last_layers"))
        if "CLIP_stop_at_last_layers" in overrides:
            clip_skip = self._clip_skip(overrides, "override_settings.CLIP_stop_at_last_layers")
        eta = request.eta
        if eta is None and sampler.name == "DDIM":
            eta = (
                _float_option(overrides, "eta_ddim", 0.0, 1.0)
                if "eta_ddim" in overrides
                else float(self.options.get("eta_ddim"))
            )
        vae = self.assets.vae_name(
            overrides.get("sd_vae", self.options.get("sd_vae")),
            "override_settings.sd_vae" if "sd_vae" in overrides else "sd_vae",
        )
        img2img = request if isinstance(request, Img2ImgRequest) else None
        inpaint = InpaintSettings.of(img2img) if img2img is not None and img2img.mask else None
        return BatchKey(
            mode="txt2img" if img2img is None else "img2img" if inpaint is None else "inpaint",
            width=request.width,
            height=request.height,
            steps=request.steps,
            sampler=sampler.name,
            schedule=schedule.name,
            cfg_scale=request.cfg_scale,
            denoising_strength=0.0 if img2img is None else img2img.denoising_strength,
            eta=eta,
            clip_skip=clip_skip,
            tiling=bool(request.tiling),
            latent_fill=None if inpaint is None else inpaint.latent_fill,
            networks=self.assets.networks(prompt),
            vae=vae,
        )

    def check_limits(
        self, request: GenerationRequest, hires: HiresPlan | None = None, images: int | None = None
    ) -> None:
        """Refuse what one request may not ask of a shared GPU, before it queues (spec `limits:`); a hires fix's
        second pass counts too, and `images` replaces the request's count (the sd upscale script's tiles)."""
        text = len(request.prompt) + len(request.negative_prompt) + sum(map(len, request.styles or []))
        if isinstance(request, Txt2ImgRequest) and request.enable_hr:
            text += len(request.hr_prompt) + len(request.hr_negative_prompt)
        if text > self.config.max_prompt_chars:
            raise RequestError(
                "prompt",
                f"the prompts are {text:,} characters long (prompt, negative prompt and styles together); this "
                f"service takes at most {self.config.max_prompt_chars:,} (limits.max_prompt_chars in the service spec)",
            )
        images = request.image_count if images is None else images
        cost = megapixel_steps(request, hires) / request.image_count * images
        if cost > self.config.max_megapixel_steps:
            raise RequestError(
                "steps",
                f"{request.width}x{request.height} x {request.steps} steps x {images} images is "
                f"{cost:,.0f} megapixel-steps; this service takes at most {self.config.max_megapixel_steps:,.0f} per "
                "request (limits.max_megapixel_steps in the service spec): ask for fewer images, steps or pixels, "
                "or send several requests",
            )

    @staticmethod
    def script(request: GenerationRequest) -> SdUpscale | None:
        """The img2img script a request names: "sd upscale" is the one there is; any other is A1111's 422, and
        so is any always-on script (an extension's: ControlNet, ADetailer...), which A1111 refuses too when it
        does not have it, rather than make the image without it."""
        for name in request.alwayson_scripts:
            raise HTTPException(422, f"always on script {name} not found")
        if not request.script_name:
            return None
        if isinstance(request, Img2ImgRequest) and request.script_name.lower() == SCRIPT_NAME:
            if request.mask:
                raise RequestError("mask", "sd upscale redraws the whole image: send it without a mask")
            return SdUpscale.of(request.script_args)
        raise HTTPException(422, f"Script '{request.script_name}' not found")  # A1111's answer

    async def generate(self, request: GenerationRequest, owner: str = "") -> GenerationResult:
        """The request's images; its job belongs to `owner` (the caller the gateway named, "" on the worker's port)."""
        script = self.script(request)
        hires = self._hires(request)
        self.check_limits(request, hires)
        parsed = parse_prompt(request.prompt)
        key = self.batch_key(request, parsed)
        if hires is not None:
            key = replace(key, latent=hires.latent)  # the first pass keeps its latent for a latent upscale
        init_images = await self._init_images(request, key, resize=script is None)
        if key.mode == "inpaint" and not any(isinstance(start, Prepared) for start in init_images):
            key = replace(key, mode="img2img", latent_fill=None)  # nothing masked: plain img2img
        tiles = None
        if script is not None:  # the upscaled image's tiles are the init images, each iteration's all of them
            tiles, init_images = await anyio.to_thread.run_sync(script.tiles, init_images[0], key.width, key.height)
            self.check_limits(request, images=len(tiles.corners) * request.n_iter)
        starts = [prepared.image if isinstance(prepared, Prepared) else prepared for prepared in init_images]
        seed = random.randrange(MAX_SEED) if request.seed == -1 else request.seed
        subseed = random.randrange(MAX_SEED) if request.subseed == -1 else request.subseed
        count = request.image_count if tiles is None else request.n_iter  # the script makes an image per iteration
        all_seeds = [seed + (i if request.subseed_strength == 0 else 0) for i in range(count)]
        all_subseeds = [subseed + i for i in range(count)]
        per_result = 1 if tiles is None else len(tiles.corners)
        job_id = request.force_task_id or Job.new_id()
        if job_id in self.jobs:  # another caller's job id would let it see this job's progress
            job_id = Job.new_id()
        job = Job(
            id=job_id,
            key=key,
            image_count=count * per_result,
            batch_size=request.batch_size if tiles is None else per_result,
            owner=owner,
        )
        prompt = self.assets.spelled(parsed.text)  # without its <lora:...> tags, as A1111 encodes it
        tasks = [
            ImageTask(
                job=job,
                index=i,
                prompt=prompt,
                negative_prompt=self.assets.spelled(request.negative_prompt),
                seed=all_seeds[i // per_result] + tile_seed_offset(request, i % per_result),
                subseed=all_subseeds[i // per_result],
                subseed_strength=request.subseed_strength,
                init_image=starts[i % len(starts)] if starts else None,
                mask=mask_of(init_images[i % len(init_images)]) if init_images else None,
            )
            for i in range(count * per_result)
        ]
        try:
            images = await self._run(job, tasks) if tiles is None else await self._run_in_turn(job, tasks)
            if hires is not None and isinstance(request, Txt2ImgRequest) and not job.interrupted:
                job, tasks, images = await self._second_pass(request, hires, job, tasks, images)
        finally:
            self.jobs.pop(job.id, None)
        if key.mode == "inpaint":  # each result back into its picture, the unmasked pixels as they were sent
            images = await anyio.to_thread.run_sync(paste_back_all, images, init_images)
        if tiles is not None:  # each iteration's tiles blended into its image
            images = [*await anyio.to_thread.run_sync(blend_iterations, images, tiles)]
            tasks = tasks[::per_result]
        # A latent left from a first pass that was interrupted is not an image: nothing to return for it.
        made = [(task, image) for task, image in zip(tasks, images) if isinstance(image, Image.Image)]
        texts = [self._infotext(request, key, task, hires, script) for task, _ in made]
        encoded = (
            await anyio.to_thread.run_sync(_encode_all, [image for _, image in made], texts)
            if request.send_images
            else []
        )
        where = Served(self.model.name, self.model.short_hash, self.config.region, self.config.gpu, self.config.replica)
        info = generation_info(request, key, Seeds(seed, subseed, all_seeds, all_subseeds), texts, job, where)
        return GenerationResult(images=encoded, parameters=_parameters(request), info=json.dumps(info))

    async def _run(self, job: Job, tasks: list[ImageTask]) -> list[Picture | None]:
        """Queue the job's tasks and wait for them; a job left waiting (its client gone) is interrupted. Its LoRA
        files are read first, here, and kept while it runs: the device thread never reads a file."""
        loop = asyncio.get_running_loop()
        for task in tasks:
            task.result = loop.create_future()
        futures = [task.result for task in tasks if task.result is not None]
        self.jobs[job.id] = job
        try:
            await anyio.to_thread.run_sync(self.assets.hold, job.key.networks)
            self.batcher.submit(tasks)
            return list(await asyncio.gather(*futures))
        finally:
            self.assets.release(job.key.networks)
            if any(not future.done() for future in futures):  # client went away
                self.batcher.interrupt(job)

    async def _run_in_turn(self, job: Job, tasks: list[ImageTask]) -> list[Picture | None]:
        """A job of more images than a queue holds (the sd upscale script's tiles: hundreds for a large image)
        queues two device batches at a time, as A1111 runs a script's batches in turn; other callers' images
        go between them, and an interrupt stops it after the batches in flight."""
        size = 2 * self.batcher.max_batch
        made: list[Picture | None] = []
        for start in range(0, len(tasks), size):
            if job.interrupted:
                return made + [None] * (len(tasks) - start)
            made += await self._run(job, tasks[start : start + size])
        return made

    def _hires(self, request: GenerationRequest) -> HiresPlan | None:
        """The hires fix a request asks for, all of it checked before the first pass takes the GPU."""
        if not isinstance(request, Txt2ImgRequest) or not request.enable_hr:
            return None
        plan = plan_hires(request)
        parse_prompt(request.hr_prompt, "hr_prompt")  # its tags are checked before the first pass
        try:
            hires_sampler(request)
        except ValueError as error:  # an unknown sampler too: here a field of the hires pass, a 422
            raise RequestError("hr_sampler_name", str(error)) from None
        return plan

    async def _second_pass(
        self, request: Txt2ImgRequest, hires: HiresPlan, first: Job, tasks: list[ImageTask], made: list[Picture | None]
    ) -> tuple[Job, list[ImageTask], list[Picture | None]]:
        """Hires fix's second pass: each first-pass result upscaled, then img2img at the hires size, under the
        same job id (progress and interrupt follow it), batched with other such passes. An hr_prompt brings its
        own LoRAs (A1111 activates the hires prompt's networks for the second pass)."""
        sampler, schedule = hires_sampler(request)
        hr_prompt = parse_prompt(request.hr_prompt, "hr_prompt") if request.hr_prompt else None
        key = replace(
            first.key,
            mode="img2img",
            width=hires.width,
            height=hires.height,
            steps=hires.steps,
            sampler=sampler.name,
            schedule=schedule.name,
            denoising_strength=hires.denoising_strength,
            networks=first.key.networks if hr_prompt is None else self.assets.networks(hr_prompt),
        )
        upscaled = [await anyio.to_thread.run_sync(_upscaled, picture, hires) for picture in made]
        job = Job(id=first.id, key=key, image_count=first.image_count, batch_size=first.batch_size, owner=first.owner)
        job.started = first.started
        second = [
            replace(
                task,
                job=job,
                prompt=task.prompt if hr_prompt is None else self.assets.spelled(hr_prompt.text),
                negative_prompt=self.assets.spelled(request.hr_negative_prompt) or task.negative_prompt,
                init_image=picture,
                result=None,
            )
            for task, picture in zip(tasks, upscaled)
        ]
        return job, second, await self._run(job, second)

    async def _init_images(
        self, request: GenerationRequest, key: BatchKey, resize: bool = True
    ) -> list[Image.Image] | list[Prepared]:
        """The init images a request uses, at the batch's size (as sent without `resize`); with a mask, each
        prepared for inpainting (worker/inpaint.py), or as plain img2img when "Only masked" finds nothing
        masked (as A1111 does). At most MAX_INIT_PIXELS of them in all: each is held until its result is put
        back into it."""
        if not isinstance(request, Img2ImgRequest):
            return []
        decoded, pixels = [], 0
        for position, data in enumerate(request.init_images[: request.image_count]):
            try:
                image = await anyio.to_thread.run_sync(decode_image, data)
            except ValueError as error:
                raise RequestError(f"init_images.{position}", str(error)) from error
            pixels += image.width * image.height
            if pixels > MAX_INIT_PIXELS:
                raise RequestError(
                    f"init_images.{position}",
                    f"the init images hold more than {MAX_INIT_PIXELS:,} pixels together; send fewer or smaller ones",
                )
            decoded.append(image)
        if request.mask:
            try:
                mask = await anyio.to_thread.run_sync(decode_image_any_mode, request.mask)
                settings = InpaintSettings.of(request)
                size = (key.width, key.height, request.resize_mode)
                prepared = await anyio.to_thread.run_sync(prepare_all, decoded, mask, *size, settings)
            except ValueError as error:
                raise RequestError("mask", str(error)) from error
            if prepared is not None:
                return prepared
        if not resize:
            return decoded
        return [resize_for_generation(image, key.width, key.height, request.resize_mode) for image in decoded]

    def _infotext(
        self,
        request: GenerationRequest,
        key: BatchKey,
        task: ImageTask,
        hires: HiresPlan | None,
        script: SdUpscale | None = None,
    ) -> str:
        return infotext(
            prompt=request.prompt,
            negative_prompt=request.negative_prompt,
            key=key,
            seed=task.seed,
            subseed=task.subseed,
            subseed_strength=task.subseed_strength,
            batch_size=request.batch_size,
            batch_pos=task.index % request.batch_size,
            model_name=self.model.name,
            model_hash=self.model.short_hash,
            more=self._more_fields(request, key, hires, script),
        )

    @staticmethod
    def _more_fields(
        request: GenerationRequest, key: BatchKey, hires: HiresPlan | None, script: SdUpscale | None
    ) -> dict[str, object] | None:
        if script is not None:
            return {"SD upscale overlap": script.overlap, "SD upscale upscaler": script.upscaler}
        if isinstance(request, Img2ImgRequest) and key.mode == "inpaint":
            return InpaintSettings.of(request).fields()
        if hires is not None and isinstance(request, Txt2ImgRequest):
            return hires_fields(request, hires)
        return None


def _upscaled(picture: Picture | None, hires: HiresPlan) -> Picture | None:
    if isinstance(picture, torch.Tensor):
        return upscale_latent(picture, hires)
    return upscale_image(picture, hires) if isinstance(picture, Image.Image) else None


def _encode_all(images: list[Image.Image], texts: list[str]) -> list[str]:
    return [encode_png(image, text) for image, text in zip(images, texts)]


def _parameters(request: GenerationRequest) -> dict[str, Any]:
    """A1111 echoes the request; init images are left out (they can be megabytes)."""
    parameters = request.model_dump()
    if "init_images" in parameters:
        parameters["init_images"] = None
    return parameters


def megapixel_steps(request: GenerationRequest, hires: HiresPlan | None = None) -> float:
    """What a request costs the GPU: its pixels times its steps times its images, in millions (and a hires fix's
    second pass: its pixels times the steps it runs)."""
    cost = request.width * request.height / 1e6 * request.steps
    if hires is not None:
        cost += hires.width * hires.height / 1e6 * max(1, int(hires.steps * hires.denoising_strength))
    return cost * request.image_count


def max_clip_skip(model: LoadedModel) -> int:
    """The largest CLIP skip the model's text encoders take: their fewest layers."""
    encoders = [getattr(model.pipeline, name, None) for name in ("text_encoder", "text_encoder_2")]
    return min(int(encoder.config.num_hidden_layers) for encoder in encoders if encoder is not None)


def _float_option(values: Mapping[str, object], name: str, low: float, high: float) -> float:
    value = values[name]
    if isinstance(value, bool) or not isinstance(value, int | float) or not low <= value <= high:
        raise RequestError(name, f"{name} must be a number from {low} to {high}; got {value!r}")
    return float(value)
