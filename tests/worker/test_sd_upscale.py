"""The "sd upscale" img2img script: its arguments, the tiles' plan, the blend, and the script through the worker."""

from __future__ import annotations

import base64
import io
import itertools
import json
from collections.abc import Iterator

import numpy as np
import pytest
from fastapi.testclient import TestClient
from hypothesis import given
from hypothesis import strategies as st
from PIL import Image

from gpuroam.worker import LoadedModel, WorkerConfig, create_app
from gpuroam.worker.schemas import RequestError
from gpuroam.worker.sd_upscale import SdUpscale, blend, plan_tiles, split
from live_jobs import wait_ready


@given(
    st.integers(8, 400),
    st.integers(8, 400),
    st.sampled_from([64, 96, 128]),
    st.sampled_from([64, 128]),
    st.integers(0, 64),
)
def test_the_tiles_cover_the_image_and_overlap_as_asked(
    width: int, height: int, tile_width: int, tile_height: int, overlap: int
) -> None:
    tiles = plan_tiles(width, height, tile_width, tile_height, overlap)
    covered = np.zeros((max(height, tile_height), max(width, tile_width)), dtype=int)
    for x, y in tiles.corners:
        assert x >= 0 and y >= 0
        assert x + tile_width <= max(width, tile_width) and y + tile_height <= max(height, tile_height)
        covered[y : y + tile_height, x : x + tile_width] += 1
    assert (covered[:height, :width] >= 1).all(), "every pixel is in a tile"
    xs = sorted({x for x, _ in tiles.corners})
    assert all(b - a <= tile_width - tiles.overlap for a, b in itertools.pairwise(xs)), "neighbours overlap enough"


@given(st.integers(8, 300), st.integers(8, 300), st.integers(0, 32))
def test_tiles_that_agree_blend_back_into_the_image_exactly(width: int, height: int, overlap: int) -> None:
    pixels = np.random.default_rng(width * height).integers(0, 256, (height, width, 3), dtype=np.uint8)
    image = Image.fromarray(pixels)
    tiles = plan_tiles(width, height, 64, 64, overlap)
    assert np.array_equal(np.asarray(blend(split(image, tiles), tiles)), pixels)


def test_the_seams_fade_from_one_tile_into_the_next() -> None:
    tiles = plan_tiles(120, 64, 64, 64, 8)
    assert tiles.corners == ((0, 0), (56, 0))
    black, white = Image.new("RGB", (64, 64)), Image.new("RGB", (64, 64), (255, 255, 255))
    row = np.asarray(blend([black, white], tiles))[0, :, 0].astype(int)
    assert (row[:56] == 0).all() and (row[64:] == 255).all()
    assert (np.diff(row[55:65]) > 0).all(), "a ramp across the overlap, not a step"


def test_the_arguments_are_a1111s_with_its_defaults() -> None:
    assert SdUpscale.of([]) == SdUpscale(overlap=64, upscaler="None", scale=2.0)
    assert SdUpscale.of(["", 8, "lanczos", 3]) == SdUpscale(overlap=8, upscaler="Lanczos", scale=3.0)
    assert SdUpscale.of(["", 8, 2, 1.5]).upscaler == "Nearest", "an index into /upscalers"
    for args, says in (
        (["", -1], "overlap"),
        (["", 8, "R-ESRGAN 4x+"], "not available here"),
        (["", 8, "Lanczos", 9], "scale factor"),
        (["", "8"], "overlap"),
    ):
        with pytest.raises(RequestError, match=says):
            SdUpscale.of(args)


@pytest.fixture(scope="module")
def client(tiny_model: LoadedModel) -> Iterator[TestClient]:
    with TestClient(create_app(WorkerConfig(), model=tiny_model)) as test_client:
        wait_ready(test_client)
        yield test_client


def png(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return base64.b64encode(buffer.getvalue()).decode()


BODY = {"prompt": "a harbour", "width": 64, "height": 64, "steps": 3, "seed": 3, "denoising_strength": 0.4}


def test_the_script_returns_the_image_upscaled_and_redrawn(client: TestClient) -> None:
    init = Image.effect_mandelbrot((80, 64), (-2, -1.2, 1, 1.2), 40).convert("RGB")
    body = {**BODY, "init_images": [png(init)], "script_name": "SD upscale", "script_args": ["", 16, "Lanczos", 2]}
    answer = client.post("/sdapi/v1/img2img", json={**body, "n_iter": 2})
    assert answer.status_code == 200, answer.text
    made = answer.json()
    assert len(made["images"]) == 2
    result = Image.open(io.BytesIO(base64.b64decode(made["images"][0])))
    assert result.size == (160, 128)
    text = json.loads(made["info"])["infotexts"][0]
    assert "SD upscale overlap: 16" in text and "SD upscale upscaler: Lanczos" in text
    again = client.post("/sdapi/v1/img2img", json={**body, "n_iter": 2}).json()
    assert again["images"] == made["images"], "the same request, the same pixels"


def test_batch_size_groups_tiles_and_none_tiles_the_image_unscaled(client: TestClient) -> None:
    init = Image.effect_mandelbrot((96, 64), (-2, -1.2, 1, 1.2), 40).convert("RGB")
    body = {**BODY, "init_images": [png(init)], "script_name": "sd upscale", "batch_size": 4}
    made = client.post("/sdapi/v1/img2img", json={**body, "script_args": ["", 16, "None", 2]}).json()
    assert len(made["images"]) == 1, "A1111 makes n_iter images; batch_size is tiles per run"
    assert Image.open(io.BytesIO(base64.b64decode(made["images"][0]))).size == (96, 64)
    assert json.loads(made["info"])["all_seeds"] == [3]


def test_too_many_tiles_are_refused_before_any_is_cut(client: TestClient) -> None:
    body = {**BODY, "init_images": [png(Image.new("RGB", (1024, 1024)))], "script_name": "sd upscale", "steps": 1}
    refused = client.post("/sdapi/v1/img2img", json={**body, "script_args": ["", 56, "Nearest", 4]})
    assert refused.status_code == 422 and "tiles" in refused.text


def test_scripts_that_do_not_exist_are_a1111s_422(client: TestClient) -> None:
    assert client.get("/sdapi/v1/scripts").json() == {"txt2img": [], "img2img": ["sd upscale"]}
    init = png(Image.new("RGB", (64, 64)))
    for path, body in (
        ("txt2img", {**BODY, "script_name": "sd upscale"}),
        ("img2img", {**BODY, "init_images": [init], "script_name": "x/y/z plot"}),
        ("txt2img", {**BODY, "alwayson_scripts": {"controlnet": {"args": [{"enabled": True}]}}}),
    ):
        answer = client.post(f"/sdapi/v1/{path}", json=body)
        assert answer.status_code == 422 and "not found" in answer.text
    costly = {**BODY, "init_images": [png(Image.new("RGB", (2048, 2048)))], "steps": 150, "denoising_strength": 1}
    costly |= {"width": 512, "height": 512}  # 64 tiles of 512x512 over the 4096x4096 upscale
    refused = client.post(
        "/sdapi/v1/img2img", json={**costly, "script_name": "sd upscale", "script_args": ["", 0, "Nearest", 2]}
    )
    assert refused.status_code == 422 and "megapixel-steps" in refused.text, "every tile counts in the cost cap"
