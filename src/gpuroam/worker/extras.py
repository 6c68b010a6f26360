"""The Extras tab's upscaling (POST /sdapi/v1/extra-single-image and extra-batch-images), as A1111 does it.

The upscalers are the ones that need no weights: None, Lanczos and Nearest (A1111 also lists ESRGAN,
LDSR, SwinIR and others, which download their weights on first use; nothing can be downloaded here, so
they are not offered). Face restoration (GFPGAN, CodeFormer) has no weights here either: as in A1111
when the model cannot be loaded, the image comes back unrestored and the request succeeds.
"""

from __future__ import annotations

import html
from dataclasses import dataclass

from PIL import Image

from gpuroam.worker.infotext import quoted
from gpuroam.worker.schemas import RequestError

UPSCALERS = ("None", "Lanczos", "Nearest")
LATENT_UPSCALE_MODES = (
    "Latent",
    "Latent (antialiased)",
    "Latent (bicubic)",
    "Latent (bicubic antialiased)",
    "Latent (nearest)",
    "Latent (nearest-exact)",
)
_FILTERS = {"Lanczos": Image.Resampling.LANCZOS, "Nearest": Image.Resampling.NEAREST}
MAX_SIDE = 8192  # pixels of one side of a result
MAX_PIXELS = 64_000_000  # pixels of all the results of one request: past this one caller would hold gigabytes


@dataclass(frozen=True)
class Upscale:
    """What the request asks: by a factor (mode 0) or to a size (mode 1, cropped to it or not)."""

    upscaler_1: str = "None"
    upscaler_2: str = "None"
    upscaler_2_visibility: float = 0.0
    resize_mode: int = 0
    factor: float = 2.0
    width: int = 512
    height: int = 512
    crop: bool = True
    gfpgan_visibility: float = 0.0
    codeformer_visibility: float = 0.0
    codeformer_weight: float = 0.0

    def check(self) -> None:
        for field_name, name in (("upscaler_1", self.upscaler_1), ("upscaler_2", self.upscaler_2)):
            if name not in UPSCALERS:
                raise RequestError(
                    field_name, f"upscaler {name!r} is not available here; available: {', '.join(UPSCALERS)}"
                )


def upscale(image: Image.Image, scale: float, upscaler: str) -> Image.Image:
    """A1111's Upscaler.upscale: the target rounded down to a multiple of 8; Lanczos or Nearest passes (at
    most 3) until the image reaches it, then an exact Lanczos resize there."""
    target = (int((image.width * scale) // 8 * 8), int((image.height * scale) // 8 * 8))
    if max(target) > MAX_SIDE:
        raise RequestError(
            "upscaling_resize", f"the result would be {target[0]}x{target[1]}; at most {MAX_SIDE} a side"
        )
    if min(target) < 1:
        raise RequestError("upscaling_resize", f"the result would be {target[0]}x{target[1]}; make it larger")
    current = image
    if upscaler in _FILTERS and scale > 1:
        for _ in range(3):
            before = current.size
            current = current.resize((int(current.width * scale), int(current.height * scale)), _FILTERS[upscaler])
            if current.size == before or (current.width >= target[0] and current.height >= target[1]):
                break
    if current.size != target:
        current = current.resize(target, Image.Resampling.LANCZOS)
    return current


def output_pixels(image: Image.Image, request: Upscale) -> int:
    """How many pixels the result of `request` on `image` has (before anything is computed)."""
    if request.upscaler_1 == "None":
        return image.width * image.height
    if request.resize_mode == 1 and request.crop:
        return request.width * request.height
    scale = (
        max(request.width / image.width, request.height / image.height) if request.resize_mode == 1 else request.factor
    )
    return int((image.width * scale) // 8 * 8) * int((image.height * scale) // 8 * 8)


def check_budget(images: list[Image.Image], request: Upscale) -> None:
    total = sum(output_pixels(image, request) for image in images)
    if total > MAX_PIXELS:
        raise RequestError(
            "upscaling_resize",
            f"the results would have {total / 1e6:.0f} million pixels; at most {MAX_PIXELS / 1e6:.0f} million per "
            "request: upscale less, or send fewer images per request",
        )


def run_extras(image: Image.Image, request: Upscale) -> tuple[Image.Image, str]:
    """The processed image and A1111's `html_info` describing what was done."""
    request.check()
    check_budget([image], request)
    image = image if image.mode in ("RGB", "RGBA") else image.convert("RGB")
    done: dict[str, object] = {}
    if request.upscaler_1 != "None":
        if request.resize_mode == 1:
            scale = max(request.width / image.width, request.height / image.height)
            done["Postprocess upscale to"] = f"{request.width}x{request.height}"
        else:
            scale = request.factor
            done["Postprocess upscale by"] = request.factor
        result = upscale(image, scale, request.upscaler_1)
        if request.resize_mode == 1 and request.crop:
            result = _centre_crop(result, request.width, request.height)
            done["Postprocess crop to"] = f"{request.width}x{request.height}"
        if request.upscaler_2 != "None" and request.upscaler_2_visibility > 0:
            second = upscale(image, scale, request.upscaler_2)
            if request.resize_mode == 1 and request.crop:
                second = _centre_crop(second, request.width, request.height)
            result = Image.blend(result, second.convert(result.mode), request.upscaler_2_visibility)
            done["Postprocess upscaler 2"] = request.upscaler_2
        done["Postprocess upscaler"] = request.upscaler_1
        image = result
    if request.gfpgan_visibility > 0:  # no GFPGAN weights here: unrestored, as A1111 when they cannot load
        done["GFPGAN visibility"] = round(request.gfpgan_visibility, 3)
    if request.codeformer_visibility > 0:
        done["CodeFormer visibility"] = round(request.codeformer_visibility, 3)
        done["CodeFormer weight"] = round(request.codeformer_weight, 3)
    text = ", ".join(key if key == value else f"{key}: {quoted(value)}" for key, value in done.items())
    if text:
        image.info["postprocessing"] = text
    return image, "<p>" + html.escape(text).replace("\n", "<br>\n") + "</p>"


def _centre_crop(image: Image.Image, width: int, height: int) -> Image.Image:
    canvas = Image.new("RGB", (width, height))
    canvas.paste(image, (width // 2 - image.width // 2, height // 2 - image.height // 2))
    return canvas
