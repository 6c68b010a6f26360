"""What the ready replicas served, from a run's log of replicas becoming ready and stopping.

Between two changes of the ready set, demand is spread over the ready replicas by speed, each an
M/M/1 queue; an image is served within the bound with the probability that queue gives after the
round trip from its continent to the replica's region. Nothing is served while no replica is ready.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from gpuroam.sim.world import MINUTE, Floats, Indices, World


def serving(
    world: World, ready_log: Sequence[tuple[float, int, int]], since: float, end: float, gpu_count: int, wanted: int
) -> tuple[float, float, float, float, float, float]:
    """Walk the segments of constant ready set: seconds up, demand, demand served within the
    latency bound (an M/M/1 queue per replica, load spread by speed), image capacity, replica
    seconds, and seconds with at least `wanted` replicas ready."""
    model, layout = world.model, world.layout
    mu_per_pair = layout.speed * gpu_count / model.image_s_t4  # images per second
    counts = np.zeros(len(layout.pairs), dtype=int)
    times = [t for t, _, _ in ready_log] + [end]
    up = demand_total = served_total = images = replica_s = full = 0.0
    for i, (t, pair, delta) in enumerate(ready_log):
        counts[pair] += delta
        a, b = max(t, since), times[i + 1]
        if b <= a:
            continue
        mins, weights = _minutes(a, b)
        minute_demand = world.demand[:, np.minimum(mins, world.minutes - 1)]  # [origins, m] per minute
        asked = float((minute_demand.sum(axis=0) * weights).sum())
        demand_total += asked
        ready = np.flatnonzero(counts)
        if len(ready) == 0:
            continue
        n = counts[ready]
        mu = mu_per_pair[ready]
        capacity = float((mu * n).sum())
        up += b - a
        images += capacity * (b - a)
        replica_s += float(n.sum()) * (b - a)
        full += (b - a) * (int(n.sum()) >= wanted)
        rho = minute_demand.sum(axis=0) / 60.0 / capacity  # [m]
        slack = np.clip(model.latency_bound_s - layout.rtt_s[:, layout.pair_region[ready]], 0.0, None)  # [o, k]
        share = mu * n / capacity  # [k]
        # P(sojourn <= slack) for each origin, minute, replica pair: exponential with rate mu (1 - rho).
        rate = mu[None, None, :] * np.clip(1.0 - rho, 0.0, None)[None, :, None]
        inside = 1.0 - np.exp(-rate * slack[:, None, :])
        p = (inside * share[None, None, :]).sum(axis=2)  # [o, m]
        p[:, rho >= 1.0] = 0.0
        served_total += float(((minute_demand * p).sum(axis=0) * weights).sum())
    return up, demand_total, served_total, images, replica_s, full


def _minutes(a: float, b: float) -> tuple[Indices, Floats]:
    """The minutes [a, b) covers, with the fraction of each covered."""
    first, last = int(a // MINUTE), math.ceil(b / MINUTE)
    mins = np.arange(first, max(last, first + 1))
    lo = np.maximum(mins * MINUTE, a)
    hi = np.minimum((mins + 1) * MINUTE, b)
    return mins, np.clip(hi - lo, 0.0, None) / MINUTE
