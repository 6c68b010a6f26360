"""`gpuroam demo --scripted`: the five moves played by themselves under load, then demand that comes and goes.

A few clients generate images through the global endpoint without pause while the script serves,
expands, shows, fails the preferred GPU and recovers. Then the same service follows demand: it gets
an autoscale section and gives back the region it expanded into, one client leaves it in one region,
a burst of clients scales it out into a second and a third, the quiet after scales it in and puts it
to sleep, and one request wakes it. The summary counts every request served and failed, each
region's share, and how long each step took.
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
BURST_CLIENTS = 12  # with autoscaled()'s target, three replicas' work: the service wants its max, 3


@dataclass
class Served:
    at: float
    region: str
    gpu: str
    replica: str = ""


class SteadyLoad:
    """Clients generating small images through `endpoint` back to back, recording every outcome.
    How many run can change while they do (`clients`), so one record spans every phase of a script."""

    def __init__(self, endpoint: str, clients: int = 3, steps: int = 2, size: int = 64) -> None:
        self.endpoint = endpoint
        self.served: list[Served] = []
        self.failures: list[str] = []
        self._body = {"steps": steps, "width": size, "height": size}
        self._wanted = clients
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    def __enter__(self) -> Self:
        self.clients(self._wanted)
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

    def clients(self, count: int) -> None:
        """`count` clients from now on: more start at once; those past `count` stop after their request."""
        self._wanted = count
        while len(self._threads) < count:
            thread = threading.Thread(target=self._run, args=(len(self._threads),), daemon=True)
            self._threads.append(thread)
            thread.start()

    def one(self) -> int | None:
        """One request from the caller's thread, recorded like the clients' own; its HTTP status (None: no answer)."""
        with httpx.Client(timeout=120) as http:
            return self._request(http, 0)

    def _run(self, index: int) -> None:
        with httpx.Client(timeout=120) as http:
            while not self._stop.is_set():
                if index < self._wanted:
                    self._request(http, index)
                else:
                    self._stop.wait(0.05)

    def _request(self, http: httpx.Client, index: int) -> int | None:
        body = {"prompt": f"a lighthouse, client {index}", "seed": index, **self._body}
        try:
            response = http.post(f"{self.endpoint}/sdapi/v1/txt2img", json=body)
        except httpx.HTTPError as error:
            self.failures.append(f"{type(error).__name__}: {error}")
            return None
        region, gpu = response.headers.get("x-gpuroam-region"), response.headers.get("x-gpuroam-gpu")
        if response.status_code != 200 or not response.json().get("images"):
            self.failures.append(f"HTTP {response.status_code}: {response.text[:200]}")
        elif region is None or gpu is None:
            self.failures.append("a response without X-Gpuroam-Region/GPU")
        else:
            self.served.append(Served(time.monotonic(), region, gpu, response.headers.get("x-gpuroam-replica", "")))
        return response.status_code


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
    one_region_s: float | None = None  # autoscaled and shrunk until one region serves one client
    scale_up_s: float | None = None  # the burst's start until the `scaled-up` event
    scale_out_s: float | None = None  # the burst's start until 3 regions serve it
    burst_regions: dict[str, list[str]] = field(default_factory=dict)  # region: the GPUs that served the burst
    scale_in_s: float | None = None  # the load's stop until the `scaled-down` event
    sleep_s: float | None = None  # the load's stop until the `slept` event
    wake_s: float | None = None  # one request to the sleeping service until its answer
    wake_status: int | None = None
    woke_s: float | None = None  # that request until the `woke` event

    def as_dict(self) -> dict[str, Any]:
        return self.__dict__ | {"failures": self.failures[:20]}


def wait_until(condition: Callable[[], bool], timeout_s: float, what: str) -> float:
    """Seconds it took; TimeoutError names what never happened."""
    began = time.monotonic()
    while not condition():
        if time.monotonic() - began > timeout_s:
            raise TimeoutError(f"gave up after {timeout_s:.0f} s waiting for {what}")
        time.sleep(0.2)
    return time.monotonic() - began


def event_time(client: ControlPlaneClient, kind: str, after: float, service: str | None = None) -> float | None:
    """Wall-clock time of the first `kind` event at or after `after` (of `service`, else of any)."""
    times = [e["ts"] for e in client.get("/events", limit=5000, service=service) if e["kind"] == kind]
    return min((t for t in times if t >= after), default=None)


def autoscaled(spec: dict[str, Any]) -> dict[str, Any]:
    """The demo's service made to follow demand: asleep when idle, up to one replica in each of 3 regions.
    An L4 (speed 2.2) at 2 in flight per unit of speed: one client's request always in flight is work for
    one replica, the burst's 12 for three. The windows are seconds, not minutes, so that a burst, its
    scale-in and a sleep play out in about a minute.
    No race: local capacity is certain, and a wake that starts three workers at once shares a small
    machine's cores three ways (wakes took 10-20 s so on 2 cores, 10-14 s without; the gateway holds 30 s)."""
    return spec | {
        "regions": spec["regions"] | {"min_regions": 1},
        "replicas": spec["replicas"] | {"min": 0, "max": 3, "per_region": 1},
        "placement": spec["placement"] | {"race": 1},
        "autoscale": {"target_in_flight": 2, "scale_up_after_s": 2, "scale_down_after_s": 4, "sleep_after_s": 8},
    }


