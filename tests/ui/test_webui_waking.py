"""The worker's Web UI while the endpoint is finding a GPU (a sleeping service waking, a failover): the
page says so, waits as Retry-After says, and generates once a replica answers."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from playwright.sync_api import Route, expect

from fuzzing import serve_app
from gpuroam.worker import LoadedModel, WorkerConfig, create_app

FINDING_GPU = {"error": "no GPU replica of sd is live yet: one is being started", "finding_gpu": True}


@pytest.fixture(scope="module")
def worker(tiny_model: LoadedModel) -> Iterator[str]:
    with serve_app(
        create_app(WorkerConfig(region="europe-west4", gpu="nvidia-l4"), model=tiny_model), "/internal/ping"
    ) as url:
        yield url


def test_the_page_waits_while_a_gpu_is_found_then_generates(browser: Any, worker: str) -> None:
    page = browser.new_context().new_page()
    answered_503 = 0

    def as_the_gateway_while_waking(route: Route) -> None:
        nonlocal answered_503
        if answered_503 < 2:  # the first two tries meet a service with no live replica yet
            answered_503 += 1
            body = json.dumps({**FINDING_GPU, "retry_after_s": 1})
            route.fulfill(status=503, headers={"Retry-After": "1", "Content-Type": "application/json"}, body=body)
        else:
            route.continue_()

    page.route("**/sdapi/v1/txt2img", as_the_gateway_while_waking)
    page.goto(worker)
    for field, value in (("#width", "64"), ("#height", "64"), ("#steps", "2")):
        page.fill(field, value)
    page.click("#generate")
    expect(page.locator("#progress-text")).to_contain_text("Finding a GPU", timeout=10_000)
    expect(page.locator("#gallery img")).to_have_count(1, timeout=60_000)
    assert answered_503 == 2 and page.locator("#error").is_hidden()
    page.context.close()


def test_a_503_that_is_not_finding_a_gpu_is_shown_not_retried(browser: Any, worker: str) -> None:
    page = browser.new_context().new_page()
    tries = 0

    def queue_full(route: Route) -> None:
        nonlocal tries
        tries += 1
        route.fulfill(status=503, headers={"Retry-After": "1"}, json={"detail": "queue full"})

    page.route("**/sdapi/v1/txt2img", queue_full)
    page.goto(worker)
    page.click("#generate")
    expect(page.locator("#error")).to_contain_text("queue full")
    page.wait_for_timeout(1500)
    assert tries == 1
    page.context.close()
