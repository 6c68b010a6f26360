"""Where a service's replicas should run: a pure function of what is wanted and what is known.

    plan(catalog, demand, capacity, replicas, now) -> Plan(launches, drains)

No I/O and no clock: the reconciler passes `now`, so every decision can be replayed, property-
tested and simulated. The rules, in order:

1. A (region, GPU) pair is *available* when the spec allows the region and names the GPU, the
   catalog offers it, it is not blocked (a recent capacity failure), and known inventory, if
   any, has room. It is *stable* when it is available and its last block ended at least
   `move_back_after_s` ago: only stable capacity is worth moving back to (hysteresis).
2. Regions are ranked by their best pair: GPU preference first, then distance to where traffic
   comes from (when known), then price, then name (so ties break the same way every time).
3. The service wants `needed` regions (min_regions, pinned regions, enough for min replicas) of
   `per_region` replicas each. It keeps pinned regions, then the best regions where it already
   runs, then adds the best available ones. With fewer regions, each takes more replicas.
4. A wanted region short of replicas gets launches on its best available GPU; while any wanted
   region has no ready replica, extra candidates in the next-best regions are raced, up to
   `race` launches in flight. With `race_fallback_gpu`, while every launch in flight is on one
   GPU type, the last raced candidate is the best available pair of another type, so a stockout
   of the preferred GPU everywhere does not hold back the fallback GPU until every region's
   preferred pair has failed.
5. Move back: when every wanted region is fully ready and nothing is starting, one replica at a
   time moves to a strictly better stable GPU in its region, or a wanted region is replaced by
   a strictly better stable one.
6. Make before break: replicas that are no longer wanted are drained only once every wanted
   region has its replicas ready.
7. At most max_replicas + race replicas live. When that cap holds launches back (say the service
   packed max_replicas into the one region left and can now spread out again), surplus ready
   replicas are drained first to make room, never below the ready capacity the service asked for.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal, Protocol

from gpuroam.records import Block, Replica, ReplicaState
from gpuroam.spec import PlacementSpec, ServiceSpec, region_matches

_SPEC_DEFAULTS = PlacementSpec()

Pair = tuple[str, str]  # (region, GPU type)
# How good a pair is, lower first: GPU preference, distance to traffic, price, then region and GPU
# names so ties break the same way every time. A region's key is its best pair's.
PairKey = tuple[int, float, float, str, str]


class CatalogView(Protocol):
    """What placement reads of a Catalog (gpuroam.catalog)."""

    def price(self, region: str, gpu: str) -> float: ...
    def distance_km(self, region_a: str, region_b: str) -> float: ...


@dataclass(frozen=True)
class Demand:
    """What placement needs of a service: its spec, flattened (so tests build it directly), plus
    the regions pinned by `expand`."""

    gpus: tuple[str, ...]
    allow: tuple[str, ...] = ("*",)
    deny: tuple[str, ...] = ()
    gpu_count: int = 1
    min_regions: int = 1
    per_region: int = 1
    min_replicas: int = 1
    max_replicas: int = 8
    race: int = _SPEC_DEFAULTS.race
    race_fallback_gpu: bool = _SPEC_DEFAULTS.race_fallback_gpu
    move_back_after_s: float = _SPEC_DEFAULTS.move_back_after_s
    pinned_regions: tuple[str, ...] = ()

    @classmethod
    def from_spec(cls, spec: ServiceSpec, pinned_regions: Iterable[str] = (), replicas: int | None = None) -> Demand:
        """`replicas`: what the autoscaler wants now (at least 1), in place of replicas.min."""
        return cls(
            gpus=tuple(spec.resources.gpus),
            allow=tuple(spec.regions.allow),
            deny=tuple(spec.regions.deny),
            gpu_count=spec.resources.gpu_count,
            min_regions=spec.regions.min_regions,
            per_region=spec.replicas.per_region,
            min_replicas=max(1, spec.replicas.min if replicas is None else replicas),
            max_replicas=spec.replicas.max,
            race=spec.placement.race,
            race_fallback_gpu=spec.placement.race_fallback_gpu,
            move_back_after_s=spec.placement.move_back_after_s,
            pinned_regions=tuple(r for r in pinned_regions if spec.region_allowed(r)),
        )

    def region_allowed(self, region: str) -> bool:
        return region_matches(region, self.allow, self.deny)

    def gpu_rank(self, gpu: str) -> int | None:
        return self.gpus.index(gpu) if gpu in self.gpus else None


@dataclass(frozen=True)
class CapacityView:
    """What is known about capacity: blocks (expired ones too, for hysteresis), free slots per
    pair where a provider knows them (absent = unknown, assume some), and where traffic comes
    from (region -> share; empty = unknown)."""

    offers: frozenset[Pair]
    blocks: Mapping[Pair, Block] = field(default_factory=dict)
    free_slots: Mapping[Pair, int] = field(default_factory=dict)
    traffic: Mapping[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class Launch:
    region: str
    gpu: str
    reason: str  # initial | replace | race | move-back


@dataclass(frozen=True)
class Drain:
    replica_id: str
    reason: str  # surplus | race-lost | moved


@dataclass(frozen=True)
class Plan:
    launches: tuple[Launch, ...] = ()
    drains: tuple[Drain, ...] = ()

    @property
    def empty(self) -> bool:
        return not self.launches and not self.drains


class _Inputs:
    """Everything one plan reads, with each pair's key and availability worked out once."""

    def __init__(self, catalog: CatalogView, demand: Demand, capacity: CapacityView, now: float) -> None:
        self.catalog = catalog
        self.demand = demand
        self.capacity = capacity
        self.now = now
        self.quotas: dict[str, int] = {}  # replicas per wanted region, set by `plan`
        distance = {region: self._traffic_distance(region) for region in {r for r, _ in capacity.offers}}
        self._keys: dict[Pair, PairKey] = {}
        for region, gpu in capacity.offers:
            rank = demand.gpu_rank(gpu)
            if rank is not None and demand.region_allowed(region):
                price = catalog.price(region, gpu) * demand.gpu_count
                self._keys[(region, gpu)] = (rank, distance[region], price, region, gpu)
        self._allowed = set(self._keys)
        self._available = {pair for pair in self._allowed if self._is_available(pair)}
        self._stable = {pair for pair in self._available if self._is_settled(pair)}
        self._by_region: dict[str, list[Pair]] = {}
        for pair in sorted(self._allowed, key=self._keys.__getitem__):
            self._by_region.setdefault(pair[0], []).append(pair)

    def _is_available(self, pair: Pair) -> bool:
        block = self.capacity.blocks.get(pair)
        return (block is None or not block.active(self.now)) and self.capacity.free_slots.get(pair, 1) > 0

    def _is_settled(self, pair: Pair) -> bool:
        block = self.capacity.blocks.get(pair)
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

    def allowed(self, region: str, gpu: str) -> bool:
        return (region, gpu) in self._allowed

    def available(self, region: str, gpu: str) -> bool:
        return (region, gpu) in self._available

    def pair_key(self, region: str, gpu: str) -> PairKey:
        return self._keys[(region, gpu)]

    def best_pair(
        self, region: str, test: Literal["available", "stable"] = "available", skip: Collection[str] = ()
    ) -> Pair | None:
        """The region's best pair that is available (or stable, for moving back), on a GPU not in `skip`."""
        usable = self._stable if test == "stable" else self._available
        return next((p for p in self._by_region.get(region, ()) if p in usable and p[1] not in skip), None)


