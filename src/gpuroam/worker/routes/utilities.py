"""The rest of A1111's /sdapi/v1 surface that clients call at start-up or from their tools: the catalogues
(upscalers, VAEs, LoRAs, embeddings, styles, ...), png-info, the Extras tab's upscaling, interrogate,
memory and command-line flags, and the refresh routes.

Shapes and statuses are A1111 1.10's. Where A1111 needs weights that cannot exist here (ESRGAN and the
other model upscalers, face restoration, CLIP and DeepBooru interrogation), this worker does what A1111
does when those weights cannot be loaded, and does not list them. Bad input is a 4xx here where A1111
answers 500 (an unreadable image, an unknown upscaler).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Any

import anyio
import torch
from fastapi import APIRouter, HTTPException, Request, params
from PIL import Image
from pydantic import BaseModel, ConfigDict, Field

from gpuroam.worker.extras import LATENT_UPSCALE_MODES, UPSCALERS, Upscale, check_budget, run_extras
from gpuroam.worker.images import ImageDecodeError, decode_image_any_mode, encode_png
from gpuroam.worker.pnginfo import parse_parameters, read_info
from gpuroam.worker.routes.sdapi import caller
from gpuroam.worker.schemas import RequestError
from gpuroam.worker.state import SharedState

EXTRAS_AT_ONCE = anyio.CapacityLimiter(2)  # CPU work: a burst of extras requests queues, it cannot take every core
MAX_BATCH_IMAGES = 16


class ExtrasRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")

    resize_mode: int = Field(0, ge=0, le=1)
    show_extras_results: bool = True
    gfpgan_visibility: float = Field(0.0, ge=0.0, le=1.0)
    codeformer_visibility: float = Field(0.0, ge=0.0, le=1.0)
    codeformer_weight: float = Field(0.0, ge=0.0, le=1.0)
    upscaling_resize: float = Field(2, gt=0.0, le=8.0)
    upscaling_resize_w: int = Field(512, ge=1, le=8192)
    upscaling_resize_h: int = Field(512, ge=1, le=8192)
    upscaling_crop: bool = True
    upscaler_1: str = Field("None", max_length=128)
    upscaler_2: str = Field("None", max_length=128)
    extras_upscaler_2_visibility: float = Field(0.0, ge=0.0, le=1.0)
    upscale_first: bool = False  # accepted and ignored, as in A1111

    def upscale(self) -> Upscale:
        return Upscale(
            upscaler_1=self.upscaler_1,
            upscaler_2=self.upscaler_2,
            upscaler_2_visibility=self.extras_upscaler_2_visibility,
            resize_mode=self.resize_mode,
            factor=self.upscaling_resize,
            width=self.upscaling_resize_w,
            height=self.upscaling_resize_h,
            crop=self.upscaling_crop,
            gfpgan_visibility=self.gfpgan_visibility,
            codeformer_visibility=self.codeformer_visibility,
            codeformer_weight=self.codeformer_weight,
        )


class ExtrasSingleRequest(ExtrasRequest):
    image: str = ""


class NamedImage(BaseModel):
    data: str
    name: str


class ExtrasBatchRequest(ExtrasRequest):
    imageList: list[NamedImage] = Field(..., max_length=MAX_BATCH_IMAGES)


class ImageRequest(BaseModel):
    image: str


class InterrogateRequest(BaseModel):
    image: str | None = ""
    model: str = "clip"


def _opened(data: str, field_name: str, load: bool = True) -> Image.Image:
    try:
        return decode_image_any_mode(data.strip(), load)
    except ImageDecodeError as error:
        raise RequestError(field_name, f"Invalid encoded image: {error}") from None


async def _decoded(data: str, field_name: str) -> Image.Image:
    """Decoded off the event loop: a large image takes a while, and the loop serves everyone."""
    return await anyio.to_thread.run_sync(_opened, data, field_name)


def _loaded(image: Image.Image) -> Image.Image:
    try:
        image.load()
    except Exception as error:  # noqa: BLE001 - PIL raises many types for bad pixel data
        raise RequestError("image", f"Invalid encoded image: {type(error).__name__}: {error}") from None
    return image


async def _extras(image: Image.Image, request: ExtrasRequest) -> tuple[str, str]:
    async with EXTRAS_AT_ONCE:
        image = await anyio.to_thread.run_sync(_loaded, image)
        result, html_info = await anyio.to_thread.run_sync(run_extras, image, request.upscale())
    texts = {key: value for key, value in result.info.items() if isinstance(key, str) and isinstance(value, str)}
    parameters = texts.pop("parameters", None)
    return await anyio.to_thread.run_sync(encode_png, result, parameters, texts), html_info


async def extra_single_image(request: ExtrasSingleRequest) -> dict[str, str]:
    image, html_info = await _extras(_opened(request.image, "image", load=False), request)
    return {"html_info": html_info, "image": image}


async def extra_batch_images(request: ExtrasBatchRequest) -> dict[str, Any]:
    sources = [
        _opened(item.data, f"imageList.{position}.data", load=False) for position, item in enumerate(request.imageList)
    ]
    check_budget(sources, request.upscale())  # the whole batch, from the headers, before any pixel is decoded
    images, html_info = [], "<p></p>"
    for source in sources:
        image, html_info = await _extras(source, request)
        images.append(image)
    return {"html_info": html_info, "images": images}


async def png_info(request: ImageRequest) -> dict[str, Any]:
    info, items = read_info(await _decoded(request.image, "image"))
    return {"info": info, "items": items, "parameters": await anyio.to_thread.run_sync(parse_parameters, info)}


async def interrogate(request: InterrogateRequest) -> dict[str, str]:
    """A1111's answer when its captioning models cannot be loaded (none can be here): the caption `<error>`."""
    if request.image is None:
        raise HTTPException(404, "Image not found")
    if request.model not in ("clip", "deepdanbooru"):
        raise HTTPException(404, "Model not found")
    await _decoded(request.image, "image")
    return {"caption": "<error>"}


