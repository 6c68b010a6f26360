"""The compile process: a child of the serving worker that builds its graphs, so no compile ever runs
in the process that serves.

The serving worker's compile thread (worker/warmup.py) hands it one graph at a time: which module,
and an example of the call (saved beside the package). The child has its own copy of the modules,
loaded and rewritten as the served ones were (`ModuleSource`), exports the module for that call and
compiles the package (worker/aot.py) into the compile cache, where the serving process loads it onto
its own weights. The serving process's interpreter stays free for the requests, and a package built
once is found there by every later start, and by workers on other machines sharing the directory.

    python -m gpuroam.worker.compile_process   (started by CompileProcess, never by hand)

The protocol is JSON lines: the first line on stdin is the setup, each request a line, each answer a
line on the child's stdout (anything the libraries print goes to its stderr, the worker's log).
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import threading
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import IO, Any

import torch

from gpuroam.worker.graphs import Inputs
from gpuroam.worker.rewrites import compiled_modules, rewrite

log = logging.getLogger("gpuroam.worker.compile_process")

MAX_STARTS = 3  # a child that keeps dying (out of memory, say) is not started forever: the eager path stays


@dataclass(frozen=True)
class ModuleSource:
    """How the compile process rebuilds the served modules: the same model, rewritten the same way."""

    model: str  # a built-in name or a checkpoint's path
    device: str
    dtype: str  # "float16"
    channels_last: bool
    fuse_qkv: bool
    token_rows: int  # the text encoder's token table, grown for embeddings (worker/embeddings.py)

    def load(self) -> dict[str, torch.nn.Module]:
        from gpuroam.worker import embeddings
        from gpuroam.worker.models import load_model

        model = load_model(self.model, torch.device(self.device), getattr(torch, self.dtype))
        pipeline = model.pipeline
        extra = self.token_rows - pipeline.text_encoder.get_input_embeddings().weight.shape[0]
        if extra > 0:
            embeddings.reserve(pipeline, extra)
        rewrite(pipeline, self.channels_last, self.fuse_qkv)
        return {name: module.eval() for name, module in compiled_modules(pipeline).items()}


class CompileFailed(RuntimeError):
    """The compile process could not build a graph (the eager path keeps serving it)."""


class CompileProcess:
    """The serving side: starts the child on the first graph asked for, and asks for one at a time."""

    def __init__(self, source: ModuleSource, cache_dir: Path, backend: str, max_autotune: bool = False) -> None:
        self.setup: dict[str, Any] = {
            "source": asdict(source),
            "cache_dir": str(cache_dir),
            "backend": backend,
            "max_autotune": max_autotune,
        }
        self._process: subprocess.Popen[str] | None = None
        self._starts = 0
        self._lock = threading.Lock()

    def build(self, graph: str, example: Inputs, package: Path) -> Path:
        """Have the child write `package` for `graph` called with `example`; returns its path."""
        with self._lock:
            process = self._running()
            package.parent.mkdir(parents=True, exist_ok=True)
            inputs = package.with_name(f"{package.name}.inputs")
            torch.save(example, inputs)
            try:
                request = {"graph": graph, "inputs": str(inputs), "package": str(package)}
                answer = self._ask(process, request)
            finally:
                inputs.unlink(missing_ok=True)
        if "error" in answer:
            raise CompileFailed(f"{graph}: {answer['error']}")
        return package

    def close(self) -> None:
        """Stop the child (a compile under way is cut short: its package is never half-written)."""
        with self._lock:
            if self._process is not None and self._process.poll() is None:
                self._process.terminate()
                try:
                    self._process.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    self._process.kill()
            self._process = None

    def _running(self) -> subprocess.Popen[str]:
        if self._process is not None and self._process.poll() is None:
            return self._process
        if self._starts >= MAX_STARTS:
            raise CompileFailed(f"the compile process exited {MAX_STARTS} times; the eager path keeps serving")
        self._starts += 1
        process = subprocess.Popen(
            [sys.executable, "-m", "gpuroam.worker.compile_process"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        self._process = process
        log.info("compile process started", extra={"pid": process.pid, "backend": self.setup["backend"]})
        self._ask(process, self.setup)  # answered once the modules are loaded
        return process

    def _ask(self, process: subprocess.Popen[str], message: dict[str, Any]) -> dict[str, Any]:
        assert process.stdin is not None and process.stdout is not None
        try:
            process.stdin.write(json.dumps(message) + "\n")
            process.stdin.flush()
            line = process.stdout.readline()
        except (BrokenPipeError, OSError):
            line = ""
        if not line:
            code = process.wait()
            self._process = None
            raise CompileFailed(f"the compile process exited (code {code}); see its log above")
        answer: dict[str, Any] = json.loads(line)
        return answer


def use_compile_cache(cache_dir: Path) -> None:
    """Inductor's on-disk caches (compiled graphs, autotuning) and Triton's kernels under `cache_dir`, kept
    across restarts, and the compiler settings of every package. Set, not defaulted: importing diffusers
    already pointed Inductor at /tmp/torchinductor_<user> (its own default, written into the environment on
    first use), so a default here left every graph in /tmp and only Triton's kernels in `cache_dir`."""
    import torch._inductor.config as inductor_config

    cache_dir.mkdir(parents=True, exist_ok=True)
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(cache_dir.resolve())
    os.environ["TRITON_CACHE_DIR"] = str((cache_dir / "triton").resolve())
    inductor_config.fx_graph_cache = True
    inductor_config.autotune_local_cache = True
    inductor_config.conv_1x1_as_mm = True  # SD's many 1x1 convolutions run as matrix products


def serve(requests: IO[str], answers: IO[str]) -> None:
    """The child's loop: the setup, then one package per request."""
    from gpuroam.worker.aot import export

    setup = json.loads(requests.readline())
    use_compile_cache(Path(setup["cache_dir"]))
    source = ModuleSource(**setup["source"])
    modules = source.load()
    _answer(answers, {"ready": True})
    for line in requests:
        request = json.loads(line)
        try:
            example = torch.load(request["inputs"], map_location=source.device, weights_only=True)
            export(
                modules[request["graph"]], example, Path(request["package"]), setup["backend"], setup["max_autotune"]
            )
            _answer(answers, {"package": request["package"]})
        except Exception as error:
            log.exception("graph not built", extra={"graph": request.get("graph")})
            _answer(answers, {"error": f"{type(error).__name__}: {error}"})


def _answer(answers: IO[str], message: dict[str, Any]) -> None:
    answers.write(json.dumps(message) + "\n")
    answers.flush()


def main() -> None:
    from gpuroam.logs import configure_logging

    answers = os.fdopen(os.dup(sys.stdout.fileno()), "w")
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())  # what libraries print goes to the log, not the answers
    configure_logging()
    serve(sys.stdin, answers)


if __name__ == "__main__":
    main()
