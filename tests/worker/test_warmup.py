"""Serve first, compile in the background: the plan, its order, and a real Inductor compile on the CPU.

The engine test compiles with Inductor (`--compile default`) through the compile process while the
compile thread is held, so a request that waited for a compile would show, and one compiled in the
serving process too: Dynamo's compile hook would see it. The eager engine's images are the reference.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from torch._dynamo.callback import callback_handler

from gpuroam.worker.accelerate import Acceleration
from gpuroam.worker.engine import Engine
from gpuroam.worker.graphs import Compile, GraphedForward, Inputs, Runner, Signature, copy_inputs, signature
from gpuroam.worker.jobs import BatchKey, ImageTask, Job
from gpuroam.worker.models import load_model
from gpuroam.worker.prebuild import use_artefact
from gpuroam.worker.warmup import (
    EAGER_SPEED_SHARE,
    MAX_LEARNED_PER_CALLER,
    MAX_LEARNED_SIZES,
    WORTH_COMPILING,
    GraphShape,
    Need,
    Warmup,
)

MAX_PIXEL_DIFF = 2  # kernel-level rounding, as tests/worker/test_accelerate.py allows


def toy_need(forward: GraphedForward, rows: int) -> Need:
    inputs = copy_inputs(((torch.randn(rows, 3),), {}))
    return forward, signature(*inputs), lambda: inputs


def serves(runner: Runner) -> Compile:
    """A compile that has `runner` ready (what the compile process does is tested with the engine below)."""

    def compile(key: Signature, example: Inputs) -> Runner:
        return runner

    return compile


def toy_forward(name: str, built: list[str]) -> GraphedForward:
    def compiled(x: torch.Tensor) -> torch.Tensor:
        built.append(f"{name}:{x.shape[0]}")
        return x * 2

    return GraphedForward(name, lambda x: x * 2, serves(compiled), capture=False)


def test_the_first_size_is_built_first_then_the_most_requested_then_in_plan_order() -> None:
    built: list[str] = []
    unet = toy_forward("unet", built)
    warmup = Warmup()
    warmup.plan(GraphShape(512, 768, 1), [toy_need(unet, 2)])
    warmup.plan(GraphShape(640, 640, 1), [toy_need(unet, 3)])
    warmup.plan(GraphShape(512, 512, 1), [toy_need(unet, 4)], first=True)
    warmup.plan(GraphShape(512, 512, 8), [toy_need(unet, 5)], first=True)
    for _ in range(3):
        warmup.requested((640, 640, 1))
    assert warmup.pending == 4 and warmup.warmth() == EAGER_SPEED_SHARE
    warmup.build_all()
    assert built == ["unet:4", "unet:5", "unet:3", "unet:2"]
    assert warmup.pending == 0 and warmup.built == 4 and warmup.warmth() == 1.0
    assert all(warmup.ready(shape) for shape in (GraphShape(512, 768, 1), GraphShape(512, 512, 8)))
    assert not warmup.ready(GraphShape(512, 512, 2)), "a shape never planned has no graphs"


def test_a_size_is_learned_once_it_is_asked_for_again() -> None:
    warmup = Warmup()
    warmup.plan(GraphShape(512, 512, 1), [])
    assert not any(warmup.requested((512, 512, 1)) for _ in range(5)), "a planned size is not learned again"
    answers = [warmup.requested((832, 1216, 1)) for _ in range(WORTH_COMPILING)]
    assert answers == [False] * (WORTH_COMPILING - 1) + [True]
    warmup.learned((832, 1216, 1))
    assert not warmup.requested((832, 1216, 1))


def learn(warmup: Warmup, size: int, *callers: str) -> bool:
    """Ask for a size as often as it takes to be worth learning; learn it if it is."""
    group = (size, size, 1)
    worth = [warmup.requested(group, callers) for _ in range(WORTH_COMPILING)][-1]
    if worth:
        warmup.learned(group, callers)
    return worth


def test_one_caller_of_the_endpoint_cannot_take_every_learned_size() -> None:
    warmup = Warmup()
    hostile = [learn(warmup, 64 + 8 * n, "address:203.0.113.9") for n in range(MAX_LEARNED_SIZES)]
    assert hostile == [True] * MAX_LEARNED_PER_CALLER + [False] * (MAX_LEARNED_SIZES - MAX_LEARNED_PER_CALLER)
    assert learn(warmup, 1000, "key:alice"), "another caller still gets its sizes compiled"
    assert learn(warmup, 1008, "address:203.0.113.9", "key:bob"), "a size others ask for too is charged to them"
    assert all(learn(warmup, 2000 + 8 * n, "") for n in range(3)), "the worker's own port is one local user"


def test_the_compile_thread_builds_in_the_background_and_says_when_all_is_built() -> None:
    built: list[str] = []
    done = threading.Event()
    sizes: list[list[tuple[int, int]]] = []
    warmup = Warmup(on_done=lambda planned: (sizes.append(planned), done.set()))
    warmup.gate.clear()
    warmup.start()
    warmup.plan(GraphShape(64, 64, 1), [toy_need(toy_forward("unet", built), 2)], first=True)
    assert not done.wait(0.2) and built == [], "a held thread builds nothing"
    warmup.gate.set()
    assert done.wait(30)
    assert built == ["unet:2"] and sizes == [[(64, 64)]]
    assert not compile_thread_alive(), "the thread ends when the plan runs dry: no idle OpenMP pool is kept"
    done.clear()
    warmup.plan(GraphShape(96, 64, 1), [toy_need(toy_forward("unet", built), 3)])
    assert done.wait(30), "a size planned later starts a thread again"
    assert built == ["unet:2", "unet:3"] and sizes[-1] == [(64, 64), (96, 64)]
    warmup.stop()
    warmup.plan(GraphShape(128, 64, 1), [toy_need(toy_forward("unet", built), 4)])
    assert not compile_thread_alive() and len(built) == 2, "a stopped warm-up starts nothing"


def cuda_like_forward(name: str, events: list[str], capturable: bool = True) -> GraphedForward:
    """A forward that captures as on CUDA, with a stand-in capture: replaying it calls what was captured."""

    def compiled(x: torch.Tensor) -> torch.Tensor:
        events.append(f"compile {name}:{x.shape[0]}")
        return x * 2

    def eager(x: torch.Tensor) -> torch.Tensor:
        return x * 2

    def capturer(runner: Runner, example: Inputs, pool: object, lock: threading.Lock) -> Runner:
        what = "compiled" if runner is compiled else "eager"
        if what == "eager" and not capturable:
            raise RuntimeError("operation not permitted when stream is capturing")
        events.append(f"capture {what} {name}:{example[0][0].shape[0]}")
        return runner

    return GraphedForward(name, eager, serves(compiled), capture=True, capturer=capturer)


def test_on_cuda_every_planned_signature_is_captured_eagerly_before_the_first_compile() -> None:
    events: list[str] = []
    unet, decoder = cuda_like_forward("unet", events), cuda_like_forward("decoder", events)
    warmup = Warmup()
    first, second = GraphShape(512, 512, 1), GraphShape(512, 768, 1)
    warmup.plan(first, [toy_need(unet, 2), toy_need(decoder, 2)], first=True)
    warmup.plan(second, [toy_need(unet, 3)])
    states: list[tuple[bool, bool, float]] = []
    warmup.build_all(lambda *_: states.append((warmup.ready(second), warmup.compiled(second), warmup.warmth())))
    captures = ["capture eager unet:2", "capture eager decoder:2", "capture eager unet:3"]
    assert events[:3] == captures, "every eager capture comes before the first compile"
    assert events[3:5] == ["compile unet:2", "capture compiled unet:2"], "then the compiles, the first size first"
    assert states[2] == (True, False, EAGER_SPEED_SHARE), "captured eagerly: served by graphs, not yet at full speed"
    assert states[-1] == (True, True, 1.0) and unet.eager_graphs == {} and decoder.eager_graphs == {}

    x = torch.randn(3, 3)
    calls = dict(unet.calls)
    unet(x)
    assert unet.calls["compiled"] == calls["compiled"] + 1, "the compiled graph replaced the eager one"


def test_an_eager_graph_serves_its_signature_until_the_compiled_one_replaces_it() -> None:
    events: list[str] = []
    unet = cuda_like_forward("unet", events)
    need = toy_need(unet, 2)
    x = need[2]()[0][0]
    unet.capture_eager(need[1], need[2]())
    before = dict(unet.calls)
    assert torch.equal(unet(x), x * 2)
    assert unet.calls["eager graph"] == before["eager graph"] + 1 and unet.calls["eager"] == before["eager"]


def test_a_module_that_cannot_be_captured_keeps_the_plain_eager_path_and_is_still_compiled() -> None:
    events: list[str] = []
    unet = cuda_like_forward("unet", events, capturable=False)
    warmup = Warmup()
    shape = GraphShape(512, 512, 1)
    warmup.plan(shape, [toy_need(unet, 2)], first=True)
    warmup.build_all()
    assert list(unet.eager_failed.values()) == ["RuntimeError: operation not permitted when stream is capturing"]
    assert events == ["compile unet:2", "capture compiled unet:2"]
    assert warmup.compiled(shape) and warmup.pending == 0


def compile_thread_alive() -> bool:
    for _ in range(100):
        if not any(thread.name == "gpuroam-compile" for thread in threading.enumerate()):
            return False
        threading.Event().wait(0.05)
    return True


def a_task(width: int, height: int, seed: int, clip_skip: int = 1) -> ImageTask:
    key = BatchKey("txt2img", width, height, 3, "Euler a", "automatic", 7.0, clip_skip=clip_skip)
    return ImageTask(Job(id=f"j{seed}", key=key, image_count=1), 0, "a red boat", "", seed, 0, 0.0, None)


def pixels(engine: Engine, tasks: list[ImageTask]) -> np.ndarray:
    return np.stack([np.asarray(image, dtype=np.int16) for image in engine.run(tasks).images])


@pytest.fixture
def compiling_threads() -> Iterator[list[str]]:
    """The name of the thread each Dynamo compile starts on."""
    names: list[str] = []

    def started(*_: object) -> None:
        names.append(threading.current_thread().name)

    callback_handler.register_start_callback(started)
    try:
        yield names
    finally:
        callback_handler.remove_start_callback(started)


def test_no_request_waits_for_a_compile_and_the_compiled_images_are_the_eager_ones(
    tmp_path: Path, compiling_threads: list[str]
) -> None:
    """With Inductor, the way a GPU worker runs: requests are served eagerly (a new size too) while the
    compile thread is held; let go, the compile process builds the packages, the graphs take over with
    the same images, nothing is ever compiled in the serving process, and the compiled artefact is
    recorded for the next worker (which test_artefact.py starts from it)."""
    cache = tmp_path / "cache"
    inductor = Acceleration(compile_mode="default", buckets=(1,), warm_sizes=((64, 64),), cache_dir=cache)
    engine = Engine(load_model("tiny", torch.device("cpu")), inductor)
    assert engine.warmup is not None and engine.packages is not None
    assert use_artefact(engine) == (), "an empty cache has no artefact"
    engine.warm_up()
    engine.warmup.gate.clear()
    engine.warmup.start()
    sizes = ((64, 64), (96, 64), (96, 64), (96, 64))  # a new size, asked for again
    try:
        eager = [pixels(engine, [a_task(width, height, seed)]) for seed, (width, height) in enumerate(sizes)]
        assert engine.warmup.pending > 0 and any(shape.size == (96, 64) for shape in engine.warmup._planned)
        engine.warmup.gate.set()
        finished = threading.Event()
        engine.warmup.on_done = _chain(engine.warmup.on_done, finished)
        assert finished.wait(1200), "the compile thread finished its plan"
        unet = engine.graphs[0]
        before = dict(unet.calls)
        for seed, (width, height) in enumerate(sizes[:2]):
            assert np.abs(pixels(engine, [a_task(width, height, seed)]) - eager[seed]).max() <= MAX_PIXEL_DIFF
        assert unet.calls["compiled"] - before["compiled"] == 6 and unet.calls["eager"] == before["eager"]
        assert not any(graph.failed for graph in engine.graphs)
    finally:
        engine.warmup.stop()
    assert compiling_threads == [], "nothing was ever compiled in the serving process"
    assert engine.packages.process._process is None, "the compile process ends with the warm-up"
    (manifest,) = cache.glob("compiled-*.json")
    assert json.loads(manifest.read_text())["sizes"] == [[64, 64], [96, 64]]
    packages = sorted(path.name.split("-")[0] for path in engine.packages.directory.glob("*.pt2"))
    assert packages == ["text", "text", "unet", "unet", "vae", "vae"], "one per module and call, in the cache"


def _chain(first: object, event: threading.Event) -> Callable[[list[tuple[int, int]]], None]:
    """The on_done callback `first`, then `event` set."""

    def done(sizes: list[tuple[int, int]]) -> None:
        if callable(first):
            first(sizes)
        event.set()

    return done
