"""Placement is pure: scenario tests and property tests over a small simulated world."""

from __future__ import annotations

import ast
import inspect
import itertools
import math
from collections.abc import Iterable
from dataclasses import replace

from hypothesis import given, settings
from hypothesis import strategies as st

from gpuroam import placement
from gpuroam.placement import CapacityView, Demand, Launch, Plan, needed_regions, plan
from gpuroam.records import Block, Capacity, Replica, ReplicaState

GPUS = ("nvidia-l4", "nvidia-tesla-t4", "nvidia-tesla-a100")
POSITIONS = {"us-a": (0.0, 0.0), "us-b": (0.0, 10.0), "eu-a": (50.0, 0.0), "eu-b": (50.0, 10.0), "ap-a": (0.0, 120.0)}
PRICES = {"nvidia-l4": 0.56, "nvidia-tesla-t4": 0.35, "nvidia-tesla-a100": 2.9}
ALL_OFFERS = frozenset(itertools.product(POSITIONS, GPUS))


class FakeCatalog:
    def price(self, region: str, gpu: str) -> float:
        return PRICES[gpu] + 0.01 * list(POSITIONS).index(region)

    def distance_km(self, a: str, b: str) -> float:
        (la, oa), (lb, ob) = POSITIONS[a], POSITIONS[b]
        return 111.0 * math.hypot(la - lb, oa - ob)


CATALOG = FakeCatalog()


class World:
    """Replicas, blocks and a hidden truth about capacity; launches become ready one step later."""

    def __init__(self, demand: Demand, capacity: set[tuple[str, str]], offers: frozenset = ALL_OFFERS) -> None:
        self.demand = demand
        self.capacity = capacity
        self.offers = offers
        self.replicas: dict[str, Replica] = {}
        self.blocks: dict[tuple[str, str, Capacity], Block] = {}
        self.now = 1000.0
        self.ids = itertools.count()
        self.history: list[Plan] = []

    def view(self) -> CapacityView:
        return CapacityView(offers=self.offers, blocks=dict(self.blocks))

    def plan(self) -> Plan:
        return plan(CATALOG, self.demand, self.view(), list(self.replicas.values()), self.now)

    def step(self, seconds: float = 1.0) -> Plan:
        """Bring up what was launched last step, then apply one new plan."""
        for replica in list(self.replicas.values()):
            if replica.state is ReplicaState.PROVISIONING:
                if (replica.region, replica.gpu) in self.capacity:
                    self._set(replica, ReplicaState.READY)
                else:
                    self._set(replica, ReplicaState.FAILED)
                    self.block(replica.region, replica.gpu, 300.0)
            elif replica.state is ReplicaState.READY and (replica.region, replica.gpu) not in self.capacity:
                self._set(replica, ReplicaState.FAILED)  # capacity taken away: the replica died
                self.block(replica.region, replica.gpu, 30.0)
        decided = self.plan()
        self.history.append(decided)
        for launch in decided.launches:
            rid = f"r{next(self.ids)}"
            self.replicas[rid] = Replica(
                rid,
                "svc",
                launch.region,
                launch.gpu,
                ReplicaState.PROVISIONING,
                self.now,
                self.now,
                reason=launch.reason,
            )
        for drain in decided.drains:
            self._set(self.replicas[drain.replica_id], ReplicaState.TERMINATED)
        self.now += seconds
        return decided

    def block(self, region: str, gpu: str, ttl: float) -> None:
        old = self.blocks.get((region, gpu, Capacity.ON_DEMAND))
        failures = old.failures + 1 if old else 1
        until = self.now + min(3600.0, ttl * 2 ** (failures - 1))
        self.blocks[(region, gpu, Capacity.ON_DEMAND)] = Block(region, gpu, until, failures, self.now)

    def _set(self, replica: Replica, state: ReplicaState) -> None:
        ready_at = self.now if state is ReplicaState.READY else replica.ready_at
        self.replicas[replica.id] = Replica(
            replica.id, replica.service, replica.region, replica.gpu, state, replica.created_at, self.now, ready_at
        )

    def run(self, steps: int, seconds: float = 1.0) -> None:
        for _ in range(steps):
            self.step(seconds)

    def live(self, state: ReplicaState | None = None) -> list[Replica]:
        return [r for r in self.replicas.values() if r.state.live and (state is None or r.state is state)]

    def placement(self) -> set[tuple[str, str]]:
        return {(r.region, r.gpu) for r in self.live(ReplicaState.READY)}


