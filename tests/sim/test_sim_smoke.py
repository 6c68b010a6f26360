"""A tiny simulation end to end: figures sane, racing ahead of sequential, the CLI writing its files."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from gpuroam.catalog import load_catalog
from gpuroam.cli import app
from gpuroam.sim.figures import goals, summarize_all
from gpuroam.sim.policies import CachedCatalog, policy_config
from gpuroam.sim.runner import SimConfig, simulate
from gpuroam.sim.simulation import run_policy
from gpuroam.sim.world import Layout, WorldModel, build_world

CATALOG = load_catalog()
LAYOUT = Layout.from_catalog(CATALOG)


@pytest.fixture(scope="module")
def table() -> dict:
    config = SimConfig(runs=6, days=1.0, seed=11, policies=("sequential", "gpuroam", "single-region"), processes=1)
    return summarize_all(simulate(config))


def test_figures_are_sane(table: dict) -> None:
    low_ready = WorldModel().ready_min[0]
    for name, figures in table.items():
        assert figures["runs"] == 6, name
        assert low_ready <= figures["ready_median_min"] <= figures["ready_p95_min"], name
        assert 0.0 <= figures["availability"] <= 1.0 and 0.0 <= figures["served_in_bound"] <= 1.0, name
        assert figures["cost_per_hour"] > 0 and figures["cost_per_1000_images"] > 0, name
        assert figures["launches_per_day"] >= figures["failures_per_day"] >= 0, name
        # Two replicas wanted; a policy keeps about that many ready.
        assert 1.0 <= figures["ready_replicas"] <= 3.0, name
    assert table["sequential"]["moves_per_day"] == 0.0  # it never moves a replica
    # With two regions, one lost replica never takes the service down as a single region can.
    assert table["gpuroam"]["availability"] >= table["single-region"]["availability"]
    verdicts = goals(table)
    assert set(verdicts) == {"time_to_capacity", "cost", "availability", "single_region"}


def test_racing_beats_sequential_where_capacity_is_far_down_the_price_list() -> None:
    """A seeded world where only a few expensive offers far from the cheapest have GPUs: the
    sequential walk fails its way down the price list one offer at a time; racing tries several."""
    model = WorldModel(quota_zero_share=0.0, silent_failure_share=0.0, replica_loss_every_h=1e6)
    world = build_world(model, LAYOUT, np.random.default_rng([2, 0]), 0.5)
    world.available[:] = False
    world.incidents = []
    for pair in [("asia-southeast1", "nvidia-tesla-a100"), ("asia-northeast3", "nvidia-tesla-a100")]:
        world.available[LAYOUT.index[pair]] = True
    cached, offers = CachedCatalog(CATALOG), frozenset(CATALOG.offers)
    sequential = run_policy(world, policy_config("sequential"), cached, offers, (2, 0, 1), 0.5)
    racing = run_policy(world, policy_config("race-5"), cached, offers, (2, 0, 1), 0.5)
    assert racing.reached and sequential.reached
    assert racing.time_to_ready_s < 0.75 * sequential.time_to_ready_s
    assert racing.up_s > 0 and racing.cost_usd > 0


def test_processes_give_the_figures_one_process_gives(monkeypatch: pytest.MonkeyPatch) -> None:
    one = SimConfig(runs=4, days=0.25, seed=3, policies=("sequential", "gpuroam"), processes=1, chunk=1)
    two = SimConfig(runs=4, days=0.25, seed=3, policies=("sequential", "gpuroam"), processes=2, chunk=1)

    def no_fork() -> int:
        raise AssertionError("workers forked from a process with threads (numpy's BLAS pool) can deadlock")

    monkeypatch.setattr(os, "fork", no_fork)
    assert simulate(one) == simulate(two)


def test_the_command_writes_json_and_plots(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        app,
        [
            "sim",
            *("--runs", "3", "--days", "0.25", "--processes", "1", "--worlds", "typical"),
            *("--policies", "sequential,gpuroam", "--out", str(tmp_path), "--json"),
        ],
    )
    assert result.exit_code == 0, result.output
    document = json.loads(result.output)
    figures = document["worlds"]["typical"]["figures"]
    assert set(figures) == {"sequential", "gpuroam"} and document["runs"] == 3
    assert document["policies"]["gpuroam"]["race"] >= 1
    for name in ("sim-results.json", "sim-time-to-capacity.png", "sim-availability.png"):
        assert (tmp_path / name).stat().st_size > 1000, name
    assert (tmp_path / "sim-time-to-capacity.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_the_command_refuses_unknown_policies_and_worlds() -> None:
    for option in (["--policies", "fastest"], ["--worlds", "mars"]):
        result = CliRunner().invoke(app, ["sim", "--runs", "1", "--processes", "1", *option])
        assert result.exit_code == 1
        assert "unknown" in result.output


def test_the_autoscaling_study_writes_its_figures_goals_and_plot(tmp_path: Path) -> None:
    """One burst on a few hours of the steady day: the autoscaler meets it with more replicas than the
    fixed size has, so more of it is answered within 10 s; the fixed size never wakes."""
    result = CliRunner().invoke(
        app,
        [
            "sim",
            *("--traces", "burst", "--runs", "1", "--days", "0.4", "--processes", "1"),
            *("--out", str(tmp_path), "--json"),
        ],
    )
    assert result.exit_code == 0, result.output
    document = json.loads(result.output)
    figures = document["traces"]["burst"]["figures"]
    assert set(figures) == {"fixed", "skyserve", "autoscale"}
    assert figures["autoscale"]["served_in_bound"] > figures["fixed"]["served_in_bound"] + 0.05
    assert figures["fixed"]["wakes_per_day"] == 0 and figures["fixed"]["given_up"] > 0.05
    assert set(document["goals"]) == {"autoscale"} and "burst_vs_fixed" in document["goals"]["autoscale"]
    assert (tmp_path / "sim-autoscale.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_the_autoscaling_study_refuses_unknown_traces_and_two_worlds() -> None:
    for option in (["--traces", "tuesday"], ["--traces", "burst", "--worlds", "typical,crunch"]):
        result = CliRunner().invoke(app, ["sim", "--runs", "1", "--processes", "1", *option])
        assert result.exit_code == 1
        assert "unknown trace" in result.output or "one world" in result.output
