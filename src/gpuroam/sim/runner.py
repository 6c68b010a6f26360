"""Many seeded runs of every policy, spread over processes.

Run `i` of seed `s` draws its world from numpy's Generator seeded with [s, i], so each policy
faces the same world (common random numbers), and its own dice (launch times, which replica is
lost when) from [s, i, crc32(policy name)], so adding a policy changes no other's figures. A Spot
layer, when the study has one, comes from [s, i, SPOT_SALT]: the world under it is the same.
"""

from __future__ import annotations

import multiprocessing
import os
import time
import zlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from functools import cache
from multiprocessing.context import BaseContext

import numpy as np

from gpuroam.catalog import load_catalog
from gpuroam.placement import Pair
from gpuroam.sim.figures import (
    Verdict,
    autoscale_goals,
    goals,
    spot_goals,
    summarize_all,
    summarize_demand,
    summarize_spot,
)
from gpuroam.sim.policies import DEFAULT_POLICIES, CachedCatalog, describe_policies, policy_config
from gpuroam.sim.simulation import RunResult, run_policy
from gpuroam.sim.spot_world import SPOT_MODELS, SpotModel, with_spot
from gpuroam.sim.traces import TRACES, Trace, with_trace
from gpuroam.sim.world import WORLDS, Layout, WorldModel, build_world

# How long a run of each trace lasts by default: the sparse service's week includes a weekend.
TRACE_DAYS: dict[Trace, float] = {"steady": 2.0, "burst": 2.0, "sparse": 7.0}
SPOT_SALT = zlib.crc32(b"spot")


@dataclass(frozen=True)
class SimConfig:
    """A study's settings: seeded runs per world kind, their length, the policies, the processes."""

    runs: int = 1000
    days: float = 2.0
    seed: int = 1
    policies: tuple[str, ...] = DEFAULT_POLICIES
    model: WorldModel = field(default_factory=WorldModel)
    processes: int = 2
    chunk: int = 10  # runs per task handed to a process
    trace: Trace | None = None  # requests from gpuroam.sim.traces (the autoscaling study)
    spot: SpotModel | None = None  # Spot capacity and preemptions (the Spot study)


@dataclass(frozen=True)
class _Shared:
    """What every run in a process reads: built once per process, not once per run."""

    layout: Layout
    catalog: CachedCatalog
    offers: frozenset[Pair]


@cache
def _shared() -> _Shared:
    catalog = load_catalog()
    return _Shared(Layout.from_catalog(catalog), CachedCatalog(catalog), frozenset(catalog.offers))


def run_chunk(config: SimConfig, run_ids: Sequence[int]) -> list[tuple[int, str, RunResult]]:
    """Every policy over each of the worlds `run_ids`."""
    shared = _shared()
    policies = [(name, policy_config(name), zlib.crc32(name.encode())) for name in config.policies]
    out: list[tuple[int, str, RunResult]] = []
    for run in run_ids:
        rng = np.random.default_rng([config.seed, run])
        world = build_world(config.model, shared.layout, rng, config.days)
        if config.trace is not None:
            world = with_trace(world, config.trace, rng)
        if config.spot is not None:
            world = with_spot(world, config.spot, np.random.default_rng([config.seed, run, SPOT_SALT]))
        for name, policy, salt in policies:
            result = run_policy(world, policy, shared.catalog, shared.offers, (config.seed, run, salt), config.days)
            out.append((run, name, result))
    return out


_Task = tuple[int, SimConfig, Sequence[int]]  # (which config, the config, its run ids)
_Done = tuple[int, list[tuple[int, str, RunResult]]]


def _chunk(task: _Task) -> _Done:
    which, config, run_ids = task
    return which, run_chunk(config, run_ids)


def _task(task: _Task) -> _Done:
    try:
        os.nice(19)  # a background job: the machine has other work
    except OSError:
        pass
    return _chunk(task)


