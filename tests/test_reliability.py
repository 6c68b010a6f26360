"""The short version of `make reliability`: a few faults under load, each with 0 failed requests.

It runs bench/reliability.py --quick in its own process, as `make reliability` does at length;
the figures land in the test's temp dir (the long run writes bench/RELIABILITY.md).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from gpuroam.providers.local.netns import network_unavailable

ROOT = Path(__file__).resolve().parents[1]
SHORT = ["region-killed", "replica-hung", "controller-killed", "gateway-restarted", "database-unavailable"]


def play(scenarios: list[str], out: Path) -> None:
    """Run the scenarios (regions in network namespaces where possible) and check every figure."""
    command = [
        sys.executable,
        "bench/reliability.py",
        "--quick",
        "--scenarios",
        ",".join(scenarios),
        "--json",
        str(out),
    ]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=900, check=False)
    assert out.exists(), f"the suite did not finish:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    results = {r["name"]: r for r in json.loads(out.read_text())["scenarios"]}
    assert set(results) == set(scenarios)
    for name, result in results.items():
        assert not result.get("skipped"), f"{name} skipped: {result.get('skipped')}"
        figures = result["figures"]
        # What the fault met, not a rate: a slow machine sends fewer requests, each still crossing the fault.
        assert figures["during_fault"] >= 8, f"{name}: too little load met the fault ({figures['during_fault']})"
        assert figures["failed"] == 0, f"{name}: {figures['failed']} failed: {figures['errors']}"
    assert done.returncode == 0, done.stderr[-3000:]


def test_faults_under_load_lose_no_request(tmp_path: Path) -> None:
    play(SHORT, tmp_path / "reliability.json")


def test_a_region_cut_off_the_network_loses_no_request(tmp_path: Path) -> None:
    reason = network_unavailable()
    if reason:
        pytest.skip(f"regions cannot be network namespaces here: {reason}")
    play(["region-partitioned"], tmp_path / "reliability.json")
