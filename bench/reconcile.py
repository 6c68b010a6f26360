"""One reconcile pass for many services over every catalog region, timed.

A steady state (every service placed and ready) is what the loop does every second, so that is
the pass timed: read the store and the provider, plan each service, act on nothing. The provider
is in memory (launches succeed and are ready at once), so the figure is the controller's own
cost: the store (SQLite in a temp dir, or --store URL) and placement.

    python bench/reconcile.py --services 100
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from gpuroam.catalog import load_catalog
from gpuroam.controller.reconciler import Reconciler
from gpuroam.controller.store import Store
from gpuroam.providers.base import Observed, ObservedState
from gpuroam.records import Replica
from gpuroam.spec import parse_spec, spec_to_dict


class InstantProvider:
    """Every region of the catalog, room for everything, replicas ready as soon as launched."""

    name = "instant"

    def __init__(self, regions: dict[str, list[str]]) -> None:
        self._regions = regions
        self.running: dict[str, Replica] = {}

    def regions(self) -> dict[str, dict[str, int | None]]:
        return {region: dict.fromkeys(gpus) for region, gpus in self._regions.items()}

    def launch(self, replica: Replica, app: dict) -> dict:
        self.running[replica.id] = replica
        return {"url": f"http://instant/{replica.id}"}

    def observe(self) -> list[Observed]:
        return [
            Observed(r.id, r.service, r.region, r.gpu, ObservedState.READY, url=f"http://instant/{r.id}")
            for r in self.running.values()
        ]

    def drain(self, replica_id: str) -> None:
        pass

    def terminate(self, replica_id: str) -> None:
        self.running.pop(replica_id, None)

    def endpoint(self, service: str) -> str | None:
        return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--services", type=int, default=100)
    parser.add_argument("--passes", type=int, default=20)
    parser.add_argument("--store", help="a store URL (default: SQLite in a temp dir)")
    args = parser.parse_args()
    catalog = load_catalog()
    regions = {name: [o.gpu for o in catalog.offers_in(name)] for name in catalog.regions}
    gpu_orders = (
        ["nvidia-l4", "nvidia-tesla-t4", "nvidia-tesla-a100"],
        ["nvidia-h100-80gb", "nvidia-tesla-a100"],
        ["nvidia-tesla-t4", "nvidia-l4"],
    )
    with tempfile.TemporaryDirectory() as tmp:
        store = Store.open(args.store) if args.store else Store.for_state_dir(Path(tmp))
        provider = InstantProvider(regions)
        clock = [1_800_000_000.0]
        reconciler = Reconciler(store, provider, catalog, clock=lambda: clock[0])
        for i in range(args.services):
            spec = parse_spec(
                {
                    "name": f"svc-{i:03d}",
                    "resources": {"gpus": gpu_orders[i % 3]},
                    "regions": {"min_regions": 2 + i % 3},
                    "replicas": {"min": 2, "max": 8},
                }
            )
            store.put_service(spec.name, spec_to_dict(spec), clock[0])
        for _ in range(10):  # place, become ready, release raced extras after the drain grace
            reconciler.reconcile()
            clock[0] += 1.0
        replicas = len(provider.running)
        times = []
        for _ in range(args.passes):
            started = time.perf_counter()
            reconciler.reconcile()
            times.append(time.perf_counter() - started)
            clock[0] += 1.0
        assert len(provider.running) == replicas, "a steady pass must not launch or drain"
        store.close()
    print(
        f"{args.services} services, {len(regions)} regions, {replicas} replicas: one steady reconcile pass "
        f"median {statistics.median(times) * 1000:.1f} ms, min {min(times) * 1000:.1f} ms, "
        f"max {max(times) * 1000:.1f} ms over {args.passes} passes"
    )


if __name__ == "__main__":
    main()
