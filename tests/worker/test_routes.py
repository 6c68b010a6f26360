"""Each route module alone on a bare FastAPI app: the routes need only a WorkerState on app.state (and,
for generation, the ready service), so they are tested here without create_app, a model or a batcher."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from gpuroam.worker import WorkerConfig
from gpuroam.worker.auth import api_auth_dependencies
from gpuroam.worker.routes import internal, sdapi
from gpuroam.worker.state import WorkerState, ready_service


def bare_app(config: WorkerConfig) -> tuple[FastAPI, WorkerState]:
    """No lifespan, so no model ever loads: the state's service stays None unless a test stands one in."""
    app = FastAPI()
    app.state.worker = WorkerState(config)
    return app, app.state.worker


def test_internal_routes_alone_report_a_worker_still_loading() -> None:
    app, _ = bare_app(WorkerConfig(region="eu-west4", gpu="nvidia-l4", replica="r7"))
    internal.add_routes(app.router)
    client = TestClient(app)
    ping = client.get("/internal/ping")
    assert ping.status_code == 503 and ping.headers["retry-after"] == "5"
    assert ping.json()["detail"] == "model is loading; retry shortly"
    info = client.get("/gpuroam/worker").json()
    assert info["region"] == "eu-west4" and info["replica"] == "r7"
    assert info["ready"] is False and info["model"] == "tiny" and info["queued_images"] == 0
    assert "gpuroam_worker_model_loaded 0.0" in client.get("/metrics").text


def test_a_warming_worker_is_ready_and_says_how_fast_it_is_meanwhile() -> None:
    """Serving eagerly while its graphs compile: ping is 200 with its warmth, for the gateway to weigh it by."""
    from gpuroam.worker.warmup import EAGER_SPEED_SHARE, GraphShape, Warmup

    app, state = bare_app(WorkerConfig())
    internal.add_routes(app.router)
    state.service = SimpleNamespace(
        model=SimpleNamespace(title="m", device="cpu"), batcher=SimpleNamespace(queued_images=0)
    )  # type: ignore[assignment]
    warmup = Warmup()
    never_built = SimpleNamespace(runners={}, failed={}, built=lambda key: False)
    warmup.plan(GraphShape(512, 512, 1), [(never_built, ("sig",), lambda: ((), {}))], first=True)  # type: ignore[list-item]
    state.watch_warmup(warmup)
    client = TestClient(app)
    ping = client.get("/internal/ping")
    assert ping.status_code == 200 and float(ping.headers["x-gpuroam-warmth"]) == EAGER_SPEED_SHARE
    info = client.get("/gpuroam/worker").json()
    assert info["warmth"] == EAGER_SPEED_SHARE and info["graphs_pending"] == 1 and info["graphs_built"] == 0
    metrics = client.get("/metrics").text
    assert "gpuroam_worker_graphs_pending 1.0" in metrics and f"gpuroam_worker_warmth {EAGER_SPEED_SHARE}" in metrics
    never_built.runners[("sig",)] = print
    assert client.get("/internal/ping").headers["x-gpuroam-warmth"] == "1.0"


def test_metrics_count_each_modules_calls_by_path() -> None:
    """Built graphs that go unused (a replica at eager speed for no visible reason) show on /metrics."""
    app, state = bare_app(WorkerConfig())
    internal.add_routes(app.router)
    unet = SimpleNamespace(name="unet", calls={"compiled": 3, "eager": 1})
    state.watch_graphs([unet])  # type: ignore[list-item]
    unet.calls["compiled"] += 1
    metrics = TestClient(app).get("/metrics").text
    assert 'gpuroam_worker_module_calls_total{module="unet",path="compiled"} 4.0' in metrics
    assert 'gpuroam_worker_module_calls_total{module="unet",path="eager"} 1.0' in metrics


def test_internal_ping_names_the_load_error() -> None:
    app, state = bare_app(WorkerConfig())
    internal.add_routes(app.router)
    state.load_error = "CheckpointError: checkpoint not found"
    assert TestClient(app).get("/internal/ping").json()["detail"] == "model failed to load: " + state.load_error


def test_sdapi_routes_alone_answer_without_a_service_where_a1111_does() -> None:
    app, _ = bare_app(WorkerConfig())
    sdapi.add_routes(app.router)
    client = TestClient(app)
    assert "Euler a" in [sampler["name"] for sampler in client.get("/sdapi/v1/samplers").json()]
    assert client.get("/sdapi/v1/progress").json()["state"]["job"] == ""
    assert client.post("/sdapi/v1/interrupt", params={"id_task": "x"}).json() == {}
    loading = client.get("/sdapi/v1/options").json()
    assert len(loading) == 329 and loading["sd_model_checkpoint"] is None, "A1111's settings, no model yet"
    busy = client.post("/sdapi/v1/txt2img", json={"prompt": "a cat"})
    assert busy.status_code == 503 and busy.headers["retry-after"] == "5"


def test_sdapi_routes_take_the_service_from_the_dependency() -> None:
    app, _ = bare_app(WorkerConfig())
    sdapi.add_routes(app.router)
    model = SimpleNamespace(title="m [0123456789]", name="m", short_hash="0123456789", sha256="0123" * 16, filename="m")
    app.dependency_overrides[ready_service] = lambda: SimpleNamespace(
        model=model, assets=SimpleNamespace(checkpoints={})
    )
    assert TestClient(app).get("/sdapi/v1/sd-models").json() == [
        {
            "title": "m [0123456789]",
            "model_name": "m",
            "hash": "0123456789",
            "sha256": "0123" * 16,
            "filename": "m",
            "config": None,
        }
    ]


def test_sdapi_routes_alone_are_guarded_by_the_dependencies_they_are_given() -> None:
    config = WorkerConfig(api_auth=(("alice", "s3cret"),))
    app, _ = bare_app(config)
    sdapi.add_routes(app.router, dependencies=api_auth_dependencies(config))
    client = TestClient(app)
    assert client.get("/sdapi/v1/scripts").status_code == 401
    assert client.get("/sdapi/v1/scripts", auth=("alice", "s3cret")).json() == {
        "txt2img": [],
        "img2img": ["sd upscale"],
    }


def test_a_route_on_an_app_without_a_worker_state_fails_loudly() -> None:
    app = FastAPI()
    internal.add_routes(app.router)
    with pytest.raises(TypeError, match="no WorkerState"):
        TestClient(app).get("/internal/ping")
