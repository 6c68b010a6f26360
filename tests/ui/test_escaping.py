"""The dashboard and the worker's Web UI show hostile strings as text: a service, region, GPU, replica
id or event message, a prompt, or an error detail holding markup injects no element and runs no
script, in a real browser. Neither page builds HTML from strings (no innerHTML: dom.js's h() and
textContent); these tests keep it so.

The dashboard runs against the control-plane API serving a store written directly (names that the
API itself would refuse, as if another writer or a compromised provider had put them there), a fake
gateway health report, and a provider with hostile GPU and region names.
"""

from __future__ import annotations

import base64
import html
import io
import json
import re
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar

import pytest
from PIL import Image, PngImagePlugin
from playwright.sync_api import Page, expect

from fuzzing import serve_app
from gpuroam.catalog import load_catalog
from gpuroam.controller.api import ApiContext, GatewayAddress, create_api
from gpuroam.controller.store import Store
from gpuroam.records import Event, EventKind, Replica, ReplicaState
from gpuroam.ui import dashboard_url
from gpuroam.worker import LoadedModel, WorkerConfig, create_app

IMG = '<img src=x onerror="window.__xss = 1">'
SCRIPT = "</script><script>window.__xss = 2</script>"
ATTR = '"\'><svg onload="window.__xss = 3">'
JS_URL = "javascript:window.__xss = 4"
TEMPLATE = "${window.__xss = 5}{{constructor.constructor('window.__xss = 6')()}}"
TOKEN = "ui-token"

INJECTED = """() => document.querySelectorAll(
  'img[src="x"], [onerror], [onload], script:not([src]), iframe, object, embed, a[href^="javascript:" i]'
).length"""
WATCH = """
window.__violations = [];
document.addEventListener("securitypolicyviolation", (e) => window.__violations.push(e.violatedDirective));
"""


class _FakeGateway(BaseHTTPRequestHandler):
    """A gateway whose health report names hostile regions, GPUs, replicas and services."""

    report: ClassVar[dict[str, Any]] = {}

    def do_GET(self) -> None:
        body = json.dumps(self.report).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


class HostileProvider:
    """Capacity whose names are markup; no chaos controls."""

    name = "hostile"

    def regions(self) -> dict[str, dict[str, int | None]]:
        return {"us-central1": {IMG: 1, "nvidia-l4": 0}, ATTR: {SCRIPT: None}}

    def spot_regions(self) -> dict[str, dict[str, int | None]]:
        return {ATTR: {SCRIPT: None}}

    def endpoint(self, service: str) -> str | None:
        return None


