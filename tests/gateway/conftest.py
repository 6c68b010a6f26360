from __future__ import annotations

import socket
from collections.abc import Callable, Iterator, Sequence

import pytest
from harness import FakeReplica, LoopThread

from gpuroam.catalog import load_catalog
from gpuroam.gateway import Backend, Gateway, HealthPolicy, Limits, ProxyConfig, ServiceBackends

FAST_HEALTH = HealthPolicy(unhealthy_after=2, healthy_after=1, eject_s=0.5, eject_max_s=2.0)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def backend(replica: FakeReplica, region: str = "us-central1", gpu: str = "nvidia-l4", speed: float = 1.0) -> Backend:
    return Backend(replica=replica.name or f"r{replica.port}", url=replica.url, region=region, gpu=gpu, speed=speed)


class Running:
    """A started gateway serving one service on `url`, driven from the test's thread."""

    def __init__(self, loops: LoopThread, gateway: Gateway, port: int) -> None:
        self.loops = loops
        self.gateway = gateway
        self.port = port
        self.url = f"http://127.0.0.1:{port}"

    def set_backends(self, backends: Sequence[Backend]) -> None:
        self.loops.run(self.gateway.apply([ServiceBackends("svc", self.port, tuple(backends))]))

    def report(self) -> dict:
        async def read() -> dict:
            return self.gateway.health_report()

        return self.loops.run(read())


@pytest.fixture
def loops() -> Iterator[LoopThread]:
    loops = LoopThread()
    yield loops
    loops.close()


@pytest.fixture
def start_gateway(loops: LoopThread) -> Iterator[Callable[..., Running]]:
    started: list[Gateway] = []

    def start(
        backends: Sequence[Backend] = (),
        config: ProxyConfig = ProxyConfig(hold_s=2.0, retries=3, upstream_timeout_s=10.0),
        limits: Limits = Limits(),
        probe_interval_s: float = 0.2,
    ) -> Running:
        gateway = Gateway(
            "127.0.0.1", config, limits, FAST_HEALTH, catalog=load_catalog(), probe_interval_s=probe_interval_s
        )
        loops.run(gateway.start())
        started.append(gateway)
        running = Running(loops, gateway, free_port())
        running.set_backends(backends)
        return running

    yield start
    for gateway in started:
        loops.run(gateway.stop())
