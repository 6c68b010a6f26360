"""Demand traces for the autoscaling study: how many images each continent asks for, minute by minute.

- `steady`: the capacity study's smooth global day (every continent, peaking in its evening).
- `burst`: the steady day with one unannounced hour at 20 times the demand (a launch, a post that
  spreads), starting at a random minute of the run (at least an hour after the service starts, so
  it meets a settled service).
- `sparse`: a business-hours service on one continent (Europe): 09:00-18:00 local time on weekdays,
  a morning rise and a lunch dip, nothing at night or at the weekend. Minute 0 is Monday 00:00 UTC.

Rates are images per minute. `with_trace` gives a world its trace and draws the requests themselves
(Poisson counts per minute) from the world's generator, so every policy in a run faces the same
requests (common random numbers).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Literal, get_args

import numpy as np

from gpuroam.sim.world import CONTINENT_DEMAND, DAY_MIN, MINUTE, Floats, Layout, World, WorldModel, demand_trace

Trace = Literal["steady", "burst", "sparse"]
TRACES: tuple[Trace, ...] = get_args(Trace)

BURST_FACTOR = 20.0
BURST_MIN = 60
SPARSE_CONTINENT = "europe"
SPARSE_PEAK = 10.0  # images/min at the busiest minute of a working day
WORK_HOURS = (9.0, 18.0)


def trace_demand(
    trace: Trace, model: WorldModel, layout: Layout, minutes: int, start_min: float, rng: np.random.Generator
) -> Floats:
    """[origins, minutes] images per minute, minute 0 being Monday 00:00 UTC; the run starts at `start_min`."""
    if trace == "steady":
        return demand_trace(model, layout, minutes)
    if trace == "burst":
        demand = demand_trace(model, layout, minutes)
        first = int(start_min) + BURST_MIN
        start = int(rng.integers(first, max(first + 1, minutes - BURST_MIN)))
        demand[:, start : start + BURST_MIN] *= BURST_FACTOR
        return demand
    if trace == "sparse":
        return _business_hours(layout, minutes)
    raise ValueError(f"unknown trace {trace!r}; known: {', '.join(TRACES)}")


def _business_hours(layout: Layout, minutes: int) -> Floats:
    demand = np.zeros((len(layout.origins), minutes))
    if SPARSE_CONTINENT not in layout.origins:
        return demand
    offset = CONTINENT_DEMAND[SPARSE_CONTINENT][1]
    local_min = np.arange(minutes) + offset * 60.0
    weekday = (local_min // DAY_MIN).astype(int) % 7 < 5
    hour = (local_min % DAY_MIN) / 60.0
    start, end = WORK_HOURS
    working = weekday & (hour >= start) & (hour < end)
    # Up over the first hour and a half, a dip at lunch, down over the last hour.
    rise = np.clip((hour - start) / 1.5, 0.0, 1.0)
    fall = np.clip((end - hour) / 1.0, 0.0, 1.0)
    lunch = 1.0 - 0.5 * np.exp(-(((hour - 12.75) / 0.6) ** 2))
    demand[layout.origins.index(SPARSE_CONTINENT)] = np.where(working, SPARSE_PEAK * rise * fall * lunch, 0.0)
    return demand


def with_trace(world: World, trace: Trace, rng: np.random.Generator) -> World:
    """`world` with the trace's demand and its requests: Poisson counts per origin and minute around
    the rates (a quiet minute may have none)."""
    demand = trace_demand(trace, world.model, world.layout, world.minutes, world.start_s / MINUTE, rng)
    return replace(world, demand=demand, arrivals=rng.poisson(demand).astype(np.float64))
