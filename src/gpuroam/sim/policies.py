"""How a service hunts for capacity in the simulated world.

- `GpuroamPolicy` is gpuroam itself: every pass calls the real `gpuroam.placement.plan` with the
  Demand of the policy's ServiceSpec, a CapacityView of the blocks it holds and where traffic comes
  from, does what the plan says, and blocks a pair after a capacity failure with the real
  `gpuroam.placement.block_after_failure` (the backoff the reconciler uses). What the reconciler
  adds around them (a launch not ready within provision_timeout_s is a capacity failure; a lost
  ready replica blocks its pair) the simulation does, as the reconciler does.
- `SequentialPolicy` is what SkyPilot (SkyServe) and dstack do, not gpuroam code: each replica is
  launched on the cheapest (region, GPU) offer; a failure blocks that offer for the rest of the
  walk and the next cheapest is tried; when every offer has failed, the walk starts again from
  the cheapest after a gap (SkyPilot's retry-until-up: 30 s, x1.6 per round, at most 150 s).
  It never moves a replica once placed.

With Spot in the world (gpuroam.sim.spot_world), gpuroam's policy offers placement the Spot slots
too and heeds preemption notices as the reconciler does (the slot blocked, the replacement planned at
once); `spothedge` (gpuroam.sim.spothedge) is SkyServe's Spot policy.

Either may follow demand (`gpuroam.sim.sizing`): `autoscale` is gpuroam's placement sized by
gpuroam's autoscaler (the spec's autoscale section); `skyserve` is the sequential walk sized by
SkyServe's request-rate autoscaler. `fixed` (the same as `gpuroam`) keeps replicas.min.

Policies are named presets with optional overrides: `gpuroam`, `race-5`,
`gpuroam:race=4:backoff=1.5`, `sequential:timeout=1200`, `autoscale:target=2`, `skyserve:qps=0.4`,
`gpuroam-spot:base=1`, `spothedge:extra=1`.
Each is a kind and a real ServiceSpec, validated as a spec file is, so the spec stays the one source
of the placement and scaling settings.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal, Protocol

from gpuroam.catalog import Catalog, load_catalog
from gpuroam.placement import CapacityView, Demand, Pair, Slot, block_after_failure, plan
from gpuroam.records import Block, Replica, ReplicaState
from gpuroam.sim.sizing import AutoscaleSizer, QpsSizer
from gpuroam.spec import AutoscaleSpec, ServiceSpec, SpecError, parse_spec, spec_to_dict

if TYPE_CHECKING:
    from gpuroam.sim.simulation import Simulation

PolicyKind = Literal["gpuroam", "sequential", "spothedge"]

# The simulated service: the shape of examples/stable-diffusion.yaml (GPU preference, two regions,
# two replicas, at most six), with the spec's placement defaults unless a policy overrides them.
SERVICE = parse_spec(
    {
        "name": "stable-diffusion",
        "resources": {"gpus": ["nvidia-l4", "nvidia-tesla-t4", "nvidia-tesla-a100"]},
        "regions": {"min_regions": 2},
        "replicas": {"per_region": 1, "min": 2, "max": 6},
    },
    "gpuroam sim",
)


# SkyServe-style sizing (between min_replicas 0 and replicas.max): requests per second one replica should take. Its placement launches the
# cheapest GPU first, a T4 here (about 0.25 images/s): 0.2 keeps one near 80% busy.
TARGET_QPS = 0.2
# The autoscaled policies' ceiling: a 20x burst of the steady day needs about a dozen L4 replicas.
AUTOSCALE_MAX = 16


@dataclass(frozen=True)
class PolicyConfig:
    """A named policy: how it hunts for capacity (`kind`) for the service `spec` describes, and
    with `target_qps`, sized by SkyServe's request-rate rule."""

    name: str
    kind: PolicyKind
    spec: ServiceSpec
    target_qps: float | None = None
    overprovision: int = 0  # spothedge: Spot replicas beyond those asked for (SkyServe's num_overprovision)

    def describe(self) -> dict[str, object]:
        """The policy's settings, for JSON output: what sequential reads, and all of placement for gpuroam."""
        spec = self.spec
        placement = spec_to_dict(spec)["placement"]
        out: dict[str, object] = {
            "kind": self.kind,
            "gpus": list(spec.resources.gpus),
            "allow": list(spec.regions.allow),
            "min_regions": spec.regions.min_regions,
            "min_replicas": spec.replicas.min,
            "max_replicas": spec.replicas.max,
            "provision_timeout_s": placement["provision_timeout_s"],  # the one setting sequential uses
        }
        if self.target_qps is not None:
            out |= {"target_qps_per_replica": self.target_qps, "min_replicas": 0}
        if spec.autoscale is not None:
            out["autoscale"] = spec_to_dict(spec)["autoscale"]
        if spec.resources.spot != "never":
            out |= {"spot": spec.resources.spot, "on_demand_base": spec.resources.on_demand_base}
        if self.kind == "spothedge":
            out |= {"gpus": list(spec.resources.gpus[:1]), "overprovision": self.overprovision}
        return out | placement if self.kind == "gpuroam" else out


