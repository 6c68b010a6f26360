"""The control loop: one level-triggered, idempotent pass over desired and observed state.

Each pass reads everything afresh (store, provider, clock) and acts on the difference, so a
pass run twice does nothing new and a controller that was SIGKILLed anywhere simply runs the
next pass. Every launch and drain is written to the store before the provider is asked, so:
- a replica row whose launch never reached the provider is launched again (idempotent by id);
- a process the provider runs that the store does not want is an orphan and is terminated;
- a replica the store wants but the provider no longer has has failed: its pair is blocked.
"""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import Callable
from dataclasses import replace

from gpuroam.autoscale import Scale
from gpuroam.catalog import Catalog
from gpuroam.controller.scaling import demand_shares, scale_service
from gpuroam.controller.signals import ServiceSignals, Signals
from gpuroam.controller.store import Store
from gpuroam.placement import CapacityView, Demand, Drain, Launch, block_after_failure, plan
from gpuroam.providers.base import CapacityError, Observed, ObservedState, Provider, ProviderError
from gpuroam.records import Capacity, Event, EventKind, Replica, ReplicaState, ServiceRecord
from gpuroam.spec import ServiceSpec, parse_spec

log = logging.getLogger("gpuroam.controller")

ACTIVE_STATES = (ReplicaState.PROVISIONING, ReplicaState.READY, ReplicaState.DRAINING)
DRAIN_GRACE_S = 5.0  # a drained replica runs at least this long: the gateway takes it out of its set
DRAIN_MAX_S = 600.0  # and longer while the gateway says requests are at it, up to the gateway's upstream timeout
OBSERVE_GRACE_S = 15.0  # a just-launched replica may take this long to show up in observe()
UNREADY_GRACE_S = 10.0  # a ready replica failing its readiness probe this long (hung, cut off) is replaced


