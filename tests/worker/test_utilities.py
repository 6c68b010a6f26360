"""The rest of A1111's surface: catalogues, png-info, Extras upscaling, interrogate, memory and flags, with
A1111's shapes; bad input is a 4xx, never a 500."""

from __future__ import annotations

import base64
import io
import json
from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient
from hypothesis import given
from hypothesis import strategies as st
from PIL import Image

from gpuroam.worker import LoadedModel, WorkerConfig, create_app
from gpuroam.worker.extras import Upscale, run_extras, upscale
from gpuroam.worker.images import encode_png
from gpuroam.worker.infotext import infotext
from gpuroam.worker.jobs import BatchKey
from gpuroam.worker.pnginfo import parse_parameters
from live_jobs import wait_ready

SMALL = {"prompt": "a red cube", "width": 64, "height": 64, "steps": 2, "seed": 7}


@pytest.fixture(scope="module")
def client(tiny_model: LoadedModel) -> Iterator[TestClient]:
    with TestClient(create_app(WorkerConfig(), model=tiny_model)) as test_client:
        wait_ready(test_client)
        yield test_client


def b64(image: Image.Image, fmt: str = "PNG") -> str:
    out = io.BytesIO()
    image.save(out, fmt)
    return base64.b64encode(out.getvalue()).decode()


def opened(data: str) -> Image.Image:
    return Image.open(io.BytesIO(base64.b64decode(data)))


def test_the_catalogues_clients_read_at_start_up_answer_in_a1111s_shapes(client: TestClient) -> None:
    upscalers = client.get("/sdapi/v1/upscalers").json()
    assert [u["name"] for u in upscalers] == ["None", "Lanczos", "Nearest"], "only what needs no weights"
    assert set(upscalers[0]) == {"name", "model_name", "model_path", "model_url", "scale"}
    modes = [m["name"] for m in client.get("/sdapi/v1/latent-upscale-modes").json()]
    assert modes[0] == "Latent" and "Latent (nearest-exact)" in modes
    for path in ("sd-vae", "loras", "hypernetworks", "face-restorers", "realesrgan-models", "prompt-styles"):
        assert client.get(f"/sdapi/v1/{path}").json() == [], path
    assert client.get("/sdapi/v1/embeddings").json() == {"loaded": {}, "skipped": {}}
    for path in ("refresh-checkpoints", "refresh-vae", "refresh-loras", "refresh-embeddings"):
        refreshed = client.post(f"/sdapi/v1/{path}")
        assert refreshed.status_code == 200 and refreshed.json() is None, path
        through_the_endpoint = client.post(f"/sdapi/v1/{path}", headers={"X-Gpuroam-Identity": "key:x"})
        assert through_the_endpoint.status_code == 403 and "own port" in through_the_endpoint.text, path
    flags = client.get("/sdapi/v1/cmd-flags").json()
    assert flags["api"] is True and flags["api_auth"] is None and "precision" in flags
    ram = client.get("/sdapi/v1/memory").json()["ram"]
    assert ram["total"] > ram["used"] > 0


def test_png_info_reads_back_what_txt2img_wrote(client: TestClient) -> None:
    made = client.post("/sdapi/v1/txt2img", json={**SMALL, "negative_prompt": "blurry"}).json()
    read = client.post("/sdapi/v1/png-info", json={"image": made["images"][0]}).json()
    assert read["info"].startswith("a red cube\nNegative prompt: blurry\nSteps: 2") and read["items"] == {}
    parameters = read["parameters"]
    assert (parameters["Prompt"], parameters["Negative prompt"], parameters["Seed"]) == ("a red cube", "blurry", "7")
    assert (parameters["Size-1"], parameters["Size-2"], parameters["Steps"]) == ("64", "64", "2")
    assert parameters["Clip skip"] == "1" and parameters["Masked area padding"] == 32, "A1111's defaults filled in"
    empty = client.post("/sdapi/v1/png-info", json={"image": b64(Image.new("RGB", (8, 8)))}).json()
    assert empty["info"] == "" and empty["parameters"]["Prompt"] == ""


