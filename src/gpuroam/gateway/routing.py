"""Which replica takes the next request: a pure function of the backends and what is known of them.

Least outstanding requests, weighted by GPU speed (an A100 replica takes more than a T4), and
by proximity: a request goes to the nearest region with a healthy replica that is not
saturated, and spills over to the next region when every replica there is busy. A retry asks
again with the replicas already tried excluded and, when it can, another region.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Backend:
    """A ready replica the gateway may send requests to (only these: no open proxy)."""

    replica: str
    url: str
    region: str
    gpu: str
    speed: float = 1.0  # relative Stable Diffusion speed of its GPU type (catalog)


@dataclass(slots=True)
class Load:
    """What the gateway knows of one backend right now (kept and updated in place by BackendSet)."""

    outstanding: int = 0
    healthy: bool = True  # the active check passes
    ejected_until: float = 0.0  # passive ejection after a connect error, 5xx or timeout
    warmth: float = 1.0  # share of its full speed, below 1 while the replica compiles its fast path

    def usable(self, now: float) -> bool:
        return self.healthy and now >= self.ejected_until


@dataclass(frozen=True)
class Policy:
    saturation: float = 4.0  # outstanding requests per unit of GPU speed before spilling over
    nearby_km: float = 1500.0  # regions this close to the nearest one count as equally near
    # A client's sticky replica (its cookie, its last generation) keeps it only while no more than this
    # much busier, in requests per unit of GPU speed, than the least loaded usable one: a new or recovered
    # replica then fills within seconds instead of idling while the old one queues.
    affinity_margin: float = 1.0


def affinity_holds(
    preferred: Backend, backends: Sequence[Backend], loads: Mapping[str, Load], now: float, policy: Policy = Policy()
) -> bool:
    """Whether a request should stay on its sticky replica: not saturated, and not clearly busier than the
    least loaded usable replica (see Policy.affinity_margin). The replica itself must be usable."""
    idle = Load()
    own = load_score(preferred, loads.get(preferred.replica, idle))
    if own > policy.saturation:
        return False
    usable = [b for b in backends if loads.get(b.replica, idle).usable(now)]
    least = min((load_score(b, loads.get(b.replica, idle)) for b in usable), default=own)
    return own <= least + policy.affinity_margin


def load_score(backend: Backend, load: Load) -> float:
    """Outstanding work per unit of speed (its GPU's, times its warmth), counting the request being placed."""
    return (load.outstanding + 1) / (backend.speed * load.warmth)


def choose(
    backends: Sequence[Backend],
    loads: Mapping[str, Load],
    now: float,
    client_region: str | None = None,
    distance_km: Callable[[str, str], float] | None = None,
    exclude: Collection[str] = (),
    avoid_region: str | None = None,
    policy: Policy = Policy(),
    turn: int = 0,
) -> Backend | None:
    """The backend for the next request, or None when no backend is usable.

    `exclude` lists replicas already tried for this request; `avoid_region` is the region of
    the last failure, preferred against when another region has a usable backend. Among equally
    loaded backends the `turn`-th (modulo) is taken, so a caller counting requests spreads
    sequential traffic round-robin instead of sending it all to one replica.
    """
    idle = Load()
    usable = [b for b in backends if b.replica not in exclude and loads.get(b.replica, idle).usable(now)]
    if avoid_region is not None and any(b.region != avoid_region for b in usable):
        usable = [b for b in usable if b.region != avoid_region]
    if not usable:
        return None
    scores = {b.replica: load_score(b, loads.get(b.replica, idle)) for b in usable}

    def least_loaded(candidates: Sequence[Backend]) -> Backend:
        lowest = min(scores[b.replica] for b in candidates)
        ties = [b for b in candidates if scores[b.replica] == lowest]
        if len(ties) == 1:
            return ties[0]
        ties.sort(key=lambda b: b.replica)
        return ties[turn % len(ties)]

    if client_region is None or distance_km is None:
        return least_loaded(usable)
    for tier in _proximity_tiers(usable, client_region, distance_km, policy.nearby_km):
        best = least_loaded(tier)
        if scores[best.replica] <= policy.saturation:
            return best
    return least_loaded(usable)  # everything is busy: least loaded anywhere


def _proximity_tiers(
    backends: Sequence[Backend], client_region: str, distance_km: Callable[[str, str], float], nearby_km: float
) -> list[list[Backend]]:
    """Backends grouped by distance from the client: each tier spans at most `nearby_km`."""
    ordered = sorted(backends, key=lambda b: (distance_km(client_region, b.region), b.replica))
    tiers: list[list[Backend]] = []
    start = None
    for backend in ordered:
        distance = distance_km(client_region, backend.region)
        if start is None or distance - start > nearby_km:
            tiers.append([])
            start = distance
        tiers[-1].append(backend)
    return tiers
