"""A1111's "SD upscale" img2img script: upscale the init image, redraw it tile by tile with img2img at the
request's width x height, and blend the tiles where they overlap.

`script_args` are A1111's: [info (unused), overlap in pixels, upscaler (name or index into /upscalers),
scale factor]. As in A1111, the request makes `n_iter` images and `batch_size` is how many tiles share a
seed run (so it sets the tiles' seeds); here all of an image's tiles are one job's, batched on the device
like any img2img request. Pure: the plan, the split and the blend; the service runs the tiles.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image

from gpuroam.worker.extras import UPSCALERS, upscale
from gpuroam.worker.schemas import GenerationRequest, RequestError

SCRIPT_NAME = "sd upscale"
MAX_UPSCALED_PIXELS = 4096 * 4096
MAX_TILES = 1024  # tiles of one image: each is a VAE encode and decode too, which the cost cap does not see
DEFAULTS: tuple[object, ...] = ("", 64, "None", 2.0)  # A1111's defaults for the four arguments


@dataclass(frozen=True)
class Tiles:
    """Where each tile sits in the upscaled image (its top-left corners, row by row)."""

    width: int  # the whole image's
    height: int
    tile_width: int
    tile_height: int
    overlap: int
    corners: tuple[tuple[int, int], ...]


@dataclass(frozen=True)
class SdUpscale:
    overlap: int
    upscaler: str
    scale: float

    @staticmethod
    def of(script_args: Sequence[object]) -> SdUpscale:
        """The script's arguments, checked; missing ones take A1111's defaults."""
        args = [*script_args[:4], *DEFAULTS[len(script_args[:4]) :]]
        _, overlap, upscaler, scale = args
        if isinstance(overlap, bool) or not isinstance(overlap, int | float) or not 0 <= overlap <= 256:
            raise RequestError(
                "script_args", f"sd upscale's overlap (script_args[1]) is 0 to 256 pixels; got {overlap!r}"
            )
        if isinstance(upscaler, int) and not isinstance(upscaler, bool) and 0 <= upscaler < len(UPSCALERS):
            upscaler = UPSCALERS[upscaler]
        if not isinstance(upscaler, str) or upscaler.lower() not in (name.lower() for name in UPSCALERS):
            raise RequestError(
                "script_args",
                f"sd upscale's upscaler (script_args[2]) {upscaler!r} is not available here; "
                f"available: {', '.join(UPSCALERS)} (or their index)",
            )
        if isinstance(scale, bool) or not isinstance(scale, int | float) or not 1.0 <= scale <= 4.0:
            raise RequestError("script_args", f"sd upscale's scale factor (script_args[3]) is 1 to 4; got {scale!r}")
        name = next(known for known in UPSCALERS if known.lower() == upscaler.lower())
        return SdUpscale(overlap=int(overlap), upscaler=name, scale=float(scale))

    def upscaled(self, image: Image.Image) -> Image.Image:
        """The init image upscaled (A1111's rounding to multiples of 8), refused past 16 megapixels; with the
        "None" upscaler, as it is (A1111 tiles it unscaled)."""
        if self.upscaler == "None":
            return image
        width, height = int(image.width * self.scale) // 8 * 8, int(image.height * self.scale) // 8 * 8
        if width * height > MAX_UPSCALED_PIXELS:
            raise RequestError(
                "script_args",
                f"sd upscale would make a {width}x{height} image; at most {MAX_UPSCALED_PIXELS:,} pixels: "
                "send a smaller image or a smaller scale factor",
            )
        return upscale(image, self.scale, self.upscaler)

    def tiles(self, image: Image.Image | object, width: int, height: int) -> tuple[Tiles, list[Image.Image]]:
        """The init image upscaled and cut into width x height tiles: the plan and the tiles' pixels."""
        assert isinstance(image, Image.Image), "sd upscale takes a plain init image (no mask)"
        upscaled = self.upscaled(image)
        tiles = plan_tiles(upscaled.width, upscaled.height, width, height, self.overlap)
        if len(tiles.corners) > MAX_TILES:
            raise RequestError(
                "script_args",
                f"sd upscale would cut the {upscaled.width}x{upscaled.height} image into {len(tiles.corners):,} tiles "
                f"of {width}x{height}; at most {MAX_TILES:,}: ask for larger tiles (width, height), less overlap "
                "or a smaller scale factor",
            )
        return tiles, split(upscaled, tiles)


def tile_seed_offset(request: GenerationRequest, tile: int) -> int:
    """A1111 runs an iteration's tiles `batch_size` at a time, each batch from the iteration's seed: a tile's
    seed is the iteration's plus its place in its batch (none with a variation seed, as for a batch)."""
    return tile % request.batch_size if request.subseed_strength == 0 else 0


def plan_tiles(width: int, height: int, tile_width: int, tile_height: int, overlap: int) -> Tiles:
    """Tiles of tile_width x tile_height covering the image, evenly spread, neighbours overlapping by at least
    `overlap` (the last in a row or column flush with the edge). An image smaller than a tile is one tile
    (`split` pads it)."""
    overlap = min(overlap, tile_width - 8, tile_height - 8)
    xs = _starts(width, tile_width, overlap)
    ys = _starts(height, tile_height, overlap)
    corners = tuple((x, y) for y in ys for x in xs)
    return Tiles(width, height, tile_width, tile_height, overlap, corners)


def _starts(size: int, tile: int, overlap: int) -> list[int]:
    if size <= tile:
        return [0]
    count = math.ceil((size - overlap) / (tile - overlap))
    step = (size - tile) / (count - 1)
    return [min(int(index * step), size - tile) for index in range(count)]


def split(image: Image.Image, tiles: Tiles) -> list[Image.Image]:
    """The tiles' pixels; past the image's edge (an image smaller than a tile) its edge pixels repeat."""
    padded = np.asarray(image.convert("RGB"))
    pad_y, pad_x = max(0, tiles.tile_height - image.height), max(0, tiles.tile_width - image.width)
    if pad_x or pad_y:
        padded = np.pad(padded, ((0, pad_y), (0, pad_x), (0, 0)), mode="edge")
    return [
        Image.fromarray(padded[y : y + tiles.tile_height, x : x + tiles.tile_width].copy()) for x, y in tiles.corners
    ]


def blend(parts: Sequence[Image.Image], tiles: Tiles) -> Image.Image:
    """The tiles put together: where they overlap, each fades linearly towards its edge, so the seams do not
    show; where they agree, the result is exactly their pixels."""
    width, height = max(tiles.width, tiles.tile_width), max(tiles.height, tiles.tile_height)
    total = np.zeros((height, width, 3), dtype=np.float64)
    weights = np.zeros((height, width, 1), dtype=np.float64)
    for part, (x, y) in zip(parts, tiles.corners):
        pixels = np.asarray(part.convert("RGB").resize((tiles.tile_width, tiles.tile_height)), dtype=np.float64)
        weight = _feather(tiles, x, y)
        total[y : y + tiles.tile_height, x : x + tiles.tile_width] += pixels * weight
        weights[y : y + tiles.tile_height, x : x + tiles.tile_width] += weight
    out = np.rint(total / weights)[: tiles.height, : tiles.width]
    return Image.fromarray(np.clip(out, 0, 255).astype(np.uint8))


def blend_iterations(images: Sequence[object], tiles: Tiles) -> list[Image.Image | None]:
    """Each iteration's tiles (consecutive in `images`) blended; an iteration with a tile missing (interrupted)
    has no image."""
    count = len(tiles.corners)
    groups = [images[start : start + count] for start in range(0, len(images), count)]
    return [
        blend([tile for tile in group if isinstance(tile, Image.Image)], tiles)
        if all(isinstance(tile, Image.Image) for tile in group)
        else None
        for group in groups
    ]


def _feather(tiles: Tiles, x: int, y: int) -> np.ndarray:
    """A tile's weight: 1 inside, ramping down over `overlap` pixels on each side that meets another tile."""
    ramp_x = _ramp(tiles.tile_width, tiles.overlap, x > 0, x + tiles.tile_width < tiles.width)
    ramp_y = _ramp(tiles.tile_height, tiles.overlap, y > 0, y + tiles.tile_height < tiles.height)
    weight: np.ndarray = (ramp_y[:, None] * ramp_x[None, :])[..., None]
    return weight


def _ramp(size: int, overlap: int, low: bool, high: bool) -> np.ndarray:
    ramp = np.ones(size)
    if overlap > 0:
        rise = (np.arange(overlap) + 1) / (overlap + 1)
        if low:
            ramp[:overlap] = np.minimum(ramp[:overlap], rise)
        if high:
            ramp[size - overlap :] = np.minimum(ramp[size - overlap :], rise[::-1])
    return ramp
