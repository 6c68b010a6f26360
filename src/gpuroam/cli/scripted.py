"""`gpuroam demo --scripted`: the five moves played by themselves under a steady load.

A few clients generate images through the global endpoint without pause while the script
serves, expands, shows, fails the preferred GPU and recovers; the summary counts every request
served and failed, each region's share, and how long failover and recovery took.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Self

import httpx

from gpuroam.controller.client import ControlPlaneClient

Say = Callable[[str], None]


@dataclass
class Served:
    at: float
    region: str
    gpu: str


class SteadyLoad:
    """Clients generating small images through `endpoint` back to back, recording every outcome."""

    def __init__(self, endpoint: str, clients: int = 3, steps: int = 2, size: int = 64) -> None:
        self.endpoint = endpoint
        self.served: list[Served] = []
        self.failures: list[str] = []
        self._body = {"steps": steps, "width": size, "height": size}
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, args=(i,), daemon=True) for i in range(clients)]

    def __enter__(self) -> Self:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=60)

    @property
    def ok(self) -> int:
        return len(self.served)

    def since(self, mark: int) -> list[Served]:
        return self.served[mark:]

    def _run(self, index: int) -> None:
        body = {"prompt": f"a lighthouse, client {index}", "seed": index, **self._body}
        with httpx.Client(timeout=120) as http:
            while not self._stop.is_set():
                try:
                    response = http.post(f"{self.endpoint}/sdapi/v1/txt2img", json=body)
                except httpx.HTTPError as error:
                    self.failures.append(f"{type(error).__name__}: {error}")
                    continue
                region, gpu = response.headers.get("x-gpuroam-region"), response.headers.get("x-gpuroam-gpu")
                if response.status_code != 200 or not response.json().get("images"):
                    self.failures.append(f"HTTP {response.status_code}: {response.text[:200]}")
                elif region is None or gpu is None:
                    self.failures.append("a response without X-Gpuroam-Region/GPU")
                else:
                    self.served.append(Served(time.monotonic(), region, gpu))


@dataclass
class Summary:
    served: int = 0
    failed: int = 0
    failures: list[str] = field(default_factory=list)
    share_by_region: dict[str, float] = field(default_factory=dict)
    gpus_by_phase: dict[str, list[str]] = field(default_factory=dict)
    failover_s: float | None = None  # `fail gpu` until two regions serve on other GPUs
    recovery_s: float | None = None  # `recover` until the preferred placement serves again
    endpoint_unchanged: bool = True

    def as_dict(self) -> dict[str, Any]:
        return self.__dict__ | {"failures": self.failures[:20]}


def ready(client: ControlPlaneClient, name: str) -> list[dict[str, Any]]:
    return [r for r in client.get(f"/services/{name}")["replicas"] if r["state"] == "ready"]


def wait_until(condition: Callable[[], bool], timeout_s: float, what: str) -> float:
    """Seconds it took; TimeoutError names what never happened."""
    began = time.monotonic()
    while not condition():
        if time.monotonic() - began > timeout_s:
            raise TimeoutError(f"gave up after {timeout_s:.0f} s waiting for {what}")
        time.sleep(0.2)
    return time.monotonic() - began


def play(client: ControlPlaneClient, name: str, expand_region: str, lose_gpu: str, say: Say) -> Summary:
    """The five moves under load; the service must already be up (move 1 happened)."""
    service = client.get(f"/services/{name}")
    endpoint = service["endpoint"]
    preferred = {(r["region"], r["gpu"]) for r in ready(client, name)}
    summary = Summary()
    with SteadyLoad(endpoint) as load:
        wait_until(lambda: load.ok >= 5, 120, "the first images through the endpoint")
        say(f"1. serve    {load.ok} images so far through {endpoint}")

        marks = {"serve": 0, "expand": load.ok}
        expanded = client.post(f"/services/{name}/expand", {"region": expand_region})
        summary.endpoint_unchanged = expanded["endpoint"] == endpoint
        took = wait_until(lambda: expand_region in {r["region"] for r in ready(client, name)}, 180, expand_region)
        say(f"2. expand   {expand_region} serves after {took:.1f} s; endpoint unchanged: {summary.endpoint_unchanged}")

        regions = sorted({f"{r['region']}/{r['gpu']}" for r in ready(client, name)})
        say(f"3. see      ready: {', '.join(regions)}")

        marks["fail"] = load.ok
        client.post("/chaos/fail", {"gpu": lose_gpu})
        summary.failover_s = wait_until(
            lambda: _serving_without(client, name, lose_gpu), 180, f"two regions serving without {lose_gpu}"
        )
        say(f"4. fail     {lose_gpu} lost; serving on other GPUs after {summary.failover_s:.1f} s")

        marks["failed-over"] = load.ok
        wait_until(lambda: load.ok >= marks["failed-over"] + 5, 60, "traffic on the other GPUs")
        marks["recover"] = load.ok
        client.post("/chaos/recover", {})
        summary.recovery_s = wait_until(
            lambda: preferred <= {(r["region"], r["gpu"]) for r in ready(client, name)}, 300, "the preferred placement"
        )
        say(f"5. recover  back on {', '.join(sorted(g for _, g in preferred))} after {summary.recovery_s:.1f} s")
        marks["after"] = load.ok
        wait_until(lambda: load.ok >= marks["after"] + 20, 60, "traffic after recovery")
    phases = list(marks.items())
    for (phase, start), (_, end) in zip(phases, phases[1:] + [("end", len(load.served))], strict=True):
        summary.gpus_by_phase[phase] = sorted({s.gpu for s in load.served[start:end]})
    summary.served, summary.failed, summary.failures = load.ok, len(load.failures), list(load.failures)
    regions_count = Counter(s.region for s in load.served)
    summary.share_by_region = {r: round(n / max(1, load.ok), 3) for r, n in sorted(regions_count.items())}
    return summary


def _serving_without(client: ControlPlaneClient, name: str, gpu: str) -> bool:
    serving = ready(client, name)
    return len({r["region"] for r in serving}) >= 2 and all(r["gpu"] != gpu for r in serving)


def tear_down(plane: Any, client: ControlPlaneClient, name: str) -> None:
    """Leave no worker processes behind: mark the service deleted, wait for the drain, stop the plane."""
    from gpuroam.controller.client import ClientError

    try:
        client.delete(f"/services/{name}")
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and plane.provider.observe():
            time.sleep(0.5)
    except ClientError:
        pass
    for seen in plane.provider.observe():
        plane.provider.terminate(seen.replica_id)
    plane.stop()
