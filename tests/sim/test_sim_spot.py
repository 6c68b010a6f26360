"""Spot in the simulation: the Spot layer of a world, preemptions and notices in the event loop, the
Spot policies (gpuroam's with Spot, SkyServe's SpotHedge) and the Spot study's command."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from gpuroam.catalog import load_catalog
from gpuroam.cli import app
from gpuroam.placement import ON_DEMAND, SPOT
from gpuroam.records import Capacity, Replica
from gpuroam.sim.figures import spot_goals, summarize_spot
from gpuroam.sim.policies import CachedCatalog, PolicyError, policy_config
from gpuroam.sim.runner import SimConfig, spot_study
from gpuroam.sim.simulation import RunResult, Simulation, run_policy
from gpuroam.sim.spot_world import SPOT_MODELS, SpotModel, with_spot
from gpuroam.sim.world import Layout, World, WorldModel, build_world

CATALOG = load_catalog()
LAYOUT = Layout.from_catalog(CATALOG)
CACHED = CachedCatalog(CATALOG)
OFFERS = frozenset(CATALOG.offers)
CALM = WorldModel(quota_zero_share=0.0, silent_failure_share=0.0, replica_loss_every_h=1e6)


def spot_world(seed: int, days: float, model: SpotModel = SPOT_MODELS["base"], base: WorldModel = CALM) -> World:
    world = build_world(base, LAYOUT, np.random.default_rng([seed, 0]), days)
    return with_spot(world, model, np.random.default_rng([seed, 0, 1]))


def everything_in_stock(world: World) -> World:
    """Every offer in stock, on demand and as Spot, with no incident and no wave."""
    assert world.spot is not None
    world.available[:] = True
    world.incidents = []
    layer = replace(world.spot, available=world.spot.offered[:, None] & world.available, waves=[])
    layer.quota[:] = 8
    return replace(world, spot=layer)


def play(world: World, name: str, days: float, seed: int = 1) -> RunResult:
    return run_policy(world, policy_config(name), CACHED, OFFERS, (seed, 0, 7), days)


def test_the_spot_layer_is_seeded_and_spot_only_where_on_demand_has_capacity() -> None:
    first, again = spot_world(3, 2.0), spot_world(3, 2.0)
    assert first.spot is not None and again.spot is not None
    assert np.array_equal(first.spot.available, again.spot.available) and first.spot.waves == again.spot.waves
    assert np.array_equal(first.available, build_world(CALM, LAYOUT, np.random.default_rng([3, 0]), 2.0).available)
    spot = first.spot.available
    assert not np.any(spot & ~first.available)  # Spot is spare on-demand capacity
    assert not np.any(spot[~first.spot.offered])  # and only where the catalog prices it
    offered = first.spot.offered
    assert spot[offered].mean() < first.available[offered].mean() - 0.1  # short more often than on-demand
    l4 = LAYOUT.index[("us-central1", "nvidia-l4")]
    t4 = LAYOUT.index[("us-central1", "nvidia-tesla-t4")]
    assert first.spot.mean_life_s[l4] == 24 * 3600.0 and first.spot.mean_life_s[t4] == 48 * 3600.0
    high = SPOT_MODELS["high"]
    assert high.preempt_every_h["nvidia-l4"] == 8.0 and high.wave_every_h == 24.0


def test_all_on_demand_never_sees_a_preemption_and_spot_costs_less() -> None:
    world = spot_world(5, 1.0, SPOT_MODELS["high"], WorldModel())
    on_demand, spot_only = play(world, "on-demand", 1.0), play(world, "spot-only", 1.0)
    assert on_demand.preemptions == 0 and on_demand.spot_node_hours == 0.0
    assert spot_only.preemptions > 0 and spot_only.spot_node_hours == pytest.approx(spot_only.node_hours)
    assert spot_only.cost_usd < 0.6 * on_demand.cost_usd


class Recording(Simulation):
    """The simulation, noting each notice (when, and how many replicas were left live) and each
    launch (when, on what capacity)."""

    def __init__(self, world: World, policy: str, seed: int, days: float) -> None:
        super().__init__(world, policy_config(policy), CACHED, OFFERS, np.random.default_rng([seed]), days)
        self.launched: list[tuple[float, str]] = []
        self.notices: list[tuple[float, int]] = []
        heard = self.policy.on_notice

        def on_notice(simulation: Simulation, replica: Replica, now: float) -> None:
            self.notices.append((now, len(simulation.live_replicas())))
            heard(simulation, replica, now)

        self.policy.on_notice = on_notice

    def launch(self, region: str, gpu: str, reason: str, capacity: Capacity = ON_DEMAND) -> Replica:
        self.launched.append((self.now, capacity.value))
        return super().launch(region, gpu, reason, capacity)


def test_gpuroam_replaces_a_preempted_replica_at_the_notice() -> None:
    model = replace(SPOT_MODELS["base"], preempt_every_h={"nvidia-l4": 2.0})
    world = everything_in_stock(spot_world(7, 0.5, model))
    sim = Recording(world, "gpuroam-spot", 7, 0.5)
    result = sim.run()
    assert sim.notices and result.preemptions >= len(sim.notices)
    launched_at = {t for t, _ in sim.launched}
    short = [t for t, left in sim.notices if left < 2]  # a notice that left the service short of its two replicas
    assert short and all(t in launched_at for t in short)  # the replacement is planned in the notice's pass
    assert result.retried == 0.0  # drained at the notice: nothing was in flight when the node went
    assert result.spot_node_hours > 0.9 * result.node_hours


def test_spothedge_ignores_the_notice_and_replaces_after_its_probe() -> None:
    model = replace(SPOT_MODELS["base"], preempt_every_h={"nvidia-l4": 2.0})
    world = everything_in_stock(spot_world(7, 0.5, model))
    sim = Recording(world, "spothedge", 7, 0.5)
    result = sim.run()
    assert not sim.notices and result.preemptions > 0 and result.retried > 0
    # Launches happen on its 20 s decision grid, so never at a notice's instant.
    assert all(t % 20.0 == 0.0 for t, _ in sim.launched)
    assert {capacity for _, capacity in sim.launched} >= {SPOT.value}


def test_spothedge_falls_back_on_demand_while_spot_is_short_and_scales_it_back() -> None:
    world = everything_in_stock(spot_world(9, 1.0))
    assert world.spot is not None
    minutes = world.spot.available.shape[1]
    half = int(world.start_s // 60) + 6 * 60  # no Spot anywhere for the service's first six hours
    world.spot.available[:, :half] = False
    sim = Recording(world, "spothedge", 9, 1.0)
    result = sim.run()
    early = [c for t, c in sim.launched if t < half * 60.0]
    assert ON_DEMAND.value in early  # on demand while Spot is short
    assert result.moves + result.released >= 1  # on-demand drained once Spot was ready again
    assert 0.4 < result.spot_node_hours / result.node_hours < 1.0 and minutes > half
    assert result.up_s == pytest.approx(result.window_s)


def test_spot_policies_and_their_overrides() -> None:
    assert policy_config("on-demand").spec.resources.spot == "never"
    assert policy_config("spot-only").spec.resources.spot == "only"
    gpuroam = policy_config("gpuroam-spot:base=1").spec.resources
    assert (gpuroam.spot, gpuroam.on_demand_base) == ("prefer", 1)
    hedge = policy_config("spothedge:extra=2")
    assert (hedge.kind, hedge.overprovision) == ("spothedge", 2)
    assert hedge.describe()["overprovision"] == 2
    for bad in ("gpuroam:extra=1", "spothedge:extra=-1", "gpuroam-spot:spot=sometimes"):
        with pytest.raises(PolicyError):
            policy_config(bad)


def test_the_study_is_deterministic_and_checks_the_goals() -> None:
    config = SimConfig(runs=2, days=0.25, seed=4, policies=("on-demand", "spothedge", "gpuroam-spot"), processes=1)
    first, again = spot_study(config, ["base"]), spot_study(config, ["base"])
    assert first.tables == again.tables
    table = first.tables["base"]
    assert table["on-demand"]["preemptions_per_day"] == 0 and table["on-demand"]["spot_share"] == 0
    assert table["gpuroam-spot"]["cost_per_1000_images"] < table["on-demand"]["cost_per_1000_images"]
    assert set(first.goals["base"]) == {
        "cost_vs_on_demand",
        "availability_vs_on_demand",
        "served_in_bound_vs_on_demand",
        "vs_spothedge",
    }
    assert summarize_spot(first.results["base"]["gpuroam-spot"]) == table["gpuroam-spot"]
    assert spot_goals({}) == {}


def test_the_command_runs_the_spot_study(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        app,
        [
            "sim",
            *("--spot", "base", "--runs", "1", "--days", "0.2", "--processes", "1"),
            *("--policies", "on-demand,gpuroam-spot", "--out", str(tmp_path), "--json"),
        ],
    )
    assert result.exit_code == 0, result.output
    document = json.loads(result.output)
    assert set(document["spot"]["base"]["figures"]) == {"on-demand", "gpuroam-spot"}
    assert document["spot"]["base"]["model"]["notice_s"] == 30.0
    assert (tmp_path / "sim-spot.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    for option in (["--spot", "stormy"], ["--spot", "base", "--traces", "burst"]):
        refused = CliRunner().invoke(app, ["sim", "--runs", "1", "--processes", "1", *option])
        assert refused.exit_code == 1
