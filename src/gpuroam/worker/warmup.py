"""The compile thread: the engine's graphs built in the background, the most useful first.

A replica serves as soon as its model is on the device, eagerly; this thread has a graph built for
each planned batch shape (by the compile process, or found in the compile cache: worker/packages.py)
and puts it to use as soon as it is checked. The plan starts with the
common sizes (the first one's batch sizes first: one image, then the largest batch, then the rest),
and grows with the sizes clients ask for more than once; among those, the most requested go first.
On CUDA every planned signature first gets the eager module captured (graphs.py), all of them before
the first compile.

The thread mostly waits for the compile process, holding no lock and not the GIL: a compile in this
process held the interpreter for minutes, and each op of an eager forward on the device thread waited
for it (574x as long on an H100 at the default switch interval; bench/gil_convoy.py).
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch

from gpuroam.worker.graphs import GraphedForward, Inputs, Signature

log = logging.getLogger("gpuroam.worker.warmup")

# Eager speed as a share of compiled speed, for a replica that is still compiling: 0.23 for one
# image and 0.69 at batch 32 on an H200 (bench/RESULTS.md, issue 8).
EAGER_SPEED_SHARE = 0.4
WORTH_COMPILING = 2  # requests at a size not in the plan before its graphs are built
MAX_LEARNED_SIZES = 16  # sizes added to the plan from requests; each holds its graphs' memory
# Sizes one caller of the endpoint can have learned: a caller sending many odd sizes cannot take every slot
# (and the compile time) from the others. The worker's own port ("" caller, one local user) is not limited.
MAX_LEARNED_PER_CALLER = 4


@dataclass(frozen=True)
class GraphShape:
    """One batch the engine runs: `batch` images of `width` x `height` at a clip skip."""

    width: int
    height: int
    batch: int
    clip_skip: int = 1

    @property
    def size(self) -> tuple[int, int]:
        return self.width, self.height

    @property
    def group(self) -> tuple[int, int, int]:
        """The shapes that differ only in batch: one recorded batch plans them all."""
        return self.width, self.height, self.clip_skip


# A graph to build: the module, the signature, and how to make example inputs for it (when it is built).
Need = tuple[GraphedForward, Signature, Callable[[], Inputs]]


@dataclass
class _Planned:
    shape: GraphShape
    needs: list[Need]
    order: int
    first: bool  # a shape of the first common size: it decides when the replica is at full speed


class Warmup:
    """The plan of graphs and the thread that builds them; `ready` and `plan` are called from the
    device thread, everything else from the compile thread."""

    def __init__(
        self,
        on_done: Callable[[list[tuple[int, int]]], None] | None = None,
        on_stop: Callable[[], None] | None = None,
    ) -> None:
        self._planned: dict[GraphShape, _Planned] = {}
        self._requests: Counter[tuple[int, int, int]] = Counter()  # batches run, by shape group
        self._learned: set[tuple[int, int, int]] = set()
        self._learned_for: Counter[str] = Counter()  # caller -> sizes learned on its requests
        self._order = itertools.count()
        self._lock = threading.Lock()
        self._stopping = False
        self._thread: threading.Thread | None = None  # the compile thread, while it has graphs to build
        self._started = False
        self.on_done = on_done  # called with the planned sizes each time every planned graph is built
        self.on_stop = on_stop  # called once nothing more is to be built (the compile process stops)
        self.gate = threading.Event()  # cleared, the thread waits before its next build (tests hold it)
        self.gate.set()
        self.built_s = 0.0

    def plan(self, shape: GraphShape, needs: Iterable[Need], first: bool = False) -> None:
        """Add `shape` (each module call it makes, with example inputs) to the plan."""
        with self._lock:
            if shape not in self._planned:
                self._planned[shape] = _Planned(shape, list(needs), next(self._order), first)
                self._spawn()

    def planned_sizes(self) -> list[tuple[int, int]]:
        return list(dict.fromkeys(shape.size for shape in self._planned))

    def requested(self, group: tuple[int, int, int], callers: Iterable[str] = ("",)) -> bool:
        """Count a batch of a shape group asked for by `callers`; True when the group is not planned and is now
        worth learning: asked for often enough, a slot free, and one of its callers still under its share."""
        with self._lock:
            self._requests[group] += 1
            planned = any(shape.group == group for shape in self._planned)
            return (
                not planned
                and group not in self._learned
                and self._requests[group] >= WORTH_COMPILING
                and len(self._learned) < MAX_LEARNED_SIZES
                and self._charged(callers) is not None
            )

    def learned(self, group: tuple[int, int, int], callers: Iterable[str] = ("",)) -> None:
        """`group` is planned on the requests of `callers`: one of them (the one with the fewest) is charged."""
        with self._lock:
            self._learned.add(group)
            caller = self._charged(callers)
            if caller:
                self._learned_for[caller] += 1

    def _charged(self, callers: Iterable[str]) -> str | None:
        """The caller a new size would be charged to: "" (the worker's own port) if among them, else the one
        with the fewest sizes learned while under its share; None when every one has used its share."""
        names = set(callers)
        if "" in names:
            return ""
        fewest = min(names, key=lambda name: self._learned_for[name], default=None)
        return fewest if fewest is not None and self._learned_for[fewest] < MAX_LEARNED_PER_CALLER else None

    def ready(self, shape: GraphShape) -> bool:
        """Every call of a batch of this shape replays a graph (compiled, or the eager module captured)."""
        planned = self._planned.get(shape)
        return planned is not None and all(graph.has_graph(key) for graph, key, _ in planned.needs)

    def compiled(self, shape: GraphShape) -> bool:
        """Every call of a batch of this shape runs a compiled graph."""
        planned = self._planned.get(shape)
        return planned is not None and all(key in graph.runners for graph, key, _ in planned.needs)

    @property
    def pending(self) -> int:
        """Graphs still to build (each signature once)."""
        return len({(id(graph), key) for graph, key, _ in self._missing()})

    def warmth(self) -> float:
        """Current speed as a share of full speed: full once the first common size's shapes are built."""
        first = [planned.shape for planned in self._planned.values() if planned.first]
        if not first:
            return 1.0
        done = sum(self.compiled(shape) for shape in first) / len(first)
        return round(EAGER_SPEED_SHARE + (1 - EAGER_SPEED_SHARE) * done, 3)

    def start(self) -> None:
        """Build the plan in the background, now and whenever a size is planned later."""
        with self._lock:
            self._started = True
            self._spawn()

    def _spawn(self) -> None:
        """A compile thread, unless one runs; called with `_lock` held. The thread ends when the plan
        runs dry: a thread that has run torch's CPU kernels keeps an OpenMP pool while it lives, and two
        live pools on a CPU with few cores made every kernel of the device thread 3x slower (bench/RESULTS.md)."""
        if self._started and not self._stopping and self._thread is None:
            self._thread = threading.Thread(target=self._run, name="gpuroam-compile", daemon=True)
            self._thread.start()

    def again(self) -> None:
        """Build what is no longer built (the compiled graphs were dropped: new weights)."""
        with self._lock:
            self._spawn()

    def stop(self) -> None:
        """Build nothing more; a compile under way is cut short with the compile process."""
        with self._lock:
            self._stopping = True
        self.gate.set()
        if self.on_stop is not None:
            self.on_stop()

    @property
    def built(self) -> int:
        """Graphs built and in use."""
        return len(
            {
                (id(graph), key)
                for planned in self._planned.values()
                for graph, key, _ in planned.needs
                if key in graph.runners
            }
        )

    def build_all(self, progress: Callable[[Need, float, int], None] | None = None) -> None:
        """Build every planned graph here and now (`gpuroam worker --build-cache`)."""
        while (need := self._next()) is not None:
            seconds = self._build(need)
            if progress is not None:
                progress(need, seconds, self.pending)

    def _run(self) -> None:
        while True:
            self.gate.wait()
            with self._lock:
                need = None if self._stopping else self._next()
                if need is None:
                    self._thread = None
                    break
            self._build(need)
        if not self._stopping and self._planned:
            self._finished()

    def _finished(self) -> None:
        log.info("all graphs built", extra={"sizes": len(self.planned_sizes()), "seconds": round(self.built_s, 1)})
        if self.on_done is not None:
            self.on_done(self.planned_sizes())

    def _build(self, need: Need) -> float:
        graph, key, make_example = need
        started = time.perf_counter()
        stage = "eager capture" if graph.wants_eager_capture(key) else "compile"
        try:
            with torch.inference_mode():  # as the engine runs: inference tensors, which Dynamo guards on
                example = make_example()
            if stage == "eager capture":
                graph.capture_eager(key, example)
            else:
                graph.build(key, example)
        except Exception as error:  # noqa: BLE001 - a graph that cannot be built leaves the eager path in place
            graph.failed[key] = f"{type(error).__name__}: {error}"
            log.error("graph not built; the eager module serves it", extra={"graph": graph.name, "error": repr(error)})
        seconds = time.perf_counter() - started
        self.built_s += seconds
        shape = self._shape_of(need)
        log.info(
            "graph built",
            extra={
                "graph": graph.name,
                "stage": stage,
                "shape": None if shape is None else f"{shape.width}x{shape.height}x{shape.batch}",
                "seconds": round(seconds, 2),
                "pending": self.pending,
            },
        )
        return seconds

    def _shape_of(self, need: Need) -> GraphShape | None:
        graph, key, _ = need
        for planned in self._planned.values():
            if any(g is graph and k == key for g, k, _ in planned.needs):
                return planned.shape
        return None

    def _missing(self) -> list[Need]:
        """Needs not yet built, most useful first: the first size, then the most requested, then plan order."""
        ordered = sorted(
            self._planned.values(),
            key=lambda p: (not p.first, -self._requests[p.shape.group], p.order),
        )
        return [need for planned in ordered for need in planned.needs if not need[0].built(need[1])]

    def _next(self) -> Need | None:
        """The next graph to capture eagerly (all of them first: milliseconds each) or else to compile."""
        missing = self._missing()
        uncaptured = [need for need in missing if need[0].wants_eager_capture(need[1])]
        first = uncaptured or missing
        return first[0] if first else None
