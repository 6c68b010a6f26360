"""Figures from the load's records, and bench/RELIABILITY.md written from them."""

from __future__ import annotations

import itertools
import json
import statistics
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class Figures:
    sent: int
    succeeded: int
    failed: int
    during_fault: int  # requests in flight at the fault's start or done from then until `settle_s` after its end
    baseline_p50_ms: float | None
    fault_p99_ms: float | None
    fault_max_ms: float | None
    longest_gap_s: float | None  # longest time without a request completing successfully, from the fault on
    errors: dict[str, int] = field(default_factory=dict)
    served_by_region: dict[str, int] = field(default_factory=dict)


def read_load(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def figures(records: list[dict[str, Any]], began: float, ended: float, settle_s: float) -> Figures:
    """Counts over the whole run; latency before the fault vs. from its start to `settle_s` after its end."""
    ok = [r for r in records if r["ok"]]
    before = [r["latency_s"] * 1000 for r in ok if r["start"] + r["latency_s"] < began]
    during = [r["latency_s"] * 1000 for r in records if began <= r["start"] + r["latency_s"] <= ended + settle_s]
    during += [r["latency_s"] * 1000 for r in records if r["start"] < began < r["start"] + r["latency_s"]]
    done = sorted(r["start"] + r["latency_s"] for r in ok)
    marks = [began, *(t for t in done if began <= t <= ended + settle_s), ended + settle_s]
    gap = max((b - a for a, b in itertools.pairwise(marks)), default=None)
    errors = Counter(str(r.get("error") or r.get("status"))[:80] for r in records if not r["ok"])
    return Figures(
        sent=len(records),
        succeeded=len(ok),
        failed=len(records) - len(ok),
        during_fault=len(during),
        baseline_p50_ms=_round(statistics.median(before) if before else None),
        fault_p99_ms=_round(_percentile(during, 0.99)),
        fault_max_ms=_round(max(during) if during else None),
        longest_gap_s=_round(gap, 2),
        errors=dict(errors.most_common(5)),
        served_by_region=dict(Counter(str(r.get("region")) for r in ok)),
    )


def _round(value: float | None, digits: int = 0) -> float | None:
    return None if value is None else round(value, digits)


def markdown(results: list[dict[str, Any]], header: dict[str, str], fuzz: list[dict[str, Any]]) -> str:
    """The whole of bench/RELIABILITY.md."""
    lines = [
        "# Reliability: faults, bad input and load",
        "",
        "Written by `make reliability` (`python bench/reliability.py`); do not edit by hand.",
        "",
        *(f"- {key}: {value}" for key, value in header.items()),
        "",
        "Each scenario serves `examples/stable-diffusion.yaml` (two regions on nvidia-l4, 1 replica each, tiny",
        "model) on the sites of `examples/local-regions.yaml`, under steady load from a separate process",
        "(`bench/reliability_support/load.py`: clients generating 64x64 images back to back through the",
        "endpoint). Latency: p50 before the fault; p99 and max from the fault's start until a few seconds",
        "after its end. Gap: the longest time in that window in which no request completed successfully.",
        "",
        "Reading the latency: this machine has 2 cores, shared by the load, the gateway, the control",
        "plane and the workers. A fault that starts a Python process (a restarted control plane or",
        "gateway: about 3 s of CPU to import) or makes the reconciler work stalls everyone for a few",
        "seconds. That is the likely reason (not measured apart) why faults that do not touch the",
        "data path (the database, the control plane) show spikes as large as those that do. The",
        "counts are the figures to read.",
        "",
        "| scenario | sent | succeeded | failed | goal | p50 before | p99 / max in fault | longest gap |",
        "|---|---:|---:|---:|---|---:|---:|---:|",
    ]
    for result in results:
        if result.get("skipped"):
            lines.append(f"| {result['title']} | - | - | - | skipped: {result['skipped']} | | | |")
            continue
        f = result["figures"]
        goal = "0 failed" if result["goal_zero_failed"] else "measured"
        met = "" if not result["goal_zero_failed"] else (" ✅" if f["failed"] == 0 else " ❌")
        lines.append(
            f"| {result['title']} | {f['sent']} | {f['succeeded']} | {f['failed']} | {goal}{met} | "
            f"{_ms(f['baseline_p50_ms'])} | {_ms(f['fault_p99_ms'])} / {_ms(f['fault_max_ms'])} | "
            f"{f['longest_gap_s']} s |"
        )
    lines.append("")
    for result in results:
        lines += [f"## {result['title']} (`{result['name']}`)", ""]
        if result.get("skipped"):
            lines += [f"Skipped: {result['skipped']}", ""]
            continue
        lines += [f"- {note}" for note in result["notes"]]
        lines += [f"- {key}: {value}" for key, value in result["extra"].items()]
        f = result["figures"]
        lines.append(f"- served by region: {', '.join(f'{k} {v}' for k, v in sorted(f['served_by_region'].items()))}")
        if f["errors"]:
            lines.append(f"- failures: {'; '.join(f'{n}x {e}' for e, n in f['errors'].items())}")
        if result.get("explanation"):
            lines.append(f"- why: {result['explanation']}")
        lines.append("")
    if fuzz:
        lines += [
            "## Bad input and security",
            "",
            "| suite | tests | passed | failed | seconds |",
            "|---|---:|---:|---:|---:|",
        ]
        lines += [f"| {s['suite']} | {s['tests']} | {s['passed']} | {s['failed']} | {s['seconds']} |" for s in fuzz]
        lines.append("")
    return "\n".join(lines)


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f} ms"
