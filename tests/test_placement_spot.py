"""Placement over Spot and on-demand slots: preference, fallback, the on-demand floor, spread and
move-back, in scenarios and as properties over a small simulated world (pure: no I/O, no clock)."""

from __future__ import annotations

import itertools
import math

from hypothesis import given, settings
from hypothesis import strategies as st

from gpuroam.placement import CapacityView, Demand, Plan, Slot, block_after_failure, needed_regions, plan
from gpuroam.records import Block, Capacity, Replica, ReplicaState
from gpuroam.spec import parse_spec

SPOT, ON_DEMAND = Capacity.SPOT, Capacity.ON_DEMAND
GPUS = ("nvidia-l4", "nvidia-tesla-t4")
POSITIONS = {"us-a": (0.0, 0.0), "us-b": (0.0, 10.0), "eu-a": (50.0, 0.0), "eu-b": (50.0, 10.0)}
PAIRS = frozenset(itertools.product(POSITIONS, GPUS))
SLOTS = frozenset((r, g, c) for r, g in PAIRS for c in Capacity)


class Catalog:
    def price(self, region: str, gpu: str) -> float:
        return {"nvidia-l4": 0.7, "nvidia-tesla-t4": 0.35}[gpu] + 0.01 * list(POSITIONS).index(region)

    def spot_price(self, region: str, gpu: str) -> float:
        return self.price(region, gpu) * 0.4

    def distance_km(self, a: str, b: str) -> float:
        (la, oa), (lb, ob) = POSITIONS[a], POSITIONS[b]
        return 111.0 * math.hypot(la - lb, oa - ob)


class World:
    """Replicas and blocks over a hidden truth of which slots have capacity; a launch is ready (or
    fails, blocking its slot) one step later; a ready replica whose slot is taken away dies."""

    def __init__(self, demand: Demand, capacity: set[Slot]) -> None:
        self.demand, self.capacity = demand, capacity
        self.replicas: dict[str, Replica] = {}
        self.blocks: dict[Slot, Block] = {}
        self.now, self.ids = 1000.0, itertools.count()

    def view(self) -> CapacityView:
        return CapacityView(offers=PAIRS, spot_offers=PAIRS, blocks=dict(self.blocks))

    def plan(self) -> Plan:
        return plan(Catalog(), self.demand, self.view(), list(self.replicas.values()), self.now)

    def step(self, seconds: float = 1.0) -> Plan:
        for r in list(self.replicas.values()):
            slot = (r.region, r.gpu, r.capacity)
            if r.state is ReplicaState.PROVISIONING:
                self._set(r, ReplicaState.READY if slot in self.capacity else ReplicaState.FAILED)
            elif r.state is ReplicaState.READY and slot not in self.capacity:
                self._set(r, ReplicaState.FAILED)
            if self.replicas[r.id].state is ReplicaState.FAILED and r.state is not ReplicaState.FAILED:
                self.blocks[slot] = block_after_failure(
                    self.blocks.get(slot), *slot[:2], self.now, 30, 2, 600, "", slot[2]
                )
        decided = self.plan()
        for launch in decided.launches:
            rid = f"r{next(self.ids)}"
            self.replicas[rid] = Replica(
                rid, "svc", launch.region, launch.gpu, ReplicaState.PROVISIONING, self.now, self.now,
                reason=launch.reason, capacity=launch.capacity,
            )  # fmt: skip
        for drain in decided.drains:
            self._set(self.replicas[drain.replica_id], ReplicaState.TERMINATED)
        self.now += seconds
        return decided

    def _set(self, r: Replica, state: ReplicaState) -> None:
        ready_at = self.now if state is ReplicaState.READY else r.ready_at
        self.replicas[r.id] = Replica(
            r.id, r.service, r.region, r.gpu, state, r.created_at, self.now, ready_at, capacity=r.capacity
        )

    def run(self, steps: int, seconds: float = 1.0) -> list[Plan]:
        return [self.step(seconds) for _ in range(steps)]

    def ready(self) -> list[Replica]:
        return [r for r in self.replicas.values() if r.state is ReplicaState.READY]

    def placement(self) -> list[tuple[str, str, Capacity]]:
        return sorted((r.region, r.gpu, r.capacity) for r in self.ready())