@dataclass
class Script:
    """What each move reads and writes: the control plane, the service, the load through its endpoint,
    where each phase's requests begin (`marks`, indices into the load's record), and the summary."""

    client: ControlPlaneClient
    name: str
    load: SteadyLoad
    say: Say
    summary: Summary = field(default_factory=Summary)
    marks: dict[str, int] = field(default_factory=dict)

    def begin(self, phase: str) -> int:
        """Requests answered from now on count to `phase`; where they begin in the load's record."""
        self.marks[phase] = self.load.ok
        return self.marks[phase]

    def replicas(self, *states: str) -> list[dict[str, Any]]:
        """The service's replicas in any of `states`."""
        return [r for r in self.client.get(f"/services/{self.name}")["replicas"] if r["state"] in states]

    def ready(self) -> list[dict[str, Any]]:
        return self.replicas("ready")

    def event_since(self, kind: str, began: float) -> float | None:
        """Seconds from `began` (wall clock) to the service's first `kind` event after it."""
        at = event_time(self.client, kind, began, self.name)
        return None if at is None else at - began

    def tally(self) -> Summary:
        """Every request of every phase counted: served and failed, each region's share, each phase's GPUs."""
        summary, served = self.summary, self.load.served
        phases = list(self.marks.items())
        for (phase, start), (_, end) in zip(phases, [*phases[1:], ("end", len(served))], strict=True):
            summary.gpus_by_phase[phase] = sorted({s.gpu for s in served[start:end]})
        summary.served, summary.failed = len(served), len(self.load.failures)
        summary.failures = list(self.load.failures)
        regions_count = Counter(s.region for s in served)
        summary.share_by_region = {r: round(n / max(1, len(served)), 3) for r, n in sorted(regions_count.items())}
        return summary


def play(client: ControlPlaneClient, name: str, expand_region: str, lose_gpu: str, say: Say) -> Summary:
    """The five moves under a steady load, then demand that comes and goes; the service must already be up
    (move 1 happened)."""
    endpoint = client.get(f"/services/{name}")["endpoint"]
    with SteadyLoad(endpoint) as load:
        script = Script(client, name, load, say)
        _five_moves(script, expand_region, lose_gpu)
        _follow_demand(script, expand_region)
        _burst(script)
        _quiet(script)
        _wake(script)
    return script.tally()


def _five_moves(script: Script, expand_region: str, lose_gpu: str) -> None:
    """Serve, expand, see, fail the preferred GPU, recover: the endpoint stays the same throughout."""
    client, name, load, say, summary = script.client, script.name, script.load, script.say, script.summary
    preferred = {(r["region"], r["gpu"]) for r in script.ready()}
    script.begin("serve")
    wait_until(lambda: load.ok >= 5, 120, "the first images through the endpoint")
    say(f"1. serve    {load.ok} images so far through {load.endpoint}")

    script.begin("expand")
    expanded = client.post(f"/services/{name}/expand", {"region": expand_region})
    summary.endpoint_unchanged = expanded["endpoint"] == load.endpoint
    took = wait_until(lambda: expand_region in {r["region"] for r in script.ready()}, 180, expand_region)
    say(f"2. expand   {expand_region} serves after {took:.1f} s; endpoint unchanged: {summary.endpoint_unchanged}")

    regions = sorted({f"{r['region']}/{r['gpu']}" for r in script.ready()})
    say(f"3. see      ready: {', '.join(regions)}")

    script.begin("fail")
    client.post("/chaos/fail", {"gpu": lose_gpu})
    summary.failover_s = wait_until(
        lambda: _serving_without(script, lose_gpu), 180, f"two regions serving without {lose_gpu}"
    )
    say(f"4. fail     {lose_gpu} lost; serving on other GPUs after {summary.failover_s:.1f} s")

    failed_over = script.begin("failed-over")
    wait_until(lambda: load.ok >= failed_over + 5, 60, "traffic on the other GPUs")
    script.begin("recover")
    client.post("/chaos/recover", {})
    summary.recovery_s = wait_until(
        lambda: preferred <= {(r["region"], r["gpu"]) for r in script.ready()}, 300, "the preferred placement"
    )
    say(f"5. recover  back on {', '.join(sorted(g for _, g in preferred))} after {summary.recovery_s:.1f} s")
    after = script.begin("after")
    wait_until(lambda: load.ok >= after + 20, 60, "traffic after recovery")


