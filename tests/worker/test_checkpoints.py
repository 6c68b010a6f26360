"""Checkpoint loading, offline, on tiny models written in both diffusers and original LDM layout.

No real checkpoint can be downloaded, so each test builds tiny SD-shaped models, writes them
as a diffusers folder or as one .safetensors/.ckpt in the original key layout (the reverse of
diffusers' LDM conversion, in ldm_checkpoints.py), loads them back and compares weights and images.
"""

from __future__ import annotations

import json
import socket
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from diffusers import (
    AutoencoderKL,
    DiffusionPipeline,
    StableDiffusionPipeline,
    StableDiffusionXLPipeline,
    UNet2DConditionModel,
)
from ldm_checkpoints import (
    assert_same_weights,
    generate,
    tiny_pipeline,
    to_ldm_state_dict,
    write_config_folder,
)
from safetensors.torch import save_file
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

from gpuroam.worker import checkpoints
from gpuroam.worker.checkpoints import (
    CONFIGS_DIR,
    CheckpointError,
    CheckpointKind,
    check_unet_matches_config,
    detect_checkpoint,
    load_checkpoint,
    load_single_file,
    read_tensor_shapes,
    sidecar_prediction_type,
)
from gpuroam.worker.tokenizer import EOS


@pytest.fixture(autouse=True)
def no_network(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Any attempt to reach the Hub (or anything else) fails the test, even if a library swallows it."""
    attempts: list[tuple[Any, ...]] = []

    def refuse(*args: Any, **kwargs: Any) -> None:
        attempts.append(args)
        raise OSError(f"network access attempted in a test: {args!r}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    yield
    assert attempts == [], "the loader tried to use the network"


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    """Tiny models gain nothing from threads, and OpenMP threads stall badly on a busy machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# --- round trips --------------------------------------------------------------------------------


@pytest.mark.parametrize("family", ["sd1", "sd2", "sdxl"])
def test_single_file_round_trip(family: str, tmp_path: Path) -> None:
    original = tiny_pipeline(family)
    config_dir = write_config_folder(original, tmp_path / "config")
    path = tmp_path / "model.safetensors"
    save_file(to_ldm_state_dict(original, family), str(path))

    loaded = load_single_file(path, torch.float32, config_dir=config_dir)
    assert not detect_checkpoint(read_tensor_shapes(path)).inpainting

    assert type(loaded) is type(original)
    assert_same_weights(loaded, original)
    want_prediction = "v_prediction" if family == "sd2" else "epsilon"
    assert loaded.scheduler.config.prediction_type == want_prediction
    assert loaded.tokenizer.pad_token == ("!" if family == "sd2" else EOS)
    if family == "sdxl":
        assert loaded.tokenizer_2.pad_token == "!"
    else:
        assert loaded.safety_checker is None
    image = generate(loaded)
    assert image.shape == (1, 64, 64, 3) and np.isfinite(image).all()
    np.testing.assert_allclose(image, generate(original), atol=1e-5)


def test_ckpt_round_trip_with_nested_state_dict(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    original = tiny_pipeline("sd1")
    config_dir = write_config_folder(original, tmp_path / "config")
    path = tmp_path / "model.ckpt"
    torch.save({"state_dict": to_ldm_state_dict(original, "sd1"), "global_step": 470000}, path)

    real_load = torch.load
    calls: list[dict[str, Any]] = []

    def spy(*args: Any, **kwargs: Any) -> Any:
        calls.append(kwargs)
        return real_load(*args, **kwargs)

    monkeypatch.setattr(torch, "load", spy)
    loaded = load_single_file(path, torch.float32, config_dir=config_dir)

    assert_same_weights(loaded, original)
    assert calls and all(call.get("weights_only") is True for call in calls)


def test_ckpt_with_python_objects_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {"model.diffusion_model.x": torch.zeros(1)}, "callback": Path("/")}, path)
    with pytest.raises(CheckpointError, match="weights_only=True refused"):
        load_checkpoint(path, torch.float32)


def test_sidecar_yaml_sets_prediction_type(tmp_path: Path) -> None:
    original = tiny_pipeline("sd2")
    config_dir = write_config_folder(original, tmp_path / "config")
    path = tmp_path / "sd21-base.safetensors"
    save_file(to_ldm_state_dict(original, "sd2"), str(path))
    (tmp_path / "sd21-base.yaml").write_text("model:\n  params:\n    linear_start: 0.00085\n")

    loaded = load_single_file(path, torch.float32, config_dir=config_dir)

    assert loaded.scheduler.config.prediction_type == "epsilon"