def plan(
    catalog: CatalogView,
    demand: Demand,
    capacity: CapacityView,
    replicas: Sequence[Replica],
    now: float,
) -> Plan:
    """The launches and drains that move `replicas` (one service's) towards where they should be."""
    inputs = _Inputs(catalog, demand, capacity, now)
    live = [r for r in replicas if r.state.live]
    regions = sorted({region for region, _ in capacity.offers})
    region_keys = _region_keys(inputs, regions, live)
    wanted = _wanted_regions(inputs, region_keys, live)
    inputs.quotas = quotas_for(demand, wanted)
    launches = _launches(inputs, region_keys, wanted, live)
    room = max(0, demand.max_replicas + demand.race - len(live))
    if len(launches) > room:
        held_back = len(launches) - room
        return Plan(tuple(launches[:room]), tuple(_make_room(inputs, wanted, live, held_back)))
    return Plan(tuple(launches), tuple(_drains(inputs, wanted, live, launches)))


def block_after_failure(
    previous: Block | None,
    region: str,
    gpu: str,
    now: float,
    ttl_s: float,
    backoff: float,
    max_s: float,
    reason: str = "",
) -> Block:
    """The block a capacity failure on (region, gpu) at `now` puts in place of `previous` (that
    pair's last block, expired or not): exponential backoff, each consecutive failure multiplying
    the block by `backoff`, from `ttl_s` up to `max_s` (the spec's placement.block_*)."""
    failures = previous.failures + 1 if previous else 1
    seconds = min(max_s, ttl_s * backoff ** (failures - 1))
    return Block(region, gpu, now + seconds, failures, now, reason)


