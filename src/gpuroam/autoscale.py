"""How many replicas a service wants now: a pure function of its load, its capacity and the clock.

    decide(policy, load, state, now) -> Scale

No I/O and no clock of its own, like placement: the reconciler passes what the data plane saw and
the state it stored last pass, and stores what comes back, so a restarted controller carries on
where the last one stopped. The rules:

1. Capacity is counted in units of GPU speed (the catalog's relative Stable Diffusion speed, a T4
   is 1): an A100 replica drains a queue about five times faster than a T4 one, so it takes five
   times the work before the service needs another.
2. The service *needs* enough replicas that the requests in flight (queued or generating at the
   replicas, plus those held at the gateway while none is live) come to at most `target_in_flight`
   per unit of speed.
3. Out: when it needs more than it wants and has for `scale_up_after_s`, it wants what it needs
   (at once, not one step at a time: a burst should not wait a window per replica).
4. In: when it needs fewer and has for `scale_down_after_s`, it wants the most it needed in that
   window (a lull at the window's end is not the load of the whole window), but no fewer
   than carry the work the ready replicas are doing now at the target: requests in flight grow
   much faster than linearly as replicas fill up (one queue per replica: L = rho / (1 - rho)), so
   halving the replicas of a half-busy service more than doubles its queue. Without this bound a
   service scaled in under a steady burst straight back into a queue, and out again (found by
   the capacity simulation, `gpuroam sim --traces burst`).
5. Sleep: with `min` 0, after `sleep_after_s` with no request at all, it wants none.
6. Wake: wanting none, a single request held or in flight makes it want what it needs (at least
   one) at once.
7. Always between `min` and `max`; at least one while awake.
8. Wake ahead: with `min` 0, a service remembers when each day's first request came (a request
   after DAY_QUIET_S without any) and wakes `wake_ahead_s` before that time a day or a week
   later, so a business-hours service is ready when its users arrive instead of making the
   first of them wait a GPU's cold start (minutes on a cloud). Woken ahead and not asked, it
   sleeps again after `sleep_after_s`, as any idle service does.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from gpuroam.spec import AutoscaleSpec, ServiceSpec

DAY_S = 86_400.0
DAY_QUIET_S = 6 * 3600.0  # a request after this long without any starts a day of use
REMEMBER_S = 8 * DAY_S  # day starts older than this are forgotten
ANTICIPATED = (DAY_S, 7 * DAY_S)  # a day's start is expected again a day later and a week later


@dataclass(frozen=True)
class Policy:
    """The spec's scaling rules, flattened (so tests build them directly)."""

    min: int
    max: int
    target_in_flight: float = 4.0
    scale_up_after_s: float = 3.0
    scale_down_after_s: float = 300.0
    sleep_after_s: float = 900.0
    wake_ahead_s: float = 900.0
    enabled: bool = True

    @classmethod
    def from_spec(cls, spec: ServiceSpec) -> Policy:
        """Without an autoscale section the service keeps replicas.min: the autoscaler is off."""
        scaling = spec.autoscale or AutoscaleSpec()
        return cls(
            min=spec.replicas.min,
            max=spec.replicas.max,
            target_in_flight=scaling.target_in_flight,
            scale_up_after_s=scaling.scale_up_after_s,
            scale_down_after_s=scaling.scale_down_after_s,
            sleep_after_s=scaling.sleep_after_s,
            wake_ahead_s=scaling.wake_ahead_s,
            enabled=spec.autoscale is not None,
        )


@dataclass(frozen=True)
class Load:
    """What the data plane saw of one service at one instant."""

    in_flight: float = 0.0  # requests sent to replicas and not answered yet
    held: int = 0  # requests waiting at the gateway for a live replica
    replica_speed: float = 1.0  # GPU speed of one replica: the ready ones' mean, else the preferred GPU's
    last_request_at: float | None = None  # when the gateway last received a request for it
    ready: int = 0  # replicas serving now

    @property
    def waiting(self) -> float:
        return self.in_flight + self.held


@dataclass(frozen=True)
class Scale:
    """The autoscaler's state for one service, kept in the store: what it wants, why, and since when
    the load has asked for more (`above_since`) or less (`below_since`)."""

    desired: int
    reason: str
    above_since: float | None = None
    below_since: float | None = None
    changed_at: float = 0.0
    idle_since: float | None = None  # no request in flight or held since then
    below_most: int | None = None  # the most replicas the load asked for since below_since
    last_request_at: float | None = None  # the latest request the last pass saw
    day_starts: tuple[float, ...] = ()  # when recent days' first requests came (rule 8)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Scale:
        """From its stored JSON (`dataclasses.asdict`), where tuples come back as lists."""
        return cls(**{**data, "day_starts": tuple(data.get("day_starts", ()))})


def mean_speed(ready_speeds: Sequence[float], preferred: float) -> float:
    """A replica's speed for the decision: the ready ones' mean, else the preferred GPU's (what a
    launch gets first)."""
    return sum(ready_speeds) / len(ready_speeds) if ready_speeds else preferred


def needed(policy: Policy, load: Load) -> int:
    """Replicas that keep the work in flight at or below the target per unit of GPU speed (rule 2)."""
    per_replica = policy.target_in_flight * max(load.replica_speed, 1e-9)
    return math.ceil(load.waiting / per_replica - 1e-9) if load.waiting > 0 else 0


