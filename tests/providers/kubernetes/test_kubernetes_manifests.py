"""A region's Deployment and Service: upstream-valid, labelled, GPU-selected, probed on the readiness path."""

from __future__ import annotations

import re
from typing import Any

import kubernetes_validate
import pytest
from hypothesis import given
from hypothesis import strategies as st

from gpuroam.catalog import load_catalog
from gpuroam.providers.kubernetes import manifests as k8s
from gpuroam.providers.kubernetes.names import (
    GPU_LABEL,
    GPU_SHORT_NAMES,
    REGION_LABEL,
    REPLICA_LABEL,
    SERVICE_LABEL,
    dns_label,
    gpu_short_name,
    label_value,
    workload_labels,
    workload_name,
)
from gpuroam.records import Capacity
from gpuroam.spec import ServiceSpec, parse_spec

KUBERNETES_VERSION = "1.35.0"  # a recent release that kubernetes-validate 1.37.0 bundles schemas for
DNS_1035 = re.compile(r"[a-z]([-a-z0-9]*[a-z0-9])?")
LABEL_VALUE = re.compile(r"([A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?)?")
CATALOG_GPUS = list(load_catalog().gpus)
A1111 = "ghcr.io/example/stable-diffusion-webui:v1.10.1"

# What the spec accepts: a DNS-1035 label of at most 40 characters; GPU types of [a-z0-9-]+.
service_names = st.from_regex(r"\A[a-z]([-a-z0-9]{0,38}[a-z0-9])?\Z")
gpu_names = st.one_of(st.sampled_from(CATALOG_GPUS), st.from_regex(r"\A[a-z0-9-]{1,90}\Z"))


def make_spec(name: str = "stable-diffusion", spot: str | bool = False, gpu_count: int = 1, **app: Any) -> ServiceSpec:
    resources = {"gpus": ["nvidia-l4"], "spot": spot, "gpu_count": gpu_count}
    return parse_spec({"name": name, "app": app, "resources": resources, "replicas": {"per_region": 2, "max": 8}})


def container(doc: dict[str, Any]) -> dict[str, Any]:
    (only,) = doc["spec"]["template"]["spec"]["containers"]
    return only


@pytest.mark.parametrize("gpu", CATALOG_GPUS)
@pytest.mark.parametrize("spot", [False, True])
@pytest.mark.parametrize("image", ["ghcr.io/gpuroam/worker:0.1.0", A1111])
def test_objects_validate_against_upstream_kubernetes_schemas(gpu: str, spot: bool, image: str) -> None:
    spec = make_spec(spot=spot, gpu_count=load_catalog().gpus[gpu].counts[-1], image=image, args=["--xformers"])
    objects = [k8s.namespace(), *k8s.workload_manifests(spec, "europe-west4", gpu, neg=True)]
    objects.append(k8s.service(spec, "europe-west4", None, backend_config="stable-diffusion"))
    for doc in objects:
        kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)


def test_a_typo_fails_upstream_validation() -> None:
    """The upstream check bites: strict mode rejects an unknown field."""
    doc = k8s.deployment(make_spec(), "us-central1", "nvidia-l4")
    container(doc)["readynessProbe"] = container(doc).pop("readinessProbe")
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)


@given(service=service_names, gpu=gpu_names, other=gpu_names)
def test_names_and_labels_are_valid_and_distinct_per_gpu(service: str, gpu: str, other: str) -> None:
    name = workload_name(service, gpu)
    assert len(name) <= 63 and DNS_1035.fullmatch(name), name
    assert name == workload_name(service, gpu)  # deterministic
    if other != gpu:
        assert workload_name(service, other) != name  # two GPU types in one region never collide
        assert label_value(other) != label_value(gpu)  # nor do their selectors
    for value in workload_labels(service, "us-central1", gpu).values():
        assert len(value) <= 63 and LABEL_VALUE.fullmatch(value), value
    valid = len(gpu) <= 63 and LABEL_VALUE.fullmatch(gpu) is not None
    assert (label_value(gpu) == gpu) is valid  # a valid value is kept as it is


