"""`gpuroam serve --provider kubernetes|gke`: cluster providers built for the control plane from CLI flags."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from gpuroam.catalog import Catalog
from gpuroam.spec import ServiceSpec, parse_spec


def control_plane_factory(
    kubeconfig: Path, contexts: Sequence[str], service_type: str = "ClusterIP"
) -> Callable[[Any, Catalog], Any]:
    """A ControlPlane provider factory from `REGION=CONTEXT` pairs; ValueError says what to fix.

    The provider reads each service's spec (GPU count, Spot) from the control plane's store."""
    mapping = dict(item.split("=", 1) for item in contexts if "=" in item)
    if not mapping or len(mapping) != len(contexts):
        raise ValueError(
            "--provider kubernetes needs --context REGION=CONTEXT for each cluster, e.g. --context us-central1=gke_p_r_c"
        )
    if not kubeconfig.is_file():
        raise ValueError(f"no kubeconfig at {kubeconfig}; pass --kubeconfig FILE")
    try:
        from gpuroam.providers.kubernetes.provider import KubernetesProvider
    except ImportError as error:
        raise ValueError("the kubernetes provider needs its client: pip install 'gpuroam[kubernetes]'") from error

    def build(store: Any, catalog: Catalog) -> KubernetesProvider:
        return KubernetesProvider.from_kubeconfig(
            kubeconfig, mapping, catalog=catalog, specs=_specs_from(store), service_type=service_type
        )

    return build


def gke_control_plane_factory(
    project: str | None, regions: Sequence[str], endpoint: str = "ingress"
) -> Callable[[Any, Catalog], Any]:
    """A ControlPlane provider factory for GKE Autopilot clusters in `regions` (created on demand)."""
    if not regions:
        raise ValueError("--provider gke needs --gke-region for each region, e.g. --gke-region us-central1")
    if endpoint not in ("ingress", "gateway"):
        raise ValueError(f"--endpoint {endpoint!r}: use ingress (MultiClusterIngress) or gateway (Gateway API)")
    try:
        from gpuroam.providers.gke.provider import GkeProvider
    except ImportError as error:
        raise ValueError("the gke provider needs the Google clients: pip install 'gpuroam[gke]'") from error

    def build(store: Any, catalog: Catalog) -> GkeProvider:
        return GkeProvider.from_environment(
            project, list(regions), endpoint=endpoint, catalog=catalog, specs=_specs_from(store)
        )

    return build


def _specs_from(store: Any) -> Callable[[str], ServiceSpec | None]:
    def spec_of(name: str) -> ServiceSpec | None:
        record = store.get_service(name)
        return parse_spec(record.spec) if record else None

    return spec_of
