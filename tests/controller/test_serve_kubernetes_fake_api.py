"""`gpuroam serve --provider kubernetes` as the CLI builds it: a kubeconfig with one context per
region, the control plane's API and reconcile loop, and the real kubernetes client against a fake
API server (no cluster is reachable here)."""

from __future__ import annotations

import sys
import threading
from pathlib import Path

import yaml

from gpuroam.controller.client import ControlPlaneClient
from gpuroam.providers.factories import kubernetes_provider
from gpuroam.serve import ControlPlane, ServeOptions
from gpuroam.spec import load_spec, spec_to_dict

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "providers" / "kubernetes"))
from fake_kube_api import FakeKubernetes
from test_control_plane import fast_spec, ready, wait_for

from gpuroam.providers.local import free_port

REGIONS = ["us-central1", "europe-west4", "asia-southeast1"]


def kubeconfig(path: Path, server: str) -> Path:
    contexts = [{"name": f"ctx-{r}", "context": {"cluster": r, "user": "tester"}} for r in REGIONS]
    clusters = [{"name": r, "cluster": {"server": f"{server}/{r}"}} for r in REGIONS]
    path.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": clusters,
                "contexts": contexts,
                "users": [{"name": "tester", "user": {"token": "not-a-real-token"}}],
                "current-context": contexts[0]["name"],
            }
        )
    )
    return path


def test_fake_api_serve_runs_the_example_spec_on_kubernetes_clusters(tmp_path: Path) -> None:
    with FakeKubernetes(REGIONS) as fake:
        server = f"http://127.0.0.1:{fake.server.server_address[1]}"
        choice = kubernetes_provider(kubeconfig(tmp_path / "kubeconfig", server), [f"{r}=ctx-{r}" for r in REGIONS])
        assert not choice.local_gateway, "cluster-internal URLs: a gateway on this machine could not reach them"
        plane = ControlPlane(ServeOptions(tmp_path / "state", port=free_port(), interval_s=0.3), choice)
        assert plane.gateway is None
        nodes_up = threading.Event()

        def autoscaler() -> None:  # the clusters give every pending pod a GPU node, a beat later
            while not nodes_up.wait(0.3):
                fake.make_ready()

        threading.Thread(target=autoscaler, daemon=True).start()
        plane.start()
        try:
            client = ControlPlaneClient(plane.url, plane.token)
            assert sorted(r["name"] for r in client.get("/regions")) == sorted(REGIONS)
            client.post("/services", spec_to_dict(load_spec(fast_spec(tmp_path))))
            preferred = {("us-central1", "nvidia-l4"), ("europe-west4", "nvidia-l4")}
            wait_for(lambda: {(r["region"], r["gpu"]) for r in ready(client)} == preferred, 60, "L4 in two regions")
            assert all(r["url"].endswith(".svc.cluster.local:80") for r in ready(client))
            assert fake.calls("us-central1")[:1] == [("PATCH", "/api/v1/namespaces/gpuroam")]
            client.delete("/services/stable-diffusion")
            wait_for(lambda: not any(c.items("deployments") for c in fake.clusters.values()), 60, "teardown")
        finally:
            nodes_up.set()
            plane.stop()
