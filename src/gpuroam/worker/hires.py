"""Hires fix (txt2img `enable_hr`), as A1111 does it: a first pass at the requested size, an upscale, and a
second pass at `denoising_strength` on the upscaled result.

The upscale is of the latent (the "Latent" modes: torch interpolation of the first pass's undecoded
latent) or of the decoded image (None, Lanczos, Nearest). The size follows A1111's rules: `hr_scale`
times the first pass, or `hr_resize_x`/`hr_resize_y` (one of them: the other keeps the aspect; both:
upscale to cover, then crop the middle to fit, in whole latent cells). Pure: sizes and tensors, no model.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from PIL import Image

from gpuroam.worker.extras import LATENT_UPSCALE_MODES, UPSCALERS, upscale
from gpuroam.worker.samplers import Sampler, Schedule, resolve
from gpuroam.worker.schemas import RequestError, Txt2ImgRequest

LATENT_CELL = 8  # pixels per latent cell (the VAE's downscale)
MAX_SIDE = 2048  # as a request's own width and height
MAX_UPSCALED = 4096  # before a crop to hr_resize_x x hr_resize_y: a very different aspect would upscale past this
DEFAULT_DENOISING = 0.7  # A1111's hires fix default, for a request that sends none
# torch's interpolation for each latent mode: (mode, antialias)
_LATENT_MODES = {
    "Latent": ("bilinear", False),
    "Latent (antialiased)": ("bilinear", True),
    "Latent (bicubic)": ("bicubic", False),
    "Latent (bicubic antialiased)": ("bicubic", True),
    "Latent (nearest)": ("nearest", False),
    "Latent (nearest-exact)": ("nearest-exact", False),
}
assert tuple(_LATENT_MODES) == LATENT_UPSCALE_MODES


@dataclass(frozen=True)
class HiresPlan:
    upscaler: str
    upscaled_width: int  # A1111's hr_upscale_to_x: the size upscaled to, before any crop
    upscaled_height: int
    crop_x: int  # latent cells cropped off (both sides together) to fit hr_resize_x x hr_resize_y
    crop_y: int
    steps: int
    denoising_strength: float

    @property
    def latent(self) -> bool:
        return self.upscaler in _LATENT_MODES

    @property
    def width(self) -> int:
        """The result's width: whole latent cells of the upscaled size, less the crop."""
        return (self.upscaled_width // LATENT_CELL - self.crop_x) * LATENT_CELL

    @property
    def height(self) -> int:
        return (self.upscaled_height // LATENT_CELL - self.crop_y) * LATENT_CELL


def plan_hires(request: Txt2ImgRequest) -> HiresPlan:
    """The second pass a hires request asks for (A1111's target resolution rules)."""
    upscaler = request.hr_upscaler or "Latent"
    if upscaler not in _LATENT_MODES and upscaler not in UPSCALERS:
        offered = ", ".join((*LATENT_UPSCALE_MODES, *UPSCALERS))
        raise RequestError("hr_upscaler", f"upscaler {upscaler!r} is not available here; available: {offered}")
    width, height, crop_x, crop_y = _target(request)
    plan = HiresPlan(
        upscaler=upscaler,
        upscaled_width=width,
        upscaled_height=height,
        crop_x=crop_x,
        crop_y=crop_y,
        steps=request.hr_second_pass_steps or request.steps,
        denoising_strength=DEFAULT_DENOISING if request.denoising_strength is None else request.denoising_strength,
    )
    if max(plan.upscaled_width, plan.upscaled_height) > MAX_UPSCALED or not (
        LATENT_CELL <= plan.width <= MAX_SIDE and LATENT_CELL <= plan.height <= MAX_SIDE
    ):
        raise RequestError(
            "hr_scale", f"the hires result would be {plan.width}x{plan.height}; each side from 8 to {MAX_SIDE}"
        )
    return plan


def _target(request: Txt2ImgRequest) -> tuple[int, int, int, int]:
    width, height = request.width, request.height
    wanted_x, wanted_y = request.hr_resize_x, request.hr_resize_y
    if wanted_x == 0 and wanted_y == 0:
        return int(width * request.hr_scale), int(height * request.hr_scale), 0, 0
    if wanted_y == 0:
        return wanted_x, wanted_x * height // width, 0, 0
    if wanted_x == 0:
        return wanted_y * width // height, wanted_y, 0, 0
    if width / height < wanted_x / wanted_y:  # wider target: fit the width, crop the height
        upscaled_x, upscaled_y = wanted_x, wanted_x * height // width
    else:
        upscaled_x, upscaled_y = wanted_y * width // height, wanted_y
    return upscaled_x, upscaled_y, (upscaled_x - wanted_x) // LATENT_CELL, (upscaled_y - wanted_y) // LATENT_CELL


def upscale_latent(latent: torch.Tensor, plan: HiresPlan) -> torch.Tensor:
    """One first-pass latent (channels x h x w) interpolated to the upscaled size, its middle kept."""
    mode, antialias = _LATENT_MODES[plan.upscaler]
    size = (plan.upscaled_height // LATENT_CELL, plan.upscaled_width // LATENT_CELL)
    grown = F.interpolate(latent[None].float(), size=size, mode=mode, antialias=antialias)[0]
    top, left = plan.crop_y // 2, plan.crop_x // 2
    return grown[:, top : top + plan.height // LATENT_CELL, left : left + plan.width // LATENT_CELL]


def upscale_image(image: Image.Image, plan: HiresPlan) -> Image.Image:
    """A first-pass image upscaled (None: a plain Lanczos resize, as A1111) to the upscaled size, its middle kept."""
    size = (plan.upscaled_width, plan.upscaled_height)
    scale = max(size[0] / image.width, size[1] / image.height)
    grown = upscale(image, scale, plan.upscaler) if plan.upscaler != "None" else image
    if grown.size != size:
        grown = grown.resize(size, Image.Resampling.LANCZOS)
    left, top = plan.crop_x // 2 * LATENT_CELL, plan.crop_y // 2 * LATENT_CELL
    return grown.crop((left, top, left + plan.width, top + plan.height))


def hires_fields(request: Txt2ImgRequest, plan: HiresPlan) -> dict[str, object]:
    """What A1111 writes of a hires fix in the image's infotext (after the first pass's settings)."""
    resized = request.hr_resize_x or request.hr_resize_y
    return {
        "Denoising strength": plan.denoising_strength,
        "Hires upscale": None if resized else request.hr_scale,
        "Hires resize": f"{request.hr_resize_x}x{request.hr_resize_y}" if resized else None,
        "Hires steps": request.hr_second_pass_steps or None,
        "Hires upscaler": request.hr_upscaler,
        "Hires sampler": request.hr_sampler_name if request.hr_sampler_name not in (None, "Use same sampler") else None,
        "Hires prompt": request.hr_prompt or None,
        "Hires negative prompt": request.hr_negative_prompt or None,
    }


def hires_sampler(request: Txt2ImgRequest) -> tuple[Sampler, Schedule]:
    """The second pass's sampler and schedule: the first pass's unless the request names others."""
    return resolve(
        _same(request.hr_sampler_name, "Use same sampler") or request.requested_sampler,
        _same(request.hr_scheduler, "Use same scheduler") or request.scheduler,
    )


def _same(name: str | None, same: str) -> str | None:
    """A hires sampler or scheduler: None when it says to use the first pass's."""
    return None if name in (None, "", same) else name
