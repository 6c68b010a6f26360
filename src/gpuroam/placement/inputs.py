"""What placement reads and returns: a service's demand, what is known of capacity, and the plan.

Plain values and pure helpers, no I/O; the rules that turn them into a plan are in `rules`.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from gpuroam.records import Block, Capacity
from gpuroam.spec import PlacementSpec, ServiceSpec, SpotChoice, region_matches

_SPEC_DEFAULTS = PlacementSpec()
SPOT, ON_DEMAND = Capacity.SPOT, Capacity.ON_DEMAND

Pair = tuple[str, str]  # (region, GPU type): what a catalog offers
Slot = tuple[str, str, Capacity]  # (region, GPU type, Spot or on-demand): what a replica runs on
# How good a slot is, lower first: its rank (GPU preference, then Spot above on-demand), distance
# to traffic, price, then region, GPU and capacity names so ties break the same way every time.
# A region's key is its best slot's.
SlotKey = tuple[int, float, float, str, str, str]


class CatalogView(Protocol):
    """What placement reads of a Catalog (gpuroam.catalog)."""

    def price(self, region: str, gpu: str) -> float: ...
    def spot_price(self, region: str, gpu: str) -> float: ...
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
    spot: SpotChoice = "never"
    on_demand_base: int = 0

    @classmethod
    def from_spec(cls, spec: ServiceSpec, pinned_regions: Iterable[str] = (), replicas: int | None = None) -> Demand:
        """`replicas`: what the autoscaler wants now (at least 1), in place of replicas.min.

        With Spot, a service of two or more replicas spreads over two regions at least (its
        per_region lowered so the count stays): a preemption wave takes one region's Spot at once."""
        wanted = max(1, spec.replicas.min if replicas is None else replicas)
        min_regions, per_region = spec.regions.min_regions, spec.replicas.per_region
        if spec.resources.spot != "never" and wanted >= 2:
            min_regions, per_region = max(2, min_regions), max(1, min(per_region, wanted // 2))
        return cls(
            gpus=tuple(spec.resources.gpus),
            allow=tuple(spec.regions.allow),
            deny=tuple(spec.regions.deny),
            gpu_count=spec.resources.gpu_count,
            min_regions=min_regions,
            per_region=per_region,
            min_replicas=wanted,
            max_replicas=spec.replicas.max,
            race=spec.placement.race,
            race_fallback_gpu=spec.placement.race_fallback_gpu,
            move_back_after_s=spec.placement.move_back_after_s,
            pinned_regions=tuple(r for r in pinned_regions if spec.region_allowed(r)),
            spot=spec.resources.spot,
            on_demand_base=spec.resources.on_demand_base,
        )

    def region_allowed(self, region: str) -> bool:
        return region_matches(region, self.allow, self.deny)

    def gpu_rank(self, gpu: str) -> int | None:
        return self.gpus.index(gpu) if gpu in self.gpus else None

    def capacity_allowed(self, capacity: Capacity) -> bool:
        """Spot unless `never`; on-demand unless `only` without a floor."""
        if capacity is SPOT:
            return self.spot != "never"
        return self.spot != "only" or self.on_demand_base > 0

    def launch_capacities(self, floor_short: bool) -> frozenset[Capacity]:
        """What a new replica may run on: on-demand while the floor is short, else what `spot` says."""
        if floor_short:
            return frozenset({ON_DEMAND})
        return {"never": frozenset({ON_DEMAND}), "only": frozenset({SPOT})}.get(self.spot, frozenset(Capacity))

    def rank(self, gpu: str, capacity: Capacity) -> int:
        """GPU preference first, then Spot above on-demand of the same GPU; unknown GPUs last."""
        index = self.gpu_rank(gpu)
        return (index if index is not None else 1_000) * 2 + (capacity is ON_DEMAND)


@dataclass(frozen=True)
class CapacityView:
    """What is known about capacity: the catalog's offers the provider has, on demand and as Spot;
    blocks (expired ones too, for hysteresis); free slots where a provider knows them (absent =
    unknown, assume some); and where traffic comes from (region -> share; empty = unknown)."""

    offers: frozenset[Pair]
    spot_offers: frozenset[Pair] = frozenset()
    blocks: Mapping[Slot, Block] = field(default_factory=dict)
    free_slots: Mapping[Slot, int] = field(default_factory=dict)
    traffic: Mapping[str, float] = field(default_factory=dict)

    def slots(self) -> Iterable[Slot]:
        yield from ((region, gpu, ON_DEMAND) for region, gpu in self.offers)
        yield from ((region, gpu, SPOT) for region, gpu in self.spot_offers)


@dataclass(frozen=True)
class Launch:
    region: str
    gpu: str
    reason: str  # initial | replace | race | move-back | floor
    capacity: Capacity = ON_DEMAND


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


def block_after_failure(
    previous: Block | None,
    region: str,
    gpu: str,
    now: float,
    ttl_s: float,
    backoff: float,
    max_s: float,
    reason: str = "",
    capacity: Capacity = ON_DEMAND,
) -> Block:
    """The block a capacity failure on (region, gpu, capacity) at `now` puts in place of `previous`
    (that slot's last block, expired or not): exponential backoff, each consecutive failure
    multiplying the block by `backoff`, from `ttl_s` up to `max_s` (the spec's placement.block_*)."""
    failures = previous.failures + 1 if previous else 1
    seconds = min(max_s, ttl_s * backoff ** (failures - 1))
    return Block(region, gpu, now + seconds, failures, now, reason, capacity)


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
