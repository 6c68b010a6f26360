"""The A1111 HTTP API of one worker, in process (starlette's TestClient)."""

from __future__ import annotations

import base64
import io
import json
import time
from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient
from PIL import Image

from gpuroam.worker import LoadedModel, WorkerConfig, create_app
from gpuroam.worker.images import encode_png
from live_jobs import wait_ready

SMALL = {"prompt": "a cat", "steps": 2, "width": 64, "height": 64, "seed": 7}


@pytest.fixture
def client(tiny_model: LoadedModel) -> Iterator[TestClient]:
    app = create_app(WorkerConfig(region="us-central1", gpu="nvidia-l4", replica="r1"), model=tiny_model)
    with TestClient(app) as test_client:
        wait_ready(test_client)
        yield test_client


def png(data: str) -> Image.Image:
    return Image.open(io.BytesIO(base64.b64decode(data)))


def test_txt2img_answers_like_a1111(client: TestClient) -> None:
    response = client.post("/sdapi/v1/txt2img", json={**SMALL, "batch_size": 2, "n_iter": 2, "not_a_field": 1})
    assert response.status_code == 200, response.text
    body = response.json()
    assert set(body) == {"images", "parameters", "info"}
    assert isinstance(body["info"], str)
    info = json.loads(body["info"])
    assert len(body["images"]) == 4
    assert info["all_seeds"] == [7, 8, 9, 10] and info["seed"] == 7
    assert info["gpuroam_region"] == "us-central1" and info["gpuroam_gpu"] == "nvidia-l4"
    assert body["parameters"]["prompt"] == "a cat" and "not_a_field" not in body["parameters"]
    image = png(body["images"][3])
    assert image.size == (64, 64)
    assert image.info["parameters"] == info["infotexts"][3]
    assert "Seed: 10" in image.info["parameters"] and "Batch pos: 1" in image.info["parameters"]


def test_same_request_gives_the_same_bytes(client: TestClient) -> None:
    first = client.post("/sdapi/v1/txt2img", json=SMALL).json()["images"]
    second = client.post("/sdapi/v1/txt2img", json=SMALL).json()["images"]
    assert first == second


def test_seed_minus_one_becomes_a_random_seed(client: TestClient) -> None:
    seeds = {
        json.loads(client.post("/sdapi/v1/txt2img", json={**SMALL, "seed": -1}).json()["info"])["seed"]
        for _ in range(3)
    }
    assert len(seeds) == 3 and all(0 <= seed < 4294967294 for seed in seeds)


def test_send_images_false_returns_no_images(client: TestClient) -> None:
    body = client.post("/sdapi/v1/txt2img", json={**SMALL, "send_images": False}).json()
    assert body["images"] == [] and json.loads(body["info"])["all_seeds"] == [7]


def test_img2img_takes_data_urls_and_raw_base64(client: TestClient) -> None:
    init = encode_png(Image.new("RGB", (80, 48), (10, 200, 30)), "")
    for data in (init, "data:image/png;base64," + init):
        response = client.post("/sdapi/v1/img2img", json={**SMALL, "init_images": [data], "denoising_strength": 0.5})
        assert response.status_code == 200, response.text
        assert png(response.json()["images"][0]).size == (64, 64)
        assert "Denoising strength: 0.5" in json.loads(response.json()["info"])["infotexts"][0]


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"width": 65}, "width"),
        ({"height": 4096}, "height"),
        ({"width": 32}, "width"),
        ({"steps": 0}, "steps"),
        ({"steps": 151}, "steps"),
        ({"batch_size": 8, "n_iter": 9}, "n_iter"),
        ({"steps": "many"}, "steps"),
        ({"cfg_scale": [1]}, "cfg_scale"),
        ({"sampler_name": "Heun", "scheduler": "kl_optimal"}, "sampler_name"),
        ({"override_settings": {"sd_model_checkpoint": "other.safetensors"}}, "override_settings"),
    ],
)
def test_bad_fields_get_a_422_that_names_them(client: TestClient, body: dict, field: str) -> None:
    response = client.post("/sdapi/v1/txt2img", json={**SMALL, **body})
    assert response.status_code == 422, response.text
    assert field in json.dumps(response.json()["detail"])


