"""Hires fix as A1111 does it: the target size rules, latent and image upscales, and the two passes through
the real worker (tiny model)."""

from __future__ import annotations

import base64
import io
import json
from collections.abc import Iterator

import pytest
import torch
from fastapi.testclient import TestClient
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from gpuroam.worker import LoadedModel, WorkerConfig, create_app
from gpuroam.worker.hires import plan_hires, upscale_image, upscale_latent
from gpuroam.worker.schemas import RequestError, Txt2ImgRequest
from live_jobs import wait_ready

SMALL = {"prompt": "a red cube", "width": 64, "height": 64, "steps": 2, "seed": 7, "enable_hr": True}


def request(**fields: object) -> Txt2ImgRequest:
    return Txt2ImgRequest.model_validate({"enable_hr": True, **fields})


@pytest.mark.parametrize(
    ("fields", "upscaled", "result"),
    [
        ({"width": 512, "height": 512, "hr_scale": 2}, (1024, 1024), (1024, 1024)),
        ({"width": 512, "height": 768, "hr_scale": 1.5}, (768, 1152), (768, 1152)),
        ({"width": 64, "height": 64, "hr_scale": 1.3}, (83, 83), (80, 80)),  # whole latent cells
        (
            {"width": 512, "height": 768, "hr_resize_x": 1024},
            (1024, 1536),
            (1024, 1536),
        ),  # the other side keeps the aspect
        ({"width": 512, "height": 768, "hr_resize_y": 1024}, (682, 1024), (680, 1024)),
        (
            {"width": 512, "height": 768, "hr_resize_x": 1024, "hr_resize_y": 1024},
            (1024, 1536),
            (1024, 1024),
        ),  # cover, crop
    ],
)
def test_the_hires_size_follows_a1111s_rules(fields: dict, upscaled: tuple[int, int], result: tuple[int, int]) -> None:
    plan = plan_hires(request(**fields))
    assert (plan.upscaled_width, plan.upscaled_height) == upscaled and (plan.width, plan.height) == result


@settings(deadline=None, max_examples=40)  # a Lanczos upscale to 3072x3072 takes a while on a busy 2-core CPU
@given(
    st.sampled_from([64, 256, 512, 768]),
    st.sampled_from([64, 256, 512, 768]),
    st.floats(1.0, 4.0),
    st.sampled_from(["Latent", "Latent (bicubic antialiased)", "Latent (nearest-exact)", "Lanczos", "None"]),
)
def test_every_plan_is_whole_latent_cells_and_the_upscales_make_that_size(
    width: int, height: int, scale: float, upscaler: str
) -> None:
    try:
        plan = plan_hires(request(width=width, height=height, hr_scale=scale, hr_upscaler=upscaler))
    except RequestError as error:
        assert "each side from 8 to 2048" in str(error)
        return
    assert plan.width % 8 == 0 and plan.height % 8 == 0
    if plan.latent:
        latent = upscale_latent(torch.randn(4, height // 8, width // 8), plan)
        assert latent.shape == (4, plan.height // 8, plan.width // 8)
    else:
        assert upscale_image(Image.new("RGB", (width, height)), plan).size == (plan.width, plan.height)


def test_an_unknown_upscaler_or_a_too_large_result_is_refused() -> None:
    with pytest.raises(RequestError, match="R-ESRGAN 4x\\+' is not available here"):
        plan_hires(request(hr_upscaler="R-ESRGAN 4x+"))
    with pytest.raises(RequestError, match="each side from 8 to 2048"):
        plan_hires(request(width=1024, height=1024, hr_scale=4))


@pytest.fixture(scope="module")
def client(tiny_model: LoadedModel) -> Iterator[TestClient]:
    with TestClient(create_app(WorkerConfig(), model=tiny_model)) as test_client:
        wait_ready(test_client)
        yield test_client


def size_of(answer: dict) -> tuple[int, int]:
    return Image.open(io.BytesIO(base64.b64decode(answer["images"][0]))).size


@pytest.mark.parametrize("upscaler", [None, "Latent (bicubic antialiased)", "Lanczos", "None"])
def test_a_hires_request_returns_the_second_pass_at_its_size(client: TestClient, upscaler: str | None) -> None:
    body = {**SMALL, "hr_scale": 2, "hr_upscaler": upscaler, "denoising_strength": 0.5, "batch_size": 2}
    answer = client.post("/sdapi/v1/txt2img", json=body)
    assert answer.status_code == 200, answer.text
    made = answer.json()
    assert len(made["images"]) == 2 and size_of(made) == (128, 128)
    text = json.loads(made["info"])["infotexts"][0]
    assert "Size: 64x64" in text and "Denoising strength: 0.5" in text and "Hires upscale: 2" in text
    again = client.post("/sdapi/v1/txt2img", json=body).json()
    assert again["images"] == made["images"], "a hires image depends on its seed and settings alone"
    plain = client.post("/sdapi/v1/txt2img", json={**SMALL, "enable_hr": False}).json()
    assert size_of(plain) == (64, 64)


def test_hires_asks_for_a_resize_and_a_second_sampler(client: TestClient) -> None:
    body = {**SMALL, "hr_resize_x": 96, "hr_resize_y": 64, "hr_sampler_name": "DDIM", "hr_second_pass_steps": 3}
    made = client.post("/sdapi/v1/txt2img", json=body).json()
    assert size_of(made) == (96, 64)
    text = json.loads(made["info"])["infotexts"][0]
    assert "Hires resize: 96x64" in text and "Hires sampler: DDIM" in text and "Hires steps: 3" in text


def test_hires_is_refused_with_what_to_change(client: TestClient) -> None:
    unknown = client.post("/sdapi/v1/txt2img", json={**SMALL, "hr_upscaler": "ESRGAN_4x"})
    assert unknown.status_code == 422 and "hr_upscaler" in unknown.text
    costly = {**SMALL, "width": 1024, "height": 1024, "steps": 150, "hr_scale": 2, "denoising_strength": 1.0}
    refused = client.post("/sdapi/v1/txt2img", json={**costly, "batch_size": 4})
    assert refused.status_code == 422 and "megapixel-steps" in refused.text, "the second pass counts in the cost cap"


def test_what_the_second_pass_cannot_do_is_refused_before_the_first_runs(client: TestClient) -> None:
    for fields, says in (
        ({"hr_sampler_name": "Heun", "hr_scheduler": "kl_optimal"}, "hr_sampler_name"),
        ({"hr_sampler_name": "Nope"}, "hr_sampler_name"),
        ({"width": 2048, "height": 64, "hr_resize_x": 64, "hr_resize_y": 2048}, "hr_scale"),
        ({"hr_prompt": "x" * 20_000}, "prompts are"),
    ):
        refused = client.post("/sdapi/v1/txt2img", json={**SMALL, **fields})
        assert refused.status_code == 422 and says in refused.text, fields


def test_hr_prompt_tags_are_checked_before_the_first_pass_runs(client: TestClient) -> None:
    def images_made() -> float:
        metrics = client.get("/metrics").text.splitlines()
        return sum(float(line.split()[-1]) for line in metrics if line.startswith("gpuroam_worker_images_total"))

    before = images_made()
    refused = client.post("/sdapi/v1/txt2img", json={**SMALL, "hr_prompt": "y <lora:a:abc>"})
    assert refused.status_code == 422 and refused.json()["detail"][0]["loc"][-1] == "hr_prompt", refused.text
    assert images_made() == before
