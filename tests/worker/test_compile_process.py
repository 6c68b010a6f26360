"""The compile process: graphs built in a child of the worker, and what the worker sees when that fails."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from gpuroam.worker.compile_process import MAX_STARTS, CompileFailed, CompileProcess, ModuleSource

TINY = ModuleSource(
    model="tiny", device="cpu", dtype="float32", channels_last=False, fuse_qkv=True, token_rows=0
)  # token_rows 0: the table as the model has it


def test_a_graph_that_cannot_be_built_is_an_error_and_the_next_one_is_built(tmp_path: Path) -> None:
    process = CompileProcess(TINY, tmp_path / "cache", backend="eager")
    latents = ((torch.randn(1, 4, 8, 8),), {})
    try:
        with pytest.raises(CompileFailed, match="KeyError"):
            process.build("no such module", latents, tmp_path / "nothing.pt2")
        built = process.build("vae decoder", latents, tmp_path / "decoder.pt2")
        assert built.is_file() and (tmp_path / "decoder.pt2.json").is_file()
        assert not list(tmp_path.glob("*.inputs")), "the example handed over is removed"
        assert process._starts == 1, "one child for both"
    finally:
        process.close()
    assert process._process is None


def test_a_child_that_keeps_dying_is_given_up_and_says_so(tmp_path: Path) -> None:
    """A child that cannot even load its model (out of memory, say): each build fails at once with the
    exit, and after a few starts none is started again; the worker's eager path keeps serving."""
    broken = CompileProcess(ModuleSource(**{**vars(TINY), "model": str(tmp_path / "missing.safetensors")}),
                            tmp_path / "cache", backend="eager")  # fmt: skip
    example = ((torch.randn(1, 4, 8, 8),), {})
    for _ in range(MAX_STARTS):
        with pytest.raises(CompileFailed, match="exited"):
            broken.build("vae decoder", example, tmp_path / "decoder.pt2")
    with pytest.raises(CompileFailed, match=f"exited {MAX_STARTS} times"):
        broken.build("vae decoder", example, tmp_path / "decoder.pt2")