def _price_order(gpus: Iterable[str]) -> tuple[str, ...]:
    """The GPUs cheapest per hour first (the bundled catalog's base prices): what ordering by
    price alone gives, where SERVICE's GPUs are ordered by price per image (price / speed)."""
    known = load_catalog().gpus
    return tuple(sorted(gpus, key=lambda g: known[g].base_price))


def _names(text: str) -> tuple[str, ...]:
    return tuple(text.split("+"))


def _switch(text: str) -> bool:
    if text not in ("on", "off"):
        raise ValueError(f"{text!r} is neither on nor off")
    return text == "on"


# Override key -> the spec field it sets (section, field) and how its text is read.
_KEYS: dict[str, tuple[str, str, Callable[[str], object]]] = {
    "race": ("placement", "race", int),
    "fallback": ("placement", "race_fallback_gpu", _switch),
    "timeout": ("placement", "provision_timeout_s", float),
    "ttl": ("placement", "block_ttl_s", float),
    "backoff": ("placement", "block_backoff", float),
    "max": ("placement", "block_max_s", float),
    "move_back": ("placement", "move_back_after_s", float),
    "regions": ("regions", "allow", _names),
    "gpus": ("resources", "gpus", _names),
    "min_regions": ("regions", "min_regions", int),
    "min": ("replicas", "min", int),
    "max_replicas": ("replicas", "max", int),
    "target": ("autoscale", "target_in_flight", float),
    "up": ("autoscale", "scale_up_after_s", float),
    "down": ("autoscale", "scale_down_after_s", float),
    "sleep": ("autoscale", "sleep_after_s", float),
    "spot": ("resources", "spot", str),
    "base": ("resources", "on_demand_base", int),
    "qps": ("", "target_qps", float),  # not a spec field: SkyServe's target_qps_per_replica
    "extra": ("", "overprovision", int),  # not a spec field: SkyServe's num_overprovision (spothedge)
}

# name -> (kind, overrides by key). `gpuroam` is the spec's defaults; the rest vary one thing each.
PRESETS: dict[str, tuple[PolicyKind, dict[str, object]]] = {
    "sequential": ("sequential", {}),
    "gpuroam": ("gpuroam", {}),
    # the spec's defaults before this simulation set them (race 3, provision timeout 600 s, no fallback GPU)
    "previous-defaults": ("gpuroam", {"race": 3, "timeout": 600.0, "fallback": False}),
    "race-1": ("gpuroam", {"race": 1}),
    "race-2": ("gpuroam", {"race": 2}),
    "race-3": ("gpuroam", {"race": 3}),
    "race-4": ("gpuroam", {"race": 4}),
    "race-5": ("gpuroam", {"race": 5}),
    "race-8": ("gpuroam", {"race": 8}),
    "no-fallback": ("gpuroam", {"fallback": False}),
    "no-backoff": ("gpuroam", {"backoff": 1.0}),
    "backoff-4": ("gpuroam", {"backoff": 4.0}),
    "price-order": ("gpuroam", {"gpus": _price_order(SERVICE.resources.gpus)}),
    "timeout-10m": ("gpuroam", {"timeout": 600.0}),
    "timeout-15m": ("gpuroam", {"timeout": 900.0}),
    "timeout-20m": ("gpuroam", {"timeout": 1200.0}),
    "single-region": ("gpuroam", {"regions": ("us-central1",)}),
    # the autoscaling study: today's fixed size, gpuroam's autoscaler, SkyServe's
    "fixed": ("gpuroam", {}),
    "autoscale": (
        "gpuroam",
        {"min": 0, "max_replicas": AUTOSCALE_MAX, "target": AutoscaleSpec().target_in_flight},
    ),
    "skyserve": ("sequential", {"max_replicas": AUTOSCALE_MAX, "qps": TARGET_QPS}),
    # the Spot study: all on demand (the spec's default, `spot: never`), Spot with no fallback,
    # gpuroam preferring Spot, and SkyServe's SpotHedge (its first GPU only, as SkyServe's Spot placer)
    "on-demand": ("gpuroam", {}),
    "spot-only": ("gpuroam", {"spot": "only"}),
    "gpuroam-spot": ("gpuroam", {"spot": "prefer"}),
    "spothedge": ("spothedge", {"spot": "prefer"}),
}
AUTOSCALE_POLICIES = ("fixed", "skyserve", "autoscale")
SPOT_POLICIES = ("on-demand", "spot-only", "spothedge", "spothedge:extra=1", "gpuroam-spot")
DEFAULT_POLICIES = (
    "sequential",
    "gpuroam",
    "previous-defaults",
    "no-fallback",
    "race-2",
    "race-3",
    "race-8",
    "no-backoff",
    "price-order",
    "timeout-10m",
    "single-region",
)