@given(raw=st.text(max_size=120))
def test_dns_label_and_label_value_make_anything_valid(raw: str) -> None:
    name, value = dns_label(raw), label_value(raw)
    assert len(name) <= 63 and DNS_1035.fullmatch(name), name
    assert len(value) <= 63 and LABEL_VALUE.fullmatch(value), value


@pytest.mark.parametrize(
    ("service", "gpu", "name"),
    [
        ("stable-diffusion", "nvidia-l4", "stable-diffusion-l4"),
        ("stable-diffusion", "nvidia-tesla-t4", "stable-diffusion-t4"),
        ("stable-diffusion", "nvidia-tesla-a100", "stable-diffusion-a100"),
        ("stable-diffusion", "nvidia-a100-80gb", "stable-diffusion-a100-80gb"),
        ("stable-diffusion", "nvidia-h100-80gb", "stable-diffusion-h100-80gb"),
        ("sd", "amd-mi300x", "sd-amd-mi300x"),
        ("sd", "l4", f"sd-{gpu_short_name('l4')}"),  # a user GPU named like a short form gets a hash
        ("s" * 40, "nvidia-h100-mega-80gb", f"{'s' * 40}-h100-mega-80gb"),
    ],
)
def test_workload_names_table(service: str, gpu: str, name: str) -> None:
    assert workload_name(service, gpu) == name
    assert gpu_short_name("l4") != "l4"


def test_every_catalog_gpu_has_a_short_name_and_a_pod_size() -> None:
    """The tables stay in step with the catalog: a new GPU type gets a row in each."""
    for gpu in CATALOG_GPUS:
        assert gpu in GPU_SHORT_NAMES and gpu in k8s.POD_SIZES
    assert len(set(GPU_SHORT_NAMES.values())) == len(GPU_SHORT_NAMES)


@pytest.mark.parametrize("capacity", list(Capacity))
@pytest.mark.parametrize("choice", ["never", "prefer", "only"])
def test_the_replicas_capacity_decides_spot_selector_toleration_and_grace(choice: str, capacity: Capacity) -> None:
    """GKE (reference gke.md): Spot pods select `cloud.google.com/gke-spot: "true"` and get at most 25 s of grace.
    A replica's capacity decides, whatever the spec's choice: placement may put a `prefer` replica either way."""
    made = k8s.deployment(make_spec(spot=choice), "us-central1", "nvidia-l4", replica="sd-a", capacity=capacity)
    pod, spot = made["spec"]["template"]["spec"], capacity is Capacity.SPOT
    assert pod["nodeSelector"].get("cloud.google.com/gke-spot") == ("true" if spot else None)
    assert any(t["key"] == "cloud.google.com/gke-spot" for t in pod.get("tolerations", [])) is spot
    assert pod["terminationGracePeriodSeconds"] == (25 if spot else 60)
    assert made["metadata"]["labels"]["gpuroam.dev/capacity"] == capacity.value
    assert made["spec"]["template"]["metadata"]["labels"]["gpuroam.dev/capacity"] == capacity.value
    assert "gpuroam.dev/capacity" not in made["spec"]["selector"]["matchLabels"], "a selector is immutable: unchanged"


