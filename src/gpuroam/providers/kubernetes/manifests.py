"""The objects one region's cluster needs to run a service on one GPU type: pure functions, plain dicts.

A replica is a pod of a Deployment named for the service and the GPU (`stable-diffusion-l4`), so a
region can run two GPU types side by side while a move makes its replacement ready before draining
(make before break). The node selectors and probes follow GKE Autopilot's rules for GPU pods; the
same objects run on GKE Standard, where GKE adds the GPU taint tolerations itself.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from gpuroam.providers.kubernetes.names import (
    CAPACITY_LABEL,
    INSTANCE_LABEL,
    MANAGED_BY,
    REGION_LABEL,
    REPLICA_LABEL,
    dns_label,
    exact_annotations,
    label_value,
    selector_labels,
    service_labels,
    workload_labels,
    workload_name,
)
from gpuroam.records import Capacity
from gpuroam.spec import ServiceSpec

Manifest = dict[str, Any]

DEFAULT_NAMESPACE = "gpuroam"
SERVICE_PORT = 80  # what a Service and the load balancer in front of it expose; the pods listen on app.port
PORT_NAME = "http"
SHM_SIZE = "1Gi"  # /dev/shm in RAM: PyTorch shares tensors through it; Docker's default 64 MiB is too small
# The worker's compiled kernels and compiled artefact (worker/artefact.py). By default on a volume of the
# pod, which a restarted container finds; with `app.compile_cache` on a volume every pod shares (a
# Cloud Storage bucket through GKE's FUSE driver, or a ReadWriteMany claim), so the first replica of a
# GPU type writes the artefact and every later one, in any region, starts from it.
COMPILE_CACHE_DIR = "/var/cache/gpuroam"
COMPILE_CACHE_SIZE = "2Gi"
GCS_FUSE_DRIVER = "gcsfuse.csi.storage.gke.io"


@dataclass(frozen=True)
class PodSize:
    """CPU and memory one GPU of a type gets (the pod asks count x this)."""

    cpu: str
    memory: str


# CPU and memory per GPU, for each GKE accelerator type. Each row fits, after GKE's system
# reservations, the smallest machine that carries one such GPU, so a one-GPU pod never needs a
# bigger (dearer, scarcer) machine: n1-standard-4 (T4), g2-standard-4 (L4), a2-highgpu-1g
# (A100 40GB), a2-ultragpu-1g (A100 80GB), a3-highgpu-1g (H100); each is within GKE Autopilot's
# accepted range for that GPU. Stable Diffusion needs host RAM to load a checkpoint (about 8 GiB
# for SD 1.5, 12+ for SDXL) and little CPU. A GPU type not listed gets the smallest row's size.
POD_SIZES: dict[str, PodSize] = {
    "nvidia-tesla-t4": PodSize(cpu="3", memory="10Gi"),
    "nvidia-l4": PodSize(cpu="3", memory="11Gi"),
    "nvidia-tesla-a100": PodSize(cpu="8", memory="48Gi"),
    "nvidia-a100-80gb": PodSize(cpu="8", memory="64Gi"),
    "nvidia-h100-80gb": PodSize(cpu="16", memory="128Gi"),
}
DEFAULT_POD_SIZE = PodSize(cpu="3", memory="10Gi")

# Probes. A fresh GPU node takes up to about 15 minutes (node creation + image pull) before the
# container even starts; that wait is bounded by placement.provision_timeout_s, not by a probe.
# Once started, an app loads its model before the port answers, which on a cold disk and first
# CUDA initialisation can also take minutes: the startup probe allows 15 minutes for it.
READINESS_PERIOD_S = 5
READINESS_FAILURES = 2
STARTUP_PERIOD_S = 10
STARTUP_FAILURES = 90  # 90 x 10 s = 15 minutes
PROBE_TIMEOUT_S = 3
# No liveness probe: an app busy on a long generation must not be killed for a slow ping; a
# replica that stops answering turns not-ready, and the controller replaces it.

# Grace on shutdown, for requests in flight. Spot VMs give about 30 s notice, and GKE gives Spot pods at
# most 25 s (reference gke.md and elasticity.md): a Spot replica asks for no more than it would get.
GRACE_S = 60
SPOT_GRACE_S = 25
SPOT_SELECTOR = "cloud.google.com/gke-spot"


def pod_size(gpu: str, count: int) -> dict[str, str]:
    """CPU and memory for `count` GPUs of type `gpu`, as Kubernetes quantities."""
    size = POD_SIZES.get(gpu, DEFAULT_POD_SIZE)
    memory = size.memory.removesuffix("Gi")
    return {"cpu": _times(size.cpu, count), "memory": f"{_times(memory, count)}Gi"}


def _times(quantity: str, count: int) -> str:
    value = float(quantity) * count
    return str(int(value)) if value.is_integer() else f"{value:g}"


def is_worker_image(image: str) -> bool:
    """True for gpuroam's own worker image (any registry and tag): it takes the worker's command line.

    Any other image is taken to be an AUTOMATIC1111 Web UI image, whose entrypoint takes webui flags."""
    repository = image.split("@", 1)[0]
    last = repository.rsplit("/", 1)[-1]
    if ":" in last:
        repository = repository[: len(repository) - len(last)] + last.split(":", 1)[0]
    return repository.rsplit("/", 2)[-2:] == ["gpuroam", "worker"]


def container_command(spec: ServiceSpec, region: str, gpu: str, replica: str | None = None) -> dict[str, list[str]]:
    """`command`/`args` for the app container: the gpuroam worker, or A1111's `--listen --api`.

    `app.model` goes to the worker only; an A1111 image loads what it bakes in, or what app.args
    name (e.g. `--ckpt PATH`)."""
    app = spec.app
    extra = list(app.args)
    if is_worker_image(app.image):
        args = ["--host", "0.0.0.0", "--port", str(app.port), "--model", app.model, "--device", "cuda"]
        args += ["--region", region, "--gpu", gpu, "--replica", "$(POD_NAME)" if replica is None else replica]
        args += spec.limits.worker_args()
        return {"command": ["gpuroam", "worker"], "args": args + extra}
    return {"args": ["--listen", "--api", "--port", str(app.port), *extra]}


def namespace(name: str = DEFAULT_NAMESPACE) -> Manifest:
    """The namespace gpuroam's objects live in: the same name in every cluster (fleet namespace sameness)."""
    return {
        "apiVersion": "v1",
        "kind": "Namespace",
        "metadata": {"name": dns_label(name), "labels": {"app.kubernetes.io/managed-by": MANAGED_BY}},
    }


