"""Where a worker's compiled graphs live, and how a missing one is had: the `Compile` each graph uses.

A graph's package is looked for in the compile cache first (this machine built it before, or another
machine of the same GPU type did and the directory travelled: worker/artefact.py); only a missing or
unusable one is asked of the compile process. Either way the serving process only loads it.
"""

from __future__ import annotations

import hashlib
import logging
import re
from pathlib import Path

import torch

from gpuroam.worker.aot import PackageMismatch, load
from gpuroam.worker.artefact import ArtefactKey, artefact_key, packages_dir
from gpuroam.worker.compile_process import CompileProcess, ModuleSource
from gpuroam.worker.graphs import Compile, Inputs, Runner, Signature
from gpuroam.worker.models import LoadedModel

log = logging.getLogger("gpuroam.worker.packages")


class Packages:
    """The packages of one worker: their directory (by artefact key) and the compile process."""

    def __init__(self, model: LoadedModel, compiler: str, cache_dir: Path, channels_last: bool, fuse_qkv: bool) -> None:
        self.backend, _, mode = compiler.partition(" ")
        self.key: ArtefactKey = artefact_key(model, compiler)
        self.directory = packages_dir(cache_dir, self.key)
        source = ModuleSource(
            model=model.filename.removeprefix("builtin:"),
            device=str(model.device),
            dtype=str(model.dtype).removeprefix("torch."),
            channels_last=channels_last,
            fuse_qkv=fuse_qkv,
            token_rows=model.pipeline.text_encoder.get_input_embeddings().weight.shape[0],
        )
        self.process = CompileProcess(source, cache_dir, self.backend, max_autotune=mode.startswith("max-autotune"))

    def compiler(self, name: str, module: torch.nn.Module) -> Compile:
        """The graphs of `module` (called `name`): loaded from the cache, or built by the compile process."""

        def compile(key: Signature, example: Inputs) -> Runner:
            path = self.directory / f"{_slug(name)}-{_digest(key)}.pt2"
            if path.is_file():
                try:
                    return load(path, module, self.backend)
                except (PackageMismatch, RuntimeError) as error:  # damaged, or built for other tensors
                    log.warning("package not used; building it again", extra={"path": str(path), "error": repr(error)})
            self.process.build(name, example, path)
            return load(path, module, self.backend)

        return compile

    def close(self) -> None:
        self.process.close()


def _slug(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


def _digest(key: Signature) -> str:
    """The signature's name on disk: the same in every process for the same call."""
    return hashlib.sha256(repr(key).encode()).hexdigest()[:20]
