"""The worker's --api-auth (A1111's `user:pass[,user2:pass2]` HTTP basic auth): every /sdapi/v1 route,
progress and interrupt included, answers 401 without the credentials or with wrong ones and serves
with right ones. As in A1111, the health, metrics, info and Web UI routes stay public (an orchestrator
and a load balancer probe them).
"""

from __future__ import annotations

import base64
import time
from collections.abc import Iterator

import pytest
from fastapi.routing import APIRoute
from fastapi.testclient import TestClient
from PIL import Image

from gpuroam.worker import LoadedModel, WorkerConfig, create_app
from gpuroam.worker.images import encode_png

USERS = (("alice", "s3cret:with-colon"), ("bob", "hunter2"))
PUBLIC = {"/", "/internal/ping", "/metrics", "/gpuroam/worker", "/static", "/openapi.json", "/docs", "/redoc"}
SMALL = {"prompt": "a cat", "steps": 2, "width": 64, "height": 64, "seed": 1}


def basic(user: str, password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


WRONG = {
    "no header": {},
    "wrong password": basic("alice", "hunter2"),
    "other user's password": basic("bob", "s3cret:with-colon"),
    "unknown user": basic("mallory", "hunter2"),
    "empty": basic("", ""),
    "password prefix": basic("alice", "s3cret"),
    "user case": basic("Alice", "s3cret:with-colon"),
    "not base64": {"Authorization": "Basic !!!not-base64!!!"},
    "no colon": {"Authorization": "Basic " + base64.b64encode(b"alice").decode()},
    "not utf-8": {"Authorization": "Basic " + base64.b64encode(b"\xff\xfe:\xfd").decode()},
    "bearer": {"Authorization": "Bearer s3cret:with-colon"},
}


@pytest.fixture(scope="module")
def client(tiny_model: LoadedModel) -> Iterator[TestClient]:
    config = WorkerConfig(region="us-central1", gpu="nvidia-l4", replica="r1", api_auth=USERS)
    with TestClient(create_app(config, model=tiny_model)) as test_client:
        deadline = time.monotonic() + 30
        while test_client.get("/internal/ping").status_code != 200:
            assert time.monotonic() < deadline, "worker never became ready"
            time.sleep(0.02)
        yield test_client


def routes(client: TestClient) -> list[tuple[str, str]]:
    return [
        (method, route.path)
        for route in client.app.routes  # type: ignore[attr-defined]
        if isinstance(route, APIRoute) and route.path.startswith("/sdapi/")
        for method in sorted(route.methods)
    ]


AN_IMAGE = encode_png(Image.new("RGB", (8, 8)), "")


def body_for(method: str, path: str) -> dict | None:
    if method != "POST":
        return None
    if path.endswith("options"):
        return {"CLIP_stop_at_last_layers": 1}
    if path.endswith(("png-info", "interrogate", "extra-single-image")):
        return {"image": AN_IMAGE}
    if path.endswith("extra-batch-images"):
        return {"imageList": [{"data": AN_IMAGE, "name": "a.png"}]}
    return SMALL if path.endswith("img") else None


def test_the_api_routes_are_the_a1111_ones_and_only_they_are_guarded(client: TestClient) -> None:
    served = {(m, p) for m, p in routes(client)}
    assert {("GET", "/sdapi/v1/progress"), ("POST", "/sdapi/v1/interrupt"), ("POST", "/sdapi/v1/skip")} <= served
    public = {getattr(r, "path", "") for r in client.app.routes if not getattr(r, "dependencies", None)}  # type: ignore[attr-defined]
    assert public - {"/docs/oauth2-redirect"} == PUBLIC
    for path in ("/internal/ping", "/metrics", "/gpuroam/worker", "/"):
        assert client.get(path).status_code == 200, path


@pytest.mark.parametrize("wrong", list(WRONG), ids=list(WRONG))
def test_every_api_route_answers_401_without_the_right_credentials(client: TestClient, wrong: str) -> None:
    for method, path in routes(client):
        response = client.request(method, path, json=body_for(method, path), headers=WRONG[wrong])
        assert response.status_code == 401, f"{method} {path} with {wrong}: {response.status_code}"
        assert response.headers["www-authenticate"] == "Basic"


@pytest.mark.parametrize(("user", "password"), USERS, ids=[u for u, _ in USERS])
def test_every_api_route_serves_each_configured_user(client: TestClient, user: str, password: str) -> None:
    for method, path in routes(client):
        status = client.request(method, path, json=body_for(method, path), headers=basic(user, password)).status_code
        expected = 422 if path.endswith("img2img") else 200  # no init image sent: the body is refused, not the user
        assert status == expected, f"{method} {path} as {user}: {status}"


def test_progress_and_interrupt_need_the_credentials_too(client: TestClient) -> None:
    for method, path in (("GET", "/sdapi/v1/progress?id_task=x"), ("POST", "/sdapi/v1/interrupt?id_task=x")):
        assert client.request(method, path).status_code == 401
        assert client.request(method, path, headers=basic(*USERS[1])).status_code == 200


def test_credentials_are_compared_in_constant_time(client: TestClient, compare_digest_calls: list) -> None:
    """Through secrets.compare_digest, against every configured user, so timing says nothing of which matched."""
    calls = compare_digest_calls
    assert client.get("/sdapi/v1/samplers", headers=basic("alice", "guess")).status_code == 401
    assert calls == [
        (b"alice", b"alice"),
        (b"guess", b"s3cret:with-colon"),
        (b"alice", b"bob"),
        (b"guess", b"hunter2"),
    ]
