"""The reconcile loop against an in-memory provider and a real store (SQLite and PostgreSQL)."""

from __future__ import annotations

import copy
from dataclasses import replace

import pytest
from fakes import FakeProvider

from gpuroam.catalog import load_catalog
from gpuroam.controller.reconciler import DRAIN_GRACE_S, UNREADY_GRACE_S, Reconciler
from gpuroam.controller.store import Store
from gpuroam.records import EventKind, Replica, ReplicaState
from gpuroam.spec import load_spec, spec_to_dict

SITES = {
    "us-central1": {"nvidia-l4": 1, "nvidia-tesla-t4": 2},
    "europe-west4": {"nvidia-l4": 1, "nvidia-tesla-t4": 1},
    "asia-southeast1": {"nvidia-tesla-t4": 1, "nvidia-tesla-a100": 1},
}


class Clock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def world(store: Store):  # type: ignore[no-untyped-def]
    provider = FakeProvider(copy.deepcopy(SITES))
    clock = Clock()
    reconciler = Reconciler(store, provider, load_catalog(), clock)
    spec = spec_to_dict(load_spec("examples/stable-diffusion.yaml"))
    store.put_service("stable-diffusion", spec, clock.now)
    return store, provider, clock, reconciler


def live(store: Store, state: ReplicaState | None = None) -> list[Replica]:
    return [r for r in store.list_replicas() if r.state.live and (state is None or r.state is state)]


def placement(store: Store) -> set[tuple[str, str]]:
    return {(r.region, r.gpu) for r in live(store, ReplicaState.READY)}


def run(reconciler: Reconciler, provider: FakeProvider, clock: Clock, passes: int = 3, step: float = 1.0) -> None:
    for _ in range(passes):
        reconciler.reconcile()
        provider.make_ready()
        clock.now += step


def test_up_places_ready_replicas_in_two_regions_on_the_preferred_gpu(world) -> None:  # type: ignore[no-untyped-def]
    store, provider, clock, reconciler = world
    run(reconciler, provider, clock)
    assert placement(store) == {("us-central1", "nvidia-l4"), ("europe-west4", "nvidia-l4")}
    kinds = [e.kind for e in store.list_events()]
    assert EventKind.PLACED in kinds and EventKind.READY in kinds


def test_a_settled_pass_changes_nothing(world) -> None:  # type: ignore[no-untyped-def]
    store, provider, clock, reconciler = world
    run(reconciler, provider, clock, passes=10)  # past the drain grace of the raced extra
    replicas, events = store.list_replicas(), store.list_events()
    run(reconciler, provider, clock, passes=5)
    assert store.list_replicas() == replicas and store.list_events() == events
    assert len(provider.launches) == 3, "two wanted regions and one raced candidate"
    assert len(provider.running) == 2


def test_losing_the_preferred_gpu_fails_over_then_recovers_make_before_break(world) -> None:  # type: ignore[no-untyped-def]
    store, provider, clock, reconciler = world
    run(reconciler, provider, clock)
    provider.take_away(gpu="nvidia-l4")
    run(reconciler, provider, clock, passes=4)
    assert {gpu for _, gpu in placement(store)} == {"nvidia-tesla-t4"}
    assert len({region for region, _ in placement(store)}) == 2
    assert EventKind.FAILOVER in [e.kind for e in store.list_events()]
    assert {(b.region, b.gpu) for b in store.list_blocks()} >= {
        ("us-central1", "nvidia-l4"),
        ("europe-west4", "nvidia-l4"),
    }

    provider.give_back({"us-central1": {"nvidia-l4": 1}, "europe-west4": {"nvidia-l4": 1}})
    ready_counts = []
    for _ in range(400):
        run(reconciler, provider, clock, passes=1, step=2.0)
        ready_counts.append(len(live(store, ReplicaState.READY)))
    assert placement(store) == {("us-central1", "nvidia-l4"), ("europe-west4", "nvidia-l4")}
    assert min(ready_counts) >= 2, "never fewer ready replicas than needed while moving back"
    assert EventKind.RECOVERED in [e.kind for e in store.list_events()]
    assert not [r for r in store.list_replicas() if r.state is ReplicaState.DRAINING]


def test_a_launch_refused_for_capacity_blocks_the_pair_and_places_elsewhere(world) -> None:  # type: ignore[no-untyped-def]
    store, provider, clock, reconciler = world
    provider.capacity["us-central1"]["nvidia-l4"] = 0  # the provider says no at launch
    provider.regions = lambda: {r: {g: 1 for g in gpus} for r, gpus in SITES.items()}  # but advertised it
    run(reconciler, provider, clock, passes=4)
    assert store.get_block("us-central1", "nvidia-l4") is not None
    assert EventKind.STOCKOUT in [e.kind for e in store.list_events()]
    assert len({region for region, _ in placement(store)}) == 2
    assert ("us-central1", "nvidia-l4") not in placement(store)


