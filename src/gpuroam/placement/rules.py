"""Where a service's replicas should run: a pure function of what is wanted and what is known.

    plan(catalog, demand, capacity, replicas, now) -> Plan(launches, drains)

No I/O and no clock: the reconciler passes `now`, so every decision can be replayed, property-
tested and simulated. Capacity comes in *slots*: (region, GPU, Spot or on-demand). The rules, in
order:

1. A slot is *available* when the spec allows the region, names the GPU and allows the capacity
   (`resources.spot`), the catalog offers it, it is not blocked (a recent capacity failure or a
   preemption), and known inventory, if any, has room. It is *stable* when it is available and its
   last block ended at least `move_back_after_s` ago: only stable capacity is worth moving back to
   (hysteresis).
2. Slots rank by GPU preference, then Spot above on-demand of the same GPU (`spot: prefer`), then
   distance to where traffic comes from (when known), then price, then names (so ties break the
   same way every time). Regions rank by their best slot.
3. The service wants `needed` regions (min_regions, pinned regions, enough for min replicas) of
   `per_region` replicas each. It keeps pinned regions, then the best regions where it already
   runs, then adds the best available ones. With fewer regions, each takes more replicas. With
   Spot, replicas spread one region wider (Demand.from_spec), so one region's preemption wave
   cannot take them all.
4. A wanted region short of replicas gets launches on its best available slot; while the service
   has fewer on-demand replicas than `on_demand_base`, on its best on-demand slot. While any
   wanted region has no ready replica, extra candidates in the next-best regions are raced, up to
   `race` launches in flight. With `race_fallback_gpu`, while every launch in flight is on one
   GPU type, the last raced candidate is the best available slot of another type, so a stockout
   of the preferred GPU everywhere does not hold back the fallback GPU until every region's
   preferred slot has failed; but not while the service serves and only Spot slots of that GPU
   are blocked (a Spot loss says nothing of the GPU on demand).
5. Move back: when every wanted region is fully ready and nothing is starting, one replica at a
   time moves to a strictly better stable slot in its region (a better GPU, or Spot for an
   on-demand replica above the floor; the floor's replicas move only to a better GPU on demand),
   or a wanted region is replaced by a strictly better stable one.
6. Make before break: replicas that are no longer wanted are drained only once every wanted
   region has its replicas ready.
7. At most max_replicas + race replicas live. When that cap holds launches back (say the service
   packed max_replicas into the one region left and can now spread out again), surplus ready
   replicas are drained first to make room, never below the ready capacity the service asked for.
"""

from __future__ import annotations

import itertools
from collections.abc import Collection, Iterable, Mapping, Sequence
from typing import Literal

from gpuroam.placement.inputs import (
    ON_DEMAND,
    SPOT,
    CapacityView,
    CatalogView,
    Demand,
    Drain,
    Launch,
    Plan,
    Slot,
    SlotKey,
    needed_regions,
    quotas_for,
)
from gpuroam.records import Capacity, Replica, ReplicaState