def _follow_demand(script: Script, expand_region: str) -> None:
    """6: the same service follows demand from now on (autoscaled, the expanded region given back); the
    load drops to one client, which one replica takes, so the service scales in to one region."""
    client, name = script.client, script.name
    script.begin("demand")
    script.load.clients(1)
    client.post("/services", autoscaled(client.get(f"/services/{name}")["spec"]))
    client.post(f"/services/{name}/shrink", {"region": expand_region})
    script.summary.one_region_s = wait_until(
        lambda: len({r["region"] for r in script.ready()}) == 1, 120, "one region serving one client"
    )
    # The burst starts once the drained replicas are gone: what it measures is then its own doing.
    wait_until(lambda: not script.replicas("provisioning", "draining"), 60, "the other regions' replicas drained")
    serving = ", ".join(f"{r['region']}/{r['gpu']}" for r in script.ready())
    script.say(
        f"6. demand   autoscaled, {expand_region} given back; one client: one region ({serving}) "
        f"after {script.summary.one_region_s:.1f} s"
    )


def _burst(script: Script) -> None:
    """7: a burst of clients: the service scales out into a second and a third region, and each serves."""
    summary = script.summary
    start, began = script.begin("burst"), time.time()
    script.load.clients(BURST_CLIENTS)

    def three_regions_serving() -> bool:
        regions = {r["region"] for r in script.ready()}
        return len(regions) >= 3 and regions <= {s.region for s in script.load.since(start)}

    summary.scale_out_s = wait_until(three_regions_serving, 240, "3 regions serving the burst")
    summary.scale_up_s = script.event_since("scaled-up", began)
    burst = script.load.since(start)
    summary.burst_regions = {
        region: sorted({s.gpu for s in burst if s.region == region}) for region in sorted({s.region for s in burst})
    }
    where = ", ".join(f"{region}/{'+'.join(gpus)}" for region, gpus in summary.burst_regions.items())
    scaled_up = "-" if summary.scale_up_s is None else f"{summary.scale_up_s:.1f} s"
    script.say(
        f"7. burst    {BURST_CLIENTS} clients: scaled up after {scaled_up}, "
        f"3 regions serving after {summary.scale_out_s:.1f} s: {where}"
    )


def _quiet(script: Script) -> None:
    """8: the clients stop: the service scales in, then sleeps, every replica drained."""
    summary = script.summary
    script.load.clients(0)
    stopped = time.time()

    def asleep() -> bool:
        drained = not script.replicas("provisioning", "ready", "draining")
        wanted = script.client.get(f"/services/{script.name}")["desired"]
        return wanted == 0 and drained and script.event_since("slept", stopped) is not None

    wait_until(asleep, 120, "scale-in, then sleep with every replica drained")
    summary.scale_in_s = script.event_since("scaled-down", stopped)
    summary.sleep_s = script.event_since("slept", stopped)
    scaled_in = "-" if summary.scale_in_s is None else f"{summary.scale_in_s:.1f} s"
    script.say(f"8. quiet    load stopped: scaled in after {scaled_in}, asleep after {summary.sleep_s:.1f} s")


def _wake(script: Script) -> None:
    """9: one request to the sleeping service: the gateway holds it while a replica starts, then it is answered."""
    summary = script.summary
    script.begin("wake")
    began, clock = time.time(), time.monotonic()
    summary.wake_status = script.load.one()
    summary.wake_s = time.monotonic() - clock
    summary.woke_s = script.event_since("woke", began)
    woke = "no woke event" if summary.woke_s is None else f"woke event after {summary.woke_s:.1f} s"
    script.say(f"9. wake     one request: HTTP {summary.wake_status} after {summary.wake_s:.1f} s ({woke})")


def _serving_without(script: Script, gpu: str) -> bool:
    serving = script.ready()
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