@pytest.mark.parametrize(
    ("choice", "base", "expected"),
    [
        ("never", 0, [("on-demand", 2)]),
        (False, 1, [("on-demand", 2)]),
        ("prefer", 0, [("spot", 2), ("on-demand", 0)]),
        ("prefer", 1, [("spot", 1), ("on-demand", 1)]),
        ("only", 0, [("spot", 2)]),
        (True, 5, [("spot", 0), ("on-demand", 2)]),
    ],
)
def test_rendered_spot_and_on_demand_pods_are_deployments_of_their_own(
    choice: str | bool, base: int, expected: list[tuple[str, int]]
) -> None:
    """What `render` writes: Spot but for the on-demand floor, and with `prefer` an on-demand Deployment to
    scale up by hand; two Deployments never select each other's pods, and the Service selects both."""
    spec = parse_spec(
        {"name": "sd", "resources": {"gpus": ["nvidia-l4"], "spot": choice, "on_demand_base": base},
         "replicas": {"per_region": 2, "max": 8}}
    )  # fmt: skip
    *made, svc = k8s.workload_manifests(spec, "us-central1", "nvidia-l4")
    assert [(d["metadata"]["labels"]["gpuroam.dev/capacity"], d["spec"]["replicas"]) for d in made] == expected
    assert len({d["metadata"]["name"] for d in made}) == len(made)
    for doc in made:
        pod = doc["spec"]["template"]
        spot = pod["metadata"]["labels"]["gpuroam.dev/capacity"] == "spot"
        assert pod["spec"]["nodeSelector"].get("cloud.google.com/gke-spot") == ("true" if spot else None)
        assert pod["spec"]["terminationGracePeriodSeconds"] == (25 if spot else 60)
        assert svc["spec"]["selector"].items() <= pod["metadata"]["labels"].items(), "the Service selects it"
        others = [d for d in made if d is not doc]
        assert not any(doc["spec"]["selector"]["matchLabels"].items() <= o["spec"]["template"]["metadata"]["labels"].items()
                       for o in others), "a Deployment selects only its own pods"  # fmt: skip
    if spec.resources.spot == "never":
        assert "gpuroam.dev/capacity" not in made[0]["spec"]["selector"]["matchLabels"], "unchanged: it is immutable"


@pytest.mark.parametrize("count", [1, 2, 4, 8])
def test_gpu_count_sets_the_limit_the_selector_and_the_size(count: int) -> None:
    doc = k8s.deployment(make_spec(gpu_count=count), "us-central1", "nvidia-l4")
    pod, resources = doc["spec"]["template"]["spec"], container(doc)["resources"]
    assert resources["limits"]["nvidia.com/gpu"] == count
    assert pod["nodeSelector"]["cloud.google.com/gke-accelerator"] == "nvidia-l4"
    assert pod["nodeSelector"]["cloud.google.com/gke-accelerator-count"] == str(count)
    one = k8s.POD_SIZES["nvidia-l4"]
    assert resources["requests"] == {"cpu": str(int(one.cpu) * count), "memory": f"{int(one.memory[:-2]) * count}Gi"}
    assert resources["requests"].items() <= resources["limits"].items()


def test_an_unknown_gpu_gets_the_default_size() -> None:
    assert k8s.pod_size("amd-mi300x", 2) == {"cpu": "6", "memory": "20Gi"}