def _context() -> BaseContext:
    """Workers come from a fork server (spawned where there is none), never from forking this
    process: it has threads by then (numpy's BLAS pool, the progress bar's refresh), and a fork
    copies their locks mid-use (Python 3.12 warns that the child may deadlock)."""
    method = "forkserver" if "forkserver" in multiprocessing.get_all_start_methods() else "spawn"
    return multiprocessing.get_context(method)


def simulate(config: SimConfig, progress: Callable[[int], None] | None = None) -> dict[str, list[RunResult]]:
    """policy -> one RunResult per run, in run order. `progress(n)` is told of each n runs done."""
    return simulate_all([config], progress)[0]


def simulate_all(
    configs: Sequence[SimConfig], progress: Callable[[int], None] | None = None
) -> list[dict[str, list[RunResult]]]:
    """`simulate` for each config, their runs spread over one set of worker processes (started
    once, and busy to the end rather than idle between configs)."""
    for config in configs:
        for name in config.policies:
            policy_config(name)  # unknown names fail here, not in a worker
    tasks: list[_Task] = [
        (which, config, range(i, min(i + config.chunk, config.runs)))
        for which, config in enumerate(configs)
        for i in range(0, config.runs, config.chunk)
    ]
    by_run: dict[tuple[int, int, str], RunResult] = {}

    def collect(outcomes: Iterable[_Done]) -> None:
        for which, done in outcomes:
            for run, name, result in done:
                by_run[(which, run, name)] = result
            if progress:
                progress(len({run for run, _, _ in done}))

    processes = max(config.processes for config in configs)
    if processes <= 1:
        collect(map(_chunk, tasks))
    else:
        with _context().Pool(processes) as pool:
            collect(pool.imap_unordered(_task, tasks))
    return [
        {name: [by_run[(which, run, name)] for run in range(config.runs)] for name in config.policies}
        for which, config in enumerate(configs)
    ]


@dataclass
class Study:
    """Every world's runs, their figures and the goals checked: what `gpuroam sim` reports."""

    config: SimConfig
    worlds: tuple[str, ...]
    results: dict[str, dict[str, list[RunResult]]]  # world -> policy -> runs
    tables: dict[str, dict[str, dict[str, float]]]  # world -> policy -> figures
    goals: dict[str, dict[str, Verdict]]  # world -> goal -> verdict
    seconds: float = 0.0

    def to_json(self) -> dict[str, object]:
        """sim-results.json: the settings, each policy's, and per world its model, figures and goals."""
        return {
            "runs": self.config.runs,
            "days": self.config.days,
            "seed": self.config.seed,
            "processes": self.config.processes,
            "seconds": round(self.seconds, 1),
            "policies": describe_policies(self.config.policies),
            "worlds": {
                world: {
                    "model": WORLDS[world].describe(),
                    "figures": _rounded_table(self.tables[world]),
                    "goals": self.goals[world],
                }
                for world in self.worlds
            },
        }


def _rounded_table(table: dict[str, dict[str, float]]) -> dict[str, dict[str, float]]:
    """Policy -> figures, each rounded to 6 decimals for the JSON."""
    return {policy: {k: round(float(v), 6) for k, v in figures.items()} for policy, figures in table.items()}


def _check_known(what: str, names: Iterable[str], known: Iterable[str]) -> None:
    """ValueError naming the first of `names` not in `known`, and what is known."""
    known = list(known)
    unknown = [n for n in names if n not in known]
    if unknown:
        raise ValueError(f"unknown {what} {unknown[0]!r}; known: {', '.join(known)}")


def study(config: SimConfig, worlds: Sequence[str], progress: Callable[[int], None] | None = None) -> Study:
    """Every policy over `config.runs` worlds of each named kind (see gpuroam.sim.world.WORLDS)."""
    _check_known("world", worlds, WORLDS)
    started = time.perf_counter()
    runs = simulate_all([replace(config, model=WORLDS[world]) for world in worlds], progress)
    results = dict(zip(worlds, runs, strict=True))
    tables = {world: summarize_all(results[world]) for world in worlds}
    verdicts = {world: goals(tables[world]) for world in worlds}
    return Study(config, tuple(worlds), results, tables, verdicts, time.perf_counter() - started)