def demand(**changes: object) -> Demand:
    base = {"gpus": GPUS, "min_regions": 2, "min_replicas": 2, "max_replicas": 6, "race": 2, "move_back_after_s": 10.0}
    return Demand(**{**base, **changes})  # type: ignore[arg-type]


def settled(world: World, steps: int = 40) -> World:
    world.run(steps)
    assert world.plan().empty, f"not settled: {world.plan()}"
    return world


def test_prefer_runs_on_spot_of_the_preferred_gpu() -> None:
    world = settled(World(demand(spot="prefer"), set(SLOTS)))
    assert world.placement() == [("us-a", "nvidia-l4", SPOT), ("us-b", "nvidia-l4", SPOT)]


def test_never_ignores_spot_and_only_never_runs_on_demand() -> None:
    assert {c for _, _, c in settled(World(demand(spot="never"), set(SLOTS))).placement()} == {ON_DEMAND}
    no_spot_l4 = {s for s in SLOTS if not (s[1] == "nvidia-l4" and s[2] is SPOT)}
    only = settled(World(demand(spot="only"), no_spot_l4))
    assert {(g, c) for _, g, c in only.placement()} == {("nvidia-tesla-t4", SPOT)}, "the next GPU as Spot, not L4"


def test_the_on_demand_floor_is_kept_and_the_rest_is_spot() -> None:
    world = settled(World(demand(spot="prefer", on_demand_base=1, min_replicas=3, min_regions=3), set(SLOTS)))
    assert sorted(c for _, _, c in world.placement()) == [ON_DEMAND, SPOT, SPOT]
    floor = settled(World(demand(spot="only", on_demand_base=1), set(SLOTS)))
    assert sorted(c for _, _, c in floor.placement()) == [ON_DEMAND, SPOT], "`only` still keeps its floor"


def test_a_spot_loss_falls_back_to_on_demand_at_once_then_moves_back_make_before_break() -> None:
    world = settled(World(demand(spot="prefer"), set(SLOTS)))
    world.capacity -= {s for s in SLOTS if s[2] is SPOT}  # a preemption wave takes every Spot GPU
    world.step()  # the replicas die; the replacement is planned in the same pass
    assert {(launch.gpu, launch.capacity) for launch in world.step().launches} <= {("nvidia-l4", ON_DEMAND)}
    world.run(3)
    assert {(g, c) for _, g, c in world.placement()} == {("nvidia-l4", ON_DEMAND)}
    world.capacity |= SLOTS  # Spot is back: blocked a while, then stable for move_back_after_s
    ready_counts = []
    for _ in range(400):
        world.step(5.0)
        ready_counts.append(len(world.ready()))
    assert world.placement() == [("us-a", "nvidia-l4", SPOT), ("us-b", "nvidia-l4", SPOT)]
    assert min(ready_counts) >= 2, "never fewer ready replicas than asked for while moving back"


def test_spot_replicas_spread_over_regions() -> None:
    """per_region 2 in one region would put both Spot replicas in one preemption wave's way."""
    spec = parse_spec({"name": "sd", "resources": {"gpus": list(GPUS), "spot": "prefer"},
                       "replicas": {"min": 4, "per_region": 4, "max": 8}})  # fmt: skip
    d = Demand.from_spec(spec)
    assert (needed_regions(d), d.per_region) == (2, 2)
    plain = Demand.from_spec(spec.model_copy(update={"resources": spec.resources.model_copy(update={"spot": "never"})}))
    assert (needed_regions(plain), plain.per_region) == (1, 4), "on demand keeps what the spec says"
    world = settled(World(d, set(SLOTS)))
    assert len({r for r, _, _ in world.placement()}) == 2 and len(world.placement()) == 4


spot_demands = st.builds(
    demand,
    spot=st.sampled_from(["never", "prefer", "only"]),
    on_demand_base=st.integers(0, 3),
    min_regions=st.integers(1, 3),
    min_replicas=st.integers(1, 4),
    race=st.integers(0, 3),
)
slot_sets = st.sets(st.sampled_from(sorted(SLOTS)), max_size=len(SLOTS))


