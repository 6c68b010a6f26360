"""API keys through the control-plane API: made once and shown once, listed by name, revoked, and in the feed."""

from __future__ import annotations

import hashlib

from fakes import FakeProvider
from fastapi import FastAPI
from fastapi.testclient import TestClient

from gpuroam.catalog import load_catalog
from gpuroam.controller.api import gateway, keys, services
from gpuroam.controller.api.context import ApiContext
from gpuroam.controller.signals import GatewayAddress
from gpuroam.controller.store import Store
from gpuroam.spec import load_spec, spec_to_dict


def api(store: Store) -> TestClient:
    app = FastAPI()
    sites = {"us-central1": {"nvidia-l4": 1}}
    app.state.gpuroam = ApiContext(
        store, FakeProvider(sites), load_catalog(), "t0ken", GatewayAddress("127.0.0.1", 9100)
    )
    for router in (services.router, keys.router, gateway.router):
        app.include_router(router)
    return TestClient(app)


def test_a_key_is_shown_once_kept_as_a_hash_listed_by_name_and_revoked(store: Store) -> None:
    client = api(store)
    assert client.post("/api/v1/services/stable-diffusion/keys", json={}).status_code == 404, "no such service"
    client.post("/api/v1/services", json=spec_to_dict(load_spec("examples/stable-diffusion.yaml")))
    made = client.post("/api/v1/services/stable-diffusion/keys", json={}).json()
    assert made["name"] == "key-1" and made["key"].startswith("gpr_") and len(made["key"]) > 40
    named = client.post("/api/v1/services/stable-diffusion/keys", json={"name": "ci"}).json()
    assert client.post("/api/v1/services/stable-diffusion/keys", json={"name": "ci"}).status_code == 409
    assert client.post("/api/v1/services/stable-diffusion/keys", json={"name": "a b"}).status_code == 422
    listed = client.get("/api/v1/services/stable-diffusion/keys").json()
    assert [k["name"] for k in listed] == ["key-1", "ci"] and all("key" not in k for k in listed)
    assert [k.sha256 for k in store.list_api_keys()] == [
        hashlib.sha256(made["key"].encode()).hexdigest(),
        hashlib.sha256(named["key"].encode()).hexdigest(),
    ], "only hashes are stored"
    (fed,) = client.get("/api/v1/gateway").json()["services"]
    assert fed["api_keys"] == {k.sha256: k.name for k in store.list_api_keys()}
    assert client.delete("/api/v1/services/stable-diffusion/keys/key-1").json() == {
        "service": "stable-diffusion",
        "revoked": "key-1",
    }
    assert client.delete("/api/v1/services/stable-diffusion/keys/key-1").status_code in (404, 409)
    (fed,) = client.get("/api/v1/gateway").json()["services"]
    assert list(fed["api_keys"].values()) == ["ci"], "the gateway stops taking a revoked key"
    last = client.delete("/api/v1/services/stable-diffusion/keys/ci")
    assert last.status_code == 409 and "open to anyone" in last.json()["detail"]
    assert client.delete("/api/v1/services/stable-diffusion/keys/ci?open_endpoint=true").status_code == 200
    (fed,) = client.get("/api/v1/gateway").json()["services"]
    assert fed["api_keys"] == {}, "no key: an open endpoint, as asked"