def test_dtype_is_applied(tmp_path: Path) -> None:
    original = tiny_pipeline("sd1")
    config_dir = write_config_folder(original, tmp_path / "config")
    path = tmp_path / "model.safetensors"
    save_file(to_ldm_state_dict(original, "sd1"), str(path))

    loaded = load_single_file(path, torch.float16, config_dir=config_dir)

    assert {loaded.unet.dtype, loaded.vae.dtype, loaded.text_encoder.dtype} == {torch.float16}


def test_weights_are_read_into_place_not_initialised_first(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each module is built without weights and takes the file's tensors: no random initialisation
    (seconds and a full extra copy for an SD 1.5-size model, bench/model_load.py)."""
    original = tiny_pipeline("sdxl")
    config_dir = write_config_folder(original, tmp_path / "config")
    path = tmp_path / "model.safetensors"
    save_file(to_ldm_state_dict(original, "sdxl"), str(path))
    initialised: list[tuple[int, ...]] = []

    def counting(real: Callable[..., torch.Tensor]) -> Callable[..., torch.Tensor]:
        def init(tensor: torch.Tensor, *args: object, **kwargs: object) -> torch.Tensor:
            if not tensor.is_meta:
                initialised.append(tuple(tensor.shape))
            return real(tensor, *args, **kwargs)

        return init

    for name in ("normal_", "uniform_", "kaiming_uniform_", "zeros_", "ones_"):
        monkeypatch.setattr(torch.nn.init, name, counting(getattr(torch.nn.init, name)))
    for name in ("normal_", "uniform_"):
        monkeypatch.setattr(torch.Tensor, name, counting(getattr(torch.Tensor, name)))
    loaded = load_single_file(path, torch.float32, config_dir=config_dir)
    assert initialised == [], "weights were initialised before the file's were loaded"
    assert_same_weights(loaded, original)


@pytest.mark.parametrize("family", ["sd1", "sdxl"])
def test_diffusers_folder_round_trip(family: str, tmp_path: Path) -> None:
    original = tiny_pipeline(family)
    original.save_pretrained(tmp_path / "model")
    if family == "sd1":  # as published: a safety checker listed (here without its weights) and required
        index_file = tmp_path / "model" / "model_index.json"
        index = json.loads(index_file.read_text())
        index["safety_checker"] = ["stable_diffusion", "StableDiffusionSafetyChecker"]
        index["requires_safety_checker"] = True
        index_file.write_text(json.dumps(index))

    loaded = load_checkpoint(tmp_path / "model", torch.float32)

    assert type(loaded) is type(original)
    assert_same_weights(loaded, original)
    if family == "sd1":
        assert loaded.safety_checker is None
    np.testing.assert_allclose(generate(loaded), generate(original), atol=1e-5)


# --- detection on synthetic state dicts (real key names and shapes, no weights) -----------------

ATTN2_K = "model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight"
ATTN2_K_XL = "model.diffusion_model.input_blocks.4.1.transformer_blocks.0.attn2.to_k.weight"
VAE_KEY = "first_stage_model.decoder.conv_out.weight"


def sd1_shapes() -> dict[str, tuple[int, ...]]:
    return {
        checkpoints.UNET_CONV_IN: (320, 4, 3, 3),
        ATTN2_K: (320, 768),
        checkpoints.SD1_CLIP: (77, 768),
        VAE_KEY: (3, 128, 3, 3),
    }


def sd2_shapes() -> dict[str, tuple[int, ...]]:
    return {
        checkpoints.UNET_CONV_IN: (320, 4, 3, 3),
        ATTN2_K: (320, 1024),
        checkpoints.SD2_OPEN_CLIP: (49408, 1024),
        "cond_stage_model.model.transformer.resblocks.23.mlp.c_proj.bias": (1024,),
        VAE_KEY: (3, 128, 3, 3),
    }


def sdxl_shapes() -> dict[str, tuple[int, ...]]:
    return {
        checkpoints.UNET_CONV_IN: (320, 4, 3, 3),
        ATTN2_K_XL: (640, 2048),
        "model.diffusion_model.label_emb.0.0.weight": (1280, 2816),
        checkpoints.SDXL_CLIP: (77, 768),
        checkpoints.SDXL_OPEN_CLIP: (77, 1280),
        VAE_KEY: (3, 128, 3, 3),
    }


@pytest.mark.parametrize(
    ("shapes", "want"),
    [
        (sd1_shapes(), CheckpointKind("sd1", "epsilon")),
        (sd2_shapes(), CheckpointKind("sd2", "v_prediction")),
        (sdxl_shapes(), CheckpointKind("sdxl", "epsilon")),
        (sdxl_shapes() | {"v_pred": (0,)}, CheckpointKind("sdxl", "v_prediction")),
        (sd1_shapes() | {"v_pred": (0,)}, CheckpointKind("sd1", "v_prediction")),
    ],
)
def test_detect(shapes: dict[str, tuple[int, ...]], want: CheckpointKind) -> None:
    kind = detect_checkpoint(shapes)
    assert kind == want
    check_unet_matches_config(shapes, CONFIGS_DIR / kind.family, kind, source="x")  # bundled config fits


def test_detect_reads_safetensors_header(tmp_path: Path) -> None:
    path = tmp_path / "sdxl.safetensors"
    save_file({key: torch.zeros(shape, dtype=torch.float16) for key, shape in sdxl_shapes().items()}, str(path))
    assert read_tensor_shapes(path) == sdxl_shapes()
    assert detect_checkpoint(read_tensor_shapes(path)).family == "sdxl"


@pytest.mark.parametrize("family", ["sd1", "sdxl"])
def test_an_inpainting_checkpoint_loads_with_its_nine_channel_unet(family: str, tmp_path: Path) -> None:
    """The bundled configs are the text-to-image models': the UNet's input width comes from the file."""
    config_dir = write_config_folder(tiny_pipeline(family), tmp_path / "config")
    original = tiny_pipeline(family, in_channels=9)
    path = tmp_path / "inpainting.safetensors"
    save_file(to_ldm_state_dict(original, family), str(path))
    kind = detect_checkpoint(read_tensor_shapes(path))
    assert kind.inpainting and "inpainting" in kind.label
    loaded = load_single_file(path, torch.float32, config_dir=config_dir)
    assert loaded.unet.config.in_channels == 9
    assert_same_weights(loaded, original)


@pytest.mark.parametrize(
    ("shapes", "message"),
    [
        ({"weight": (3, 3)}, r"not a Stable Diffusion checkpoint: no UNet keys .* in x; pass a SD 1.x/2.x/SDXL"),
        ({"down_blocks.0.resnets.0.conv1.weight": (320, 320, 3, 3)}, "no UNet keys"),
        (sd1_shapes() | {checkpoints.UNET_CONV_IN: (320, 5, 3, 3)}, "a UNet with 5 input channels"),
        ({k: v for k, v in sd1_shapes().items() if k != checkpoints.UNET_CONV_IN}, "incomplete"),
        (sd2_shapes() | {checkpoints.UNET_CONV_IN: (320, 8, 3, 3)}, "instruct-pix2pix"),
        (
            {
                checkpoints.UNET_CONV_IN: (384, 4, 3, 3),
                "conditioner.embedders.0.model.positional_embedding": (77, 1280),
            },
            "SDXL refiner",
        ),
        ({k: v for k, v in sd1_shapes().items() if not k.startswith("cond_stage")}, "no text encoder"),
        ({k: v for k, v in sd1_shapes().items() if k != VAE_KEY}, r"lacks first_stage_model\.\* \(the VAE\)"),
        (
            {k: v for k, v in sd1_shapes().items() if k != checkpoints.SD1_CLIP}
            | {checkpoints.SD1_CLIP_OLD_LAYOUT: (77, 768)},
            "old layout",
        ),
    ],
)
def test_detect_rejects(shapes: dict[str, tuple[int, ...]], message: str) -> None:
    with pytest.raises(CheckpointError, match=message):
        detect_checkpoint(shapes, source="x")


def test_unet_that_does_not_fit_the_family_config() -> None:
    shapes = sd1_shapes() | {ATTN2_K: (320, 1024)}  # SD 1 text encoder, SD 2 UNet
    kind = detect_checkpoint(shapes)
    with pytest.raises(CheckpointError, match="cross-attention width is \\[1024\\], not 768"):
        check_unet_matches_config(shapes, CONFIGS_DIR / "sd1", kind, source="x")


def test_sidecar_yaml(tmp_path: Path) -> None:
    path = tmp_path / "model.safetensors"
    assert sidecar_prediction_type(path) is None
    (tmp_path / "model.yaml").write_text('model:\n  params:\n    parameterization: "v"\n')
    assert sidecar_prediction_type(path) == "v_prediction"
    (tmp_path / "model.yaml").write_text("model:\n  params:\n    image_size: 64\n")
    assert sidecar_prediction_type(path) == "epsilon"
    for broken in ("just text", "model:\n  params:\n", "model: [1]", "model: {"):
        (tmp_path / "model.yaml").write_text(broken)
        with pytest.raises(CheckpointError, match="model.yaml is not an LDM model config"):
            sidecar_prediction_type(path)


# --- wiring to the bundled configs (real sizes are too big to load in a unit test) --------------


@pytest.mark.parametrize(
    ("shapes", "pipeline_class", "family", "pads"),
    [
        (sd1_shapes(), StableDiffusionPipeline, "sd1", {"tokenizer": EOS}),
        (sd2_shapes(), StableDiffusionPipeline, "sd2", {"tokenizer": "!"}),
        (sdxl_shapes(), StableDiffusionXLPipeline, "sdxl", {"tokenizer": EOS, "tokenizer_2": "!"}),
    ],
)
def test_load_checkpoint_uses_bundled_config(
    shapes: dict[str, tuple[int, ...]],
    pipeline_class: type[DiffusionPipeline],
    family: str,
    pads: dict[str, str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    path = tmp_path / f"{family}.safetensors"
    save_file({key: torch.zeros(shape, dtype=torch.float16) for key, shape in shapes.items()}, str(path))
    seen: dict[str, Any] = {}

    def fake_from_single_file(cls: type, link: str, **kwargs: Any) -> str:
        seen.update(cls=cls, link=link, **kwargs)
        return "pipeline"

    monkeypatch.setattr(pipeline_class, "from_single_file", classmethod(fake_from_single_file))
    assert load_checkpoint(path, torch.float16) == "pipeline"

    assert seen["cls"] is pipeline_class and seen["link"] == str(path)
    assert seen["config"] == str(CONFIGS_DIR / family)
    assert seen["local_files_only"] is True and seen["dtype"] is torch.float16
    for name, pad in pads.items():
        assert seen[name].pad_token == pad
    prediction = "v_prediction" if family == "sd2" else "epsilon"
    assert seen["scheduler"].config.prediction_type == prediction
    if family != "sdxl":
        assert seen["safety_checker"] is None and seen["requires_safety_checker"] is False


# --- bundled configs are the published ones ------------------------------------------------------


def _count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


@pytest.mark.parametrize(
    ("family", "unet_params", "text_params"),
    [
        ("sd1", 859_520_964, [123_060_480]),
        ("sd2", 865_910_724, [340_387_840]),
        ("sdxl", 2_567_463_684, [123_060_480, 694_659_840]),
    ],
)
def test_bundled_configs_build_the_published_architectures(
    family: str, unet_params: int, text_params: list[int]
) -> None:
    """Parameter counts of SD 1.5, SD 2.1 and SDXL base 1.0 as released (meta device: no memory)."""
    folder = CONFIGS_DIR / family
    index = json.loads((folder / "model_index.json").read_text())
    with torch.device("meta"):
        unet = UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(folder / "unet"))
        vae = AutoencoderKL.from_config(AutoencoderKL.load_config(folder / "vae"))
        encoders = [CLIPTextModel(CLIPTextConfig.from_pretrained(folder / "text_encoder"))]
        if family == "sdxl":
            config_2 = CLIPTextConfig.from_pretrained(folder / "text_encoder_2")
            encoders.append(CLIPTextModelWithProjection(config_2))
    assert _count(unet) == unet_params
    assert _count(vae) == 83_653_863
    assert [_count(e) for e in encoders] == text_params
    assert unet.config.cross_attention_dim == {"sd1": 768, "sd2": 1024, "sdxl": 2048}[family]
    scheduler = checkpoints.build_scheduler(folder, "epsilon").config
    assert (scheduler.beta_start, scheduler.beta_end, scheduler.beta_schedule) == (0.00085, 0.012, "scaled_linear")
    assert (scheduler.num_train_timesteps, scheduler.steps_offset) == (1000, 1)
    assert index["_class_name"] == ("StableDiffusionXLPipeline" if family == "sdxl" else "StableDiffusionPipeline")


# --- user-facing errors --------------------------------------------------------------------------


def test_missing_path(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match=r"checkpoint not found: .*nope\.safetensors; pass a SD 1\.x"):
        load_checkpoint(tmp_path / "nope.safetensors", torch.float32)


def test_wrong_suffix(tmp_path: Path) -> None:
    path = tmp_path / "model.bin"
    path.write_bytes(b"\0" * 16)
    with pytest.raises(CheckpointError, match=r"unsupported checkpoint file type '\.bin' .* \.safetensors/\.ckpt"):
        load_checkpoint(path, torch.float32)


def test_non_sd_safetensors(tmp_path: Path) -> None:
    path = tmp_path / "lora.safetensors"
    save_file({"lora_unet_down.alpha": torch.ones(1)}, str(path))
    with pytest.raises(CheckpointError, match="not a Stable Diffusion checkpoint: no UNet keys .* lora.safetensors"):
        load_checkpoint(path, torch.float32)


def test_corrupt_files(tmp_path: Path) -> None:
    for name in ("broken.safetensors", "broken.ckpt"):
        (tmp_path / name).write_bytes(b"this is not a checkpoint")
        with pytest.raises(CheckpointError, match="not a readable"):
            load_checkpoint(tmp_path / name, torch.float32)


def test_folder_errors(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="without model_index.json"):
        load_checkpoint(tmp_path, torch.float32)
    (tmp_path / "model_index.json").write_text(json.dumps({"_class_name": "FluxPipeline"}))
    with pytest.raises(CheckpointError, match="holds a FluxPipeline model; only StableDiffusionPipeline"):
        load_checkpoint(tmp_path, torch.float32)