@settings(max_examples=60, deadline=None)
@given(spot_demands, st.lists(slot_sets, min_size=1, max_size=4))
def test_every_plan_keeps_the_spot_choice_and_the_floor_and_never_breaks_before_making(
    d: Demand, outages: list[set[Slot]]
) -> None:
    world = World(d, set(SLOTS))
    for outage in [*outages, set()]:
        world.capacity = set(SLOTS) - outage
        for _ in range(20):
            before = [r for r in world.replicas.values() if r.state.live]
            decided = world.plan()
            assert decided == world.plan(), "deterministic"
            for launch in decided.launches:
                block = world.blocks.get((launch.region, launch.gpu, launch.capacity))
                assert block is None or not block.active(world.now), "never a blocked slot"
                assert launch.capacity is ON_DEMAND or d.spot != "never", "never Spot when the spec says never"
                if d.spot == "only" and launch.capacity is ON_DEMAND:
                    assert d.on_demand_base > 0, "on demand under `only` is the floor's alone"
            drained = {drain.replica_id for drain in decided.drains}
            ready = sum(r.state is ReplicaState.READY for r in before)
            after = sum(r.state is ReplicaState.READY and r.id not in drained for r in before)
            assert after >= min(ready, needed_regions(d) * d.per_region), "make before break"
            world.step()
    world.run(200, seconds=60.0)  # every block expires, Spot is stable: settled where it should be
    assert world.plan().empty
    placed = world.placement()
    on_demand = sum(c is ON_DEMAND for _, _, c in placed)
    if d.spot == "never":
        assert on_demand == len(placed)
    else:
        assert on_demand == min(d.on_demand_base, len(placed)), "the floor on demand, the rest on Spot"
    assert {g for _, g, _ in placed} == {"nvidia-l4"}, "and on the preferred GPU"


def switched(first: Demand, then: Demand) -> World:
    """Settled under `first`, then the spec changes to `then` and the world settles again."""
    world = settled(World(first, set(SLOTS)))
    world.demand = then
    return settled(world, steps=60)


def test_never_after_prefer_replaces_the_spot_replicas_on_demand() -> None:
    """Replicas on a capacity the spec no longer allows held their region's quota: nothing launched,
    nothing drained, Spot kept running under `never` for good."""
    world = switched(
        demand(spot="prefer", min_regions=1, min_replicas=1), demand(spot="never", min_regions=1, min_replicas=1)
    )
    assert world.placement() == [("us-a", "nvidia-l4", ON_DEMAND)]


def test_only_after_never_moves_every_replica_to_spot_once() -> None:
    """A replica the spec no longer allows asked for a move back every pass, each launch holding back
    the drains, until the replica cap stopped it."""
    world = settled(World(demand(spot="never"), set(SLOTS)))
    world.demand = demand(spot="only")
    launches = [launch for decided in world.run(60) for launch in decided.launches]
    assert world.plan().empty
    assert world.placement() == [("us-a", "nvidia-l4", SPOT), ("us-b", "nvidia-l4", SPOT)]
    assert len(launches) == 2, f"one launch for each replica to replace: {launches}"


def test_a_spec_change_at_the_replica_cap_makes_room_from_the_replicas_no_longer_allowed() -> None:
    """At max_replicas, the replacements are held back by the cap: room must come from draining the
    replicas on a capacity no longer allowed, or the service waits forever."""
    sized = {"min_regions": 4, "min_replicas": 4, "max_replicas": 4, "race": 1}
    world = switched(demand(spot="prefer", **sized), demand(spot="never", **sized))
    assert [(r, c) for r, _, c in world.placement()] == [(r, ON_DEMAND) for r in sorted(POSITIONS)]


spot_only = st.sets(st.sampled_from(sorted(s for s in SLOTS if s[2] is SPOT)))
changes = st.one_of(spot_demands.map(lambda d: ("spec", d)), spot_only.map(lambda s: ("preempt", s)),
                    slot_sets.map(lambda s: ("outage", s)))  # fmt: skip


