"""`gpuroam sim`: capacity behaviour at planet scale, by simulation, through gpuroam's real placement."""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from gpuroam.cli.app import app
from gpuroam.cli.common import JsonOption, console, die, out

if TYPE_CHECKING:
    from gpuroam.sim.runner import SimConfig, SpotStudy, Study

SPOT_RUNS = 200  # the Spot study's default: about a minute on two cores
POLICIES_HELP = (
    "Comma-separated: sequential, gpuroam (the spec's defaults), previous-defaults, no-fallback, race-N, "
    "no-backoff, backoff-4, price-order, timeout-10m, timeout-15m, timeout-20m, single-region; vary one with "
    "NAME:key=value (race, fallback on|off, timeout, ttl, backoff, max, move_back, regions, gpus, min_regions, "
    "min, max_replicas). With --traces: fixed, skyserve, autoscale (default: all three), varied with "
    "target, up, down, sleep (autoscale) or qps (skyserve). With --spot: on-demand, spot-only, spothedge, "
    "gpuroam-spot (default: these, and spothedge:extra=1), varied with base (on-demand replicas kept) or "
    "extra (SpotHedge's Spot overprovisioning)."
)


@app.command()
def sim(
    runs: Annotated[
        int | None,
        typer.Option(
            min=1,
            help=f"Seeded runs (worlds) per world kind, trace or Spot model; every policy runs each "
            f"(default 1000; {SPOT_RUNS} with --spot).",
        ),
    ] = None,
    days: Annotated[
        float | None,
        typer.Option(
            min=0.05,
            help="Days each run lasts after the service is created (default 1; with --traces, "
            "2 for steady and burst, 7 for sparse).",
        ),
    ] = None,
    seed: Annotated[int, typer.Option(help="Run i draws its world from \\[seed, i]: same seed, same figures.")] = 1,
    policies: Annotated[str, typer.Option(help=POLICIES_HELP)] = "",
    worlds: Annotated[
        str,
        typer.Option(
            help="Comma-separated world models: typical, crunch, l4-shortage (default typical,crunch; "
            "with --traces one world, default typical)."
        ),
    ] = "",
    traces: Annotated[
        str,
        typer.Option(
            help="The autoscaling study: comma-separated demand traces (steady, burst, sparse) that every "
            "policy serves, with requests, queues and costs."
        ),
    ] = "",
    spot: Annotated[
        str,
        typer.Option(
            help="The Spot study: comma-separated Spot models (base; low and high: preemptions 10x rarer, "
            "3x more frequent) under which every policy serves the same worlds."
        ),
    ] = "",
    out_dir: Annotated[
        Path | None, typer.Option("--out", help="Folder for the study's JSON figures and its PNG plots.")
    ] = None,
    processes: Annotated[int, typer.Option(min=1, help="Worker processes (runs are spread over them).")] = 2,
    json_out: JsonOption = False,
) -> None:
    """Simulate GPU capacity across the catalog's regions and compare how policies find it.

    Each run draws a world (stockouts, quotas, incidents, launch times, lost replicas, a daily demand
    trace across continents) and plays every policy in it; gpuroam's policies call the real
    placement code. Figures: time to first ready replica, availability, demand served within
    10 s, cost per hour and per 1,000 images, moves a day.
    """
    from gpuroam.sim.policies import AUTOSCALE_POLICIES, DEFAULT_POLICIES, SPOT_POLICIES
    from gpuroam.sim.runner import SimConfig

    chosen, kinds = _names(policies), list(_names(worlds))
    if traces and spot:
        die("--traces and --spot are two studies: give one")
    if traces:
        config = SimConfig(runs=runs or 1000, seed=seed, policies=chosen or AUTOSCALE_POLICIES, processes=processes)
        _traces(config, list(_names(traces)), kinds, days, out_dir, json_out)
        return
    config = SimConfig(
        runs=runs or (SPOT_RUNS if spot else 1000),
        days=days or 1.0,
        seed=seed,
        policies=chosen or (SPOT_POLICIES if spot else DEFAULT_POLICIES),
        processes=processes,
    )
    if spot:
        _spot(config, list(_names(spot)), kinds, out_dir, json_out)
    else:
        _capacity(config, kinds or ["typical", "crunch"], out_dir, json_out)


def _names(text: str) -> tuple[str, ...]:
    """A comma-separated option's names."""
    return tuple(name.strip() for name in text.split(",") if name.strip())


def _capacity(config: SimConfig, kinds: list[str], out_dir: Path | None, json_out: bool) -> None:
    """`gpuroam sim`: the capacity study, its tables, goals and plots."""
    from gpuroam.sim.policies import PolicyError
    from gpuroam.sim.runner import study

    try:
        with _progress(config.runs * len(kinds)) as advance:
            done = study(config, kinds, progress=advance)
    except (PolicyError, ValueError) as error:
        die(str(error))
    document = done.to_json() | {"machine": f"{os.cpu_count()} CPUs"}

    def draw(folder: Path) -> list[Path]:
        from gpuroam.sim.plots import AVAILABILITY, TIME_TO_CAPACITY, plot_availability, plot_time_to_capacity

        return [
            plot_time_to_capacity(done.results, folder / TIME_TO_CAPACITY),
            plot_availability(done.tables, folder / AVAILABILITY),
        ]

    written = _write(out_dir, "sim-results.json", document, draw)
    if json_out:
        out.print_json(data=document | {"files": [str(p) for p in written]})
        return
    _print(done, written)


