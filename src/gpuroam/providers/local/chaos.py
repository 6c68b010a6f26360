"""What chaos did to the local sites, kept in one file so it outlives a controller restart.

- `taken`: (region, GPU) pairs lost on demand and as Spot (`fail gpu`, `fail region`);
- `spot_taken`: (region, GPU) pairs whose Spot capacity a preemption wave took (`fail preempt --region`);
- `reclaims`: replica id -> the UNIX time its preemption notice runs out and the site reclaims it.

Written atomically (a temporary file, then rename), read on every capacity check.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from gpuroam.providers.base import ProviderError

Pair = tuple[str, str]


@dataclass
class ChaosState:
    taken: set[Pair] = field(default_factory=set)
    spot_taken: set[Pair] = field(default_factory=set)
    reclaims: dict[str, float] = field(default_factory=dict)

    @classmethod
    def load(cls, directory: Path) -> ChaosState:
        path = directory / "capacity.json"
        if not path.exists():
            return cls()
        try:
            data = json.loads(path.read_text())
            return cls(
                taken={(region, gpu) for region, gpu in data["taken_away"]},
                spot_taken={(region, gpu) for region, gpu in data.get("spot_taken_away", [])},
                reclaims={str(replica): float(at) for replica, at in data.get("reclaims", {}).items()},
            )
        except (ValueError, KeyError, TypeError, AttributeError) as error:
            raise ProviderError(f"{path} is corrupt ({error}); delete it to give all capacity back") from error

    def save(self, directory: Path) -> None:
        data = {
            "taken_away": sorted(self.taken),
            "spot_taken_away": sorted(self.spot_taken),
            "reclaims": dict(sorted(self.reclaims.items())),
        }
        tmp = directory / f".capacity.json.{os.getpid()}"
        tmp.write_text(json.dumps(data, indent=1))
        os.replace(tmp, directory / "capacity.json")
