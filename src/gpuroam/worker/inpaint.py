"""Inpainting's pixel side, as A1111 does it: the mask made binary, inverted and blurred; the area to work on
(the whole picture, or only the masked part cropped with padding and scaled up to the requested size);
the masked content filled; and the result put back over the original so unmasked pixels stay as sent.

The engine runs diffusers' inpainting pipeline on what `prepare` returns (its mask is binarised again at
0.5 for the latent mask, as A1111 rounds its latent mask); `paste_back` finishes each image. Pure: PIL and
numpy, no model.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, TypeVar

import numpy as np
from PIL import Image, ImageFilter, ImageOps

from gpuroam.worker.images import resize_for_generation
from gpuroam.worker.schemas import Img2ImgRequest

# A1111's inpainting_fill: what the masked area starts from.
FILLS: tuple[str, ...] = ("fill", "original", "latent noise", "latent nothing")
T = TypeVar("T")  # what else a pipeline may make (a latent): passed through
LatentFill = Literal["noise", "nothing"]
_LATENT_FILLS: dict[int, LatentFill] = {2: "noise", 3: "nothing"}
# "fill"'s layers, widest blur first (radius, times laid on): far from any kept pixel the colour is an
# average of a wide area, near the edge of the mask it is the nearby colours.
_FILL_LAYERS = ((256, 1), (64, 1), (16, 2), (4, 4), (2, 2))


@dataclass(frozen=True)
class InpaintSettings:
    """A request's inpainting fields (A1111's names and defaults, in worker/schemas.py)."""

    blur_x: int = 4
    blur_y: int = 4
    fill: int = 0  # an index into FILLS
    full_res: bool = True  # A1111's "Only masked"
    padding: int = 0  # pixels around the masked area, with full_res
    invert: bool = False

    @staticmethod
    def of(request: Img2ImgRequest) -> InpaintSettings:
        blur_x = request.mask_blur_x if request.mask_blur is None else request.mask_blur
        blur_y = request.mask_blur_y if request.mask_blur is None else request.mask_blur
        return InpaintSettings(
            blur_x=blur_x,
            blur_y=blur_y,
            fill=request.inpainting_fill,
            full_res=request.inpaint_full_res,
            padding=request.inpaint_full_res_padding,
            invert=bool(request.inpainting_mask_invert),
        )

    def fields(self) -> dict[str, object]:
        """What A1111 writes of them in the infotext."""
        return {
            "Mask blur": (self.blur_x if self.blur_x == self.blur_y else f"{self.blur_x}x{self.blur_y}") or None,
            "Mask mode": "Inpaint not masked" if self.invert else None,
            "Masked content": FILLS[self.fill],
            "Inpaint area": "Only masked" if self.full_res else None,
            "Masked area padding": self.padding if self.full_res else None,
        }

    @property
    def latent_fill(self) -> LatentFill | None:
        """Fills done on the latent, not the pixels: the engine replaces the masked latent."""
        return _LATENT_FILLS.get(self.fill)


class MaskError(ValueError):
    """A mask that is not an image of black and white (a 422 naming `mask`)."""


@dataclass(frozen=True)
class Prepared:
    """One image ready for the inpainting pipeline, and what puts its result back."""

    image: Image.Image  # RGB at the generation size: the area worked on, its masked part filled
    mask: Image.Image  # L at the generation size: white where the image is repainted
    base: Image.Image  # RGB: the picture the result goes back into (the original, or it resized)
    overlay: Image.Image  # L at base's size: how much of base shows over the result (255: all)
    region: tuple[int, int, int, int] | None  # with full_res, the box of base the result goes into


def binary_mask(mask: Image.Image) -> Image.Image:
    """A1111's reading of a mask: its alpha where it has transparency, else its brightness; rounded to black
    or white at the middle."""
    if mask.mode in ("RGBA", "LA", "PA") or (mask.mode == "P" and "transparency" in mask.info):
        alpha = mask.convert("RGBA").getchannel("A")
        if alpha.getextrema() != (255, 255):
            return alpha.point(lambda value: 255 if value > 128 else 0)
    return mask.convert("L").point(lambda value: 255 if value > 128 else 0)


def prepare_all(
    images: Sequence[Image.Image],
    mask: Image.Image,
    width: int,
    height: int,
    resize_mode: int,
    settings: InpaintSettings,
) -> list[Prepared] | None:
    """Every init image prepared with the one mask of the request (read once, blurred once per image size);
    None when "Only masked" finds nothing masked, which A1111 then does as plain img2img. A mask PIL cannot
    read as black and white raises MaskError."""
    try:
        read = binary_mask(mask)
    except (ValueError, OSError) as error:
        raise MaskError(f"the mask cannot be read as black and white ({error}); send a PNG") from error
    if settings.invert:
        read = ImageOps.invert(read)
    if settings.full_res and read.getbbox() is None:
        return None
    masks: dict[tuple[int, int], Image.Image] = {}
    for image in images:
        if image.size not in masks:
            sized = read if read.size == image.size else read.resize(image.size, Image.Resampling.NEAREST)
            if settings.blur_x or settings.blur_y:
                sized = sized.filter(ImageFilter.GaussianBlur((settings.blur_x, settings.blur_y)))
            masks[image.size] = sized
    return [prepare(image, masks[image.size], width, height, resize_mode, settings) for image in images]


def prepare(
    image: Image.Image, mask: Image.Image, width: int, height: int, resize_mode: int, settings: InpaintSettings
) -> Prepared:
    """The pipeline's image and mask at width x height, from an init image and its mask read, inverted and
    blurred at the image's size (prepare_all)."""
    region = crop_region(mask, settings.padding, width, height) if settings.full_res else None
    if region is not None:
        base = image
        overlay = ImageOps.invert(mask)
        work = image.crop(region).resize((width, height), Image.Resampling.LANCZOS)
        work_mask = mask.crop(region).resize((width, height), Image.Resampling.LANCZOS)
    else:
        base = resize_for_generation(image, width, height, resize_mode)
        work_mask = resize_for_generation(mask.convert("RGB"), width, height, resize_mode).convert("L")
        # Over the whole picture the blurred edge leans to the new pixels: the original shows only where the
        # mask is under half (A1111 doubles the mask for its overlay).
        overlay = ImageOps.invert(work_mask.point(lambda value: min(255, 2 * value)))
        work = base
    if settings.fill != 1:
        work = fill(work, work_mask)
    return Prepared(image=work, mask=work_mask, base=base, overlay=overlay, region=region)


