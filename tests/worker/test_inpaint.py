"""Inpainting as A1111 does it: the mask's reading, the worked area, the fills, the result put back; through
the real worker (tiny model), batched, and on an inpainting model (9-channel UNet; its checkpoint files: test_checkpoints.py)."""

from __future__ import annotations

import asyncio
import base64
import io
import json
from collections.abc import Iterator

import httpx
import numpy as np
import pytest
import torch
from diffusers import StableDiffusionPipeline, UNet2DConditionModel
from fastapi.testclient import TestClient
from hypothesis import given
from hypothesis import strategies as st
from PIL import Image, ImageDraw

from gpuroam.worker import LoadedModel, WorkerConfig, create_app
from gpuroam.worker.inpaint import InpaintSettings, binary_mask, crop_region, fill, paste_back, prepare_all
from gpuroam.worker.models import build_random_pipeline
from live_jobs import wait_ready

RED, BLUE = (200, 30, 30), (20, 20, 220)


def two_colours(width: int = 96, height: int = 64) -> Image.Image:
    """Red on the left half, blue on the right."""
    image = Image.new("RGB", (width, height), RED)
    ImageDraw.Draw(image).rectangle((width // 2, 0, width, height), fill=BLUE)
    return image


def box_mask(size: tuple[int, int], box: tuple[int, int, int, int]) -> Image.Image:
    mask = Image.new("L", size, 0)
    ImageDraw.Draw(mask).rectangle(box, fill=255)
    return mask


def b64(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def pixels(answer: dict, index: int = 0) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(answer["images"][index]))).convert("RGB"), dtype=int)


# --- the pixel side, pure ------------------------------------------------------------------------


@given(
    st.integers(16, 200),
    st.integers(16, 200),
    st.data(),
    st.integers(0, 64),
    st.sampled_from([(64, 64), (64, 96), (128, 64)]),
)
def test_the_worked_area_holds_the_padded_mask_at_the_requested_aspect(
    width: int, height: int, data: st.DataObject, padding: int, size: tuple[int, int]
) -> None:
    left = data.draw(st.integers(0, width - 1))
    top = data.draw(st.integers(0, height - 1))
    right = data.draw(st.integers(left, width - 1))
    bottom = data.draw(st.integers(top, height - 1))
    region = crop_region(box_mask((width, height), (left, top, right, bottom)), padding, *size)
    assert region is not None
    x1, y1, x2, y2 = region
    assert 0 <= x1 and 0 <= y1 and x2 <= width and y2 <= height, "inside the picture"
    assert x1 <= max(0, left - padding) and y1 <= max(0, top - padding), "the padded mask is inside the area"
    assert x2 >= min(width, right + 1 + padding) and y2 >= min(height, bottom + 1 + padding)
    aspect, wanted = (x2 - x1) / (y2 - y1), size[0] / size[1]
    if x2 - x1 < width and y2 - y1 < height:  # not cut by the picture's edges
        assert abs(aspect - wanted) <= wanted * 2 / min(x2 - x1, y2 - y1) + 1e-9


def test_an_empty_mask_has_no_worked_area() -> None:
    assert crop_region(Image.new("L", (32, 32), 0), 8, 64, 64) is None


def test_a_mask_is_read_from_its_alpha_when_it_has_transparency() -> None:
    opaque = Image.new("RGB", (8, 8), (255, 255, 255))
    assert binary_mask(opaque).getextrema() == (255, 255)
    transparent = Image.new("RGBA", (8, 8), (0, 0, 0, 0))
    ImageDraw.Draw(transparent).rectangle((0, 0, 3, 7), fill=(0, 0, 0, 200))
    mask = np.asarray(binary_mask(transparent))
    assert (mask[:, :4] == 255).all() and (mask[:, 4:] == 0).all(), "painted (opaque) strokes are the mask"
    grey = Image.new("L", (4, 4), 100)
    assert binary_mask(grey).getextrema() == (0, 0), "rounded at the middle"


def test_fill_paints_the_masked_area_with_the_colours_around_it() -> None:
    image = two_colours()
    mask = box_mask(image.size, (0, 20, 95, 40))  # a band across both colours
    filled = np.asarray(fill(image, mask), dtype=int)
    original = np.asarray(image, dtype=int)
    assert (filled[:20] == original[:20]).all() and (filled[41:] == original[41:]).all(), "kept pixels stay"
    assert np.abs(filled[30, 5] - RED).max() < 40 and np.abs(filled[30, 90] - BLUE).max() < 40


