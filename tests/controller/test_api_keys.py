"""API keys through the control-plane API: made once and shown once, listed by name, revoked, and in the feed."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

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


def test_keys_from_the_specs_file_are_fed_listed_and_revoked_in_the_file(store: Store, tmp_path: Path) -> None:
    client = api(store)
    keys_file = tmp_path / "keys.txt"
    spec = spec_to_dict(load_spec("examples/stable-diffusion.yaml"))
    spec["endpoint"] = {"api_keys": str(keys_file)}
    missing = client.post("/api/v1/services", json=spec)
    assert missing.status_code == 422 and "not found" in missing.json()["detail"], "a typo shows at up"
    keys_file.write_text("# nothing yet\n")
    assert "holds no key" in client.post("/api/v1/services", json=spec).json()["detail"]
    keys_file.write_text(f"alice: {'a' * 20}\n")
    assert client.post("/api/v1/services", json=spec).status_code == 201
    made = client.post("/api/v1/services/stable-diffusion/keys", json={"name": "ci"}).json()
    assert client.post("/api/v1/services/stable-diffusion/keys", json={"name": "alice"}).status_code == 409
    listed = client.get("/api/v1/services/stable-diffusion/keys").json()
    assert [(k["name"], k["source"]) for k in listed] == [("ci", "gpuroam keys"), ("alice", str(keys_file))]
    (fed,) = client.get("/api/v1/gateway").json()["services"]
    assert fed["key_required"] is True
    assert fed["api_keys"] == {
        hashlib.sha256(made["key"].encode()).hexdigest(): "ci",
        hashlib.sha256(b"a" * 20).hexdigest(): "spec:alice",
    }
    refused = client.delete("/api/v1/services/stable-diffusion/keys/alice")
    assert refused.status_code == 409 and str(keys_file) in refused.json()["detail"]
    assert client.delete("/api/v1/services/stable-diffusion/keys/ci").status_code == 200, "the file still keys it"
    keys_file.write_text("")  # every key removed from the file: the endpoint refuses everyone, never opens
    os.utime(keys_file, ns=(1, 1))
    (fed,) = client.get("/api/v1/gateway").json()["services"]
    assert fed["key_required"] is True and fed["api_keys"] == {}


def test_a_tls_pair_that_does_not_load_is_refused_at_up(store: Store, tmp_path: Path) -> None:
    client = api(store)
    (tmp_path / "cert.pem").write_text("not a certificate")
    (tmp_path / "key.pem").write_text("not a key")
    spec = spec_to_dict(load_spec("examples/stable-diffusion.yaml"))
    spec["endpoint"] = {"tls": {"certificate": str(tmp_path / "cert.pem"), "key": str(tmp_path / "key.pem")}}
    refused = client.post("/api/v1/services", json=spec)
    assert refused.status_code == 422 and "must be PEM" in refused.json()["detail"]