def carrying(policy: Policy, load: Load) -> int:
    """Replicas that carry the ready replicas' current work with at most the target in flight each
    (rule 4). The in-flight count per ready replica gives how busy they are (L = rho / (1 - rho));
    the work is that utilisation times the replicas, and a replica at the target is
    target / (1 + target) busy."""
    if load.ready == 0 or load.in_flight <= 0:
        return needed(policy, load)
    per_replica = load.in_flight / load.ready
    work = load.ready * per_replica / (1.0 + per_replica)
    at_target = policy.target_in_flight * max(load.replica_speed, 1e-9)
    return math.ceil(work * (1.0 + at_target) / at_target - 1e-9)


def initial(policy: Policy, now: float) -> Scale:
    """A new service starts at its minimum (a min-0 service asleep until its first request)."""
    reason = "asleep until the first request" if policy.min == 0 else f"replicas.min is {policy.min}"
    return Scale(desired=policy.min, reason=reason, changed_at=now, idle_since=now)


def decide(policy: Policy, load: Load, state: Scale, now: float) -> Scale:
    """The next state; the same inputs twice give the same state (level-triggered)."""
    floor = max(policy.min, 1)
    if not policy.enabled:
        return _settle(state, policy.min, f"replicas.min is {policy.min} (no autoscale section)", now)
    idle_since = None if load.waiting > 0 else (state.idle_since if state.idle_since is not None else now)
    if load.last_request_at is not None and idle_since is not None:
        idle_since = max(idle_since, load.last_request_at)
    state = _remember_day_start(policy, replace(state, idle_since=idle_since), load, now)
    want = min(max(needed(policy, load), floor), policy.max)
    if state.desired < policy.min or state.desired > policy.max:  # the spec changed under it; then decide on
        target = min(max(state.desired, policy.min), policy.max)
        state = _settle(state, target, f"replicas.min..max is {policy.min}..{policy.max}", now)
    if state.desired == 0:
        if load.waiting > 0:  # no window: the work is already waiting
            return _settle(state, want, f"woke: {load.waiting:g} request(s) waiting", now)
        expected = _expected_day_start(policy, state, now)
        if expected is not None:
            reason = f"woke ahead: a day's first request came at {time.strftime('%H:%M UTC', time.gmtime(expected))}"
            return replace(_settle(state, floor, reason, now), idle_since=now)
        return _settle(state, 0, state.reason or "asleep until the first request", now)
    if policy.min == 0 and idle_since is not None and now - idle_since >= policy.sleep_after_s:
        return _settle(state, 0, f"slept: no request for {now - idle_since:.0f} s", now)
    per_speed = load.waiting / max(load.replica_speed * state.desired, 1e-9)
    figures = f"{load.waiting:g} in flight, {per_speed:.1f} per unit of GPU speed against {policy.target_in_flight:g}"
    if want > state.desired:
        since = state.above_since if state.above_since is not None else now
        if now - since >= policy.scale_up_after_s:
            return _settle(state, want, f"scaled up: {figures} for {now - since:.0f} s", now)
        return replace(state, above_since=since, below_since=None, below_most=None)
    smaller = max(want, min(carrying(policy, load), policy.max))
    if smaller < state.desired:
        since, most = (now, smaller) if state.below_since is None else (state.below_since, state.below_most or 0)
        most = max(most, smaller)
        if most >= state.desired or policy.scale_down_after_s == 0:  # the window starts again with now alone
            since, most = now, smaller
        if now - since >= policy.scale_down_after_s:
            return _settle(state, most, f"scaled down: {figures} for {now - since:.0f} s", now)
        return replace(state, below_since=since, below_most=most, above_since=None)
    return replace(state, above_since=None, below_since=None, below_most=None)


def _remember_day_start(policy: Policy, state: Scale, load: Load, now: float) -> Scale:
    """Note a request that came after DAY_QUIET_S without any (rule 8); forget old ones."""
    if policy.min != 0 or policy.wake_ahead_s <= 0 or load.last_request_at is None:
        return state
    latest, before = load.last_request_at, state.last_request_at
    starts = tuple(t for t in state.day_starts if t > now - REMEMBER_S)
    if before is None or latest - before >= DAY_QUIET_S:
        starts = (*starts, latest)
    if latest == before and starts == state.day_starts:
        return state
    return replace(state, last_request_at=max(latest, before or latest), day_starts=starts)


def _expected_day_start(policy: Policy, state: Scale, now: float) -> float | None:
    """A remembered day start that is due again within wake_ahead_s from now, if any."""
    if policy.min != 0 or policy.wake_ahead_s <= 0:
        return None
    for start in state.day_starts:
        for later in ANTICIPATED:
            if start + later - policy.wake_ahead_s <= now < start + later:
                return start
    return None


def _settle(state: Scale, desired: int, reason: str, now: float) -> Scale:
    """`desired` from now on; the windows start again. Unchanged, it is the same state."""
    if desired == state.desired and state.above_since is None and state.below_since is None:
        return state if reason == state.reason else replace(state, reason=reason)
    changed_at = now if desired != state.desired else state.changed_at
    return replace(
        state,
        desired=desired,
        reason=reason,
        above_since=None,
        below_since=None,
        below_most=None,
        changed_at=changed_at,
    )
