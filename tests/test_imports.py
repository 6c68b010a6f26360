"""What the light processes load: `gpuroam status` and the gateway import no web framework of the
control plane, no database layer and no torch (they start fast and stay small).

Each runs for real in a fresh interpreter, which then lists the modules it loaded."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest

from gpuroam.providers.local import free_port

HEAVY = ("fastapi", "sqlalchemy", "torch", "diffusers", "transformers", "uvicorn", "psycopg")
STATUS = {"services": [{"name": "sd", "endpoint": None, "deleted": False, "replicas": []}]}

# Runs argv through the real CLI, then writes the top-level packages it loaded to argv[1].
RUN_AND_LIST = """
import atexit, json, sys
listing, argv = sys.argv[1], sys.argv[2:]
atexit.register(lambda: open(listing, "w").write(json.dumps(sorted({m.split(".")[0] for m in sys.modules}))))
from gpuroam.cli import app
app(argv, prog_name="gpuroam")
"""


def heavy_loaded(listing: Path) -> list[str]:
    return sorted(set(json.loads(listing.read_text())) & set(HEAVY))


class _StatusHandler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = json.dumps(STATUS).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *_: object) -> None:
        pass


@pytest.fixture
def control_plane_stand_in() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _StatusHandler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def test_status_imports_no_server_framework_database_or_torch(control_plane_stand_in: str, tmp_path: Path) -> None:
    listing = tmp_path / "modules.json"
    command = [sys.executable, "-c", RUN_AND_LIST, str(listing), "status", "--json", "--server", control_plane_stand_in]
    done = subprocess.run(command, check=False, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["services"][0]["name"] == "sd"  # the command really ran
    assert heavy_loaded(listing) == []


def test_the_gateway_process_imports_no_server_framework_database_or_torch(tmp_path: Path) -> None:
    listing, port = tmp_path / "modules.json", free_port()
    argv = ["gateway", "--port", str(port), "--backend", f"http://127.0.0.1:{free_port()}"]
    gateway = subprocess.Popen([sys.executable, "-c", RUN_AND_LIST, str(listing), *argv], stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 60
        while True:
            assert gateway.poll() is None and time.monotonic() < deadline, "the gateway did not start"
            try:
                if httpx.get(f"http://127.0.0.1:{port}/gpuroam/health", timeout=1, trust_env=False).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.1)
    finally:
        gateway.send_signal(signal.SIGTERM)  # drains, then exits: the listing is written at exit
        gateway.wait(timeout=60)
    assert heavy_loaded(listing) == []
