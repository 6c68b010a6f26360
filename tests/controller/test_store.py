"""The state store on SQLite and on a real PostgreSQL server (fixtures in conftest.py)."""

from __future__ import annotations

import re
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from dataclasses import replace
from pathlib import Path

import pytest
from sqlalchemy import create_engine

from gpuroam.autoscale import Scale
from gpuroam.controller.store import Store, StoreError
from gpuroam.records import Block, Capacity, Event, EventKind, Replica, ReplicaState

T = 1764201234.123456  # a timestamp that must come back to the microsecond (exactly, in fact)
SPEC = {"name": "sd", "replicas": {"min": 2}, "placement": {"block_ttl_s": 1.5}, "regions": {"allow": ["a", "b"]}}


def replica(id: str = "r1", service: str = "sd", created_at: float = T, **fields: object) -> Replica:
    base = {"region": "us-central1", "gpu": "nvidia-l4", "state": ReplicaState.PROVISIONING}
    return Replica(id=id, service=service, created_at=created_at, updated_at=created_at, **{**base, **fields})  # type: ignore[arg-type]


# --- services ----------------------------------------------------------------------------------


def test_put_service_round_trips_and_bumps_generation_only_on_change(store: Store) -> None:
    created = store.put_service("sd", SPEC, T)
    assert created.spec == SPEC and created.pinned_regions == () and created.generation == 1
    assert (created.created_at, created.updated_at, created.deleted) == (T, T, False)
    assert store.get_service("sd") == created

    assert store.put_service("sd", SPEC, T + 1) == created, "the same spec again changes nothing"
    changed = store.put_service("sd", {**SPEC, "replicas": {"min": 3}}, T + 2)
    assert (changed.generation, changed.spec["replicas"], changed.created_at, changed.updated_at) == (
        2,
        {"min": 3},
        T,
        T + 2,
    )
    assert store.get_service("nope") is None


def test_list_services_by_name_and_deleted_only_when_asked(store: Store) -> None:
    for name in ("zeta", "alpha", "mid"):
        store.put_service(name, SPEC, T)
    store.mark_deleted("mid", T + 1)
    assert [s.name for s in store.list_services()] == ["alpha", "zeta"]
    assert [(s.name, s.deleted) for s in store.list_services(include_deleted=True)] == [
        ("alpha", False), ("mid", True), ("zeta", False)
    ]  # fmt: skip
    undeleted = store.put_service("mid", SPEC, T + 2)
    assert (undeleted.deleted, undeleted.generation) == (False, 2), "up after down undeletes: a change"
    with pytest.raises(KeyError):
        store.mark_deleted("nope", T)


def test_remove_service_refuses_while_a_replica_is_live(store: Store) -> None:
    store.put_service("sd", SPEC, T)
    store.add_replica(replica("r1", state=ReplicaState.READY))
    store.add_replica(replica("r2", state=ReplicaState.FAILED))
    store.mark_deleted("sd", T)
    with pytest.raises(ValueError, match="live"):
        store.remove_service("sd")
    assert store.get_service("sd") is not None
    store.update_replica("r1", T + 1, state=ReplicaState.TERMINATED)
    store.remove_service("sd")
    assert store.get_service("sd") is None and store.list_services(include_deleted=True) == []
    store.remove_service("sd")  # already gone: nothing to do


def test_remove_service_keeps_a_service_an_up_undeleted_since(store: Store) -> None:
    """The reconciler read the service deleted; an `up` acknowledged since wins over the removal."""
    store.put_service("sd", SPEC, T)
    store.mark_deleted("sd", T)
    store.put_service("sd", SPEC, T + 1)
    assert store.remove_service("sd") is False
    assert store.get_service("sd") is not None and not store.get_service("sd").deleted  # type: ignore[union-attr]


def test_pin_and_unpin_region(store: Store) -> None:
    store.put_service("sd", SPEC, T)
    pinned = store.pin_region("sd", "europe-west4", T + 1)
    assert (pinned.pinned_regions, pinned.generation, pinned.updated_at) == (("europe-west4",), 2, T + 1)
    assert store.pin_region("sd", "europe-west4", T + 2) == pinned, "pinning twice changes nothing"
    assert store.pin_region("sd", "asia-east1", T + 3).pinned_regions == ("europe-west4", "asia-east1")
    unpinned = store.unpin_region("sd", "europe-west4", T + 4)
    assert (unpinned.pinned_regions, unpinned.generation) == (("asia-east1",), 4)
    assert store.unpin_region("sd", "never-pinned", T + 5) == unpinned
    assert store.put_service("sd", {**SPEC, "x": 1}, T + 6).pinned_regions == ("asia-east1",), "a new spec keeps pins"
    with pytest.raises(KeyError):
        store.pin_region("nope", "a", T)


