"""Each router of the control-plane API works alone, on a bare app that holds only its context."""

from __future__ import annotations

from fakes import FakeProvider
from fastapi import FastAPI
from fastapi.testclient import TestClient

from gpuroam.catalog import load_catalog
from gpuroam.controller.api import ApiContext, GatewayAddress, chaos, gateway, services
from gpuroam.controller.store import Store
from gpuroam.spec import load_spec, spec_to_dict

SITES = {"us-central1": {"nvidia-l4": 1}}


def bare(router_module: object, store: Store, gateway_at: GatewayAddress | None = None) -> TestClient:
    app = FastAPI()
    app.state.gpuroam = ApiContext(store, FakeProvider({**SITES}), load_catalog(), "t0ken", gateway_at)
    app.include_router(router_module.router)  # type: ignore[attr-defined]
    return TestClient(app)


def test_the_services_router_alone_stores_a_spec_and_shows_it(store: Store) -> None:
    client = bare(services, store, GatewayAddress("127.0.0.1", 9100))
    spec = spec_to_dict(load_spec("examples/stable-diffusion.yaml"))
    created = client.post("/api/v1/services", json=spec)
    assert created.status_code == 201 and created.json()["endpoint"] == "http://127.0.0.1:9100"
    assert [s["name"] for s in client.get("/api/v1/status").json()["services"]] == ["stable-diffusion"]
    assert store.list_events()[-1].kind.value == "up"


def test_the_services_router_alone_shrinks_only_a_region_expand_added(store: Store) -> None:
    client = bare(services, store)
    client.post("/api/v1/services", json=spec_to_dict(load_spec("examples/stable-diffusion.yaml")))
    path = "/api/v1/services/stable-diffusion"
    nothing = client.post(f"{path}/shrink", json={"region": "us-central1"})
    assert nothing.status_code == 422 and "regions added by expand: none" in nothing.json()["detail"]
    assert client.post(f"{path}/expand", json={"region": "us-central1"}).json()["pinned_regions"] == ["us-central1"]
    other = client.post(f"{path}/shrink", json={"region": "europe-west4"})
    assert other.status_code == 422, other.text
    assert "'europe-west4' was not added by `gpuroam expand`" in other.json()["detail"]
    assert "regions added by expand: us-central1" in other.json()["detail"]
    shrunk = client.post(f"{path}/shrink", json={"region": "us-central1"})
    assert shrunk.status_code == 200 and shrunk.json()["pinned_regions"] == []
    event = store.list_events()[-1]
    assert (event.kind.value, event.region) == ("shrunk", "us-central1")
    assert client.post("/api/v1/services/nope/shrink", json={"region": "us-central1"}).status_code == 404
    for bad in ("", "x" * 100_000):
        refused = client.post(f"{path}/shrink", json={"region": bad})
        assert refused.status_code == 422 and refused.json()["detail"][0]["loc"] == ["body", "region"]


def test_the_gateway_feed_router_alone_lists_each_service_port(store: Store) -> None:
    client = bare(gateway, store)
    store.put_service("sd", {"name": "sd"}, 1.0)
    store.assign_gateway_port("sd", 9200)
    no_limits = {"requests_per_minute": None, "images_per_day": None, "max_in_flight": None}
    fed = {
        "name": "sd",
        "port": 9200,
        "backends": [],
        "api_keys": {},
        "key_required": False,
        "limits": no_limits,
        "tls": None,
    }  # open, unlimited, plain HTTP
    assert client.get("/api/v1/gateway").json() == {"services": [fed]}


def test_the_chaos_router_alone_says_when_the_provider_has_no_chaos_controls(store: Store) -> None:
    answer = bare(chaos, store).post("/api/v1/chaos/fail", json={"region": "us-central1"})
    assert answer.status_code == 400 and "no chaos controls" in answer.json()["detail"]
    answer = bare(chaos, store).post("/api/v1/chaos/preempt", json={"region": "us-central1", "notice_s": 10})
    assert answer.status_code == 400 and "no chaos controls" in answer.json()["detail"]
    assert bare(chaos, store).post("/api/v1/chaos/preempt", json={"notice_s": -1}).status_code == 422


