"""SkyServe's SpotHedge in the simulation: not gpuroam code, but SkyServe's Spot policy as its paper
(EuroSys '25, "SkyServe: Serving AI Models across Regions and Clouds with Spot Instances", arXiv
2411.01438) and its code (skypilot `sky/serve`: `spot_placer.py`, `autoscalers.py`,
`replica_managers.py`, `constants.py`) describe it:

- **Spread and avoid** (`DynamicFallbackSpotPlacer`, `spot_placer: dynamic_fallback`): every
  (region, GPU) place with a Spot price is *active* until a Spot replica there is preempted or
  fails to launch (then *preempted*); a launch there makes it active again; with fewer than two
  active places left, all are active again. A new Spot replica goes to the cheapest active place
  not already in use, else the cheapest active place. The placer takes one resource set, so one GPU
  type: the service's first.
- **On-demand fallback** (`FallbackRequestRateAutoscaler`): `target + overprovision - base` Spot
  replicas are kept launched; on-demand ones number `base` (`base_ondemand_fallback_replicas`, the
  spec's on_demand_base) plus, with `dynamic_ondemand_fallback`, the Spot replicas short of ready,
  at most `target` in all.
  So on-demand replicas are launched while Spot is short and drained (starting ones first, then the
  newest) as soon as Spot is ready again. On-demand replicas go to the cheapest region first, the
  next on failure, as SkyPilot's provisioner fails over; after a full round, the next starts after
  SkyPilot's retry gap.
- **Timing** (`constants.py`): a decision every 20 s; replicas probed every 10 s. SkyServe does not
  act on the preemption notice: it finds a preempted replica when a probe fails and the cloud
  reports the cluster gone, so here it learns of any lost replica at the first 10 s probe after it
  is gone, and replaces it at the next decision. Until then its load balancer keeps the replica in
  its set (a failed request is retried on another one: `retried` counts those in flight).

The size is fixed at replicas.min (SkyServe's request-rate target is not modelled here: the Spot
study compares fixed-size services).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TYPE_CHECKING

from gpuroam.placement import ON_DEMAND, SPOT, Pair
from gpuroam.records import Capacity, Replica, ReplicaState
from gpuroam.sim.policies import CachedCatalog, PolicyConfig, SequentialPolicy

if TYPE_CHECKING:
    from gpuroam.sim.simulation import Simulation

DECIDE_S = 20.0  # SkyServe's autoscaler decision interval
PROBE_S = 10.0  # SkyServe's endpoint probe interval

_Placer = Callable[[list[Replica]], Pair | None]  # where the next replica goes, given those there are


class SpotHedgePolicy:
    """SpotHedge: Spot spread over places that did not preempt recently, on-demand while Spot is short."""

    heeds_notice = False

    def __init__(
        self, config: PolicyConfig, catalog: CachedCatalog, offers: frozenset[Pair], spot_offers: frozenset[Pair]
    ) -> None:
        spec = config.spec
        if spec.autoscale is not None:
            raise ValueError(f"policy {config.name!r}: spothedge keeps a fixed size (replicas.min)")
        gpu = spec.resources.gpus[0]
        self.target = spec.replicas.min
        self.base = spec.resources.on_demand_base
        self.spot_target = max(0, self.target + config.overprovision - self.base)
        self.provision_timeout_s = spec.placement.provision_timeout_s

        def allowed(pair: Pair) -> bool:
            return pair[1] == gpu and spec.region_allowed(pair[0])

        # Cheapest first; equal prices in the catalog's region order, as SkyPilot's catalogs list them.
        self.places = sorted(filter(allowed, spot_offers), key=lambda p: (catalog.spot_price(*p), catalog.rank(p[0])))
        self.active = dict.fromkeys(self.places, True)
        self.on_demand_order = sorted(filter(allowed, offers), key=lambda p: (catalog.price(*p), catalog.rank(p[0])))
        self.tried: set[Pair] = set()  # on-demand places failed in this round of the walk
        self.retry_at = -math.inf
        self.rounds = 0
        self.unseen: dict[str, tuple[Replica, float]] = {}  # gone, not yet probed: id -> (replica, when it learns)

    # --- the decision -------------------------------------------------------------------------

    def on_pass(self, simulation: Simulation, now: float) -> bool:
        for replica_id, (replica, at) in list(self.unseen.items()):
            if now >= at:
                del self.unseen[replica_id]
                self._learnt_loss(replica)
        tick = math.ceil(now / DECIDE_S) * DECIDE_S
        if tick > now:  # between decisions: the next one will see what changed
            simulation.wake(tick)
            return False
        believed = simulation.live_replicas() + [replica for replica, _ in self.unseen.values()]
        spot = [r for r in believed if r.capacity is SPOT]
        on_demand = [r for r in believed if r.capacity is ON_DEMAND]
        ready_spot = sum(r.state is ReplicaState.READY for r in spot)
        acted = self._keep(simulation, spot, self.spot_target, self._spot_place, SPOT)
        # The dynamic on-demand fallback, never above the replicas asked for (none for overprovisioned ones).
        wanted = min(self.base + max(0, self.spot_target - ready_spot), self.target)
        acted |= self._keep(simulation, on_demand, wanted, lambda _: self._on_demand_place(simulation, now), ON_DEMAND)
        return acted

    def _keep(
        self, simulation: Simulation, have: list[Replica], wanted: int, place: _Placer, capacity: Capacity
    ) -> bool:
        """Launch up to `wanted` (each where `place` says), or drain the surplus: starting ones
        first, then the newest (SkyServe's scale-down order); none the controller thinks alive but is gone."""
        acted = False
        for _ in range(wanted - len(have)):
            chosen = place(have)
            if chosen is None:
                break
            have = [*have, simulation.launch(chosen[0], chosen[1], "spothedge", capacity)]
            acted = True
        surplus = [r for r in have if r.id not in self.unseen]
        surplus.sort(key=lambda r: (r.state is ReplicaState.READY, -r.created_at, r.id))
        for replica in surplus[: max(0, len(have) - wanted)]:
            simulation.drain(replica.id)
            acted = True
        return acted

    def _spot_place(self, spot: list[Replica]) -> Pair | None:
        """The cheapest active place not in use, else the cheapest active one."""
        used = {(r.region, r.gpu) for r in spot}
        active = [p for p in self.places if self.active[p]]
        return next((p for p in active if p not in used), active[0] if active else None)

    def _on_demand_place(self, simulation: Simulation, now: float) -> Pair | None:
        """The cheapest on-demand place not failed in this round; after a whole round, wait SkyPilot's gap."""
        if now < self.retry_at:
            return None
        chosen = next((p for p in self.on_demand_order if p not in self.tried), None)
        if chosen is None and self.on_demand_order:
            self.tried.clear()
            gap = SequentialPolicy.GAP_S * SequentialPolicy.GAP_FACTOR**self.rounds
            self.retry_at = now + min(SequentialPolicy.GAP_MAX_S, gap)
            self.rounds += 1
            simulation.wake(self.retry_at)
        return chosen

    # --- what it learns -----------------------------------------------------------------------

    def _set_preempted(self, place: Pair) -> None:
        if place in self.active:
            self.active[place] = False
            if sum(self.active.values()) < 2:  # never fewer than two active places
                self.active = dict.fromkeys(self.places, True)

    def _learnt_loss(self, replica: Replica) -> None:
        if replica.capacity is SPOT:
            self._set_preempted((replica.region, replica.gpu))

    def on_ready(self, replica: Replica) -> None:
        place = (replica.region, replica.gpu)
        if replica.capacity is SPOT:
            self.active[place] = True
        else:
            self.tried.clear()
            self.rounds = 0

    def on_failure(self, simulation: Simulation, replica: Replica, now: float, lost: bool) -> None:
        """A failed launch is known when it returns; a lost replica at the next probe."""
        if lost:
            at = math.floor(now / PROBE_S) * PROBE_S + PROBE_S
            self.unseen[replica.id] = (replica, at)
            simulation.wake(at)
        elif replica.capacity is SPOT:
            self._set_preempted((replica.region, replica.gpu))
        else:
            self.tried.add((replica.region, replica.gpu))

    def on_notice(self, simulation: Simulation, replica: Replica, now: float) -> None:
        pass  # never told: it does not heed notices
