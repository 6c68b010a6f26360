"""Summaries of the raw runs of bench/gateway.py, and its markdown tables."""

from __future__ import annotations

from collections import Counter
from statistics import median

RECOVERED = 0.9  # throughput is back once it is within 10% of the level before the kill
RECOVERED_BUCKETS = 3  # ... for this many 100 ms buckets in a row
KEEPS_UP = 0.95  # an open-loop target keeps up when it completes this share of the offered rate
SETTLE_S = 0.5  # buckets this early in a failover run are left out of the level before the kill


def median_of(runs: list[dict], key: str) -> float | None:
    values = [run[key] for run in runs if run.get(key) is not None]
    return round(median(values), 4) if values else None


def summarize_wrk(runs: list[dict]) -> dict:
    return {
        "rps": median_of(runs, "rps"),
        "p50_ms": median_of(runs, "p50_ms"),
        "p99_ms": median_of(runs, "p99_ms"),
        "rps_min": min(run["rps"] for run in runs),
        "rps_max": max(run["rps"] for run in runs),
        "errors": sum(run["non_2xx"] + run["socket_errors"] for run in runs),
        "quiet_runs": sum(run["quiet"] for run in runs),
        "runs": runs,
    }


def summarize_rate(runs: list[dict], direct: dict | None) -> dict:
    latencies = [run["latency_ms"] for run in runs]
    summary = {
        "ok_per_s": median_of(runs, "ok_per_s"),
        "runs_keeping_up": sum(run["ok_per_s"] >= KEEPS_UP * run["rate"] for run in runs),
        "p50_ms": median_of(latencies, "p50"),
        "p99_ms": median_of(latencies, "p99"),
        "generator_lateness_p99_ms": median_of([run["generator_lateness_ms"] for run in runs], "p99"),
        "errors": sum(sum(run["errors"].values()) for run in runs),
        "quiet_runs": sum(run["quiet"] for run in runs),
        "runs": runs,
    }
    for q in ("p50", "p99"):
        mine, base = summary[f"{q}_ms"], direct and direct[f"{q}_ms"]
        summary[f"added_{q}_ms"] = round(mine - base, 4) if mine is not None and base is not None else None
    return summary


def summarize_failover(result: dict, kill_s: float) -> dict:
    """Failures, the level before the kill, and how long until throughput is back near it."""
    bucket_s = result["bucket_s"]
    rates = [n / bucket_s for n in result["buckets"]]
    kill_index = int(kill_s / bucket_s)
    before = median(rates[int(SETTLE_S / bucket_s) : kill_index])
    recovered_at = next(
        (
            i
            for i in range(kill_index, len(rates) - RECOVERED_BUCKETS + 1)
            if all(rate >= RECOVERED * before for rate in rates[i : i + RECOVERED_BUCKETS])
        ),
        None,
    )
    failures = result["failures"]
    return {
        "kill_at_s": round(kill_s, 3),
        "failed": len(failures),
        "failed_by_kind": dict(Counter(kind for _, kind in failures)),
        "rps_before": round(before, 1),
        "recovery_s": None if recovered_at is None else round(max(0.0, recovered_at * bucket_s - kill_s), 3),
        "min_rps_after_kill": round(min(rates[kill_index:]), 1),
        "median_rps_after_kill": round(median(rates[kill_index:]), 1),
        "max_latency_after_kill_ms": max(result["bucket_max_latency_ms"][kill_index:]),
        "raw": result,
    }


def _cell(value: object, digits: int = 2) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    return str(value)


NOTE = (
    "A run is quiet when the cores were mostly idle just before it. In one that was not, or with a\n"
    "generator lateness p99 of several ms, other work on the machine got in the way of that run."
)


def table(headers: list[str], rows: list[list[object]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(_cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def throughput_table(results: dict[str, dict], connections: int) -> str:
    headers = ["target", "req/s", "req/s range", "p50 ms", "p99 ms", "errors", "quiet runs"]
    rows = [
        [
            name,
            r["rps"],
            f"{r['rps_min']:,.0f}-{r['rps_max']:,.0f}",
            r["p50_ms"],
            r["p99_ms"],
            r["errors"],
            f"{r['quiet_runs']}/{len(r['runs'])}",
        ]
        for name, r in results.items()
    ]
    return f"### Closed loop, wrk -t1 -c{connections}, medians\n\n" + table(headers, rows)


def rate_table(results: dict[str, dict], rate: float) -> str:
    headers = [
        "target",
        "ok/s",
        "runs keeping up",
        "p50 ms",
        "p99 ms",
        "added p50 ms",
        "added p99 ms",
        "errors",
        "generator lateness p99 ms",
        "quiet runs",
    ]
    rows = [
        [
            name,
            r["ok_per_s"],
            f"{r['runs_keeping_up']}/{len(r['runs'])}",
            r["p50_ms"],
            r["p99_ms"],
            r["added_p50_ms"],
            r["added_p99_ms"],
            r["errors"],
            r["generator_lateness_p99_ms"],
            f"{r['quiet_runs']}/{len(r['runs'])}",
        ]
        for name, r in results.items()
    ]
    return f"### Open loop at {rate:,.0f} req/s, medians (added = target - direct)\n\n" + table(headers, rows)


def failover_table(results: dict[str, dict], connections: int, duration: float) -> str:
    headers = [
        "target",
        "failed requests",
        "failures by kind",
        "req/s before",
        "back within 10% after (s)",
        "min req/s after kill",
        "median req/s after kill",
        "max latency after kill ms",
        "quiet",
    ]
    rows = [
        [
            name,
            r["failed"],
            ", ".join(f"{kind}: {n}" for kind, n in r["failed_by_kind"].items()) or "-",
            r["rps_before"],
            r["recovery_s"] if r["recovery_s"] is not None else f"not within the {duration:g} s run",
            r["min_rps_after_kill"],
            r["median_rps_after_kill"],
            r["max_latency_after_kill_ms"],
            "yes" if r["quiet"] else "no",
        ]
        for name, r in results.items()
    ]
    title = f"### Failover: {connections} closed-loop connections for {duration:g} s, one of 3 backends SIGKILLed"
    return title + "\n\n" + table(headers, rows)