def test_probes_hit_the_readiness_path_on_the_app_port_and_startup_allows_15_minutes() -> None:
    spec = make_spec(port=7861, readiness_path="/healthz")
    app = container(k8s.deployment(spec, "us-central1", "nvidia-l4"))
    for probe in (app["readinessProbe"], app["startupProbe"]):
        assert probe["httpGet"] == {"path": "/healthz", "port": 7861}
    assert app["ports"] == [{"name": "http", "containerPort": 7861, "protocol": "TCP"}]
    startup = app["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 15 * 60
    assert "livenessProbe" not in app


def test_dev_shm_is_memory_backed() -> None:
    doc = k8s.deployment(make_spec(), "us-central1", "nvidia-l4")
    volume = doc["spec"]["template"]["spec"]["volumes"][0]
    assert volume["emptyDir"]["medium"] == "Memory"
    assert {"name": volume["name"], "mountPath": "/dev/shm"} in container(doc)["volumeMounts"]


def test_the_worker_keeps_its_compiled_kernels_across_container_restarts() -> None:
    worker = k8s.deployment(make_spec(image="ghcr.io/gpuroam/worker:0.1.0"), "us-central1", "nvidia-l4")
    volumes = {v["name"]: v for v in worker["spec"]["template"]["spec"]["volumes"]}
    app = container(worker)
    (mount,) = [m for m in app["volumeMounts"] if m["name"] == "compile-cache"]
    assert "medium" not in volumes["compile-cache"]["emptyDir"], "on the node's disk, not in RAM"
    cache = {e["name"]: e.get("value") for e in app["env"]}["GPUROAM_COMPILE_CACHE"]
    assert cache.startswith(mount["mountPath"] + "/")
    a1111 = k8s.deployment(make_spec(image=A1111), "us-central1", "nvidia-l4")
    assert [v["name"] for v in a1111["spec"]["template"]["spec"]["volumes"]] == ["dshm"]


def test_a_shared_compile_cache_is_mounted_for_every_pod_of_the_service() -> None:
    """gs:// through GKE's Cloud Storage FUSE driver (and its sidecar's annotation), pvc: as a claim: the
    first replica of a GPU type writes the compiled artefact and the others start from it."""
    worker = "ghcr.io/gpuroam/worker:0.1.0"
    bucket = k8s.deployment(
        make_spec(image=worker, compile_cache="gs://my-cache/sd15/h100"), "us-central1", "nvidia-l4"
    )
    template = bucket["spec"]["template"]
    volumes = {v["name"]: v for v in template["spec"]["volumes"]}
    assert volumes["compile-cache"]["csi"] == {
        "driver": "gcsfuse.csi.storage.gke.io",
        "volumeAttributes": {"bucketName": "my-cache", "mountOptions": "implicit-dirs,only-dir=sd15/h100"},
    }
    assert template["metadata"]["annotations"]["gke-gcsfuse/volumes"] == "true"
    claim = k8s.deployment(make_spec(image=worker, compile_cache="pvc:sd-compiled"), "us-central1", "nvidia-l4")
    volumes = {v["name"]: v for v in claim["spec"]["template"]["spec"]["volumes"]}
    assert volumes["compile-cache"]["persistentVolumeClaim"] == {"claimName": "sd-compiled"}
    assert "gke-gcsfuse/volumes" not in claim["spec"]["template"]["metadata"]["annotations"]


def test_worker_image_runs_the_worker_command() -> None:
    spec = make_spec(
        image="europe-docker.pkg.dev/p/r/gpuroam/worker@sha256:abc",
        port=8000,
        model="/models/sd15",
        args=["--max-batch", "4"],
    )
    app = container(k8s.deployment(spec, "asia-southeast1", "nvidia-tesla-t4"))
    assert app["command"] == ["gpuroam", "worker"]
    args = app["args"]
    for flag, value in [
        ("--host", "0.0.0.0"),
        ("--port", "8000"),
        ("--model", "/models/sd15"),
        ("--gpu", "nvidia-tesla-t4"),
    ]:
        assert args[args.index(flag) + 1] == value
    assert args[args.index("--replica") + 1] == "$(POD_NAME)"
    assert args[-2:] == ["--max-batch", "4"]
    assert {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}} in app["env"]
    assert app["securityContext"] == {"allowPrivilegeEscalation": False, "runAsNonRoot": True}


def test_a1111_image_keeps_its_entrypoint_and_gets_listen_api() -> None:
    app = container(k8s.deployment(make_spec(image=A1111, args=["--xformers"]), "us-central1", "nvidia-l4"))
    assert "command" not in app
    assert app["args"] == ["--listen", "--api", "--port", "7860", "--xformers"]
    assert app["securityContext"] == {"allowPrivilegeEscalation": False}  # someone else's image may need root


@pytest.mark.parametrize(
    ("image", "worker"),
    [
        ("ghcr.io/gpuroam/worker:0.1.0", True),
        ("gpuroam/worker", True),
        ("localhost:5000/gpuroam/worker:dev", True),
        ("ghcr.io/gpuroam/worker@sha256:0123", True),
        ("ghcr.io/example/stable-diffusion-webui:v1.10.1", False),
        ("gpuroam/worker-a1111:1", False),
        ("universonic/stable-diffusion-webui", False),
    ],
)
def test_is_worker_image(image: str, worker: bool) -> None:
    assert k8s.is_worker_image(image) is worker