def _probe(spec: ServiceSpec, period_s: int, failures: int) -> Manifest:
    return {
        "httpGet": {"path": spec.app.readiness_path, "port": spec.app.port},
        "periodSeconds": period_s,
        "timeoutSeconds": PROBE_TIMEOUT_S,
        "failureThreshold": failures,
        "successThreshold": 1,
    }


def _security(image: str) -> Manifest:
    """No privilege escalation; and for gpuroam's image, which runs as uid 10001, refuse to run as root.

    An A1111 image is someone else's and may expect root, so it is not forced off it."""
    context: Manifest = {"allowPrivilegeEscalation": False}
    if is_worker_image(image):
        context["runAsNonRoot"] = True
    return context


def node_selector(spec: ServiceSpec, gpu: str, capacity: Capacity) -> dict[str, str]:
    """GKE's GPU node selectors: the accelerator type and count, and Spot for a Spot replica."""
    selector = {
        "cloud.google.com/gke-accelerator": gpu,
        "cloud.google.com/gke-accelerator-count": str(spec.resources.gpu_count),
    }
    if capacity is Capacity.SPOT:
        selector[SPOT_SELECTOR] = "true"
    return selector


def compile_cache_volume(source: str | None) -> Manifest:
    """The pod's `compile-cache` volume: the spec's shared location, or a volume of the pod's own.

    gs:// needs GKE's Cloud Storage FUSE driver (on by default in Autopilot) and the pods' service
    account allowed to read and write the bucket (roles/storage.objectUser through Workload Identity)."""
    if source is None:
        return {"name": "compile-cache", "emptyDir": {"sizeLimit": COMPILE_CACHE_SIZE}}
    if source.startswith("pvc:"):
        return {"name": "compile-cache", "persistentVolumeClaim": {"claimName": source.removeprefix("pvc:")}}
    bucket, _, folder = source.removeprefix("gs://").partition("/")
    options = "implicit-dirs" + (f",only-dir={folder.strip('/')}" if folder.strip("/") else "")
    return {
        "name": "compile-cache",
        "csi": {"driver": GCS_FUSE_DRIVER, "volumeAttributes": {"bucketName": bucket, "mountOptions": options}},
    }


