"""The local regions file: each site on this machine and how many replicas of each GPU type it holds."""

from __future__ import annotations

from pathlib import Path

import yaml

_EXAMPLE = "regions:\n  us-central1: {nvidia-l4: 1, nvidia-tesla-t4: 2}"


class LocalSitesError(ValueError):
    """The local regions file is wrong; the message names the file, the entry and the fix."""


def load_sites(path: Path | str) -> dict[str, dict[str, int]]:
    """Read region -> GPU type -> how many replicas of it the site holds at once."""
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
    sites: dict[str, dict[str, int]] = {}
    for region, gpus in regions.items():
        if not isinstance(gpus, dict) or not gpus:
            raise fail(f"regions.{region} must map GPU types to counts, e.g. {{nvidia-l4: 1}}; got {gpus!r}")
        for gpu, count in gpus.items():
            if isinstance(count, bool) or not isinstance(count, int) or count < 0:
                raise fail(f"regions.{region}.{gpu} is {count!r}; write a whole number of replicas, 0 or more")
        sites[str(region)] = {str(gpu): count for gpu, count in gpus.items()}
    return sites