def test_a_replica_not_ready_by_the_provision_timeout_is_a_capacity_failure(world) -> None:  # type: ignore[no-untyped-def]
    store, _, clock, reconciler = world
    reconciler.reconcile()
    clock.now += 121  # the example spec's provision_timeout_s is 120
    reconciler.reconcile()
    failed = [r for r in store.list_replicas() if r.state is ReplicaState.FAILED]
    assert len(failed) == 3 and all(store.get_block(r.region, r.gpu) for r in failed)  # two wanted, one raced


def test_a_ready_replica_that_stops_answering_is_replaced_after_a_grace(world) -> None:  # type: ignore[no-untyped-def]
    store, provider, clock, reconciler = world
    run(reconciler, provider, clock, passes=10)
    victim = next(r for r in live(store, ReplicaState.READY) if r.region == "us-central1")

    def unanswered_for(seconds: int) -> None:
        provider.running[victim.id].ready = False  # hung, or its region cut off: running, not answering
        for _ in range(seconds):
            reconciler.reconcile()
            clock.now += 1.0

    unanswered_for(int(UNREADY_GRACE_S) - 2)
    run(reconciler, provider, clock, passes=2)  # answers again: a blip shorter than the grace changes nothing
    assert store.get_replica(victim.id).state is ReplicaState.READY
    unanswered_for(int(UNREADY_GRACE_S) + 2)
    assert store.get_replica(victim.id).state is ReplicaState.FAILED
    assert victim.id in provider.terminated and store.get_block("us-central1", "nvidia-l4") is not None
    run(reconciler, provider, clock, passes=3)
    assert len({region for region, _ in placement(store)}) == 2, "replaced where capacity answers"


def test_a_restarted_controller_keeps_the_unready_timer_and_the_failover_label(world) -> None:  # type: ignore[no-untyped-def]
    """The store is the truth: a controller restarted while a replica hangs replaces it when the grace that
    began before the restart runs out, and labels the replacement a failover."""
    store, provider, clock, reconciler = world
    run(reconciler, provider, clock, passes=10)
    victim = next(r for r in live(store, ReplicaState.READY) if r.region == "us-central1")
    provider.running[victim.id].ready = False
    for _ in range(int(UNREADY_GRACE_S) - 2):
        reconciler.reconcile()
        clock.now += 1.0
    restarted = Reconciler(store, provider, load_catalog(), clock)  # a new process: nothing in memory
    for _ in range(4):
        restarted.reconcile()
        clock.now += 1.0
    assert store.get_replica(victim.id).state is ReplicaState.FAILED, "the grace counted from before the restart"
    replacement = max(live(store), key=lambda r: r.created_at)
    assert replacement.reason == "failover", "the loss was recorded in the store, not in the old process"


def test_an_intent_whose_launch_never_happened_is_launched_with_the_same_id(world) -> None:  # type: ignore[no-untyped-def]
    store, provider, clock, reconciler = world
    intent = Replica(
        "stable-diffusion-us-central1-l4-abcdef",
        "stable-diffusion",
        "us-central1",
        "nvidia-l4",
        ReplicaState.PROVISIONING,
        clock.now,
        clock.now,
        reason="initial",
    )
    store.add_replica(intent)  # as if the controller died right after writing it
    run(reconciler, provider, clock)
    assert intent.id in provider.launches
    assert store.get_replica(intent.id).state is ReplicaState.READY
    assert len(live(store)) == 2, "no duplicate for the region"


def test_an_orphan_the_store_does_not_want_is_terminated(world) -> None:  # type: ignore[no-untyped-def]
    store, provider, clock, reconciler = world
    stray = Replica(
        "stable-diffusion-europe-west4-t4-000000",
        "stable-diffusion",
        "europe-west4",
        "nvidia-tesla-t4",
        ReplicaState.PROVISIONING,
        clock.now,
        clock.now,
    )
    provider.launch(stray, {})
    run(reconciler, provider, clock)
    assert stray.id in provider.terminated
    assert EventKind.ORPHAN in [e.kind for e in store.list_events()]


def test_expand_pins_a_region_and_down_drains_everything(world) -> None:  # type: ignore[no-untyped-def]
    store, provider, clock, reconciler = world
    run(reconciler, provider, clock)
    store.pin_region("stable-diffusion", "asia-southeast1", clock.now)
    run(reconciler, provider, clock, passes=4)
    assert "asia-southeast1" in {region for region, _ in placement(store)}
    store.mark_deleted("stable-diffusion", clock.now)
    run(reconciler, provider, clock, passes=2, step=DRAIN_GRACE_S + 1)
    assert not provider.running and store.get_service("stable-diffusion") is None


