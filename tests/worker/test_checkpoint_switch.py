"""Several checkpoints from --ckpt-dir: listed by sd-models, switched on the worker's own port only."""

from __future__ import annotations

import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch
from fastapi.testclient import TestClient
from ldm_checkpoints import tiny_pipeline, to_ldm_state_dict, write_config_folder
from safetensors.torch import save_file

from gpuroam.worker import LoadedModel, WorkerConfig, create_app
from gpuroam.worker.checkpoints import load_single_file
from gpuroam.worker.models import file_sha256
from live_jobs import txt2img_pixels, wait_ready

SMALL = {"prompt": "a red cube", "width": 64, "height": 64, "steps": 2, "seed": 7}


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    root = tmp_path_factory.mktemp("ckpt")
    for name, seed in (("a", 0), ("sub/b", 1)):
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        save_file(to_ldm_state_dict(tiny_pipeline("sd1", seed), "sd1"), str(root / f"{name}.safetensors"))
    save_file(to_ldm_state_dict(tiny_pipeline("sdxl", 2), "sdxl"), str(root / "xl.safetensors"))
    configs = {
        family: write_config_folder(tiny_pipeline(family), root.parent / f"config-{family}")
        for family in ("sd1", "sdxl")
    }

    def load(path: Path, dtype: torch.dtype):  # type: ignore[no-untyped-def]
        family = "sdxl" if path.name == "xl.safetensors" else "sd1"
        return load_single_file(path, dtype, config_dir=configs[family])

    first = root / "a.safetensors"
    model = LoadedModel(
        load(first, torch.float32), "a", str(first), file_sha256(first), torch.device("cpu"), torch.float32
    )
    app = create_app(WorkerConfig(ckpt_dir=str(root)), model=model, load_checkpoint=load)
    with TestClient(app) as test_client:
        wait_ready(test_client)
        yield test_client


def pixels(client: TestClient, **body: object) -> bytes:
    return txt2img_pixels(client, {**SMALL, **body})


def test_sd_models_lists_every_checkpoint_and_the_served_one_first(client: TestClient) -> None:
    models = client.get("/sdapi/v1/sd-models").json()
    assert [m["model_name"] for m in models] == ["a", "xl", "b"], "the directory's files, then its folders"
    assert models[0]["hash"] and models[2]["title"] == "sub/b.safetensors" and models[2]["hash"] is None
    assert client.get("/sdapi/v1/cmd-flags").json()["ckpt_dir"]


def test_the_own_port_switches_the_checkpoint_and_back(client: TestClient) -> None:
    first_title = client.get("/sdapi/v1/options").json()["sd_model_checkpoint"]
    first = pixels(client)
    assert client.post("/sdapi/v1/options", json={"sd_model_checkpoint": "sub/b.safetensors"}).status_code == 200
    try:
        assert client.get("/sdapi/v1/options").json()["sd_model_checkpoint"].startswith("b [")
        second = pixels(client)
        assert second != first
        answer = client.post("/sdapi/v1/txt2img", json={**SMALL, "send_images": False})
        assert '"sd_model_name": "b"' in answer.json()["info"]
    finally:
        assert client.post("/sdapi/v1/options", json={"sd_model_checkpoint": "a"}).status_code == 200
    assert client.get("/sdapi/v1/options").json()["sd_model_checkpoint"].split(" [")[0] == first_title.split(" [")[0]
    assert pixels(client) == first


def test_a_checkpoint_of_another_architecture_is_refused_and_the_served_one_kept(client: TestClient) -> None:
    before = pixels(client)
    answer = client.post("/sdapi/v1/options", json={"sd_model_checkpoint": "xl.safetensors"})
    assert answer.status_code == 422 and "start another worker with --model" in answer.text
    assert client.post("/sdapi/v1/options", json={"sd_model_checkpoint": "../a.safetensors"}).status_code == 422
    assert pixels(client) == before


def test_a_request_or_a_caller_through_the_gateway_never_switches_the_shared_model(client: TestClient) -> None:
    override = {**SMALL, "override_settings": {"sd_model_checkpoint": "sub/b.safetensors"}}
    answer = client.post("/sdapi/v1/txt2img", json=override)
    assert answer.status_code == 422 and "worker's own port" in answer.text
    as_caller = client.post(
        "/sdapi/v1/options", json={"sd_model_checkpoint": "sub/b.safetensors"}, headers={"X-Gpuroam-Identity": "key:x"}
    )
    assert as_caller.status_code == 422
    assert client.get("/sdapi/v1/sd-models").json()[0]["model_name"] == "a"


def test_two_switches_at_once_load_one_checkpoint_at_a_time(client: TestClient) -> None:
    switcher = client.app.state.worker.switcher  # type: ignore[attr-defined]
    real, loading, most, loads = switcher.load, [0], [0], []

    def counting(path: Path, dtype: torch.dtype):  # type: ignore[no-untyped-def]
        loading[0] += 1
        most[0] = max(most[0], loading[0])
        loads.append(path.name)
        time.sleep(0.3)
        try:
            return real(path, dtype)
        finally:
            loading[0] -= 1

    switcher.load = counting
    try:
        with ThreadPoolExecutor(2) as pool:
            switch = {"sd_model_checkpoint": "sub/b.safetensors"}
            answers = list(pool.map(lambda _: client.post("/sdapi/v1/options", json=switch), range(2)))
        assert [answer.status_code for answer in answers] == [200, 200]
        assert most[0] == 1 and loads == ["b.safetensors"], "the second found b served"
    finally:
        switcher.load = real
        assert client.post("/sdapi/v1/options", json={"sd_model_checkpoint": "a"}).status_code == 200