def demand(**changes: object) -> Demand:
    base = {
        "gpus": GPUS,
        "min_regions": 2,
        "per_region": 1,
        "min_replicas": 2,
        "max_replicas": 6,
        "race": 3,
        "move_back_after_s": 10.0,
    }
    return Demand(**{**base, **changes})  # type: ignore[arg-type]


def settle(world: World, steps: int = 20) -> None:
    world.run(steps)
    assert world.plan().empty, f"not settled: {world.plan()}"


def test_up_places_on_the_preferred_gpu_in_two_regions() -> None:
    world = World(demand(), set(ALL_OFFERS))
    settle(world)
    assert world.placement() == {("us-a", "nvidia-l4"), ("us-b", "nvidia-l4")}
    assert not world.live(ReplicaState.PROVISIONING)


def test_traffic_origin_pulls_placement_towards_it() -> None:
    world = World(demand(), set(ALL_OFFERS))
    world.view = lambda: CapacityView(offers=ALL_OFFERS, blocks=dict(world.blocks), traffic={"eu-a": 1.0})  # type: ignore[method-assign]
    settle(world)
    assert {region for region, _ in world.placement()} == {"eu-a", "eu-b"}


def test_losing_a_gpu_type_moves_to_the_next_gpu_and_back_when_it_returns() -> None:
    world = World(demand(), set(ALL_OFFERS))
    settle(world)
    world.capacity -= {(r, "nvidia-l4") for r in POSITIONS}
    world.run(5)
    assert {gpu for _, gpu in world.placement()} == {"nvidia-tesla-t4"}
    assert len(world.placement()) == 2
    world.capacity |= {(r, "nvidia-l4") for r in POSITIONS}
    ready_counts = []
    for _ in range(120):
        world.step()
        ready_counts.append(len(world.live(ReplicaState.READY)))
    assert {gpu for _, gpu in world.placement()} == {"nvidia-l4"}, "moved back to the preferred GPU"
    assert min(ready_counts) >= 2, "make before break: never below the needed ready replicas"
    assert world.plan().empty


def test_move_back_waits_for_the_hysteresis_window() -> None:
    world = World(demand(move_back_after_s=50.0), set(ALL_OFFERS))
    settle(world)
    world.capacity -= {(r, "nvidia-l4") for r in POSITIONS}
    world.run(3)
    world.capacity |= {(r, "nvidia-l4") for r in POSITIONS}
    for _ in range(400):
        blocks_before = dict(world.blocks)
        decided = world.step()
        for launch in decided.launches:
            block = blocks_before.get((launch.region, launch.gpu, launch.capacity))
            if launch.reason == "move-back" and block is not None:
                assert world.now - 1 - block.until >= 50, "moved back before capacity was stable for 50 s"
    assert {gpu for _, gpu in world.placement()} == {"nvidia-l4"}


def test_losing_a_region_fails_over_to_another_region() -> None:
    world = World(demand(), set(ALL_OFFERS))
    settle(world)
    world.capacity -= {("us-a", gpu) for gpu in GPUS}
    world.run(5)
    regions = {region for region, _ in world.placement()}
    assert "us-a" not in regions and len(regions) == 2
    assert all(gpu == "nvidia-l4" for _, gpu in world.placement())


def test_expand_adds_the_pinned_region_to_the_footprint() -> None:
    world = World(demand(), set(ALL_OFFERS))
    settle(world)
    assert {region for region, _ in world.placement()} == {"us-a", "us-b"}
    world.demand = demand(pinned_regions=("ap-a",))
    settle(world)
    assert {region for region, _ in world.placement()} == {"us-a", "us-b", "ap-a"}
    world.demand = demand(pinned_regions=("ap-a", "eu-b"))
    settle(world)
    assert {region for region, _ in world.placement()} == {"us-a", "us-b", "ap-a", "eu-b"}


