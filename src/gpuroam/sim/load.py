"""The requests of one run and the queue they meet, for the autoscaling study.

A fluid queue carried from one instant to the next: requests arrive at the trace's rate (the
world's Poisson counts, spread evenly over each minute); the ready replicas serve them at their
speed. While demand is above capacity a backlog builds, and a request's queue wait is the backlog
ahead of it over the service rate; below capacity the backlog drains, and the wait at a replica is
that of an M/M/1 queue at the load (as the capacity study counts it). A request is served within
the bound when its round trip from its continent, its queue wait and its time at the replica fit
in `latency_bound_s`.

Clients are not infinitely patient: a request not started within `PATIENCE_S` is given up (an
A1111 client's timeout; the Web UI retries, but a retry is a new request). While no replica is
ready, requests are held at the endpoint, as gpuroam's gateway and any activator holds them: they
are served when a replica comes, if their client still waits.

What the autoscalers read comes from here: requests in flight or held (gpuroam's gateway signal),
the request rate over the last minute (SkyServe's), and when the last request came.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import numpy as np

from gpuroam.sim.world import MINUTE, Floats, World

PATIENCE_S = 120.0
MAX_STEP_S = 10.0  # the backlog changes within a minute: waits are taken at most this far apart
QPS_WINDOW_S = 60.0


@dataclass(frozen=True)
class Signals:
    """What the data plane shows an autoscaler at one instant."""

    in_flight: float  # requests queued or generating at the replicas
    held: float  # requests waiting at the endpoint for a ready replica
    qps: float  # requests per second over the last QPS_WINDOW_S
    last_request_at: float | None


class LoadModel:
    """The queue of one run: advanced to each instant before anything acts, told of every replica
    that becomes ready or stops serving, and read by the autoscalers."""

    def __init__(self, world: World, gpu_count: int) -> None:
        if world.arrivals is None:
            raise ValueError("the world has no requests: give it a trace (gpuroam.sim.traces.with_trace)")
        layout, model = world.layout, world.model
        self.arrivals = world.arrivals
        self.minutes = world.minutes
        self.bound_s = model.latency_bound_s
        self.mu = layout.speed * gpu_count / model.image_s_t4  # [P] images per second per replica
        self.pair_region = layout.pair_region
        self.rtt_s = layout.rtt_s  # [origins, regions]
        self.t = world.start_s
        self.counts: dict[int, int] = {}  # pair -> ready replicas
        self._serving: _Serving | None = None
        self.backlog = 0.0  # requests queued at the replicas beyond what the M/M/1 term counts
        self.offered = 0.0  # requests per second in the last step
        self.held: deque[list[float]] = deque()  # [arrived at, requests], while no replica is ready
        self.recent: deque[tuple[float, float]] = deque()  # (until, requests): the request rate's window
        self.last_request_at: float | None = None
        self.waking = False  # the policy woke the service and no replica is ready yet
        self.wake_from: float | None = None  # the first request that waited for the wake
        # accounts
        self.asked = self.in_bound = self.given_up = 0.0
        self.wake_waits: list[float] = []  # per wake a request waited for: that request -> a replica ready

    # --- what the simulation tells it ---------------------------------------------------------

    def ready(self, pair: int, delta: int, now: float) -> None:
        """A replica on `pair` became ready (+1) or stopped serving (-1) at `now` (advanced to)."""
        self.counts[pair] = self.counts.get(pair, 0) + delta
        if self.counts[pair] <= 0:
            del self.counts[pair]
        self._serving = None
        if not self.counts:
            return
        if self.waking and self.wake_from is not None:
            self.wake_waits.append(now - self.wake_from)
        self.waking, self.wake_from = False, None
        self._give_up_held(now)
        self.backlog += sum(n for _, n in self.held)  # the held requests whose clients still wait
        self.held.clear()

    def woke(self, now: float) -> None:
        """The policy wants replicas again after wanting none. The wake's wait starts at the oldest
        held request, or at the first one to come before a replica is ready (none: woken ahead in time)."""
        if not self.counts and not self.waking:
            self.waking = True
            self.wake_from = self.held[0][0] if self.held else None

    def advance(self, now: float) -> None:
        while self.t < now:
            minute = int(self.t // MINUTE)
            end = min(now, (minute + 1) * MINUTE, self.t + MAX_STEP_S)
            self._step(self.t, end, min(minute, self.minutes - 1))
            self.t = end

    # --- what autoscalers read ----------------------------------------------------------------

    def signals(self, now: float) -> Signals:
        while self.recent and self.recent[0][0] <= now - QPS_WINDOW_S:
            self.recent.popleft()
        qps = sum(n for _, n in self.recent) / QPS_WINDOW_S
        return Signals(self.backlog + self._in_service(), self._held(), qps, self.last_request_at)

    @property
    def served(self) -> float:
        """Requests answered (or being answered): asked, less given up, less still waiting."""
        return self.asked - self.given_up - self.backlog - self._held()

    # --- the queue ----------------------------------------------------------------------------

    def _step(self, a: float, b: float, minute: int) -> None:
        per_origin = self.arrivals[:, minute] * (b - a) / MINUTE
        count = float(per_origin.sum())
        self.offered = count / (b - a)
        if count > 0:
            self.asked += count
            self.last_request_at = b
            self.recent.append((b, count))
        if not self.counts:
            if count > 0:
                self.held.append([a, count])
                if self.waking and self.wake_from is None:
                    self.wake_from = a
            self._give_up_held(b)
            return
        serving = self._rates()
        after = max(0.0, self.backlog + (self.offered - serving.capacity) * (b - a))
        if count > 0:
            wait = (self.backlog + after) / 2.0 / serving.capacity
            rho = min(self.offered / serving.capacity, 0.98)
            left = np.clip(serving.slack - wait, 0.0, None)  # [origins, pairs]
            inside = 1.0 - np.exp(-serving.rate * (1.0 - rho) * left)
            self.in_bound += float(per_origin @ (inside @ serving.share))
        limit = serving.capacity * PATIENCE_S
        if after > limit:
            self.given_up += after - limit
            after = limit
        self.backlog = after

    def _rates(self) -> _Serving:
        if self._serving is None:
            pairs = np.array(sorted(self.counts))
            n = np.array([self.counts[p] for p in pairs], dtype=np.float64)
            rate = self.mu[pairs]
            capacity = float((rate * n).sum())
            slack = self.bound_s - self.rtt_s[:, self.pair_region[pairs]]
            self._serving = _Serving(rate, rate * n / capacity, slack, capacity, int(n.sum()))
        return self._serving

    def _in_service(self) -> float:
        """Requests at the replicas beyond the backlog: M/M/1 queues' mean at the current load."""
        if not self.counts:
            return 0.0
        serving = self._rates()
        rho = min(self.offered / serving.capacity, 0.95)
        return serving.replicas * rho / (1.0 - rho)

    def _held(self) -> float:
        return sum(n for _, n in self.held)

    def _give_up_held(self, now: float) -> None:
        while self.held and self.held[0][0] < now - PATIENCE_S:
            self.given_up += self.held.popleft()[1]


@dataclass(frozen=True)
class _Serving:
    """The ready replicas, per pair: a replica's service rate, the pair's share of the capacity and,
    per origin, the time the bound leaves after the round trip ([origins, pairs])."""

    rate: Floats
    share: Floats
    slack: Floats
    capacity: float  # images per second, all ready replicas
    replicas: int
