"""The dashboard in a real browser against a real control plane: regions on the map, where the
service serves, a lost GPU type seen as a failover on the map and the timeline, the controls.

GPUROAM_SCREENSHOTS=1 also writes docs/dashboard.png and docs/dashboard-failover.png.
The tests run in order on one control plane (the failover changes what the later ones see).
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from dashboard_harness import Demo
from playwright.sync_api import Page, expect

from gpuroam.catalog import load_catalog
from gpuroam.ui import dashboard_url

DOCS = Path(__file__).resolve().parents[2] / "docs"
SCREENSHOTS = os.environ.get("GPUROAM_SCREENSHOTS") == "1"


@pytest.fixture
def page(browser, demo: Demo) -> Iterator[Page]:  # type: ignore[no-untyped-def]
    """A fresh tab (its own sessionStorage); console errors and page errors are collected."""
    context = browser.new_context(viewport={"width": 1440, "height": 700})
    tab = context.new_page()
    tab.errors = []  # type: ignore[attr-defined]
    tab.on("console", lambda m: m.type == "error" and tab.errors.append(m.text))  # type: ignore[attr-defined]
    tab.on("pageerror", lambda e: tab.errors.append(str(e)))  # type: ignore[attr-defined]
    tab.set_default_timeout(15_000)
    yield tab
    context.close()  # before the control plane stops: the events stream ends with the tab


def marker(page: Page, region: str):  # type: ignore[no-untyped-def]
    return page.locator(f'.marker[data-region="{region}"]')


def screenshot(page: Page, name: str) -> None:
    if SCREENSHOTS:
        page.mouse.move(0, 0)
        page.wait_for_timeout(1500)  # let the last polls land and transitions settle
        page.screenshot(path=str(DOCS / name), full_page=True)


def test_the_page_asks_for_the_token_and_refuses_a_wrong_one(page: Page, demo: Demo) -> None:
    page.goto(demo.url)
    dialog = page.locator("#token-dialog")
    expect(dialog).to_be_visible()
    page.fill("#token-input", "not-the-token")
    page.click("#token-form button")
    expect(page.locator("#token-message")).to_contain_text("refused")
    expect(dialog).to_be_visible()
    page.fill("#token-input", demo.token)
    page.click("#token-form button")
    expect(dialog).to_be_hidden()
    expect(marker(page, "us-central1")).to_have_attribute("data-state", "serving")
    expect(page.locator("#connection")).to_have_attribute("data-state", "live")
    assert [e for e in page.errors if "401" not in e] == []  # type: ignore[attr-defined]


def test_the_web_ui_through_the_global_endpoint_says_where_each_image_was_made(page: Page, demo: Demo) -> None:
    endpoint = demo.client.get("/services/stable-diffusion")["endpoint"]
    page.goto(endpoint)
    page.fill("#prompt", "a lighthouse at dusk")
    for field, value in (("#width", "64"), ("#height", "64"), ("#steps", "2")):
        page.fill(field, value)
    page.click("#generate")
    expect(page.locator("#gallery img").first).to_be_visible(timeout=60_000)
    served = page.locator("#served-by")
    expect(served).to_have_text(re.compile(r"^(us-central1|europe-west4) · nvidia-l4$"))
    region, gpu = (part.strip() for part in served.inner_text().split("·"))
    assert (region, gpu) in demo.ready(), "the badge names a replica that serves"
    assert page.errors == []  # type: ignore[attr-defined]


def test_the_map_shows_the_regions_and_where_the_service_serves(page: Page, demo: Demo) -> None:
    page.goto(dashboard_url(demo.url, demo.token))
    assert page.evaluate("location.hash") == "", "the token leaves the address bar"
    expect(page.locator("#land")).to_have_attribute("d", re.compile(r"^M[\d.]+ [\d.]+l"))
    expect(page.locator(".marker")).to_have_count(3)
    for region in ("us-central1", "europe-west4"):
        expect(marker(page, region)).to_have_attribute("data-state", "serving")
        expect(marker(page, region)).to_have_attribute("data-gpus", "nvidia-l4")
    expect(marker(page, "asia-southeast1")).to_have_attribute("data-state", "idle")

    service = page.locator('.service[data-service="stable-diffusion"]')
    endpoint = demo.client.get("/services/stable-diffusion")["endpoint"]
    expect(service.locator(".endpoint a")).to_have_text(endpoint)
    expect(service.locator('tr[data-state="ready"]')).to_have_count(2)
    cost = sum(load_catalog().price(r, "nvidia-l4") for r in ("us-central1", "europe-west4"))
    expect(service.locator(".scale")).to_contain_text(f"2 ready of 2 wanted · ${cost:.2f}/h")
    expect(service.locator(".scale")).to_contain_text("waiting for a replica")  # the gateway's queue, live
    expect(service.locator(".scale .reason")).to_have_text("replicas.min is 2 (no autoscale section)")
    expect(page.locator('#events .event[data-kind="ready"]').first).to_be_visible()
    expect(page.locator("#events-state")).to_have_attribute("data-state", "live")
    expect(page.locator("#traffic tr[data-region]").first).to_be_visible()  # the light load, per region

    marker(page, "us-central1").hover()
    detail = page.locator("#region-detail")
    expect(detail).to_be_visible()
    expect(detail).to_contain_text("nvidia-l4")
    expect(detail).to_contain_text("Council Bluffs")
    expect(detail).not_to_contain_text("null")
    screenshot(page, "dashboard.png")
    assert page.errors == []  # type: ignore[attr-defined]


def test_a_lost_gpu_type_shows_on_the_map_and_as_a_failover_in_the_timeline(page: Page, demo: Demo) -> None:
    page.goto(dashboard_url(demo.url, demo.token))
    us = marker(page, "us-central1")
    expect(us).to_have_attribute("data-state", "serving")
    expect(page.locator('#events .event[data-kind="ready"]').first).to_be_visible()
    expect(page.locator('#events .event[data-kind="failover"]')).to_have_count(0)

    page.select_option("#fail-gpu", "nvidia-l4")
    page.select_option("#fail-gpu-region", "")  # all regions
    clicked = time.monotonic()
    page.click("#fail-gpu-form button")
    expect(page.locator("#toast")).to_contain_text("nvidia-l4 lost everywhere")
    expect(us).not_to_have_attribute("data-state", "serving", timeout=5_000)
    assert time.monotonic() - clicked < 5, "the map shows the loss within seconds"
    expect(page.locator('#events .event[data-kind="chaos"]').first).to_contain_text("nvidia-l4 lost")
    expect(page.locator('#events .event[data-kind="failover"]').first).to_be_visible(timeout=10_000)

    # The service carries on on another GPU type; the map says which.
    expect(page.locator('.marker[data-state="serving"]')).to_have_count(2, timeout=60_000)
    for serving in page.locator('.marker[data-state="serving"]').all():
        expect(serving).not_to_have_attribute("data-gpus", re.compile("nvidia-l4"))
    expect(page.locator('.service tr[data-state="failed"]').first).to_be_visible()
    expect(page.locator("#traffic tr[data-region]").first).to_be_visible(timeout=30_000)  # traffic carries on
    if SCREENSHOTS:
        expect(page.locator('.marker[data-state="starting"]')).to_have_count(0, timeout=30_000)
    screenshot(page, "dashboard-failover.png")
    assert page.errors == []  # type: ignore[attr-defined]


def test_the_controls_recover_and_expand(page: Page, demo: Demo) -> None:
    page.goto(dashboard_url(demo.url, demo.token))
    expect(page.locator("#recover-region option")).to_have_count(4)  # all regions + 3
    page.click("#recover-form button")
    expect(page.locator("#toast")).to_contain_text("capacity back")
    expect(page.locator('#events .event[data-kind="chaos"]').first).to_contain_text("capacity back")

    page.select_option("#expand-service", "stable-diffusion")
    page.select_option("#expand-region", "asia-southeast1")
    page.click("#expand-form button")
    expect(page.locator("#toast")).to_contain_text("stable-diffusion expands into asia-southeast1")
    expect(page.locator('#events .event[data-kind="expanded"]').first).to_contain_text("asia-southeast1")

    page.select_option("#expand-region", "us-central1")
    page.evaluate("document.querySelector('#expand-region').add(new Option('atlantis', 'atlantis'))")
    page.select_option("#expand-region", "atlantis")
    page.click("#expand-form button")
    expect(page.locator("#toast")).to_have_attribute("data-ok", "false")
    expect(page.locator("#toast")).to_contain_text("atlantis")  # the API's own explanation
