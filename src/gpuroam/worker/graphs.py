"""Compiled graphs that never stand between a request and its image.

A compiled module's `forward` becomes a `GraphedForward`. A call whose inputs (shapes, dtypes,
strides, flags: its `Signature`) have a built graph runs that graph; any other call runs the eager
module at once. Graphs are built by the compile thread (worker/warmup.py) from example inputs the
engine recorded while it probed or served a shape: the thread asks `compile` for the graph (the
compile process builds a package, or the compile cache already holds it: worker/aot.py) and waits,
holding nothing, so no compile ever runs in this process, let alone on the device thread.

On CUDA a built graph is the compiled kernels captured once into a CUDA graph (static input
buffers, replayed per call, outputs copied out), which removes the per-kernel launch cost. Every
graph is checked against the eager module on its example before it is used; one that differs
beyond rounding is dropped and the eager path stays.

Also on CUDA, before anything is compiled, the eager module itself is captured for each planned
signature (milliseconds each): its replay saves the launch cost until the compiled graph replaces it.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Hashable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from torch.utils._pytree import tree_flatten, tree_map

log = logging.getLogger("gpuroam.worker.graphs")

Signature = tuple[Hashable, ...]
Inputs = tuple[tuple[Any, ...], dict[str, Any]]
Runner = Callable[..., Any]
Compile = Callable[[Signature, Inputs], Runner]  # the graph for a signature, from its example: may take minutes
Capturer = Callable[[Runner, Inputs, Any, threading.Lock], Runner]  # CapturedGraph, or a test's stand-in

# Largest relative difference (L2 norm of the difference over the eager output's) a compiled graph
# may show on its example: kernel-level rounding is 1e-3 and below in half precision, 1e-5 in float32.
TOLERANCE = {torch.float16: 2e-2, torch.bfloat16: 4e-2, torch.float32: 1e-3}


class WeightWrites:
    """The in-place weight changes (LoRA merge and restore, a VAE or embedding written in, a checkpoint switch),
    made exclusive with the compile thread's checks of a graph against the eager module.

    A check runs the graph and the eager module and compares them: a weight changed between the two runs
    would make a sound graph differ, and it would be dropped for good. A writer holds the lock only while it
    writes (milliseconds); a check holds it across its two runs, never across a compile, so a LoRA batch
    never waits for a compile.

    A write that stays (a checkpoint switch) is announced with `replaced`: a package derives some tensors
    from the weights once (a reshaped bias, say: worker/aot.py), and a CUDA graph replays those copies, so
    the compiled graphs are built again from their packages (seconds), eagerly served meanwhile."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.version = 0
        self.replacements = 0
        self.on_replaced: list[Callable[[], None]] = []

    def replaced(self) -> None:
        """The weights written in place stay: every compiled graph is rebuilt on them."""
        with self._lock:
            self.replacements += 1
        for listener in self.on_replaced:
            listener()

    @contextmanager
    def changing(self) -> Iterator[None]:
        """Within the block, the caller writes weights in place; no check runs meanwhile."""
        with self._lock:
            try:
                yield
            finally:
                self.version += 1

    @contextmanager
    def steady(self) -> Iterator[int]:
        """Within the block no weight changes; yields the number of changes so far."""
        with self._lock:
            yield self.version


class GraphMismatch(RuntimeError):
    """A compiled graph computed something other than the eager module: it is never used."""


def signature(args: tuple[Any, ...], kwargs: dict[str, Any]) -> Signature:
    """What a compiled graph is specialised on: the call's structure, every tensor's shape, strides,
    dtype and device, and every other argument's value."""
    leaves, spec = tree_flatten((args, kwargs))
    return (str(spec), *(_leaf_key(leaf) for leaf in leaves))


def resized_signature(example: Inputs, images_from: int, images_to: int) -> Signature:
    """`signature(*resized(example, ...))`, worked out on the meta device: no memory is taken."""
    devices = iter([str(leaf.device) for leaf in tree_flatten(example)[0] if isinstance(leaf, torch.Tensor)])
    meta = tree_map(
        lambda leaf: (
            torch.empty_strided(leaf.shape, leaf.stride(), dtype=leaf.dtype, device="meta")
            if isinstance(leaf, torch.Tensor)
            else leaf
        ),
        example,
    )
    leaves, spec = tree_flatten(resized(meta, images_from, images_to))
    return (
        str(spec),
        *(_leaf_key(leaf, next(devices)) if isinstance(leaf, torch.Tensor) else _leaf_key(leaf) for leaf in leaves),
    )


