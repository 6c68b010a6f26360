"""The worker's HTTP app: the A1111 API, the Web UI page, /internal/ping and /metrics.

The model loads in the background after the server starts listening, so an orchestrator can
see the process is up; /internal/ping answers 200 only once the model is ready.
"""

from __future__ import annotations

from fastapi import FastAPI

from gpuroam import __version__
from gpuroam.worker.auth import api_auth_dependencies
from gpuroam.worker.checkpoint_switch import CheckpointLoader
from gpuroam.worker.checkpoints import load_checkpoint
from gpuroam.worker.config import WorkerConfig
from gpuroam.worker.errors import install_error_handlers
from gpuroam.worker.lifespan import model_lifespan
from gpuroam.worker.middleware import WorkerMiddleware
from gpuroam.worker.models import LoadedModel
from gpuroam.worker.routes import internal, sdapi, utilities, webui
from gpuroam.worker.state import WorkerState


def create_app(
    config: WorkerConfig, model: LoadedModel | None = None, load_checkpoint: CheckpointLoader = load_checkpoint
) -> FastAPI:
    """`model` may be given preloaded (tests share one); else it loads in the background. `load_checkpoint`
    reads a checkpoint of --ckpt-dir to switch to (tests read tiny ones)."""
    state = WorkerState(config, load_checkpoint)
    app = FastAPI(title="gpuroam worker (A1111-compatible)", version=__version__, lifespan=model_lifespan(state, model))
    app.state.worker = state
    app.add_middleware(WorkerMiddleware, metrics=state.metrics, max_body_bytes=config.max_body_bytes)
    app.mount("/static", webui.static_files(), name="static")
    install_error_handlers(app)
    webui.add_routes(app.router)
    internal.add_routes(app.router)
    sdapi.add_routes(app.router, dependencies=api_auth_dependencies(config))
    utilities.add_routes(app.router, dependencies=api_auth_dependencies(config))
    return app
