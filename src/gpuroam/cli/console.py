"""What the CLI shows people: tables of services and replicas, and event lines."""

from __future__ import annotations

import time
from typing import Any

from rich.console import Console
from rich.table import Table

STATE_STYLES = {"ready": "green", "provisioning": "yellow", "draining": "cyan", "failed": "red"}
EVENT_STYLES = {
    "ready": "green",
    "up": "blue",
    "placed": "blue",
    "failover": "magenta",
    "stockout": "red",
    "blocked": "red",
    "failed": "red",
    "recovered": "green",
    "drained": "cyan",
    "chaos": "bold red",
    "expanded": "blue",
    "shrunk": "cyan",
    "scaled-up": "magenta",
    "scaled-down": "cyan",
    "slept": "dim",
    "woke": "bold green",
    "preempted": "bold magenta",
}


def age(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f}s"
    if seconds < 5400:
        return f"{seconds / 60:.0f}m"
    return f"{seconds / 3600:.1f}h"


def _since(service: dict[str, Any]) -> str:
    since = service.get("desired_since")
    return f" ({age(time.time() - since)} ago)" if since else ""


def service_table(service: dict[str, Any]) -> Table:
    ready = sum(r["state"] == "ready" for r in service["replicas"])
    regions = {r["region"] for r in service["replicas"] if r["state"] == "ready"}
    title = (
        f"[bold]{service['name']}[/]  endpoint [cyan]{service['endpoint'] or '(none ready yet)'}[/]  "
        f"{ready} ready in {len(regions)} region(s), {service.get('desired', ready)} wanted"
        + ("  [red](deleting)[/]" if service.get("deleted") else "")
        + (f"\n[dim]{service['reason']}{_since(service)}[/]" if service.get("reason") else "")
        + _cost(service)
    )
    table = Table(title=title, title_justify="left", expand=False)
    for column in ("replica", "region", "GPU", "capacity", "$/hour", "state", "URL", "age"):
        table.add_column(column, justify="right" if column == "$/hour" else "left")
    for replica in sorted(service["replicas"], key=lambda r: (r["region"], r["id"])):
        style = STATE_STYLES.get(replica["state"], "")
        table.add_row(
            replica["id"],
            replica["region"],
            replica["gpu"],
            replica.get("capacity", "on-demand"),  # a server from before Spot: all on demand
            dollars(replica.get("price_per_hour")),
            f"[{style}]{replica['state']}[/]",
            replica["url"] or "",
            age(replica["age_s"]),
        )
    return table


def _cost(service: dict[str, Any]) -> str:
    """The service's $/hour, and what all on-demand would cost where Spot makes a difference."""
    cost, on_demand = service.get("cost_per_hour"), service.get("on_demand_cost_per_hour")
    if cost is None:
        return ""
    line = f"\n{dollars(cost)}/hour"
    if on_demand and on_demand > cost:
        line += f" (all on demand: {dollars(on_demand)}/hour; Spot saves {1 - cost / on_demand:.0%})"
    return line


def dollars(per_hour: float | None) -> str:
    """$0.56 for a price, '?' where the catalog has none (a local site it does not know)."""
    return "?" if per_hour is None else f"${per_hour:.2f}"


def event_line(event: dict[str, Any]) -> str:
    stamp = time.strftime("%H:%M:%S", time.localtime(event["ts"]))
    style = EVENT_STYLES.get(event["kind"], "")
    return f"{stamp} [{style}]{event['kind']:>11}[/] {event['message']}"


def print_status(console: Console, status: dict[str, Any]) -> None:
    if not status["services"]:
        console.print("no services; start one with `gpuroam up SPEC`")
    for service in status["services"]:
        console.print(service_table(service))


def scripted_summary(summary: Any) -> Table:
    """`demo --scripted`'s result: traffic served and failed, shares, and how long each move and phase took."""
    verdict = "[green]0 failed[/]" if summary.failed == 0 else f"[red]{summary.failed} failed[/]"
    title = f"[bold]Five moves, then a burst, a quiet and a wake, under load[/]: {summary.served} served, {verdict}"
    table = Table(title=title, title_justify="left")
    table.add_column("measure")
    table.add_column("value")
    for region, share in summary.share_by_region.items():
        table.add_row(f"share served by {region}", f"{share:.0%}")
    for phase, gpus in summary.gpus_by_phase.items():
        table.add_row(f"GPUs serving during {phase}", ", ".join(gpus) or "-")
    timings = {
        "failover (fail -> 2 regions on other GPUs)": summary.failover_s,
        "recovery (recover -> preferred placement)": summary.recovery_s,
        "scale-in (autoscale + shrink -> 1 region for 1 client)": summary.one_region_s,
        "burst -> scaled-up decision": summary.scale_up_s,
        "burst -> 3 regions serving": summary.scale_out_s,
        "quiet -> scaled-down decision": summary.scale_in_s,
        "quiet -> asleep": summary.sleep_s,
        "wake (a request to the sleeping service -> its answer)": summary.wake_s,
    }
    for measure, seconds in timings.items():
        if seconds is not None:
            table.add_row(measure, f"{seconds:.1f} s")
    regions = (f"{region} ({', '.join(gpus)})" for region, gpus in summary.burst_regions.items())
    table.add_row("regions serving the burst", ", ".join(regions) or "-")
    table.add_row("the wake's answer", "-" if summary.wake_status is None else f"HTTP {summary.wake_status}")
    table.add_row("endpoint unchanged by expand", "yes" if summary.endpoint_unchanged else "[red]no[/]")
    for failure in summary.failures[:5]:
        table.add_row("[red]failure[/]", failure)
    return table