def test_shrink_unpins_a_region_and_its_replica_drains_make_before_break(world) -> None:  # type: ignore[no-untyped-def]
    store, provider, clock, reconciler = world
    store.pin_region("stable-diffusion", "asia-southeast1", clock.now)
    run(reconciler, provider, clock, passes=10)  # past the drain grace of any raced extra
    preferred = {("us-central1", "nvidia-l4"), ("europe-west4", "nvidia-l4")}
    assert {region for region, _ in placement(store)} == {"us-central1", "europe-west4", "asia-southeast1"}
    store.unpin_region("stable-diffusion", "asia-southeast1", clock.now)
    ready_counts = []
    for _ in range(4):
        run(reconciler, provider, clock, passes=1, step=DRAIN_GRACE_S / 2)
        ready_counts.append(len(live(store, ReplicaState.READY)))
        assert preferred <= placement(store), "the other regions serve throughout"
    assert placement(store) == preferred and min(ready_counts) == 2
    drained = [e for e in store.list_events() if e.kind is EventKind.DRAINED]
    assert [e.region for e in drained][-1:] == ["asia-southeast1"]
    assert "asia-southeast1" not in {r.replica.region for r in provider.running.values()}, "gone after the grace"


def test_a_drain_is_a_recovery_only_when_a_better_gpu_serves_instead() -> None:
    from gpuroam.controller.reconciler import _recovers
    from gpuroam.placement import Demand, Drain

    spec = load_spec("examples/stable-diffusion.yaml")
    demand = Demand.from_spec(spec)

    def replica(rid: str, region: str, gpu: str) -> Replica:
        return Replica(rid, spec.name, region, gpu, ReplicaState.READY, 0.0, 0.0)

    t4_us, t4_eu, t4_asia = (replica(f"t4-{r}", r, "nvidia-tesla-t4") for r in ("us", "eu", "asia"))
    l4_us = replica("l4-us", "us", "nvidia-l4")
    during_failover = [t4_us, t4_eu, t4_asia]
    assert not _recovers(Drain("t4-eu", "surplus"), demand, during_failover), "a raced extra, not a recovery"
    assert _recovers(Drain("t4-us", "moved"), demand, [*during_failover, l4_us])
    assert not _recovers(Drain("l4-us", "surplus"), demand, [*during_failover, l4_us])
    failover_t4 = replace(t4_eu, reason="failover")
    assert _recovers(Drain("t4-eu", "surplus"), demand, [failover_t4, l4_us]), "failover capacity given back"
    assert not _recovers(Drain("t4-eu", "surplus"), demand, [t4_eu, l4_us]), "a scale-in, not a recovery"


def test_an_up_acknowledged_after_the_pass_read_a_down_is_never_lost(world) -> None:  # type: ignore[no-untyped-def]
    store, provider, clock, reconciler = world
    run(reconciler, provider, clock)
    store.mark_deleted("stable-diffusion", clock.now)
    stale = store.get_service("stable-diffusion")
    spec = spec_to_dict(load_spec("examples/stable-diffusion.yaml"))
    store.put_service("stable-diffusion", spec, clock.now)  # `up` answered OK after the pass read `down`
    reconciler._tear_down(stale, store.list_replicas(service="stable-diffusion"), clock.now)
    record = store.get_service("stable-diffusion")
    assert record is not None and not record.deleted
    assert len(live(store, ReplicaState.READY)) == 2, "no replica drained for a down that was overtaken"


def test_down_and_up_raced_against_the_loop_end_as_the_last_acknowledged_command(store: Store) -> None:
    """The reconciler passes in a thread while `down` and `up` land at random moments: whatever the
    interleaving, once the loop settles the service exists exactly when the last command was `up`."""
    import random
    import threading

    spec = spec_to_dict(load_spec("examples/stable-diffusion.yaml"))
    for seed in range(10):
        provider, clock = FakeProvider(copy.deepcopy(SITES)), Clock()
        reconciler = Reconciler(store, provider, load_catalog(), clock)
        name = f"race-{seed}"
        store.put_service(name, {**spec, "name": name}, clock.now)
        stop = threading.Event()
        passes = threading.Thread(target=_passes_until, args=(stop, reconciler, provider, clock))
        passes.start()
        chooser, last = random.Random(seed), "up"
        try:
            for _ in range(20):
                threading.Event().wait(chooser.uniform(0, 0.02))
                if chooser.random() < 0.5:
                    try:
                        store.mark_deleted(name, clock.now)
                        last = "down"
                    except KeyError:  # already removed: a 404, nothing acknowledged
                        pass
                else:
                    store.put_service(name, {**spec, "name": name}, clock.now)
                    last = "up"
        finally:
            stop.set()
            passes.join()
        for _ in range(4):
            reconciler.reconcile()
            provider.make_ready()
            clock.now += DRAIN_GRACE_S + 1
        record = store.get_service(name)
        assert (record is not None and not record.deleted) == (last == "up"), (seed, last, record)


def _passes_until(stop: object, reconciler: Reconciler, provider: FakeProvider, clock: Clock) -> None:
    while not stop.is_set():  # type: ignore[attr-defined]
        reconciler.reconcile()
        provider.make_ready()
        clock.now += DRAIN_GRACE_S + 1