def test_an_unknown_sampler_is_a1111s_404_and_says_which_exist(client: TestClient) -> None:
    response = client.post("/sdapi/v1/txt2img", json={**SMALL, "sampler_name": "Nope"})
    assert response.status_code == 404
    body = response.json()
    assert set(body) == {"error", "detail", "body", "errors"} and body["detail"] == "Sampler not found"
    assert "Euler a" in body["errors"] and "DPM++ 2M" in body["errors"]


@pytest.mark.parametrize("scheduler", ["normal", "Align Your Steps", "kl_optimal", "zigzag"])
def test_every_a1111_scheduler_generates_and_an_unknown_one_is_automatic(client: TestClient, scheduler: str) -> None:
    response = client.post("/sdapi/v1/txt2img", json={**SMALL, "sampler_name": "DDIM", "scheduler": scheduler})
    assert response.status_code == 200, "DDIM takes any schedule and ignores it, as in A1111"
    response = client.post("/sdapi/v1/txt2img", json={**SMALL, "sampler_name": "Euler a", "scheduler": scheduler})
    assert response.status_code == 200 and len(response.json()["images"]) == 1


def test_non_json_and_wrong_shapes_are_4xx(client: TestClient) -> None:
    assert (
        client.post("/sdapi/v1/txt2img", content=b"{not json", headers={"content-type": "application/json"}).status_code
        == 422
    )
    assert client.post("/sdapi/v1/txt2img", json=[1, 2]).status_code == 422
    assert client.post("/sdapi/v1/img2img", json={**SMALL}).status_code == 422  # init_images missing


@pytest.mark.parametrize("data", ["%%%", base64.b64encode(b"GIF89a broken").decode()])
def test_undecodable_init_images_are_a_422(client: TestClient, data: str) -> None:
    response = client.post("/sdapi/v1/img2img", json={**SMALL, "init_images": [data]})
    assert response.status_code == 422
    assert "init_images" in json.dumps(response.json())


def test_oversized_body_is_a_413(tiny_model: LoadedModel) -> None:
    app = create_app(WorkerConfig(max_body_bytes=10_000), model=tiny_model)
    with TestClient(app) as client:
        wait_ready(client)
        response = client.post("/sdapi/v1/img2img", json={**SMALL, "init_images": ["A" * 20_000]})
        assert response.status_code == 413
        assert client.post("/sdapi/v1/txt2img", json=SMALL).status_code == 200, "the worker carries on"


def test_read_endpoints(client: TestClient) -> None:
    assert client.get("/internal/ping").json() == {}
    models = client.get("/sdapi/v1/sd-models").json()
    assert models[0]["model_name"] == "tiny" and models[0]["title"].startswith("tiny [")
    assert "Euler a" in [s["name"] for s in client.get("/sdapi/v1/samplers").json()]
    assert "karras" in [s["name"] for s in client.get("/sdapi/v1/schedulers").json()]
    assert client.get("/sdapi/v1/scripts").json() == {"txt2img": [], "img2img": ["sd upscale"]}
    info = client.get("/gpuroam/worker").json()
    assert info["region"] == "us-central1" and info["gpu"] == "nvidia-l4" and info["ready"]
    page = client.get("/")
    assert page.status_code == 200 and "<html" in page.text.lower()
    assert client.get("/static/app.js").status_code == 200


