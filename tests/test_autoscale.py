"""The autoscaler's decision: properties over every policy, load and state, then the cases by name."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from gpuroam.autoscale import DAY_QUIET_S, DAY_S, REMEMBER_S, Load, Policy, Scale, carrying, decide, initial, needed
from gpuroam.spec import parse_spec

T0 = 1_800_000_000.0


@st.composite
def policies(draw: st.DrawFn) -> Policy:
    low = draw(st.integers(0, 4))
    return Policy(
        min=low,
        max=draw(st.integers(max(low, 1), 12)),
        target_in_flight=draw(st.floats(0.5, 16)),
        scale_up_after_s=draw(st.sampled_from([0.0, 1.0, 3.0, 30.0])),
        scale_down_after_s=draw(st.sampled_from([0.0, 5.0, 300.0])),
        sleep_after_s=draw(st.sampled_from([1.0, 60.0, 900.0])),
        wake_ahead_s=draw(st.sampled_from([0.0, 600.0])),
        enabled=low == 0 or draw(st.booleans()),  # a spec with replicas.min 0 must have autoscale
    )


loads = st.builds(
    Load,
    in_flight=st.floats(0, 500),
    held=st.integers(0, 50),
    replica_speed=st.sampled_from([1.0, 1.6, 2.6, 5.2]),
    last_request_at=st.one_of(st.none(), st.floats(T0 - 2000, T0)),
    ready=st.integers(0, 14),
)
maybe_since = st.one_of(st.none(), st.floats(T0 - 2000, T0))
states = st.builds(
    Scale,
    desired=st.integers(0, 14),
    reason=st.text(max_size=5),
    above_since=maybe_since,
    below_since=maybe_since,
    changed_at=st.floats(T0 - 2000, T0),
    idle_since=maybe_since,
    below_most=st.one_of(st.none(), st.integers(0, 14)),
    last_request_at=maybe_since,
    day_starts=st.lists(st.floats(T0 - 8 * 86_400, T0), max_size=4).map(tuple),
)


def sustained(policy: Policy, load: Load, state: Scale, seconds: int) -> Scale:
    """The same load for `seconds`, one decision a second."""
    for tick in range(seconds + 1):
        state = decide(policy, load, state, T0 + tick)
    return state


@given(policies(), loads, states)
def test_the_answer_stays_between_min_and_max_and_zero_only_when_min_is_zero(
    policy: Policy, load: Load, state: Scale
) -> None:
    desired = decide(policy, load, state, T0).desired
    assert 0 <= desired <= policy.max
    assert desired >= policy.min
    assert desired > 0 or policy.min == 0


@given(policies(), loads, states)
def test_work_waiting_never_leaves_the_service_asleep(policy: Policy, load: Load, state: Scale) -> None:
    if load.waiting > 0:
        assert decide(policy, load, state, T0).desired >= 1


@given(policies(), loads, states)
def test_a_decision_repeated_at_the_same_instant_changes_nothing(policy: Policy, load: Load, state: Scale) -> None:
    once = decide(policy, load, state, T0)
    assert decide(policy, load, once, T0) == once


@given(policies(), loads, states)
def test_no_scale_out_before_the_load_has_lasted_the_window(policy: Policy, load: Load, state: Scale) -> None:
    if policy.enabled and 1 <= state.desired and policy.min <= state.desired <= policy.max and policy.scale_up_after_s:
        fresh = Scale(state.desired, "", changed_at=T0, idle_since=None)
        assert decide(policy, load, fresh, T0).desired <= state.desired


@given(policies(), loads, states)
def test_no_scale_in_before_the_surplus_has_lasted_the_window(policy: Policy, load: Load, state: Scale) -> None:
    fresh = Scale(state.desired, "", changed_at=T0, idle_since=None)
    asleep_by_rule = policy.min == 0 and load.waiting == 0
    if (
        policy.enabled
        and policy.min <= state.desired <= policy.max
        and policy.scale_down_after_s
        and not asleep_by_rule
    ):
        assert decide(policy, load, fresh, T0).desired >= state.desired


@given(policies(), loads)
def test_a_sustained_load_gets_what_it_needs(policy: Policy, load: Load) -> None:
    start = Scale(max(policy.min, 1), "", changed_at=T0)
    window = int(max(policy.scale_up_after_s, policy.scale_down_after_s)) + 1
    after = sustained(policy, Load(load.in_flight + 1, load.held, load.replica_speed, T0 + window), start, window)
    busy = Load(load.in_flight + 1, load.held, load.replica_speed)
    expected = min(max(needed(policy, busy), max(policy.min, 1)), policy.max) if policy.enabled else policy.min
    assert after.desired == expected


@given(policies(), loads, st.floats(0, 500))
def test_more_load_never_wants_fewer_replicas(policy: Policy, load: Load, more: float) -> None:
    start = Scale(max(policy.min, 1), "", changed_at=T0)
    window = int(max(policy.scale_up_after_s, policy.scale_down_after_s)) + 1
    heavier = Load(load.in_flight + more, load.held, load.replica_speed, load.last_request_at)
    assert sustained(policy, load, start, window).desired <= sustained(policy, heavier, start, window).desired


@given(policies(), loads, states)
def test_scale_in_never_goes_below_what_carries_the_work_the_ready_replicas_are_doing(
    policy: Policy, load: Load, state: Scale
) -> None:
    after = decide(policy, load, state, T0)
    if after.reason.startswith("scaled down"):
        assert after.desired >= min(carrying(policy, load), policy.max)


@given(policies(), loads, states)
def test_only_a_request_wakes_a_service_that_does_not_wake_ahead(policy: Policy, load: Load, state: Scale) -> None:
    asleep = Scale(0, "asleep", changed_at=T0, idle_since=T0, last_request_at=T0, day_starts=state.day_starts)
    quiet = Load(0, 0, load.replica_speed, T0, load.ready)
    if policy.min == 0 and policy.wake_ahead_s == 0:
        assert decide(policy, quiet, asleep, T0 + DAY_S).desired == 0


@given(policies(), loads, states)
def test_without_an_autoscale_section_the_service_keeps_its_minimum(policy: Policy, load: Load, state: Scale) -> None:
    fixed = Policy(max(policy.min, 1), policy.max, enabled=False)
    assert decide(fixed, load, state, T0).desired == fixed.min


# -- the cases by name ---------------------------------------------------------------------------


def test_a_faster_gpu_takes_more_work_before_the_service_needs_another_replica() -> None:
    policy = Policy(min=1, max=10, target_in_flight=4)
    assert needed(policy, Load(in_flight=20, replica_speed=1.0)) == 5  # T4s
    assert needed(policy, Load(in_flight=20, replica_speed=5.0)) == 1  # A100s
    assert needed(policy, Load()) == 0


def test_a_burst_scales_out_after_the_window_in_one_step_and_back_in_after_the_quiet() -> None:
    policy = Policy(min=1, max=6, target_in_flight=2, scale_up_after_s=3, scale_down_after_s=60)
    state = initial(policy, T0)
    burst = Load(in_flight=20, replica_speed=1.0, last_request_at=T0)
    assert decide(policy, burst, state, T0).desired == 1
    state = sustained(policy, burst, state, 3)
    assert (state.desired, state.reason.split(":")[0]) == (6, "scaled up")
    assert "20 in flight" in state.reason
    quiet = Load(in_flight=0, replica_speed=1.0, last_request_at=T0 + 3)
    state = decide(policy, quiet, state, T0 + 10)
    assert state.desired == 6 and state.below_since == T0 + 10
    state = decide(policy, quiet, state, T0 + 70)
    assert (state.desired, state.reason.split(":")[0]) == (1, "scaled down")


def test_a_half_busy_service_under_a_steady_burst_is_not_scaled_in_into_a_queue() -> None:
    """16 L4 replicas about half busy with 18 in flight: the count alone says 3 would do at 8.8 in flight
    each, but 3 would take the work of 8.5 replicas; 10 carry it at the target (found by `gpuroam sim`)."""
    policy = Policy(min=1, max=16, target_in_flight=4, scale_down_after_s=300)
    load = Load(in_flight=18, replica_speed=2.2, last_request_at=T0, ready=16)
    assert needed(policy, load) == 3 and carrying(policy, load) == 10
    after = sustained(policy, load, Scale(desired=16, reason="", changed_at=T0), 301)
    assert (after.desired, after.reason.split(":")[0]) == (10, "scaled down")


def test_scale_in_takes_the_most_the_load_asked_for_in_the_window_not_a_lull_at_its_end() -> None:
    policy = Policy(min=1, max=8, target_in_flight=1, scale_down_after_s=60)
    state = decide(policy, Load(in_flight=5, last_request_at=T0), Scale(desired=8, reason="", changed_at=T0), T0)
    state = decide(policy, Load(in_flight=1, last_request_at=T0), state, T0 + 61)
    assert state.desired == 5


def test_a_min_zero_service_sleeps_after_the_idle_period_and_wakes_on_one_request() -> None:
    policy = Policy(min=0, max=4, sleep_after_s=60)
    state = Scale(desired=2, reason="", changed_at=T0, idle_since=T0)
    state = decide(policy, Load(last_request_at=T0 + 30), state, T0 + 61)
    assert state.desired == 2, "a request 31 s ago: not idle for 60 s yet"
    state = decide(policy, Load(last_request_at=T0 + 30), state, T0 + 91)
    assert (state.desired, state.reason.split(":")[0]) == (0, "slept")
    state = decide(policy, Load(last_request_at=T0 + 30), state, T0 + 500)
    assert state.desired == 0
    woken = decide(policy, Load(held=1, last_request_at=T0 + 501), state, T0 + 501)
    assert (woken.desired, woken.reason) == (1, "woke: 1 request(s) waiting")


def test_a_spec_without_autoscale_is_fixed_and_an_empty_section_takes_the_defaults() -> None:
    plain = parse_spec({"name": "sd", "resources": {"gpus": ["nvidia-l4"]}, "replicas": {"min": 2, "max": 6}})
    assert Policy.from_spec(plain) == Policy(min=2, max=6, enabled=False)
    scaled = parse_spec({"name": "sd", "resources": {"gpus": ["nvidia-l4"]}, "replicas": {"min": 0}, "autoscale": None})
    assert Policy.from_spec(scaled) == Policy(min=0, max=8)


def test_a_spec_changed_under_the_autoscaler_is_obeyed_at_once() -> None:
    asleep = Scale(desired=0, reason="slept: no request for 900 s", changed_at=T0, idle_since=T0)
    woken = decide(Policy(min=1, max=4), Load(), asleep, T0 + 1)
    assert (woken.desired, woken.reason) == (1, "replicas.min..max is 1..4"), "min raised from 0: awake now"
    capped = decide(Policy(min=1, max=2), Load(), Scale(desired=5, reason="", changed_at=T0), T0 + 1)
    assert capped.desired == 2


def test_a_business_hours_service_wakes_ahead_of_the_hour_its_users_came_yesterday_and_a_week_ago() -> None:
    policy = Policy(min=0, max=4, sleep_after_s=900, wake_ahead_s=600)
    monday_9 = T0
    state = Scale(0, "asleep", changed_at=T0 - 3600, idle_since=T0 - 3600, last_request_at=T0 - 15 * 3600)
    state = decide(policy, Load(held=1, last_request_at=monday_9), state, monday_9)
    assert state.desired == 1 and state.day_starts == (monday_9,), "the first request after the night"
    lunch = monday_9 + 4 * 3600
    state = decide(policy, Load(in_flight=1, last_request_at=lunch), state, lunch)
    assert state.day_starts == (monday_9,), "a request hours after the last one is no day's start"
    state = decide(policy, Load(last_request_at=lunch), state, lunch + 1)  # answered: idle from here
    evening = monday_9 + 9 * 3600
    state = decide(policy, Load(last_request_at=lunch), state, evening)
    assert state.desired == 0 and state.reason.startswith("slept")
    assert decide(policy, Load(last_request_at=lunch), state, monday_9 + DAY_S - 601).desired == 0
    ahead = decide(policy, Load(last_request_at=lunch), state, monday_9 + DAY_S - 600)
    assert (ahead.desired, ahead.reason) == (1, "woke ahead: a day's first request came at 08:00 UTC")
    unasked = decide(policy, Load(last_request_at=lunch), ahead, monday_9 + DAY_S - 600 + 900)
    assert unasked.desired == 0, "woken ahead and not asked: asleep again after sleep_after_s"
    week = decide(policy, Load(last_request_at=lunch), state, monday_9 + 7 * DAY_S - 300)
    assert week.desired == 1, "the same weekday a week later"
    forgotten = decide(policy, Load(last_request_at=lunch), state, monday_9 + REMEMBER_S + 1)
    assert forgotten.day_starts == ()


def test_a_request_after_a_quiet_of_less_than_a_night_is_not_a_days_start() -> None:
    policy = Policy(min=0, max=4)
    state = Scale(0, "asleep", changed_at=T0, idle_since=T0, last_request_at=T0)
    later = T0 + DAY_QUIET_S - 1
    assert decide(policy, Load(held=1, last_request_at=later), state, later).day_starts == ()