def test_shrink_drains_the_region_expand_added_and_keeps_the_rest() -> None:
    world = World(demand(pinned_regions=("ap-a",)), set(ALL_OFFERS))
    settle(world)
    world.demand = demand()  # `shrink`: ap-a is no longer pinned
    decided = world.step()
    assert not decided.launches and [world.replicas[d.replica_id].region for d in decided.drains] == ["ap-a"]
    settle(world)
    assert world.placement() == {("us-a", "nvidia-l4"), ("us-b", "nvidia-l4")}


def test_racing_launches_several_candidates_and_releases_the_losers() -> None:
    world = World(demand(min_regions=1, min_replicas=1), {("eu-b", "nvidia-l4")})
    first = world.step()
    assert len(first.launches) == 3, "race 3 candidates at once"
    settle(world, 30)
    assert world.placement() == {("eu-b", "nvidia-l4")}
    assert len(world.live()) == 1


def test_blocked_pairs_are_never_tried() -> None:
    world = World(demand(), set(ALL_OFFERS))
    world.blocks[("us-a", "nvidia-l4", Capacity.ON_DEMAND)] = Block("us-a", "nvidia-l4", world.now + 100, 1, world.now)
    decided = world.plan()
    assert ("us-a", "nvidia-l4") not in {(launch.region, launch.gpu) for launch in decided.launches}


def test_denied_regions_and_unknown_gpus_are_never_used() -> None:
    world = World(demand(deny=("us-*",), gpus=("nvidia-tesla-t4",)), set(ALL_OFFERS))
    settle(world)
    assert world.placement() and all(not r.startswith("us-") and g == "nvidia-tesla-t4" for r, g in world.placement())


def test_needed_regions_respects_max_replicas() -> None:
    assert needed_regions(demand(min_regions=5, max_replicas=4)) == 4
    assert needed_regions(demand(min_regions=1, min_replicas=3, per_region=2)) == 2
    assert needed_regions(demand(min_regions=2, pinned_regions=("ap-a",))) == 3


def test_a_service_squeezed_into_one_region_spreads_out_again() -> None:
    """Regression (issue 3): with only eu-b left the service packed max_replicas there, and once
    capacity came back the replica cap held back every launch while drains waited for them."""
    d = demand(min_regions=2, per_region=2, race=1, max_replicas=6, pinned_regions=("ap-a",))
    capacity = {("eu-b", "nvidia-l4"), ("ap-a", "nvidia-l4"), ("eu-a", "nvidia-tesla-a100")}
    world = World(d, set(capacity))
    world.capacity = {("eu-b", "nvidia-l4")}
    world.run(15)
    assert len(world.live(ReplicaState.READY)) == 6
    world.capacity = set(capacity)
    world.run(15)
    world.run(100, seconds=60.0)
    assert {region for region, _ in world.placement()} == {"eu-b", "ap-a", "eu-a"}
    assert len(world.live(ReplicaState.READY)) == 6


def test_capacity_that_does_not_divide_evenly_is_never_drained_below_what_was_asked() -> None:
    """Regression: 3 replicas (max 3) in the 2 regions left must be 2 + 1; an even 1 + 1 drained a
    ready replica and broke make before break. Found by hypothesis with a wider strategy."""
    d = demand(min_regions=1, per_region=1, min_replicas=3, race=1, max_replicas=3)
    capacity = {("eu-a", "nvidia-l4"), ("ap-a", "nvidia-l4"), ("eu-a", "nvidia-tesla-a100")}
    world = World(d, set(capacity))
    world.run(15)
    world.capacity = {("eu-a", "nvidia-tesla-a100")}
    world.run(15)
    world.capacity = set(capacity)
    for _ in range(30):
        before = world.live()
        drained = {drain.replica_id for drain in world.plan().drains}
        ready_after = [r for r in before if r.state is ReplicaState.READY and r.id not in drained]
        assert len(ready_after) >= min(3, len(world.live(ReplicaState.READY))), "make before break"
        world.step()
    settle(world, 200)
    assert len(world.live(ReplicaState.READY)) == 3


