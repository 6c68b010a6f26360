"""The event loop: one policy, one world, one run.

Events are kept in a heap (launch outcomes, launch timeouts, lost replicas, region incidents and
wake-ups a policy asks for, such as when a block ends). After each instant's events the policy
gets a pass, as the reconciler gets one per loop; a pass that acted is followed by another one
PASS_S later, so a plan settles as it does when the reconciler runs it again. Between events
nothing a policy can see changes, so no pass is skipped that could have acted (capacity coming
back is seen only by trying, as in a cloud).

Accounting: a replica costs its price (its capacity's: Spot or on-demand) from the moment its node
exists (a launch that got capacity) until it is terminated (failed, lost, drained after
DRAIN_GRACE_S, reclaimed at the end of a preemption notice, or the run's end). It serves from ready
until lost or drained.

Spot (a world with a layer from gpuroam.sim.spot_world): a Spot node is reclaimed when its own
preemption comes or its region's wave does. A replica still starting fails (preempted while
starting). A ready one gets the notice: a policy that heeds notices (gpuroam's reconciler) takes it
out of routing at once, so it takes no new request and those it holds finish within the notice,
and replaces it in the same pass; a policy that does not (SkyServe) keeps routing to it until it is
gone at the notice's end, and learns of it as it learns of any lost replica.

Requests in flight on a replica that dies without being drained (lost, a region's incident, or
reclaimed unheeded) are retried elsewhere: `retried` counts them (the M/M/1 queue's mean number at
the replica then), and the Spot study counts them as not served within the bound (delayed, not
failed). The capacity study's figures are left as they were.

A world with requests (a trace from gpuroam.sim.traces) also gets a LoadModel: advanced to each
instant before anything acts, it is the queue the requests meet and what autoscaled policies read.
"""

from __future__ import annotations

import heapq
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from enum import Enum

import numpy as np

from gpuroam.placement import ON_DEMAND, SPOT, Pair
from gpuroam.records import Capacity, Replica, ReplicaState
from gpuroam.sim.load import LoadModel, Signals
from gpuroam.sim.policies import CachedCatalog, CapacityPolicy, PolicyConfig, make_policy
from gpuroam.sim.serving import serving
from gpuroam.sim.sizing import PASS_S
from gpuroam.sim.world import MINUTE, World

DRAIN_GRACE_S = 5.0  # the reconciler's: a drained replica runs this long so in-flight requests finish
SETTLED_S = 900.0  # a ready replica drained after serving this long was a move; sooner, a race winner released


class _Outcome(Enum):
    """What a launch or a ready replica comes to."""

    READY = "ready"  # the launch got a node and its pod is ready
    FAIL = "fail"  # the launch failed (quota, a reported stockout)
    TIMEOUT = "timeout"  # the launch was not ready within the policy's provision timeout
    LOSS = "loss"  # the ready replica was lost (maintenance, node failure)
    PREEMPT = "preempt"  # the platform reclaims the (Spot) node: a notice if ready, a failure if starting
    RECLAIM = "reclaim"  # a notice nobody heeded has run out: the node is gone


@dataclass(frozen=True, slots=True)
class _ReplicaEvent:
    outcome: _Outcome
    replica_id: str


@dataclass(frozen=True, slots=True)
class _Incident:
    """A region is lost: every replica there dies."""

    region: int  # index into Layout.regions


@dataclass(frozen=True, slots=True)
class _Wave:
    """Every Spot node in a region is reclaimed at once."""

    region: int  # index into Layout.regions


@dataclass(frozen=True, slots=True)
class _Wake:
    """A pass a policy asked for (say, when a block ends)."""


_Event = _ReplicaEvent | _Incident | _Wave | _Wake
_WAKE = _Wake()