class _Inputs:
    """Everything one plan reads, with each slot's key and availability worked out once."""

    def __init__(
        self, catalog: CatalogView, demand: Demand, capacity: CapacityView, live: Sequence[Replica], now: float
    ) -> None:
        self.catalog = catalog
        self.demand = demand
        self.capacity = capacity
        self.now = now
        self.quotas: dict[str, int] = {}  # replicas per wanted region, set by `plan`
        slots = list(capacity.slots())
        distance = {region: self._traffic_distance(region) for region in {r for r, _, _ in slots}}
        self._keys: dict[Slot, SlotKey] = {}
        for region, gpu, kind in slots:
            if demand.gpu_rank(gpu) is not None and demand.region_allowed(region) and demand.capacity_allowed(kind):
                price = (catalog.spot_price if kind is SPOT else catalog.price)(region, gpu) * demand.gpu_count
                key = (demand.rank(gpu, kind), distance[region], price, region, gpu, kind.value)
                self._keys[(region, gpu, kind)] = key
        self._allowed = set(self._keys)
        self._available = {slot for slot in self._allowed if self._is_available(slot)}
        self._stable = {slot for slot in self._available if self._is_settled(slot)}
        self._by_region: dict[str, list[Slot]] = {}
        for slot in sorted(self._allowed, key=self._keys.__getitem__):
            self._by_region.setdefault(slot[0], []).append(slot)
        self.floor = _floor(demand, [r for r in live if self.allowed(r)])

    def _is_available(self, slot: Slot) -> bool:
        block = self.capacity.blocks.get(slot)
        return (block is None or not block.active(self.now)) and self.capacity.free_slots.get(slot, 1) > 0

    def _is_settled(self, slot: Slot) -> bool:
        block = self.capacity.blocks.get(slot)
        return block is None or self.now - block.until >= self.demand.move_back_after_s

    def _traffic_distance(self, region: str) -> float:
        traffic = self.capacity.traffic
        total = sum(traffic.values())
        if total <= 0:
            return 0.0
        distance = sum(share * self.catalog.distance_km(origin, region) for origin, share in traffic.items())
        return round(distance / total, 3)

    def quota(self, region: str) -> int:
        return self.quotas.get(region, self.demand.per_region)

    def floor_short(self, on_demand: int) -> bool:
        """Fewer on-demand replicas in the wanted regions than on_demand_base (of the replicas wanted)."""
        return on_demand < min(self.demand.on_demand_base, sum(self.quotas.values()))

    def allowed(self, replica: Replica) -> bool:
        return _slot(replica) in self._allowed

    def slot_key(self, slot: Slot) -> SlotKey:
        return self._keys[slot]

    def replica_key(self, replica: Replica) -> SlotKey:
        """The replica's slot key, ranked as Spot when it is one of the on-demand floor: Spot never replaces it."""
        key = self._keys[_slot(replica)]
        return (self.rank(replica), *key[1:])

    def rank(self, replica: Replica) -> int:
        capacity = SPOT if replica.id in self.floor else replica.capacity
        return self.demand.rank(replica.gpu, capacity)

    def best_slot(
        self,
        region: str,
        test: Literal["available", "stable"] = "available",
        skip: Collection[str] = (),
        capacities: Collection[Capacity] = tuple(Capacity),
    ) -> Slot | None:
        """The region's best slot that is available (or stable, for moving back), on a GPU not in
        `skip` and a capacity in `capacities`."""
        usable = self._stable if test == "stable" else self._available
        return next(
            (s for s in self._by_region.get(region, ()) if s in usable and s[1] not in skip and s[2] in capacities),
            None,
        )


def _slot(replica: Replica) -> Slot:
    return (replica.region, replica.gpu, replica.capacity)


def _floor(demand: Demand, live: Sequence[Replica], quotas: Mapping[str, int] | None = None) -> frozenset[str]:
    """The on-demand replicas that make up `on_demand_base`: best GPU first, then ready, then oldest.
    With the wanted regions' `quotas`, only replicas there, at most a region's quota from each."""
    on_demand = [r for r in live if r.capacity is ON_DEMAND and (quotas is None or r.region in quotas)]
    on_demand.sort(key=lambda r: (demand.rank(r.gpu, ON_DEMAND), r.state is not ReplicaState.READY, r.created_at, r.id))
    taken: dict[str, int] = {}
    floor = []
    for replica in on_demand:
        if quotas is None or taken.get(replica.region, 0) < quotas[replica.region]:
            taken[replica.region] = taken.get(replica.region, 0) + 1
            floor.append(replica.id)
    return frozenset(floor[: min(demand.on_demand_base, sum(quotas.values())) if quotas else demand.on_demand_base])


