"""PNG in and out: A1111 returns base64 PNGs that carry their generation parameters."""

from __future__ import annotations

import base64
import binascii
import io

from PIL import Image, PngImagePlugin

MAX_INIT_IMAGE_PIXELS = 4096 * 4096


class ImageDecodeError(ValueError):
    """An init image that is not base64 of a readable image."""


def encode_png(image: Image.Image, infotext: str) -> str:
    """Base64 PNG with a `parameters` text chunk, as A1111 writes it; deterministic bytes."""
    info = PngImagePlugin.PngInfo()
    info.add_text("parameters", infotext)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", pnginfo=info, compress_level=4)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def decode_image(data: str) -> Image.Image:
    """Accept raw base64 or a `data:image/...;base64,` URL, as A1111 does."""
    if data.startswith("data:"):
        _, _, data = data.partition(",")
    try:
        raw = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ImageDecodeError(f"not valid base64: {exc}") from exc
    try:
        image = Image.open(io.BytesIO(raw))
        if image.width * image.height > MAX_INIT_IMAGE_PIXELS:
            raise ImageDecodeError(f"image is {image.width}x{image.height}; at most {MAX_INIT_IMAGE_PIXELS} pixels")
        image.load()
    except ImageDecodeError:
        raise
    except Exception as exc:  # PIL raises many types for bad data
        raise ImageDecodeError(f"not a readable image ({type(exc).__name__}: {exc})") from exc
    return image.convert("RGB")


def resize_for_generation(image: Image.Image, width: int, height: int, resize_mode: int) -> Image.Image:
    """A1111 resize modes: 0 stretch, 1 crop to fill, 2 fit inside and pad, 3 same as 0 (latent upscale)."""
    if image.size == (width, height):
        return image
    if resize_mode == 1:
        scale = max(width / image.width, height / image.height)
        resized = image.resize((round(image.width * scale), round(image.height * scale)), Image.LANCZOS)
        left, top = (resized.width - width) // 2, (resized.height - height) // 2
        return resized.crop((left, top, left + width, top + height))
    if resize_mode == 2:
        scale = min(width / image.width, height / image.height)
        resized = image.resize((max(1, round(image.width * scale)), max(1, round(image.height * scale))), Image.LANCZOS)
        canvas = Image.new("RGB", (width, height))
        canvas.paste(resized, ((width - resized.width) // 2, (height - resized.height) // 2))
        return canvas
    return image.resize((width, height), Image.LANCZOS)