@dataclass(frozen=True)
class RunResult:
    """One policy's figures for one run (seconds, USD, counts)."""

    time_to_ready_s: float  # service created -> first ready replica (the run's length if never)
    reached: bool  # a replica was ready before the run ended
    up_s: float  # seconds with at least one ready replica, after the first
    window_s: float  # seconds from the first ready replica to the end of the run
    demand: float  # images asked for in that window
    served: float  # of them, served within the latency bound
    cost_usd: float
    hours: float  # the run's length in hours
    capacity_images: float  # images the ready replicas could have made (speed counted)
    moves: int  # ready replicas drained by the policy after serving SETTLED_S or more (traffic moved)
    released: int  # ready replicas drained sooner: raced replicas no longer needed
    losses: int  # ready replicas lost (preemption, node failure, region incident)
    launches: int
    failures: int  # launches that never became ready (capacity failures and timeouts)
    ready_replicas: float  # mean ready replicas over the window
    node_hours: float = 0.0  # GPU nodes billed, summed over replicas
    # with a trace (the LoadModel's accounts, over the whole run): requests
    asked: float = 0.0
    answered: float = 0.0  # not given up, not still waiting at the end
    in_bound: float = 0.0  # answered within the latency bound
    wakes: int = 0  # scale-ups from zero
    wake_waits: tuple[float, ...] = field(default=())  # the request that woke it -> a replica ready
    # Spot
    preemptions: int = 0  # Spot nodes reclaimed (notices to ready replicas, and replicas preempted while starting)
    retried: float = 0.0  # requests in flight on replicas that died undrained (retried elsewhere: delayed)
    full_s: float = 0.0  # seconds, in the window, with at least the replicas the service asks for ready
    spot_node_hours: float = 0.0  # of node_hours, on Spot