def test_the_metrics_router_alone_shows_what_each_service_wants_has_and_costs(store: Store) -> None:
    from gpuroam.autoscale import Scale
    from gpuroam.controller.api import metrics
    from gpuroam.records import Replica, ReplicaState

    spec = spec_to_dict(load_spec("examples/stable-diffusion.yaml"))
    store.put_service("stable-diffusion", spec, 1.0)
    store.put_scale("stable-diffusion", Scale(desired=3, reason="scaled up", changed_at=1.0))
    from gpuroam.records import Capacity, Event, EventKind

    spot = (Capacity.ON_DEMAND, Capacity.SPOT, Capacity.ON_DEMAND)
    for i, state in enumerate((ReplicaState.READY, ReplicaState.PROVISIONING, ReplicaState.FAILED)):
        replica = Replica(f"r{i}", "stable-diffusion", "us-central1", "nvidia-l4", state, 1.0, 1.0, capacity=spot[i])
        store.add_replica(replica)
    store.add_event(Event(ts=2.0, kind=EventKind.PREEMPTED, message="r9 preempted", service="stable-diffusion"))
    text = bare(metrics, store).get("/api/v1/metrics").text
    assert 'gpuroam_service_desired_replicas{service="stable-diffusion"} 3.0' in text
    ready = 'gpuroam_service_ready_replicas{capacity="on-demand",gpu="nvidia-l4",region="us-central1",'
    assert ready + 'service="stable-diffusion"} 1.0' in text
    price = load_catalog().price("us-central1", "nvidia-l4")
    spot_price = load_catalog().spot_price("us-central1", "nvidia-l4")
    cost, all_on_demand = round(price + spot_price, 6), 2 * price
    assert f'gpuroam_service_cost_dollars_per_hour{{service="stable-diffusion"}} {cost}' in text, "one each, live"
    assert f'gpuroam_service_on_demand_cost_dollars_per_hour{{service="stable-diffusion"}} {all_on_demand}' in text
    assert 'gpuroam_events_total{kind="preempted",service="stable-diffusion"} 1.0' in text


def test_status_gives_each_replica_its_capacity_and_price_and_keeps_every_key(store: Store) -> None:
    from gpuroam.records import Capacity, Replica, ReplicaState

    catalog = load_catalog()
    spec = spec_to_dict(load_spec("examples/stable-diffusion.yaml"))
    spec["resources"]["gpu_count"] = 2
    store.put_service("stable-diffusion", spec, 1.0)
    rows = [
        ("od", "us-central1", "nvidia-l4", Capacity.ON_DEMAND),
        ("sp", "europe-west4", "nvidia-tesla-t4", Capacity.SPOT),
        ("nowhere", "local-x", "nvidia-l4", Capacity.ON_DEMAND),  # a site the catalog does not know
    ]
    for id, region, gpu, capacity in rows:
        store.add_replica(Replica(id, "stable-diffusion", region, gpu, ReplicaState.READY, 1.0, 1.0, capacity=capacity))
    client = bare(services, store)
    replicas = {r["id"]: r for r in client.get("/api/v1/status").json()["services"][0]["replicas"]}
    kept = {"id", "region", "gpu", "state", "url", "reason", "age_s", "ready_at"}  # what users rely on
    assert all(kept | {"capacity", "price_per_hour"} <= set(r) for r in replicas.values())
    assert (replicas["od"]["capacity"], replicas["od"]["price_per_hour"]) == (
        "on-demand",
        2 * catalog.price("us-central1", "nvidia-l4"),
    )
    assert (replicas["sp"]["capacity"], replicas["sp"]["price_per_hour"]) == (
        "spot",
        2 * catalog.spot_price("europe-west4", "nvidia-tesla-t4"),
    )
    assert replicas["nowhere"]["price_per_hour"] is None, "no price known is said, not made up"
    service = client.get("/api/v1/status").json()["services"][0]
    assert service["cost_per_hour"] == round(replicas["od"]["price_per_hour"] + replicas["sp"]["price_per_hour"], 4)
    listed = {r["id"]: (r["capacity"], r["price_per_hour"]) for r in client.get("/api/v1/replicas").json()}
    assert listed == {id: (r["capacity"], r["price_per_hour"]) for id, r in replicas.items()}