def plan(
    catalog: CatalogView,
    demand: Demand,
    capacity: CapacityView,
    replicas: Sequence[Replica],
    now: float,
) -> Plan:
    """The launches and drains that move `replicas` (one service's) towards where they should be."""
    live = [r for r in replicas if r.state.live]
    inputs = _Inputs(catalog, demand, capacity, live, now)
    regions = sorted({region for region, _, _ in capacity.slots()})
    region_keys = _region_keys(inputs, regions, live)
    wanted = _wanted_regions(inputs, region_keys, live)
    inputs.quotas = quotas_for(demand, wanted)
    inputs.floor = _floor(demand, [r for r in live if inputs.allowed(r)], inputs.quotas)
    launches = _launches(inputs, region_keys, wanted, live)
    room = max(0, demand.max_replicas + demand.race - len(live))
    if len(launches) > room:
        held_back = len(launches) - room
        return Plan(tuple(launches[:room]), tuple(_make_room(inputs, wanted, live, held_back)))
    return Plan(tuple(launches), tuple(_drains(inputs, wanted, live, launches)))


def _region_keys(inputs: _Inputs, regions: Iterable[str], live: Sequence[Replica]) -> dict[str, SlotKey]:
    """Each region's best slot: an available one, or what its live replicas already run on."""
    keys: dict[str, SlotKey] = {}
    for region in regions:
        best = inputs.best_slot(region)
        candidates = [inputs.slot_key(best)] if best else []
        candidates += [inputs.replica_key(r) for r in live if r.region == region and inputs.allowed(r)]
        if candidates:
            keys[region] = min(candidates)
    return keys


def _wanted_regions(inputs: _Inputs, keys: Mapping[str, SlotKey], live: Sequence[Replica]) -> list[str]:
    """Pinned first, then the best regions already in use, then the best available ones.

    A pinned region the service lost comes back only on stable capacity, like any move back."""
    count = needed_regions(inputs.demand)
    in_use = {r.region for r in live if r.region in keys}
    wanted = [r for r in inputs.demand.pinned_regions if r in in_use or inputs.best_slot(r, "stable")]
    using = sorted(in_use - set(wanted), key=lambda r: keys[r])
    fresh = sorted(set(keys) - set(wanted) - in_use, key=lambda r: keys[r])
    for region in using + fresh:
        if len(wanted) >= count:
            break
        if region in in_use or inputs.best_slot(region) is not None:
            wanted.append(region)
    return _move_back_region(inputs, keys, wanted, live, fresh)


def _move_back_region(
    inputs: _Inputs, keys: Mapping[str, SlotKey], wanted: list[str], live: Sequence[Replica], fresh: list[str]
) -> list[str]:
    """Swap the worst unpinned wanted region for a strictly better stable one, once all is ready."""
    if any(r.state is ReplicaState.PROVISIONING for r in live) or not _all_ready(inputs, wanted, live):
        return wanted
    swappable = [r for r in wanted if r not in inputs.demand.pinned_regions]
    better = [r for r in fresh if r not in wanted and inputs.best_slot(r, "stable")]
    if not swappable or not better:
        return wanted
    worst = max(swappable, key=lambda r: keys[r])
    best = min(better, key=lambda r: _stable_key(inputs, r))
    if _stable_key(inputs, best)[0] < keys[worst][0]:  # a strictly better slot: worth a move
        return [best if r == worst else r for r in wanted]
    return wanted


def _stable_key(inputs: _Inputs, region: str) -> SlotKey:
    slot = inputs.best_slot(region, "stable")
    assert slot is not None
    return inputs.slot_key(slot)