class Simulation:
    """One policy playing one world from an event heap; the calls a policy makes (launch, drain,
    wake) act on the simulated cloud, and the accounts kept here become the RunResult."""

    def __init__(
        self,
        world: World,
        config: PolicyConfig,
        catalog: CachedCatalog,
        offers: frozenset[Pair],
        rng: np.random.Generator,
        days: float,
    ) -> None:
        self.world = world
        self.layout = world.layout
        self.model = world.model
        self.rng = rng
        self.spot = world.spot
        spot_offers = frozenset(p for p in offers if self.spot is not None and self.spot.offered[self.layout.index[p]])
        self.policy: CapacityPolicy = make_policy(config, catalog, offers, spot_offers)
        self.gpu_count = config.spec.resources.gpu_count
        self.asked = config.spec.replicas.min
        self.start = world.start_s
        self.end = world.start_s + days * 86400.0
        self.now = self.start
        self.live: dict[str, Replica] = {}  # provisioning and ready replicas
        self.node_at: dict[str, float | None] = {}  # when each live replica's node exists (billing)
        self._heap: list[tuple[float, int, _Event]] = []  # (when, sequence: ties in push order, event)
        self._seq = 0
        self._wakes: set[float] = set()
        self._ids = 0
        self._traffic: dict[int, dict[str, float]] = {}
        # accounting
        self.ready_log: list[tuple[float, int, int]] = []  # (time, pair, +1 | -1)
        self.cost = 0.0
        self.first_ready: float | None = None
        self.moves = self.released = self.losses = self.launches = self.failures = 0
        self.node_s = self.spot_node_s = 0.0
        self.wakes = self.preemptions = 0
        self.retried = 0.0
        self.noticed: set[str] = set()  # ready replicas given a notice nobody heeded, until it runs out
        self.load = LoadModel(world, self.gpu_count) if world.arrivals is not None else None

    # --- what policies call -------------------------------------------------------------------

    def live_replicas(self) -> list[Replica]:
        return list(self.live.values())

    def traffic(self, now: float) -> dict[str, float]:
        hour = int(now // 3600)
        if hour not in self._traffic:
            self._traffic[hour] = self.world.traffic(hour * 60)
        return self._traffic[hour]

    def signals(self, now: float) -> Signals:
        """What the data plane shows now (autoscaled policies need a world with a trace)."""
        if self.load is None:
            raise ValueError("an autoscaled policy needs requests: run it on a trace (gpuroam sim --traces)")
        return self.load.signals(now)

    def ready_speeds(self) -> list[float]:
        layout = self.layout
        ready = [r for r in self.live.values() if r.state is ReplicaState.READY]
        return [float(layout.speed[layout.index[(r.region, r.gpu)]]) for r in ready]

    def woke(self, now: float) -> None:
        """The policy scaled up from zero."""
        self.wakes += 1
        if self.load is not None:
            self.load.woke(now)

    def wake(self, t: float) -> None:
        if t < self.end and t not in self._wakes:
            self._wakes.add(t)
            self._push(t, _WAKE)

    def launch(self, region: str, gpu: str, reason: str, capacity: Capacity = ON_DEMAND) -> Replica:
        now = self.now
        self._ids += 1
        replica = Replica(
            f"r{self._ids}", "sim", region, gpu, ReplicaState.PROVISIONING, now, now, reason=reason, capacity=capacity
        )
        self.live[replica.id] = replica
        self.launches += 1
        pair = self.layout.index[(region, gpu)]
        model, spot = self.model, capacity is SPOT
        if spot and (self.spot is None or not self.spot.offered[pair]):
            raise ValueError(f"no Spot offer for {gpu} in {region} in this world")
        quota = self.spot.quota[pair] if self.spot is not None and spot else self.world.quota[pair]
        held = sum(
            self.gpu_count
            for r in self.live.values()
            if (r.region, r.gpu, r.capacity) == (region, gpu, capacity) and self.node_at.get(r.id) is not None
        )
        node_at: float | None = None
        if held + self.gpu_count > quota:
            self._schedule(now + self.rng.uniform(*model.failure_report_s), _Outcome.FAIL, replica.id)  # no quota
        elif self.world.has_capacity(pair, now, spot):
            node_at = now
        elif self.rng.random() < model.silent_failure_share:
            # Nothing reports the stockout: the pod stays pending, and gets a node if capacity comes back.
            node_at = self.world.next_capacity(pair, now, self.end, spot)
        else:
            self._schedule(now + self.rng.uniform(*model.failure_report_s), _Outcome.FAIL, replica.id)
        self.node_at[replica.id] = node_at
        if node_at is not None:
            self._schedule(node_at + 60.0 * self.rng.triangular(*model.ready_min), _Outcome.READY, replica.id)
            if self.spot is not None and spot:
                life = self.rng.exponential(float(self.spot.mean_life_s[pair]))
                self._schedule(node_at + life, _Outcome.PREEMPT, replica.id)
        self._schedule(now + self.policy.provision_timeout_s, _Outcome.TIMEOUT, replica.id)
        return replica

    def drain(self, replica_id: str) -> None:
        replica = self.live.pop(replica_id)
        if replica.state is ReplicaState.READY:
            if self.now - (replica.ready_at or self.now) >= SETTLED_S:
                self.moves += 1
            else:
                self.released += 1
            self._unready(replica)
            self._bill(replica, self.now + DRAIN_GRACE_S)
        else:
            self._bill(replica, self.now)

    # --- the loop -----------------------------------------------------------------------------

    def run(self) -> RunResult:
        for t, region in self.world.incidents:
            if self.start < t < self.end:
                self._push(t, _Incident(region))
        for t, region in self.spot.waves if self.spot is not None else ():
            if self.start < t < self.end:
                self._push(t, _Wave(region))
        self._pass()
        while self._heap and self._heap[0][0] < self.end:
            self.now = self._heap[0][0]
            if self.load is not None:
                self.load.advance(self.now)
            changed = False
            while self._heap and self._heap[0][0] == self.now:
                _, _, event = heapq.heappop(self._heap)
                changed |= self._handle(event)
            if changed:  # an event that changed nothing (a stale timeout, say) leaves the plan as it was
                self._pass()
        self.now = self.end
        if self.load is not None:
            self.load.advance(self.end)
        for replica in list(self.live.values()):
            if replica.state is ReplicaState.READY:
                self._unready(replica)
            self._bill(replica, self.end)
        return self._result()

    def _pass(self) -> None:
        if self.policy.on_pass(self, self.now):
            self.wake(self.now + PASS_S)

    def _push(self, t: float, event: _Event) -> None:
        self._seq += 1
        heapq.heappush(self._heap, (t, self._seq, event))

    def _schedule(self, t: float, outcome: _Outcome, replica_id: str) -> None:
        self._push(t, _ReplicaEvent(outcome, replica_id))

    def _handle(self, event: _Event) -> bool:
        """Apply one event; True when it changed what a policy sees (or is a wake-up it asked for)."""
        if isinstance(event, _Wake):
            self._wakes.discard(self.now)
            return True
        if isinstance(event, _Incident):
            return self._incident(self.layout.regions[event.region])
        if isinstance(event, _Wave):
            return self._wave(self.layout.regions[event.region])
        replica = self.live.get(event.replica_id)
        if replica is None:
            return False  # already failed, drained or lost
        outcome = event.outcome
        if outcome in (_Outcome.PREEMPT, _Outcome.RECLAIM):
            return self._preempt(replica, outcome)
        if outcome is _Outcome.READY and replica.state is ReplicaState.PROVISIONING:
            ready = replace(replica, state=ReplicaState.READY, ready_at=self.now, updated_at=self.now)
            self.live[ready.id] = ready
            self.ready_log.append((self.now, self.layout.index[(ready.region, ready.gpu)], 1))
            if self.load is not None:
                self.load.ready(self.layout.index[(ready.region, ready.gpu)], 1, self.now)
            if self.first_ready is None:
                self.first_ready = self.now
            life = self.rng.exponential(self.model.replica_loss_every_h * 3600.0)
            self._schedule(self.now + life, _Outcome.LOSS, ready.id)
            self.policy.on_ready(ready)
        elif outcome in (_Outcome.FAIL, _Outcome.TIMEOUT) and replica.state is ReplicaState.PROVISIONING:
            self._fail(replica, lost=False)
        elif outcome is _Outcome.LOSS and replica.state is ReplicaState.READY:
            self._fail(replica, lost=True)
        else:
            return False
        return True

    def _wave(self, region: str) -> bool:
        """Every Spot node in `region` is reclaimed; True when any replica had one."""
        hit = [
            r
            for r in self.live.values()
            if r.region == region and r.capacity is SPOT and _started(self.node_at.get(r.id), self.now)
        ]
        changed = False
        for replica in hit:
            changed |= self._preempt(replica, _Outcome.PREEMPT)
        return changed

    def _preempt(self, replica: Replica, outcome: _Outcome) -> bool:
        """A Spot node reclaimed (PREEMPT) or its unheeded notice run out (RECLAIM); True when it changed anything."""
        if outcome is _Outcome.RECLAIM:
            self.noticed.discard(replica.id)
            self._fail(replica, lost=True, preempted=True)
            return True
        if replica.id in self.noticed:
            return False  # already given its notice
        self.preemptions += 1
        if replica.state is ReplicaState.PROVISIONING:  # preempted while starting: a failed launch
            self._fail(replica, lost=False)
            return True
        assert self.spot is not None
        reclaim = self.now + self.spot.notice_s
        if not self.policy.heeds_notice:  # it keeps serving, and routed to, until it is gone
            self.noticed.add(replica.id)
            self._schedule(reclaim, _Outcome.RECLAIM, replica.id)
            return False
        del self.live[replica.id]  # out of routing at the notice; what it holds finishes within it
        self._unready(replica)
        self._bill(replica, reclaim)
        self.policy.on_notice(self, replica, self.now)
        return True

    def _incident(self, region: str) -> bool:
        """Every replica in `region` dies, ready (lost) or starting (failed); True when any did."""
        hit = [r for r in self.live.values() if r.region == region]
        for replica in hit:
            self._fail(replica, lost=replica.state is ReplicaState.READY)
        return bool(hit)

    def _fail(self, replica: Replica, lost: bool, preempted: bool = False) -> None:
        if lost:
            self.retried += self._in_flight()
        del self.live[replica.id]
        self.noticed.discard(replica.id)
        if lost:
            self.losses += not preempted
            self._unready(replica)
        else:
            self.failures += 1
        self._bill(replica, self.now)
        self.policy.on_failure(self, replica, self.now, lost)

    def _unready(self, replica: Replica) -> None:
        pair = self.layout.index[(replica.region, replica.gpu)]
        self.ready_log.append((self.now, pair, -1))
        if self.load is not None:
            self.load.ready(pair, -1, self.now)

    def _in_flight(self) -> float:
        """Requests at one ready replica now (without a trace): the mean of the M/M/1 queue each
        replica is, at the load the ready replicas share by speed (capped at 95% busy)."""
        if self.load is not None:
            return 0.0  # the trace's fluid queue keeps them: the backlog stays and is served by the others
        layout = self.layout
        ready = [layout.index[(r.region, r.gpu)] for r in self.live.values() if r.state is ReplicaState.READY]
        capacity = float(layout.speed[ready].sum()) * self.gpu_count / self.model.image_s_t4
        minute = min(int(self.now // MINUTE), self.world.minutes - 1)
        rho = min(0.95, float(self.world.demand[:, minute].sum()) / 60.0 / capacity) if capacity > 0 else 0.0
        return rho / (1.0 - rho)

    def _bill(self, replica: Replica, until: float) -> None:
        node_at = self.node_at.pop(replica.id, None)
        if node_at is not None and until > node_at:
            self.node_s += until - node_at
            pair = self.layout.index[(replica.region, replica.gpu)]
            spot = replica.capacity is SPOT
            self.spot_node_s += (until - node_at) * spot
            price = float((self.layout.spot_price if spot else self.layout.price)[pair])
            self.cost += price * self.gpu_count * (until - node_at) / 3600.0

    # --- figures ------------------------------------------------------------------------------

    def _result(self) -> RunResult:
        result = replace(
            self._capacity_result(),
            node_hours=self.node_s / 3600.0,
            spot_node_hours=self.spot_node_s / 3600.0,
            preemptions=self.preemptions,
            retried=self.retried,
        )
        load = self.load
        if load is None:
            return result
        return replace(
            result,
            asked=load.asked,
            answered=load.served,
            in_bound=load.in_bound,
            wakes=self.wakes,
            wake_waits=tuple(load.wake_waits),
        )

    def _capacity_result(self) -> RunResult:
        hours = (self.end - self.start) / 3600.0
        if self.first_ready is None:
            return RunResult(
                self.end - self.start, False, 0.0, 0.0, 0.0, 0.0, self.cost, hours, 0.0, self.moves, self.released,
                self.losses, self.launches, self.failures, 0.0,
            )  # fmt: skip
        up, demand, served, images, replica_s, full = serving(
            self.world, self.ready_log, self.first_ready, self.end, self.gpu_count, self.asked
        )
        window = self.end - self.first_ready
        return RunResult(
            time_to_ready_s=self.first_ready - self.start,
            reached=True,
            up_s=up,
            window_s=window,
            demand=demand,
            served=served,
            cost_usd=self.cost,
            hours=hours,
            capacity_images=images,
            moves=self.moves,
            released=self.released,
            losses=self.losses,
            launches=self.launches,
            failures=self.failures,
            ready_replicas=replica_s / window if window > 0 else 0.0,
            full_s=full,
        )


def _started(node_at: float | None, now: float) -> bool:
    """A node exists by `now`."""
    return node_at is not None and node_at <= now


def run_policy(
    world: World,
    config: PolicyConfig,
    catalog: CachedCatalog,
    offers: frozenset[Pair],
    seed: Sequence[int],
    days: float,
) -> RunResult:
    """One policy over one world; `seed` drives the policy's own dice (launch times, losses)."""
    return Simulation(world, config, catalog, offers, np.random.default_rng(list(seed)), days).run()