def needed_regions(demand: Demand) -> int:
    """How many regions the service should run in: what the spec asks for, plus each region
    `expand` pinned (expanding grows the footprint), within what max_replicas allows."""
    base = max(demand.min_regions, math.ceil(demand.min_replicas / demand.per_region))
    return max(1, min(base + len(demand.pinned_regions), demand.max_replicas // demand.per_region))


def quotas_for(demand: Demand, wanted: Sequence[str]) -> dict[str, int]:
    """Replicas per wanted region: per_region, or more when fewer regions than needed can be had,
    so the service keeps the capacity it asked for (capacity comes before spread).

    Evenly where max_replicas allows; otherwise the earlier (better) wanted regions take one more,
    since an even count rounded down to fit max_replicas would fall short of the capacity asked
    for (3 replicas in 2 regions: 2 + 1, not 1 + 1), and make before break would drain below it."""
    if not wanted:
        return {}
    regions = len(wanted)
    even = math.ceil(needed_regions(demand) * demand.per_region / regions)
    total = max(regions * demand.per_region, min(demand.max_replicas, regions * even))
    return {region: total // regions + (i < total % regions) for i, region in enumerate(wanted)}


def _region_keys(inputs: _Inputs, regions: Iterable[str], live: Sequence[Replica]) -> dict[str, PairKey]:
    """Each region's best pair: an available one, or what its live replicas already run on."""
    keys: dict[str, PairKey] = {}
    for region in regions:
        best = inputs.best_pair(region)
        candidates = [inputs.pair_key(*best)] if best else []
        candidates += [
            inputs.pair_key(r.region, r.gpu) for r in live if r.region == region and inputs.allowed(r.region, r.gpu)
        ]
        if candidates:
            keys[region] = min(candidates)
    return keys


def _wanted_regions(inputs: _Inputs, keys: Mapping[str, PairKey], live: Sequence[Replica]) -> list[str]:
    """Pinned first, then the best regions already in use, then the best available ones.

    A pinned region the service lost comes back only on stable capacity, like any move back."""
    count = needed_regions(inputs.demand)
    in_use = {r.region for r in live if r.region in keys}
    wanted = [r for r in inputs.demand.pinned_regions if r in in_use or inputs.best_pair(r, "stable")]
    using = sorted(in_use - set(wanted), key=lambda r: keys[r])
    fresh = sorted(set(keys) - set(wanted) - in_use, key=lambda r: keys[r])
    for region in using + fresh:
        if len(wanted) >= count:
            break
        if region in in_use or inputs.best_pair(region) is not None:
            wanted.append(region)
    return _move_back_region(inputs, keys, wanted, live, fresh)


def _move_back_region(
    inputs: _Inputs, keys: Mapping[str, PairKey], wanted: list[str], live: Sequence[Replica], fresh: list[str]
) -> list[str]:
    """Swap the worst unpinned wanted region for a strictly better stable one, once all is ready."""
    if any(r.state is ReplicaState.PROVISIONING for r in live) or not _all_ready(inputs, wanted, live):
        return wanted
    swappable = [r for r in wanted if r not in inputs.demand.pinned_regions]
    better = [r for r in fresh if r not in wanted and inputs.best_pair(r, "stable")]
    if not swappable or not better:
        return wanted
    worst = max(swappable, key=lambda r: keys[r])
    best = min(better, key=lambda r: _stable_key(inputs, r))
    if _stable_key(inputs, best)[0] < keys[worst][0]:  # a strictly better GPU: worth a move
        return [best if r == worst else r for r in wanted]
    return wanted


def _stable_key(inputs: _Inputs, region: str) -> PairKey:
    pair = inputs.best_pair(region, "stable")
    assert pair is not None
    return inputs.pair_key(*pair)


def _launches(
    inputs: _Inputs, keys: Mapping[str, PairKey], wanted: Sequence[str], live: Sequence[Replica]
) -> list[Launch]:
    demand = inputs.demand
    launches: list[Launch] = []
    # A new region while enough regions already serve can only be a move to a better one.
    moving = len({r.region for r in live if r.state is ReplicaState.READY}) >= len(wanted)
    for region in wanted:
        here = [r for r in live if r.region == region]
        pair = inputs.best_pair(region)
        if pair is not None and len(here) < inputs.quota(region):
            reason = "replace" if here else ("move-back" if moving else "initial")
            launches += [Launch(region, pair[1], reason)] * (inputs.quota(region) - len(here))
    if not launches and not any(r.state is ReplicaState.PROVISIONING for r in live):
        launches += _move_back_gpu(inputs, wanted, live)
    ready = sum(r.state is ReplicaState.READY for r in live)
    unserved = [r for r in wanted if not any(x.region == r and x.state is ReplicaState.READY for x in live)]
    if unserved and ready < needed_regions(demand) * demand.per_region:
        launches += _race(inputs, keys, wanted, live, launches)
    return launches


def _race(
    inputs: _Inputs,
    keys: Mapping[str, PairKey],
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
    best = (pair for region in spare if (pair := inputs.best_pair(region)) is not None)
    chosen = list(itertools.islice(best, max(0, demand.race - len(starting))))
    gpus = set(starting) | {gpu for _, gpu in chosen}
    if demand.race_fallback_gpu and chosen and len(gpus) == 1:
        taken = {region for region, _ in chosen[:-1]}
        others = [pair for region in spare if region not in taken and (pair := inputs.best_pair(region, skip=gpus))]
        if others:
            chosen[-1] = min(others, key=lambda pair: inputs.pair_key(*pair))
    return [Launch(region, gpu, "race") for region, gpu in chosen]


def _move_back_gpu(inputs: _Inputs, wanted: Sequence[str], live: Sequence[Replica]) -> list[Launch]:
    """One replica at a time onto a strictly better stable GPU in its own region."""
    if not _all_ready(inputs, wanted, live):
        return []
    for region in wanted:
        here = [r for r in live if r.region == region]
        pair = inputs.best_pair(region, "stable")
        worst_rank = max((_rank(inputs, r.gpu) for r in here), default=None)
        if pair is not None and worst_rank is not None and _rank(inputs, pair[1]) < worst_rank:
            return [Launch(region, pair[1], "move-back")]
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
    the wanted regions, then worst GPU, then newest), and the ready replicas left never fall
    below min(ready now, needed_regions * per_region), so make before break still holds."""
    demand = inputs.demand
    kept = {r.id for region in wanted for r in _kept(inputs, region, live)}
    ready = [r for r in live if r.state is ReplicaState.READY and inputs.allowed(r.region, r.gpu)]
    spare = len(ready) - needed_regions(demand) * demand.per_region
    surplus = [r for r in live if r.state is ReplicaState.READY and r.id not in kept]
    surplus.sort(key=lambda r: (r.region in wanted, -_rank(inputs, r.gpu), -r.created_at, r.id))
    return [Drain(r.id, _drain_reason(r, wanted)) for r in surplus[: max(0, min(count, spare))]]


def _drain_reason(replica: Replica, wanted: Sequence[str]) -> str:
    if replica.state is ReplicaState.PROVISIONING:
        return "race-lost"
    return "moved" if replica.region in wanted else "surplus"


def _kept(inputs: _Inputs, region: str, live: Sequence[Replica]) -> list[Replica]:
    """The region's best `quota` replicas: best GPU first, then ready ones, then oldest.

    A better-GPU replica that is still starting is kept and the worse ready one it replaces is
    not, so `_all_ready` holds back every drain until the replacement is ready."""
    here = [r for r in live if r.region == region and inputs.allowed(r.region, r.gpu)]
    here.sort(key=lambda r: (_rank(inputs, r.gpu), r.state is not ReplicaState.READY, r.created_at, r.id))
    return here[: inputs.quota(region)]


def _all_ready(inputs: _Inputs, wanted: Sequence[str], live: Sequence[Replica]) -> bool:
    """Every wanted region holds its quota of ready replicas."""
    return all(
        sum(1 for r in _kept(inputs, region, live) if r.state is ReplicaState.READY) >= inputs.quota(region)
        for region in wanted
    )


def _rank(inputs: _Inputs, gpu: str) -> int:
    rank = inputs.demand.gpu_rank(gpu)
    return rank if rank is not None else 1_000