def _leaf_key(leaf: Any, device: str | None = None) -> Hashable:
    if isinstance(leaf, torch.Tensor):
        return ("tensor", tuple(leaf.shape), tuple(leaf.stride()), leaf.dtype, device or str(leaf.device))
    if leaf is None or isinstance(leaf, bool | int | float | str):
        return leaf
    return ("object", type(leaf).__qualname__, repr(leaf))


def copy_inputs(inputs: Inputs) -> Inputs:
    """The inputs with every tensor copied (same strides), so an example outlives the call it came from."""
    copied: Inputs = tree_map(lambda leaf: _same_layout_clone(leaf) if isinstance(leaf, torch.Tensor) else leaf, inputs)
    return copied


def resized(inputs: Inputs, images_from: int, images_to: int) -> Inputs:
    """The inputs of a call for `images_from` images, made for `images_to`: each batch-first tensor
    (its first dimension a multiple of `images_from`) repeats one image's rows `images_to` times."""

    def resize(leaf: Any) -> Any:
        if not isinstance(leaf, torch.Tensor) or leaf.dim() == 0 or leaf.shape[0] % images_from:
            return leaf
        one_image = leaf[: leaf.shape[0] // images_from]
        return torch.cat([one_image] * images_to)

    made: Inputs = tree_map(resize, inputs)
    return made


def _same_layout_clone(tensor: torch.Tensor) -> torch.Tensor:
    copy = torch.empty_strided(tensor.shape, tensor.stride(), dtype=tensor.dtype, device=tensor.device)
    return copy.copy_(tensor)


def check_close(compiled: Any, eager: Any, what: str) -> None:
    """Raise GraphMismatch unless every tensor of `compiled` is `eager`'s within rounding."""
    got, _ = tree_flatten(compiled)
    want, _ = tree_flatten(eager)
    if len(got) != len(want):
        raise GraphMismatch(f"{what}: the compiled graph returned {len(got)} values, the eager module {len(want)}")
    for index, (a, b) in enumerate(zip(got, want)):
        if not isinstance(b, torch.Tensor):
            continue
        if not isinstance(a, torch.Tensor) or a.shape != b.shape:
            raise GraphMismatch(f"{what}: output {index} has shape {getattr(a, 'shape', None)}, eager {tuple(b.shape)}")
        error = float((a.float() - b.float()).norm() / b.float().norm().clamp_min(1e-12))
        if not error <= TOLERANCE.get(b.dtype, 1e-3):  # NaN fails too
            raise GraphMismatch(f"{what}: output {index} differs from the eager module by {error:.2e} (relative)")


class CapturedGraph:
    """A compiled call captured into a CUDA graph: inputs are copied into its static buffers, the
    graph is replayed, and the outputs are copied out (the next replay overwrites the buffers)."""

    def __init__(self, compiled: Runner, example: Inputs, pool: Any, device_lock: threading.Lock) -> None:
        args, kwargs = copy_inputs(example)
        self._static_inputs = [leaf for leaf in tree_flatten((args, kwargs))[0] if isinstance(leaf, torch.Tensor)]
        side = torch.cuda.Stream()  # type: ignore[no-untyped-call]  # unannotated in torch
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):  # lazy initialisation and autotuning happen outside the capture
            for _ in range(2):
                compiled(*args, **kwargs)
        torch.cuda.current_stream().wait_stream(side)
        self._graph = torch.cuda.CUDAGraph()
        # The device thread holds `device_lock` while it runs a batch: no kernel of its runs mid-capture.
        with device_lock, torch.cuda.graph(self._graph, pool=pool, capture_error_mode="thread_local"):
            self._static_output = compiled(*args, **kwargs)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        live = [leaf for leaf in tree_flatten((args, kwargs))[0] if isinstance(leaf, torch.Tensor)]
        for static, value in zip(self._static_inputs, live, strict=True):
            static.copy_(value)
        self._graph.replay()
        return tree_map(lambda leaf: leaf.clone() if isinstance(leaf, torch.Tensor) else leaf, self._static_output)


