"""A state database that cannot be written or read: the API answers 503 saying what is wrong and what to
do (never a 500), nothing stored is lost, and it works again once the store does. Real SQLite failures:
a connection made read-only, a page limit (SQLite's own "disk full"), a file overwritten with garbage."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from fakes import FakeProvider
from fastapi.testclient import TestClient
from sqlalchemy import event

from gpuroam.catalog import load_catalog
from gpuroam.controller.api import ApiContext, create_api
from gpuroam.controller.store import Store
from gpuroam.spec import load_spec, spec_to_dict

TOKEN = "t0ken"
SPEC = spec_to_dict(load_spec("examples/stable-diffusion.yaml"))


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[Store, TestClient]]:
    store = Store.for_state_dir(tmp_path)
    app = create_api(ApiContext(store, FakeProvider({"us-central1": {"nvidia-l4": 1}}), load_catalog(), TOKEN))
    with TestClient(app, headers={"Authorization": f"Bearer {TOKEN}"}) as client:
        yield store, client
    store.close()


def on_every_connection(store: Store, pragma: str) -> Callable[[], None]:
    """`pragma` on each new connection of the store (the open ones closed first); returns its undoing."""

    def run(connection: Any, _: object) -> None:
        connection.execute(pragma)

    event.listen(store.engine, "connect", run)
    store.engine.dispose()

    def undo() -> None:
        event.remove(store.engine, "connect", run)
        store.engine.dispose()

    return undo


def names(client: TestClient) -> list[str]:
    return [s["name"] for s in client.get("/api/v1/status").json()["services"]]


def test_a_read_only_store_is_a_503_that_says_so_and_nothing_is_lost(served: tuple[Store, TestClient]) -> None:
    store, client = served
    assert client.post("/api/v1/services", json=SPEC).status_code == 201
    undo = on_every_connection(store, "PRAGMA query_only = ON")
    refused = client.post("/api/v1/services", json={**SPEC, "name": "other"})
    assert refused.status_code == 503 and refused.headers["retry-after"] == "5"
    detail = refused.json()["detail"]
    assert "is read-only: make it (and its directory) writable again" in detail and "Replicas keep serving" in detail
    assert names(client) == ["stable-diffusion"], "reads still answer; nothing stored is lost"
    undo()
    assert client.post("/api/v1/services", json={**SPEC, "name": "other"}).status_code == 201
    assert names(client) == ["other", "stable-diffusion"]


def test_a_full_disk_is_a_503_that_says_so(served: tuple[Store, TestClient]) -> None:
    store, client = served
    assert client.post("/api/v1/services", json=SPEC).status_code == 201
    with store.engine.connect() as conn:
        pages = conn.exec_driver_sql("PRAGMA page_count").scalar_one()
    undo = on_every_connection(store, f"PRAGMA max_page_count = {pages}")  # not one page more: SQLITE_FULL
    big = {**SPEC, "name": "other", "app": {**SPEC["app"], "args": ["--x"] * 2000}}
    refused = client.post("/api/v1/services", json=big)
    assert refused.status_code == 503, refused.text
    assert "is full: free some space" in refused.json()["detail"]
    undo()
    assert client.post("/api/v1/services", json=big).status_code == 201


def test_a_corrupt_store_is_a_503_that_says_how_to_start_again(
    served: tuple[Store, TestClient], tmp_path: Path
) -> None:
    store, client = served
    assert client.post("/api/v1/services", json=SPEC).status_code == 201
    store.engine.dispose()
    (tmp_path / "state.db").write_bytes(b"this is not a database" * 1000)
    answer = client.get("/api/v1/status")
    assert answer.status_code == 503
    assert "is corrupt: stop `gpuroam serve`, move the file aside" in answer.json()["detail"]


def test_a_store_file_deleted_under_the_server_stops_the_reconciler_and_kills_nothing(tmp_path: Path) -> None:
    """Deleted while serve ran, the file's replacement would know no replica, and every running worker would
    look like an orphan: the reconciler stops acting and says so, the API answers 503, nothing is killed."""
    import copy

    from fakes import FakeProvider as Provider

    from gpuroam.controller.reconciler import Reconciler

    store = Store.for_state_dir(tmp_path)
    provider = Provider(copy.deepcopy({"us-central1": {"nvidia-l4": 1}, "europe-west4": {"nvidia-l4": 1}}))
    reconciler = Reconciler(store, provider, load_catalog())
    store.put_service("stable-diffusion", SPEC, 0.0)
    for _ in range(3):
        reconciler.reconcile()
        provider.make_ready()
    running = set(provider.running)
    assert running and store.replaced() is None
    (tmp_path / "state.db").unlink()
    store.engine.dispose()  # new connections would open a new, empty file
    for _ in range(3):
        reconciler.reconcile()
    assert set(provider.running) == running, "no running replica was taken for an orphan"
    app = create_api(ApiContext(store, provider, load_catalog(), TOKEN))
    with TestClient(app, headers={"Authorization": f"Bearer {TOKEN}"}) as client:
        answer = client.get("/api/v1/status")
    assert answer.status_code == 503 and "was deleted or replaced while `gpuroam serve` ran" in answer.json()["detail"]
    store.close()