# --- properties --------------------------------------------------------------------------------

pairs = st.sampled_from(sorted(ALL_OFFERS))
demands = st.builds(
    demand,
    min_regions=st.integers(1, 3),
    per_region=st.integers(1, 2),
    race=st.integers(1, 4),
    race_fallback_gpu=st.booleans(),
    max_replicas=st.integers(6, 8),
    pinned_regions=st.lists(st.sampled_from(sorted(POSITIONS)), max_size=2, unique=True).map(tuple),
)


def ready_on_allowed(world: World, replicas: Iterable[Replica]) -> int:
    return sum(1 for r in replicas if r.state is ReplicaState.READY and r.gpu in world.demand.gpus)


@settings(max_examples=60, deadline=None)
@given(demands, st.sets(pairs, min_size=1), st.lists(st.sets(pairs), min_size=1, max_size=4))
def test_every_plan_is_safe_and_the_service_recovers(d: Demand, capacity: set, outages: list) -> None:
    world = World(d, set(capacity))
    for outage in outages + [set()]:
        world.capacity = set(capacity) - outage
        for _ in range(15):
            before = list(world.live())
            decided = world.plan()
            assert decided == world.plan(), "deterministic"
            view = world.view()
            for launch in decided.launches:
                block = view.blocks.get((launch.region, launch.gpu, launch.capacity))
                assert block is None or not block.active(world.now), "never a blocked pair"
                assert (launch.region, launch.gpu) in ALL_OFFERS and launch.gpu in d.gpus
            drained = {drain.replica_id for drain in decided.drains}
            after = [r for r in before if r.id not in drained]
            need = needed_regions(d) * d.per_region
            assert ready_on_allowed(world, after) >= min(ready_on_allowed(world, before), need), "make before break"
            assert len(before) + len(decided.launches) <= d.max_replicas + d.race
            world.step()
    world.run(100, seconds=60.0)  # long enough for every block to expire
    regions_with_capacity = {region for region, _ in capacity}
    assert len({r.region for r in world.live(ReplicaState.READY)}) >= min(needed_regions(d), len(regions_with_capacity))