def test_selectors_match_pod_labels_and_labels_say_service_region_gpu() -> None:
    spec = make_spec()
    doc = k8s.deployment(spec, "europe-west4", "nvidia-l4")
    pod_labels = doc["spec"]["template"]["metadata"]["labels"]
    assert doc["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    assert doc["metadata"]["labels"] == pod_labels
    assert (pod_labels[SERVICE_LABEL], pod_labels[REGION_LABEL], pod_labels[GPU_LABEL]) == (
        "stable-diffusion",
        "europe-west4",
        "nvidia-l4",
    )
    assert pod_labels["app.kubernetes.io/name"] == "stable-diffusion"
    assert doc["spec"]["replicas"] == 2
    own = k8s.service(spec, "europe-west4", "nvidia-l4")
    assert own["metadata"]["name"] == doc["metadata"]["name"] == "stable-diffusion-l4"
    assert own["spec"]["selector"].items() <= pod_labels.items()
    t4_labels = k8s.deployment(spec, "europe-west4", "nvidia-tesla-t4")["spec"]["template"]["metadata"]["labels"]
    assert not own["spec"]["selector"].items() <= t4_labels.items()  # one GPU type's Service only
    wide = k8s.service(spec, "europe-west4", None)
    assert wide["metadata"]["name"] == "stable-diffusion"
    assert (
        wide["spec"]["selector"].items() <= t4_labels.items() and wide["spec"]["selector"].items() <= pod_labels.items()
    )


def test_service_is_cluster_ip_80_to_the_app_port_with_gke_annotations_on_request() -> None:
    spec = make_spec(port=7861)
    plain = k8s.service(spec, "us-central1", "nvidia-l4")
    assert plain["spec"]["type"] == "ClusterIP"
    assert plain["spec"]["ports"] == [{"name": "http", "port": 80, "targetPort": 7861, "protocol": "TCP"}]
    assert not {"cloud.google.com/neg", "cloud.google.com/backend-config"} & set(plain["metadata"]["annotations"])
    gke = k8s.service(spec, "us-central1", "nvidia-l4", neg=True, backend_config="sd-health")
    notes = gke["metadata"]["annotations"]
    assert notes["cloud.google.com/neg"] == '{"ingress": true}'
    assert notes["cloud.google.com/backend-config"] == '{"ports": {"80": "sd-health"}}'


def test_odd_gpu_names_keep_their_exact_value_in_annotations() -> None:
    gpu = "x" * 70 + "-"
    doc = k8s.deployment(make_spec(), "us-central1", gpu)
    assert doc["spec"]["template"]["metadata"]["annotations"][GPU_LABEL] == gpu
    assert doc["spec"]["template"]["spec"]["nodeSelector"]["cloud.google.com/gke-accelerator"] == gpu
    kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)


@given(replica=st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789-_.", min_size=1, max_size=100))
def test_a_replica_deployment_is_named_labelled_and_selected_for_that_replica_alone(replica: str) -> None:
    spec = make_spec()
    doc = k8s.deployment(spec, "us-central1", "nvidia-l4", replica=replica)
    name, labels = doc["metadata"]["name"], doc["spec"]["template"]["metadata"]["labels"]
    assert len(name) <= 63 and DNS_1035.fullmatch(name), name
    assert doc["spec"]["replicas"] == 1
    assert doc["spec"]["selector"]["matchLabels"][REPLICA_LABEL] == labels[REPLICA_LABEL]
    assert doc["spec"]["template"]["metadata"]["annotations"][REPLICA_LABEL] == replica
    args = container(doc)["args"]
    assert args[args.index("--replica") + 1] == replica
    # The GPU type's Service and the region-wide one still select it.
    for svc in (k8s.service(spec, "us-central1", "nvidia-l4"), k8s.service(spec, "us-central1", None)):
        assert svc["spec"]["selector"].items() <= labels.items()
    other = k8s.deployment(spec, "us-central1", "nvidia-l4", replica=replica + "x")
    assert not doc["spec"]["selector"]["matchLabels"].items() <= other["spec"]["template"]["metadata"]["labels"].items()


def test_replica_ids_from_the_reconciler_name_their_deployment() -> None:
    doc = k8s.deployment(make_spec(), "us-central1", "nvidia-l4", replica="stable-diffusion-us-central1-l4-a1b2c3")
    assert doc["metadata"]["name"] == "stable-diffusion-us-central1-l4-a1b2c3"
    kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