class PolicyError(ValueError):
    pass


def policy_config(name: str) -> PolicyConfig:
    """A preset by name, with `:key=value` overrides (race, fallback on|off, timeout, ttl, backoff,
    max, move_back, regions a+b, gpus a+b, min_regions, min, max_replicas; autoscaling: target, up,
    down, sleep; SkyServe's qps)."""
    base, *overrides = name.split(":")
    if base not in PRESETS:
        raise PolicyError(f"unknown policy {base!r}; known: {', '.join(PRESETS)} (add :key=value to vary one)")
    kind, preset = PRESETS[base]
    changes = dict(preset)
    for item in overrides:
        key, _, text = item.partition("=")
        if key not in _KEYS or not text:
            raise PolicyError(f"policy {name!r}: {item!r} is not key=value with key one of {', '.join(_KEYS)}")
        try:
            changes[key] = _KEYS[key][2](text)
        except ValueError as error:
            raise PolicyError(f"policy {name!r}: {item!r}: {error}") from None
    qps = changes.pop("qps", None)
    if qps is not None and (kind != "sequential" or not isinstance(qps, float) or qps <= 0):
        raise PolicyError(f"policy {name!r}: qps is SkyServe's target per replica, a number > 0 for skyserve")
    extra = changes.pop("extra", 0)
    if not isinstance(extra, int) or extra < 0 or (extra and kind != "spothedge"):
        raise PolicyError(f"policy {name!r}: extra is SpotHedge's Spot overprovisioning, a count >= 0 for spothedge")
    spec = _service(name, changes)
    return PolicyConfig(name, kind, spec, qps if isinstance(qps, float) else None, extra)


def _service(name: str, changes: Mapping[str, object]) -> ServiceSpec:
    """SERVICE with `changes` made, validated as a spec file is (so race 0 is refused alike); an
    autoscale key brings the autoscale section."""
    data = spec_to_dict(SERVICE)
    for key, value in changes.items():
        section, attr, _ = _KEYS[key]
        data.setdefault(section, {})[attr] = value
    try:
        return parse_spec(data, f"policy {name!r}")
    except SpecError as error:
        raise PolicyError(f"policy {name!r}: {'; '.join(error.problems)}") from None


class CachedCatalog:
    """The CatalogView placement reads, with distances and prices looked up instead of worked out."""

    def __init__(self, catalog: Catalog) -> None:
        self._price = {pair: offer.price for pair, offer in catalog.offers.items()}
        self._spot_price = {pair: offer.spot_price for pair, offer in catalog.offers.items()}
        self._distance: dict[tuple[str, str], float] = {}
        self._catalog = catalog
        self._rank = {region: i for i, region in enumerate(catalog.regions)}

    def price(self, region: str, gpu: str) -> float:
        return self._price[(region, gpu)]

    def spot_price(self, region: str, gpu: str) -> float:
        price = self._spot_price[(region, gpu)]
        if price is None:
            raise KeyError(f"the catalog has no Spot price for {gpu} in {region}")
        return price

    def rank(self, region: str) -> int:
        """The region's place in the catalog file."""
        return self._rank[region]

    def speed(self, gpu: str) -> float:
        return self._catalog.speed(gpu)

    def distance_km(self, region_a: str, region_b: str) -> float:
        key = (region_a, region_b)
        value = self._distance.get(key)
        if value is None:
            value = self._distance[key] = self._catalog.distance_km(region_a, region_b)
        return value