# --- replicas ----------------------------------------------------------------------------------


def test_replica_round_trips_every_field(store: Store) -> None:
    handle = {"pid": 4242, "port": 7861, "argv": ["gpuroam", "worker"], "env": {"CUDA_VISIBLE_DEVICES": "0"},
              "started": T, "nested": {"ok": True, "none": None}}  # fmt: skip
    full = Replica(
        id="sd-us-central1-l4-abc123", service="sd", region="us-central1", gpu="nvidia-l4", state=ReplicaState.READY,
        created_at=T, updated_at=T + 0.000001, ready_at=T + 12.345678, url="http://127.0.0.1:7861",
        reason="preferred", handle=handle,
    )  # fmt: skip
    store.add_replica(full)
    assert store.get_replica(full.id) == full
    assert store.get_replica(full.id).state is ReplicaState.READY  # type: ignore[union-attr]
    bare = replica("bare")
    store.add_replica(bare)
    assert store.get_replica("bare") == bare and store.get_replica("nope") is None


def test_a_duplicate_replica_id_raises_and_keeps_the_first(store: Store) -> None:
    store.add_replica(replica("r1", region="a"))
    with pytest.raises(ValueError, match="r1"):
        store.add_replica(replica("r1", region="b"))
    assert [r.region for r in store.list_replicas()] == ["a"]


def test_update_replica_changes_known_fields_and_sets_updated_at(store: Store) -> None:
    store.add_replica(replica("r1"))
    ready = store.update_replica("r1", T + 5, state="ready", ready_at=T + 5, url="http://x", handle={"pid": 1})
    expected = replace(replica("r1"), state=ReplicaState.READY, updated_at=T + 5, ready_at=T + 5, url="http://x")
    assert ready == replace(expected, handle={"pid": 1})
    assert store.get_replica("r1") == ready
    assert store.update_replica("r1", T + 6, reason="moved", url=None).url is None
    with pytest.raises(TypeError, match="region"):
        store.update_replica("r1", T, region="elsewhere")
    with pytest.raises(ValueError):
        store.update_replica("r1", T, state="sleeping")
    with pytest.raises(KeyError):
        store.update_replica("nope", T, state=ReplicaState.FAILED)


def test_list_replicas_orders_by_created_at_then_id_and_filters(store: Store) -> None:
    store.add_replica(replica("c", created_at=T + 1))
    store.add_replica(replica("b", created_at=T))
    store.add_replica(replica("a", created_at=T + 1, state=ReplicaState.READY))
    store.add_replica(replica("d", service="other", created_at=T - 1, state=ReplicaState.DRAINING))
    assert [r.id for r in store.list_replicas()] == ["d", "b", "a", "c"]
    assert [r.id for r in store.list_replicas(service="sd")] == ["b", "a", "c"]
    live = (s for s in ReplicaState if s.live)  # any iterable, a generator too
    assert [r.id for r in store.list_replicas(states=live)] == ["b", "a", "c"]
    assert [r.id for r in store.list_replicas(service="sd", states=[ReplicaState.READY])] == ["a"]
    assert store.list_replicas(states=[]) == []


# --- blocks ------------------------------------------------------------------------------------


def test_blocks_upsert_list_and_clear(store: Store) -> None:
    first = Block("us-central1", "nvidia-l4", until=T + 30, failures=1, last_failure_at=T, reason="stockout")
    store.put_block(first)
    assert store.get_block("us-central1", "nvidia-l4") == first
    again = Block("us-central1", "nvidia-l4", until=T + 90.5, failures=2, last_failure_at=T + 60.25, reason="quota")
    store.put_block(again)
    expired = Block("europe-west4", "nvidia-l4", until=T - 1, failures=3, last_failure_at=T - 2)
    store.put_block(expired)
    assert store.list_blocks() == [expired, again], "expired ones too, ordered by region then GPU"
    store.clear_block("us-central1", "nvidia-l4")
    store.clear_block("us-central1", "nvidia-l4")
    assert store.get_block("us-central1", "nvidia-l4") is None and store.list_blocks() == [expired]


# --- events ------------------------------------------------------------------------------------


