"""LoRAs, embeddings and VAEs from directories, through A1111's routes and prompts, on the tiny model.

Each test module builds its own model: VAEs and embeddings change a pipeline, and the session's shared
tiny model must stay as it was for the other tests.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from asset_files import write_embedding_pt, write_embedding_safetensors, write_lora, write_vae
from fastapi.testclient import TestClient
from PIL import Image
from safetensors.torch import save_file

from gpuroam.worker import LoadedModel, WorkerConfig, create_app, load_model
from gpuroam.worker import lora as lora_module
from gpuroam.worker import vae as vae_module
from gpuroam.worker.engine import Engine
from gpuroam.worker.extra_networks import parse_prompt
from gpuroam.worker.jobs import BatchKey, ImageTask, Job, take_batch
from gpuroam.worker.library import AssetDirs, AssetLibrary
from live_jobs import txt2img_pixels, wait_ready

SMALL = {"prompt": "a red cube", "width": 64, "height": 64, "steps": 2, "seed": 7}


@pytest.fixture(scope="module")
def model() -> LoadedModel:
    return load_model("tiny", torch.device("cpu"))


@pytest.fixture(scope="module")
def dirs(model: LoadedModel, tmp_path_factory: pytest.TempPathFactory) -> AssetDirs:
    root = tmp_path_factory.mktemp("assets")
    write_lora(root / "lora" / "style.safetensors", model.pipeline, metadata={"ss_output_name": "stylish"})
    write_lora(root / "lora" / "sub" / "other.safetensors", model.pipeline, seed=5)
    write_lora(root / "x.safetensors", model.pipeline, seed=9)  # beside the directory, never to be read
    write_embedding_pt(root / "embeddings" / "shinytoken.pt", torch.randn(2, 32) * 4)
    write_embedding_safetensors(root / "embeddings" / "wide.safetensors", torch.randn(1, 768))
    write_vae(root / "vae" / "other.vae.safetensors", model.pipeline)
    return AssetDirs(root / "lora", root / "embeddings", root / "vae")


@pytest.fixture(scope="module")
def client(model: LoadedModel, dirs: AssetDirs) -> Iterator[TestClient]:
    config = WorkerConfig(lora_dir=str(dirs.lora), embeddings_dir=str(dirs.embeddings), vae_dir=str(dirs.vae))
    with TestClient(create_app(config, model=model)) as test_client:
        wait_ready(test_client)
        yield test_client


def pixels(client: TestClient, **body: object) -> bytes:
    return txt2img_pixels(client, {**SMALL, **body})


def test_the_routes_list_what_the_directories_hold_in_a1111s_shapes(client: TestClient, dirs: AssetDirs) -> None:
    loras = client.get("/sdapi/v1/loras").json()
    assert [(lora["name"], lora["alias"]) for lora in loras] == [("style", "stylish"), ("other", "other")]
    assert loras[0]["path"] == str(dirs.lora / "style.safetensors") and loras[0]["metadata"]["ss_output_name"]
    assert client.get("/sdapi/v1/sd-vae").json() == [
        {"model_name": "other.vae.safetensors", "filename": str(dirs.vae / "other.vae.safetensors")}
    ]
    listed = client.get("/sdapi/v1/embeddings").json()
    assert listed["loaded"] == {
        "shinytoken": {
            "step": 500,
            "sd_checkpoint": "0123456789",
            "sd_checkpoint_name": "tiny",
            "shape": 32,
            "vectors": 2,
        }
    }
    assert listed["skipped"]["wide"]["shape"] == 768, "made for another text encoder: listed as skipped, as A1111 does"
    flags = client.get("/sdapi/v1/cmd-flags").json()
    assert (flags["lora_dir"], flags["vae_dir"], flags["embeddings_dir"]) == tuple(
        map(str, (dirs.lora, dirs.vae, dirs.embeddings))
    )


def test_a_lora_changes_the_image_and_weight_zero_does_not(client: TestClient) -> None:
    plain = pixels(client)
    with_lora = pixels(client, prompt="a red cube <lora:style:1>")
    assert with_lora != plain
    assert pixels(client, prompt="a red cube <lora:style:0>") == plain
    assert pixels(client, prompt="a red cube <lora:stylish:1>") == with_lora, "by its alias too"
    assert pixels(client, prompt="a red cube <lora:style:0.5>") not in (plain, with_lora)
    assert pixels(client, prompt="a red cube <lora:style:1> <lora:other:1>") != with_lora
    assert pixels(client) == plain, "the weights are the checkpoint's again after a LoRA batch"


def test_the_hr_prompt_brings_its_own_loras_to_the_second_pass(client: TestClient) -> None:
    hires = {"enable_hr": True, "hr_scale": 2, "denoising_strength": 0.6}
    plain = pixels(client, **hires)
    assert pixels(client, **hires, hr_prompt="a red cube") == plain
    assert pixels(client, **hires, hr_prompt="a red cube <lora:style:1>") != plain
    first_only = pixels(client, **hires, prompt="a red cube <lora:style:1>", hr_prompt="a red cube")
    assert first_only != pixels(client, **hires, prompt="a red cube <lora:style:1>")


@pytest.mark.parametrize("name", ["../x", "/etc/passwd", "nothing", "sub/other", "..\\x"])
def test_a_name_that_is_not_listed_is_ignored_and_nothing_outside_is_read(client: TestClient, name: str) -> None:
    assert pixels(client, prompt=f"a red cube <lora:{name}:1>") == pixels(client)


def test_an_embedding_by_its_file_name_changes_the_image(client: TestClient) -> None:
    assert pixels(client, prompt="a red cube shinytoken") != pixels(client, prompt="a red cube")


def test_sd_vae_decodes_with_another_vae_per_request_or_as_the_workers_option(client: TestClient) -> None:
    plain = pixels(client)
    other = pixels(client, override_settings={"sd_vae": "other.vae.safetensors"})
    assert other != plain
    assert pixels(client, override_settings={"sd_vae": "Automatic"}) == plain
    assert client.post("/sdapi/v1/options", json={"sd_vae": "other.vae.safetensors"}).status_code == 200
    try:
        assert client.get("/sdapi/v1/options").json()["sd_vae"] == "other.vae.safetensors"
        assert pixels(client) == other
    finally:
        client.post("/sdapi/v1/options", json={"sd_vae": "Automatic"})
    assert pixels(client) == plain


@pytest.mark.parametrize("value", ["nope.safetensors", "../vae/other.vae.safetensors", 3])
def test_an_unknown_vae_is_a_422_that_lists_the_choices(client: TestClient, value: object) -> None:
    answer = client.post("/sdapi/v1/txt2img", json={**SMALL, "override_settings": {"sd_vae": value}})
    assert answer.status_code == 422 and "other.vae.safetensors" in answer.text
    assert client.post("/sdapi/v1/options", json={"sd_vae": value}).status_code == 422


def test_refresh_picks_up_new_files_and_forgets_removed_ones(
    client: TestClient, model: LoadedModel, dirs: AssetDirs
) -> None:
    assert dirs.lora is not None and dirs.vae is not None and dirs.embeddings is not None
    write_lora(dirs.lora / "late.safetensors", model.pipeline, seed=11)
    shutil.copy(dirs.vae / "other.vae.safetensors", dirs.vae / "late.vae.safetensors")
    write_embedding_pt(dirs.embeddings / "latetoken.pt", torch.randn(1, 32) * 4)
    before = pixels(client, prompt="a red cube latetoken <lora:late:1>")
    for route in ("refresh-loras", "refresh-vae", "refresh-embeddings", "refresh-checkpoints"):
        answer = client.post(f"/sdapi/v1/{route}")
        assert answer.status_code == 200 and answer.json() is None, route
    assert "late" in [lora["name"] for lora in client.get("/sdapi/v1/loras").json()]
    assert "late.vae.safetensors" in [vae["model_name"] for vae in client.get("/sdapi/v1/sd-vae").json()]
    assert "latetoken" in client.get("/sdapi/v1/embeddings").json()["loaded"]
    assert pixels(client, prompt="a red cube latetoken <lora:late:1>") != before
    (dirs.lora / "late.safetensors").unlink()
    client.post("/sdapi/v1/refresh-loras")
    assert "late" not in [lora["name"] for lora in client.get("/sdapi/v1/loras").json()]


def test_only_requests_with_the_same_loras_and_vae_share_a_batch() -> None:
    plain = BatchKey("txt2img", 64, 64, 2, "Euler", "automatic", 7.0)
    keys = [
        plain,
        replace(plain, networks=(("a", 1.0, 1.0),)),
        replace(plain, networks=(("a", 0.5, 0.5),)),
        replace(plain, vae="v"),
    ]
    queue = [ImageTask(Job(f"j{i}", key, 1), 0, "", "", i, 0, 0.0, None) for i, key in enumerate(keys * 2)]
    while queue:
        batch = take_batch(queue, 8)
        assert len({task.key for task in batch}) == 1 and len(batch) == 2
        queue = [task for task in queue if task not in batch]


def test_an_image_with_a_lora_is_the_same_alone_and_batched_with_others(model: LoadedModel, dirs: AssetDirs) -> None:
    library = AssetLibrary(dirs)
    library.attach(model.pipeline)
    engine = Engine(model, assets=library)
    key = replace(BatchKey("txt2img", 64, 64, 2, "Euler", "automatic", 7.0), networks=(("style", 0.8, 0.6),))

    def task(seed: int, prompt: str, task_key: BatchKey = key) -> ImageTask:
        return ImageTask(Job(f"j{seed}", task_key, 1), 0, prompt, "", seed, 0, 0.0, None)

    plain_key = replace(key, networks=())
    library.hold(key.networks)
    plain_before = engine.run([task(3, "a house", plain_key)]).images[0]
    alone = engine.run([task(1, "a red cube")]).images[0]
    batched = engine.run([task(2, "a blue ball"), task(1, "a red cube"), task(5, "shinytoken")]).images[1]
    assert isinstance(alone, Image.Image) and isinstance(batched, Image.Image)
    assert alone.tobytes() == batched.tobytes()
    plain_after = engine.run([task(4, "x", plain_key), task(3, "a house", plain_key)]).images[1]
    assert isinstance(plain_before, Image.Image) and isinstance(plain_after, Image.Image)
    assert plain_before.tobytes() == plain_after.tobytes()


def test_a_batch_on_the_device_thread_reads_no_lora_file(
    model: LoadedModel, dirs: AssetDirs, monkeypatch: pytest.MonkeyPatch
) -> None:
    library = AssetLibrary(dirs)
    library.attach(model.pipeline)
    engine = Engine(model, assets=library)
    key = replace(BatchKey("txt2img", 64, 64, 2, "Euler", "automatic", 7.0), networks=(("style", 1.0, 1.0),))

    def image(task_key: BatchKey) -> bytes:
        made = engine.run([ImageTask(Job("j", task_key, 1), 0, "a red cube", "", 1, 0, 0.0, None)]).images[0]
        assert isinstance(made, Image.Image)
        return made.tobytes()

    plain = image(replace(key, networks=()))
    library.hold(key.networks)  # as the service does before it queues the request's batches

    def read_on_the_device_thread(*_: object) -> None:
        raise AssertionError("a LoRA file was read during a batch")

    monkeypatch.setattr(lora_module, "read_lora", read_on_the_device_thread)
    assert image(key) != plain
    library.release(key.networks)


def test_a_prompt_of_thousands_of_tags_reads_each_file_once_and_logs_unknown_names_once(
    dirs: AssetDirs, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    library = AssetLibrary(dirs)
    reads: list[str] = []
    real = lora_module.read_lora
    monkeypatch.setattr(lora_module, "read_lora", lambda path, name: reads.append(name) or real(path, name))
    prompt = "".join(f"<lora:{name}:0.01>" for name in ["style", "other", "stylish", "gone", "gone"] * 150)
    with caplog.at_level(logging.WARNING, logger="gpuroam.worker.library"):
        networks = library.networks(parse_prompt(prompt))
    assert [name for name, _, _ in networks] == ["style", "other"]
    assert [te for _, te, _ in networks] == pytest.approx([3.0, 1.5]), "the file's name and alias add up"
    assert [record.msg for record in caplog.records] == ["LoRA not found"]
    library.hold(networks)
    library.hold(networks)
    assert sorted(reads) == ["other", "style"]


def test_a_vae_load_that_fails_part_way_is_redone_before_the_next_batch(
    model: LoadedModel, dirs: AssetDirs, monkeypatch: pytest.MonkeyPatch
) -> None:
    library = AssetLibrary(dirs)
    library.attach(model.pipeline)
    loads: list[str] = []
    real = vae_module.load_into

    def part_way(module: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
        raise RuntimeError("out of memory half way through the copy")

    monkeypatch.setattr(vae_module, "load_into", part_way)
    with pytest.raises(RuntimeError), library.applied((), "other.vae.safetensors", []):
        pass
    monkeypatch.setattr(vae_module, "load_into", lambda module, state: loads.append("own") or real(module, state))
    with library.applied((), "", []):
        pass
    assert loads == ["own"], "the half-swapped VAE is not taken for the checkpoint's own"


def test_every_vector_of_a_capitalised_multi_vector_embedding_is_used(client: TestClient, dirs: AssetDirs) -> None:
    assert dirs.embeddings is not None
    path, first = dirs.embeddings / "ShinyTok.pt", torch.randn(1, 32) * 4
    try:
        images = []
        for second in (torch.zeros(1, 32), torch.ones(1, 32) * 8):
            write_embedding_pt(path, torch.cat([first, second]))
            client.post("/sdapi/v1/refresh-embeddings")
            images.append(pixels(client, prompt="a red cube ShinyTok"))
        assert images[0] != images[1], "the second vector counts"
        assert pixels(client, prompt="a red cube shinytok") == images[1], "in any case, as CLIP reads it"
        assert pixels(client, prompt="a red cube", negative_prompt="ShinyTok") != pixels(client), "negatives too"
    finally:
        path.unlink()
        client.post("/sdapi/v1/refresh-embeddings")


def test_an_embedding_matches_whole_words_only_and_a_removed_one_is_used_no_more(
    client: TestClient, dirs: AssetDirs
) -> None:
    assert dirs.embeddings is not None
    prompt = "a red cube gonetoken"
    before = pixels(client, prompt=prompt)
    inside = pixels(client, prompt="a red cube gonetokens")
    write_embedding_pt(dirs.embeddings / "gonetoken.pt", torch.randn(2, 32) * 4)
    client.post("/sdapi/v1/refresh-embeddings")
    assert pixels(client, prompt=prompt) != before
    assert pixels(client, prompt="a red cube gonetokens") == inside, "not inside another word"
    (dirs.embeddings / "gonetoken.pt").unlink()
    client.post("/sdapi/v1/refresh-embeddings")
    assert pixels(client, prompt=prompt) == before


def test_a_malformed_lora_file_is_skipped_with_a_log_line(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    key = "lora_unet_mid_block_attentions_0_proj_in"
    bad = {f"{key}.lora_up.weight": torch.zeros(8, 2), f"{key}.lora_down.weight": torch.zeros(2, 8)}
    save_file({**bad, f"{key}.alpha": torch.ones(3)}, str(tmp_path / "bad.safetensors"))
    library = AssetLibrary(AssetDirs(lora=tmp_path))
    networks = library.networks(parse_prompt("<lora:bad:1>"))
    with caplog.at_level(logging.ERROR, logger="gpuroam.worker.library"):
        library.hold(networks)
    assert [record.msg for record in caplog.records] == ["LoRA not loaded; the image is made without it"]
    with library.applied(networks, "", []):  # no pipeline attached: nothing to merge, and nothing raised
        pass