class CapacityPolicy(Protocol):
    """What the simulation asks of a policy that hunts for capacity (routing requests is
    gpuroam.gateway.routing.Policy's business, not this)."""

    provision_timeout_s: float  # a launch not ready by then is a capacity failure
    heeds_notice: bool  # acts on a Spot preemption notice (else learns of the loss when the node is gone)

    def on_pass(self, simulation: Simulation, now: float) -> bool:
        """Act on what the simulation shows now; True when it launched or drained anything."""

    def on_ready(self, replica: Replica) -> None: ...

    def on_failure(self, simulation: Simulation, replica: Replica, now: float, lost: bool) -> None:
        """A launch failed (`lost` False) or a ready replica was lost."""

    def on_notice(self, simulation: Simulation, replica: Replica, now: float) -> None:
        """A ready Spot replica got its preemption notice (only for a policy that heeds notices):
        the simulation has taken it out of routing; the policy's pass follows at once."""


class _Sizing:
    """An autoscaled policy's size, decided when its sizer is due (each decision asks for a pass at
    the next one); None for a fixed-size policy."""

    def __init__(self, config: PolicyConfig, catalog: CachedCatalog) -> None:
        self.config = config
        self.catalog = catalog
        self.sizer: AutoscaleSizer | QpsSizer | None = None
        self.next_at = float("-inf")

    def desired(self, simulation: Simulation, now: float) -> int | None:
        spec = self.config.spec
        if self.sizer is None:
            if self.config.target_qps is not None:  # min_replicas 0, as SkyServe allows
                self.sizer = QpsSizer(0, spec.replicas.max, self.config.target_qps)
            elif spec.autoscale is not None:
                self.sizer = AutoscaleSizer(spec, self.catalog.speed(spec.resources.gpus[0]), now)
            else:
                return None
        if now >= self.next_at:
            before = self.sizer.desired
            self.next_at = self.sizer.decide(simulation.signals(now), simulation.ready_speeds(), now)
            simulation.wake(self.next_at)
            if before == 0 < self.sizer.desired:
                simulation.woke(now)
        return self.sizer.desired


class GpuroamPolicy:
    """gpuroam's controller in the simulation: the real plan() and block backoff."""

    heeds_notice = True  # the reconciler drains a replica at its notice and replaces it in the same pass

    def __init__(
        self, config: PolicyConfig, catalog: CachedCatalog, offers: frozenset[Pair], spot_offers: frozenset[Pair]
    ) -> None:
        self.config = config
        self.catalog = catalog
        self.offers = frozenset(p for p in offers if p[1] in config.spec.resources.gpus)
        self.spot_offers = frozenset(p for p in spot_offers if p[1] in config.spec.resources.gpus)
        self.demand = Demand.from_spec(config.spec)
        self.sizing = _Sizing(config, catalog)
        self.blocks: dict[Slot, Block] = {}
        self.provision_timeout_s = config.spec.placement.provision_timeout_s

    def on_pass(self, simulation: Simulation, now: float) -> bool:
        desired = self.sizing.desired(simulation, now)
        if desired == 0:  # asleep: drain everything, as the reconciler does
            live = simulation.live_replicas()
            for replica in live:
                simulation.drain(replica.id)
            return bool(live)
        if desired is not None and desired != self.demand.min_replicas:
            self.demand = Demand.from_spec(self.config.spec, replicas=desired)
        view = CapacityView(
            offers=self.offers, spot_offers=self.spot_offers, blocks=self.blocks, traffic=simulation.traffic(now)
        )
        decided = plan(self.catalog, self.demand, view, simulation.live_replicas(), now)
        for launch in decided.launches:
            simulation.launch(launch.region, launch.gpu, launch.reason, launch.capacity)
        for drain in decided.drains:
            simulation.drain(drain.replica_id)
        return not decided.empty

    def on_ready(self, replica: Replica) -> None:
        pass

    def on_notice(self, simulation: Simulation, replica: Replica, now: float) -> None:
        """A preemption notice: the reconciler blocks the slot as for any capacity loss."""
        self.on_failure(simulation, replica, now, lost=True)

    def on_failure(self, simulation: Simulation, replica: Replica, now: float, lost: bool) -> None:
        """A capacity failure or a lost replica: the reconciler blocks the slot, with backoff."""
        slot = (replica.region, replica.gpu, replica.capacity)
        p = self.config.spec.placement
        block = block_after_failure(
            self.blocks.get(slot), *slot[:2], now, p.block_ttl_s, p.block_backoff, p.block_max_s, "sim", slot[2]
        )
        self.blocks[slot] = block
        simulation.wake(block.until)
        simulation.wake(block.until + p.move_back_after_s)


