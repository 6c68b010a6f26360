"""The compiled artefact in a worker's life: loaded before the first compile, written once all is built.

`use_artefact` is what every worker does at start; `build_cache` is `gpuroam worker --build-cache`,
which a user (or an image build) runs once per GPU type to have the artefact before any replica starts.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

from gpuroam.worker.accelerate import acceleration_for
from gpuroam.worker.artefact import load_artefact, save_artefact
from gpuroam.worker.config import WorkerConfig
from gpuroam.worker.engine import Engine
from gpuroam.worker.models import load_model, resolve_device
from gpuroam.worker.warmup import Need

log = logging.getLogger("gpuroam.worker.prebuild")


def use_artefact(engine: Engine) -> tuple[tuple[int, int], ...]:
    """Find the artefact in the engine's compile cache that matches it (its packages are then loaded, not
    compiled) and have the compile thread record one when it has built sizes the found one lacked. Returns
    the sizes the found artefact covers, for the engine to plan after its own."""
    if engine.warmup is None or engine.packages is None:
        return ()
    acceleration, key = engine.acceleration, engine.packages.key
    loaded = load_artefact(acceleration.cache_dir, key)
    covered = set(loaded.sizes) if loaded else set()

    def write(sizes: list[tuple[int, int]]) -> None:
        if not set(sizes) <= covered:
            save_artefact(acceleration.cache_dir, key, sizes)
            covered.update(sizes)

    engine.warmup.on_done = write
    return loaded.sizes if loaded else ()


def build_cache(config: WorkerConfig, progress: Callable[[str], None]) -> Path | None:
    """Load the model, build every graph of the common sizes now, and write the artefact; its path, or
    None when nothing was compiled (`--compile none`, or a CPU without `--compile`)."""
    model = load_model(config.model, resolve_device(config.device))
    engine = Engine(model, acceleration_for(config, model.device))
    if engine.warmup is None or engine.packages is None:
        return None
    acceleration, key = engine.acceleration, engine.packages.key
    extra = load_artefact(acceleration.cache_dir, key)
    engine.warm_up(extra.sizes if extra else ())
    total = engine.warmup.pending
    progress(f"{total} graphs to build for {model.title} on {model.device} (compile {acceleration.compile_mode})")

    def built(need: Need, seconds: float, pending: int) -> None:
        progress(f"[{total - pending}/{total}] {need[0].name}: {seconds:.1f} s")

    try:
        engine.warmup.build_all(built)
    finally:
        engine.packages.close()
    return save_artefact(acceleration.cache_dir, key, engine.warmup.planned_sizes())
