"""Demand traces for the autoscaling study: a steady day, an unannounced burst, a business-hours service."""

from __future__ import annotations

import numpy as np

from gpuroam.catalog import load_catalog
from gpuroam.sim.traces import BURST_FACTOR, BURST_MIN, SPARSE_CONTINENT, SPARSE_PEAK, trace_demand, with_trace
from gpuroam.sim.world import DAY_MIN, WORLDS, Layout, WorldModel, build_world, demand_trace

LAYOUT = Layout.from_catalog(load_catalog())
MODEL = WorldModel()


def test_the_burst_is_one_hour_at_twenty_times_the_steady_day_after_the_service_settled() -> None:
    minutes, start = 2 * DAY_MIN, 300.0
    steady = demand_trace(MODEL, LAYOUT, minutes)
    for seed in range(20):
        burst = trace_demand("burst", MODEL, LAYOUT, minutes, start, np.random.default_rng(seed))
        ratio = burst.sum(axis=0) / steady.sum(axis=0)
        hot = np.flatnonzero(ratio > 1.0)
        assert len(hot) == BURST_MIN and hot[-1] - hot[0] == BURST_MIN - 1
        assert np.allclose(ratio[hot], BURST_FACTOR) and np.allclose(ratio[ratio <= 1.0], 1.0)
        assert hot[0] >= start + 60


def test_the_sparse_service_asks_on_weekday_working_hours_in_one_continent_only() -> None:
    minutes = 7 * DAY_MIN  # minute 0 is Monday 00:00 UTC
    demand = trace_demand("sparse", MODEL, LAYOUT, minutes, 0.0, np.random.default_rng(0))
    europe = LAYOUT.origins.index(SPARSE_CONTINENT)
    assert demand[np.arange(len(LAYOUT.origins)) != europe].sum() == 0
    row = demand[europe]
    assert SPARSE_PEAK * 0.8 < row.max() <= SPARSE_PEAK + 1e-9
    local = np.arange(minutes) + 60  # Europe is UTC+1 in the model
    weekday, hour = local // DAY_MIN % 7 < 5, local % DAY_MIN / 60.0
    assert row[~(weekday & (hour >= 9) & (hour < 18))].sum() == 0, "nothing at night or at the weekend"
    assert row[weekday & (hour >= 10.5) & (hour < 12)].min() > 0.5 * SPARSE_PEAK


def test_a_trace_brings_poisson_requests_drawn_from_the_worlds_generator() -> None:
    world = build_world(WORLDS["typical"], LAYOUT, np.random.default_rng([1, 2]), 2.0)
    first = with_trace(world, "steady", np.random.default_rng([1, 2, 3]))
    again = with_trace(world, "steady", np.random.default_rng([1, 2, 3]))
    assert first.arrivals is not None and again.arrivals is not None
    assert np.array_equal(first.arrivals, again.arrivals), "same generator, same requests"
    assert np.all(first.arrivals == np.round(first.arrivals)) and first.arrivals.min() >= 0
    asked, expected = first.arrivals.sum(), first.demand.sum()
    assert abs(asked - expected) < 5 * np.sqrt(expected)
