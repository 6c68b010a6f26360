"""How many replicas an autoscaled policy wants, pass by pass: gpuroam's and SkyServe's rules.

- `AutoscaleSizer` is gpuroam itself: the real `gpuroam.autoscale.decide` on the real spec's
  autoscale section, fed what gpuroam's gateway would publish (requests in flight and held, the
  last request's time) and the ready replicas' GPU speed, every reconciler pass.
- `QpsSizer` is SkyServe's request-rate autoscaler as its code and docs describe it, not gpuroam
  code: every 20 s (5 s while at zero), the request rate over the last 60 s over
  `target_qps_per_replica`, rounded up, within min..max; a change waits for 300 s (up) or 1,200 s
  (down) of consecutive decisions that agree, except from zero, which follows at once. It does not
  know GPU speeds: one target for every replica, whichever GPU it got.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

from gpuroam.autoscale import Load, Policy, Scale, decide, initial, mean_speed
from gpuroam.sim.load import Signals
from gpuroam.spec import ServiceSpec

PASS_S = 5.0  # the reconciler's loop interval: a pass of the simulation, a decision of gpuroam's sizer


class AutoscaleSizer:
    def __init__(self, spec: ServiceSpec, preferred_speed: float, now: float) -> None:
        self.policy = Policy.from_spec(spec)
        self.preferred_speed = preferred_speed
        self.scale: Scale = initial(self.policy, now)

    @property
    def desired(self) -> int:
        return self.scale.desired

    def decide(self, signals: Signals, ready_speeds: Sequence[float], now: float) -> float:
        """Decide at `now`; returns when to decide next."""
        speed = mean_speed(ready_speeds, self.preferred_speed)
        load = Load(signals.in_flight, math.ceil(signals.held), speed, signals.last_request_at, len(ready_speeds))
        self.scale = decide(self.policy, load, self.scale, now)
        return now + PASS_S


@dataclass
class QpsSizer:
    min_replicas: int
    max_replicas: int
    target_qps_per_replica: float
    upscale_delay_s: float = 300.0
    downscale_delay_s: float = 1200.0
    decision_s: float = 20.0
    decision_at_zero_s: float = 5.0
    desired: int = field(init=False)  # starts at min_replicas
    up_count: int = 0
    down_count: int = 0

    def __post_init__(self) -> None:
        self.desired = self.min_replicas

    def decide(self, signals: Signals, ready_speeds: Sequence[float], now: float) -> float:
        wanted = math.ceil(signals.qps / self.target_qps_per_replica - 1e-9)
        wanted = min(max(wanted, self.min_replicas), self.max_replicas)
        if self.desired == 0:
            self.desired = wanted
        elif wanted > self.desired:
            self.up_count, self.down_count = self.up_count + 1, 0
            if self.up_count >= int(self.upscale_delay_s / self.decision_s):
                self.up_count, self.desired = 0, wanted
        elif wanted < self.desired:
            self.down_count, self.up_count = self.down_count + 1, 0
            if self.down_count >= int(self.downscale_delay_s / self.decision_s):
                self.down_count, self.desired = 0, wanted
        else:
            self.up_count = self.down_count = 0
        return now + (self.decision_at_zero_s if self.desired == 0 else self.decision_s)
