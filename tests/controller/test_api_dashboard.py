"""The dashboard's side of the control-plane API: the page without a token, live traffic from the
gateway, and the events stream (server-sent events) — in process, with starlette's TestClient."""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import ClassVar

import pytest
from fakes import FakeProvider
from fastapi.testclient import TestClient

from gpuroam.catalog import load_catalog
from gpuroam.controller.api import ApiContext, GatewayAddress, create_api
from gpuroam.controller.api import events as events_api
from gpuroam.controller.store import Store
from gpuroam.providers.local import free_port
from gpuroam.records import Event, EventKind
from gpuroam.ui import STATIC, dashboard_url

TOKEN = "s3cret-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
SPEC = {
    "name": "stable-diffusion",
    "app": {"kind": "sd-webui", "model": "tiny"},
    "resources": {"gpus": ["nvidia-l4", "nvidia-tesla-t4"]},
}


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    opened = Store.for_state_dir(tmp_path / "state")
    yield opened
    opened.close()


def make_client(store: Store, gateway: GatewayAddress | None) -> TestClient:
    provider = FakeProvider({"us-central1": {"nvidia-l4": 1}, "europe-west4": {"nvidia-tesla-t4": 1}})
    return TestClient(create_api(ApiContext(store, provider, load_catalog(), TOKEN, gateway)))


@pytest.fixture
def client(store: Store) -> TestClient:
    return make_client(store, GatewayAddress("127.0.0.1", free_port()))


# --- the page ----------------------------------------------------------------------------------


def test_the_page_is_served_without_a_token(client: TestClient) -> None:
    page = client.get("/")
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    assert '<script type="module" src="/ui/app.js">' in page.text
    policy = page.headers["content-security-policy"]
    assert "default-src 'self'" in policy and "connect-src 'self'" in policy, "the page may talk to its origin only"
    for asset, kind in [("app.js", "javascript"), ("style.css", "text/css"), ("world-land.svg", "image/svg+xml")]:
        response = client.get(f"/ui/{asset}")
        assert response.status_code == 200, asset
        assert kind in response.headers["content-type"], asset
    assert client.get("/api/v1/status").status_code == 401, "the API behind the page still wants the token"


def test_every_asset_the_page_names_is_shipped_and_none_is_fetched_from_elsewhere(client: TestClient) -> None:
    named = set(re.findall(r'(?:src|href)="(/ui/[^"]+)"', client.get("/").text))
    for module in STATIC.glob("*.js"):
        named |= {f"/ui/{m}" for m in re.findall(r'from "\./([^"]+)"', module.read_text())}
        named |= set(re.findall(r'fetch\("(/ui/[^"]+)"', module.read_text()))
    assert {"/ui/app.js", "/ui/style.css", "/ui/world-land.svg", "/ui/map.js"} <= named
    for path in sorted(named):
        assert client.get(path).status_code == 200, f"{path} is named but not served"
    for file in STATIC.iterdir():
        if file.suffix in (".html", ".js", ".css", ".svg"):
            urls = set(re.findall(r"https?://[^\s\"')]+", file.read_text())) - {"http://www.w3.org/2000/svg"}
            assert not urls, f"{file.name} refers to {urls}: the dashboard must work offline"
    assert (STATIC / "world-atlas-LICENSE.txt").read_text().count("ISC") >= 1, "the map data keeps its licence note"


def test_the_assets_stay_inside_the_package(client: TestClient) -> None:
    assert client.get("/ui/../__init__.py").status_code == 404
    assert client.get("/ui/%2e%2e/__init__.py").status_code == 404
    assert client.get("/ui/nothing-here.js").status_code == 404


def test_dashboard_url_puts_the_token_in_the_fragment() -> None:
    assert dashboard_url("http://127.0.0.1:8700", "a/b+c") == "http://127.0.0.1:8700/#token=a%2Fb%2Bc"
    assert dashboard_url("http://127.0.0.1:8700/") == "http://127.0.0.1:8700/"


# --- traffic -------------------------------------------------------------------------------------


class _FakeGateway(BaseHTTPRequestHandler):
    report: ClassVar[dict] = {}

    def do_GET(self) -> None:
        body = json.dumps(self.report).encode() if self.path == "/gpuroam/health" else b"{}"
        self.send_response(200 if self.path == "/gpuroam/health" else 404)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *_: object) -> None:
        pass


def test_traffic_wants_the_token(client: TestClient) -> None:
    assert client.get("/api/v1/traffic").status_code == 401
    assert client.get("/api/v1/traffic", headers={"Authorization": "Bearer nope"}).status_code == 401


