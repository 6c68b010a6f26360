"""How a service hunts for capacity in the simulated world.

- `GpuroamPolicy` is gpuroam itself: every pass calls the real `gpuroam.placement.plan` with a
  CapacityView of the blocks it holds and where traffic comes from, does what the plan says, and
  blocks a pair after a capacity failure with the real `gpuroam.placement.block_after_failure`
  (the backoff the reconciler uses). What the reconciler adds around them (a launch not ready
  within provision_timeout_s is a capacity failure; a lost ready replica blocks its pair) the
  engine does, as the reconciler does.
- `SequentialPolicy` is what SkyPilot (SkyServe) and dstack do, not gpuroam code: each replica is
  launched on the cheapest (region, GPU) offer; a failure blocks that offer for the rest of the
  walk and the next cheapest is tried; when every offer has failed, the walk starts again from
  the cheapest after a gap (SkyPilot's retry-until-up: 30 s, x1.6 per round, at most 150 s).
  It never moves a replica once placed.

Policies are named presets with optional overrides: `gpuroam`, `race-5`,
`gpuroam:race=4:backoff=1.5`, `sequential:timeout=1200`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Literal

from gpuroam.catalog import Catalog, load_catalog
from gpuroam.placement import CapacityView, Demand, block_after_failure, plan
from gpuroam.records import Block, Replica
from gpuroam.spec import PlacementSpec, region_matches

if TYPE_CHECKING:
    from gpuroam.sim.engine import Engine

Pair = tuple[str, str]

# The simulated service: the shape of examples/stable-diffusion.yaml (GPU preference, two regions,
# two replicas, at most six), with the spec's placement defaults unless a policy overrides them.
SERVICE_GPUS = ("nvidia-l4", "nvidia-tesla-t4", "nvidia-tesla-a100")


@dataclass(frozen=True)
class PolicyConfig:
    name: str
    kind: Literal["gpuroam", "sequential"] = "gpuroam"
    gpus: tuple[str, ...] = SERVICE_GPUS
    allow: tuple[str, ...] = ("*",)
    min_regions: int = 2
    per_region: int = 1
    min_replicas: int = 2
    max_replicas: int = 6
    gpu_count: int = 1
    race: int = field(default_factory=lambda: PlacementSpec().race)
    provision_timeout_s: float = field(default_factory=lambda: PlacementSpec().provision_timeout_s)
    block_ttl_s: float = field(default_factory=lambda: PlacementSpec().block_ttl_s)
    block_backoff: float = field(default_factory=lambda: PlacementSpec().block_backoff)
    block_max_s: float = field(default_factory=lambda: PlacementSpec().block_max_s)
    move_back_after_s: float = field(default_factory=lambda: PlacementSpec().move_back_after_s)

    def describe(self) -> dict:
        out = {
            "kind": self.kind,
            "gpus": list(self.gpus),
            "allow": list(self.allow),
            "min_regions": self.min_regions,
            "min_replicas": self.min_replicas,
            "max_replicas": self.max_replicas,
            "provision_timeout_s": self.provision_timeout_s,
        }
        if self.kind == "gpuroam":
            out |= {
                "race": self.race,
                "block_ttl_s": self.block_ttl_s,
                "block_backoff": self.block_backoff,
                "block_max_s": self.block_max_s,
                "move_back_after_s": self.move_back_after_s,
            }
        return out


def _price_order(gpus: Iterable[str]) -> tuple[str, ...]:
    """The GPUs cheapest per hour first (the bundled catalog's base prices): what ordering by
    price alone gives, where SERVICE_GPUS is ordered by price per image (price / speed)."""
    known = load_catalog().gpus
    return tuple(sorted(gpus, key=lambda g: known[g].base_price))


# name -> (kind, overrides). `gpuroam` is the spec's defaults; the rest vary one thing each.
PRESETS: dict[str, tuple[str, dict]] = {
    "sequential": ("sequential", {}),
    "gpuroam": ("gpuroam", {}),
    # the spec's defaults before this simulation set them (race 3, provision timeout 600 s)
    "previous-defaults": ("gpuroam", {"race": 3, "provision_timeout_s": 600.0}),
    "race-1": ("gpuroam", {"race": 1}),
    "race-2": ("gpuroam", {"race": 2}),
    "race-3": ("gpuroam", {"race": 3}),
    "race-4": ("gpuroam", {"race": 4}),
    "race-5": ("gpuroam", {"race": 5}),
    "race-8": ("gpuroam", {"race": 8}),
    "no-backoff": ("gpuroam", {"block_backoff": 1.0}),
    "backoff-4": ("gpuroam", {"block_backoff": 4.0}),
    "price-order": ("gpuroam", {"gpus": _price_order(SERVICE_GPUS)}),
    "timeout-10m": ("gpuroam", {"provision_timeout_s": 600.0}),
    "timeout-15m": ("gpuroam", {"provision_timeout_s": 900.0}),
    "timeout-20m": ("gpuroam", {"provision_timeout_s": 1200.0}),
    "single-region": ("gpuroam", {"allow": ("us-central1",)}),
}
DEFAULT_POLICIES = (
    "sequential",
    "gpuroam",
    "previous-defaults",
    "race-2",
    "race-3",
    "race-8",
    "no-backoff",
    "price-order",
    "timeout-10m",
    "single-region",
)
_KEYS = {
    "race": ("race", int),
    "timeout": ("provision_timeout_s", float),
    "ttl": ("block_ttl_s", float),
    "backoff": ("block_backoff", float),
    "max": ("block_max_s", float),
    "move_back": ("move_back_after_s", float),
    "regions": ("allow", lambda v: tuple(v.split("+"))),
    "gpus": ("gpus", lambda v: tuple(v.split("+"))),
    "min_regions": ("min_regions", int),
    "min": ("min_replicas", int),
}


class PolicyError(ValueError):
    pass


def policy_config(name: str) -> PolicyConfig:
    """A preset by name, with `:key=value` overrides (race, timeout, ttl, backoff, max, move_back,
    regions a+b, gpus a+b, min_regions, min)."""
    base, *overrides = name.split(":")
    if base not in PRESETS:
        raise PolicyError(f"unknown policy {base!r}; known: {', '.join(PRESETS)} (add :key=value to vary one)")
    kind, preset = PRESETS[base]
    config = replace(PolicyConfig(name=name, kind=kind), **preset)  # type: ignore[arg-type]
    for item in overrides:
        key, _, value = item.partition("=")
        if key not in _KEYS or not value:
            raise PolicyError(f"policy {name!r}: {item!r} is not key=value with key one of {', '.join(_KEYS)}")
        attr, parse = _KEYS[key]
        try:
            config = replace(config, **{attr: parse(value)})
        except ValueError as error:
            raise PolicyError(f"policy {name!r}: {item!r}: {error}") from None
    if config.block_max_s < config.block_ttl_s or config.race < 1 or config.block_backoff < 1:
        raise PolicyError(f"policy {name!r}: needs race >= 1, backoff >= 1 and max >= ttl")
    return config


class CachedCatalog:
    """The CatalogView placement reads, with distances and prices looked up instead of worked out."""

    def __init__(self, catalog: Catalog) -> None:
        self._price = {pair: offer.price for pair, offer in catalog.offers.items()}
        self._distance: dict[tuple[str, str], float] = {}
        self._catalog = catalog
        self._rank = {region: i for i, region in enumerate(catalog.regions)}

    def price(self, region: str, gpu: str) -> float:
        return self._price[(region, gpu)]

    def rank(self, region: str) -> int:
        """The region's place in the catalog file."""
        return self._rank[region]

    def distance_km(self, region_a: str, region_b: str) -> float:
        key = (region_a, region_b)
        value = self._distance.get(key)
        if value is None:
            value = self._distance[key] = self._catalog.distance_km(region_a, region_b)
        return value


class GpuroamPolicy:
    """gpuroam's controller in the simulation: the real plan() and block backoff."""

    def __init__(self, config: PolicyConfig, catalog: CachedCatalog, offers: frozenset[Pair]) -> None:
        self.config = config
        self.catalog = catalog
        self.offers = frozenset(p for p in offers if p[1] in config.gpus)
        self.demand = Demand(
            gpus=config.gpus,
            allow=config.allow,
            gpu_count=config.gpu_count,
            min_regions=config.min_regions,
            per_region=config.per_region,
            min_replicas=config.min_replicas,
            max_replicas=config.max_replicas,
            race=config.race,
            move_back_after_s=config.move_back_after_s,
        )
        self.blocks: dict[Pair, Block] = {}
        self.provision_timeout_s = config.provision_timeout_s

    def on_pass(self, engine: Engine, now: float) -> bool:
        view = CapacityView(offers=self.offers, blocks=self.blocks, traffic=engine.traffic(now))
        decided = plan(self.catalog, self.demand, view, engine.live_replicas(), now)
        for launch in decided.launches:
            engine.launch(launch.region, launch.gpu, launch.reason)
        for drain in decided.drains:
            engine.drain(drain.replica_id)
        return not decided.empty

    def on_ready(self, replica: Replica) -> None:
        pass

    def on_failure(self, engine: Engine, replica: Replica, now: float, lost: bool) -> None:
        """A capacity failure or a lost replica: the reconciler blocks the pair, with backoff."""
        pair = (replica.region, replica.gpu)
        c = self.config
        block = block_after_failure(
            self.blocks.get(pair), *pair, now, c.block_ttl_s, c.block_backoff, c.block_max_s, "sim"
        )
        self.blocks[pair] = block
        engine.wake(block.until)
        engine.wake(block.until + c.move_back_after_s)


@dataclass
class _Slot:
    replica: str | None = None
    tried: set[Pair] = field(default_factory=set)
    retry_at: float = float("-inf")
    rounds: int = 0


class SequentialPolicy:
    """SkyPilot/dstack: cheapest offer first, one at a time per replica; never moves back."""

    GAP_S = 30.0
    GAP_FACTOR = 1.6
    GAP_MAX_S = 150.0

    def __init__(self, config: PolicyConfig, catalog: CachedCatalog, offers: frozenset[Pair]) -> None:
        self.config = config
        allowed = [p for p in offers if p[1] in config.gpus and region_matches(p[0], config.allow, ())]
        # Cheapest first; equal prices in the catalog's region order (us-central1 first), as the
        # tools' own catalogs list them.
        self.order = sorted(allowed, key=lambda p: (catalog.price(*p) * config.gpu_count, catalog.rank(p[0]), p[1]))
        self.slots = [_Slot() for _ in range(config.min_replicas)]
        self.by_replica: dict[str, _Slot] = {}
        self.provision_timeout_s = config.provision_timeout_s

    def on_pass(self, engine: Engine, now: float) -> bool:
        acted = False
        for slot in self.slots:
            if slot.replica is not None or now < slot.retry_at:
                continue
            pair = next((p for p in self.order if p not in slot.tried), None)
            if pair is None:  # every offer failed: wait, then walk again from the cheapest
                slot.tried.clear()
                slot.retry_at = now + min(self.GAP_MAX_S, self.GAP_S * self.GAP_FACTOR**slot.rounds)
                slot.rounds += 1
                engine.wake(slot.retry_at)
                continue
            replica = engine.launch(pair[0], pair[1], "sequential")
            slot.replica = replica.id
            self.by_replica[replica.id] = slot
            acted = True
        return acted

    def on_ready(self, replica: Replica) -> None:
        self.by_replica[replica.id].rounds = 0

    def on_failure(self, engine: Engine, replica: Replica, now: float, lost: bool) -> None:
        slot = self.by_replica.pop(replica.id)
        slot.replica = None
        if lost:
            slot.tried.clear()
        else:
            slot.tried.add((replica.region, replica.gpu))


def make_policy(config: PolicyConfig, catalog: CachedCatalog, offers: frozenset[Pair]) -> Policy:
    if config.kind == "sequential":
        return SequentialPolicy(config, catalog, offers)
    return GpuroamPolicy(config, catalog, offers)


Policy = GpuroamPolicy | SequentialPolicy


def describe_policies(names: Iterable[str]) -> Mapping[str, dict]:
    return {name: policy_config(name).describe() for name in names}
