"""`gpuroam sim`: capacity behaviour at planet scale, by simulation, through gpuroam's real placement."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from gpuroam.cli.app import app
from gpuroam.cli.common import JsonOption, console, die, out

if TYPE_CHECKING:
    from gpuroam.sim.runner import Study


@app.command()
def sim(
    runs: Annotated[
        int, typer.Option(min=1, help="Seeded runs (worlds) per world kind; every policy runs each.")
    ] = 1000,
    days: Annotated[float, typer.Option(min=0.05, help="Days each run lasts after the service is created.")] = 1.0,
    seed: Annotated[int, typer.Option(help="Run i draws its world from \\[seed, i]: same seed, same figures.")] = 1,
    policies: Annotated[
        str,
        typer.Option(
            help="Comma-separated: sequential, gpuroam (the spec's defaults), previous-defaults, no-fallback, race-N, "
            "no-backoff, backoff-4, price-order, timeout-10m, timeout-15m, timeout-20m, single-region; vary one with "
            "NAME:key=value (race, fallback on|off, timeout, ttl, backoff, max, move_back, regions, gpus, min_regions, "
            "min)."
        ),
    ] = "",
    worlds: Annotated[
        str, typer.Option(help="Comma-separated world models: typical, crunch, l4-shortage.")
    ] = "typical,crunch",
    out_dir: Annotated[
        Path | None, typer.Option("--out", help="Folder for sim-results.json and the two PNG plots.")
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
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from gpuroam.sim.policies import DEFAULT_POLICIES, PolicyError
    from gpuroam.sim.runner import SimConfig, study

    names = tuple(p.strip() for p in policies.split(",") if p.strip()) or DEFAULT_POLICIES
    kinds = [w.strip() for w in worlds.split(",") if w.strip()]
    config = SimConfig(runs=runs, days=days, seed=seed, policies=names, processes=processes)
    total = runs * len(kinds)
    try:
        with Progress(
            TextColumn("simulating"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("runs"),
            TimeElapsedColumn(),
            console=console,
            transient=True,
            disable=not console.is_terminal,
        ) as bar:
            task = bar.add_task("runs", total=total)
            done = study(config, kinds, progress=lambda n: bar.advance(task, n))
    except (PolicyError, ValueError) as error:
        die(str(error))
    document = done.to_json() | {"machine": f"{os.cpu_count()} CPUs"}
    written: list[Path] = []
    if out_dir is not None:
        from gpuroam.sim.plots import AVAILABILITY, TIME_TO_CAPACITY, plot_availability, plot_time_to_capacity

        out_dir.mkdir(parents=True, exist_ok=True)
        written.append(out_dir / "sim-results.json")
        written[-1].write_text(json.dumps(document, indent=1) + "\n")
        written.append(plot_time_to_capacity(done.results, out_dir / TIME_TO_CAPACITY))
        written.append(plot_availability(done.tables, out_dir / AVAILABILITY))
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
