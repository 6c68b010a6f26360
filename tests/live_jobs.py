"""Live workers in tests: waiting for one to be ready, and a generation kept running in the background while a
test acts on it, through a worker or the gateway."""

from __future__ import annotations

import base64
import contextlib
import io
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
from PIL import Image


@contextlib.contextmanager
def generating(client: httpx.Client, body: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """POST txt2img in a thread; the block starts once it is on the device; its response in ["r"] after."""
    result: dict[str, Any] = {}
    thread = threading.Thread(target=lambda: result.update(r=client.post("/sdapi/v1/txt2img", json=body)))
    thread.start()
    wait_until(lambda: client.get("/sdapi/v1/progress").json()["state"]["sampling_step"] > 0)
    try:
        yield result
    finally:
        thread.join(timeout=120)


def wait_until(condition: Callable[[], bool], timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def wait_ready(client: Any) -> None:
    """Until the worker behind `client` (httpx or Starlette's TestClient) answers /internal/ping."""
    deadline = time.monotonic() + 30
    while client.get("/internal/ping").status_code != 200:
        assert time.monotonic() < deadline, "worker never became ready"
        time.sleep(0.02)


def txt2img_pixels(client: Any, body: dict[str, Any]) -> bytes:
    """The first image's pixels of a txt2img that must succeed (its PNG text, which holds the prompt as
    written, left out)."""
    answer = client.post("/sdapi/v1/txt2img", json=body)
    assert answer.status_code == 200, answer.text
    return Image.open(io.BytesIO(base64.b64decode(answer.json()["images"][0]))).tobytes()