@pytest.fixture(scope="module")
def dashboard(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    gateway = ThreadingHTTPServer(("127.0.0.1", 0), _FakeGateway)
    port = gateway.server_address[1]
    threading.Thread(target=gateway.serve_forever, daemon=True).start()
    store = Store.for_state_dir(tmp_path_factory.mktemp("hostile") / "state")
    now = time.time()
    for name in (IMG, SCRIPT):
        store.put_service(name, {"name": name, "resources": {"gpus": [IMG]}}, now)
    store.assign_gateway_port(IMG, port)  # its traffic comes from the fake gateway; SCRIPT's endpoint is a replica's
    replicas = [
        (ATTR, IMG, "us-central1", IMG, "http://127.0.0.1:1"),
        (TEMPLATE, SCRIPT, "us-central1", SCRIPT, JS_URL),
        (SCRIPT, SCRIPT, ATTR, ATTR, JS_URL),
    ]
    for replica_id, service, region, gpu, url in replicas:
        store.add_replica(Replica(replica_id, service, region, gpu, ReplicaState.READY, now, now, now, url, ATTR))
    for kind, text in ((EventKind.FAILOVER, IMG), (EventKind.CHAOS, SCRIPT), (EventKind.PLACED, TEMPLATE)):
        store.add_event(Event(ts=now, kind=kind, message=text, service=SCRIPT, region="us-central1", gpu=ATTR))
    _FakeGateway.report = {
        "status": "ok",
        "services": [
            {
                "name": IMG,
                "port": port,
                "usable": 1,
                "backends": [
                    {"replica": ATTR, "url": JS_URL, "region": "us-central1", "gpu": IMG, "usable": True}
                    | {"healthy": True, "ejected_s": 0, "outstanding": 2}
                ],
            }
        ],
        "traffic": {
            IMG: {"regions": {"us-central1": {"rps": 3.0, "p50_ms": 40.0}, ATTR: {"rps": 1.0, "p50_ms": 9.0}}},
            SCRIPT: {"regions": {}, "failed_per_s": 0.5},
        },
    }
    app = create_api(ApiContext(store, HostileProvider(), load_catalog(), TOKEN, GatewayAddress("127.0.0.1", port)))  # type: ignore[arg-type]
    try:
        with serve_app(app, "/") as url:
            yield url
    finally:
        gateway.shutdown()
        store.close()


def open_page(browser: Any, url: str) -> tuple[Page, list[str]]:
    context = browser.new_context(viewport={"width": 1440, "height": 900})
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.add_init_script(WATCH)
    page.set_default_timeout(15_000)
    page.goto(url)
    return page, errors


def assert_nothing_ran(page: Page, errors: list[str]) -> None:
    page.wait_for_timeout(300)  # an onerror/onload handler fires right after the element is parsed
    assert page.evaluate("() => window.__xss") is None, "a hostile string ran as script"
    assert page.evaluate(INJECTED) == 0, "a hostile string became an element"
    assert page.evaluate("() => window.__violations") == [], "markup was injected (the CSP blocked it)"
    assert errors == []


def test_the_dashboard_shows_hostile_names_and_messages_as_text(browser: Any, dashboard: str) -> None:
    page, errors = open_page(browser, dashboard_url(dashboard, TOKEN))
    services = page.locator("#services")
    expect(services.locator("h3")).to_have_count(2)
    assert sorted(services.locator("h3").all_text_contents()) == sorted([IMG, SCRIPT])
    expect(services.locator(".endpoint code")).to_have_text(JS_URL)  # shown, not linked
    expect(services.locator(".endpoint a")).to_have_count(1)  # the gateway's http:// endpoint is
    assert ATTR in services.locator("tbody td").all_text_contents()  # a replica's region
    expect(page.locator("#events .message")).to_have_text([TEMPLATE, SCRIPT, IMG])
    expect(page.locator("#events .where").first).to_contain_text(ATTR)
    expect(page.locator("#traffic")).to_contain_text(ATTR)
    expect(page.locator("#traffic")).to_contain_text(f"{SCRIPT}: answered with an error by the gateway")
    marker = page.locator('.marker[data-region="us-central1"]')
    marker.click()
    detail = page.locator("#region-detail")
    expect(detail).to_contain_text(IMG)  # the GPU list, the replicas table and the gateway health
    titles = detail.locator("td[title]").evaluate_all("(cells) => cells.map((c) => c.title)")
    assert ATTR in titles and TEMPLATE in titles
    for select in ("#fail-region", "#fail-gpu", "#expand-service"):
        assert page.locator(f"{select} option").all_inner_texts(), select
    assert ATTR in page.locator("#fail-region option").all_inner_texts()
    assert SCRIPT in page.locator("#fail-gpu option").all_inner_texts()
    assert_nothing_ran(page, errors)
    page.context.close()


@pytest.fixture(scope="module")
def worker(tiny_model: LoadedModel) -> Iterator[str]:
    config = WorkerConfig(region=IMG, gpu=ATTR, replica=SCRIPT)
    with serve_app(create_app(config, model=tiny_model), "/internal/ping") as url:
        yield url


def test_the_worker_web_ui_shows_hostile_prompts_and_details_as_text(browser: Any, worker: str) -> None:
    page, errors = open_page(browser, worker)
    expect(page.locator("#worker-info")).to_contain_text(f"region {IMG}, GPU {ATTR}")
    prompt = f"{IMG} {SCRIPT} {TEMPLATE}"
    page.fill("#prompt", prompt)
    page.fill("#negative_prompt", ATTR)
    for field, value in (("#width", "64"), ("#height", "64"), ("#steps", "2")):
        page.fill(field, value)
    page.click("#generate")
    expect(page.locator("#gallery img")).to_have_count(1, timeout=60_000)
    expect(page.locator("#served-by")).to_have_text(f"{IMG} · {ATTR}")
    assert page.locator("#infotext").text_content().startswith(f"{prompt}\nNegative prompt: {ATTR}\n")  # type: ignore[union-attr]
    # An error whose detail echoes what was sent: an unknown sampler named with markup.
    page.evaluate("(name) => { const s = document.getElementById('sampler'); s.add(new Option(name, name)); s.value = name; }", IMG)  # fmt: skip
    page.click("#generate")
    expect(page.locator("#error")).to_contain_text(f"unknown sampler '{IMG}'")
    assert_nothing_ran(page, errors)
    page.context.close()


def test_the_worker_web_ui_tabs_show_hostile_names_and_metadata_as_text(browser: Any, worker: str) -> None:
    """LoRA and embedding names (as a LoRA backend may list them), Extras' html_info, and an image's metadata
    read by PNG Info: shown as text, never as markup."""
    page, errors = open_page(browser, "about:blank")
    loras = [{"name": IMG, "alias": SCRIPT, "path": JS_URL, "metadata": {}}]
    page.route("**/sdapi/v1/loras", lambda route: route.fulfill(json=loras))
    page.route("**/sdapi/v1/embeddings", lambda route: route.fulfill(json={"loaded": {ATTR: {}}, "skipped": {}}))
    pixel = io.BytesIO()
    Image.new("RGB", (8, 8)).save(pixel, "PNG")
    html_info = f"<p>{IMG}<br>{html.escape(SCRIPT)}</p>"
    page.route(
        "**/sdapi/v1/extra-single-image",
        lambda route: route.fulfill(
            json={"image": base64.b64encode(pixel.getvalue()).decode(), "html_info": html_info}
        ),
    )
    page.goto(worker)
    page.click("#networks summary")
    expect(page.locator("#lora-list button")).to_have_text([IMG])
    expect(page.locator("#embedding-list button")).to_have_text([ATTR])
    page.locator("#lora-list button").click()
    expect(page.locator("#prompt")).to_have_value(f"<lora:{IMG}:1>")

    page.click("#tab-extras")
    page.set_input_files("#extras-file", {"name": "x.png", "mimeType": "image/png", "buffer": pixel.getvalue()})
    page.click("#extras-run")
    # html_info is HTML: its tags (the <img>) are dropped, its escaped text (SCRIPT) is shown as text
    expect(page.locator("#extras-info")).to_have_text(f"8×8 px\n{SCRIPT}")

    info = PngImagePlugin.PngInfo()
    info.add_text("parameters", f"{IMG}\nNegative prompt: {TEMPLATE}\nSteps: 2, Sampler: {ATTR}, Seed: 1")
    info.add_text(IMG[:79], SCRIPT)
    hostile = io.BytesIO()
    Image.new("RGB", (8, 8)).save(hostile, "PNG", pnginfo=info)
    page.click("#tab-pnginfo")
    page.set_input_files("#pnginfo-file", {"name": "x.png", "mimeType": "image/png", "buffer": hostile.getvalue()})
    expect(page.locator("#pnginfo-text")).to_contain_text(IMG)
    expect(page.locator("#pnginfo-items dt")).to_have_text([IMG[:79]])
    expect(page.locator("#pnginfo-items dd")).to_have_text([SCRIPT])
    page.click("#pnginfo-send")
    expect(page.locator("#prompt")).to_have_value(IMG)
    expect(page.locator("#negative_prompt")).to_have_value(TEMPLATE)
    assert_nothing_ran(page, errors)
    page.context.close()


def test_the_scripts_build_no_html_from_strings() -> None:
    """What the browser tests rely on, for every path they do not reach: no HTML parsing of strings."""
    statics = [*Path(__file__).resolve().parents[2].joinpath("src/gpuroam/ui/static").glob("*.js")]
    statics.append(Path(__file__).resolve().parents[2] / "src/gpuroam/worker/static/app.js")
    for script in statics:
        text = script.read_text()
        sinks = re.findall(
            r"\.(?:innerHTML|outerHTML)\b|insertAdjacentHTML|document\.write|\beval\(|new Function", text
        )
        assert sinks == [], f"{script.name} builds HTML from strings: {sinks}"
