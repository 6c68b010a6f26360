from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence

import pytest
from harness import LoopThread, Running

from gpuroam.catalog import load_catalog
from gpuroam.gateway import Backend, Gateway, HealthPolicy, Limits, ProxyConfig
from gpuroam.providers.local import free_port

FAST_HEALTH = HealthPolicy(unhealthy_after=2, healthy_after=1, eject_s=0.5, eject_max_s=2.0)


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
        internal_token: str | None = None,
    ) -> Running:
        gateway = Gateway(
            "127.0.0.1",
            config,
            limits,
            FAST_HEALTH,
            catalog=load_catalog(),
            probe_interval_s=probe_interval_s,
            internal_token=internal_token,
        )
        loops.run(gateway.start())
        started.append(gateway)
        running = Running(loops, gateway, free_port())
        running.set_backends(backends)
        return running

    yield start
    for gateway in started:
        loops.run(gateway.stop())