def _print(done: Study, written: list[Path]) -> None:
    """A table per world (Markdown when not on a terminal, to paste into bench/RESULTS.md)."""
    from rich.table import Table

    from gpuroam.sim.figures import COLUMNS, goal_lines, markdown_table

    config = done.config
    for world in done.worlds:
        title = f"{world} world: {config.runs} runs of {config.days:g} days, seed {config.seed}"
        if out.is_terminal:
            table = Table(title=title)
            table.add_column("policy")
            for _, header, _ in COLUMNS:
                table.add_column(header, justify="right")
            for policy, figures in done.tables[world].items():
                table.add_row(policy, *(fmt.format(figures[key]) for key, _, fmt in COLUMNS))
            out.print(table)
        else:
            out.print(f"\n{title}\n\n{markdown_table(done.tables[world])}\n", soft_wrap=True)
        for line in goal_lines(done.goals[world]):
            out.print(f"- {line}", soft_wrap=True, markup=False)
    out.print(f"{done.seconds:.0f} s with {config.processes} processes")
    for path in written:
        out.print(f"wrote {path}")


def _write(
    out_dir: Path | None, name: str, document: dict[str, object], draw: Callable[[Path], list[Path]]
) -> list[Path]:
    """With --out: the figures as JSON (`name`) and the plots `draw` makes there; the files written."""
    if out_dir is None:
        return []
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / name).write_text(json.dumps(document, indent=1) + "\n")
    return [out_dir / name, *draw(out_dir)]


@contextmanager
def _progress(total: int) -> Iterator[Callable[[int], None]]:
    """A bar over `total` runs on a terminal; yields what to call with each number of runs done."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    columns = (TextColumn("simulating"), BarColumn(), MofNCompleteColumn(), TextColumn("runs"), TimeElapsedColumn())
    with Progress(*columns, console=console, transient=True, disable=not console.is_terminal) as bar:
        task = bar.add_task("runs", total=total)
        yield lambda n: bar.advance(task, n)


def _traces(
    config: SimConfig, traces: list[str], worlds: list[str], days: float | None, out_dir: Path | None, json_out: bool
) -> None:
    """`gpuroam sim --traces`: the autoscaling study, its tables, goals and plot."""
    from gpuroam.sim.figures import DEMAND_COLUMNS, goal_lines, markdown_table
    from gpuroam.sim.policies import PolicyError
    from gpuroam.sim.runner import trace_study

    if len(worlds) > 1:
        die("--traces runs in one world: give --worlds one of typical, crunch, l4-shortage")
    total = config.runs * len(traces)
    try:
        with _progress(total) as advance:
            done = trace_study(config, traces, worlds[0] if worlds else "typical", days, advance)
    except (PolicyError, ValueError) as error:
        die(str(error))
    document = done.to_json() | {"machine": f"{os.cpu_count()} CPUs"}

    def draw(folder: Path) -> list[Path]:
        from gpuroam.sim.plots import AUTOSCALE, plot_autoscale

        return [plot_autoscale(done.tables, folder / AUTOSCALE)]

    written = _write(out_dir, "sim-autoscale.json", document, draw)
    if json_out:
        out.print_json(data=document | {"files": [str(p) for p in written]})
        return
    for trace in done.traces:
        title = (
            f"{trace} trace, {done.world} world: {config.runs} runs of {done.days[trace]:g} days, seed {config.seed}"
        )
        out.print(f"\n{title}\n\n{markdown_table(done.tables[trace], DEMAND_COLUMNS)}\n", soft_wrap=True)
    for candidate, verdicts in done.goals.items():
        for line in goal_lines(verdicts):
            out.print(f"- {candidate}: {line}", soft_wrap=True, markup=False)
    out.print(f"{done.seconds:.0f} s with {config.processes} processes")
    for path in written:
        out.print(f"wrote {path}")


def _spot(config: SimConfig, models: list[str], worlds: list[str], out_dir: Path | None, json_out: bool) -> None:
    """`gpuroam sim --spot`: the Spot study, its tables, goals and plot."""
    from gpuroam.sim.policies import PolicyError
    from gpuroam.sim.runner import spot_study

    if len(worlds) > 1:
        die("--spot runs in one world: give --worlds one of typical, crunch, l4-shortage")
    try:
        with _progress(config.runs * len(models)) as advance:
            done = spot_study(config, models, worlds[0] if worlds else "typical", advance)
    except (PolicyError, ValueError) as error:
        die(str(error))
    document = done.to_json() | {"machine": f"{os.cpu_count()} CPUs"}

    def draw(folder: Path) -> list[Path]:
        from gpuroam.sim.plots import SPOT, plot_spot

        return [plot_spot(done.tables, folder / SPOT)]

    written = _write(out_dir, "sim-spot.json", document, draw)
    if json_out:
        out.print_json(data=document | {"files": [str(p) for p in written]})
        return
    _print_spot(done, written)


def _print_spot(done: SpotStudy, written: list[Path]) -> None:
    from gpuroam.sim.figures import SPOT_COLUMNS, goal_lines, markdown_table

    config = done.config
    for model in done.models:
        title = (
            f"Spot model {model}, {done.world} world: {config.runs} runs of {config.days:g} days, seed {config.seed}"
        )
        out.print(f"\n{title}\n\n{markdown_table(done.tables[model], SPOT_COLUMNS)}\n", soft_wrap=True)
        for line in goal_lines(done.goals[model]):
            out.print(f"- {line}", soft_wrap=True, markup=False)
    out.print(f"{done.seconds:.0f} s with {config.processes} processes")
    for path in written:
        out.print(f"wrote {path}")