@dataclass
class TraceStudy:
    """The autoscaling study: every policy on each demand trace, in one world kind."""

    config: SimConfig
    world: str
    traces: tuple[Trace, ...]
    days: dict[Trace, float]
    results: dict[Trace, dict[str, list[RunResult]]]  # trace -> policy -> runs
    tables: dict[str, dict[str, dict[str, float]]]  # trace -> policy -> figures
    goals: dict[str, dict[str, Verdict]]  # candidate -> goal -> verdict
    seconds: float = 0.0

    def to_json(self) -> dict[str, object]:
        return {
            "runs": self.config.runs,
            "seed": self.config.seed,
            "processes": self.config.processes,
            "seconds": round(self.seconds, 1),
            "world": self.world,
            "model": WORLDS[self.world].describe(),
            "policies": describe_policies(self.config.policies),
            "traces": {
                trace: {
                    "days": self.days[trace],
                    "figures": _rounded_table(self.tables[trace]),
                }
                for trace in self.traces
            },
            "goals": self.goals,
        }


def trace_study(
    config: SimConfig,
    traces: Sequence[str],
    world: str = "typical",
    days: float | None = None,
    progress: Callable[[int], None] | None = None,
) -> TraceStudy:
    """Every policy over `config.runs` worlds per trace; `days` overrides TRACE_DAYS."""
    _check_known("trace", traces, TRACES)
    _check_known("world", [world], WORLDS)
    chosen = tuple(t for t in TRACES if t in traces)
    lengths = {t: days if days is not None else TRACE_DAYS[t] for t in chosen}
    started = time.perf_counter()
    configs = [replace(config, model=WORLDS[world], trace=t, days=lengths[t]) for t in chosen]
    results = dict(zip(chosen, simulate_all(configs, progress), strict=True))
    tables: dict[str, dict[str, dict[str, float]]] = {
        t: {name: summarize_demand(runs) for name, runs in results[t].items()} for t in chosen
    }
    return TraceStudy(
        config, world, chosen, lengths, results, tables, autoscale_goals(tables), time.perf_counter() - started
    )


@dataclass
class SpotStudy:
    """The Spot study (issue 22): every policy on the same worlds with Spot, per Spot model."""

    config: SimConfig
    world: str
    models: tuple[str, ...]
    results: dict[str, dict[str, list[RunResult]]]  # Spot model -> policy -> runs
    tables: dict[str, dict[str, dict[str, float]]]  # Spot model -> policy -> figures
    goals: dict[str, dict[str, Verdict]]  # Spot model -> goal -> verdict
    seconds: float = 0.0

    def to_json(self) -> dict[str, object]:
        return {
            "runs": self.config.runs,
            "days": self.config.days,
            "seed": self.config.seed,
            "processes": self.config.processes,
            "seconds": round(self.seconds, 1),
            "world": self.world,
            "model": WORLDS[self.world].describe(),
            "policies": describe_policies(self.config.policies),
            "spot": {
                name: {
                    "model": SPOT_MODELS[name].describe(),
                    "figures": _rounded_table(self.tables[name]),
                    "goals": self.goals[name],
                }
                for name in self.models
            },
        }


def spot_study(
    config: SimConfig, models: Sequence[str], world: str = "typical", progress: Callable[[int], None] | None = None
) -> SpotStudy:
    """Every policy over `config.runs` worlds of kind `world` with each named Spot model (see
    gpuroam.sim.spot_world.SPOT_MODELS); the same worlds under every Spot model."""
    _check_known("Spot model", models, SPOT_MODELS)
    _check_known("world", [world], WORLDS)
    started = time.perf_counter()
    configs = [replace(config, model=WORLDS[world], spot=SPOT_MODELS[m]) for m in models]
    results = dict(zip(models, simulate_all(configs, progress), strict=True))
    tables = {m: {name: summarize_spot(runs) for name, runs in results[m].items()} for m in models}
    verdicts = {m: spot_goals(tables[m]) for m in models}
    return SpotStudy(config, world, tuple(models), results, tables, verdicts, time.perf_counter() - started)