def test_only_masked_works_on_the_area_and_puts_it_back_into_the_original() -> None:
    image = two_colours()
    settings = InpaintSettings(blur_x=0, blur_y=0)
    [prepared] = prepare_all([image], box_mask(image.size, (40, 20, 60, 40)), 64, 64, 0, settings) or []
    assert prepared.region is not None and prepared.image.size == prepared.mask.size == (64, 64)
    result = np.asarray(paste_back(Image.new("RGB", (64, 64), (0, 255, 0)), prepared), dtype=int)
    assert result.shape == (64, 96, 3)
    assert (result[30, 50] == (0, 255, 0)).all(), "the masked area is the generated one"
    assert (result[5, 5] == RED).all() and (result[60, 90] == BLUE).all(), "the rest is the original"


def test_an_inverted_mask_repaints_the_other_part() -> None:
    image = two_colours()
    settings = InpaintSettings(blur_x=0, blur_y=0, full_res=False, invert=True)
    [prepared] = prepare_all([image], box_mask(image.size, (40, 20, 60, 40)), 96, 64, 0, settings) or []
    result = np.asarray(paste_back(Image.new("RGB", (96, 64), (0, 255, 0)), prepared), dtype=int)
    assert (result[5, 5] == (0, 255, 0)).all() and (result[30, 50] == BLUE).all()


# --- through the worker --------------------------------------------------------------------------

BODY = {"prompt": "a green door", "width": 64, "height": 64, "steps": 3, "seed": 5, "denoising_strength": 0.9}


@pytest.fixture(scope="module")
def client(tiny_model: LoadedModel) -> Iterator[TestClient]:
    with TestClient(create_app(WorkerConfig(), model=tiny_model)) as test_client:
        wait_ready(test_client)
        yield test_client


def inpaint(client: TestClient, **fields: object) -> dict:
    image = two_colours()
    body = {**BODY, "init_images": [b64(image)], "mask": b64(box_mask(image.size, (40, 20, 60, 40))), **fields}
    answer = client.post("/sdapi/v1/img2img", json=body)
    assert answer.status_code == 200, answer.text
    return answer.json()


def test_only_masked_returns_the_original_size_with_its_unmasked_pixels_as_sent(client: TestClient) -> None:
    made = inpaint(client)
    result, original = pixels(made), np.asarray(two_colours(), dtype=int)
    assert result.shape == original.shape
    assert (result[:8] == original[:8]).all() and (result[:, :16] == original[:, :16]).all()
    assert np.abs(result[28:33, 46:55] - original[28:33, 46:55]).max() > 20, "the masked area was repainted"
    text = json.loads(made["info"])["infotexts"][0]
    assert "Mask blur: 4" in text and "Masked content: fill" in text and "Inpaint area: Only masked" in text


def test_whole_picture_inpainting_returns_the_requested_size(client: TestClient) -> None:
    result = pixels(inpaint(client, inpaint_full_res=False, width=96, height=64))
    original = np.asarray(two_colours(), dtype=int)
    assert result.shape == (64, 96, 3) and (result[:8] == original[:8]).all()


@pytest.mark.parametrize("fill_mode", [1, 2, 3])
def test_every_fill_mode_gives_its_own_image(client: TestClient, fill_mode: int) -> None:
    default = pixels(inpaint(client))
    made = inpaint(client, inpainting_fill=fill_mode, mask_blur=0)
    assert not np.array_equal(pixels(made), default)
    labels = {1: "original", 2: "latent noise", 3: "latent nothing"}
    assert f"Masked content: {labels[fill_mode]}" in json.loads(made["info"])["infotexts"][0]
    assert np.array_equal(pixels(inpaint(client, inpainting_fill=fill_mode, mask_blur=0)), pixels(made))


def test_an_empty_mask_changes_nothing_it_did_not_mask(client: TestClient) -> None:
    image = two_colours()
    body = {**BODY, "init_images": [b64(image)], "mask": b64(Image.new("L", image.size, 0)), "inpaint_full_res": False}
    result = pixels(client.post("/sdapi/v1/img2img", json={**body, "width": 96}).json())
    assert np.array_equal(result, np.asarray(image, dtype=int))


