"""What the routes share, and the FastAPI dependencies that hand it to them.

`create_app` keeps one `WorkerState` on `app.state.worker`; a route asks for it (or for the ready
service) with a parameter typed `SharedState` or `ReadyService`. No route closes over the app, so
each router serves any FastAPI app that carries a state, a bare one in a test included.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated

from fastapi import Depends, HTTPException, Request

from gpuroam.worker.checkpoint_switch import CheckpointLoader, Switcher
from gpuroam.worker.checkpoints import load_checkpoint
from gpuroam.worker.config import WorkerConfig
from gpuroam.worker.graphs import GraphedForward
from gpuroam.worker.library import AssetDirs, AssetLibrary
from gpuroam.worker.metrics import WorkerMetrics
from gpuroam.worker.service import GenerationService
from gpuroam.worker.warmup import Warmup

LOADING_RETRY_AFTER_S = 5


class WorkerState:
    """The config, the metrics, the assets and the service; `service` is None until the model is loaded."""

    def __init__(self, config: WorkerConfig, load_checkpoint: CheckpointLoader = load_checkpoint) -> None:
        self.config = config
        self.switcher = Switcher(load_checkpoint)  # sd_model_checkpoint on the worker's own port
        self.metrics = WorkerMetrics()
        self.service: GenerationService | None = None
        self.load_error: str | None = None
        self.warmup: Warmup | None = None  # the fast path's compile thread, while and after it builds
        self.assets = AssetLibrary(AssetDirs.of(config))  # what --lora-dir and the others hold

    def watch_warmup(self, warmup: Warmup) -> None:
        self.warmup = warmup
        self.metrics.graphs_built.set_function(lambda: warmup.built)
        self.metrics.graphs_pending.set_function(lambda: warmup.pending)
        self.metrics.warmth.set_function(warmup.warmth)

    def watch_graphs(self, graphs: Sequence[GraphedForward]) -> None:
        self.metrics.watch_module_calls(lambda: {graph.name: dict(graph.calls) for graph in graphs})

    @property
    def warmth(self) -> float:
        """Current speed as a share of full speed (1 without a fast path, or once its first size is built)."""
        return 1.0 if self.warmup is None else self.warmup.warmth()

    @property
    def unavailable_reason(self) -> str:
        return f"model failed to load: {self.load_error}" if self.load_error else "model is loading; retry shortly"

    @property
    def retry_headers(self) -> dict[str, str]:
        """When a client that found no model should try again."""
        return {"Retry-After": str(LOADING_RETRY_AFTER_S)}

    def require_service(self) -> GenerationService:
        if self.service is None:
            raise HTTPException(503, detail=self.unavailable_reason, headers=self.retry_headers)
        return self.service


def worker_state(request: Request) -> WorkerState:
    """The state `create_app` put on the app; a router mounted without one fails loudly, not with a 500 later."""
    state = getattr(request.app.state, "worker", None)
    if not isinstance(state, WorkerState):
        raise TypeError("app.state.worker holds no WorkerState; build the app with create_app or set one first")
    return state


SharedState = Annotated[WorkerState, Depends(worker_state)]


def ready_service(state: SharedState) -> GenerationService:
    """The generation service, or a 503 with Retry-After while the model loads (or after it failed to)."""
    return state.require_service()


ReadyService = Annotated[GenerationService, Depends(ready_service)]
