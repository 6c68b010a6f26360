"""Names and labels for the objects gpuroam puts in clusters: valid, deterministic, collision-free.

Kubernetes checks names (DNS-1123/1035 labels, at most 63 characters) and label values (at most 63
characters, alphanumeric at both ends). A spec's name is already a DNS-1035 label, but GPU types
from a user catalog may be any `[a-z0-9-]+`, so every name and value goes through one of the two
functions below. Each returns its input unchanged when it is already valid, and otherwise a
cleaned, shortened form with a hash of the input appended, so two different inputs never give
the same result. Labels only select: the exact values also go into annotations, which take any
text, so that an observer reads back what gpuroam meant.
"""

from __future__ import annotations

import hashlib
import re

MAX_NAME = 63
PREFIX = "gpuroam.dev"
SERVICE_LABEL = f"{PREFIX}/service"
REGION_LABEL = f"{PREFIX}/region"
GPU_LABEL = f"{PREFIX}/gpu"
REPLICA_LABEL = f"{PREFIX}/replica"
INSTANCE_LABEL = "app.kubernetes.io/instance"  # names the Deployment (and Service) a pod belongs to
CAPACITY_LABEL = f"{PREFIX}/capacity"  # spot or on-demand: on a Deployment and its pods, never in a selector
MANAGED_BY = "gpuroam"

_DNS_LABEL = re.compile(r"[a-z]([-a-z0-9]*[a-z0-9])?")
_LABEL_VALUE = re.compile(r"([A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?)?")
_HASH = 6

# GKE accelerator names -> the short form that goes into object names (`stable-diffusion-l4`).
# The values are distinct; any other GPU keeps its full name (see gpu_short_name).
GPU_SHORT_NAMES = {
    "nvidia-tesla-t4": "t4",
    "nvidia-l4": "l4",
    "nvidia-tesla-a100": "a100",
    "nvidia-a100-80gb": "a100-80gb",
    "nvidia-h100-80gb": "h100-80gb",
    "nvidia-h100-mega-80gb": "h100-mega-80gb",
    "nvidia-h200-141gb": "h200-141gb",
    "nvidia-b200": "b200",
    "nvidia-tesla-v100": "v100",
    "nvidia-tesla-p100": "p100",
    "nvidia-tesla-p4": "p4",
}


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:_HASH]


def dns_label(raw: str, limit: int = MAX_NAME) -> str:
    """`raw` if it is a DNS-1035 label of at most `limit` characters; else a valid one ending in a hash of `raw`.

    DNS-1035 (starts with a letter) is the strictest name rule in play: Service names need it,
    and anything that passes it also passes DNS-1123 (Deployments, namespaces, GKE clusters)."""
    if len(raw) <= limit and _DNS_LABEL.fullmatch(raw):
        return raw
    cleaned = re.sub(r"-+", "-", re.sub(r"[^a-z0-9-]", "-", raw.lower())).strip("-")
    if not cleaned[:1].isalpha():
        cleaned = f"x-{cleaned}".rstrip("-")
    return f"{cleaned[: limit - _HASH - 1].rstrip('-')}-{_digest(raw)}"


def label_value(raw: str) -> str:
    """`raw` if Kubernetes accepts it as a label value; else a valid value ending in a hash of `raw`."""
    if len(raw) <= MAX_NAME and _LABEL_VALUE.fullmatch(raw):
        return raw
    cleaned = re.sub(r"[^A-Za-z0-9_.-]", "-", raw).strip("-_.")
    kept = cleaned[: MAX_NAME - _HASH - 1].rstrip("-_.")
    return f"{kept}-{_digest(raw)}" if kept else _digest(raw)


def gpu_short_name(gpu: str) -> str:
    """The GPU part of object names: `l4` for nvidia-l4; other GPUs keep their name (hashed if it
    would read like one of the short forms, so two GPU types never share a name)."""
    if gpu in GPU_SHORT_NAMES:
        return GPU_SHORT_NAMES[gpu]
    return f"{gpu}-{_digest(gpu)}" if gpu in GPU_SHORT_NAMES.values() else gpu


def workload_name(service: str, gpu: str) -> str:
    """The Deployment (and its own Service) of `service` on `gpu`: one per GPU type in a region,
    so a move from one GPU type to another runs both side by side (make before break)."""
    return dns_label(f"{service}-{gpu_short_name(gpu)}")


def replica_name(replica: str) -> str:
    """A one-replica Deployment's name: the controller's replica id (unique, and it already reads
    `<service>-<region>-<gpu>-<hex>`), made valid if it is not."""
    return dns_label(replica)


def service_labels(service: str) -> dict[str, str]:
    """What every object of `service` carries; the cross-GPU selectors (MCS, exported Service) use these."""
    return {
        SERVICE_LABEL: label_value(service),
        "app.kubernetes.io/name": label_value(service),
        "app.kubernetes.io/part-of": "gpuroam",
        "app.kubernetes.io/managed-by": MANAGED_BY,
    }


def selector_labels(service: str, gpu: str | None = None) -> dict[str, str]:
    """The labels that select a service's pods, on one GPU type or (gpu None) on any."""
    selector = {SERVICE_LABEL: label_value(service)}
    if gpu is not None:
        selector[GPU_LABEL] = label_value(gpu)
    return selector


def workload_labels(service: str, region: str, gpu: str, replica: str | None = None) -> dict[str, str]:
    """Labels for a Deployment, its pods and its Service: service, region, GPU (and replica, for a
    one-replica Deployment) and the standard ones."""
    labels = {
        **service_labels(service),
        INSTANCE_LABEL: workload_name(service, gpu) if replica is None else replica_name(replica),
        "app.kubernetes.io/component": "worker",
        REGION_LABEL: label_value(region),
        GPU_LABEL: label_value(gpu),
    }
    if replica is not None:
        labels[REPLICA_LABEL] = label_value(replica)
    return labels


def exact_annotations(service: str, region: str, gpu: str | None = None, replica: str | None = None) -> dict[str, str]:
    """The exact service, region, GPU and replica, for readers: label values may have been shortened."""
    notes = {SERVICE_LABEL: service, REGION_LABEL: region}
    if gpu is not None:
        notes[GPU_LABEL] = gpu
    if replica is not None:
        notes[REPLICA_LABEL] = replica
    return notes
