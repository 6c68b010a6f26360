"""Store fixtures: every store test runs on SQLite and on a real, throwaway PostgreSQL server.

The PostgreSQL cluster is started once per session from the server binaries under
/usr/lib/postgresql/*/bin (`make test` installs them), as the `postgres` user when we are root
(initdb refuses root), listening on 127.0.0.1 only. Without them the PostgreSQL tests fail and
say so; GPUROAM_SKIP_POSTGRES=1 skips them instead.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from gpuroam.controller.store import Store
from gpuroam.providers.factories import local_provider
from gpuroam.providers.local import free_port
from gpuroam.serve import ControlPlane, ServeOptions
from postgres_server import PostgresServer, PostgresUnavailable


@pytest.fixture(scope="session")
def postgres_cluster() -> Iterator[PostgresServer]:
    """A PostgreSQL cluster for this test session: trust auth, fsync off, gone afterwards."""
    if os.environ.get("GPUROAM_SKIP_POSTGRES") == "1":
        pytest.skip("GPUROAM_SKIP_POSTGRES=1: the PostgreSQL store tests are skipped")
    try:
        server = PostgresServer()
    except PostgresUnavailable as error:
        pytest.fail(
            f"the store tests need a PostgreSQL server: {error} (or set GPUROAM_SKIP_POSTGRES=1)", pytrace=False
        )
    try:
        server.start()
        server.admin("CREATE DATABASE gpuroam_test")
        yield server
    finally:
        server.remove()


@pytest.fixture(scope="session")
def postgres_url(postgres_cluster: PostgresServer) -> str:
    """The session's database, for tests that run a whole control plane against PostgreSQL."""
    return postgres_cluster.url("gpuroam_test")


@pytest.fixture
def fresh_postgres_url(postgres_cluster: PostgresServer) -> Iterator[str]:
    """An empty database of its own for one test, dropped (connections and all) afterwards."""
    name = f"t_{uuid.uuid4().hex[:16]}"
    postgres_cluster.admin(f"CREATE DATABASE {name} STRATEGY FILE_COPY")
    yield postgres_cluster.url(name)
    postgres_cluster.admin(f"DROP DATABASE {name} WITH (FORCE)")


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A URL of an empty store on each backend."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'state' / 'state.db'}"
    return request.getfixturevalue("fresh_postgres_url")


@pytest.fixture
def store(store_url: str) -> Iterator[Store]:
    opened = Store.open(store_url)
    yield opened
    opened.close()


@pytest.fixture
def plane(tmp_path: Path) -> Iterator[ControlPlane]:
    """The whole control plane in process over the example local regions: real workers, the real gateway."""
    examples = Path(__file__).resolve().parents[2] / "examples"
    options = ServeOptions(tmp_path / "state", port=free_port(), interval_s=0.5, gateway_port=free_port())
    control = ControlPlane(options, local_provider(examples / "local-regions.yaml", options.state_dir))
    control.start()
    try:
        yield control
    finally:
        control.stop()  # the loop first, so it cannot launch while we clean up
        for seen in control.provider.observe():
            control.provider.terminate(seen.replica_id)