def test_only_masked_with_nothing_masked_is_plain_img2img_as_in_a1111(client: TestClient) -> None:
    image = b64(two_colours())
    blank = client.post(
        "/sdapi/v1/img2img", json={**BODY, "init_images": [image], "mask": b64(Image.new("L", (96, 64)))}
    )
    plain = client.post("/sdapi/v1/img2img", json={**BODY, "init_images": [image]})
    assert np.array_equal(pixels(blank.json()), pixels(plain.json()))
    assert "Masked content" not in json.loads(blank.json()["info"])["infotexts"][0]


def test_a_bad_mask_is_a_422_that_names_it(client: TestClient) -> None:
    body = {**BODY, "init_images": [b64(two_colours())]}
    for mask, field in (("not base64!", "mask"), (b64(Image.new("L", (4, 4))), None)):
        answer = client.post("/sdapi/v1/img2img", json={**body, "mask": mask})
        if field is None:
            assert answer.status_code == 200, "a mask of another size is stretched over the image"
        else:
            assert answer.status_code == 422 and field in answer.text
    lab = io.BytesIO()
    Image.new("LAB", (8, 8)).save(lab, "TIFF")
    answer = client.post("/sdapi/v1/img2img", json={**body, "mask": base64.b64encode(lab.getvalue()).decode()})
    assert answer.status_code == 422 and "mask" in answer.text, "a mask PIL cannot make black and white"
    assert client.post("/sdapi/v1/img2img", json={**body, "mask_blur": 65}).status_code == 422
    assert client.post("/sdapi/v1/img2img", json={**body, "inpainting_fill": 4}).status_code == 422


async def post_all(url: str, bodies: list[dict]) -> list[httpx.Response]:
    async with httpx.AsyncClient(timeout=120) as http:
        return await asyncio.gather(*(http.post(f"{url}/sdapi/v1/img2img", json=body) for body in bodies))


def test_masked_requests_batch_together_and_give_the_same_pixels(live_worker) -> None:  # type: ignore[no-untyped-def]
    image = two_colours()
    bodies = [
        {**BODY, "prompt": f"door {i}", "seed": 10 + i, "init_images": [b64(image)], "inpainting_fill": i % 2 * 2,
         "mask": b64(box_mask(image.size, (10 * i, 10, 10 * i + 30, 40)))}
        for i in range(4)
    ]  # fmt: skip
    with live_worker(max_batch=1) as url:
        alone = [pixels(r.json()) for r in asyncio.run(post_all(url, bodies))]
    with live_worker(max_batch=8, batch_wait_ms=50) as url:
        answers = asyncio.run(post_all(url, bodies))
        batches = httpx.get(f"{url}/metrics").text
    assert all(np.array_equal(pixels(a.json()), want) for a, want in zip(answers, alone))
    assert "gpuroam_worker_batch_images_count 2.0" in batches or "gpuroam_worker_batch_images_count 3.0" in batches


# --- an inpainting checkpoint --------------------------------------------------------------------


@pytest.fixture(scope="module")
def inpainting_client() -> Iterator[TestClient]:
    """The built-in tiny model with an inpainting UNet (9 input channels, random weights)."""
    pipeline = build_random_pipeline("tiny")
    torch.manual_seed(0)
    unet = UNet2DConditionModel.from_config(pipeline.unet.config, in_channels=9).eval().requires_grad_(False)
    pipeline = StableDiffusionPipeline(**{**pipeline.components, "unet": unet})
    model = LoadedModel(pipeline, "tiny-inpainting", "builtin", "0" * 64, torch.device("cpu"), torch.float32)
    with TestClient(create_app(WorkerConfig(), model=model)) as test_client:
        wait_ready(test_client)
        yield test_client


def test_an_inpainting_checkpoint_makes_every_kind_of_image(inpainting_client: TestClient) -> None:
    txt2img = inpainting_client.post("/sdapi/v1/txt2img", json={**BODY, "batch_size": 2})
    assert txt2img.status_code == 200, txt2img.text
    assert pixels(txt2img.json()).shape == (64, 64, 3)
    plain = inpainting_client.post("/sdapi/v1/img2img", json={**BODY, "init_images": [b64(two_colours())]})
    assert plain.status_code == 200, plain.text
    for fill_mode in (0, 2):
        made = inpaint(inpainting_client, inpainting_fill=fill_mode)
        result, original = pixels(made), np.asarray(two_colours(), dtype=int)
        assert (result[:8] == original[:8]).all()
    hires = {**BODY, "enable_hr": True, "hr_scale": 1.5, "hr_upscaler": "Latent", "denoising_strength": 0.5}
    assert inpainting_client.post("/sdapi/v1/txt2img", json=hires).status_code == 200
