"""The simulation's pictures (matplotlib, PNG): time to capacity as CDFs, availability, and the
autoscaling and Spot studies' cost against requests served in time.

Drawn on matplotlib Figures, not through pyplot: files only, so no backend to pick and no global
figure state to close."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter

from gpuroam.sim.simulation import RunResult

TIME_TO_CAPACITY = "sim-time-to-capacity.png"
AVAILABILITY = "sim-availability.png"
AUTOSCALE = "sim-autoscale.png"
SPOT = "sim-spot.png"


_COLORS = ("tab:blue", "tab:orange", "tab:green", "tab:purple", "tab:brown", "tab:pink", "tab:olive", "tab:cyan")


def _style(name: str, i: int) -> dict[str, str | float]:
    """sequential black dashed, gpuroam thick red, the variants in the other colours."""
    if name == "sequential":
        return {"color": "black", "linewidth": 2.2, "linestyle": "--"}
    if name == "gpuroam":
        return {"color": "tab:red", "linewidth": 2.6}
    style: dict[str, str | float] = {"color": _COLORS[i % len(_COLORS)], "linewidth": 1.3}
    if name == "single-region":
        style["linestyle"] = ":"
    return style


def plot_time_to_capacity(results: Mapping[str, Mapping[str, Sequence[RunResult]]], path: Path) -> Path:
    """One panel per world: the CDF over runs of minutes from `up` to the first ready replica."""
    worlds = list(results)
    fig = Figure(figsize=(6.2 * len(worlds), 4.6))
    axes = fig.subplots(1, len(worlds), squeeze=False, sharey=True)
    for ax, world in zip(axes[0], worlds, strict=True):
        top = 1.0
        for i, (name, runs) in enumerate(results[world].items()):
            minutes = np.sort([r.time_to_ready_s / 60.0 for r in runs])
            top = max(top, float(minutes[-1]))
            share = np.arange(1, len(minutes) + 1) / len(minutes)
            ax.step(minutes, share, where="post", label=name, **_style(name, i))
        ax.set_xscale("log")
        ax.set_xlim(1.5, max(60.0, top * 1.1))
        ax.set_ylim(0, 1.01)
        ax.grid(True, which="both", alpha=0.3)
        ax.set_title(f"{world} world: time to first ready replica")
        ax.set_xlabel("minutes after `gpuroam up` (log scale)")
        ax.axhline(0.5, color="grey", linewidth=0.6)
        ax.axhline(0.95, color="grey", linewidth=0.6, linestyle=":")
    axes[0][0].set_ylabel(f"share of {len(next(iter(results[worlds[0]].values())))} runs")
    axes[0][-1].legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return path


def plot_availability(tables: Mapping[str, Mapping[str, Mapping[str, float]]], path: Path) -> Path:
    """Downtime per day (minutes without a ready replica, after the first), per policy and world,
    on a log scale, with the 99.9% line (1.44 minutes a day)."""
    worlds = list(tables)
    policies = list(next(iter(tables.values())))
    fig = Figure(figsize=(max(7.0, 1.0 * len(policies) + 2), 4.8))
    ax = fig.subplots()
    width = 0.8 / len(worlds)
    x = np.arange(len(policies))
    for i, world in enumerate(worlds):
        down = [max(1e-3, (1.0 - tables[world][p]["availability"]) * 1440.0) for p in policies]
        bars = ax.bar(x + (i - (len(worlds) - 1) / 2) * width, down, width, label=f"{world} world")
        for bar, p in zip(bars, policies, strict=True):
            share = tables[world][p]["availability"]
            ax.annotate(
                f"{100 * share:.{2 if share < 0.999 else 3 if share < 0.9999 else 4}f}%",
                (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                ha="center",
                va="bottom",
                fontsize=6.5,
                rotation=90,
                xytext=(0, 2),
                textcoords="offset points",
            )
    ax.axhline(1.44, color="tab:red", linestyle="--", linewidth=1, label="99.9% (1.44 min/day)")
    ax.set_yscale("log")
    ax.set_ylim(1e-3, None)
    ax.set_xticks(x, policies, rotation=25, ha="right")
    ax.set_ylabel("minutes a day with no ready replica (log)")
    ax.set_title("Availability after the first ready replica (labels: share of minutes served)")
    ax.grid(True, axis="y", which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return path


def plot_autoscale(tables: Mapping[str, Mapping[str, Mapping[str, float]]], path: Path) -> Path:
    """One panel per demand trace: each policy's cost per 1,000 images against its share of requests
    answered within 10 s (lower right is better)."""
    return _cost_panels(
        tables,
        path,
        _autoscale_style,
        ("{} trace", "$ per 1,000 images answered"),
        "Autoscaling: cost against requests served in time (lower right is better)",
    )


def plot_spot(tables: Mapping[str, Mapping[str, Mapping[str, float]]], path: Path) -> Path:
    """One panel per Spot model: each policy's cost per 1,000 images against its share of requests
    served within 10 s (lower right is better)."""
    return _cost_panels(
        tables,
        path,
        _spot_style,
        ("Spot model: {}", "$ per 1,000 images asked for"),
        "Spot: cost against requests served in time, same worlds (lower right is better)",
    )


_Style = Callable[[str, int], dict[str, str]]


def _cost_panels(
    tables: Mapping[str, Mapping[str, Mapping[str, float]]],
    path: Path,
    style: _Style,
    labels: tuple[str, str],
    title: str,
) -> Path:
    panels = list(tables)
    fig = Figure(figsize=(max(7.0, 5.0 * len(panels)), 4.4))
    axes = fig.subplots(1, len(panels), squeeze=False)
    for ax, panel in zip(axes[0], panels, strict=True):
        for i, (name, figures) in enumerate(tables[panel].items()):
            point = (100 * figures["served_in_bound"], figures["cost_per_1000_images"])
            ax.scatter(*point, s=70, **style(name, i))
            ax.annotate(name, point, fontsize=7, xytext=(4, 4), textcoords="offset points")
        ax.set_ylim(0, None)
        ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"${v:.2f}"))
        ax.set_title(labels[0].format(panel))
        ax.set_xlabel("requests served within 10 s (%)")
        ax.grid(True, alpha=0.3)
    axes[0][0].set_ylabel(labels[1])
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return path


def _autoscale_style(name: str, i: int) -> dict[str, str]:
    base = name.split(":")[0]
    if base == "fixed":
        return {"color": "black", "marker": "s"}
    if base == "skyserve":
        return {"color": "tab:blue" if name == base else "tab:cyan", "marker": "^"}
    return {"color": "tab:red" if name == base else _COLORS[i % len(_COLORS)], "marker": "o"}


def _spot_style(name: str, i: int) -> dict[str, str]:
    base = name.split(":")[0]
    if base == "on-demand":
        return {"color": "black", "marker": "s"}
    if base == "spot-only":
        return {"color": "tab:grey", "marker": "v"}
    if base == "spothedge":
        return {"color": "tab:blue" if name == base else "tab:cyan", "marker": "^"}
    return {"color": "tab:red" if name == "gpuroam-spot" else _COLORS[i % len(_COLORS)], "marker": "o"}