class Reconciler:
    """`signals` reads what the data plane sees of each service (the autoscaler's input); without it, or
    while it does not answer, services keep the size last decided."""

    def __init__(
        self,
        store: Store,
        provider: Provider,
        catalog: Catalog,
        clock: Callable[[], float] = time.time,
        signals: Signals | None = None,
    ) -> None:
        self.store = store
        self.provider = provider
        self.catalog = catalog
        self.clock = clock
        self.signals = signals
        self._specs: dict[tuple[str, int], ServiceSpec] = {}  # a cache: the store holds the specs
        self._store_problem: str | None = None  # logged once, not every pass

    def reconcile(self) -> None:
        """One pass over every service; none while the store's file was deleted or replaced under it (a store
        that no longer knows the running replicas would have them terminated as orphans)."""
        problem = self.store.replaced()
        if problem is not None:
            if problem != self._store_problem:
                log.error(problem)
            self._store_problem = problem
            return
        self._store_problem = None
        now = self.clock()
        observed = {o.replica_id: o for o in self.provider.observe()}
        current = self.store.list_replicas(states=ACTIVE_STATES)
        self._terminate_orphans(observed, current, now)
        by_service: dict[str, list[Replica]] = {}
        for replica in current:
            by_service.setdefault(replica.service, []).append(replica)
        capacity = self._capacity()
        seen = self.signals() if self.signals is not None else None
        for record in self.store.list_services(include_deleted=True):
            signals = seen.get(record.name) if seen is not None else None
            try:
                if self._reconcile_service(record, by_service.get(record.name, []), observed, capacity, signals, now):
                    capacity = self._capacity()  # free slots and blocks changed
            except Exception:  # one broken service must not stop the others
                log.exception("reconciling a service failed", extra={"service": record.name})

    def _reconcile_service(
        self,
        record: ServiceRecord,
        replicas: list[Replica],
        observed: dict[str, Observed],
        capacity: CapacityView,
        signals: ServiceSignals | None,
        now: float,
    ) -> bool:
        """Sync, then tear down, or scale and place; True when capacity may have changed."""
        spec = self._spec(record)
        changed = [self._sync(replica, observed.get(replica.id), spec, signals, now) for replica in replicas]
        if any(changed):
            replicas = self.store.list_replicas(service=record.name, states=ACTIVE_STATES)
            capacity = self._capacity()  # a failure just blocked a pair: never relaunch into it this pass
            record = self.store.get_service(record.name) or record  # a loss just recorded labels the launches
        if record.deleted:
            self._tear_down(record, replicas, now)
            return True
        scale = self._scale(spec, replicas, signals, now)
        if scale.desired == 0:
            return self._sleep(replicas, now)
        shares = demand_shares(signals, self.catalog.regions)
        capacity = replace(capacity, traffic=shares) if shares else capacity
        return self._place(record, spec, capacity, replicas, now, scale)

    def _scale(self, spec: ServiceSpec, replicas: list[Replica], signals: ServiceSignals | None, now: float) -> Scale:
        """What the service wants now (the autoscaler's state, kept in the store)."""
        scaled = scale_service(self.store, self.catalog, spec, replicas, signals, now)
        if scaled.event is not None:
            self._event(now, scaled.event, f"{spec.name}: {scaled.scale.reason}", None, service=spec.name)
        return scaled.scale

    def _sleep(self, replicas: list[Replica], now: float) -> bool:
        """Asleep: every live replica drains (each finishes what it holds); the service and its endpoint stay."""
        live = [r for r in replicas if r.state.live]
        for replica in live:
            self._drain(Drain(replica.id, "asleep"), now)
        return bool(live)

    def _spec(self, record: ServiceRecord) -> ServiceSpec:
        """Parsed once per generation: the stored spec only changes with `up`."""
        key = (record.name, record.generation)
        if key not in self._specs:
            self._specs[key] = parse_spec(record.spec, source=f"service {record.name}")
        return self._specs[key]

    # --- observed -> store -------------------------------------------------------------------

    def _terminate_orphans(self, observed: dict[str, Observed], current: list[Replica], now: float) -> None:
        known = {r.id for r in current}
        for replica_id, seen in observed.items():
            if replica_id not in known:
                self.provider.terminate(replica_id)
                self._event(now, EventKind.ORPHAN, f"terminated {replica_id}: running but not wanted", seen)

    def _sync(
        self, replica: Replica, seen: Observed | None, spec: ServiceSpec, signals: ServiceSignals | None, now: float
    ) -> bool:
        """Bring one stored replica up to date with what the provider sees; True if it changed."""
        if replica.state is ReplicaState.DRAINING:
            if seen is not None and _still_draining(replica, signals, now):
                return False
            self._finish_drain(replica, now)
        elif replica.state is ReplicaState.PROVISIONING:
            return self._sync_starting(replica, seen, spec, now)
        elif replica.state is ReplicaState.READY and seen is not None and seen.reclaim_at is not None:
            self._preempt(replica, seen.reclaim_at, spec, now)
        elif replica.state is ReplicaState.READY and (seen is None or seen.state is ObservedState.FAILED):
            detail = seen.detail if seen else "no longer running"
            self._fail(replica, now, f"lost: {detail}", spec, capacity=True)
        elif replica.state is ReplicaState.READY and seen is not None and seen.state is not ObservedState.READY:
            return self._sync_unready(replica, spec, now)
        elif replica.unready_since is not None:
            self.store.update_replica(replica.id, now, unready_since=None)  # answering again
            return False
        else:
            return False
        return True

    def _sync_unready(self, replica: Replica, spec: ServiceSpec, now: float) -> bool:
        """Running but not answering (hung, or its region cut off): the gateway already routes around
        it; after a grace, it is replaced where capacity answers."""
        since = replica.unready_since
        if since is None:
            self.store.update_replica(replica.id, now, unready_since=now)
            return False
        if now - since < UNREADY_GRACE_S:
            return False
        self._fail(
            replica, now, f"lost: not answering its readiness probe for {now - since:.0f} s", spec, capacity=True
        )
        return True

    def _preempt(self, replica: Replica, reclaim_at: float, spec: ServiceSpec, now: float) -> None:
        """A preemption notice: out of the ready set now (the gateway's next poll stops routing new
        requests to it; those it holds finish, or are retried elsewhere if it goes first), its slot
        blocked like any capacity loss, and its replacement placed in this same pass, not after the loss."""
        draining = self.store.update_replica(replica.id, now, state=ReplicaState.DRAINING, reason="preempted")
        self.provider.drain(replica.id)
        self.store.record_loss(replica.service, now)
        left = max(0.0, reclaim_at - now)
        self._event(
            now, EventKind.PREEMPTED, f"{replica.id} preempted: reclaimed in {left:.0f} s; replacing it", draining
        )
        self._block(replica, "preempted", spec, now)

    def _sync_starting(self, replica: Replica, seen: Observed | None, spec: ServiceSpec, now: float) -> bool:
        if seen is not None and seen.reclaim_at is not None:
            self._fail(replica, now, "preempted while starting", spec, capacity=True, kind=EventKind.PREEMPTED)
            return True
        if seen is None and not replica.handle:
            self._launch_recorded(replica, spec, now)  # the intent was stored, the launch never happened
        elif seen is None and now - replica.created_at > OBSERVE_GRACE_S:
            self._fail(replica, now, "exited while starting", spec, capacity=False)
        elif seen is None:
            return False
        elif seen.state is ObservedState.READY:
            ready = self.store.update_replica(replica.id, now, state=ReplicaState.READY, ready_at=now, url=seen.url)
            self._event(now, EventKind.READY, f"{replica.id} ready at {seen.url}", ready)
        elif seen.state is ObservedState.FAILED:
            why = seen.detail or "failed while starting"
            kind = EventKind.STOCKOUT if seen.capacity_failure else EventKind.FAILED
            self._fail(replica, now, why, spec, capacity=seen.capacity_failure, kind=kind)
        elif now - replica.created_at > spec.placement.provision_timeout_s:
            why = f"not ready after {spec.placement.provision_timeout_s:g} s"
            self._fail(replica, now, why, spec, capacity=True, kind=EventKind.STOCKOUT)
        else:
            return False
        return True

    def _fail(
        self,
        replica: Replica,
        now: float,
        why: str,
        spec: ServiceSpec,
        capacity: bool,
        kind: EventKind = EventKind.FAILED,
    ) -> None:
        """`kind` STOCKOUT when the provider says (or the clock shows) there was no capacity for it."""
        self.provider.terminate(replica.id)
        failed = self.store.update_replica(replica.id, now, state=ReplicaState.FAILED)
        self.store.record_loss(replica.service, now)
        self._event(now, kind, f"{replica.id} failed: {why}", failed)
        if capacity:
            self._block(replica, why, spec, now)

    def _block(self, replica: Replica, why: str, spec: ServiceSpec, now: float) -> None:
        """Block the replica's slot (region, GPU, Spot or on-demand) with exponential backoff: each
        consecutive capacity failure doubles the block, up to a cap."""
        placement = spec.placement
        region, gpu, capacity = replica.region, replica.gpu, replica.capacity
        block = block_after_failure(
            self.store.get_block(region, gpu, capacity),
            region,
            gpu,
            now,
            placement.block_ttl_s,
            placement.block_backoff,
            placement.block_max_s,
            why,
            capacity,
        )
        self.store.put_block(block)
        what = f"{gpu} (Spot)" if capacity is Capacity.SPOT else gpu
        self._event(
            now,
            EventKind.BLOCKED,
            f"{what} in {region} blocked for {block.until - now:g} s ({why})",
            None,
            service=replica.service,
            region=region,
            gpu=gpu,
        )

    def _finish_drain(self, replica: Replica, now: float) -> None:
        self.provider.terminate(replica.id)
        done = self.store.update_replica(replica.id, now, state=ReplicaState.TERMINATED)
        self._event(now, EventKind.DRAINED, f"{replica.id} drained ({replica.reason})", done)

    # --- desired -> actions --------------------------------------------------------------------

    def _place(
        self,
        record: ServiceRecord,
        spec: ServiceSpec,
        capacity: CapacityView,
        replicas: list[Replica],
        now: float,
        scale: Scale,
    ) -> bool:
        """Plan and act for one service; True when it launched or drained anything. Launches soon after
        a loss replace it (a failover) unless the autoscaler changed the size since (a scale-out, a wake)."""
        demand = Demand.from_spec(spec, record.pinned_regions, replicas=scale.desired)
        decided = plan(self.catalog, demand, capacity, replicas, now)
        loss = record.last_loss_at
        lost = loss is not None and now - loss < spec.placement.provision_timeout_s and scale.changed_at <= loss
        for launch in decided.launches:
            self._launch(record, spec, launch, now, failover=lost)
        for drain in decided.drains:
            self._drain(drain, now, _recovers(drain, demand, replicas))
        return not decided.empty

    def _capacity(self) -> CapacityView:
        """The provider's regions on demand and as Spot (Spot where the catalog has its price), their
        free slots where known, and every block."""
        on_demand, spot = self.provider.regions(), self.provider.spot_regions()
        known = self.catalog.offers
        offers = frozenset(
            (region, gpu) for region, gpus in on_demand.items() for gpu in gpus if (region, gpu) in known
        )
        spot_offers = frozenset(
            (region, gpu)
            for region, gpus in spot.items()
            for gpu in gpus
            if (region, gpu) in known and known[(region, gpu)].spot_price is not None
        )
        free = {
            (region, gpu, capacity): n
            for capacity, regions in ((Capacity.ON_DEMAND, on_demand), (Capacity.SPOT, spot))
            for region, gpus in regions.items()
            for gpu, n in gpus.items()
            if n is not None
        }
        blocks = {b.slot: b for b in self.store.list_blocks()}
        return CapacityView(offers=offers, spot_offers=spot_offers, blocks=blocks, free_slots=free)

    def _launch(self, record: ServiceRecord, spec: ServiceSpec, launch: Launch, now: float, failover: bool) -> None:
        """Record the intent, then launch. A launch soon after a loss is a failover: replicas
        launched so are the ones drained, as `recovered`, when the preferred placement is back."""
        reason = "failover" if failover and launch.reason != "move-back" else launch.reason
        replica = Replica(
            id=f"{record.name}-{launch.region}-{launch.gpu.removeprefix('nvidia-')}-{secrets.token_hex(3)}",
            service=record.name,
            region=launch.region,
            gpu=launch.gpu,
            state=ReplicaState.PROVISIONING,
            created_at=now,
            updated_at=now,
            reason=reason,
            capacity=launch.capacity,
        )
        self.store.add_replica(replica)  # the intent, before the act
        kind = EventKind.FAILOVER if reason == "failover" else EventKind.PLACED
        on = f"{launch.gpu} (Spot)" if launch.capacity is Capacity.SPOT else launch.gpu
        self._event(now, kind, f"launching {replica.id} on {on} in {launch.region} ({launch.reason})", replica)
        self._launch_recorded(replica, spec, now)

    def _launch_recorded(self, replica: Replica, spec: ServiceSpec, now: float) -> None:
        try:
            launched = self.provider.launch(replica, spec)
        except CapacityError as error:
            self.store.update_replica(replica.id, now, state=ReplicaState.FAILED)
            self._event(now, EventKind.STOCKOUT, str(error), replica)
            self._block(replica, error.reason, spec, now)
            return
        except ProviderError as error:
            self.store.update_replica(replica.id, now, state=ReplicaState.FAILED)
            self._event(now, EventKind.FAILED, f"launch of {replica.id} failed: {error}", replica)
            return
        self.store.update_replica(replica.id, now, handle=dict(launched.details), url=launched.url)

    def _drain(self, drain: Drain, now: float, recovers: bool = False) -> None:
        replica = self.store.update_replica(drain.replica_id, now, state=ReplicaState.DRAINING, reason=drain.reason)
        self.provider.drain(replica.id)
        if recovers:
            self._event(
                now, EventKind.RECOVERED, f"{replica.id} replaced by the preferred placement; draining", replica
            )
        else:
            self._event(now, EventKind.DRAINED, f"draining {replica.id} ({drain.reason})", replica)

    def _tear_down(self, record: ServiceRecord, replicas: list[Replica], now: float) -> None:
        """Drain and remove a service marked deleted; an `up` of it acknowledged since `record` was read
        keeps it (the store is read again, and the removal is a compare-and-set on the deleted mark)."""
        current = self.store.get_service(record.name)
        if current is None or not current.deleted:
            return
        for replica in replicas:
            if replica.state.live:
                self._drain(Drain(replica.id, "down"), now)
        gone = not any(r.state.live or r.state is ReplicaState.DRAINING for r in replicas)
        if gone and self.store.remove_service(record.name):
            self._event(now, EventKind.DRAINED, f"service {record.name} removed", None, service=record.name)

    def _event(
        self,
        now: float,
        kind: EventKind,
        message: str,
        about: Replica | Observed | None,
        *,
        service: str | None = None,
        region: str | None = None,
        gpu: str | None = None,
    ) -> None:
        """Record an event about a replica (its service, region and GPU), or about what the keywords name."""
        replica = None
        if about is not None:
            replica = about.id if isinstance(about, Replica) else about.replica_id
            service, region, gpu = service or about.service, region or about.region, gpu or about.gpu
        event = Event(ts=now, kind=kind, message=message, service=service, region=region, gpu=gpu, replica=replica)
        recorded = self.store.add_event(event)
        labels = {"service": service, "region": region, "gpu": gpu, "replica": replica}
        log.info(
            message, extra={"event": kind.value, **{k: v for k, v in labels.items() if v}, "event_id": recorded.id}
        )


def _still_draining(replica: Replica, signals: ServiceSignals | None, now: float) -> bool:
    """A draining replica finishes what it holds: it stops once the grace is over and the gateway says
    no request is at it (without the gateway's word, after the grace), or after DRAIN_MAX_S whatever."""
    draining_s = now - replica.updated_at
    if draining_s < DRAIN_GRACE_S:
        return True
    return signals is not None and signals.holds(replica.id) and draining_s < DRAIN_MAX_S


def _recovers(drain: Drain, demand: Demand, replicas: list[Replica]) -> bool:
    """A drain is a recovery when a ready replica on a more preferred GPU (or Spot of the same GPU)
    now serves instead of a replica moved back or launched for a failover; a raced or surplus
    replica drained during a failover is not, nor is one a scale-in no longer needs."""
    drained = next((r for r in replicas if r.id == drain.replica_id), None)
    if drained is None or not (drain.reason == "moved" or (drain.reason == "surplus" and drained.reason == "failover")):
        return False  # a surplus replica that was not failover capacity is a scale-in, not a recovery
    worst = demand.rank(drained.gpu, drained.capacity)
    return any(
        r.state is ReplicaState.READY and r.id != drained.id and demand.rank(r.gpu, r.capacity) < worst
        for r in replicas
    )