def _launches(
    inputs: _Inputs, keys: Mapping[str, SlotKey], wanted: Sequence[str], live: Sequence[Replica]
) -> list[Launch]:
    demand = inputs.demand
    launches: list[Launch] = []
    # A new region while enough regions already serve can only be a move to a better one.
    moving = len({r.region for r in live if r.state is ReplicaState.READY}) >= len(wanted)
    on_demand = _kept_on_demand(inputs, wanted, live)
    for region in wanted:
        here = [r for r in live if r.region == region and inputs.allowed(r)]  # not one the spec no longer allows
        reason = "replace" if here else ("move-back" if moving else "initial")
        for _ in range(inputs.quota(region) - len(here)):
            slot = inputs.best_slot(region, capacities=demand.launch_capacities(inputs.floor_short(on_demand)))
            if slot is None:
                break
            on_demand += slot[2] is ON_DEMAND
            launches.append(Launch(region, slot[1], reason, slot[2]))
    if not launches and not any(r.state is ReplicaState.PROVISIONING for r in live):
        launches += _move_back_slot(inputs, wanted, live)
    ready = sum(r.state is ReplicaState.READY for r in live)
    unserved = [r for r in wanted if not any(x.region == r and x.state is ReplicaState.READY for x in live)]
    if unserved and ready < needed_regions(demand) * demand.per_region:
        launches += _race(inputs, keys, wanted, live, launches)
    return launches


def _race(
    inputs: _Inputs,
    keys: Mapping[str, SlotKey],
    wanted: Sequence[str],
    live: Sequence[Replica],
    launches: Sequence[Launch],
) -> list[Launch]:
    """One candidate in each next-best region, up to `race` launches in flight; with
    race_fallback_gpu, the last on another GPU type while all in flight share one."""
    demand = inputs.demand
    starting = [r.gpu for r in live if r.state is ReplicaState.PROVISIONING] + [launch.gpu for launch in launches]
    busy = set(wanted) | {r.region for r in live}
    spare = sorted((r for r in keys if r not in busy), key=lambda r: keys[r])
    capacities = demand.launch_capacities(floor_short=False)
    best = (slot for region in spare if (slot := inputs.best_slot(region, capacities=capacities)) is not None)
    chosen = list(itertools.islice(best, max(0, demand.race - len(starting))))
    gpus = set(starting) | {gpu for _, gpu, _ in chosen}
    if chosen and _race_fallback(inputs, gpus, live):
        taken = {region for region, _, _ in chosen[:-1]}
        others = [
            slot
            for region in spare
            if region not in taken and (slot := inputs.best_slot(region, skip=gpus, capacities=capacities))
        ]
        if others:
            chosen[-1] = min(others, key=inputs.slot_key)
    return [Launch(region, gpu, "race", kind) for region, gpu, kind in chosen]


def _race_fallback(inputs: _Inputs, gpus: Collection[str], live: Sequence[Replica]) -> bool:
    """Whether the race's last candidate goes to another GPU type: with race_fallback_gpu, while
    every launch in flight is on one GPU, unless a Spot loss alone started the race while the service
    serves. A preemption or a Spot stockout says nothing of that GPU on demand, and a slower fallback
    GPU that wins the race would serve until the preferred one is back (the Spot study measured it)."""
    demand = inputs.demand
    if not demand.race_fallback_gpu or len(gpus) != 1:
        return False
    if demand.spot != "prefer" or not any(r.state is ReplicaState.READY for r in live):
        return True
    (gpu,) = gpus
    active = [b for b in inputs.capacity.blocks.values() if b.gpu == gpu and b.active(inputs.now)]
    return not active or any(b.capacity is ON_DEMAND for b in active)


