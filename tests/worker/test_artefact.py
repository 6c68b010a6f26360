"""The compiled artefact: its key (an artefact built for anything else is refused, saying what differs),
and a worker on a fresh cache directory that starts from one another process built."""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
from dataclasses import asdict, replace
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from gpuroam.cli import app
from gpuroam.worker.artefact import ArtefactKey, artefact_key, load_artefact, model_architecture
from gpuroam.worker.models import LoadedModel, load_model


@pytest.fixture(scope="module")
def key(tiny_model: LoadedModel) -> ArtefactKey:
    return artefact_key(tiny_model, "inductor default")


def write(directory: Path, key: ArtefactKey) -> None:
    manifest = {"key": asdict(key), "sizes": [[512, 512]], "packages": 1}
    (directory / f"compiled-{key.digest}.json").write_text(json.dumps(manifest))


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("device", "cuda sm_80"),
        ("torch", "2.9.0+cu128"),
        ("model", "0" * 64),
        ("compiler", "inductor max-autotune-no-cudagraphs"),
    ],
)
def test_an_artefact_built_for_something_else_is_refused_saying_what_differs(
    tmp_path: Path, key: ArtefactKey, field: str, value: object, caplog: pytest.LogCaptureFixture
) -> None:
    write(tmp_path, replace(key, **{field: value}))
    with caplog.at_level(logging.WARNING, logger="gpuroam.worker.artefact"):
        assert load_artefact(tmp_path, key) is None
    (record,) = [r for r in caplog.records if "refused" in r.getMessage()]
    assert record.differs == {field: [value, getattr(key, field)]}


def test_an_unreadable_artefact_is_ignored_and_the_matching_one_found(
    tmp_path: Path, key: ArtefactKey, caplog: pytest.LogCaptureFixture
) -> None:
    (tmp_path / "compiled-garbage.json").write_text("{not json")
    write(tmp_path, key)
    with caplog.at_level(logging.WARNING, logger="gpuroam.worker.artefact"):
        found = load_artefact(tmp_path, key)
    assert found is not None and found.sizes == ((512, 512),) and found.path == tmp_path / f"compiled-{key.digest}"
    assert "unreadable" in " ".join(r.getMessage() for r in caplog.records)


def test_the_model_key_is_its_architecture_not_its_weights(tiny_model: LoadedModel) -> None:
    other_weights = load_model("tiny", torch.device("cpu"))
    with torch.no_grad():
        next(other_weights.pipeline.unet.parameters()).add_(1.0)
    assert model_architecture(other_weights) == model_architecture(tiny_model)
    assert model_architecture(load_model("sd15-random", torch.device("cpu"))) != model_architecture(tiny_model)


def test_an_artefact_built_by_one_process_starts_another_without_a_compile(tmp_path: Path) -> None:
    """`gpuroam worker --build-cache` with Inductor on the CPU at one small size and batch, in a process of
    its own; then a fresh process on a fresh cache directory holding only a copy of the artefact (and a
    TMPDIR of its own, so nothing is found in /tmp) loads every graph from it: no compile process starts."""
    built, fresh = tmp_path / "built", tmp_path / "fresh"
    command = [sys.executable, "-m", "gpuroam", "worker", "--build-cache", "--device", "cpu", "--compile", "default"]
    command += ["--compile-sizes", "64x64", "--buckets", "1", "--compile-cache", str(built)]
    result = subprocess.run(
        command, check=False, capture_output=True, text=True, timeout=1200, env=fresh_env(tmp_path / "tmp1")
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    said = result.stdout + result.stderr  # the CLI's console writes to stderr
    assert "graphs to build" in said and "compiled artefact" in said
    (manifest,) = built.glob("compiled-*.json")
    written = json.loads(manifest.read_text())
    assert written["sizes"] == [[64, 64]] and written["key"]["compiler"] == "inductor default"
    assert written["packages"] == len(list(manifest.with_suffix("").glob("*.pt2"))) >= 3

    fresh.mkdir()
    shutil.copy(manifest, fresh / manifest.name)
    shutil.copytree(manifest.with_suffix(""), fresh / manifest.stem)
    command = [sys.executable, "-c", FRESH_WORKER, str(fresh)]
    result = subprocess.run(
        command, check=False, capture_output=True, text=True, timeout=1200, env=fresh_env(tmp_path / "tmp2")
    )
    assert result.returncode == 0, result.stderr[-3000:]
    loaded = json.loads(result.stdout.strip().splitlines()[-1])
    assert loaded["sizes"] == [[64, 64]]
    assert loaded["compile_processes"] == 0, "every graph came from the artefact"
    assert loaded["compiled_calls"] > 0 and loaded["failed"] == 0


def fresh_env(tmp: Path) -> dict[str, str]:
    tmp.mkdir(parents=True)
    env = {k: v for k, v in os.environ.items() if k not in ("TORCHINDUCTOR_CACHE_DIR", "TRITON_CACHE_DIR")}
    return env | {"TMPDIR": str(tmp)}


FRESH_WORKER = """
import json, sys
from pathlib import Path
import torch
from gpuroam.worker.accelerate import Acceleration
from gpuroam.worker.engine import Engine
from gpuroam.worker.jobs import BatchKey, ImageTask, Job
from gpuroam.worker.models import load_model
from gpuroam.worker.prebuild import use_artefact

inductor = Acceleration(compile_mode="default", buckets=(1,), warm_sizes=(), cache_dir=Path(sys.argv[1]))
engine = Engine(load_model("tiny", torch.device("cpu")), inductor)
sizes = use_artefact(engine)
engine.warm_up(sizes)
engine.warmup.build_all()
key = BatchKey("txt2img", 64, 64, 2, "Euler a", "automatic", 7.0)
engine.run([ImageTask(Job(id="x", key=key, image_count=1), 0, "a", "", 1, 0, 0.0, None)])
print(json.dumps({
    "sizes": [list(size) for size in sizes],
    "compile_processes": engine.packages.process._starts,
    "compiled_calls": engine.graphs[0].calls["compiled"],
    "failed": sum(len(graph.failed) for graph in engine.graphs),
}))
"""


def test_build_cache_without_a_fast_path_says_why_nothing_was_written(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["worker", "--build-cache", "--device", "cpu", "--compile-cache", str(tmp_path)])
    assert result.exit_code == 1 and "fast path is off" in result.output
    assert not list(tmp_path.iterdir())
