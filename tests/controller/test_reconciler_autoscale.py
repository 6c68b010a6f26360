"""The reconciler follows the autoscaler: out where the demand is, in after the quiet, to sleep and back,
against an in-memory provider, a real store and signals given by hand (the gateway's, in production)."""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass, field

import pytest
from fakes import FakeProvider
from test_reconciler import SITES, Clock, live, run

from gpuroam.catalog import load_catalog
from gpuroam.controller.reconciler import DRAIN_MAX_S, Reconciler
from gpuroam.controller.scaling import demand_shares
from gpuroam.controller.signals import ServiceSignals, signals_from_report
from gpuroam.controller.store import Store
from gpuroam.records import EventKind, ReplicaState
from gpuroam.spec import load_spec, parse_spec, spec_to_dict

NAME = "stable-diffusion"


@dataclass
class HandSignals:
    """What the gateway would report; `answering` False is a gateway that does not answer."""

    by_service: dict[str, ServiceSignals] = field(default_factory=dict)
    answering: bool = True

    def __call__(self) -> Mapping[str, ServiceSignals] | None:
        return dict(self.by_service) if self.answering else None

    def load(self, in_flight: float = 0, held: int = 0, at: float | None = None, **demand: float) -> None:
        regions = {region.replace("_", "-"): rps for region, rps in demand.items()}
        self.by_service[NAME] = ServiceSignals(in_flight, held, at, regions)


def scaled_spec(**autoscale: float) -> dict:
    spec = spec_to_dict(load_spec("examples/stable-diffusion.yaml"))
    spec["regions"]["min_regions"] = 1
    spec["replicas"].update(min=autoscale.pop("min", 1), max=4)
    spec["autoscale"] = {"target_in_flight": 2, "scale_up_after_s": 3, "scale_down_after_s": 30, **autoscale}
    return spec_to_dict(parse_spec(spec))


@pytest.fixture
def world(store: Store):  # type: ignore[no-untyped-def]
    provider = FakeProvider(copy.deepcopy(SITES))
    clock, signals = Clock(), HandSignals()
    reconciler = Reconciler(store, provider, load_catalog(), clock, signals=signals)
    return store, provider, clock, reconciler, signals


def ready(store: Store) -> list[tuple[str, str]]:
    return sorted((r.region, r.gpu) for r in live(store, ReplicaState.READY))


def kinds(store: Store) -> list[EventKind]:
    return [e.kind for e in store.list_events()]


def test_a_sustained_queue_scales_out_towards_the_demand_and_a_quiet_period_scales_back_in(world) -> None:  # type: ignore[no-untyped-def]
    store, provider, clock, reconciler, signals = world
    store.put_service(NAME, scaled_spec(), clock.now)
    signals.load(in_flight=0)
    run(reconciler, provider, clock, passes=12)
    assert ready(store) == [("us-central1", "nvidia-l4")], "with no demand known: the cheapest preferred pair"
    signals.load(in_flight=5, at=clock.now, europe_west4=3.0)  # L4 speed 2.2 x target 2: needs 2 replicas
    run(reconciler, provider, clock, passes=2)
    assert store.get_scale(NAME).desired == 1, "not before the load has lasted scale_up_after_s"  # type: ignore[union-attr]
    run(reconciler, provider, clock, passes=12)
    assert store.get_scale(NAME).desired == 2  # type: ignore[union-attr]
    assert ("europe-west4", "nvidia-l4") in ready(store), "the new replica goes where the demand comes from"
    assert EventKind.SCALED_UP in kinds(store)
    signals.load(in_flight=0, at=clock.now)
    run(reconciler, provider, clock, passes=40)
    assert store.get_scale(NAME).desired == 1 and len(ready(store)) == 1  # type: ignore[union-attr]
    assert EventKind.SCALED_DOWN in kinds(store)


def test_unknown_load_is_not_zero_load(world) -> None:  # type: ignore[no-untyped-def]
    store, provider, clock, reconciler, signals = world
    store.put_service(NAME, scaled_spec(scale_down_after_s=5), clock.now)
    signals.load(in_flight=9, at=clock.now)
    run(reconciler, provider, clock, passes=12)
    assert store.get_scale(NAME).desired == 3  # type: ignore[union-attr]
    signals.answering = False  # the gateway is being restarted
    run(reconciler, provider, clock, passes=30)
    assert store.get_scale(NAME).desired == 3 and len(ready(store)) == 3  # type: ignore[union-attr]


def test_a_min_zero_service_sleeps_when_idle_and_wakes_where_the_first_request_comes_from(world) -> None:  # type: ignore[no-untyped-def]
    store, provider, clock, reconciler, signals = world
    store.put_service(NAME, scaled_spec(min=0, sleep_after_s=20), clock.now)
    signals.load()
    run(reconciler, provider, clock, passes=5)
    assert provider.launches == [] and store.get_scale(NAME).desired == 0, "asleep until the first request"  # type: ignore[union-attr]
    signals.load(held=1, at=clock.now, europe_west1=1.0)
    run(reconciler, provider, clock, passes=3)
    assert ready(store) == [("europe-west4", "nvidia-l4")], "woke on the preferred GPU nearest the request"
    assert EventKind.WOKE in kinds(store)
    signals.load(at=clock.now)
    run(reconciler, provider, clock, passes=15)
    assert ready(store), "not idle for sleep_after_s yet"
    run(reconciler, provider, clock, passes=15)
    assert ready(store) == [] and store.get_scale(NAME).desired == 0  # type: ignore[union-attr]
    assert EventKind.SLEPT in kinds(store) and store.get_service(NAME) is not None, "asleep, not gone"
    run(reconciler, provider, clock, passes=10)
    assert provider.running == {}, "every replica drained and terminated"