def deployment(
    spec: ServiceSpec,
    region: str,
    gpu: str,
    namespace: str = DEFAULT_NAMESPACE,
    *,
    replica: str | None = None,
    capacity: Capacity = Capacity.ON_DEMAND,
    pods: int | None = None,
) -> Manifest:
    """The service's `pods` replicas (`replicas.per_region` when None) in `region` on `gpu` and
    `capacity`, each pod with its GPUs; `capacity` decides the Spot selector and grace.

    With `replica` (a controller's replica id), one pod for that replica alone, named and labelled
    for it: what a provider's launch(replica) applies, and terminate(replica id) deletes. Without,
    Spot and on-demand pods are Deployments of their own (the Spot one named `...-spot`), whose
    selectors tell them apart when the spec allows Spot (a spec that never does keeps its selector,
    which is immutable)."""
    labels = {**workload_labels(spec.name, region, gpu, replica), CAPACITY_LABEL: capacity.value}
    notes = exact_annotations(spec.name, region, gpu, replica)
    selector = selector_labels(spec.name, gpu)
    if replica is not None:
        selector[REPLICA_LABEL] = labels[REPLICA_LABEL]
    elif spec.resources.spot != "never":
        selector[CAPACITY_LABEL] = capacity.value
        if capacity is Capacity.SPOT:
            labels[INSTANCE_LABEL] = dns_label(f"{labels[INSTANCE_LABEL]}-spot")
    count = spec.resources.gpu_count
    size = pod_size(gpu, count)
    container: Manifest = {
        "name": "app",
        "image": spec.app.image,
        **container_command(spec, region, gpu, replica),
        "ports": [{"name": PORT_NAME, "containerPort": spec.app.port, "protocol": "TCP"}],
        "env": [{"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}],
        # Autopilot rejects a GPU pod without the limit; requests default to limits for it.
        "resources": {"requests": dict(size), "limits": {**size, "nvidia.com/gpu": count}},
        "readinessProbe": _probe(spec, READINESS_PERIOD_S, READINESS_FAILURES),
        "startupProbe": _probe(spec, STARTUP_PERIOD_S, STARTUP_FAILURES),
        "volumeMounts": [{"name": "dshm", "mountPath": "/dev/shm"}],
        "securityContext": _security(spec.app.image),
    }
    volumes: list[Manifest] = [{"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": SHM_SIZE}}]
    if is_worker_image(spec.app.image):
        container["env"].append({"name": "GPUROAM_COMPILE_CACHE", "value": f"{COMPILE_CACHE_DIR}/inductor"})
        container["volumeMounts"].append({"name": "compile-cache", "mountPath": COMPILE_CACHE_DIR})
        volumes.append(compile_cache_volume(spec.app.compile_cache))
        if spec.app.compile_cache and spec.app.compile_cache.startswith("gs://"):
            notes = {**notes, "gke-gcsfuse/volumes": "true"}  # GKE injects the FUSE sidecar for it
    pod_spec: Manifest = {
        "nodeSelector": node_selector(spec, gpu, capacity),
        "containers": [container],
        "volumes": volumes,
        "terminationGracePeriodSeconds": SPOT_GRACE_S if capacity is Capacity.SPOT else GRACE_S,
        "enableServiceLinks": False,
    }
    if capacity is Capacity.SPOT:
        # Autopilot adds this toleration itself; GKE Standard needs it where Spot node pools are tainted.
        toleration = {"key": SPOT_SELECTOR, "operator": "Equal", "value": "true", "effect": "NoSchedule"}
        pod_spec["tolerations"] = [toleration]
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": _metadata(labels[INSTANCE_LABEL], namespace, labels, notes),
        "spec": {
            "replicas": 1 if replica is not None else spec.replicas.per_region if pods is None else pods,
            "selector": {"matchLabels": selector},
            # Make before break: a new pod is ready before an old one goes (it needs a spare GPU).
            "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}},
            # Node creation, image pull and model load together: well past the 10-minute default.
            "progressDeadlineSeconds": 1800,
            "revisionHistoryLimit": 3,
            "template": {"metadata": {"labels": labels, "annotations": notes}, "spec": pod_spec},
        },
    }


