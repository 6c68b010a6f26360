"""`make reliability`: every fault scenario under load, the fuzzers at length, and bench/RELIABILITY.md.

    python bench/reliability.py                      # everything; writes bench/RELIABILITY.md
    python bench/reliability.py --quick --scenarios region-killed,replica-hung --json out.json

Each scenario gets a fresh control plane (`gpuroam serve` in its own process), the example service
ready in two regions, and steady load from a separate process; the fault is played, the load runs on
a few seconds after it ends, and the load's records become the figures. Exit status 1 when a
scenario whose goal is 0 failed requests failed any.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any
from xml.etree import ElementTree

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent / "tests")]

from reliability_support.cluster import Cluster, scenario_spec, wait_for
from reliability_support.report import figures, markdown, read_load
from reliability_support.scenarios import SCENARIOS, Fault, Scenario

# Why a scenario whose goal is "measured" loses requests: written into the report beside its figures.
EXPLANATIONS = {
    "gateway-killed": (
        "locally the gateway is the only way in: while no process listens on the endpoint's port, "
        "connections are refused, and requests in flight on the killed process are cut. The control plane "
        "starts a new gateway within about a second. `gpuroam restart-gateway` (the scenario above) replaces "
        "the gateway without a failed request; on GKE the endpoint is Google's global load balancer."
    ),
}
FUZZ_SUITES = {
    "worker API (schemathesis, raw bodies)": "tests/worker/test_api_fuzz.py",
    "worker --api-auth": "tests/worker/test_api_auth.py",
    "control-plane API (schemathesis)": "tests/controller/test_control_api_fuzz.py",
    "control-plane API token": "tests/controller/test_api_security.py",
    "spec parser (hypothesis)": "tests/test_spec_fuzz.py",
    "malformed HTTP at the gateway": "tests/gateway/test_malformed_http.py",
    "gateway is not an open proxy": "tests/gateway/test_not_an_open_proxy.py",
    "dashboard and Web UI escape what they show": "tests/ui/test_escaping.py",
}


def missing(scenario: Scenario) -> str | None:
    """Why this machine cannot play `scenario`, or None."""
    if "netns" in scenario.needs:
        from gpuroam.providers.local.netns import network_unavailable

        reason = network_unavailable()
        if reason:
            return reason
    if "postgres" in scenario.needs:
        from postgres_server import PostgresUnavailable, server_binaries

        try:
            server_binaries()
        except PostgresUnavailable as error:
            return str(error)
    return None


def play(
    scenario: Scenario, root: Path, fault_s: float, baseline_s: float, settle_s: float, network: str
) -> dict[str, Any]:
    result: dict[str, Any] = {
        "name": scenario.name,
        "title": scenario.title,
        "goal_zero_failed": scenario.goal_zero_failed,
    }
    reason = missing(scenario)
    if reason:
        print(f"[{scenario.name}] skipped: {reason}", flush=True)
        return {**result, "skipped": reason}
    workdir = root / scenario.name
    workdir.mkdir(parents=True)
    postgres = None
    if "postgres" in scenario.needs:
        from postgres_server import PostgresServer

        postgres = PostgresServer()
        postgres.start()
        postgres.admin("CREATE DATABASE gpuroam")
    cluster = Cluster(workdir, postgres=postgres, network="netns" if "netns" in scenario.needs else network)
    load: subprocess.Popen[bytes] | None = None
    fault = Fault()
    try:
        cluster.start()
        cluster.up(scenario_spec(workdir))
        out = workdir / "load.jsonl"
        command = [sys.executable, str(HERE / "reliability_support" / "load.py"), "--endpoint", cluster.endpoint]
        load = subprocess.Popen([*command, "--out", str(out)], stdin=subprocess.DEVNULL)
        wait_for(lambda: out.exists() and sum(r["ok"] for r in read_load(out)) >= 5, 60, "steady load")
        time.sleep(baseline_s)
        print(f"[{scenario.name}] fault on", flush=True)
        scenario.play(cluster, fault_s, fault)
        print(f"[{scenario.name}] fault over; settling {settle_s:g} s", flush=True)
        time.sleep(settle_s)
    finally:
        if load is not None:
            load.terminate()
            load.wait(timeout=90)
        cluster.stop()
        if cluster.network != "none":
            from gpuroam.providers.local.netns import RegionNetwork

            network = RegionNetwork.load(cluster.state)
            if network is not None:
                network.teardown()
        if postgres is not None:
            postgres.remove()
    found = figures(read_load(workdir / "load.jsonl"), fault.began, fault.ended, settle_s)
    print(f"[{scenario.name}] {found.sent} sent, {found.succeeded} ok, {found.failed} failed", flush=True)
    return {
        **result,
        "figures": asdict(found),
        "notes": fault.notes,
        "extra": fault.figures,
        "explanation": EXPLANATIONS.get(scenario.name),
    }


def run_fuzzers(examples: int) -> list[dict[str, Any]]:
    """The bad-input and security test files, with `examples` generated inputs per fuzz test."""
    root, results = HERE.parent, []
    for suite, path in FUZZ_SUITES.items():
        if not (root / path).exists():
            raise FileNotFoundError(f"fuzz suite {suite!r}: no {path}")
        with tempfile.NamedTemporaryFile(suffix=".xml") as junit:
            began = time.monotonic()
            env = {**os.environ, "GPUROAM_FUZZ_EXAMPLES": str(examples)}
            command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", path, f"--junitxml={junit.name}"]
            subprocess.run(command, cwd=root, env=env, check=False)
            suite_xml = ElementTree.parse(junit.name).getroot()
            node = suite_xml if suite_xml.tag == "testsuite" else suite_xml[0]
            tests, failed = int(node.get("tests", 0)), int(node.get("failures", 0)) + int(node.get("errors", 0))
            results.append(
                {
                    "suite": suite,
                    "tests": tests,
                    "passed": tests - failed - int(node.get("skipped", 0)),
                    "failed": failed,
                    "seconds": round(time.monotonic() - began),
                }
            )
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scenarios", help="comma-separated names (default: all)")
    parser.add_argument("--quick", action="store_true", help="short faults, no fuzzing: the version `make test` runs")
    parser.add_argument("--fuzz-examples", type=int, default=300, help="inputs per fuzz test (0: no fuzzing)")
    parser.add_argument(
        "--network",
        choices=["auto", "none", "netns"],
        default="auto",
        help="regions in network namespaces with WAN delay (auto: where this machine allows; root)",
    )
    parser.add_argument("--json", type=Path, help="write the results here")
    parser.add_argument("--markdown", type=Path, help="write the report here (e.g. bench/RELIABILITY.md)")
    parser.add_argument("--render", type=Path, help="only write --markdown from this earlier --json")
    args = parser.parse_args()
    if args.render:
        recorded = json.loads(args.render.read_text())
        args.markdown.write_text(markdown(recorded["scenarios"], recorded["header"], recorded["fuzz"]))
        return 0
    wanted = args.scenarios.split(",") if args.scenarios else [s.name for s in SCENARIOS]
    unknown = set(wanted) - {s.name for s in SCENARIOS}
    if unknown:
        parser.error(f"unknown scenario(s) {', '.join(sorted(unknown))}; known: {', '.join(s.name for s in SCENARIOS)}")
    fault_s, baseline_s, settle_s = (6.0, 2.0, 4.0) if args.quick else (20.0, 5.0, 8.0)
    network = args.network
    if network == "auto":
        from gpuroam.providers.local.netns import network_unavailable

        network = "none" if network_unavailable() else "netns"
    with tempfile.TemporaryDirectory(prefix="gpuroam-reliability-") as tmp:
        results = [play(s, Path(tmp), fault_s, baseline_s, settle_s, network) for s in SCENARIOS if s.name in wanted]
    fuzz = [] if args.quick or not args.fuzz_examples else run_fuzzers(args.fuzz_examples)
    header = {
        "date": time.strftime("%Y-%m-%d"),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, Linux {platform.release()}",
        "command": "make reliability" if not args.quick else "python bench/reliability.py --quick",
        "fault length": f"{fault_s:g} s (baseline {baseline_s:g} s before, settling {settle_s:g} s after)",
        "regions": "network namespaces, WAN delay by distance from us-central1 (the gateway's site)"
        if network == "netns"
        else "loopback (no network namespaces: partitions skipped)",
    }
    if args.json:
        args.json.write_text(json.dumps({"header": header, "scenarios": results, "fuzz": fuzz}, indent=1))
    if args.markdown:
        args.markdown.write_text(markdown(results, header, fuzz))
    missed = [r["name"] for r in results if r["goal_zero_failed"] and r.get("figures", {}).get("failed")]
    if missed:
        print(f"goal of 0 failed requests missed in: {', '.join(missed)}", file=sys.stderr)
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
