"""The local provider's workers as the process table shows them: the truth about what runs.

Each worker carries its provider's id, its service and its capacity (Spot or on-demand) in its
environment and its replica, region, GPU and port on its command line, so a scan of /proc finds
every one, including one spawned an instant before the controller was killed.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass
from pathlib import Path

from gpuroam import processes
from gpuroam.providers.base import Observed, ObservedState
from gpuroam.records import Capacity

CAPACITY_ENV = "GPUROAM_CAPACITY"  # a worker's capacity, "spot" or "on-demand" (absent: on-demand, as before Spot)


@dataclass(frozen=True)
class Worker:
    """A live worker process of this provider, as read from /proc."""

    pid: int
    replica_id: str
    service: str
    region: str
    gpu: str
    port: int
    cuda_device: str | None
    host: str = "127.0.0.1"
    capacity: Capacity = Capacity.ON_DEMAND

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def observed(self, ready: bool, reclaim_at: float | None = None) -> Observed:
        state = ObservedState.READY if ready else ObservedState.STARTING
        detail = f"pid {self.pid}"
        return Observed(
            self.replica_id, self.service, self.region, self.gpu, state, self.url, detail, False, reclaim_at
        )


def parse_worker(pid: int, cmdline: list[str], environ: dict[str, str]) -> Worker | None:
    """A `gpuroam worker ... --replica ID` command line, or None; the last value of an option wins, as in click."""
    starts = [i for i in range(1, len(cmdline)) if cmdline[i] == "worker" and Path(cmdline[i - 1]).name == "gpuroam"]
    if not starts:
        return None
    options: dict[str, str] = {}
    rest = cmdline[starts[0] + 1 :]
    for i, arg in enumerate(rest):
        if arg.startswith("--") and "=" in arg:
            key, value = arg[2:].split("=", 1)
            options[key] = value
        elif arg.startswith("--") and i + 1 < len(rest):
            options[arg[2:]] = rest[i + 1]
    if "replica" not in options or not options.get("port", "").isdigit():
        return None
    region, gpu, port = options.get("region", ""), options.get("gpu", ""), int(options["port"])
    service, device = environ.get("GPUROAM_SERVICE", ""), environ.get("CUDA_VISIBLE_DEVICES")
    capacity = Capacity.SPOT if environ.get(CAPACITY_ENV) == Capacity.SPOT.value else Capacity.ON_DEMAND
    host = options.get("host", "127.0.0.1")
    return Worker(pid, options["replica"], service, region, gpu, port, device, host, capacity)


def read_worker(pid: int, marker: str) -> Worker | None:
    """The worker process `pid` if it is live (not a zombie) and its environment carries `marker`.

    A process just past execve can show an empty environment for an instant; the provider's spawn waits
    that out."""
    environ = processes.environment(pid)
    if environ is None or marker not in environ:
        return None
    cmdline = processes.command_line(pid)
    if cmdline is None or processes.zombie(pid):
        return None
    return parse_worker(pid, cmdline, dict(item.split("=", 1) for item in environ if "=" in item))


def scan_workers(marker: str) -> list[Worker]:
    """Every live `gpuroam worker` process whose environment carries `marker`, oldest first."""
    found = (read_worker(pid, marker) for pid in processes.pids())
    return sorted((w for w in found if w is not None), key=lambda w: w.pid)


def free_port() -> int:
    """A loopback TCP port free now (for a worker here; tests and benchmarks use it for their servers)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port
