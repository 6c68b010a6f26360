"""`gpuroam render`: a spec's cluster objects as YAML files to read, diff or `kubectl apply` by hand.

One multi-document file per region (namespace, Deployment, Service, and for the Gateway endpoint the
region-wide Service and its ServiceExport), and for GKE one file for the fleet's config cluster
(the global endpoint). Each region runs the first GPU type in the spec's preference list that the
catalog says it offers, with the spec's GPU count. Nothing here talks to a cluster.
"""

from __future__ import annotations

import difflib
from pathlib import Path

import yaml

from gpuroam.catalog import Catalog, load_catalog
from gpuroam.providers.gke.manifests import (
    ENDPOINTS,
    check_endpoint,
    cluster_name,
    config_cluster_manifests,
    membership_name,
    workload_cluster_manifests,
)
from gpuroam.providers.kubernetes.manifests import DEFAULT_NAMESPACE, Manifest, namespace, workload_manifests
from gpuroam.spec import ServiceSpec

PROVIDERS = ("kubernetes", "gke")
CONFIG_FILE = "config-cluster.yaml"


class RenderError(ValueError):
    """The request cannot be rendered; the message says what to change."""


def render(
    spec: ServiceSpec,
    provider: str,
    regions: list[str],
    out_dir: Path,
    endpoint: str = "ingress",
    *,
    catalog: Catalog | None = None,
    ns: str = DEFAULT_NAMESPACE,
) -> list[Path]:
    """Write `<region>.yaml` for each region (and `config-cluster.yaml` for gke) under `out_dir`.

    Returns the written paths, regions first in the order given. Everything is checked before any
    file is written, so a RenderError leaves `out_dir` as it was."""
    if provider not in PROVIDERS:
        raise RenderError(f"unknown provider {provider!r}; use one of: {', '.join(PROVIDERS)}")
    try:
        kind = check_endpoint(endpoint)
    except ValueError as error:
        raise RenderError(str(error)) from None
    catalog = catalog or load_catalog()
    gpus = {region: choose_gpu(spec, region, catalog) for region in _checked_regions(spec, regions, catalog)}
    gke = provider == "gke"
    files: dict[str, tuple[str, list[Manifest]]] = {}
    for region, gpu in gpus.items():
        objects = [namespace(ns), *workload_manifests(spec, region, gpu, ns, neg=gke)]
        if gke:
            objects += workload_cluster_manifests(spec, region, kind, ns)
        files[f"{region}.yaml"] = (_region_header(spec, provider, region, gpu), objects)
    if gke:
        files[CONFIG_FILE] = (
            _config_header(spec, list(gpus), kind),
            config_cluster_manifests(spec, list(gpus), kind, ns),
        )
    out_dir = Path(out_dir)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise RenderError(f"cannot create output folder {out_dir} ({error.strerror}); pass a writable --out") from None
    written = []
    for name, (header, objects) in files.items():
        path = out_dir / name
        path.write_text(header + dump(objects), encoding="utf-8")
        written.append(path)
    return written


def dump(objects: list[Manifest]) -> str:
    """Objects as a multi-document YAML stream, keys in the order written (kind and name first)."""
    return yaml.safe_dump_all(objects, sort_keys=False, default_flow_style=False, explicit_start=True)


def choose_gpu(spec: ServiceSpec, region: str, catalog: Catalog) -> str:
    """The first GPU type in the spec's list that `region` offers and that takes the spec's GPU count."""
    count = spec.resources.gpu_count
    offered = [offer.gpu for offer in catalog.offers_in(region)]
    usable = [gpu for gpu in spec.resources.gpus if gpu in offered]
    for gpu in usable:
        if count in catalog.gpus[gpu].counts:
            return gpu
    if not usable:
        wanted, has = ", ".join(spec.resources.gpus), ", ".join(offered) or "no GPU types"
        raise RenderError(
            f"region {region} offers none of the spec's GPU types ({wanted}); it offers {has}: "
            "add one of those to resources.gpus or pick another region"
        )
    counts = "; ".join(f"{gpu} takes {', '.join(map(str, catalog.gpus[gpu].counts))}" for gpu in usable)
    raise RenderError(
        f"no GPU type of the spec that region {region} offers takes resources.gpu_count {count} per pod "
        f"({counts}); change resources.gpu_count, or add a GPU type that takes it to resources.gpus"
    )


def _checked_regions(spec: ServiceSpec, regions: list[str], catalog: Catalog) -> list[str]:
    """The regions as given, once each, every one known to the catalog and allowed by the spec."""
    if not regions:
        raise RenderError("no regions given; pass --regions with one or more, e.g. us-central1,europe-west4")
    known = list(catalog.regions)
    for i, region in enumerate(regions):
        if region in regions[:i]:
            raise RenderError(f"region {region} is listed twice; list each region once")
        if region not in catalog.regions:
            close = difflib.get_close_matches(region, known, n=3, cutoff=0.85)
            guess = f"did you mean {', '.join(close)}? " if close else ""
            where = "the bundled catalog (gpuroam/catalog/gcp.yaml) or a --catalog file"
            raise RenderError(f"unknown region {region!r}; {guess}regions come from {where}: {', '.join(known)}")
        if not spec.region_allowed(region):
            allow, deny = list(spec.regions.allow), list(spec.regions.deny)
            raise RenderError(
                f"region {region} is not allowed by the spec (regions.allow {allow}, regions.deny {deny}); "
                "pick an allowed region or widen regions.allow"
            )
    return list(regions)


def _comment(lines: list[str]) -> str:
    return "".join(f"# {line}\n" if line else "#\n" for line in lines)


def _region_header(spec: ServiceSpec, provider: str, region: str, gpu: str) -> str:
    lines = [
        f"gpuroam render: service {spec.name} in region {region} on {spec.resources.gpu_count} x {gpu}.",
        f"Apply it to the {region} cluster ({cluster_name(region)} for gke):",
        f"  kubectl --context CONTEXT apply -f {region}.yaml",
    ]
    if provider == "kubernetes":
        lines.append("The node selectors are GKE's GPU labels; other clusters need nodes labelled the same way.")
    return _comment(lines)


def _config_header(spec: ServiceSpec, regions: list[str], endpoint: str) -> str:
    how = "Multi Cluster Ingress" if endpoint == "ingress" else "the multi-cluster Gateway API"
    members = ", ".join(membership_name(region) for region in regions)
    return _comment(
        [
            f"gpuroam render: the global endpoint of service {spec.name} ({how}) over {', '.join(regions)}.",
            "Apply it to the fleet's config cluster only: the membership the multiclusteringress feature names",
            f"(one of {members}). The load balancer takes up to about 10 minutes to come up.",
        ]
    )


__all__ = ["CONFIG_FILE", "ENDPOINTS", "PROVIDERS", "RenderError", "choose_gpu", "dump", "render"]