@settings(max_examples=15, deadline=None)
@given(demands, st.sampled_from(sorted(POSITIONS)), st.integers(2, 6))
def test_a_flapping_region_does_not_make_placement_flap(d: Demand, region: str, period: int) -> None:
    world = World(d, set(ALL_OFFERS))
    settle(world)
    lost = {(region, gpu) for gpu in GPUS}
    launches = 0
    for tick in range(240):
        world.capacity = set(ALL_OFFERS) - lost if (tick // period) % 2 == 0 else set(ALL_OFFERS)
        launches += len(world.step(5.0).launches)
    flips = 240 // period
    # Each loss blocks the pair with doubling backoff, so launches grow with log(time), not flips.
    doublings = math.ceil(math.log2(240 * 5.0 / 30.0)) + 1
    bound = (len(GPUS) + 1) * doublings * d.per_region + 2 * needed_regions(d) * d.per_region + 4 * d.race
    assert launches <= bound, f"{launches} launches over {flips} flips"


# --- racing a fallback GPU ---------------------------------------------------------------------


def test_a_fallback_gpu_is_raced_while_the_preferred_one_is_out_everywhere() -> None:
    """Every L4 out of stock: without the fallback the service tries each region's L4 before any
    T4; with it, one raced candidate is the best T4 from the first pass on."""
    capacity = {(r, g) for r, g in ALL_OFFERS if g != "nvidia-l4"}
    hunting, hedged = (
        World(demand(race_fallback_gpu=False), set(capacity)),
        World(demand(race_fallback_gpu=True), set(capacity)),
    )
    first = hedged.step()
    assert [launch.gpu for launch in first.launches] == ["nvidia-l4", "nvidia-l4", "nvidia-tesla-t4"]
    assert first.launches[-1] == Launch("eu-a", "nvidia-tesla-t4", "race")  # the best T4 outside the wanted regions
    hunting.step()
    hedged.step()
    hunting.step()
    assert hedged.live(ReplicaState.READY) and not hunting.live(ReplicaState.READY)
    for world in (hedged, hunting):
        settle(world)
        assert {gpu for _, gpu in world.placement()} == {"nvidia-tesla-t4"} and len(world.placement()) == 2


def _untouched_other_gpu(world: World, decided: Plan, gpus: set[str]) -> list[tuple[str, str]]:
    """Available pairs of a GPU type outside `gpus`, in regions with no replica and no launch."""
    touched = {r.region for r in world.live()} | {launch.region for launch in decided.launches}
    view = world.view()
    return [
        (region, gpu)
        for region, gpu in sorted(world.offers)
        if region not in touched
        and gpu in world.demand.gpus
        and gpu not in gpus
        and world.demand.region_allowed(region)
        and not ((block := view.blocks.get((region, gpu, Capacity.ON_DEMAND))) and block.active(world.now))
    ]


racing_demands = st.builds(
    demand,
    gpus=st.tuples(st.permutations(GPUS), st.integers(1, 3)).map(lambda order: tuple(order[0][: order[1]])),
    min_regions=st.integers(1, 2),
    min_replicas=st.integers(1, 2),
    race=st.integers(2, 6),
    max_replicas=st.integers(2, 8),
    pinned_regions=st.lists(st.sampled_from(sorted(POSITIONS)), max_size=1).map(tuple),
)


@settings(max_examples=80, deadline=None)
@given(racing_demands, st.sets(pairs), st.lists(st.sets(pairs), min_size=1, max_size=4))
def test_the_fallback_changes_only_the_last_raced_candidate(d: Demand, capacity: set, outages: list) -> None:
    """Same state, fallback off and on: the same plan but for the last raced launch, which moves
    to another GPU type when every launch in flight would otherwise share one and one is free."""
    off, on = replace(d, race_fallback_gpu=False), replace(d, race_fallback_gpu=True)
    world = World(on, set(capacity))
    for outage in outages:
        world.capacity = set(capacity) - outage
        for _ in range(6):
            world.demand = off
            plain = world.plan()
            world.demand = on
            hedged = world.plan()
            assert hedged.drains == plain.drains and hedged.launches[:-1] == plain.launches[:-1]
            assert len(hedged.launches) == len(plain.launches)
            starting = [r.gpu for r in world.live(ReplicaState.PROVISIONING)]
            raced = [launch for launch in hedged.launches if launch.reason == "race"]
            assert len(raced) <= max(0, d.race - len(starting) - (len(hedged.launches) - len(raced)))
            gpus = set(starting) | {launch.gpu for launch in hedged.launches}
            capped = len(world.live()) + len(hedged.launches) >= d.max_replicas + d.race
            if raced and len(gpus) == 1 and not capped:
                assert not _untouched_other_gpu(world, hedged, gpus), "a free pair of another GPU was not raced"
            if hedged.launches != plain.launches:
                last = hedged.launches[-1]
                assert last.reason == "race" and len(gpus) == 2 and {plain.launches[-1].gpu} == gpus - {last.gpu}
            world.step()


def test_placement_imports_nothing_that_does_io() -> None:
    """Pure by construction: no module that reaches files, the network or the clock, so every plan
    can be replayed (the reconciler passes `now`) and simulated."""
    modules = [placement, placement.inputs, placement.rules]
    trees = [ast.parse(inspect.getsource(module)) for module in modules]
    nodes = [node for tree in trees for node in ast.walk(tree)]
    imported = {alias.name for node in nodes if isinstance(node, ast.Import) for alias in node.names}
    imported |= {node.module or "" for node in nodes if isinstance(node, ast.ImportFrom)}
    pure = {"__future__", "itertools", "math", "collections.abc", "dataclasses", "typing"}
    assert imported <= pure | {"gpuroam.records", "gpuroam.spec", "gpuroam.placement.inputs", "gpuroam.placement.rules"}
