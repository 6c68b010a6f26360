"""The state store: desired and observed state in SQLite (the default) or PostgreSQL.

The store is the single source of truth. Every method commits before it returns, so what a
caller was told is written survives a controller killed at any instant, SIGKILL included.
SQLAlchemy Core, synchronous: one Engine shared by the reconciler thread and the API handlers,
each call one short transaction on its own pooled connection.

Several calls that must happen together ("read replicas, record the intent, add the event")
run in one transaction: ``with store.transaction() as tx:`` yields a `Transaction` with the
same methods on one connection; they commit together when the block ends, or none of them
does if it raises.
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

from sqlalchemy import inspect
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import URL, Connection, Engine, Row
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.schema import Column, MetaData, Table
from sqlalchemy.sql import delete, func, or_, select, update
from sqlalchemy.types import JSON, BigInteger, Boolean, Double, Integer, String, Text

from gpuroam.autoscale import Scale
from gpuroam.controller.database import READ_ONLY, StoreError, cannot_open, engine_for, file_identity, parse_url
from gpuroam.records import ApiKey, Block, Capacity, Event, EventKind, Replica, ReplicaState, ServiceRecord

__all__ = ["Operations", "Store", "StoreError", "Transaction"]

_EVENTS_LOCK = 0x67707572  # PostgreSQL advisory lock key ("gpur") serialising event inserts
_MUTABLE = frozenset(
    {"state", "ready_at", "url", "reason", "handle", "unready_since"}
)  # what update_replica may change
_LIVE = [s.value for s in ReplicaState if s.live]

metadata = MetaData()

services = Table(
    "services",
    metadata,
    Column("name", String, primary_key=True),
    Column("spec", JSON, nullable=False),
    Column("pinned_regions", JSON, nullable=False),
    Column("created_at", Double, nullable=False),
    Column("updated_at", Double, nullable=False),
    Column("generation", Integer, nullable=False),
    Column("deleted", Boolean, nullable=False),
    Column("gateway_port", Integer, unique=True),  # the service's endpoint port, kept while it exists
    Column("last_loss_at", Double),  # when it last lost a replica: launches soon after are failovers
    Column("scale", JSON),  # the autoscaler's state (gpuroam.autoscale.Scale); None until its first pass
)

replicas = Table(
    "replicas",
    metadata,
    Column("id", String, primary_key=True),
    Column("service", String, nullable=False, index=True),
    Column("region", String, nullable=False),
    Column("gpu", String, nullable=False),
    Column("state", String, nullable=False),
    Column("created_at", Double, nullable=False),
    Column("updated_at", Double, nullable=False),
    Column("ready_at", Double),
    Column("url", Text),
    Column("reason", Text, nullable=False),
    Column("handle", JSON, nullable=False),
    Column("unready_since", Double),  # a ready replica failing its readiness probe since then
    Column("capacity", String, nullable=False, server_default=Capacity.ON_DEMAND.value),  # spot or on-demand
)

blocks = Table(
    "blocks",
    metadata,
    Column("region", String, primary_key=True),
    Column("gpu", String, primary_key=True),
    Column("capacity", String, primary_key=True),  # spot or on-demand: blocked apart
    Column("until", Double, nullable=False),
    Column("failures", Integer, nullable=False),
    Column("last_failure_at", Double, nullable=False),
    Column("reason", Text, nullable=False),
)

api_keys = Table(
    "api_keys",
    metadata,
    Column("service", String, primary_key=True),
    Column("name", String, primary_key=True),
    Column("sha256", String, nullable=False, unique=True),
    Column("created_at", Double, nullable=False),
)

events = Table(
    "events",
    metadata,
    # SQLite autoincrements only an INTEGER PRIMARY KEY; PostgreSQL gets a 64-bit identity.
    Column("id", BigInteger().with_variant(Integer(), "sqlite"), primary_key=True, autoincrement=True),
    Column("ts", Double, nullable=False),
    Column("kind", String, nullable=False),
    Column("message", Text, nullable=False),
    Column("service", String, index=True),
    Column("region", String),
    Column("gpu", String),
    Column("replica", String),
)


class Operations(ABC):
    """Every store operation; subclasses decide which connection (and transaction) each uses.

    Reads return records.py dataclasses, never rows. Unknown names or ids raise KeyError.
    """

    _dialect: str

    @abstractmethod
    def _read(self) -> AbstractContextManager[Connection]: ...

    @abstractmethod
    def _write(self) -> AbstractContextManager[Connection]: ...

    def _insert(self, table: Table) -> Any:
        """INSERT with ON CONFLICT, which both dialects have (under their own classes)."""
        return postgresql.insert(table) if self._dialect == "postgresql" else sqlite.insert(table)

    def _insert_new(self, conn: Connection, table: Table, row: dict[str, Any]) -> bool:
        """Insert unless the key is taken; False if it was. ON CONFLICT rather than a caught
        IntegrityError keeps a surrounding PostgreSQL transaction usable. (RETURNING, since
        SQLAlchemy reports no rowcount for an INSERT.)"""
        insert = self._insert(table).values(row).on_conflict_do_nothing()
        return conn.execute(insert.returning(*table.primary_key.columns)).first() is not None

    # --- services ------------------------------------------------------------------------------

    def put_service(self, name: str, spec: dict[str, Any], now: float) -> ServiceRecord:
        """Create a service or set its spec (undeleting it); generation goes up only on a change,
        so applying the same spec again is a no-op, as a level-triggered controller expects."""
        with self._write() as conn:
            row = {"name": name, "spec": spec, "pinned_regions": [], "created_at": now, "updated_at": now}
            if not self._insert_new(conn, services, row | {"generation": 1, "deleted": False}):
                old = conn.execute(select(services).where(services.c.name == name).with_for_update()).one()
                if old.deleted or old.spec != json.loads(json.dumps(spec)):
                    conn.execute(
                        update(services)
                        .where(services.c.name == name)
                        .values(spec=spec, deleted=False, updated_at=now, generation=services.c.generation + 1)
                    )
            return self._service(conn, name)

    def get_service(self, name: str) -> ServiceRecord | None:
        with self._read() as conn:
            row = conn.execute(select(services).where(services.c.name == name)).one_or_none()
            return None if row is None else _service(row)

    def list_services(self, include_deleted: bool = False) -> list[ServiceRecord]:
        """By name; deleted ones (still being torn down) only when asked for."""
        query = select(services).order_by(services.c.name)
        if not include_deleted:
            query = query.where(services.c.deleted.is_(False))
        with self._read() as conn:
            return [_service(row) for row in conn.execute(query)]

    def mark_deleted(self, name: str, now: float) -> None:
        """Record `down`: the reconciler drains the replicas, then calls remove_service."""
        with self._write() as conn:
            done = conn.execute(update(services).where(services.c.name == name).values(deleted=True, updated_at=now))
            if done.rowcount == 0:
                raise KeyError(f"no service {name!r}")

    def remove_service(self, name: str) -> bool:
        """Delete the service row (its replicas' rows stay, as history) if it is still marked deleted: an
        `up` acknowledged since the caller read it wins (compare-and-set), and False says so. Refused while
        any replica is still live, since its process would then belong to nothing."""
        with self._write() as conn:
            live = conn.execute(
                select(func.count())
                .select_from(replicas)
                .where(replicas.c.service == name, replicas.c.state.in_(_LIVE))
            ).scalar_one()
            if live:
                raise ValueError(f"service {name!r} still has {live} live replica(s); drain them first")
            removed = conn.execute(delete(services).where(services.c.name == name, services.c.deleted.is_(True)))
            if removed.rowcount == 0:
                return False
            conn.execute(delete(api_keys).where(api_keys.c.service == name))  # a new service of that name starts open
            return True

    def pin_region(self, name: str, region: str, now: float) -> ServiceRecord:
        """`expand`: the service must keep a replica in `region`; bumps generation if new."""
        return self._edit_pins(name, now, lambda pins: pins if region in pins else [*pins, region])

    def unpin_region(self, name: str, region: str, now: float) -> ServiceRecord:
        return self._edit_pins(name, now, lambda pins: [p for p in pins if p != region])

    def _edit_pins(self, name: str, now: float, change: Callable[[list[str]], list[str]]) -> ServiceRecord:
        with self._write() as conn:
            row = conn.execute(select(services).where(services.c.name == name).with_for_update()).one_or_none()
            if row is None:
                raise KeyError(f"no service {name!r}")
            pins = change(list(row.pinned_regions))
            if pins != row.pinned_regions:
                conn.execute(
                    update(services)
                    .where(services.c.name == name)
                    .values(pinned_regions=pins, updated_at=now, generation=services.c.generation + 1)
                )
            return self._service(conn, name)

    def assign_gateway_port(self, name: str, base: int) -> int:
        """The service's endpoint port: the lowest free one from `base`, chosen once and kept, so
        the endpoint stays the same through expand, failover and controller restarts."""
        with self._write() as conn:
            row = conn.execute(select(services).where(services.c.name == name).with_for_update()).one_or_none()
            if row is None:
                raise KeyError(f"no service {name!r}")
            if row.gateway_port is not None:
                return int(row.gateway_port)
            used = set(
                conn.execute(select(services.c.gateway_port).where(services.c.gateway_port.is_not(None))).scalars()
            )
            port = next(p for p in range(base, base + 1000) if p not in used)
            conn.execute(update(services).where(services.c.name == name).values(gateway_port=port))
            return port

    def record_loss(self, name: str, now: float) -> None:
        """The service lost a replica at `now`: launches for a while after are labelled failovers."""
        with self._write() as conn:
            conn.execute(update(services).where(services.c.name == name).values(last_loss_at=now))

    def get_scale(self, name: str) -> Scale | None:
        """The autoscaler's state for the service as its last pass left it (None: none yet, or no service)."""
        with self._read() as conn:
            row = conn.execute(select(services.c.scale).where(services.c.name == name)).one_or_none()
            return None if row is None or row.scale is None else Scale.from_dict(row.scale)

    def put_scale(self, name: str, scale: Scale) -> None:
        with self._write() as conn:
            conn.execute(update(services).where(services.c.name == name).values(scale=asdict(scale)))

    def _service(self, conn: Connection, name: str) -> ServiceRecord:
        return _service(conn.execute(select(services).where(services.c.name == name)).one())

    # --- replicas ------------------------------------------------------------------------------

    def add_replica(self, replica: Replica) -> None:
        """Record a replica (the intent, before the provider is asked); a taken id is a ValueError
        that leaves a surrounding transaction usable."""
        row = {c.name: getattr(replica, c.name) for c in replicas.columns} | {
            "state": ReplicaState(replica.state).value,
            "capacity": Capacity(replica.capacity).value,
        }
        with self._write() as conn:
            if not self._insert_new(conn, replicas, row):
                raise ValueError(f"replica {replica.id!r} already exists")

    def update_replica(self, id: str, now: float, **changes: Any) -> Replica:
        """Change state, ready_at, url, reason, handle or unready_since; sets updated_at; returns the new record."""
        if unknown := set(changes) - _MUTABLE:
            raise TypeError(f"update_replica cannot change {sorted(unknown)}; only {sorted(_MUTABLE)}")
        if "state" in changes:
            changes["state"] = ReplicaState(changes["state"]).value
        with self._write() as conn:
            done = conn.execute(update(replicas).where(replicas.c.id == id).values(**changes, updated_at=now))
            if done.rowcount == 0:
                raise KeyError(f"no replica {id!r}")
            return _replica(conn.execute(select(replicas).where(replicas.c.id == id)).one())

    def get_replica(self, id: str) -> Replica | None:
        with self._read() as conn:
            row = conn.execute(select(replicas).where(replicas.c.id == id)).one_or_none()
            return None if row is None else _replica(row)

    def list_replicas(self, service: str | None = None, states: Iterable[ReplicaState] | None = None) -> list[Replica]:
        """Oldest first (created_at, then id), optionally of one service and in some states."""
        query = select(replicas).order_by(replicas.c.created_at, replicas.c.id)
        if service is not None:
            query = query.where(replicas.c.service == service)
        if states is not None:
            query = query.where(replicas.c.state.in_([ReplicaState(s).value for s in states]))
        with self._read() as conn:
            return [_replica(row) for row in conn.execute(query)]

    # --- blocks --------------------------------------------------------------------------------

    def put_block(self, block: Block) -> None:
        """Insert or replace the block on (region, gpu, capacity)."""
        row = {c.name: getattr(block, c.name) for c in blocks.columns}
        upsert = self._insert(blocks).values(row)
        key = ["region", "gpu", "capacity"]
        changed = {k: v for k, v in row.items() if k not in key}
        with self._write() as conn:
            conn.execute(upsert.on_conflict_do_update(index_elements=key, set_=changed))

    def get_block(self, region: str, gpu: str, capacity: Capacity = Capacity.ON_DEMAND) -> Block | None:
        with self._read() as conn:
            row = conn.execute(select(blocks).where(*_block_key(region, gpu, capacity))).one_or_none()
            return None if row is None else _block(row)

    def list_blocks(self) -> list[Block]:
        """All blocks, expired ones too: the next backoff needs their failure counts."""
        order = (blocks.c.region, blocks.c.gpu, blocks.c.capacity)
        with self._read() as conn:
            return [_block(row) for row in conn.execute(select(blocks).order_by(*order))]

    def clear_block(self, region: str, gpu: str, capacity: Capacity = Capacity.ON_DEMAND) -> None:
        with self._write() as conn:
            conn.execute(delete(blocks).where(*_block_key(region, gpu, capacity)))

    # --- API keys ------------------------------------------------------------------------------

    def add_api_key(self, key: ApiKey) -> bool:
        """Keep a service's key (its hash); False when the service already has a key of that name."""
        with self._write() as conn:
            return self._insert_new(conn, api_keys, asdict(key))

    def list_api_keys(self, service: str | None = None) -> list[ApiKey]:
        query = select(api_keys).order_by(api_keys.c.service, api_keys.c.created_at)
        if service is not None:
            query = query.where(api_keys.c.service == service)
        with self._read() as conn:
            return [ApiKey(**row._asdict()) for row in conn.execute(query)]

    def revoke_api_key(self, service: str, name: str) -> bool:
        """Forget a key; False when there was none of that name."""
        with self._write() as conn:
            gone = conn.execute(delete(api_keys).where(api_keys.c.service == service, api_keys.c.name == name))
            return bool(gone.rowcount)

    # --- events --------------------------------------------------------------------------------

    def add_event(self, event: Event) -> Event:
        """Append to the timeline; returns the event with its id.

        On PostgreSQL a transaction-scoped advisory lock makes ids commit in increasing order,
        so a reader paging with after_id never skips an event committed late with a lower id.
        Inside a transaction(), add events last: the lock is held until it commits."""
        row = {c.name: getattr(event, c.name) for c in events.columns if c.name != "id"}
        row["kind"] = EventKind(event.kind).value
        with self._write() as conn:
            if self._dialect == "postgresql":
                conn.execute(select(func.pg_advisory_xact_lock(_EVENTS_LOCK)))
            key = conn.execute(events.insert().values(row)).inserted_primary_key
            if key is None:
                raise StoreError("the database assigned no id to an event")
            return replace(event, id=int(key[0]))

    def list_events(self, after_id: int = 0, service: str | None = None, limit: int = 500) -> list[Event]:
        """Events with id > after_id, oldest first, at most `limit`.

        With `service`, that service's events and the global ones (service NULL: chaos and
        the like), since both belong on the service's timeline."""
        query = select(events).where(events.c.id > after_id).order_by(events.c.id).limit(limit)
        if service is not None:
            query = query.where(or_(events.c.service == service, events.c.service.is_(None)))
        with self._read() as conn:
            return [Event(**{**row._asdict(), "kind": EventKind(row.kind)}) for row in conn.execute(query)]

    def count_events(self) -> dict[tuple[str, str | None], int]:
        """How many events of each (kind, service) the timeline holds: counters for the metrics."""
        query = select(events.c.kind, events.c.service, func.count()).group_by(events.c.kind, events.c.service)
        with self._read() as conn:
            return {(kind, service): count for kind, service, count in conn.execute(query)}


class Transaction(Operations):
    """The store's operations on one connection in one open transaction; see Store.transaction."""

    def __init__(self, conn: Connection, dialect: str) -> None:
        self._conn = conn
        self._dialect = dialect

    def _read(self) -> AbstractContextManager[Connection]:
        return nullcontext(self._conn)

    def _write(self) -> AbstractContextManager[Connection]:
        return nullcontext(self._conn)


class Store(Operations):
    """The store: thread-safe, each call its own short transaction. Open with Store.open(url)."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._dialect = engine.dialect.name
        self._file = file_identity(engine)

    def replaced(self) -> str | None:
        """A SQLite file deleted or replaced under the running store, said plainly; else None. Its open
        connections would go on with the old file and new ones with an empty one: a store that no longer
        knows the running replicas, whose processes the reconciler would take for orphans."""
        if self._file is None:
            return None
        path, identity = self._file
        now = file_identity(self.engine)
        if now is None or now[1] != identity:
            return (
                f"the state database {path} was deleted or replaced while `gpuroam serve` ran; the control plane "
                "stopped acting (every replica keeps serving): put the file back, or restart `gpuroam serve`"
            )
        return None

    @classmethod
    def open(cls, url: str | URL) -> Store:
        """Connect to sqlite:///PATH (parent directory created) or postgresql+psycopg://...,
        creating the tables if missing; StoreError says what is wrong and how to fix it."""
        parsed = parse_url(url)
        shown = parsed.render_as_string(hide_password=True)
        engine = engine_for(parsed, shown)
        try:
            metadata.create_all(engine)
            _add_missing_columns(engine)
        except SQLAlchemyError as error:
            engine.dispose()
            raise StoreError(cannot_open(parsed, shown, error)) from error
        return cls(engine)

    @classmethod
    def for_state_dir(cls, path: str | Path) -> Store:
        """The default store: SQLite file state.db in the server's state directory."""
        return cls.open(URL.create("sqlite", database=str(Path(path) / "state.db")))

    def close(self) -> None:
        self.engine.dispose()

    @contextmanager
    def transaction(self) -> Iterator[Transaction]:
        """`with store.transaction() as tx:`: tx's calls commit together, or none if the block raises."""
        with self.engine.begin() as conn:
            yield Transaction(conn, self._dialect)

    @contextmanager
    def _read(self) -> Iterator[Connection]:
        with self.engine.connect() as conn:
            yield conn.execution_options(**{READ_ONLY: True})

    def _write(self) -> AbstractContextManager[Connection]:
        return self.engine.begin()


def _add_missing_columns(engine: Engine) -> None:
    """Bring a store written by an older gpuroam up to date: columns added since are nullable or have a default."""
    with engine.begin() as conn:
        present = {column["name"] for column in inspect(conn).get_columns("services")}
        if "gateway_port" not in present:
            conn.exec_driver_sql("ALTER TABLE services ADD COLUMN gateway_port INTEGER")
            conn.exec_driver_sql("CREATE UNIQUE INDEX services_gateway_port ON services (gateway_port)")
        if "last_loss_at" not in present:
            conn.exec_driver_sql("ALTER TABLE services ADD COLUMN last_loss_at DOUBLE PRECISION")
        if "scale" not in present:
            conn.exec_driver_sql(f"ALTER TABLE services ADD COLUMN scale {_json_type(engine)}")
        present = {column["name"] for column in inspect(conn).get_columns("replicas")}
        if "unready_since" not in present:
            conn.exec_driver_sql("ALTER TABLE replicas ADD COLUMN unready_since DOUBLE PRECISION")
        if "capacity" not in present:  # every replica before Spot was on demand
            conn.exec_driver_sql("ALTER TABLE replicas ADD COLUMN capacity VARCHAR NOT NULL DEFAULT 'on-demand'")
        if "capacity" not in {column["name"] for column in inspect(conn).get_columns("blocks")}:
            # The key gained a column, which neither database alters in place. Blocks are backoff, not
            # intent: starting them afresh costs at most one more try of a slot that was short.
            blocks.drop(conn)
            blocks.create(conn)


def _json_type(engine: Engine) -> str:
    """The JSON column type as create_all spells it on this database."""
    return str(JSON().compile(dialect=engine.dialect))


def _service(row: Row[Any]) -> ServiceRecord:
    fields = {k: v for k, v in row._asdict().items() if k != "scale"}  # read with get_scale
    return ServiceRecord(**{**fields, "pinned_regions": tuple(row.pinned_regions)})


def _block_key(region: str, gpu: str, capacity: Capacity) -> tuple[Any, ...]:
    return (blocks.c.region == region, blocks.c.gpu == gpu, blocks.c.capacity == capacity.value)


def _block(row: Row[Any]) -> Block:
    return Block(**{**row._asdict(), "capacity": Capacity(row.capacity)})


def _replica(row: Row[Any]) -> Replica:
    return Replica(**{**row._asdict(), "state": ReplicaState(row.state), "capacity": Capacity(row.capacity)})