def test_options_round_trip_and_clip_skip_applies(client: TestClient) -> None:
    options = client.get("/sdapi/v1/options").json()
    assert options["sd_model_checkpoint"].startswith("tiny") and options["CLIP_stop_at_last_layers"] == 1
    plain = client.post("/sdapi/v1/txt2img", json=SMALL).json()
    assert (
        client.post("/sdapi/v1/options", json={"CLIP_stop_at_last_layers": 2, "unknown_option": 1}).status_code == 200
    )
    assert client.get("/sdapi/v1/options").json()["CLIP_stop_at_last_layers"] == 2
    skipped = client.post("/sdapi/v1/txt2img", json=SMALL).json()
    assert "Clip skip: 2" in json.loads(skipped["info"])["infotexts"][0]
    assert skipped["images"] != plain["images"]
    assert client.post("/sdapi/v1/options", json={"CLIP_stop_at_last_layers": "x"}).status_code == 422
    assert client.post("/sdapi/v1/options", json={"sd_model_checkpoint": "nope"}).status_code == 422
    assert client.post("/sdapi/v1/options", json={"samples_format": "jpg", "send_seed": False}).status_code == 200
    kept = client.get("/sdapi/v1/options").json()
    assert (kept["samples_format"], kept["send_seed"], len(kept)) == ("jpg", False, 329), "any A1111 key is kept"
    refused = client.post("/sdapi/v1/options", json={"send_seed": "yes"})
    assert refused.status_code == 422 and "send_seed" in refused.text
    client.post("/sdapi/v1/options", json={"samples_format": "png", "send_seed": True, "CLIP_stop_at_last_layers": 1})


def test_progress_when_idle(client: TestClient) -> None:
    progress = client.get("/sdapi/v1/progress?skip_current_image=false").json()
    assert progress["progress"] == 0.0 and progress["state"]["job_count"] == 0
    assert client.post("/sdapi/v1/interrupt").json() == {}
    assert client.post("/sdapi/v1/skip").json() == {}


def test_metrics_are_prometheus_text(client: TestClient) -> None:
    client.post("/sdapi/v1/txt2img", json={**SMALL, "batch_size": 3})
    text = client.get("/metrics").text
    assert "gpuroam_worker_images_total 3.0" in text
    assert 'gpuroam_worker_requests_total{route="/sdapi/v1/txt2img",status="200"} 1.0' in text
    assert "gpuroam_worker_batch_images_bucket" in text and "gpuroam_worker_queue_depth" in text
    assert "gpuroam_worker_generation_seconds_count 1.0" in text
    assert "gpuroam_worker_model_loaded 1.0" in text


def test_api_auth_is_enforced(tiny_model: LoadedModel) -> None:
    config = WorkerConfig(api_auth=WorkerConfig.parse_api_auth("alice:s3cret,bob:pw"))
    with TestClient(create_app(config, model=tiny_model)) as client:
        wait_ready(client)
        assert client.post("/sdapi/v1/txt2img", json=SMALL).status_code == 401
        assert client.post("/sdapi/v1/txt2img", json=SMALL, auth=("alice", "wrong")).status_code == 401
        assert client.get("/sdapi/v1/options").headers.get("www-authenticate") == "Basic"
        assert client.post("/sdapi/v1/txt2img", json=SMALL, auth=("alice", "s3cret")).status_code == 200
        assert client.get("/sdapi/v1/sd-models", auth=("bob", "pw")).status_code == 200
        assert client.get("/internal/ping").status_code == 200, "health checks need no credentials"


def test_api_auth_flag_format_is_checked() -> None:
    with pytest.raises(ValueError, match="user:password"):
        WorkerConfig.parse_api_auth("alice")


def test_before_the_model_loads_ping_and_api_answer_503(tiny_model: LoadedModel) -> None:
    app = create_app(WorkerConfig(model="/nonexistent/model.safetensors"))
    with TestClient(app) as client:
        deadline = time.monotonic() + 30
        while "failed" not in client.get("/internal/ping").text:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        ping = client.get("/internal/ping")
        assert ping.status_code == 503 and "nonexistent" in ping.text
        response = client.post("/sdapi/v1/txt2img", json=SMALL)
        assert response.status_code == 503 and "Retry-After" in response.headers
