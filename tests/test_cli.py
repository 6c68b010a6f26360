"""The `gpuroam` entry point, including a real `gpuroam worker` process as `make run` starts it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
from typer.testing import CliRunner

from gpuroam.cli import app
from gpuroam.cli.console import service_table
from gpuroam.providers.local import free_port

runner = CliRunner()
EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def test_help_lists_the_worker_command() -> None:
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0 and "worker" in result.output
    assert runner.invoke(app, ["--version"]).output.strip().startswith("gpuroam ")


def test_bad_api_auth_is_a_usage_error_that_says_the_format() -> None:
    result = runner.invoke(app, ["worker", "--api-auth", "no-colon"])
    assert result.exit_code == 2
    assert "user:password" in result.output


def test_the_status_table_shows_each_replicas_capacity_and_price() -> None:
    from rich.console import Console

    replica = {"id": "sd-a", "region": "us-central1", "gpu": "nvidia-l4", "state": "ready", "url": None, "age_s": 5}
    service = {
        "name": "sd",
        "endpoint": None,
        "replicas": [
            {**replica, "capacity": "spot", "price_per_hour": 0.224},
            {**replica, "id": "sd-b", "capacity": "on-demand", "price_per_hour": None},
            {**replica, "id": "sd-c"},  # from a server before Spot
        ],
    }
    console = Console(width=200, record=True)
    console.print(service_table(service))
    cells = [[cell.strip() for cell in line.split("│")[1:-1]] for line in console.export_text().splitlines()]
    rows = {row[0]: row[3:5] for row in cells if row and row[0].startswith("sd-")}
    assert rows == {"sd-a": ["spot", "$0.22"], "sd-b": ["on-demand", "?"], "sd-c": ["on-demand", "?"]}
    console = Console(width=200, record=True)
    console.print(service_table({**service, "cost_per_hour": 0.224, "on_demand_cost_per_hour": 0.56}))
    assert "$0.22/hour (all on demand: $0.56/hour; Spot saves 60%)" in console.export_text()


def test_fail_preempt_posts_the_replica_region_and_notice(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    from gpuroam.cli import services

    posted = []

    class Client:
        def post(self, path: str, body: dict) -> dict:
            posted.append((path, body))
            return {"message": "preemption of all Spot: 2 replica(s) reclaimed in 10 s", "killed": ["a", "b"]}

    monkeypatch.setattr(services, "client_for", lambda server, state: Client())
    result = runner.invoke(app, ["fail", "preempt", "--region", "us-central1", "--notice", "10"])
    assert result.exit_code == 0 and "reclaimed in 10 s" in result.output
    assert posted == [("/chaos/preempt", {"region": "us-central1", "replica": None, "notice_s": 10.0})]
    assert runner.invoke(app, ["fail", "preempt", "--notice", "-1"]).exit_code == 2, "a negative notice is refused"


def test_worker_process_serves_and_logs_json_lines() -> None:
    port = free_port()
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "gpuroam",
            "worker",
            "--port",
            str(port),
            "--region",
            "europe-west4",
            "--gpu",
            "nvidia-l4",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            assert process.poll() is None, process.stderr.read() if process.stderr else ""
            try:
                if httpx.get(f"{url}/internal/ping", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "worker not ready in 120 s"
            time.sleep(0.1)
        response = httpx.post(
            f"{url}/sdapi/v1/txt2img", json={"prompt": "a cat", "steps": 2, "width": 64, "height": 64}, timeout=60
        )
        assert response.status_code == 200
        assert json.loads(response.json()["info"])["gpuroam_region"] == "europe-west4"
    finally:
        process.send_signal(signal.SIGINT)
        _, stderr = process.communicate(timeout=30)
    assert process.returncode == 0, stderr
    records = [json.loads(line) for line in stderr.splitlines() if line.startswith("{")]
    assert any(r["msg"] == "model ready" and r["model"].startswith("tiny") for r in records)
    assert any(r["msg"] == "request" and r["path"] == "/sdapi/v1/txt2img" and r["status"] == 200 for r in records)
    assert "Traceback" not in stderr


def test_scripted_demo_plays_the_five_moves_then_follows_demand_with_no_failed_request(tmp_path: Path) -> None:
    """`gpuroam demo --scripted`: serve, expand, see, fail, recover under load, then the same service
    autoscaled: a burst into 3 regions, a quiet that scales it in and puts it to sleep, a request that
    wakes it; exit 0 means 0 failed."""
    command = [
        sys.executable,
        "-m",
        "gpuroam",
        "demo",
        "--scripted",
        "--json",
        "--state",
        str(tmp_path / "state"),
        "--port",
        str(free_port()),
        "--gateway-port",
        str(free_port()),
        "--spec",
        str(EXAMPLES / "stable-diffusion.yaml"),
        "--regions",
        str(EXAMPLES / "local-regions.yaml"),
    ]
    done = subprocess.run(command, check=False, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads(done.stdout)
    assert summary["failed"] == 0 and summary["served"] > 50
    assert summary["endpoint_unchanged"]
    assert "nvidia-l4" not in summary["gpus_by_phase"]["failed-over"], "once the L4s were lost, other GPUs served"
    assert summary["recovery_s"] is not None, "the preferred placement came back"
    assert len(summary["share_by_region"]) >= 2, "traffic spread over regions (routing decides the shares)"
    assert abs(sum(summary["share_by_region"].values()) - 1) < 0.01
    assert len(summary["burst_regions"]) >= 3, f"the burst was served in 3 regions: {summary['burst_regions']}"
    assert summary["scale_up_s"] is not None, "a scaled-up event under the burst"
    assert summary["sleep_s"] is not None, "the quiet put the service to sleep"
    assert summary["wake_status"] == 200 and summary["woke_s"] is not None, "one request woke it and was answered"


def test_render_writes_manifests_and_says_what_is_wrong(tmp_path: Path) -> None:
    spec = str(EXAMPLES / "stable-diffusion.yaml")
    result = runner.invoke(
        app,
        [
            "render",
            spec,
            "--provider",
            "gke",
            "--regions",
            "us-central1,europe-west4",
            "--out",
            str(tmp_path),
            "--json",
        ],
    )
    assert result.exit_code == 0, result.output
    files = json.loads(result.output)["files"]
    assert [Path(f).name for f in files] == ["us-central1.yaml", "europe-west4.yaml", "config-cluster.yaml"]
    bad = runner.invoke(app, ["render", spec, "--provider", "gke", "--regions", "mars-north1", "--out", str(tmp_path)])
    assert bad.exit_code == 1 and "unknown region 'mars-north1'" in bad.output


def test_serve_says_what_a_cluster_provider_needs(tmp_path: Path) -> None:
    state = ["--state", str(tmp_path / "state")]
    missing_context = runner.invoke(app, ["serve", "--provider", "kubernetes", *state])
    assert missing_context.exit_code == 1 and "--context REGION=CONTEXT" in missing_context.output
    missing_region = runner.invoke(app, ["serve", "--provider", "gke", *state])
    assert missing_region.exit_code == 1 and "--gke-region" in missing_region.output
    unknown = runner.invoke(app, ["serve", "--provider", "azure", *state])
    assert unknown.exit_code == 1 and "local, kubernetes or gke" in unknown.output


def test_down_that_runs_out_of_time_says_what_is_left(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    from gpuroam.cli import services

    class Client:
        def delete(self, path: str) -> dict:
            return {"name": "sd", "deleted": True}

        def get(self, path: str) -> dict:
            return {"replicas": [{"id": "sd-1", "state": "draining", "region": "us-central1"}]}

    monkeypatch.setattr(services, "client_for", lambda server, state: Client())
    result = runner.invoke(app, ["down", "sd", "--timeout", "0"])
    assert result.exit_code == 1 and "sd-1 (draining in us-central1)" in result.output
    assert runner.invoke(app, ["down", "sd", "--no-wait"]).exit_code == 0