@given(
    st.text(st.characters(blacklist_categories=("Cs", "Cc")), max_size=40).map(str.strip),
    st.integers(0, 2**32 - 1),
    st.sampled_from([(512, 768), (64, 64), (1024, 576)]),
)
def test_every_infotext_gpuroam_writes_parses_back_to_its_values(prompt: str, seed: int, size: tuple[int, int]) -> None:
    key = BatchKey("txt2img", size[0], size[1], 20, "DPM++ 2M", "karras", 6.5, clip_skip=2)
    text = infotext(
        prompt=prompt,
        negative_prompt="",
        key=key,
        seed=seed,
        subseed=0,
        subseed_strength=0.0,
        batch_size=1,
        batch_pos=0,
        model_name="tiny",
        model_hash="abc",
    )
    parameters = parse_parameters(text)
    assert parameters["Seed"] == str(seed) and parameters["Sampler"] == "DPM++ 2M"
    assert (parameters["Size-1"], parameters["Size-2"]) == (str(size[0]), str(size[1]))
    assert parameters["Schedule type"] == "Karras" and parameters["Clip skip"] == "2"
    assert parameters["Prompt"] == prompt.strip()


def test_a1111s_worked_example_parses_exactly() -> None:
    text = (
        "masterpiece, (best quality:1.2), 1girl\nNegative prompt: lowres, bad anatomy\n"
        'Steps: 28, Sampler: DPM++ 2M, Size: 512x768, Lora hashes: "add_detail: 7c6bad76eb54", Version: v1.10.1'
    )
    parameters = parse_parameters(text)
    assert list(parameters)[:7] == ["Steps", "Sampler", "Size-1", "Size-2", "Lora hashes", "Version", "Prompt"]
    assert parameters["Lora hashes"] == "add_detail: 7c6bad76eb54" and parameters["Emphasis"] == "Original"
    assert parameters["Refiner switch by sampling steps"] is False


@pytest.mark.parametrize(
    ("size", "scale", "upscaler", "expected"),
    [
        ((512, 512), 2, "Lanczos", (1024, 1024)),
        ((513, 300), 2, "Nearest", (1024, 600)),
        ((100, 60), 0.5, "Lanczos", (48, 24)),
    ],
)
def test_upscaling_rounds_to_multiples_of_8_as_a1111(
    size: tuple[int, int], scale: float, upscaler: str, expected: tuple[int, int]
) -> None:
    assert upscale(Image.new("RGB", size), scale, upscaler).size == expected


def test_upscale_to_a_size_crops_to_exactly_it_and_says_so() -> None:
    image, html_info = run_extras(
        Image.new("RGB", (640, 480)), Upscale("Lanczos", resize_mode=1, width=512, height=512)
    )
    assert image.size == (512, 512) and image.mode == "RGB"
    assert (
        html_info
        == "<p>Postprocess upscale to: 512x512, Postprocess crop to: 512x512, Postprocess upscaler: Lanczos</p>"
    )
    uncropped, _ = run_extras(
        Image.new("RGB", (640, 480)), Upscale("Lanczos", resize_mode=1, width=512, height=512, crop=False)
    )
    assert uncropped.size == (680, 512)


def test_extras_through_the_api(client: TestClient) -> None:
    source = b64(Image.new("RGB", (64, 48), "red"))
    single = client.post(
        "/sdapi/v1/extra-single-image", json={"image": source, "upscaler_1": "Lanczos", "upscaling_resize": 2}
    )
    assert single.status_code == 200 and opened(single.json()["image"]).size == (128, 96)
    assert single.json()["html_info"] == "<p>Postprocess upscale by: 2.0, Postprocess upscaler: Lanczos</p>"
    unchanged = client.post("/sdapi/v1/extra-single-image", json={"image": source}).json()
    assert opened(unchanged["image"]).size == (64, 48) and unchanged["html_info"] == "<p></p>"
    batch = client.post(
        "/sdapi/v1/extra-batch-images",
        json={"imageList": [{"data": source, "name": "a.png"}] * 2, "upscaler_1": "Nearest", "upscaling_resize": 1.5},
    )
    assert [opened(image).size for image in batch.json()["images"]] == [(96, 72), (96, 72)]


@pytest.mark.parametrize(
    ("path", "body", "status"),
    [
        ("/sdapi/v1/extra-single-image", {"image": "", "upscaler_1": "Lanczos"}, 422),
        ("/sdapi/v1/extra-single-image", {"image": "not base64!"}, 422),
        ("/sdapi/v1/extra-single-image", {"image": "IMAGE", "upscaler_1": "R-ESRGAN 4x+"}, 422),
        ("/sdapi/v1/extra-single-image", {"image": "IMAGE", "upscaler_1": "Lanczos", "upscaling_resize": 8}, 422),
        ("/sdapi/v1/png-info", {}, 422),
        ("/sdapi/v1/png-info", {"image": "%%%"}, 422),
        ("/sdapi/v1/interrogate", {"image": None}, 404),
        ("/sdapi/v1/interrogate", {"image": "IMAGE", "model": "blip3"}, 404),
    ],
)
def test_bad_input_is_a_4xx_never_a_500(client: TestClient, path: str, body: dict, status: int) -> None:
    image = b64(Image.new("RGB", (2048, 2048)))
    body = {key: image if value == "IMAGE" else value for key, value in body.items()}
    response = client.post(path, json=body)
    assert response.status_code == status, response.text