def test_events_ascend_page_by_after_id_and_filter_by_service_with_global_ones(store: Store) -> None:
    added = [
        store.add_event(Event(T + i, kind, f"m{i}", service=service, region="r", gpu="g", replica=rid))
        for i, (kind, service, rid) in enumerate([
            (EventKind.PLACED, "sd", "r1"), (EventKind.CHAOS, None, None), (EventKind.READY, "other", "r2"),
            (EventKind.STOCKOUT, "sd", None), (EventKind.FAILOVER, "sd", "r3"),
        ])
    ]  # fmt: skip
    ids = [e.id for e in added]
    assert all(isinstance(i, int) for i in ids) and ids == sorted(ids) and len(set(ids)) == 5
    assert store.list_events() == added, "every field round trips, ascending by id"
    assert store.list_events()[1].kind is EventKind.CHAOS and store.list_events()[1].service is None
    assert store.list_events(after_id=ids[1]) == added[2:]
    assert store.list_events(after_id=ids[1], limit=2) == added[2:4]
    assert store.list_events(after_id=ids[-1]) == []
    assert [e.message for e in store.list_events(service="sd")] == ["m0", "m1", "m3", "m4"]
    assert [e.message for e in store.list_events(service="other", after_id=ids[0])] == ["m1", "m2"]


# --- transactions ------------------------------------------------------------------------------


def test_a_transaction_that_raises_rolls_back_everything_in_it(store: Store) -> None:
    store.put_service("sd", SPEC, T)
    with pytest.raises(RuntimeError, match="boom"), store.transaction() as tx:
        tx.add_replica(replica("r1"))
        tx.update_replica("r1", T + 1, state=ReplicaState.READY)
        tx.pin_region("sd", "europe-west4", T + 1)
        tx.put_block(Block("a", "g", T, 1, T))
        tx.add_event(Event(T, EventKind.PLACED, "launching r1", service="sd"))
        assert [r.state for r in tx.list_replicas()] == [ReplicaState.READY], "a transaction sees its own writes"
        raise RuntimeError("boom")
    assert store.list_replicas() == [] and store.list_blocks() == [] and store.list_events() == []
    assert store.get_service("sd").pinned_regions == ()  # type: ignore[union-attr]


def test_a_transaction_commits_together_and_survives_a_refused_duplicate(store: Store) -> None:
    store.add_replica(replica("r1"))
    with store.transaction() as tx:
        tx.add_replica(replica("r2"))
        with pytest.raises(ValueError):
            tx.add_replica(replica("r1"))  # refused without aborting the transaction (PostgreSQL too)
        tx.add_event(Event(T, EventKind.PLACED, "launching r2", replica="r2"))
    assert [r.id for r in store.list_replicas()] == ["r1", "r2"]
    assert [e.replica for e in store.list_events()] == ["r2"]


# --- durability --------------------------------------------------------------------------------


def test_a_reopened_store_sees_everything(store_url: str) -> None:
    first = Store.open(store_url)
    first.put_service("sd", SPEC, T)
    first.pin_region("sd", "europe-west4", T)
    first.add_replica(replica("r1", handle={"pid": 7}))
    first.put_block(Block("a", "g", T, 2, T, "why"))
    event = first.add_event(Event(T, EventKind.PLACED, "m", service="sd"))
    first.close()  # a "restart"

    second = Store.open(store_url)
    try:
        assert second.get_service("sd").pinned_regions == ("europe-west4",)  # type: ignore[union-attr]
        assert second.list_replicas() == [replica("r1", handle={"pid": 7})]
        assert second.list_blocks() == [Block("a", "g", T, 2, T, "why")]
        assert second.list_events() == [event]
        assert second.add_event(Event(T, EventKind.READY, "n")).id > event.id  # type: ignore[operator]
    finally:
        second.close()


WRITER = textwrap.dedent("""
    import sys
    from gpuroam.controller.store import Store
    from gpuroam.records import Event, EventKind, Replica, ReplicaState
    store = Store.open(sys.argv[1])
    i = 0
    while True:
        with store.transaction() as tx:
            tx.add_replica(Replica(f"r{i}", "sd", "a", "g", ReplicaState.PROVISIONING, i, i))
            tx.add_event(Event(float(i), EventKind.PLACED, f"launching r{i}", replica=f"r{i}"))
        print(i, flush=True)
        i += 1
""")