def _move_back_slot(inputs: _Inputs, wanted: Sequence[str], live: Sequence[Replica]) -> list[Launch]:
    """Once all is ready, one move at a time, make before break: an on-demand replica for a floor
    that is short (on_demand_base raised); else a replica onto a strictly better stable slot in its
    own region, worst first: a better GPU, or Spot for an on-demand replica above the floor (a
    floor replica moves to a better GPU on demand only)."""
    if not _all_ready(inputs, wanted, live):
        return []
    demand = inputs.demand
    if inputs.floor_short(_kept_on_demand(inputs, wanted, live)):
        # In place of a kept Spot replica, on a GPU no worse than its: a floor replica ranks as Spot of its
        # GPU, so one on a worse GPU would not be kept, and would be launched and drained every pass.
        for region in wanted:
            spot = [inputs.rank(r) for r in _kept(inputs, region, live) if r.capacity is SPOT]
            slot = inputs.best_slot(region, capacities=(ON_DEMAND,))
            if spot and slot is not None and demand.rank(slot[1], SPOT) <= max(spot):
                return [Launch(slot[0], slot[1], "floor", ON_DEMAND)]
    for region in wanted:
        for replica in sorted(_kept(inputs, region, live), key=inputs.rank, reverse=True):
            floor = replica.id in inputs.floor
            slot = inputs.best_slot(region, "stable", capacities=demand.launch_capacities(floor_short=floor))
            if slot is not None and demand.rank(slot[1], SPOT if floor else slot[2]) < inputs.rank(replica):
                return [Launch(region, slot[1], "move-back", slot[2])]
    return []


def _drains(inputs: _Inputs, wanted: Sequence[str], live: Sequence[Replica], launches: Sequence[Launch]) -> list[Drain]:
    """Make before break: release what is not kept only when every wanted region is ready."""
    if launches or not _all_ready(inputs, wanted, live):
        return []
    kept = {r.id for region in wanted for r in _kept(inputs, region, live)}
    return [Drain(r.id, _drain_reason(r, wanted)) for r in live if r.id not in kept]


def _make_room(inputs: _Inputs, wanted: Sequence[str], live: Sequence[Replica], count: int) -> list[Drain]:
    """Up to `count` ready replicas that are not kept, drained so that held-back launches fit
    under the replica cap: otherwise a service at the cap with replicas in the wrong places
    waits forever, its launches for the readiness its drains wait on. Worst go first (outside
    the wanted regions, then worst slot, then newest), and the ready replicas left never fall
    below min(ready now, needed_regions * per_region), so make before break still holds."""
    demand = inputs.demand
    kept = {r.id for region in wanted for r in _kept(inputs, region, live)}
    ready = [r for r in live if r.state is ReplicaState.READY]  # on slots the spec no longer allows too
    spare = len(ready) - needed_regions(demand) * demand.per_region
    surplus = [r for r in ready if r.id not in kept]
    surplus.sort(key=lambda r: (inputs.allowed(r), r.region in wanted, -inputs.rank(r), -r.created_at, r.id))
    return [Drain(r.id, _drain_reason(r, wanted)) for r in surplus[: max(0, min(count, spare))]]


def _drain_reason(replica: Replica, wanted: Sequence[str]) -> str:
    if replica.state is ReplicaState.PROVISIONING:
        return "race-lost"
    return "moved" if replica.region in wanted else "surplus"


def _kept(inputs: _Inputs, region: str, live: Sequence[Replica]) -> list[Replica]:
    """The region's best `quota` replicas: best slot first (the floor's as good as Spot, and ahead
    of others of its rank), then ready ones, then oldest.

    A better replica that is still starting is kept and the worse ready one it replaces is not,
    so `_all_ready` holds back every drain until the replacement is ready."""
    here = [r for r in live if r.region == region and inputs.allowed(r)]
    floor = inputs.floor
    here.sort(key=lambda r: (inputs.rank(r), r.id not in floor, r.state is not ReplicaState.READY, r.created_at, r.id))
    return here[: inputs.quota(region)]


def _kept_on_demand(inputs: _Inputs, wanted: Sequence[str], live: Sequence[Replica]) -> int:
    """The on-demand replicas that stay (kept in a wanted region): what the floor counts."""
    return sum(r.capacity is ON_DEMAND for region in wanted for r in _kept(inputs, region, live))


def _all_ready(inputs: _Inputs, wanted: Sequence[str], live: Sequence[Replica]) -> bool:
    """Every wanted region holds its quota of ready replicas."""
    return all(
        sum(1 for r in _kept(inputs, region, live) if r.state is ReplicaState.READY) >= inputs.quota(region)
        for region in wanted
    )
