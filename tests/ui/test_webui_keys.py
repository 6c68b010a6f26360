"""The Web UI page through the real gateway of a service with API keys: a browser is asked for the key (a
basic-auth challenge), and with it the page loads and generates, every call of the page keyed."""

from __future__ import annotations

import asyncio
import hashlib
import threading
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from playwright.sync_api import Error as PlaywrightError
from playwright.sync_api import expect

from fuzzing import serve_app
from gpuroam.catalog import load_catalog
from gpuroam.gateway import Backend, Gateway, ServiceBackends
from gpuroam.providers.local import free_port
from gpuroam.worker import LoadedModel, WorkerConfig, create_app

KEY = "webui-key-0123456789abcdef"


@pytest.fixture(scope="module")
def keyed_endpoint(tiny_model: LoadedModel) -> Iterator[str]:
    """A gateway (on a loop thread of its own) with one key, in front of one real worker (tiny model)."""
    app = create_app(WorkerConfig(region="europe-west4", gpu="nvidia-l4"), model=tiny_model)
    with serve_app(app, "/internal/ping") as worker:
        loop = asyncio.new_event_loop()
        thread = threading.Thread(target=loop.run_forever, daemon=True)
        thread.start()

        def run(coro: Any) -> Any:
            return asyncio.run_coroutine_threadsafe(coro, loop).result(30)

        gateway, port = Gateway("127.0.0.1", catalog=load_catalog()), free_port()
        replica = Backend("r1", worker, "europe-west4", "nvidia-l4")
        keys = {hashlib.sha256(KEY.encode()).hexdigest(): "webui"}
        run(gateway.start())
        run(gateway.apply([ServiceBackends("sd", port, (replica,), api_keys=keys)], strict=True))
        yield f"http://127.0.0.1:{port}"
        run(gateway.stop())
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=5)


def test_the_page_asks_for_the_key_and_generates_with_it(browser: Any, keyed_endpoint: str) -> None:
    refused = httpx.get(keyed_endpoint)
    assert refused.status_code == 401 and refused.headers["www-authenticate"].startswith("Basic")
    without = browser.new_context().new_page()
    with pytest.raises(PlaywrightError, match="ERR_INVALID_AUTH_CREDENTIALS"):  # asked for a key, had none
        without.goto(keyed_endpoint)
    without.context.close()
    page = browser.new_context(http_credentials={"username": "webui", "password": KEY}).new_page()
    assert page.goto(keyed_endpoint).status == 200
    for field, value in (("#width", "64"), ("#height", "64"), ("#steps", "2")):
        page.fill(field, value)
    page.click("#generate")
    expect(page.locator("#gallery img")).to_have_count(1, timeout=60_000)
    assert page.locator("#error").is_hidden()
    page.context.close()
