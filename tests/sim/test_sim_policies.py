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
from gpuroam.sim.engine import run_policy
from gpuroam.sim.policies import (
    DEFAULT_POLICIES,
    PRESETS,
    CachedCatalog,
    PolicyError,
    SequentialPolicy,
    policy_config,
)
from gpuroam.sim.world import Layout, WorldModel, build_world
from gpuroam.spec import PlacementSpec

CATALOG = load_catalog()
CACHED = CachedCatalog(CATALOG)
OFFERS = frozenset(CATALOG.offers)
LAYOUT = Layout.from_catalog(CATALOG)


def test_gpuroam_is_the_specs_defaults_and_presets_vary_one_thing() -> None:
    defaults = PlacementSpec()
    config = policy_config("gpuroam")
    assert (config.race, config.provision_timeout_s, config.block_ttl_s) == (
        defaults.race,
        defaults.provision_timeout_s,
        defaults.block_ttl_s,
    )
    assert (config.block_backoff, config.block_max_s, config.move_back_after_s) == (
        defaults.block_backoff,
        defaults.block_max_s,
        defaults.move_back_after_s,
    )
    assert policy_config("race-5").race == 5
    assert policy_config("no-backoff").block_backoff == 1.0
    assert policy_config("price-order").gpus[0] == "nvidia-tesla-t4"
    assert policy_config("single-region").allow == ("us-central1",)
    assert all(name.split(":")[0] in PRESETS for name in DEFAULT_POLICIES)


@given(race=st.integers(1, 16), timeout=st.integers(1, 5000), backoff=st.floats(1.0, 8.0))
def test_overrides_parse(race: int, timeout: int, backoff: float) -> None:
    config = policy_config(f"gpuroam:race={race}:timeout={timeout}:backoff={backoff!r}")
    assert (config.race, config.provision_timeout_s, config.block_backoff) == (race, float(timeout), backoff)
    assert config.name == f"gpuroam:race={race}:timeout={timeout}:backoff={backoff!r}"


@pytest.mark.parametrize("name", ["nope", "gpuroam:race", "gpuroam:colour=red", "gpuroam:race=x", "race-3:race=0"])
def test_bad_policies_are_refused(name: str) -> None:
    with pytest.raises(PolicyError):
        policy_config(name)


def test_sequential_walks_offers_cheapest_first() -> None:
    policy = SequentialPolicy(policy_config("sequential"), CACHED, OFFERS)
    prices = [CATALOG.price(*pair) for pair in policy.order]
    assert prices == sorted(prices)
    assert policy.order[0] == ("us-central1", "nvidia-tesla-t4")
    assert {gpu for _, gpu in policy.order} == set(policy_config("sequential").gpus)


def test_the_gpuroam_policy_plans_with_gpuroams_placement(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []
    real = placement.plan

    def spy(*args, **kwargs):
        calls.append(args[1])
        return real(*args, **kwargs)

    monkeypatch.setattr(policies_module, "plan", spy)
    world = build_world(WorldModel(), LAYOUT, np.random.default_rng([5, 0]), 0.25)
    result = run_policy(world, policy_config("race-4"), CACHED, OFFERS, (5, 0, 1), 0.25)
    assert calls and all(isinstance(d, placement.Demand) and d.race == 4 for d in calls)
    assert policies_module.plan is spy and policies_module.block_after_failure is placement.block_after_failure
    assert result.launches >= 2