def service(
    spec: ServiceSpec,
    region: str,
    gpu: str | None,
    namespace: str = DEFAULT_NAMESPACE,
    *,
    neg: bool = False,
    backend_config: str | None = None,
) -> Manifest:
    """A ClusterIP Service, port 80 -> the app's port.

    With `gpu`, it is that GPU type's own Service (`stable-diffusion-l4`), for reaching one placement.
    With gpu None, it is the service's region-wide Service (`stable-diffusion`) over pods on every GPU
    type: the one a ServiceExport exports, since an exported name must be the same in every cluster.
    `neg` asks GKE for container-native load balancing (network endpoint groups); `backend_config`
    names a BackendConfig in this cluster for a single-cluster Ingress. Multi Cluster Ingress does not
    use either: it derives its own Services, with NEGs, from the MultiClusterService."""
    if gpu is None:
        name, labels = dns_label(spec.name), {**service_labels(spec.name), REGION_LABEL: label_value(region)}
    else:
        name, labels = workload_name(spec.name, gpu), workload_labels(spec.name, region, gpu)
    annotations = exact_annotations(spec.name, region, gpu)
    if neg:
        annotations["cloud.google.com/neg"] = json.dumps({"ingress": True})
    if backend_config is not None:
        annotations["cloud.google.com/backend-config"] = json.dumps({"ports": {str(SERVICE_PORT): backend_config}})
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _metadata(name, namespace, labels, annotations),
        "spec": {
            "type": "ClusterIP",
            "selector": selector_labels(spec.name, gpu),
            "ports": [{"name": PORT_NAME, "port": SERVICE_PORT, "targetPort": spec.app.port, "protocol": "TCP"}],
        },
    }


def workload_manifests(
    spec: ServiceSpec, region: str, gpu: str, namespace: str = DEFAULT_NAMESPACE, *, neg: bool = False
) -> list[Manifest]:
    """Deployments (on demand, Spot, as `resources.spot` says) and the Service of `spec` on `gpu` in
    `region`, in the order to apply them."""
    made = [deployment(spec, region, gpu, namespace, capacity=kind, pods=n) for kind, n in rendered_counts(spec)]
    return [*made, service(spec, region, gpu, namespace, neg=neg)]


def rendered_counts(spec: ServiceSpec) -> list[tuple[Capacity, int]]:
    """Pods per region for manifests applied by hand, which cannot fall back by themselves: `never`
    all on demand; otherwise Spot but for the on-demand floor (`on_demand_base`, at most per_region),
    and with `prefer` an on-demand Deployment even at 0 replicas, the fallback to scale up
    (`kubectl scale`) while Spot is short. `gpuroam serve` does all of this per replica instead."""
    per_region, spot = spec.replicas.per_region, spec.resources.spot
    if spot == "never":
        return [(Capacity.ON_DEMAND, per_region)]
    base = min(spec.resources.on_demand_base, per_region)
    on_demand = [(Capacity.ON_DEMAND, base)] if base or spot == "prefer" else []
    return [(Capacity.SPOT, per_region - base), *on_demand]


def _metadata(name: str, namespace: str, labels: dict[str, str], annotations: dict[str, str]) -> Manifest:
    return {"name": name, "namespace": dns_label(namespace), "labels": dict(labels), "annotations": dict(annotations)}