@dataclass
class GraphedForward:
    """A module's forward that runs a built graph for the inputs it was built for, else the eager module.

    `compile` is called only by the compile thread (`build`), so a signature without a graph can never
    wait for a compile where it is called."""

    name: str
    eager: Runner
    compile: Compile
    capture: bool  # CUDA: capture each compiled graph into a CUDA graph
    device_lock: threading.Lock = field(default_factory=threading.Lock)
    pool: Any = None  # the CUDA graph memory pool the engine's graphs share (they never run at once)
    capturer: Capturer = CapturedGraph
    runners: dict[Signature, Runner] = field(default_factory=dict)  # compiled graphs
    failed: dict[Signature, str] = field(default_factory=dict)
    eager_graphs: dict[Signature, Runner] = field(default_factory=dict)  # CUDA: the eager module, captured
    eager_failed: dict[Signature, str] = field(default_factory=dict)
    calls: dict[str, int] = field(default_factory=lambda: {"compiled": 0, "eager graph": 0, "eager": 0})
    eager_only: bool = False  # set by the device thread around a batch the built graphs do not compute (tiling)
    # Held while the compile thread runs the module as it is (the reference of a check, a capture), and by a
    # tiled batch while it pads the module's convolutions circularly: neither sees the other's module.
    # Taken before device_lock, by both threads.
    module_lock: threading.Lock = field(default_factory=threading.Lock)
    weights: WeightWrites = field(default_factory=WeightWrites)  # shared by the engine's graphs and the writers
    _recording: dict[Signature, Inputs] | None = None

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if self.eager_only:
            self.calls["eager"] += 1
            return self.eager(*args, **kwargs)
        key = signature(args, kwargs)
        runner = self.runners.get(key)
        if self._recording is not None and key not in self._recording:
            self._recording[key] = copy_inputs((args, kwargs))
        if runner is not None:
            self.calls["compiled"] += 1
            return runner(*args, **kwargs)
        eager_graph = self.eager_graphs.get(key)
        if eager_graph is not None:
            self.calls["eager graph"] += 1
            return eager_graph(*args, **kwargs)
        self.calls["eager"] += 1
        return self.eager(*args, **kwargs)

    @contextmanager
    def recording(self) -> Iterator[dict[Signature, Inputs]]:
        """Within the block, keep a copy of the inputs of each new signature the module is called with."""
        seen: dict[Signature, Inputs] = {}
        self._recording = seen
        try:
            yield seen
        finally:
            self._recording = None

    def built(self, key: Signature) -> bool:
        return key in self.runners or key in self.failed

    def forget(self) -> None:
        """Drop the compiled graphs (the weights were replaced): calls run the eager graphs until they are
        built again. The eager module's CUDA graphs stay: they read the weights where they are."""
        self.runners.clear()
        self.failed.clear()

    def has_graph(self, key: Signature) -> bool:
        """A call with this signature replays a graph (compiled, or the eager module captured)."""
        return key in self.runners or key in self.eager_graphs

    def wants_eager_capture(self, key: Signature) -> bool:
        return self.capture and not self.built(key) and key not in self.eager_graphs and key not in self.eager_failed

    def capture_eager(self, key: Signature, example: Inputs) -> None:
        """Capture the eager module for `key` into a CUDA graph until the compiled one is built; on the
        compile thread. A module that cannot be captured (a host sync, say) keeps the plain eager path."""
        args, kwargs = example
        try:
            with torch.inference_mode(), self.module_lock:
                graph = self.capturer(self.eager, example, self.pool, self.device_lock)
                with self.weights.steady():
                    check_close(graph(*args, **kwargs), self.eager(*args, **kwargs), self.name)
        except Exception as error:  # noqa: BLE001 - the plain eager path stays
            self.eager_failed[key] = f"{type(error).__name__}: {error}"
            log.warning("eager module not captured", extra={"graph": self.name, "reason": self.eager_failed[key]})
            return
        self.eager_graphs[key] = graph

    def build(self, key: Signature, example: Inputs) -> None:
        """Have the graph for `key` compiled (or found in the compile cache), check it against the eager module
        and put it to use; on the compile thread. A graph that differs is kept out, with the reason."""
        args, kwargs = example
        compiled = self.compile(key, example)  # waits for the compile process, holding no lock
        try:
            with torch.inference_mode(), self.module_lock:
                with self.weights.steady():
                    replacements = self.weights.replacements
                    check_close(compiled(*args, **kwargs), self.eager(*args, **kwargs), self.name)
                runner = self.capturer(compiled, example, self.pool, self.device_lock) if self.capture else compiled
        except GraphMismatch as error:
            self.failed[key] = str(error)
            log.error("compiled graph dropped: it differs from the eager module", extra={"reason": str(error)})
            return
        with self.weights.steady():
            if self.weights.replacements != replacements:  # checked on weights replaced since: built again
                return
            self.runners[key] = runner
        self.eager_graphs.pop(key, None)  # a call under way keeps its own reference
