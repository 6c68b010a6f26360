"""The simulated world: capacity timelines, launch look-ups and demand, on a seeded Generator."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from gpuroam.catalog import load_catalog
from gpuroam.sim.world import (
    DAY_MIN,
    MINUTE,
    WORLDS,
    Layout,
    World,
    WorldModel,
    build_world,
    demand_shape,
    renewal_available,
)

LAYOUT = Layout.from_catalog(load_catalog())


@given(hours=st.lists(st.floats(-48.0, 48.0), min_size=1, max_size=20))
def test_demand_shape_stays_between_a_quarter_and_the_peak(hours: list[float]) -> None:
    shape = demand_shape(np.array(hours))
    assert np.all(shape >= 0.25 - 1e-12) and np.all(shape <= 1.0 + 1e-12)


def test_demand_peaks_in_the_local_evening() -> None:
    hours = np.arange(24.0)
    assert int(np.argmax(demand_shape(hours))) == 19 and int(np.argmin(demand_shape(hours))) == 7


def test_renewal_is_out_of_stock_about_the_asked_share_of_the_time() -> None:
    rng = np.random.default_rng(7)
    fraction = np.array([0.1, 0.3, 0.6])
    available = renewal_available(
        rng, np.repeat(fraction, 40), np.repeat([30.0, 90.0, 120.0], 40), 1.0, 20 * DAY_MIN, 2 * DAY_MIN
    )
    out = 1.0 - available.reshape(3, 40, -1).mean(axis=(1, 2))
    assert np.allclose(out, fraction, atol=0.05), out


def test_a_world_is_its_seed() -> None:
    a = build_world(WorldModel(), LAYOUT, np.random.default_rng([3, 1]), 1.0)
    b = build_world(WorldModel(), LAYOUT, np.random.default_rng([3, 1]), 1.0)
    c = build_world(WorldModel(), LAYOUT, np.random.default_rng([3, 2]), 1.0)
    assert np.array_equal(a.available, b.available) and a.start_s == b.start_s
    assert not np.array_equal(a.available, c.available)
    assert a.available.shape == (len(LAYOUT.pairs), a.minutes)
    assert a.minutes * MINUTE >= a.start_s + 86400.0
    assert set(np.unique(a.quota)) <= {0, WorldModel().quota_gpus}


def test_a_crunch_has_less_capacity_than_a_typical_world() -> None:
    typical = [build_world(WORLDS["typical"], LAYOUT, np.random.default_rng([1, i]), 1.0) for i in range(4)]
    crunch = [build_world(WORLDS["crunch"], LAYOUT, np.random.default_rng([1, i]), 1.0) for i in range(4)]
    assert np.mean([w.available.mean() for w in crunch]) < np.mean([w.available.mean() for w in typical]) - 0.1


def _tiny_world(row: list[bool]) -> World:
    model = WorldModel()
    return World(model, LAYOUT, len(row), np.array([row]), np.array([8]), [], np.zeros((1, len(row))), 0.0)


@settings(max_examples=60)
@given(
    row=st.lists(st.booleans(), min_size=1, max_size=30),
    t=st.floats(0.0, 40 * MINUTE),
    span=st.floats(0.0, 40 * MINUTE),
)
def test_next_capacity_is_the_first_minute_with_capacity(row: list[bool], t: float, span: float) -> None:
    world = _tiny_world(row)
    found = world.next_capacity(0, t, t + span)
    first = int(t // MINUTE)
    candidates = [m for m in range(first, min(len(row), int((t + span) // MINUTE) + 1)) if row[m]]
    if not candidates:
        assert found is None
    else:
        assert found == max(t, candidates[0] * MINUTE)
        assert world.has_capacity(0, found)


def test_traffic_shares_sum_to_one_and_follow_the_sun() -> None:
    world = build_world(WorldModel(), LAYOUT, np.random.default_rng(0), 1.0)
    evening_americas = world.traffic(2 * 60)  # 02:00 UTC is 20:00 in Iowa
    evening_asia = world.traffic(11 * 60)  # 11:00 UTC is 19:00 in Taiwan
    assert abs(sum(evening_americas.values()) - 1.0) < 0.03
    assert evening_americas["us-central1"] > evening_asia["us-central1"]
    assert evening_asia["asia-east1"] > evening_americas["asia-east1"]