@dataclass
class _Slot:
    replica: str | None = None
    tried: set[Pair] = field(default_factory=set)
    retry_at: float = float("-inf")
    rounds: int = 0


class SequentialPolicy:
    """SkyPilot/dstack: cheapest offer first, one at a time per replica; never moves back."""

    heeds_notice = False  # on demand only: it never gets one
    GAP_S = 30.0
    GAP_FACTOR = 1.6
    GAP_MAX_S = 150.0

    def __init__(self, config: PolicyConfig, catalog: CachedCatalog, offers: frozenset[Pair]) -> None:
        self.config = config
        spec = config.spec
        allowed = [p for p in offers if p[1] in spec.resources.gpus and spec.region_allowed(p[0])]
        # Cheapest first; equal prices in the catalog's region order (us-central1 first), as the
        # tools' own catalogs list them.
        count = spec.resources.gpu_count
        self.order = sorted(allowed, key=lambda p: (catalog.price(*p) * count, catalog.rank(p[0]), p[1]))
        self.slots = [_Slot() for _ in range(spec.replicas.min)]
        self.by_replica: dict[str, _Slot] = {}
        self.sizing = _Sizing(config, catalog)
        self.provision_timeout_s = spec.placement.provision_timeout_s

    def on_pass(self, simulation: Simulation, now: float) -> bool:
        desired = self.sizing.desired(simulation, now)
        acted = desired is not None and self._resize(simulation, desired)
        for slot in self.slots:
            if slot.replica is not None or now < slot.retry_at:
                continue
            pair = next((p for p in self.order if p not in slot.tried), None)
            if pair is None:  # every offer failed: wait, then walk again from the cheapest
                slot.tried.clear()
                slot.retry_at = now + min(self.GAP_MAX_S, self.GAP_S * self.GAP_FACTOR**slot.rounds)
                slot.rounds += 1
                simulation.wake(slot.retry_at)
                continue
            replica = simulation.launch(pair[0], pair[1], "sequential")
            slot.replica = replica.id
            self.by_replica[replica.id] = slot
            acted = True
        return acted

    def _resize(self, simulation: Simulation, desired: int) -> bool:
        """As many slots as the sizer wants; surplus slots go empty ones first, then starting
        replicas, then the newest ready ones. True when a replica was drained."""
        while len(self.slots) < desired:
            self.slots.append(_Slot())
        surplus = len(self.slots) - desired
        if surplus <= 0:
            return False
        live = {r.id: r for r in simulation.live_replicas()}

        def keep_last(slot: _Slot) -> tuple[int, float]:
            replica = live.get(slot.replica) if slot.replica else None
            if replica is None:
                return (0, 0.0)
            if replica.state is ReplicaState.PROVISIONING:
                return (1, -replica.created_at)
            return (2, -(replica.ready_at or 0.0))

        drained = False
        for slot in sorted(self.slots, key=keep_last)[:surplus]:
            self.slots.remove(slot)
            if slot.replica is not None:
                del self.by_replica[slot.replica]
                simulation.drain(slot.replica)
                drained = True
        return drained

    def on_ready(self, replica: Replica) -> None:
        self.by_replica[replica.id].rounds = 0

    def on_notice(self, simulation: Simulation, replica: Replica, now: float) -> None:
        pass

    def on_failure(self, simulation: Simulation, replica: Replica, now: float, lost: bool) -> None:
        slot = self.by_replica.pop(replica.id)
        slot.replica = None
        if lost:
            slot.tried.clear()
        else:
            slot.tried.add((replica.region, replica.gpu))


def make_policy(
    config: PolicyConfig, catalog: CachedCatalog, offers: frozenset[Pair], spot_offers: frozenset[Pair] = frozenset()
) -> CapacityPolicy:
    """The policy `config` names, over the world's on-demand `offers` and Spot `spot_offers`."""
    if config.kind == "sequential":
        return SequentialPolicy(config, catalog, offers)
    if config.kind == "spothedge":
        from gpuroam.sim.spothedge import SpotHedgePolicy  # it builds on this module

        return SpotHedgePolicy(config, catalog, offers, spot_offers)
    return GpuroamPolicy(config, catalog, offers, spot_offers)


def describe_policies(names: Iterable[str]) -> dict[str, dict[str, object]]:
    return {name: policy_config(name).describe() for name in names}