def test_a_writer_killed_with_sigkill_loses_nothing_it_committed(store_url: str) -> None:
    """The controller's guarantee: whatever a call returned from is there after a SIGKILL, and
    a transaction cut short leaves nothing half-written."""
    Store.open(store_url).close()  # tables exist before the writer races us
    writer = subprocess.Popen([sys.executable, "-c", WRITER, store_url], stdout=subprocess.PIPE, text=True)
    assert writer.stdout is not None
    acknowledged = [int(writer.stdout.readline()) for _ in range(150)]
    writer.send_signal(signal.SIGKILL)
    writer.wait(timeout=10)
    acknowledged += [int(line) for line in writer.stdout.read().split()]

    store = Store.open(store_url)
    try:
        replicas = {r.id for r in store.list_replicas()}
        events = {e.replica for e in store.list_events(limit=100_000)}
        assert {f"r{i}" for i in acknowledged} <= replicas, "every acknowledged write survived"
        assert replicas == events, "no transaction survived half-written"
    finally:
        store.close()


# --- SQLite specifics and opening --------------------------------------------------------------


def test_sqlite_runs_in_wal_mode_with_the_pragmas(tmp_path: Path) -> None:
    store = Store.for_state_dir(tmp_path / "new" / "state")
    try:
        assert (tmp_path / "new" / "state" / "state.db").is_file(), "the directory was created"
        with store.engine.connect() as conn:
            pragmas = {p: conn.exec_driver_sql(f"PRAGMA {p}").scalar() for p in
                       ("journal_mode", "synchronous", "busy_timeout", "foreign_keys")}  # fmt: skip
        assert pragmas == {"journal_mode": "wal", "synchronous": 1, "busy_timeout": 5000, "foreign_keys": 1}
    finally:
        store.close()
    with create_engine(f"sqlite:///{tmp_path / 'new' / 'state' / 'state.db'}").connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal", "WAL is a property of the file"


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("mysql+pymysql://admin:hunter2@db.example.com/gpuroam", "unsupported store URL scheme 'mysql+pymysql'"),
        ("postgresql+asyncpg://admin:hunter2@db/gpuroam", "unsupported store URL scheme 'postgresql+asyncpg'"),
        ("::admin:hunter2@nonsense", "cannot parse the store URL"),
        ("sqlite://", "names no file"),
        ("sqlite:///:memory:", "names no file"),
    ],
)
def test_unusable_urls_raise_store_error_with_the_password_masked(url: str, expected: str) -> None:
    with pytest.raises(StoreError, match=re.escape(expected)) as raised:
        Store.open(url)
    assert "hunter2" not in str(raised.value)
    assert "sqlite:///PATH/state.db" in str(raised.value), "it says what would work"


def test_an_unreachable_postgresql_fails_fast_with_the_password_masked() -> None:
    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    started = time.monotonic()
    with pytest.raises(StoreError) as raised:
        Store.open(f"postgresql+psycopg://gpuroam:hunter2@127.0.0.1:{port}/gpuroam?connect_timeout=2")
    message = str(raised.value)
    assert time.monotonic() - started < 5
    assert "hunter2" not in message and f"postgresql+psycopg://gpuroam:***@127.0.0.1:{port}/gpuroam" in message
    assert "server is running" in message and "createdb" in message


def test_plain_postgresql_urls_use_psycopg(fresh_postgres_url: str) -> None:
    store = Store.open(fresh_postgres_url.replace("postgresql+psycopg://", "postgresql://"))
    try:
        assert store.engine.dialect.driver == "psycopg"
    finally:
        store.close()


# --- concurrency -------------------------------------------------------------------------------


def test_concurrent_writers_lose_nothing_and_a_follower_misses_no_event(store: Store) -> None:
    """The reconciler thread and API handlers share one Store: no write is lost, ids commit in
    order (so `events --follow` paging by after_id skips nothing), racing upserts both land."""
    writers, per_writer = 4, 60
    store.put_service("sd", SPEC, T)
    errors: list[BaseException] = []
    seen: list[int] = []
    done = threading.Event()

    def write(n: int) -> None:
        try:
            for i in range(per_writer):
                store.add_event(Event(T + i, EventKind.PLACED, f"w{n}-{i}", service="sd"))
                if i % 4 == 0:
                    store.add_replica(replica(f"w{n}-{i}", created_at=T + i))
                    store.update_replica(f"w{n}-{i}", T + i, state=ReplicaState.READY)
                    store.put_service(f"racy-{i}", SPEC, T)  # several threads create the same name
                    store.pin_region("sd", f"region-{n}-{i}", T)
        except BaseException as error:  # noqa: BLE001 - re-raised by the test thread
            errors.append(error)

    def follow() -> None:
        while True:
            finished = done.is_set()  # read before the query: then an empty batch means the end
            batch = store.list_events(after_id=seen[-1] if seen else 0)
            seen.extend(e.id for e in batch)  # type: ignore[misc]
            if finished and not batch:
                return

    threads = [threading.Thread(target=write, args=(n,)) for n in range(writers)]
    follower = threading.Thread(target=follow)
    for thread in [*threads, follower]:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    done.set()
    follower.join(timeout=30)
    assert not errors, errors

    everything = store.list_events(limit=100_000)
    assert len(everything) == writers * per_writer
    assert seen == [e.id for e in everything], "the follower saw every event, once, in order"
    replicas = store.list_replicas(states=[ReplicaState.READY])
    assert len(replicas) == writers * per_writer // 4
    assert len(store.get_service("sd").pinned_regions) == writers * per_writer // 4  # type: ignore[union-attr]
    assert {s.generation for s in store.list_services() if s.name.startswith("racy-")} == {1}


