"""Packages built ahead of time: exported and compiled once, loaded on the serving module's own weights."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from gpuroam.worker.aot import PackageMismatch, export, load
from gpuroam.worker.models import build_random_pipeline

Built = tuple[torch.nn.Module, torch.Tensor, Path, str]


@pytest.fixture(scope="module", params=["inductor", "eager"])
def decoder_package(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Built:
    """The tiny model's VAE decoder as a package of each backend (Inductor's: a C++ compile, about 15 s)."""
    decoder = build_random_pipeline("tiny").vae.decoder.eval()
    latents = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    path = export(decoder, ((latents,), {}), tmp_path_factory.mktemp("aot") / "decoder.pt2", request.param)
    return decoder, latents, path, request.param


def test_a_package_computes_what_the_module_does(decoder_package: Built) -> None:
    decoder, latents, path, backend = decoder_package
    assert path.is_file() and not list(path.parent.glob(".*tmp*")), "written whole, no temporary left"
    with torch.inference_mode():
        torch.testing.assert_close(load(path, decoder, backend)(latents), decoder(latents), rtol=1e-4, atol=1e-4)


def test_a_package_runs_on_the_modules_weights_as_they_change_in_place(decoder_package: Built) -> None:
    """A LoRA merge or a checkpoint switch writes the weights in place: the package sees it, as the eager
    module does, with no copy of its own (what Inductor derives from a weight is derived at run time)."""
    decoder, latents, path, backend = decoder_package
    runner = load(path, decoder, backend)
    for name in ("conv_out.bias", "conv_out.weight", "conv_in.weight"):
        with torch.inference_mode():
            before = runner(latents).clone()
            decoder.get_parameter(name).add_(0.5)
            try:
                after = runner(latents)
                torch.testing.assert_close(after, decoder(latents), rtol=1e-4, atol=1e-4, msg=name)
            finally:
                decoder.get_parameter(name).sub_(0.5)
        assert not torch.allclose(before, after), name


def test_a_package_for_other_tensors_is_refused_before_it_runs(decoder_package: Built, tmp_path: Path) -> None:
    _, _, path, backend = decoder_package
    with pytest.raises(PackageMismatch, match="built for other tensors"):
        load(path, build_random_pipeline("tiny").vae.encoder, backend)
    wider = build_random_pipeline("tiny").vae.decoder
    wider.conv_out = torch.nn.Conv2d(wider.conv_out.in_channels, 4, 3, padding=1)  # a resized tensor, same name
    with pytest.raises(PackageMismatch, match=r"conv_out\.weight"):
        load(path, wider, backend)
    lone = tmp_path / path.name
    lone.write_bytes(path.read_bytes())  # without the list of tensors it reads
    with pytest.raises(PackageMismatch, match="tensor list is missing"):
        load(lone, build_random_pipeline("tiny").vae.decoder, backend)
