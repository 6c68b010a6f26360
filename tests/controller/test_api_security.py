"""The control-plane API's token: every route under /api/v1 refuses a request without it or with a
wrong one (401, `WWW-Authenticate: Bearer`, and nothing done), and the token is compared in constant
time. What is public is listed here, so a route added without the guard fails this test.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from fakes import FakeProvider
from fastapi.testclient import TestClient
from starlette.routing import BaseRoute

from gpuroam.catalog import load_catalog
from gpuroam.controller.api import ApiContext, GatewayAddress, create_api
from gpuroam.controller.store import Store
from gpuroam.providers.local import free_port

TOKEN = "Zm9v-the-real-token_0123456789"
SPEC = {"name": "stable-diffusion", "resources": {"gpus": ["nvidia-l4"]}}
# Served without a token, as DESIGN says: the dashboard page and its assets; and FastAPI's docs, which
# describe the API but hold no data.
PUBLIC = {"/", "/ui", "/docs", "/docs/oauth2-redirect", "/redoc", "/openapi.json"}
WRONG = {
    "no header": {},
    "empty": {"Authorization": ""},
    "scheme only": {"Authorization": "Bearer"},
    "empty token": {"Authorization": "Bearer "},
    "wrong token": {"Authorization": "Bearer not-the-token"},
    "a prefix of it": {"Authorization": f"Bearer {TOKEN[:-1]}"},
    "it and more": {"Authorization": f"Bearer {TOKEN}x"},
    "other case": {"Authorization": f"Bearer {TOKEN.upper()}"},
    "no scheme": {"Authorization": TOKEN},
    "basic scheme": {"Authorization": "Basic " + base64.b64encode(f"user:{TOKEN}".encode()).decode()},
    "token scheme": {"Authorization": f"Token {TOKEN}"},
    "two spaces": {"Authorization": f"Bearer  {TOKEN}"},
    "in a cookie": {"Cookie": f"token={TOKEN}"},
    "in another header": {"X-Api-Key": TOKEN},
}


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    opened = Store.for_state_dir(tmp_path / "state")
    yield opened
    opened.close()


@pytest.fixture
def provider() -> FakeProvider:
    return FakeProvider({"us-central1": {"nvidia-l4": 1}, "europe-west4": {"nvidia-tesla-t4": 1}})


@pytest.fixture
def client(store: Store, provider: FakeProvider) -> Iterator[TestClient]:
    app = create_api(ApiContext(store, provider, load_catalog(), TOKEN, GatewayAddress("127.0.0.1", free_port())))
    with TestClient(app) as test_client:
        assert test_client.post("/api/v1/services", json=SPEC, headers=bearer()).status_code == 201
        yield test_client


def bearer(token: str = TOKEN) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def api_routes(client: TestClient) -> list[tuple[str, str]]:
    """(method, path) of every operation the app's OpenAPI document lists, with path parameters filled in.

    Read from the OpenAPI document rather than `app.routes`, where an included router is one opaque
    entry: every operation of every router is here, whatever way they were mounted."""
    paths = client.app.openapi()["paths"]  # type: ignore[attr-defined]
    found = [(m.upper(), re.sub(r"\{[^}]+\}", "stable-diffusion", p)) for p, ops in paths.items() for m in ops]
    assert ("GET", "/api/v1/status") in found and len(found) >= 12, f"not every operation is listed: {found}"
    return found


def body_for(method: str, path: str) -> dict | None:
    if method != "POST":
        return None
    return {"region": "europe-west4"} if any(verb in path for verb in ("chaos", "expand", "shrink")) else SPEC


def test_the_public_routes_are_only_the_page_its_assets_and_the_docs(client: TestClient) -> None:
    """Routes on the app itself are the public ones; every API operation comes through a guarded router."""
    on_the_app = {route.path for route in client.app.routes if isinstance(route, BaseRoute) and hasattr(route, "path")}  # type: ignore[attr-defined]
    assert on_the_app == PUBLIC, "a route is served without the token; guard it or add it here on purpose"
    assert all(path.startswith("/api/v1/") for _, path in api_routes(client))


@pytest.mark.parametrize("wrong", list(WRONG), ids=list(WRONG))
def test_every_api_route_refuses_a_missing_or_wrong_token(
    client: TestClient, store: Store, provider: FakeProvider, wrong: str
) -> None:
    events_before = len(store.list_events())
    for method, path in api_routes(client):
        if not path.startswith("/api/"):
            continue
        response = client.request(method, path, json=body_for(method, path), headers=WRONG[wrong])
        assert response.status_code == 401, f"{method} {path} with {wrong}: {response.status_code} {response.text}"
        assert response.headers["www-authenticate"] == "Bearer"
        assert TOKEN not in response.text
    assert len(store.list_events()) == events_before, "a refused request changed something"
    assert store.get_service("stable-diffusion").deleted is False  # type: ignore[union-attr]
    assert store.get_service("stable-diffusion").pinned_regions == ()  # type: ignore[union-attr]


def test_every_api_route_serves_the_right_token(client: TestClient) -> None:
    for method, path in api_routes(client):
        if method == "DELETE" or "stream" in path:
            continue  # deleting is checked last; the stream is checked in test_api_dashboard
        response = client.request(method, path, json=body_for(method, path), headers=bearer())
        assert response.status_code != 401, f"{method} {path}: {response.text}"
    assert client.delete("/api/v1/services/stable-diffusion", headers=bearer()).status_code == 200


def test_the_scheme_is_case_insensitive_as_http_says(client: TestClient) -> None:
    assert client.get("/api/v1/status", headers={"Authorization": f"bearer {TOKEN}"}).status_code == 200


def test_the_token_is_compared_in_constant_time(client: TestClient, compare_digest_calls: list) -> None:
    """Every check goes through secrets.compare_digest (hmac's), with the presented and the real token."""
    calls = compare_digest_calls
    assert client.get("/api/v1/status", headers=bearer("guess")).status_code == 401
    assert client.get("/api/v1/status", headers=bearer()).status_code == 200
    assert calls == [(b"guess", TOKEN.encode()), (TOKEN.encode(), TOKEN.encode())]
