"""The autoscaling study's queue: held requests, patience, backlog, the signals autoscalers read,
and the SkyServe-style and gpuroam sizers."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from gpuroam.catalog import load_catalog
from gpuroam.sim.load import PATIENCE_S, LoadModel, Signals
from gpuroam.sim.policies import policy_config
from gpuroam.sim.sizing import AutoscaleSizer, QpsSizer
from gpuroam.sim.world import MINUTE, WORLDS, Layout, World, build_world

LAYOUT = Layout.from_catalog(load_catalog())
L4 = LAYOUT.index[("us-central1", "nvidia-l4")]  # speed 2.2: 0.55 images/s
US = LAYOUT.origins.index("americas")


def world_with(per_minute: float, minutes: int = 120) -> World:
    """A world whose only requests are `per_minute` from the Americas, every minute from minute 0."""
    world = build_world(WORLDS["typical"], LAYOUT, np.random.default_rng(1), 0.1)
    arrivals = np.zeros((len(LAYOUT.origins), minutes))
    arrivals[US] = per_minute
    return replace(world, arrivals=arrivals, minutes=minutes, start_s=0.0)


def test_requests_are_held_while_nothing_serves_and_their_clients_give_up_after_the_patience() -> None:
    load = LoadModel(world_with(6.0), gpu_count=1)
    load.advance(60.0)
    assert load.signals(60.0).held == pytest.approx(6.0) and load.in_bound == 0
    load.advance(PATIENCE_S + 120.0)
    assert load.given_up > 0, "the oldest held requests were given up"
    assert load.signals(PATIENCE_S + 120.0).held == pytest.approx(6.0 * PATIENCE_S / MINUTE, abs=1.0)


def test_a_wake_waits_from_the_request_that_woke_the_service_until_a_replica_is_ready() -> None:
    load = LoadModel(world_with(6.0), gpu_count=1)
    load.advance(30.0)
    load.woke(30.0)
    load.advance(90.0)
    load.ready(L4, 1, 90.0)
    assert load.wake_waits == [pytest.approx(90.0)], "from the oldest held request, at 0"
    assert load.signals(90.0).held == 0 and load.backlog == pytest.approx(9.0), "the held requests are queued"


def test_below_capacity_nearly_everything_is_answered_in_time() -> None:
    load = LoadModel(world_with(12.0), gpu_count=1)  # 0.2 requests/s on 0.55 images/s
    load.ready(L4, 1, 0.0)
    load.advance(3600.0)
    assert load.given_up == 0 and load.backlog == 0
    assert 0.95 < load.in_bound / load.asked <= 1.0
    assert load.served == pytest.approx(load.asked)


def test_above_capacity_the_queue_grows_to_the_patience_and_the_rest_is_given_up() -> None:
    load = LoadModel(world_with(60.0), gpu_count=1)  # 1 request/s on 0.55 images/s
    load.ready(L4, 1, 0.0)
    load.advance(1800.0)
    assert load.backlog == pytest.approx(0.55 * PATIENCE_S, rel=0.01)
    assert load.given_up == pytest.approx(1800 * (1.0 - 0.55) - load.backlog, rel=0.02)
    assert load.in_bound / load.asked < 0.05, "a two-minute queue is never within 10 s"
    signals = load.signals(1800.0)
    assert signals.in_flight > load.backlog and signals.qps == pytest.approx(1.0)


def test_skyserve_waits_fifteen_decisions_to_scale_up_and_sixty_to_scale_down_but_wakes_at_once() -> None:
    sizer = QpsSizer(0, 10, target_qps_per_replica=0.5)
    busy, quiet = Signals(0, 0, qps=2.0, last_request_at=0), Signals(0, 0, qps=0.0, last_request_at=0)
    assert sizer.decide(busy, [], 0.0) == 20.0 and sizer.desired == 4, "from zero: at once"
    many = Signals(0, 0, qps=4.0, last_request_at=0)
    for i in range(14):
        sizer.decide(many, [], 20.0 * (i + 1))
    assert sizer.desired == 4
    sizer.decide(many, [], 300.0)
    assert sizer.desired == 8, "after 300 s of decisions that agree"
    for i in range(59):
        sizer.decide(quiet, [], 320.0 + 20 * i)
    assert sizer.desired == 8
    assert sizer.decide(quiet, [], 1500.0) == 1505.0 and sizer.desired == 0, "at zero it decides every 5 s"


def test_gpuroams_sizer_is_the_real_autoscaler_with_the_gateways_signals() -> None:
    spec = policy_config("autoscale:up=3:sleep=900").spec
    sizer = AutoscaleSizer(spec, preferred_speed=2.2, now=0.0)
    assert sizer.desired == 0, "replicas.min 0: asleep until the first request"
    sizer.decide(Signals(in_flight=0, held=0.4, qps=0.1, last_request_at=1.0), [], 5.0)
    assert sizer.desired == 1, "a held request wakes it"
    flood = Signals(in_flight=100, held=0, qps=5.0, last_request_at=10.0)
    sizer.decide(flood, [2.2], 10.0)
    sizer.decide(flood, [2.2], 15.0)
    assert sizer.desired == 12, "100 in flight at 4 per unit of speed on L4s (2.2): 100 / 8.8, rounded up"


def test_a_wake_ahead_of_the_requests_costs_no_wait_and_a_request_before_the_replica_waits_from_its_arrival() -> None:
    quiet = world_with(0.0)
    quiet.arrivals[US, 2:] = 6.0  # requests from minute 2 on
    load = LoadModel(quiet, gpu_count=1)
    load.woke(0.0)  # woken ahead: nobody waits yet
    load.advance(150.0)
    load.ready(L4, 1, 150.0)
    assert load.wake_waits == [pytest.approx(30.0)], "the first request came at 120 s"
    early = LoadModel(world_with(0.0), gpu_count=1)
    early.woke(0.0)
    early.advance(60.0)
    early.ready(L4, 1, 60.0)
    assert early.wake_waits == [], "ready before anyone asked"