@settings(max_examples=150, deadline=None)
@given(spot_demands, st.lists(st.tuples(changes, st.integers(1, 15)), min_size=1, max_size=5))
def test_spec_changes_and_preemption_waves_mid_run_settle_where_the_last_spec_says(
    first: Demand, story: list[tuple[tuple[str, object], int]]
) -> None:
    """The spec switching between never, prefer and only (floor 0..3) while Spot is taken away:
    no rule is broken on the way, and once capacity is back it settles (no launch/drain cycle)."""
    world, d = World(first, set(SLOTS)), first
    for (what, value), steps in story:
        if what == "spec":
            world.demand = d = value  # type: ignore[assignment]
        else:
            world.capacity = set(SLOTS) - value  # type: ignore[operator]
        for _ in range(steps):
            decided = world.plan()
            assert all(launch.capacity is ON_DEMAND or d.spot != "never" for launch in decided.launches)
            live = sum(r.state.live for r in world.replicas.values())
            assert live - len(decided.drains) + len(decided.launches) <= d.max_replicas + max(d.race, 0)
            world.step()
    world.capacity = set(SLOTS)
    world.run(200, seconds=60.0)
    assert world.plan().empty, "settled"
    placed = world.placement()
    wanted_od = len(placed) if d.spot == "never" else min(d.on_demand_base, len(placed))
    if d.race > 0:  # room for make before break
        assert sum(c is ON_DEMAND for _, _, c in placed) == wanted_od
        assert {g for _, g, _ in placed} == {"nvidia-l4"}


def test_a_short_floor_never_loops_on_a_worse_gpu() -> None:
    """The floor raised while its GPU's on-demand is blocked but a worse GPU's is free: a floor replica on
    the worse GPU would rank below the Spot replica it stands in for, be drained, and be launched again."""
    world = settled(World(demand(spot="prefer"), set(SLOTS)))
    world.demand = demand(spot="prefer", on_demand_base=1)
    world.capacity -= {(r, "nvidia-l4", ON_DEMAND) for r in POSITIONS}
    launched = [launch for p in world.run(120) for launch in p.launches]
    assert all(launch.gpu == "nvidia-l4" for launch in launched), "no floor replica on a worse GPU"
    assert len(launched) <= 8, f"{len(launched)} launches in 120 s: placement loops"  # L4 retried with backoff
    world.capacity |= SLOTS
    world.run(300, seconds=5.0)
    assert sorted(c for *_, c in world.placement()) == [ON_DEMAND, SPOT], "the floor once L4 is back on demand"


def _preempt(world: World, region: str) -> list[Slot]:
    """Take `region`'s Spot capacity and step once: the replica there dies, its slot is blocked and
    the same pass plans the replacement. Returns the slots it launches on."""
    world.capacity -= {s for s in SLOTS if s[0] == region and s[2] is SPOT}
    return [(launch.region, launch.gpu, launch.capacity) for launch in world.step().launches]


def test_a_preemption_while_the_service_serves_races_only_the_preferred_gpu() -> None:
    """A Spot loss says nothing of the L4 on demand: a T4 that won the race would serve, slower,
    until the move back."""
    world = settled(World(demand(spot="prefer", race=3), set(SLOTS)))
    launched = _preempt(world, "us-a")
    assert {gpu for _, gpu, _ in launched} == {"nvidia-l4"}
    assert len(launched) >= 2, "the replacement is still raced"
    assert ("us-a", "nvidia-l4", ON_DEMAND) in launched, "on demand in the lost region"


def test_the_fallback_gpu_is_still_raced_on_evidence_the_preferred_gpu_is_short() -> None:
    """An on-demand L4 block, or nothing serving at all: the fallback GPU is raced as before."""
    short = settled(World(demand(spot="prefer", race=3), set(SLOTS)))
    short.blocks[("eu-b", "nvidia-l4", ON_DEMAND)] = block_after_failure(
        None, "eu-b", "nvidia-l4", short.now, 300, 2, 600, "stockout", ON_DEMAND
    )
    assert "nvidia-tesla-t4" in {gpu for _, gpu, _ in _preempt(short, "us-a")}
    down = settled(World(demand(spot="prefer", race=3), set(SLOTS)))
    down.capacity -= {s for s in SLOTS if s[2] is SPOT}  # a wave takes both regions' Spot
    assert "nvidia-tesla-t4" in {launch.gpu for launch in down.step().launches}