def test_a_store_written_before_the_timer_columns_is_brought_up_to_date(tmp_path: Path) -> None:
    """An older gpuroam's state.db (no services.last_loss_at, no replicas.unready_since) opens, keeps its rows
    and takes the new fields."""
    old = Store.for_state_dir(tmp_path)
    old.put_service("sd", SPEC, T)
    old.add_replica(replica("r1"))
    old.close()
    engine = create_engine(f"sqlite:///{tmp_path / 'state.db'}")
    with engine.begin() as conn:
        conn.exec_driver_sql("ALTER TABLE services DROP COLUMN last_loss_at")
        conn.exec_driver_sql("ALTER TABLE services DROP COLUMN scale")
        conn.exec_driver_sql("ALTER TABLE replicas DROP COLUMN unready_since")
    engine.dispose()
    store = Store.for_state_dir(tmp_path)
    try:
        store.record_loss("sd", T + 1)
        updated = store.update_replica("r1", T + 2, unready_since=T + 2)
        assert store.get_service("sd").last_loss_at == T + 1  # type: ignore[union-attr]
        assert (updated.unready_since, updated.service) == (T + 2, "sd")
        assert store.get_scale("sd") is None
    finally:
        store.close()


def test_a_replica_keeps_its_capacity_and_is_on_demand_unless_said(store: Store) -> None:
    store.add_replica(replica("r1"))
    store.add_replica(replica("r2", capacity=Capacity.SPOT))
    assert [(r.id, r.capacity) for r in store.list_replicas()] == [("r1", Capacity.ON_DEMAND), ("r2", Capacity.SPOT)]
    updated = store.update_replica("r2", T + 1, state=ReplicaState.READY)
    assert updated.capacity is Capacity.SPOT, "chosen at launch, kept"
    with pytest.raises(TypeError, match="cannot change \\['capacity'\\]"):
        store.update_replica("r2", T + 2, capacity=Capacity.ON_DEMAND)


def test_a_store_written_before_spot_reads_its_replicas_as_on_demand(store_url: str) -> None:
    """An older gpuroam's replicas table (no capacity column), on SQLite and PostgreSQL: its replicas were all
    on demand, and new ones keep their capacity."""
    old = Store.open(store_url)
    old.add_replica(replica("r1", state=ReplicaState.READY))
    with old.engine.begin() as conn:
        conn.exec_driver_sql("ALTER TABLE replicas DROP COLUMN capacity")
    old.close()
    store = Store.open(store_url)
    try:
        assert store.get_replica("r1") == replica("r1", state=ReplicaState.READY, capacity=Capacity.ON_DEMAND)
        store.add_replica(replica("r2", capacity=Capacity.SPOT))
        assert store.get_replica("r2").capacity is Capacity.SPOT  # type: ignore[union-attr]
    finally:
        store.close()


def test_the_autoscaler_state_round_trips_and_survives_a_new_spec(store: Store) -> None:
    store.put_service("sd", SPEC, T)
    assert store.get_scale("sd") is None and store.get_scale("nope") is None
    scale = Scale(
        desired=3,
        reason="scaled up: 12 in flight",
        above_since=None,
        below_since=T,
        changed_at=T,
        idle_since=T,
        day_starts=(T - 86_400, T),
    )
    store.put_scale("sd", scale)
    assert store.get_scale("sd") == scale
    store.put_service("sd", {**SPEC, "replicas": {"min": 3}}, T + 1)
    assert store.get_scale("sd") == scale, "a new generation keeps what the autoscaler knows"
