"""Policies: presets and overrides, the sequential baseline's order, and gpuroam's policy driving
the real placement code."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from gpuroam import placement
from gpuroam.catalog import load_catalog
from gpuroam.sim import policies as policies_module
from gpuroam.sim.policies import (
    DEFAULT_POLICIES,
    PRESETS,
    SERVICE,
    CachedCatalog,
    PolicyError,
    SequentialPolicy,
    policy_config,
)
from gpuroam.sim.simulation import run_policy
from gpuroam.sim.world import Layout, WorldModel, build_world
from gpuroam.spec import PlacementSpec

CATALOG = load_catalog()
CACHED = CachedCatalog(CATALOG)
OFFERS = frozenset(CATALOG.offers)
LAYOUT = Layout.from_catalog(CATALOG)


def test_gpuroam_is_the_specs_defaults_and_presets_vary_one_thing() -> None:
    config = policy_config("gpuroam")
    assert config.spec == SERVICE and config.spec.placement == PlacementSpec()
    assert (config.spec.resources.gpus, config.spec.regions.min_regions) == (
        ("nvidia-l4", "nvidia-tesla-t4", "nvidia-tesla-a100"),
        2,
    )
    assert (config.spec.replicas.min, config.spec.replicas.max) == (2, 6)
    assert policy_config("race-5").spec.placement.race == 5
    assert policy_config("no-backoff").spec.placement.block_backoff == 1.0
    assert not policy_config("no-fallback").spec.placement.race_fallback_gpu
    assert policy_config("no-fallback:fallback=on").spec.placement.race_fallback_gpu
    assert policy_config("price-order").spec.resources.gpus[0] == "nvidia-tesla-t4"
    assert policy_config("single-region").spec.regions.allow == ("us-central1",)
    assert all(name.split(":")[0] in PRESETS for name in DEFAULT_POLICIES)


@given(race=st.integers(1, 16), timeout=st.integers(1, 5000), backoff=st.floats(1.0, 8.0))
def test_overrides_parse(race: int, timeout: int, backoff: float) -> None:
    config = policy_config(f"gpuroam:race={race}:timeout={timeout}:backoff={backoff!r}")
    placement_spec = config.spec.placement
    assert (placement_spec.race, placement_spec.provision_timeout_s, placement_spec.block_backoff) == (
        race,
        float(timeout),
        backoff,
    )
    assert config.name == f"gpuroam:race={race}:timeout={timeout}:backoff={backoff!r}"


def test_overrides_are_checked_as_a_spec_file_is() -> None:
    with pytest.raises(PolicyError, match=r"placement\.block_max_s: 3600 is below block_ttl_s"):
        policy_config("gpuroam:ttl=5000")
    with pytest.raises(PolicyError, match=r"replicas\.max: max \(6\) is below min \(9\)"):
        policy_config("gpuroam:min=9")


@pytest.mark.parametrize(
    "name",
    [
        "nope",
        "gpuroam:race",
        "gpuroam:colour=red",
        "gpuroam:race=x",
        "race-3:race=0",
        "gpuroam:race=17",
        "gpuroam:fallback=yes",
    ],
)
def test_bad_policies_are_refused(name: str) -> None:
    with pytest.raises(PolicyError):
        policy_config(name)


def test_sequential_walks_offers_cheapest_first() -> None:
    policy = SequentialPolicy(policy_config("sequential"), CACHED, OFFERS)
    prices = [CATALOG.price(*pair) for pair in policy.order]
    assert prices == sorted(prices)
    assert policy.order[0] == ("us-central1", "nvidia-tesla-t4")
    assert {gpu for _, gpu in policy.order} == set(SERVICE.resources.gpus)


def test_the_gpuroam_policy_plans_with_gpuroams_placement(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []
    real = placement.plan

    def spy(*args, **kwargs):
        calls.append(args[1])
        return real(*args, **kwargs)

    monkeypatch.setattr(policies_module, "plan", spy)
    world = build_world(WorldModel(), LAYOUT, np.random.default_rng([5, 0]), 0.25)
    config = policy_config("race-4")
    result = run_policy(world, config, CACHED, OFFERS, (5, 0, 1), 0.25)
    assert calls and all(d == placement.Demand.from_spec(config.spec) and d.race == 4 for d in calls)
    assert policies_module.plan is spy and policies_module.block_after_failure is placement.block_after_failure
    assert result.launches >= 2
