"""Spot capacity in the example's local sites, before placement knows Spot: the reconciler carries the spec's
choice into each replica's capacity and nothing else changes. `never` and `prefer` launch on demand, on the
same pairs as without any Spot inventory; `only` (what `spot: true` always meant) launches on Spot."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from gpuroam.catalog import load_catalog
from gpuroam.controller.reconciler import Reconciler
from gpuroam.controller.store import Store
from gpuroam.providers.local import LocalProvider, load_sites
from gpuroam.records import Capacity, Replica
from gpuroam.spec import load_spec, spec_to_dict

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
SITES = load_sites(EXAMPLES / "local-regions.yaml")
NOW = 1_800_000_000.0


@pytest.fixture
def providers(tmp_path: Path, fake_python: str) -> Iterator[tuple[LocalProvider, LocalProvider]]:
    """The example's sites with their Spot GPUs, and the same sites without any."""
    with_spot = LocalProvider(SITES.on_demand, tmp_path / "spot", python=fake_python, spot=SITES.spot)
    without = LocalProvider(SITES.on_demand, tmp_path / "plain", python=fake_python)
    try:
        yield with_spot, without
    finally:
        for provider in (with_spot, without):
            for seen in provider.observe():
                provider.terminate(seen.replica_id)


def one_pass(store: Store, provider: LocalProvider, spot: str) -> list[Replica]:
    spec = spec_to_dict(load_spec(EXAMPLES / "stable-diffusion.yaml"))
    spec["resources"]["spot"] = spot
    store.put_service("stable-diffusion", spec, NOW)
    Reconciler(store, provider, load_catalog(), lambda: NOW).reconcile()
    return store.list_replicas()


@pytest.mark.parametrize("spot", ["never", "prefer"])
def test_until_placement_knows_spot_replicas_stay_on_demand_on_the_same_pairs(
    spot: str, store: Store, tmp_path: Path, providers: tuple[LocalProvider, LocalProvider]
) -> None:
    with_spot, without = providers
    launched = one_pass(store, with_spot, spot)
    plain = Store.open(f"sqlite:///{tmp_path / 'plain.db'}")
    try:
        baseline = one_pass(plain, without, spot)
    finally:
        plain.close()
    assert launched, "the pass launched replicas"
    assert {r.capacity for r in launched} == {Capacity.ON_DEMAND}
    assert [(r.region, r.gpu, r.reason) for r in launched] == [(r.region, r.gpu, r.reason) for r in baseline]
    assert with_spot.spot_regions() == SITES.spot, "no Spot slot taken"
    assert with_spot.regions() == without.regions()


def test_spot_only_launches_spot_replicas_into_spot_slots(
    store: Store, providers: tuple[LocalProvider, LocalProvider]
) -> None:
    with_spot, _ = providers
    launched = [r for r in one_pass(store, with_spot, "only") if r.handle]  # those that got a worker
    assert launched and {r.capacity for r in launched} == {Capacity.SPOT}
    taken = sum(SITES.spot[region][gpu] - free for region, gpus in with_spot.spot_regions().items()
                for gpu, free in gpus.items())  # fmt: skip
    assert taken == len(launched)
    assert with_spot.regions() == {region: dict(gpus) for region, gpus in SITES.on_demand.items()}, "none on demand"
