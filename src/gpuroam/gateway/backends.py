"""The gateway's live view of its backends: who is registered, healthy, ejected and busy.

The control plane (or `--backend` flags) says which replicas exist; this set keeps what the
gateway learns itself, so the data plane carries on while the controller is unreachable:
- active checks: `unhealthy_after` failed probes in a row mark a backend down, `healthy_after`
  passing probes bring it back;
- passive ejection: a connect error, a 5xx or a timeout ejects a backend at once, for a time
  that doubles with each ejection in a row; it returns early when a probe passes.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from dataclasses import dataclass

from gpuroam.gateway.routing import Backend, Load


@dataclass(frozen=True)
class HealthPolicy:
    unhealthy_after: int = 2
    healthy_after: int = 1
    eject_s: float = 2.0
    eject_max_s: float = 30.0


@dataclass
class _Health:
    probe_failures: int = 0
    probe_successes: int = 0
    ejections: int = 0


class BackendSet:
    """Mutated only from the gateway's event loop; `now` is the loop's time.

    `backends()` and `loads()` return the set's own list and dict (no copy per request: the
    gateway asks on every request); callers read them and never change them."""

    def __init__(self, policy: HealthPolicy = HealthPolicy()) -> None:
        self.policy = policy
        self._backends: dict[str, Backend] = {}
        self._list: list[Backend] = []
        self._loads: dict[str, Load] = {}
        self._retiring: dict[str, Load] = {}  # taken out of the set with requests still at them
        self._health: dict[str, _Health] = {}
        self._usable = asyncio.Event()

    def replace_all(self, backends: Iterable[Backend]) -> None:
        """The registered set as the control plane now says; known backends keep their state."""
        self._backends = {b.replica: b for b in backends}
        self._list = list(self._backends.values())
        for replica, load in self._loads.items():
            if replica not in self._backends and load.outstanding > 0:
                self._retiring[replica] = load  # draining: its requests are counted until they finish
        self._loads = {r: self._loads.get(r) or self._retiring.pop(r, None) or Load() for r in self._backends}
        self._health = {r: self._health.get(r) or _Health() for r in self._backends}
        self._signal(0.0)

    def backends(self) -> list[Backend]:
        return self._list

    def loads(self) -> dict[str, Load]:
        return self._loads

    def load(self, replica: str) -> Load | None:
        return self._loads.get(replica)

    def get(self, replica: str) -> Backend | None:
        return self._backends.get(replica)

    def started(self, replica: str) -> None:
        load = self._loads.get(replica)
        if load is not None:
            load.outstanding += 1

    def finished(self, replica: str) -> None:
        load = self._loads.get(replica) or self._retiring.get(replica)
        if load is not None and load.outstanding > 0:
            load.outstanding -= 1
        if replica in self._retiring and not self._retiring[replica].outstanding:
            del self._retiring[replica]

    def retiring(self) -> dict[str, int]:
        """Replicas no longer in the set that still have requests in flight (a draining replica
        finishes what it holds): the control plane stops them only once these are answered."""
        return {replica: load.outstanding for replica, load in self._retiring.items()}

    def eject(self, replica: str, now: float) -> float:
        """Passive ejection after a failed request; returns how long it is out."""
        load, health = self._loads.get(replica), self._health.get(replica)
        if load is None or health is None:
            return 0.0
        health.ejections += 1
        seconds = min(self.policy.eject_max_s, self.policy.eject_s * 2.0 ** (health.ejections - 1))
        load.ejected_until = now + seconds
        self._signal(now)
        return seconds

    def succeeded(self, replica: str) -> None:
        """A request went through: the run of ejections is over."""
        health = self._health.get(replica)
        if health is not None:
            health.ejections = 0

    def probed(self, replica: str, ok: bool, now: float, warmth: float = 1.0) -> bool:
        """An active check's result, with thresholds so one blip does not flip a backend; a passing
        check states the backend's warmth (its share of full speed while it compiles).

        True when this result marked the backend down."""
        load, health = self._loads.get(replica), self._health.get(replica)
        if load is None or health is None:
            return False
        went_down = False
        if ok:
            load.warmth = warmth
            health.probe_failures, health.probe_successes = 0, health.probe_successes + 1
            if health.probe_successes >= self.policy.healthy_after:
                load.healthy, load.ejected_until = True, 0.0
        else:
            health.probe_successes, health.probe_failures = 0, health.probe_failures + 1
            if health.probe_failures >= self.policy.unhealthy_after:
                went_down, load.healthy = load.healthy, False
        self._signal(now)
        return went_down

    def any_usable(self, now: float) -> bool:
        return any(load.usable(now) for load in self._loads.values())

    async def wait_usable(self, timeout_s: float, clock: asyncio.AbstractEventLoop) -> bool:
        """Hold a request while no backend is usable (replacements starting), up to a bound."""
        deadline = clock.time() + timeout_s
        while not self.any_usable(clock.time()):
            remaining = deadline - clock.time()
            if remaining <= 0:
                return False
            next_return = min((load.ejected_until for load in self._loads.values() if load.healthy), default=deadline)
            self._usable.clear()
            try:
                await asyncio.wait_for(
                    self._usable.wait(), timeout=max(0.01, min(remaining, next_return - clock.time()))
                )
            except TimeoutError:
                pass
        return True

    def _signal(self, now: float) -> None:
        if self.any_usable(now):
            self._usable.set()
