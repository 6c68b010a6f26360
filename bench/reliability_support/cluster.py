"""A served cluster for one scenario: `gpuroam serve` as its own process (so it can be SIGKILLed),
the example service on it, and the worker processes it runs, found in /proc."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import yaml

from gpuroam.controller.client import ClientError, ControlPlaneClient
from gpuroam.providers.local import LocalProvider, free_port
from gpuroam.statedir import ServerInfo
from postgres_server import PostgresServer

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"
SERVICE = "stable-diffusion"


def wait_for(condition: Callable[[], Any], timeout_s: float, what: str, every_s: float = 0.2) -> Any:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            value = condition()
        except (httpx.HTTPError, ClientError, OSError, ValueError, KeyError):
            value = None
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout_s:.0f} s waiting for {what}")
        time.sleep(every_s)


def scenario_spec(workdir: Path, **placement: float) -> Path:
    """The example service with timings that suit a scenario of a minute or two."""
    spec = yaml.safe_load((EXAMPLES / "stable-diffusion.yaml").read_text())
    spec["placement"].update(
        {"provision_timeout_s": 60, "block_ttl_s": 4, "block_max_s": 60, "move_back_after_s": 8, **placement}
    )
    path = workdir / "spec.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


@dataclass
class Cluster:
    """`gpuroam serve` on free ports in `workdir`, with the local regions of `regions_file`."""

    workdir: Path
    regions_file: Path = EXAMPLES / "local-regions.yaml"
    postgres: PostgresServer | None = None  # the state store, when not SQLite in the state dir
    network: str = "none"
    api_port: int = field(default_factory=free_port)
    gateway_port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None

    @property
    def state(self) -> Path:
        return self.workdir / "state"

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.gateway_port}"

    @property
    def client(self) -> ControlPlaneClient:
        info = ServerInfo.read(self.state)
        assert info is not None, "the control plane has not written server.json"
        return ControlPlaneClient(info.url, info.token)

    def start(self) -> None:
        """Start (or restart) the control plane; returns once its API answers."""
        command = [sys.executable, "-m", "gpuroam", "serve", "--state", str(self.state)]
        command += ["--port", str(self.api_port), "--gateway-port", str(self.gateway_port)]
        command += ["--regions", str(self.regions_file)]
        if self.postgres is not None:
            command += ["--store", self.postgres.url("gpuroam")]
        if self.network != "none":
            command += ["--network", self.network]
        self.state.mkdir(parents=True, exist_ok=True)
        log = (self.workdir / "serve.log").open("ab")
        self.process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=log, stderr=log)
        log.close()
        wait_for(lambda: ServerInfo.read(self.state) and self.client.get("/status"), 60, "the control-plane API")

    def up(self, spec: Path, regions: int = 2) -> None:
        """Serve the service and wait until it is ready in `regions` regions on its preferred GPU."""
        from gpuroam.spec import load_spec, spec_to_dict

        parsed = load_spec(spec)
        self.client.post("/services", spec_to_dict(parsed))
        preferred = parsed.resources.gpus[0]
        wait_for(
            lambda: len({r["region"] for r in self.ready() if r["gpu"] == preferred}) >= regions,
            180,
            f"{regions} regions ready on {preferred}",
        )
        wait_for(lambda: httpx.get(f"{self.endpoint}/internal/ping", timeout=5).status_code == 200, 30, "the endpoint")

    def ready(self) -> list[dict[str, Any]]:
        return [r for r in self.client.get(f"/services/{SERVICE}")["replicas"] if r["state"] == "ready"]

    def events(self) -> list[dict[str, Any]]:
        return self.client.get("/events", limit=1000)

    def kill_controller(self) -> None:
        """SIGKILL the control plane: the gateway and the workers live on."""
        assert self.process is not None
        self.process.kill()
        self.process.wait()

    def gateway_pid(self) -> int:
        return int(json.loads((self.state / "gateway.json").read_text())["pid"])

    def worker_pids(self, region: str | None = None, replica: str | None = None) -> dict[str, int]:
        """Replica id -> pid of this cluster's live worker processes, from /proc."""
        provider = LocalProvider.from_file(self.regions_file, self.state)
        return {
            seen.replica_id: int(seen.detail.split()[-1])
            for seen in provider.observe()
            if region in (None, seen.region) and replica in (None, seen.replica_id)
        }

    def stop(self) -> None:
        """Stop the control plane (which drains and stops the gateway), then every worker."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.process.kill()
        try:
            os.kill(self.gateway_pid(), signal.SIGKILL)  # only if a kill left one behind
        except (OSError, ValueError, KeyError):
            pass
        provider = LocalProvider.from_file(self.regions_file, self.state)
        for seen in provider.observe():
            provider.terminate(seen.replica_id)