def test_client_regions_the_catalog_does_not_know_are_left_out_of_placement() -> None:
    seen = ServiceSignals(demand={"europe-west1": 3.0, "unknown": 5.0, "<script>": 2.0, "us-east1": 1.0})
    shares = demand_shares(seen, load_catalog().regions)
    assert shares == {"europe-west1": 0.75, "us-east1": 0.25}
    assert demand_shares(ServiceSignals(demand={"mars": 1.0}), load_catalog().regions) == {}


def test_a_request_that_arrives_before_the_first_pass_wakes_the_service_and_says_so(world) -> None:  # type: ignore[no-untyped-def]
    store, provider, clock, reconciler, signals = world
    store.put_service(NAME, scaled_spec(min=0), clock.now)
    signals.load(held=1, at=clock.now)  # held at the gateway before the controller ever looked
    run(reconciler, provider, clock, passes=3)
    assert store.get_scale(NAME).desired == 1 and ready(store)  # type: ignore[union-attr]
    assert EventKind.WOKE in kinds(store)


def draining(store: Store) -> list[str]:
    return [r.id for r in store.list_replicas(service=NAME, states=(ReplicaState.DRAINING,))]


def busy_everywhere(store: Store, clock: Clock) -> ServiceSignals:
    """One request in flight, and the gateway counting one at every ready replica (a long generation)."""
    at = {r.id: 1 for r in live(store, ReplicaState.READY)}
    return ServiceSignals(in_flight=1, last_request_at=clock.now, at_replicas=at)


def test_a_replica_drained_by_a_scale_in_runs_until_the_gateway_says_its_requests_are_answered(world) -> None:  # type: ignore[no-untyped-def]
    store, provider, clock, reconciler, signals = world
    store.put_service(NAME, scaled_spec(), clock.now)
    signals.load(in_flight=5, at=clock.now)
    run(reconciler, provider, clock, passes=12)
    assert len(ready(store)) == 2
    signals.by_service[NAME] = busy_everywhere(store, clock)  # one replica carries the load: scale in
    run(reconciler, provider, clock, passes=60)
    assert len(draining(store)) == 1 and len(ready(store)) == 1
    slow = draining(store)[0]
    assert slow in provider.running and slow not in provider.terminated, "it finishes what it holds"
    signals.by_service[NAME] = ServiceSignals(in_flight=1, last_request_at=clock.now, at_replicas={slow: 0})
    run(reconciler, provider, clock, passes=1)
    assert slow in provider.terminated and store.get_scale(NAME).desired == 1  # type: ignore[union-attr]


def test_a_drain_ends_after_its_bound_even_if_the_gateway_still_counts_a_request(world) -> None:  # type: ignore[no-untyped-def]
    store, provider, clock, reconciler, signals = world
    store.put_service(NAME, scaled_spec(), clock.now)
    signals.load(in_flight=5, at=clock.now)
    run(reconciler, provider, clock, passes=12)
    signals.by_service[NAME] = busy_everywhere(store, clock)
    run(reconciler, provider, clock, passes=60)
    stuck = draining(store)[0]
    run(reconciler, provider, clock, passes=2, step=DRAIN_MAX_S / 2)
    assert stuck not in provider.terminated, "held while the gateway counts a request at it"
    run(reconciler, provider, clock, passes=1)
    assert stuck in provider.terminated, "a request the gateway never saw answered does not hold a GPU for ever"


def test_the_gateways_report_gives_the_requests_at_each_replica_draining_ones_included() -> None:
    report = {
        "services": [
            {
                "name": NAME,
                "in_flight": 3,
                "held": 0,
                "backends": [{"replica": "a", "outstanding": 2}, {"replica": "b", "outstanding": 0}],
                "retiring": {"c": 1},
            },
            {"name": "broken", "in_flight": "many"},
        ]
    }
    seen = signals_from_report(report)
    assert set(seen) == {NAME}, "a malformed entry is left out: unknown, not idle"
    assert seen[NAME].at_replicas == {"a": 2, "b": 0, "c": 1}
    assert seen[NAME].holds("a") and seen[NAME].holds("c") and not seen[NAME].holds("b")
    assert not seen[NAME].holds("gone")


def test_a_scale_out_soon_after_a_loss_is_no_failover(world) -> None:  # type: ignore[no-untyped-def]
    store, provider, clock, reconciler, signals = world
    store.put_service(NAME, scaled_spec(), clock.now)
    signals.load(in_flight=1, at=clock.now)
    run(reconciler, provider, clock, passes=8)
    provider.take_away(region="us-central1")  # the one replica is lost
    run(reconciler, provider, clock, passes=4)
    replacement = live(store, ReplicaState.READY)
    assert [r.reason for r in replacement] == ["failover"], "the loss is replaced: a failover"
    signals.load(in_flight=9, at=clock.now)  # then a burst
    run(reconciler, provider, clock, passes=8)
    added = [r for r in live(store) if r.id not in {x.id for x in replacement}]
    assert added and all(r.reason != "failover" for r in added), "capacity the autoscaler asked for"
