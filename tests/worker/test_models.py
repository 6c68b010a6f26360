import pytest
import torch

from gpuroam.worker.models import _sd15_components, build_random_pipeline, load_model, resolve_device, weights_sha256


def test_tiny_model_is_the_same_on_every_build() -> None:
    assert weights_sha256(build_random_pipeline("tiny")) == weights_sha256(build_random_pipeline("tiny"))
    assert weights_sha256(build_random_pipeline("tiny")) != weights_sha256(build_random_pipeline("tiny", seed=1))


def test_sd15_random_has_the_published_architecture() -> None:
    with torch.device("meta"):
        components = _sd15_components()
    counts = {name: sum(p.numel() for p in module.parameters()) for name, module in components.items()}
    assert counts == {"unet": 859_520_964, "vae": 83_653_863, "text_encoder": 123_060_480}


def test_device_choice_errors_say_what_to_use() -> None:
    assert resolve_device("cpu").type == "cpu"
    with pytest.raises(ValueError, match="use auto, cpu or cuda"):
        resolve_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="no CUDA GPU is visible"):
            resolve_device("cuda")


def test_loaded_tiny_model_names_itself_as_a1111_does() -> None:
    model = load_model("tiny", torch.device("cpu"))
    assert model.title == f"tiny [{model.sha256[:10]}]" and model.filename == "builtin:tiny"
    assert not model.is_sdxl
