"""The local regions file: each site on this machine and how many replicas of each GPU type it holds,
on demand and as Spot (counted apart, as a cloud sells them apart)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import yaml

_EXAMPLE = "regions:\n  us-central1: {nvidia-l4: 1, nvidia-tesla-t4: 2, spot: {nvidia-l4: 2}}"
SPOT_KEY = "spot"  # under a region: its Spot inventory (no GPU type has this name)

Inventory = dict[str, dict[str, int]]  # region -> GPU type -> replicas it holds at once


@dataclass(frozen=True)
class Sites:
    """Every local region's inventory: `on_demand` names every region (an empty mapping where it has only
    Spot GPUs); `spot` only the regions with Spot GPUs."""

    on_demand: Inventory
    spot: Inventory = field(default_factory=dict)


class LocalSitesError(ValueError):
    """The local regions file is wrong; the message names the file, the entry and the fix."""


def load_sites(path: Path | str) -> Sites:
    """Read region -> GPU type -> how many replicas of it the site holds at once, on demand and as Spot."""
    path = Path(path)

    def fail(problem: str) -> LocalSitesError:
        return LocalSitesError(f"{path}: {problem}")

    try:
        data = yaml.safe_load(path.read_text())
    except OSError as error:
        raise fail(f"cannot read it ({error.strerror}); pass a file like examples/local-regions.yaml") from None
    except yaml.YAMLError as error:
        raise fail(f"not valid YAML: {error}") from None
    if not isinstance(data, dict):
        raise fail(f"expected a mapping with a 'regions' key, for example:\n{_EXAMPLE}")
    unknown = sorted(map(str, set(data) - {"regions"}))
    if unknown:
        raise fail(f"unknown top-level key(s) {', '.join(unknown)}; the only key is 'regions'")
    regions = data.get("regions")
    if not isinstance(regions, dict) or not regions:
        raise fail(f"'regions' must map at least one region to its GPUs, for example:\n{_EXAMPLE}")
    sites = Sites(on_demand={}, spot={})
    for region, gpus in regions.items():
        if not isinstance(gpus, dict) or not gpus:
            raise fail(f"regions.{region} must map GPU types to counts, e.g. {{nvidia-l4: 1}}; got {gpus!r}")
        spot = gpus.get(SPOT_KEY)
        if SPOT_KEY in gpus and (not isinstance(spot, dict) or not spot):
            raise fail(f"regions.{region}.spot must map GPU types to Spot counts, e.g. {{nvidia-l4: 2}}; got {spot!r}")
        on_demand = {gpu: count for gpu, count in gpus.items() if gpu != SPOT_KEY}
        sites.on_demand[str(region)] = _counts(on_demand, f"regions.{region}", fail)
        if isinstance(spot, dict):
            sites.spot[str(region)] = _counts(spot, f"regions.{region}.spot", fail)
    return sites


def _counts(gpus: dict[object, object], where: str, fail: Callable[[str], LocalSitesError]) -> dict[str, int]:
    """GPU type -> a whole number of replicas, 0 or more."""
    counts: dict[str, int] = {}
    for gpu, count in gpus.items():
        if isinstance(count, bool) or not isinstance(count, int) or count < 0:
            raise fail(f"{where}.{gpu} is {count!r}; write a whole number of replicas, 0 or more")
        counts[str(gpu)] = count
    return counts
