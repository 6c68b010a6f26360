"""Graphs by signature: a call runs its built graph or the eager module, never a compile."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from gpuroam.worker.graphs import (
    Compile,
    GraphedForward,
    GraphMismatch,
    Inputs,
    Runner,
    Signature,
    WeightWrites,
    check_close,
    copy_inputs,
    resized,
    resized_signature,
    signature,
)


def eager(sample: torch.Tensor, scale: float, *, context: torch.Tensor | None = None) -> tuple[torch.Tensor]:
    return (sample * scale + (0 if context is None else context.mean()),)


def serves(runner: Runner) -> Compile:
    """A compile that has `runner` ready (the compile process's work is not what these tests are about)."""
    return lambda key, example: runner


class Counting:
    """A stand-in compiler output: runs `function` and keeps each call's arguments."""

    def __init__(self, function: Callable[..., Any]) -> None:
        self.function = function
        self.calls: list[tuple[Any, ...]] = []

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        self.calls.append(args)
        return self.function(*args, **kwargs)


@settings(max_examples=40, deadline=None)
@given(
    rows=st.integers(1, 3),
    images=st.integers(1, 3),
    to=st.integers(1, 5),
    channels_last=st.booleans(),
    side=st.integers(1, 6),
)
def test_a_resized_signature_is_the_signature_of_the_resized_inputs(
    rows: int, images: int, to: int, channels_last: bool, side: int
) -> None:
    sample = torch.randn(rows * images, 4, side, side + 1)
    if channels_last:
        sample = sample.contiguous(memory_format=torch.channels_last)
    inputs = ((sample, torch.tensor(3.0)), {"context": torch.randn(rows * images, 7), "flag": True, "none": None})
    made = resized(inputs, images, to)
    assert made[0][0].shape[0] == rows * to and made[1]["context"].shape[0] == rows * to
    assert made[0][1].dim() == 0, "a tensor with no batch dimension is kept"
    assert resized_signature(inputs, images, to) == signature(*made)


def test_a_signature_tells_apart_what_a_compiled_graph_is_specialised_on() -> None:
    x = torch.randn(2, 4, 8, 8)
    base = signature((x,), {"flag": True})
    assert signature((x.clone(),), {"flag": True}) == base, "values do not matter"
    assert signature((x[:1],), {"flag": True}) != base
    assert signature((x.half(),), {"flag": True}) != base
    assert signature((x.contiguous(memory_format=torch.channels_last),), {"flag": True}) != base
    assert signature((x,), {"flag": False}) != base
    assert signature((x,), {}) != base
    copied = copy_inputs(((x.contiguous(memory_format=torch.channels_last),), {}))
    assert copied[0][0].is_contiguous(memory_format=torch.channels_last), "a copy keeps its strides"


def test_a_call_runs_eagerly_until_its_graph_is_built_then_the_graph() -> None:
    compiled = Counting(eager)
    forward = GraphedForward("toy", eager, serves(compiled), capture=False)
    x = torch.randn(2, 3)
    with forward.recording() as seen:
        (first,) = forward(x, 2.0)
    assert compiled.calls == [], "a call without a built graph never reaches the compiler"
    assert forward.calls == {"compiled": 0, "eager graph": 0, "eager": 1}
    ((key, example),) = seen.items()
    forward.build(key, example)
    assert len(compiled.calls) == 1, "built on the example"
    (second,) = forward(x, 2.0)
    assert forward.calls == {"compiled": 1, "eager graph": 0, "eager": 1} and torch.equal(first, second)
    forward(x[:1], 2.0)
    assert forward.calls["eager"] == 2, "another shape runs eagerly"


def test_a_batch_the_graphs_do_not_compute_runs_eagerly_past_them() -> None:
    forward = GraphedForward("toy", eager, serves(Counting(eager)), capture=False)
    x = torch.randn(2, 3)
    with forward.recording() as seen:
        forward(x, 2.0)
    forward.build(*next(iter(seen.items())))
    forward.eager_only = True  # a tiled batch: its convolutions pad circularly, the graph's with zeros
    forward(x, 2.0)
    assert forward.calls == {"compiled": 0, "eager graph": 0, "eager": 2}


def test_a_graph_that_computes_something_else_is_never_used() -> None:
    def wrong(sample: torch.Tensor, scale: float) -> tuple[torch.Tensor]:
        return (sample * scale + 0.1,)

    forward = GraphedForward("toy", eager, serves(wrong), capture=False)
    inputs = copy_inputs(((torch.randn(4, 4), 1.0), {}))
    key = signature(*inputs)
    forward.build(key, inputs)
    assert key not in forward.runners and "differs" in forward.failed[key]
    assert forward.built(key), "and it is not tried again"
    forward(*inputs[0])
    assert forward.calls == {"compiled": 0, "eager graph": 0, "eager": 1}


def test_outputs_are_close_within_rounding_only() -> None:
    a = torch.randn(64, 64)
    check_close((a + 1e-6,), (a,), "fp32")
    check_close((a.half() + 1e-3,), (a.half(),), "fp16")
    with pytest.raises(GraphMismatch, match="differs"):
        check_close((a * 1.01,), (a,), "fp32")
    with pytest.raises(GraphMismatch, match="differs"):
        check_close((torch.full_like(a, float("nan")),), (a,), "nan")
    with pytest.raises(GraphMismatch, match="shape"):
        check_close((a[:1],), (a,), "shape")
    with pytest.raises(GraphMismatch, match="values"):
        check_close((a, a), (a,), "count")


def test_a_call_never_waits_for_a_compile_under_way() -> None:
    """The compile thread waits for the compile process holding nothing: a call meanwhile runs at once."""
    release = threading.Event()

    def slow(key: Signature, example: Inputs) -> Runner:
        release.wait(10)
        return eager

    forward = GraphedForward("toy", eager, slow, capture=False)
    inputs = copy_inputs(((torch.randn(2, 3), 2.0), {}))
    builder = threading.Thread(target=forward.build, args=(signature(*inputs), inputs))
    builder.start()
    started = time.monotonic()
    forward(*inputs[0])
    assert time.monotonic() - started < 1 and forward.calls == {"compiled": 0, "eager graph": 0, "eager": 1}
    release.set()
    builder.join()
    forward(*inputs[0])
    assert forward.calls == {"compiled": 1, "eager graph": 0, "eager": 1}


class WeightedModule:
    """A module of one weight, and a writer that changes it in place as a LoRA merge does, on its own thread,
    once `start` is set; it holds `weights` while it writes."""

    def __init__(self, weights: WeightWrites) -> None:
        self.weight = torch.ones(4)
        self.weights = weights
        self.start = threading.Event()
        self.wrote = threading.Event()
        self.writer = threading.Thread(target=self._write)
        self.writer.start()

    def _write(self) -> None:
        self.start.wait(5)
        with self.weights.changing():
            self.weight.add_(1.0)
        self.wrote.set()

    def run(self, sample: torch.Tensor) -> tuple[torch.Tensor]:
        return (sample * self.weight,)

    def let_the_writer_try_then_run(self, sample: torch.Tensor) -> tuple[torch.Tensor]:
        """Lets the writer try to write, then runs (a merge landing between a check's two runs)."""
        if not self.start.is_set():
            self.start.set()
            self.wrote.wait(0.2)
        return self.run(sample)


def test_a_weight_change_while_a_graph_compiles_never_drops_it() -> None:
    module = WeightedModule(WeightWrites())

    def compile_while_a_lora_merges(key: Signature, example: Inputs) -> Runner:
        module.start.set()
        module.wrote.wait(5)
        return module.run

    forward = GraphedForward("toy", module.run, compile_while_a_lora_merges, capture=False)
    forward.weights = module.weights
    inputs = copy_inputs(((torch.ones(4),), {}))
    key = signature(*inputs)
    forward.build(key, inputs)
    module.writer.join()
    assert module.wrote.is_set() and key in forward.runners and key not in forward.failed


def test_a_weight_change_waits_for_a_check_and_never_drops_the_graph() -> None:
    module = WeightedModule(WeightWrites())
    forward = GraphedForward("toy", module.let_the_writer_try_then_run, serves(module.run), capture=False)
    forward.weights = module.weights
    inputs = copy_inputs(((torch.ones(4),), {}))
    key = signature(*inputs)
    forward.build(key, inputs)
    assert key in forward.runners and key not in forward.failed
    module.writer.join()
    assert torch.equal(module.weight, torch.full((4,), 2.0)), "the write went through after the check"


def test_a_weight_change_waits_for_an_eager_capture_check() -> None:
    module = WeightedModule(WeightWrites())

    def capturer(runner: Callable[..., Any], example: Any, pool: Any, device_lock: threading.Lock) -> Any:
        return module.run  # a CUDA graph replays on the weights where they are at the time

    forward = GraphedForward(
        "toy", module.let_the_writer_try_then_run, serves(module.run), capture=True, capturer=capturer
    )
    forward.weights = module.weights
    inputs = copy_inputs(((torch.ones(4),), {}))
    key = signature(*inputs)
    started = time.monotonic()
    forward.capture_eager(key, inputs)
    module.writer.join()
    assert key in forward.eager_graphs and key not in forward.eager_failed
    assert time.monotonic() - started < 5


def test_replaced_weights_drop_the_compiled_graphs_and_they_are_built_again() -> None:
    """A checkpoint switch writes new weights in place for good: a package may hold copies derived from the
    old ones, so its graph is built again (from the package, in seconds); calls run eagerly meanwhile."""
    weights = WeightWrites()
    forward = GraphedForward("toy", eager, serves(eager), capture=False, weights=weights)
    weights.on_replaced.append(forward.forget)
    inputs = copy_inputs(((torch.randn(2, 3), 2.0), {}))
    key = signature(*inputs)
    forward.build(key, inputs)
    assert forward.built(key)
    weights.replaced()
    assert not forward.built(key)
    forward(*inputs[0])
    assert forward.calls == {"compiled": 0, "eager graph": 0, "eager": 1}
    forward.build(key, inputs)
    assert key in forward.runners


def test_a_graph_checked_on_weights_replaced_before_it_is_kept_is_not_kept() -> None:
    weights = WeightWrites()

    def capturer(runner: Runner, example: Inputs, pool: object, lock: threading.Lock) -> Runner:
        weights.replaced()  # the switch lands between the check and the graph's use
        return runner

    forward = GraphedForward("toy", eager, serves(eager), capture=True, capturer=capturer, weights=weights)
    inputs = copy_inputs(((torch.randn(2, 3), 2.0), {}))
    forward.build(signature(*inputs), inputs)
    assert not forward.built(signature(*inputs)), "left to be built again, on the new weights"