async def upscalers() -> list[dict[str, Any]]:
    return [
        {"name": name, "model_name": None, "model_path": None, "model_url": None, "scale": 4.0} for name in UPSCALERS
    ]


async def latent_upscale_modes() -> list[dict[str, str]]:
    return [{"name": name} for name in LATENT_UPSCALE_MODES]


async def empty_list() -> list[Any]:
    """hypernetworks, face-restorers, realesrgan-models, prompt-styles: none here."""
    return []


async def loras(state: SharedState) -> list[dict[str, Any]]:
    return state.assets.loras_as_a1111()


async def sd_vae(state: SharedState) -> list[dict[str, str]]:
    return state.assets.vaes_as_a1111()


async def embeddings(state: SharedState) -> dict[str, dict[str, Any]]:
    return state.assets.embeddings_as_a1111()


def _own_port_only(http: Request) -> None:
    """A refresh rescans this worker's directories for every caller (and the gateway's callers share every
    replica), so only the worker's own port may ask for one, as for a checkpoint switch."""
    if caller(http) is not None:
        raise HTTPException(
            403,
            f"{http.url.path} rescans this worker's asset directories for every caller: POST it on the worker's "
            "own port, not through the endpoint",
        )


async def refresh_loras(http: Request, state: SharedState) -> None:
    """The refresh routes rescan their directory off the event loop; A1111 answers null."""
    _own_port_only(http)
    await anyio.to_thread.run_sync(state.assets.refresh_loras)


async def refresh_vae(http: Request, state: SharedState) -> None:
    _own_port_only(http)
    await anyio.to_thread.run_sync(state.assets.refresh_vaes)


async def refresh_checkpoints(http: Request, state: SharedState) -> None:
    _own_port_only(http)
    await anyio.to_thread.run_sync(state.assets.refresh_checkpoints)