def test_traffic_comes_from_the_gateway_of_the_services_port(store: Store) -> None:
    report = {
        "status": "ok",
        "services": [{"name": "stable-diffusion", "port": 0, "usable": 1, "backends": []}],
        "traffic": {"stable-diffusion": {"regions": {"us-central1": {"rps": 2.5, "p50_ms": 40.0}}, "failed_per_s": 0}},
    }
    handler = type("Handler", (_FakeGateway,), {"report": report})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        client = make_client(store, GatewayAddress("127.0.0.1", server.server_address[1]))
        assert client.post("/api/v1/services", json=SPEC, headers=AUTH).status_code == 201
        traffic = client.get("/api/v1/traffic", headers=AUTH).json()
    finally:
        server.shutdown()
        server.server_close()
    assert traffic["available"] is True
    assert traffic["traffic"] == report["traffic"] and traffic["services"] == report["services"]


def test_traffic_says_why_when_the_gateway_does_not_answer(store: Store) -> None:
    client = make_client(store, GatewayAddress("127.0.0.1", free_port()))
    none_yet = client.get("/api/v1/traffic", headers=AUTH).json()
    assert none_yet["available"] is False and "no service" in none_yet["reason"]
    client.post("/api/v1/services", json=SPEC, headers=AUTH)  # gets the (unused) base port
    started = time.monotonic()
    down = client.get("/api/v1/traffic", headers=AUTH).json()
    assert down["available"] is False and "does not answer" in down["reason"]
    assert time.monotonic() - started < 5, "a gateway that is down must not hold the dashboard up"
    no_gateway = make_client(store, None).get("/api/v1/traffic", headers=AUTH).json()
    assert no_gateway == {"available": False, "reason": "this control plane runs no gateway"}


# --- the events stream ---------------------------------------------------------------------------


def parse_sse(body: str) -> tuple[list[dict], list[str]]:
    """(events with their ids, comment lines) from a text/event-stream body."""
    events, comments = [], []
    for block in body.split("\n\n"):
        fields = dict(line.split(": ", 1) for line in block.splitlines() if line and not line.startswith(":"))
        comments += [line for line in block.splitlines() if line.startswith(":")]
        if "data" in fields:
            event = json.loads(fields["data"])
            assert int(fields["id"]) == event["id"], "each message carries the event's id for Last-Event-ID"
            events.append(event)
    return events, comments


def add_event(store: Store, kind: EventKind, message: str) -> Event:
    return store.add_event(Event(ts=time.time(), kind=kind, message=message, region="us-central1"))


@pytest.fixture
def short_streams(monkeypatch: pytest.MonkeyPatch) -> None:
    """Streams that end after a second (TestClient returns a response once it is complete)."""
    monkeypatch.setattr(events_api, "EVENT_STREAM_MAX_S", 1.0)
    monkeypatch.setattr(events_api, "EVENT_POLL_S", 0.1)
    monkeypatch.setattr(events_api, "EVENT_KEEPALIVE_S", 0.3)


def test_the_stream_wants_the_token(client: TestClient) -> None:
    assert client.get("/api/v1/events/stream").status_code == 401
    assert client.get("/api/v1/events/stream", headers={"Authorization": "Bearer nope"}).status_code == 401


@pytest.mark.usefixtures("short_streams")
def test_the_stream_yields_the_events_in_the_store_and_those_added_while_it_runs(
    client: TestClient, store: Store
) -> None:
    first = add_event(store, EventKind.PLACED, "before the stream")
    timer = threading.Timer(0.4, add_event, args=(store, EventKind.FAILOVER, "while streaming"))
    timer.start()
    response = client.get("/api/v1/events/stream", headers=AUTH)
    timer.join()
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    events, comments = parse_sse(response.text)
    assert [(e["kind"], e["message"]) for e in events] == [
        ("placed", "before the stream"),
        ("failover", "while streaming"),
    ]
    assert events[0]["id"] == first.id and events[0]["region"] == "us-central1"
    assert ": keep-alive" in comments, "a quiet stream sends keep-alive comments"


@pytest.mark.usefixtures("short_streams")
def test_the_stream_resumes_after_last_event_id_or_after(client: TestClient, store: Store) -> None:
    ids = [add_event(store, EventKind.READY, f"event {i}").id for i in range(4)]
    resumed, _ = parse_sse(client.get("/api/v1/events/stream", headers={**AUTH, "Last-Event-ID": str(ids[1])}).text)
    assert [e["id"] for e in resumed] == ids[2:]
    after, _ = parse_sse(client.get(f"/api/v1/events/stream?after={ids[2]}", headers=AUTH).text)
    assert [e["id"] for e in after] == ids[3:]
    both = {**AUTH, "Last-Event-ID": str(ids[0])}  # a reconnect: the header wins over the first `after`
    assert [e["id"] for e in parse_sse(client.get("/api/v1/events/stream?after=0", headers=both).text)[0]] == ids[1:]


@pytest.mark.usefixtures("short_streams")
def test_the_stream_catches_up_on_a_long_history(
    client: TestClient, store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(events_api, "EVENT_BATCH", 3)
    for i in range(8):
        add_event(store, EventKind.READY, f"event {i}")
    events, _ = parse_sse(client.get("/api/v1/events/stream", headers=AUTH).text)
    assert [e["message"] for e in events] == [f"event {i}" for i in range(8)]