def paste_back(result: Image.Image, prepared: Prepared) -> Image.Image:
    """The generated image put back: into its box of the original (full_res), then the original's unmasked
    pixels laid over it."""
    canvas = prepared.base.copy()
    if prepared.region is None:
        canvas = result.convert("RGB")
    else:
        left, top, right, bottom = prepared.region
        canvas.paste(result.convert("RGB").resize((right - left, bottom - top), Image.Resampling.LANCZOS), (left, top))
    return Image.composite(prepared.base, canvas, prepared.overlay)


def paste_back_all(
    images: Sequence[Image.Image | T | None], starts: Sequence[Image.Image | Prepared]
) -> list[Image.Image | T | None]:
    """Each made image put back with the start it was made from (the starts repeat over the images)."""
    return [
        paste_back(image, start) if isinstance(image, Image.Image) and isinstance(start, Prepared) else image
        for image, start in zip(images, itertools.cycle(starts))
    ]


def mask_of(start: Image.Image | Prepared) -> Image.Image | None:
    """The mask the engine gets with a start: a prepared one's, none for a plain init image."""
    return start.mask if isinstance(start, Prepared) else None


def crop_region(mask: Image.Image, padding: int, width: int, height: int) -> tuple[int, int, int, int] | None:
    """The masked area's box grown by `padding`, then to the aspect of width x height, inside the picture;
    None for an empty mask (A1111 then works on the whole picture)."""
    box = mask.getbbox()
    if box is None:
        return None
    left, top, right, bottom = box
    left, top = max(0, left - padding), max(0, top - padding)
    right, bottom = min(mask.width, right + padding), min(mask.height, bottom + padding)
    return _to_aspect((left, top, right, bottom), width / height, mask.width, mask.height)


def _to_aspect(box: tuple[int, int, int, int], aspect: float, limit_x: int, limit_y: int) -> tuple[int, int, int, int]:
    """Grow the box on its short side to `aspect` (width / height), centred, shifted back inside the picture
    and cut to it if the picture is too small."""
    left, top, right, bottom = box
    box_w, box_h = right - left, bottom - top
    if box_w / box_h < aspect:
        left, right = _grown(left, right, round(box_h * aspect), limit_x)
    else:
        top, bottom = _grown(top, bottom, round(box_w / aspect), limit_y)
    return left, top, right, bottom


def _grown(low: int, high: int, size: int, limit: int) -> tuple[int, int]:
    size = min(size, limit)
    low -= (size - (high - low)) // 2
    low = min(max(0, low), limit - size)
    return low, low + size


def fill(image: Image.Image, mask: Image.Image) -> Image.Image:
    """A1111's "fill": the masked area painted with the colours around it, blurred (so the model starts from
    the surroundings' colours, not from what was there). The kept pixels, premultiplied by how much they are
    kept and blurred (PIL's RGBa, made RGBA again: the average colour nearby, and how near), are laid over
    each other from the widest radius to the narrowest, each by its own alpha; the kept pixels stay."""
    keep = ImageOps.invert(mask.convert("L"))
    kept = image.convert("RGB")
    kept.putalpha(keep)
    premultiplied = kept.convert("RGBa")
    out = np.zeros((image.height, image.width, 3), dtype=np.float32)
    for radius, repeats in _FILL_LAYERS:
        layer = np.asarray(_blurred(premultiplied, radius).convert("RGBA"), dtype=np.float32)
        alpha = layer[..., 3:] / 255.0
        for _ in range(repeats):
            out = out * (1.0 - alpha) + layer[..., :3] * alpha
    weights = np.asarray(keep, dtype=np.float32)[..., None] / 255.0
    out = np.asarray(image.convert("RGB"), dtype=np.float32) * weights + out * (1.0 - weights)
    return Image.fromarray(np.clip(np.rint(out), 0, 255).astype(np.uint8))


def _blurred(image: Image.Image, radius: int) -> Image.Image:
    """A Gaussian blur; a wide one on a smaller copy (the same result to the eye, a fraction of the time)."""
    scale = max(1, radius // 8)
    if scale == 1:
        return image.filter(ImageFilter.GaussianBlur(radius))
    small = image.resize((max(1, image.width // scale), max(1, image.height // scale)), Image.Resampling.BOX)
    return small.filter(ImageFilter.GaussianBlur(radius / scale)).resize(image.size, Image.Resampling.BILINEAR)
