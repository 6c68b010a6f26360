"""From runs to figures: per policy, pooled over every run, and the issue's goals checked."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Required, TypedDict

import numpy as np

from gpuroam.sim.simulation import RunResult

BASELINE = "sequential"
CANDIDATE = "gpuroam"
SINGLE = "single-region"
FIXED, SKYSERVE, AUTOSCALE = "fixed", "skyserve", "autoscale"  # the autoscaling study's three
ON_DEMAND, SPOT_CANDIDATE, SPOTHEDGE = "on-demand", "gpuroam-spot", "spothedge"  # the Spot study's
POINT = 0.001  # 0.1 percentage point, as a share


class Verdict(TypedDict, total=False):
    """One goal checked: what it asks, the figure, and whether it was met (where it is a pass/fail goal)."""

    goal: Required[str]
    value: Required[float]
    share_gain: float  # autoscaling: share within the bound, autoscale's less fixed's
    traces_won: str
    met: bool
    per_hour: float  # the cost goal: extra cost per hour, beside per 1,000 images
    downtime_ratio: float | None  # single region: how many times gpuroam's downtime (None: gpuroam had none)
    availability_gain: float  # Spot: the candidate's availability less the other's
    served_gain: float  # Spot: the candidate's share served within the bound less the other's


def summarize(runs: Sequence[RunResult]) -> dict[str, float]:
    """One policy's figures. Times to ready in minutes; availability and served demand are over
    the time after the first ready replica (the service's life once it serves), pooled."""
    ttr = np.array([r.time_to_ready_s for r in runs]) / 60.0
    window = sum(r.window_s for r in runs)
    hours = sum(r.hours for r in runs)
    demand = sum(r.demand for r in runs)
    images = sum(r.capacity_images for r in runs)
    cost = sum(r.cost_usd for r in runs)
    per_run = np.array([min(1.0, r.up_s / r.window_s) for r in runs if r.window_s > 0])
    return {
        "runs": len(runs),
        "ready_median_min": float(np.median(ttr)),
        "ready_p95_min": float(np.percentile(ttr, 95)),
        "ready_mean_min": float(ttr.mean()),
        "never_ready": int(sum(not r.reached for r in runs)),
        "availability": min(1.0, sum(r.up_s for r in runs) / window) if window else 0.0,
        "runs_at_999": float((per_run >= 0.999).mean()) if len(per_run) else 0.0,
        "served_in_bound": min(1.0, sum(r.served for r in runs) / demand) if demand else 0.0,
        "cost_per_hour": cost / hours,
        "cost_per_1000_images": 1000.0 * cost / images if images else float("inf"),
        "moves_per_day": 24.0 * sum(r.moves for r in runs) / hours,
        "released_per_day": 24.0 * sum(r.released for r in runs) / hours,
        "losses_per_day": 24.0 * sum(r.losses for r in runs) / hours,
        "launches_per_day": 24.0 * sum(r.launches for r in runs) / hours,
        "failures_per_day": 24.0 * sum(r.failures for r in runs) / hours,
        "ready_replicas": sum(r.ready_replicas * r.window_s for r in runs) / window if window else 0.0,
    }


def summarize_all(results: Mapping[str, Sequence[RunResult]]) -> dict[str, dict[str, float]]:
    return {name: summarize(runs) for name, runs in results.items()}


def goals(table: Mapping[str, Mapping[str, float]], candidate: str = CANDIDATE) -> dict[str, Verdict]:
    """The issue's goals, where the policies they compare were run."""
    out: dict[str, Verdict] = {}
    base, cand, single = table.get(BASELINE), table.get(candidate), table.get(SINGLE)
    if base and cand:
        speedup = base["ready_median_min"] / cand["ready_median_min"]
        extra = cand["cost_per_1000_images"] / base["cost_per_1000_images"] - 1.0
        extra_hour = cand["cost_per_hour"] / base["cost_per_hour"] - 1.0
        out["time_to_capacity"] = {
            "goal": "median time to first ready replica >= 5x lower than sequential",
            "value": round(speedup, 2),
            "met": bool(speedup >= 5.0),
        }
        out["cost"] = {
            "goal": "at most 10% extra cost per 1,000 images (speed counted) over sequential",
            "value": round(extra, 4),
            "per_hour": round(extra_hour, 4),
            "met": bool(extra <= 0.10),
        }
    if cand:
        out["availability"] = {
            "goal": "99.9% of minutes with a ready replica",
            "value": round(cand["availability"], 6),
            "met": bool(cand["availability"] >= 0.999),
        }
    if cand and single:
        out["single_region"] = {
            "goal": "a single region gives far less",
            "value": round(single["availability"], 6),
            "downtime_ratio": (
                round((1 - single["availability"]) / (1 - cand["availability"]), 1)
                if cand["availability"] < 1
                else None
            ),
        }
    return out


COLUMNS = (
    ("ready_median_min", "ready p50 (min)", "{:.1f}"),
    ("ready_p95_min", "ready p95 (min)", "{:.1f}"),
    ("availability", "available", "{:.4%}"),
    ("runs_at_999", "runs >= 99.9%", "{:.1%}"),
    ("served_in_bound", "served < 10 s", "{:.1%}"),
    ("cost_per_hour", "$/hour", "{:.3f}"),
    ("cost_per_1000_images", "$/1k images", "{:.3f}"),
    ("moves_per_day", "moves/day", "{:.2f}"),
    ("released_per_day", "released/day", "{:.2f}"),
    ("launches_per_day", "launches/day", "{:.1f}"),
    ("failures_per_day", "failed/day", "{:.1f}"),
)


Columns = Sequence[tuple[str, str, str]]


def markdown_table(table: Mapping[str, Mapping[str, float]], columns: Columns = COLUMNS) -> str:
    """One world's (or trace's) figures as a Markdown table, a row per policy."""
    lines = [
        "| policy | " + " | ".join(header for _, header, _ in columns) + " |",
        "|---|" + "---|" * len(columns),
    ]
    for policy, figures in table.items():
        lines.append(f"| {policy} | " + " | ".join(fmt.format(figures[key]) for key, _, fmt in columns) + " |")
    return "\n".join(lines)


def goal_lines(verdicts: Mapping[str, Verdict]) -> list[str]:
    """Each verdict as one line for the terminal: the goal, its figures, met or not."""
    out = []
    for verdict in verdicts.values():
        met = verdict.get("met")
        mark = "" if met is None else (" (met)" if met else " (not met)")
        extra = ", ".join(f"{k} {v}" for k, v in verdict.items() if k not in ("goal", "met"))
        out.append(f"{verdict['goal']}: {extra}{mark}")
    return out


def summarize_demand(runs: Sequence[RunResult]) -> dict[str, float]:
    """One policy's figures on a demand trace, pooled over runs: what the images cost, how many were
    answered within the bound, the GPU time bought, and the wakes from zero with their waits."""
    hours = sum(r.hours for r in runs)
    asked = sum(r.asked for r in runs)
    answered = sum(r.answered for r in runs)
    cost = sum(r.cost_usd for r in runs)
    waits = np.array([w for r in runs for w in r.wake_waits])
    return {
        "runs": len(runs),
        "cost_per_1000_images": 1000.0 * cost / answered if answered else float("inf"),
        "served_in_bound": sum(r.in_bound for r in runs) / asked if asked else 0.0,
        "given_up": 1.0 - answered / asked if asked else 0.0,
        "cost_per_day": 24.0 * cost / hours,
        "replica_hours_per_day": 24.0 * sum(r.node_hours for r in runs) / hours,
        "wakes_per_day": 24.0 * sum(r.wakes for r in runs) / hours,
        "wake_wait_median_s": float(np.median(waits)) if len(waits) else 0.0,
        "wake_wait_p95_s": float(np.percentile(waits, 95)) if len(waits) else 0.0,
        "images_per_day": 24.0 * asked / hours,
    }


def autoscale_goals(tables: Mapping[str, Mapping[str, Mapping[str, float]]]) -> dict[str, dict[str, Verdict]]:
    """Issue 19's goals for each gpuroam autoscale policy run (`autoscale` and its variants)."""
    names = {name for table in tables.values() for name in table if name.split(":")[0] == AUTOSCALE}
    return {name: candidate_goals(tables, name) for name in sorted(names)}


def candidate_goals(tables: Mapping[str, Mapping[str, Mapping[str, float]]], candidate: str) -> dict[str, Verdict]:
    """At least 40% cheaper per 1,000 images than the fixed size on the sparse and burst traces at an
    equal or better share within the bound; better than the SkyServe-style autoscaler on both cost
    and share on at least two of the three traces."""
    out: dict[str, Verdict] = {}
    for trace in ("sparse", "burst"):
        table = tables.get(trace, {})
        fixed, mine = table.get(FIXED), table.get(candidate)
        if fixed and mine:
            saving = 1.0 - mine["cost_per_1000_images"] / fixed["cost_per_1000_images"]
            share = mine["served_in_bound"] - fixed["served_in_bound"]
            out[f"{trace}_vs_fixed"] = {
                "goal": f"{trace}: >= 40% cheaper per 1,000 images than fixed, share within 10 s >= fixed's",
                "value": round(saving, 4),
                "share_gain": round(share, 4),
                "met": bool(saving >= 0.40 and share >= 0.0),
            }
    compared = [t for t in tables if SKYSERVE in tables[t] and candidate in tables[t]]
    if compared:
        wins = [t for t in compared if _beats(tables[t][candidate], tables[t][SKYSERVE])]
        out["vs_skyserve"] = {
            "goal": "cheaper per 1,000 images and more served within 10 s than SkyServe-style on >= 2 of 3 traces",
            "value": len(wins),
            "traces_won": ",".join(wins),
            "met": bool(len(wins) >= min(2, len(compared))),
        }
    return out


def _beats(mine: Mapping[str, float], theirs: Mapping[str, float]) -> bool:
    return (
        mine["cost_per_1000_images"] < theirs["cost_per_1000_images"]
        and mine["served_in_bound"] > theirs["served_in_bound"]
    )


DEMAND_COLUMNS = (
    ("cost_per_1000_images", "$/1k images", "{:.3f}"),
    ("served_in_bound", "served < 10 s", "{:.2%}"),
    ("given_up", "given up", "{:.2%}"),
    ("cost_per_day", "$/day", "{:.2f}"),
    ("replica_hours_per_day", "replica-h/day", "{:.1f}"),
    ("wakes_per_day", "wakes/day", "{:.2f}"),
    ("wake_wait_median_s", "wake wait p50 (s)", "{:.0f}"),
    ("wake_wait_p95_s", "wake wait p95 (s)", "{:.0f}"),
)


def summarize_spot(runs: Sequence[RunResult]) -> dict[str, float]:
    """One policy's figures in the Spot study, pooled over runs. $/1k images is the whole run's cost
    over the images asked for once the service served (the same demand for every policy, so it
    compares what serving it cost); requests retried after a replica died undrained count as not
    served within the bound."""
    base = summarize(runs)
    hours = sum(r.hours for r in runs)
    window = sum(r.window_s for r in runs)
    demand = sum(r.demand for r in runs)
    cost = sum(r.cost_usd for r in runs)
    node_hours = sum(r.node_hours for r in runs)
    served = sum(r.served for r in runs) - sum(r.retried for r in runs)
    return {
        "runs": len(runs),
        "cost_per_1000_images": 1000.0 * cost / demand if demand else float("inf"),
        "cost_per_hour": cost / hours,
        "availability": base["availability"],
        "full_capacity": sum(r.full_s for r in runs) / window if window else 0.0,
        "served_in_bound": max(0.0, served / demand) if demand else 0.0,
        "retried_per_day": 24.0 * sum(r.retried for r in runs) / hours,
        "preemptions_per_day": 24.0 * sum(r.preemptions for r in runs) / hours,
        "moves_per_day": base["moves_per_day"],
        "launches_per_day": base["launches_per_day"],
        "failures_per_day": base["failures_per_day"],
        "spot_share": sum(r.spot_node_hours for r in runs) / node_hours if node_hours else 0.0,
        "ready_median_min": base["ready_median_min"],
    }


def spot_goals(table: Mapping[str, Mapping[str, float]], candidate: str = SPOT_CANDIDATE) -> dict[str, Verdict]:
    """Issue 22's goals for `candidate`: at least 50% cheaper per 1,000 images than all on-demand,
    with availability and the share served within 10 s no worse than all on-demand's by more than
    0.1 point; cheaper than each SpotHedge-like policy run at equal availability (within 0.1 point)."""
    out: dict[str, Verdict] = {}
    mine, od = table.get(candidate), table.get(ON_DEMAND)
    if mine is None:
        return out
    if od:
        saving = 1.0 - mine["cost_per_1000_images"] / od["cost_per_1000_images"]
        out["cost_vs_on_demand"] = {
            "goal": "at least 50% cheaper per 1,000 images than all on-demand",
            "value": round(saving, 4),
            "met": bool(saving >= 0.5),
        }
        for key, name in (("availability", "availability"), ("served_in_bound", "share served within 10 s")):
            gain = mine[key] - od[key]
            out[f"{key}_vs_on_demand"] = {
                "goal": f"{name} no worse than all on-demand's by more than 0.1 point",
                "value": round(gain, 6),
                "met": bool(gain >= -POINT),
            }
    for name in (n for n in table if n.split(":")[0] == SPOTHEDGE):
        hedge = table[name]
        extra = mine["cost_per_1000_images"] / hedge["cost_per_1000_images"] - 1.0
        gain = mine["availability"] - hedge["availability"]
        out[f"vs_{name}"] = {
            "goal": f"cheaper per 1,000 images than {name} at equal availability (within 0.1 point)",
            "value": round(extra, 4),
            "availability_gain": round(gain, 6),
            "served_gain": round(mine["served_in_bound"] - hedge["served_in_bound"], 6),
            "met": bool(extra < 0 and gain >= -POINT),
        }
    return out


SPOT_COLUMNS = (
    ("cost_per_1000_images", "$/1k images", "{:.3f}"),
    ("cost_per_hour", "$/hour", "{:.3f}"),
    ("availability", "available", "{:.4%}"),
    ("full_capacity", "full capacity", "{:.2%}"),
    ("served_in_bound", "served < 10 s", "{:.2%}"),
    ("retried_per_day", "retried/day", "{:.2f}"),
    ("preemptions_per_day", "preemptions/day", "{:.2f}"),
    ("moves_per_day", "moves/day", "{:.2f}"),
    ("launches_per_day", "launches/day", "{:.1f}"),
    ("spot_share", "Spot share", "{:.1%}"),
)
