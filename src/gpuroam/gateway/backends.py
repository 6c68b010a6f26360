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
from dataclasses import dataclass, field, replace

from gpuroam.gateway.routing import Backend, Load


@dataclass(frozen=True)
class HealthPolicy:
    unhealthy_after: int = 2
    healthy_after: int = 1
    eject_s: float = 2.0
    eject_max_s: float = 30.0


@dataclass
class _Tracked:
    backend: Backend
    load: Load = field(default_factory=Load)
    probe_failures: int = 0
    probe_successes: int = 0
    ejections: int = 0


class BackendSet:
    """Mutated only from the gateway's event loop; `clock` is the loop's time."""

    def __init__(self, policy: HealthPolicy = HealthPolicy()) -> None:
        self.policy = policy
        self._tracked: dict[str, _Tracked] = {}
        self._usable = asyncio.Event()

    def replace_all(self, backends: Iterable[Backend]) -> None:
        """The registered set as the control plane now says; known backends keep their state."""
        fresh = {b.replica: b for b in backends}
        self._tracked = {
            replica: replace(self._tracked[replica], backend=backend) if replica in self._tracked else _Tracked(backend)
            for replica, backend in fresh.items()
        }
        self._signal(0.0)

    def backends(self) -> list[Backend]:
        return [t.backend for t in self._tracked.values()]

    def load(self, replica: str) -> Load | None:
        tracked = self._tracked.get(replica)
        return tracked.load if tracked else None

    def get(self, replica: str) -> Backend | None:
        tracked = self._tracked.get(replica)
        return tracked.backend if tracked else None

    def loads(self) -> dict[str, Load]:
        return {replica: t.load for replica, t in self._tracked.items()}

    def started(self, replica: str) -> None:
        self._edit(replica, outstanding=+1)

    def finished(self, replica: str) -> None:
        self._edit(replica, outstanding=-1)

    def eject(self, replica: str, now: float) -> float:
        """Passive ejection after a failed request; returns how long it is out."""
        tracked = self._tracked.get(replica)
        if tracked is None:
            return 0.0
        tracked.ejections += 1
        seconds = min(self.policy.eject_max_s, self.policy.eject_s * 2 ** (tracked.ejections - 1))
        tracked.load = replace(tracked.load, ejected_until=now + seconds)
        self._signal(now)
        return seconds

    def succeeded(self, replica: str) -> None:
        """A request went through: the run of ejections is over."""
        tracked = self._tracked.get(replica)
        if tracked is not None:
            tracked.ejections = 0

    def probed(self, replica: str, ok: bool, now: float) -> None:
        """An active check's result, with thresholds so one blip does not flip a backend."""
        tracked = self._tracked.get(replica)
        if tracked is None:
            return
        if ok:
            tracked.probe_failures, tracked.probe_successes = 0, tracked.probe_successes + 1
            if tracked.probe_successes >= self.policy.healthy_after:
                tracked.load = replace(tracked.load, healthy=True, ejected_until=0.0)
        else:
            tracked.probe_successes, tracked.probe_failures = 0, tracked.probe_failures + 1
            if tracked.probe_failures >= self.policy.unhealthy_after:
                tracked.load = replace(tracked.load, healthy=False)
        self._signal(now)

    def any_usable(self, now: float) -> bool:
        return any(t.load.usable(now) for t in self._tracked.values())

    async def wait_usable(self, timeout_s: float, clock: asyncio.AbstractEventLoop) -> bool:
        """Hold a request while no backend is usable (replacements starting), up to a bound."""
        deadline = clock.time() + timeout_s
        while not self.any_usable(clock.time()):
            remaining = deadline - clock.time()
            if remaining <= 0:
                return False
            next_return = min(
                (t.load.ejected_until for t in self._tracked.values() if t.load.healthy), default=deadline
            )
            self._usable.clear()
            try:
                await asyncio.wait_for(
                    self._usable.wait(), timeout=max(0.01, min(remaining, next_return - clock.time()))
                )
            except TimeoutError:
                pass
        return True

    def _edit(self, replica: str, outstanding: int) -> None:
        tracked = self._tracked.get(replica)
        if tracked is not None:
            tracked.load = replace(tracked.load, outstanding=max(0, tracked.load.outstanding + outstanding))

    def _signal(self, now: float) -> None:
        if self.any_usable(now):
            self._usable.set()