def test_interrogate_answers_as_a1111_does_without_its_models(client: TestClient) -> None:
    answer = client.post("/sdapi/v1/interrogate", json={"image": b64(Image.new("RGB", (8, 8)))})
    assert answer.status_code == 200 and answer.json() == {"caption": "<error>"}


def test_an_http_error_has_a1111s_error_body(client: TestClient) -> None:
    body = client.post("/sdapi/v1/interrogate", json={"image": None}).json()
    assert body == {"error": "HTTPException", "detail": "Image not found", "body": "", "errors": ""}


def test_an_extras_png_keeps_the_source_parameters_and_adds_postprocessing() -> None:
    source = opened(encode_png(Image.new("RGB", (16, 16)), "a cat\nSteps: 2, Sampler: Euler, Seed: 1"))
    image, _ = run_extras(source, Upscale("Lanczos", factor=2))
    assert image.info["parameters"].startswith("a cat") and image.info["postprocessing"].startswith("Postprocess")


@pytest.mark.parametrize(
    ("extra", "status", "says"),
    [
        ({"script_name": "sd upscale"}, 422, "Script 'sd upscale' not found"),
    ],
)
def test_what_is_not_built_yet_is_refused_not_silently_ignored(
    client: TestClient, extra: dict, status: int, says: str
) -> None:
    response = client.post("/sdapi/v1/txt2img", json={**SMALL, **extra})
    assert response.status_code == status and says in response.text
    assert (
        client.post(
            "/sdapi/v1/txt2img", json={**SMALL, "enable_hr": False, "tiling": False, "script_name": ""}
        ).status_code
        == 200
    )


def test_one_request_cannot_ask_for_gigabytes_of_upscaled_pixels(client: TestClient) -> None:
    big = b64(Image.new("RGB", (1024, 1024)))
    body = {"imageList": [{"data": big, "name": "x.png"}] * 16, "upscaler_1": "Lanczos", "upscaling_resize": 2}
    refused = client.post("/sdapi/v1/extra-batch-images", json=body)
    assert refused.status_code == 422 and "million pixels" in refused.text


def test_tiling_pads_every_convolution_circularly_for_its_own_batch_only(client: TestClient) -> None:
    plain = client.post("/sdapi/v1/txt2img", json=SMALL).json()
    tiled = client.post("/sdapi/v1/txt2img", json={**SMALL, "tiling": True}).json()
    assert tiled["images"] != plain["images"]
    assert "Tiling: True" in json.loads(tiled["info"])["infotexts"][0]
    again = client.post("/sdapi/v1/txt2img", json=SMALL).json()
    assert again["images"] == plain["images"], "the model pads with zeros again after a tiled batch"


def png_with_text(text: str, exif: bytes | None = None) -> str:
    """A small PNG carrying `text` as its parameters chunk (and an eXIf chunk, if given)."""
    from PIL import PngImagePlugin

    info = PngImagePlugin.PngInfo()
    info.add_text("parameters", text, zip=True)
    out = io.BytesIO()
    Image.new("RGB", (8, 8)).save(out, "PNG", pnginfo=info, **({"exif": exif} if exif else {}))
    return base64.b64encode(out.getvalue()).decode()


def test_png_info_of_a_hostile_image_answers_at_once_and_never_a_500(client: TestClient) -> None:
    long = client.post("/sdapi/v1/png-info", json={"image": png_with_text("a " * 500_000)})
    assert long.status_code == 200 and long.json()["parameters"]["Prompt"].startswith("a a")
    broken = client.post(
        "/sdapi/v1/png-info", json={"image": png_with_text("x\nSteps: 2, Seed: 1, Size: 8x8", b"garbage")}
    )
    assert broken.status_code == 200, "a corrupt EXIF block is no comment, not a failure"


def test_a_callers_options_through_the_gateway_are_bounded(client: TestClient) -> None:
    huge = {"quicksettings_list": ["x" * 4000] * 200}
    refused = client.post("/sdapi/v1/options", json=huge, headers={"X-Gpuroam-Identity": "address:203.0.113.9"})
    assert refused.status_code == 422 and "at most 16,384" in refused.text
