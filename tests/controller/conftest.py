"""Store fixtures: every store test runs on SQLite and on a real, throwaway PostgreSQL server.

The PostgreSQL cluster is started once per session from the server binaries under
/usr/lib/postgresql/*/bin (`make test` installs them), as the `postgres` user when we are root
(initdb refuses root), listening on 127.0.0.1 only. Without them the PostgreSQL tests fail and
say so; GPUROAM_SKIP_POSTGRES=1 skips them instead.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest

from gpuroam.controller.store import Store


@dataclass(frozen=True)
class PostgresCluster:
    port: int

    def url(self, database: str) -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/{database}"

    def admin(self, sql: str) -> None:
        """Run one statement (CREATE/DROP DATABASE) outside a transaction."""
        with psycopg.connect(f"postgresql://postgres@127.0.0.1:{self.port}/postgres", autocommit=True) as conn:
            conn.execute(sql)  # type: ignore[arg-type]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _server_binaries() -> Path:
    if os.environ.get("GPUROAM_SKIP_POSTGRES") == "1":
        pytest.skip("GPUROAM_SKIP_POSTGRES=1: the PostgreSQL store tests are skipped")
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(Path(p).parts[-3]))
    if not found:
        pytest.fail(
            "the store tests need a PostgreSQL server, but no initdb was found under /usr/lib/postgresql/*/bin. "
            "Run `make test`, which installs it (Debian package postgresql), or set GPUROAM_SKIP_POSTGRES=1 "
            "to skip the PostgreSQL tests.",
            pytrace=False,
        )
    return Path(found[-1]).parent


@pytest.fixture(scope="session")
def postgres_cluster() -> Iterator[PostgresCluster]:
    """A PostgreSQL cluster for this test session: trust auth, fsync off, gone afterwards."""
    bin_dir = _server_binaries()
    as_user: list[str] = []
    if os.geteuid() == 0:
        try:
            postgres = pwd.getpwnam("postgres")
        except KeyError:
            pytest.fail("running as root, but there is no `postgres` user to run initdb as; run `make test`")
        as_user = ["runuser", "-u", "postgres", "--"]
    root = Path(tempfile.mkdtemp(prefix="gpuroam-pg-"))
    if as_user:
        os.chown(root, postgres.pw_uid, postgres.pw_gid)
    data, log = root / "data", root / "server.log"

    def run(*command: str) -> None:
        done = subprocess.run([*as_user, *command], cwd=root, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            server_log = log.read_text() if log.exists() else ""
            pytest.fail(f"{' '.join(command)} failed:\n{done.stdout}{done.stderr}{server_log}", pytrace=False)

    port = _free_port()
    try:
        run(
            str(bin_dir / "initdb"),
            "-D",
            str(data),
            "-U",
            "postgres",
            "-A",
            "trust",
            "-E",
            "UTF8",
            "--locale=C",
            "--no-sync",
        )
        options = f"-c listen_addresses=127.0.0.1 -p {port} -k {root} -c fsync=off -c full_page_writes=off"
        run(str(bin_dir / "pg_ctl"), "-D", str(data), "-l", str(log), "-w", "-t", "60", "-o", options, "start")
        cluster = PostgresCluster(port)
        cluster.admin("CREATE DATABASE gpuroam_test")
        yield cluster
    finally:
        stop = [str(bin_dir / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop"]
        subprocess.run([*as_user, *stop], cwd=root, capture_output=True, check=False)
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def postgres_url(postgres_cluster: PostgresCluster) -> str:
    """The session's database, for tests that run a whole control plane against PostgreSQL."""
    return postgres_cluster.url("gpuroam_test")


@pytest.fixture
def fresh_postgres_url(postgres_cluster: PostgresCluster) -> Iterator[str]:
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
