"""Every provider, chosen by `gpuroam serve`'s flags and built once the control plane has its catalog.

A `ProviderChoice` also says whether a gateway on this machine can reach the replicas: local
workers and LoadBalancer Services it can; cluster-internal Services it cannot, and with gke the
endpoint is Google's global load balancer. The composition root (gpuroam.serve) reads that
instead of the CLI deciding it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from gpuroam.catalog import Catalog
from gpuroam.providers.base import Provider, SpecLookup

if TYPE_CHECKING:
    from gpuroam.providers.local.netns import RegionNetwork


@dataclass(frozen=True)
class ProviderChoice:
    """How to build the provider, and whether a local gateway can reach what it runs."""

    name: str
    build: Callable[[Catalog, SpecLookup], Provider]
    local_gateway: bool


def local_provider(regions_file: Path, state_dir: Path, network: RegionNetwork | None = None) -> ProviderChoice:
    """Sites of `regions_file` on this machine, each in its network namespace when `network` is given."""
    from gpuroam.providers.local import LocalProvider, LocalSitesError, load_sites

    try:
        sites = load_sites(regions_file)
    except LocalSitesError as error:
        raise ValueError(str(error)) from error

    def build(_catalog: Catalog, _specs: SpecLookup) -> Provider:
        return LocalProvider(sites.on_demand, state_dir, network=network, spot=sites.spot)

    return ProviderChoice("local", build, local_gateway=True)


def kubernetes_provider(kubeconfig: Path, contexts: Sequence[str], service_type: str = "ClusterIP") -> ProviderChoice:
    """Your clusters from `REGION=CONTEXT` pairs; ValueError says what to fix."""
    mapping = dict(item.split("=", 1) for item in contexts if "=" in item)
    if not mapping or len(mapping) != len(contexts):
        raise ValueError(
            "--provider kubernetes needs --context REGION=CONTEXT for each cluster, e.g. --context us-central1=gke_p_r_c"
        )
    if service_type not in ("ClusterIP", "LoadBalancer"):
        raise ValueError(f"--service-type {service_type!r}: use ClusterIP or LoadBalancer")
    if not kubeconfig.is_file():
        raise ValueError(f"no kubeconfig at {kubeconfig}; pass --kubeconfig FILE")
    try:
        from gpuroam.providers.kubernetes.provider import KubernetesProvider
    except ImportError as error:
        raise ValueError("the kubernetes provider needs its client: pip install 'gpuroam[kubernetes]'") from error

    def build(catalog: Catalog, _specs: SpecLookup) -> Provider:
        return KubernetesProvider.from_kubeconfig(kubeconfig, mapping, catalog=catalog, service_type=service_type)

    # A ClusterIP Service answers only inside its cluster: a gateway here could not reach it.
    return ProviderChoice("kubernetes", build, local_gateway=service_type == "LoadBalancer")


def gke_provider(project: str | None, regions: Sequence[str], endpoint: str = "ingress") -> ProviderChoice:
    """GKE Autopilot clusters in `regions` (created on demand) behind Google's global load balancer."""
    if not regions:
        raise ValueError("--provider gke needs --gke-region for each region, e.g. --gke-region us-central1")
    if endpoint not in ("ingress", "gateway"):
        raise ValueError(f"--endpoint {endpoint!r}: use ingress (MultiClusterIngress) or gateway (Gateway API)")
    try:
        from gpuroam.providers.gke.provider import GkeProvider
    except ImportError as error:
        raise ValueError("the gke provider needs the Google clients: pip install 'gpuroam[gke]'") from error

    def build(catalog: Catalog, specs: SpecLookup) -> Provider:
        return GkeProvider.from_environment(project, list(regions), endpoint=endpoint, catalog=catalog, specs=specs)

    return ProviderChoice("gke", build, local_gateway=False)
