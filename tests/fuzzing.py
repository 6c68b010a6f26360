"""What the fuzz tests share: how hard they try, and an ASGI app served on loopback in a thread.

GPUROAM_FUZZ_EXAMPLES=N sets the examples each fuzz target draws (per operation and mode for the
schemathesis targets). The defaults keep `make test` quick; a reliability run raises it, e.g.
`GPUROAM_FUZZ_EXAMPLES=500 .venv/bin/python -m pytest tests -k fuzz`.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import httpx
import pytest
import uvicorn
from hypothesis import HealthCheck, settings
from schemathesis.generation.modes import GenerationMode

FUZZ_ENV = "GPUROAM_FUZZ_EXAMPLES"
MODES = (GenerationMode.POSITIVE, GenerationMode.NEGATIVE)


def schema_cases(operations: Mapping[str, Any]) -> list[Any]:
    """One pytest case per operation and generation mode (valid inputs, invalid inputs). A mode is left
    out where schemathesis cannot make an operation's inputs invalid (a free-form path string only)."""

    def negatable(operation: Any) -> bool:
        return any(len(getattr(operation, part)) for part in ("headers", "cookies", "query", "body"))

    return [
        pytest.param(label, mode, id=f"{label}-{mode.value}")
        for label, operation in operations.items()
        for mode in MODES
        if mode is GenerationMode.POSITIVE or negatable(operation)
    ]


def fuzz_examples(default: int) -> int:
    """Examples per fuzz target: GPUROAM_FUZZ_EXAMPLES when set, else `default`."""
    value = os.environ.get(FUZZ_ENV, "").strip()
    if not value:
        return default
    if not value.isdigit() or int(value) < 1:
        raise ValueError(f"{FUZZ_ENV} must be a positive integer, not {value!r}")
    return int(value)


def fuzz_settings(default: int) -> settings:
    """Hypothesis settings for a fuzz target that talks to a server: no deadline (a request may take a
    while on a 2-core machine), and no health check that would stop a slow but valid run."""
    return settings(
        max_examples=fuzz_examples(default),
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much, HealthCheck.data_too_large],
    )


@contextmanager
def serve_app(app: object, ready_path: str, timeout_s: float = 60.0) -> Iterator[str]:
    """Run an ASGI app with uvicorn on a free loopback port; yield its base URL once `ready_path` says 200."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = uvicorn.Config(app, log_config=None, access_log=False, lifespan="on")  # type: ignore[arg-type]
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + timeout_s
    try:
        while True:
            try:
                if httpx.get(url + ready_path, timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"{url}{ready_path} did not answer 200 within {timeout_s:g} s")
            time.sleep(0.05)
        yield url
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()
