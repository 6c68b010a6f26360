"""LoRA files: read in kohya's and diffusers' layouts, merged into the weights for a batch and taken out exactly."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
import torch
from asset_files import lora_state, write_lora
from safetensors.torch import save_file

from gpuroam.worker.graphs import WeightWrites
from gpuroam.worker.lora import LoraError, layer_index, merged, read_lora
from gpuroam.worker.models import build_random_pipeline


@pytest.fixture(scope="module")
def pipeline():  # type: ignore[no-untyped-def]
    return build_random_pipeline("tiny")


def weights(pipeline) -> dict[str, torch.Tensor]:  # type: ignore[no-untyped-def]
    return {
        f"{part}.{k}": v.clone()
        for part in ("unet", "text_encoder")
        for k, v in getattr(pipeline, part).state_dict().items()
    }


def test_merged_changes_the_weights_and_puts_them_back_bit_for_bit(pipeline, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    network = read_lora(write_lora(tmp_path / "a.safetensors", pipeline), "a")
    before = weights(pipeline)
    with merged(pipeline, [(network, 1.0, 0.5)], layer_index(pipeline)):
        during = weights(pipeline)
    after = weights(pipeline)
    changed = [key for key in before if not torch.equal(before[key], during[key])]
    assert any(key.startswith("unet.") for key in changed) and any(key.startswith("text_encoder.") for key in changed)
    assert all(torch.equal(before[key], after[key]) for key in before)


def test_the_delta_is_up_times_down_times_alpha_over_rank_times_the_multiplier(pipeline, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    layer = "down_blocks.3.attentions.0.transformer_blocks.0.attn1.to_q"
    module = pipeline.unet.get_submodule(layer)
    key = "lora_unet_" + layer.replace(".", "_")
    up, down = torch.randn(module.out_features, 4), torch.randn(4, module.in_features)
    save_file(
        {f"{key}.lora_up.weight": up, f"{key}.lora_down.weight": down, f"{key}.alpha": torch.tensor(2.0)},
        str(tmp_path / "one.safetensors"),
    )
    before = module.weight.clone()
    with merged(pipeline, [(read_lora(tmp_path / "one.safetensors", "one"), 9.0, 0.3)], layer_index(pipeline)):
        torch.testing.assert_close(module.weight - before, up @ down * (2.0 / 4) * 0.3)


def test_diffusers_and_kohya_layouts_of_the_same_lora_merge_the_same(pipeline, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    kohya = lora_state(pipeline, seed=3)
    diffusers = {}
    for key, value in kohya.items():
        layer, role = key.split(".", 1)
        part, prefix = ("unet", "lora_unet_") if layer.startswith("lora_unet_") else ("text_encoder", "lora_te_")
        module = next(
            n
            for n, _ in getattr(pipeline, part).named_modules()
            if prefix + n.replace(".", "_") == layer.replace("lora_te_text_model_", "lora_te_")
        )
        suffix = {"lora_down.weight": "lora_A.weight", "lora_up.weight": "lora_B.weight", "alpha": "alpha"}[role]
        diffusers[f"{part}.{'text_model.' if part == 'text_encoder' else ''}{module}.{suffix}"] = value
    assert_same_merge(pipeline, tmp_path, kohya, diffusers)


def test_ldm_numbered_unet_names_reach_the_same_layers(pipeline) -> None:  # type: ignore[no-untyped-def]
    index = layer_index(pipeline)
    pairs = {
        "down_blocks_3_attentions_0_transformer_blocks_0_attn2_to_k": "input_blocks_7_1_transformer_blocks_0_attn2_to_k",
        "up_blocks_0_attentions_1_proj_out": "output_blocks_1_1_proj_out",
        "mid_block_attentions_0_transformer_blocks_0_attn1_to_v": "middle_block_1_transformer_blocks_0_attn1_to_v",
        "down_blocks_1_resnets_0_conv1": "input_blocks_3_0_in_layers_2",
    }
    for diffusers, ldm in pairs.items():
        assert index["lora_unet_" + diffusers].module is index["lora_unet_" + ldm].module, ldm


def test_fused_attention_projections_follow_the_merge(tmp_path: Path) -> None:
    plain, fused = build_random_pipeline("tiny"), build_random_pipeline("tiny")
    fused.unet.fuse_qkv_projections()
    network = read_lora(write_lora(tmp_path / "a.safetensors", plain), "a")
    sample, timestep, context = torch.randn(1, 4, 8, 8), torch.tensor(10.0), torch.randn(1, 77, 32)
    outputs = []
    for pipe in (plain, fused):
        with torch.no_grad(), merged(pipe, [(network, 1.0, 1.0)], layer_index(pipe)):
            outputs.append(pipe.unet(sample, timestep, context).sample)
    torch.testing.assert_close(outputs[0], outputs[1], rtol=1e-4, atol=1e-4)
    with torch.no_grad():
        unmerged = fused.unet(sample, timestep, context).sample
    assert not torch.allclose(unmerged, outputs[1], atol=1e-3), "the fused layers were put back too"


def test_a_file_that_is_not_a_lora_says_so(tmp_path: Path) -> None:
    save_file({"something.weight": torch.zeros(2)}, str(tmp_path / "x.safetensors"))
    with pytest.raises(LoraError, match="no LoRA layers"):
        read_lora(tmp_path / "x.safetensors", "x")
    (tmp_path / "bad.pt").write_bytes(b"not a pickle")
    with pytest.raises(LoraError, match="not a readable LoRA file"):
        read_lora(tmp_path / "bad.pt", "bad")


def _diffusers_key(part: str, module: str, role: str, form: str) -> str:
    """The key of a layer's `role` (down or up) in one of diffusers' own (pre-PEFT) layouts."""
    parent, leaf = module.rsplit(".", 1)
    if part == "text_encoder":
        module, parent = f"text_model.{module}", f"text_model.{parent}"
        if form == "layer":
            return f"text_encoder.{module}.lora_linear_layer.{role}.weight"
        return f"text_encoder.{parent}.to_{leaf[0]}_lora.{role}.weight"  # q_proj -> to_q_lora
    if form == "layer":
        return f"unet.{module}.lora_layer.{role}.weight"
    prefix = "unet." if form == "processor" else ""  # save_attn_procs left the prefix out
    return f"{prefix}{parent}.processor.{leaf}_lora.{role}.weight"


@pytest.mark.parametrize("form", ["processor", "unprefixed processor", "layer"])
def test_diffusers_older_layouts_merge_as_kohyas(pipeline, tmp_path: Path, form: str) -> None:  # type: ignore[no-untyped-def]
    kohya = lora_state(pipeline, seed=4, alpha=2.0)  # alpha = rank: the scale 1 of a file without alphas
    names = {
        prefix + name.replace(".", "_"): (part, name)
        for part, prefix in (("unet", "lora_unet_"), ("text_encoder", "lora_te_text_model_"))
        for name, _ in getattr(pipeline, part).named_modules()
    }
    old = {}
    for key, value in kohya.items():
        layer, role = key.split(".", 1)
        if role != "alpha":
            part, module = names[layer]
            old[_diffusers_key(part, module, "down" if role.startswith("lora_down") else "up", form)] = value
    assert_same_merge(pipeline, tmp_path, kohya, old)


@pytest.mark.parametrize(
    ("up", "down", "alpha", "says"),
    [
        (torch.zeros(8, 2), torch.zeros(3, 8), torch.tensor(1.0), "ranks"),
        (torch.zeros(8), torch.zeros(2, 8), torch.tensor(1.0), "ranks"),
        (torch.zeros(8, 2), torch.zeros(2, 8), torch.ones(2), "alpha"),
    ],
)
def test_a_malformed_layer_is_a_lora_error_not_a_failed_batch(
    tmp_path: Path, up: torch.Tensor, down: torch.Tensor, alpha: torch.Tensor, says: str
) -> None:
    key = "lora_unet_mid_block_attentions_0_proj_in"
    save_file(
        {f"{key}.lora_up.weight": up, f"{key}.lora_down.weight": down, f"{key}.alpha": alpha},
        str(tmp_path / "bad.safetensors"),
    )
    with pytest.raises(LoraError, match=says):
        read_lora(tmp_path / "bad.safetensors", "bad")


def test_a_merge_waits_while_the_compile_thread_checks_a_graph(pipeline, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    network = read_lora(write_lora(tmp_path / "a.safetensors", pipeline), "a")
    weights, merging = WeightWrites(), threading.Event()

    def merge() -> None:
        with merged(pipeline, [(network, 1.0, 1.0)], layer_index(pipeline), weights):
            merging.set()

    with weights.steady():  # a check between its two runs
        thread = threading.Thread(target=merge)
        thread.start()
        assert not merging.wait(0.3), "no weight was changed during the check"
    thread.join(5)
    assert merging.is_set() and weights.version == 2, "merged and restored, each a write"


def assert_same_merge(pipeline, folder: Path, first: dict, second: dict) -> None:  # type: ignore[no-untyped-def]
    """Two LoRA files in different key layouts change every weight of the pipeline the same way."""
    merges = []
    for name, tensors in (("first", first), ("second", second)):
        save_file(tensors, str(folder / f"{name}.safetensors"))
        with merged(pipeline, [(read_lora(folder / f"{name}.safetensors", name), 1.0, 1.0)], layer_index(pipeline)):
            merges.append(weights(pipeline))
    assert all(torch.equal(merges[0][key], merges[1][key]) for key in merges[0])
