"""Shared fixtures: one tiny model per test session, and live worker servers on free ports."""

from __future__ import annotations

import hmac
import os
import secrets
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
import torch
import uvicorn
from hypothesis import settings

from gpuroam.worker import LoadedModel, WorkerConfig, create_app, load_model

os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture
def compare_digest_calls(monkeypatch: pytest.MonkeyPatch) -> list[tuple[bytes, bytes]]:
    """Every secrets.compare_digest call during the test (which still compares), for constant-time checks."""
    calls: list[tuple[bytes, bytes]] = []

    def spy(a: bytes, b: bytes) -> bool:
        calls.append((a, b))
        return hmac.compare_digest(a, b)

    monkeypatch.setattr(secrets, "compare_digest", spy)
    return calls


@pytest.fixture
def fake_python(tmp_path: Path) -> str:
    """A local provider's worker that starts in milliseconds and never answers; a shebang keeps the
    `-m gpuroam worker ...` command line that the process table is read for."""
    script = tmp_path / "fake-python"
    script.write_text(f"#!{sys.executable}\nimport time\ntime.sleep(120)\n")
    script.chmod(0o755)
    return str(script)


@pytest.fixture(scope="session")
def tiny_model() -> LoadedModel:
    return load_model("tiny", torch.device("cpu"))


@contextmanager
def serve(app: object) -> Iterator[str]:
    """Run an ASGI app with uvicorn in a thread on a free loopback port; yield its base URL."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_config=None, access_log=False, lifespan="on"))  # type: ignore[arg-type]
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/internal/ping", timeout=2).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        time.sleep(0.05)
    else:
        server.should_exit = True
        raise RuntimeError("worker did not become ready within 60 s")
    try:
        yield url
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()


@pytest.fixture
def live_worker(tiny_model: LoadedModel) -> Callable[..., object]:
    """`with live_worker(max_batch=8) as url:` starts a worker sharing the session's tiny model."""

    def start(**overrides: object):  # type: ignore[no-untyped-def]
        config = WorkerConfig(**{"region": "test-region", "gpu": "cpu", **overrides})  # type: ignore[arg-type]
        return serve(create_app(config, model=tiny_model))

    return start


# CI runs the property tests on a fixed sequence of examples, so a run is reproducible; local
# runs draw new examples each time and keep finding new cases.
settings.register_profile("ci", derandomize=True, print_blob=True)
if os.environ.get("CI"):
    settings.load_profile("ci")
