"""The regional text-to-image worker: an A1111-compatible API with cross-request batching."""

from gpuroam.worker.app import create_app
from gpuroam.worker.config import WorkerConfig
from gpuroam.worker.models import LoadedModel, load_model

__all__ = ["LoadedModel", "WorkerConfig", "create_app", "load_model"]
