"""The LoRAs, embeddings, VAEs and checkpoints a worker found in its directories, and their use in a batch.

Scans (at start and on the refresh routes) build indexes by name; requests name assets and are looked up
in them, never in the file system (worker/discovery.py). Everything that changes the pipeline happens on
the device thread, between or around batches (`applied`):

- embeddings are written into rows kept for them in the token table (worker/embeddings.py) at start and
  on a refresh, between batches, so every batch shares them; the service spells prompts with `spelled`;
- a batch's VAE is copied into the pipeline's VAE when it differs from the last batch's;
- a batch's LoRAs are merged into the weights for that batch and taken out after (worker/lora.py).

While the weights differ from the checkpoint's, the compiled graphs of the changed modules stand aside
and the batch runs eagerly (as a tiled batch does): such a batch's images never depend on how a graph
holds weights. Weights are changed in place (no tensor is replaced); graphs read weights where they live
(Inductor does not freeze them; a CUDA graph reads them at their address), so a graph built meanwhile
serves later batches as well. Each write holds `weights` (graphs.WeightWrites) for the milliseconds it
takes, so the compile thread never checks a graph across a change, and a batch never waits for a compile.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections import Counter, OrderedDict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from diffusers.pipelines.pipeline_utils import DiffusionPipeline

from gpuroam.worker import embeddings, lora, vae
from gpuroam.worker.checkpoints import SINGLE_FILE_SUFFIXES
from gpuroam.worker.config import WorkerConfig
from gpuroam.worker.discovery import Found, OutsideDirectory, checked, scan
from gpuroam.worker.extra_networks import ParsedPrompt
from gpuroam.worker.graphs import GraphedForward, WeightWrites
from gpuroam.worker.schemas import RequestError

log = logging.getLogger("gpuroam.worker.library")

LORA_SUFFIXES = (".safetensors", ".pt", ".ckpt")
LORAS_KEPT = 8  # LoRA files kept read beyond those in use, most recently used first
Networks = tuple[tuple[str, float, float], ...]  # (LoRA name, te multiplier, unet multiplier), a BatchKey field


@dataclass(frozen=True)
class AssetDirs:
    """Where assets are found (A1111's --lora-dir, --embeddings-dir, --vae-dir, --ckpt-dir)."""

    lora: Path | None = None
    embeddings: Path | None = None
    vae: Path | None = None
    ckpt: Path | None = None

    @classmethod
    def of(cls, config: WorkerConfig) -> AssetDirs:
        def path(value: str | None) -> Path | None:
            return Path(value) if value else None

        return cls(path(config.lora_dir), path(config.embeddings_dir), path(config.vae_dir), path(config.ckpt_dir))


@dataclass(frozen=True)
class LoraFile:
    name: str
    alias: str
    found: Found
    metadata: dict[str, str]

    def as_a1111(self) -> dict[str, Any]:
        return {"name": self.name, "alias": self.alias, "path": str(self.found.path), "metadata": self.metadata}


class AssetLibrary:
    """Indexes of what the directories hold; the pipeline's state as the device thread left it."""

    def __init__(self, dirs: AssetDirs) -> None:
        self.dirs = dirs
        self.loras: dict[str, LoraFile] = {}
        self._lora_aliases: dict[str, LoraFile] = {}
        self.vaes: dict[str, Found] = {}
        self.checkpoints: dict[str, Found] = {}
        self.embeddings: dict[str, embeddings.Embedding] = {}
        self.skipped: dict[str, embeddings.Embedding] = {}
        self._pipeline: DiffusionPipeline | None = None
        self._installed: dict[str, embeddings.Embedding] = {}
        self.spelled = embeddings.Spelling(())  # a prompt with its embeddings' names as their tokens
        self._read: OrderedDict[str, tuple[float, lora.LoraNetwork]] = OrderedDict()  # by name: mtime, network
        self._held: Counter[str] = Counter()  # LoRAs that requests in flight use: never dropped
        self._lock = threading.Lock()  # `_read` and `_held`: filled by worker threads, read by the device thread
        self._index: dict[str, lora.Target] = {}
        self._own_vae: dict[str, torch.Tensor] = {}
        self._vae_in_use: str | None = ""  # None: unknown (a load that failed part way)
        self.weights = WeightWrites()  # every in-place weight write, exclusive with the graphs' checks
        self.refresh_loras()
        self.refresh_vaes()
        self.refresh_checkpoints()

    # --- scans -----------------------------------------------------------------------------------

    def refresh_loras(self) -> None:
        loras: dict[str, LoraFile] = {}
        aliases: dict[str, LoraFile] = {}
        for found in scan(self.dirs.lora, LORA_SUFFIXES):
            metadata = lora.read_metadata(found.path)
            entry = LoraFile(found.stem, metadata.get("ss_output_name") or found.stem, found, metadata)
            loras[entry.name] = entry
            aliases.setdefault(entry.alias, entry)
        self.loras, self._lora_aliases = loras, aliases

    def refresh_vaes(self) -> None:
        """A1111 names a VAE by its file name, suffix included."""
        self.vaes = {Path(found.relative).name: found for found in scan(self.dirs.vae, vae.SUFFIXES)}

    def refresh_checkpoints(self) -> None:
        """A1111 names a checkpoint by its path under the directory."""
        self.checkpoints = {found.relative: found for found in scan(self.dirs.ckpt, SINGLE_FILE_SUFFIXES)}

    def read_embeddings(self) -> tuple[dict[str, embeddings.Embedding], dict[str, embeddings.Embedding]]:
        """The directory's embeddings: those that fit the loaded model, and the rest (A1111 lists them as skipped);
        off the device thread. `use_embeddings` puts them to use."""
        loaded: dict[str, embeddings.Embedding] = {}
        skipped: dict[str, embeddings.Embedding] = {}
        if self._pipeline is None or self.dirs.embeddings is None:
            return loaded, skipped
        widths = embeddings.expected_widths(self._pipeline)
        for found in scan(self.dirs.embeddings, embeddings.SUFFIXES):
            try:
                embedding = embeddings.read_embedding(checked(found, self.dirs.embeddings), found.stem)
            except (embeddings.EmbeddingError, OutsideDirectory) as error:
                log.warning("embedding not read", extra={"file": found.relative, "error": str(error)})
                continue
            (loaded if embeddings.fits(embedding, widths) else skipped)[embedding.name] = embedding
        return loaded, skipped

    def use_embeddings(self, loaded: dict[str, embeddings.Embedding], skipped: dict[str, embeddings.Embedding]) -> None:
        """On the device thread, between batches: teach the model the new and changed embeddings, make those
        whose file is gone mean nothing, and spell prompts with those installed from now on."""
        assert self._pipeline is not None
        installed: dict[str, embeddings.Embedding] = {}
        with self.weights.changing():
            for name in [name for name in self._installed if name not in loaded]:
                embeddings.forget(self._pipeline, self._installed.pop(name))
            for name, embedding in loaded.items():
                try:
                    if any(other.lower() == name.lower() for other in installed):
                        raise embeddings.EmbeddingError(f"{name}: another file has this name in another case")
                    if self._installed.get(name) is not embedding:
                        embeddings.install(self._pipeline, embedding)
                except embeddings.EmbeddingError as error:  # not spelled, so its old rows (if any) are unused
                    log.warning("embedding not installed", extra={"embedding": name, "error": str(error)})
                    continue
                installed[name] = self._installed[name] = embedding
        self.embeddings, self.skipped = installed, skipped
        self.spelled = embeddings.Spelling(installed.values())

    # --- what a request asks for -----------------------------------------------------------------

    def networks(self, prompt: ParsedPrompt) -> Networks:
        """The LoRAs of a prompt that exist, by file name or alias (a file named both ways counts once, its
        multipliers summed); unknown ones are logged once per prompt and left out (A1111's "Networks not
        found"), so the image is made without them, as are other kinds of tag."""
        if prompt.other_kinds:
            log.warning("extra network kind not supported", extra={"kinds": sorted(set(prompt.other_kinds))[:8]})
        known: dict[str, tuple[float, float]] = {}
        unknown: list[str] = []
        for use in prompt.loras:
            entry = self.loras.get(use.name) or self._lora_aliases.get(use.name)
            if entry is None:
                unknown.append(use.name[:128])
                continue
            te, unet = known.get(entry.name, (0.0, 0.0))
            known[entry.name] = (te + use.te, unet + use.unet)
        if unknown:
            log.warning("LoRA not found", extra={"loras": unknown, "known": len(self.loras)})
        return tuple((name, te, unet) for name, (te, unet) in known.items())

    def vae_name(self, value: object, field_name: str) -> str:
        """A1111's sd_vae setting as a batch's VAE: "" for the checkpoint's own, else a listed file name."""
        if value in vae.OWN or value == "":
            return ""
        if isinstance(value, str) and value in self.vaes:
            return value
        choices = ", ".join([*vae.OWN, *self.vaes][:20])
        raise RequestError(field_name, f"sd_vae {str(value)[:128]!r} is not a VAE of this worker; use one of {choices}")

    # --- the pipeline, on the device thread -------------------------------------------------------

    def attach(self, pipeline: DiffusionPipeline) -> None:
        """Before anything is compiled, for the directories given: keep token rows for embeddings and install
        those found, keep a copy of the checkpoint's own VAE, index the layers LoRAs name."""
        self._pipeline = pipeline
        if self.dirs.embeddings is not None:
            embeddings.reserve(pipeline)
            self.use_embeddings(*self.read_embeddings())
        if self.dirs.vae is not None:
            self._own_vae = vae.own_weights(pipeline.vae)
        if self.dirs.lora is not None:
            self._index = lora.layer_index(pipeline)

    def checkpoint_changed(self) -> None:
        """The served weights are another checkpoint's (worker/checkpoint_switch.py): its VAE is the own one."""
        if self._pipeline is not None and self.dirs.vae is not None:
            self._own_vae = vae.own_weights(self._pipeline.vae)
        self._vae_in_use = ""

    @contextlib.contextmanager
    def applied(self, networks: Networks, vae_name: str, graphs: Sequence[GraphedForward]) -> Iterator[None]:
        """Around one batch: new embeddings installed, the batch's VAE in place, its LoRAs merged; the graphs
        of the modules that differ from the checkpoint's stand aside meanwhile."""
        pipeline = self._pipeline
        if pipeline is None:
            yield
            return
        with self.weights.changing():
            self._use_vae(pipeline, vae_name)
        read = [(network, te, unet) for name, te, unet in networks if (network := self._network(name)) is not None]
        aside = ({"unet", "text encoder"} if read else set()) | ({"vae decoder"} if vae_name else set())
        with _standing_aside(graphs, aside), lora.merged(pipeline, read, self._index, self.weights):
            yield

    def _use_vae(self, pipeline: DiffusionPipeline, name: str) -> None:
        if name == self._vae_in_use:
            return
        found = self.vaes.get(name)
        state = self._own_vae
        if name and found is not None and self.dirs.vae is not None:
            try:
                state = vae.read_vae(checked(found, self.dirs.vae), pipeline.vae)
            except (vae.VaeError, OutsideDirectory) as error:
                log.error("VAE not loaded; the checkpoint's own is used", extra={"vae": name, "error": str(error)})
                state, name = self._own_vae, ""
        self._vae_in_use = None  # until the load is whole: one that fails part way is redone next batch
        vae.load_into(pipeline.vae, state)
        self._vae_in_use = name
        log.info("VAE in use", extra={"vae": name or "checkpoint's own"})

    def hold(self, networks: Networks) -> None:
        """Read a request's LoRA files (again only when one changed) and keep them until `release`; on a worker
        thread, before the request's batches queue, so a batch on the device thread never waits on disk. A file
        that cannot be read is logged, once, and the image is made without it."""
        for name, _, _ in networks:
            network = self._read_file(name)
            with self._lock:
                self._held[name] += 1
                if network is not None:
                    self._read[name] = network
                    self._read.move_to_end(name)

    def release(self, networks: Networks) -> None:
        """The request's batches are done: its LoRAs may be dropped, least recently used first, beyond LORAS_KEPT."""
        with self._lock:
            for name, _, _ in networks:
                self._held[name] -= 1
                if self._held[name] <= 0:
                    del self._held[name]
            idle = [name for name in self._read if name not in self._held]
            for name in idle[: max(0, len(idle) - LORAS_KEPT)]:
                del self._read[name]

    def _read_file(self, name: str) -> tuple[float, lora.LoraNetwork] | None:
        entry = self.loras.get(name)
        if entry is None or self.dirs.lora is None:
            return None
        try:
            path = checked(entry.found, self.dirs.lora)
            mtime = path.stat().st_mtime
            with self._lock:
                kept = self._read.get(name)
            return kept if kept is not None and kept[0] == mtime else (mtime, lora.read_lora(path, name))
        except (lora.LoraError, OutsideDirectory, OSError) as error:
            log.error("LoRA not loaded; the image is made without it", extra={"lora": name, "error": str(error)})
            return None

    def _network(self, name: str) -> lora.LoraNetwork | None:
        """The LoRA as `hold` read it (on the device thread: no file is touched); None if it could not be."""
        with self._lock:
            kept = self._read.get(name)
        return None if kept is None else kept[1]

    # --- A1111's answers ---------------------------------------------------------------------------

    def loras_as_a1111(self) -> list[dict[str, Any]]:
        return [entry.as_a1111() for entry in self.loras.values()]

    def vaes_as_a1111(self) -> list[dict[str, str]]:
        return [{"model_name": name, "filename": str(found.path)} for name, found in self.vaes.items()]

    def embeddings_as_a1111(self) -> dict[str, dict[str, Any]]:
        return {
            "loaded": {name: embedding.as_a1111() for name, embedding in self.embeddings.items()},
            "skipped": {name: embedding.as_a1111() for name, embedding in self.skipped.items()},
        }


@contextlib.contextmanager
def _standing_aside(graphs: Sequence[GraphedForward], names: set[str]) -> Iterator[None]:
    """The named graphs run their eager module within the block (each as it was after)."""
    chosen = [graph for graph in graphs if graph.name in names]
    before = [graph.eager_only for graph in chosen]
    for graph in chosen:
        graph.eager_only = True
    try:
        yield
    finally:
        for graph, was in zip(chosen, before):
            graph.eager_only = was