async def refresh_embeddings(http: Request, state: SharedState) -> None:
    """Embeddings are read now and taught to the model between two batches, before the answer (once the model
    is loaded: until then, the scan at start counts)."""
    _own_port_only(http)
    found = await anyio.to_thread.run_sync(state.assets.read_embeddings)
    if state.service is not None:
        await state.service.batcher.on_device(lambda: state.assets.use_embeddings(*found))


async def cmd_flags(state: SharedState) -> dict[str, Any]:
    """A1111's flags as this worker runs (the secrets among them never shown)."""
    config = state.config
    return {
        "data_dir": os.getcwd(),
        "ckpt": config.model,
        "ckpt_dir": config.ckpt_dir,
        "vae_dir": config.vae_dir,
        "lora_dir": config.lora_dir,
        "embeddings_dir": config.embeddings_dir,
        "hypernetwork_dir": None,
        "no_half": False,
        "no_half_vae": False,
        "precision": "autocast",
        "medvram": False,
        "lowvram": False,
        "use_cpu": ["all"] if config.device == "cpu" else [],
        "api": True,
        "api_auth": None,  # never shown: it holds passwords
        "api_log": False,
        "nowebui": False,
        "gradio_auth": None,
        "tls_keyfile": None,
        "tls_certfile": None,
        "timeout_keep_alive": 30,
        "xformers": False,
        "opt_sdp_attention": config.device != "cpu",
        "skip_load_model_at_start": False,
        "max_batch_count": 16,
    }


async def memory() -> dict[str, Any]:
    return {"ram": _ram(), "cuda": _cuda()}


def _ram() -> dict[str, Any]:
    try:
        with open("/proc/self/statm") as statm:
            used = int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
        total = float(os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
    except (OSError, ValueError, IndexError) as error:
        return {"error": str(error)}
    return {"free": total - used, "used": used, "total": total}


def _cuda() -> dict[str, Any]:
    if not torch.cuda.is_available():
        return {"error": "unavailable"}
    free, total = torch.cuda.mem_get_info()
    stats = torch.cuda.memory_stats()

    def pair(name: str) -> dict[str, int]:
        return {"current": int(stats.get(f"{name}.all.current", 0)), "peak": int(stats.get(f"{name}.all.peak", 0))}

    return {
        "system": {"free": free, "used": total - free, "total": total},
        "active": pair("active_bytes"),
        "allocated": pair("allocated_bytes"),
        "reserved": pair("reserved_bytes"),
        "inactive": pair("inactive_split_bytes"),
        "events": {"retries": int(stats.get("num_alloc_retries", 0)), "oom": int(stats.get("num_ooms", 0))},
    }


def add_routes(router: APIRouter, dependencies: Sequence[params.Depends] = ()) -> None:
    """Guarded as the rest of /sdapi (create_app passes the --api-auth check when users are configured)."""
    guarded = list(dependencies)
    for path in ("hypernetworks", "face-restorers", "realesrgan-models", "prompt-styles"):
        router.add_api_route(f"/sdapi/v1/{path}", empty_list, methods=["GET"], dependencies=guarded)
    routes: list[tuple[str, str, Callable[..., Any]]] = [
        ("GET", "loras", loras),
        ("GET", "sd-vae", sd_vae),
        ("POST", "refresh-checkpoints", refresh_checkpoints),
        ("POST", "refresh-vae", refresh_vae),
        ("POST", "refresh-loras", refresh_loras),
        ("POST", "refresh-embeddings", refresh_embeddings),
        ("GET", "upscalers", upscalers),
        ("GET", "latent-upscale-modes", latent_upscale_modes),
        ("GET", "embeddings", embeddings),
        ("GET", "cmd-flags", cmd_flags),
        ("GET", "memory", memory),
        ("POST", "png-info", png_info),
        ("POST", "extra-single-image", extra_single_image),
        ("POST", "extra-batch-images", extra_batch_images),
        ("POST", "interrogate", interrogate),
    ]
    for method, path, endpoint in routes:
        router.add_api_route(f"/sdapi/v1/{path}", endpoint, methods=[method], dependencies=guarded)
