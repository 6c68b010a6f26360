"""`render`: the files it writes, that every object in them validates, and errors that say what to do."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from gke_schemas import validate

from gpuroam.catalog import load_catalog
from gpuroam.providers.render import CONFIG_FILE, PROVIDERS, RenderError, choose_gpu, render
from gpuroam.spec import ServiceSpec, load_spec, parse_spec

EXAMPLE = Path(__file__).parents[3] / "examples" / "stable-diffusion.yaml"
REGIONS = ["us-central1", "europe-west4", "asia-southeast1"]


def make_spec(gpus: list[str], gpu_count: int = 1, **regions: Any) -> ServiceSpec:
    data: dict[str, Any] = {"name": "stable-diffusion", "resources": {"gpus": gpus, "gpu_count": gpu_count}}
    if regions:
        data["regions"] = regions
    return parse_spec(data)


def documents(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]


@pytest.mark.parametrize("endpoint", ["ingress", "gateway"])
@pytest.mark.parametrize("provider", PROVIDERS)
def test_every_rendered_object_validates(tmp_path: Path, provider: str, endpoint: str) -> None:
    spec = load_spec(EXAMPLE)
    paths = render(spec, provider, REGIONS, tmp_path / "out", endpoint)
    expected = [f"{region}.yaml" for region in REGIONS] + ([CONFIG_FILE] if provider == "gke" else [])
    assert [path.name for path in paths] == expected
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted(expected)
    for path in paths:
        docs = documents(path)
        assert docs, path
        for doc in docs:
            validate(doc)


@pytest.mark.parametrize("endpoint", ["ingress", "gateway"])
def test_region_files_hold_namespace_deployment_service_and_export(tmp_path: Path, endpoint: str) -> None:
    paths = render(load_spec(EXAMPLE), "gke", REGIONS, tmp_path, endpoint)
    for path in paths[:-1]:
        kinds = [doc["kind"] for doc in documents(path)]
        extra = ["Service", "ServiceExport"] if endpoint == "gateway" else []
        assert kinds == ["Namespace", "Deployment", "Service", *extra]
    config_kinds = [doc["kind"] for doc in documents(paths[-1])]
    if endpoint == "ingress":
        assert config_kinds == ["Namespace", "BackendConfig", "MultiClusterService", "MultiClusterIngress"]
    else:
        assert config_kinds == ["Namespace", "Gateway", "HTTPRoute", "HealthCheckPolicy", "GCPBackendPolicy"]
    assert paths[-1].read_text().startswith("# gpuroam render:")


def test_kubernetes_provider_writes_no_gke_objects(tmp_path: Path) -> None:
    paths = render(load_spec(EXAMPLE), "kubernetes", REGIONS, tmp_path, "gateway")
    for path in paths:
        for doc in documents(path):
            assert doc["kind"] in {"Namespace", "Deployment", "Service"}
            assert "cloud.google.com/neg" not in doc["metadata"].get("annotations", {})


def test_each_region_runs_its_first_offered_gpu_from_the_preference_list(tmp_path: Path) -> None:
    # us-west2 and southamerica-east1 offer only T4; europe-west6 only L4; us-east5 neither (A100 80GB, H100).
    spec = make_spec(["nvidia-l4", "nvidia-tesla-t4", "nvidia-a100-80gb"])
    regions = ["us-central1", "us-west2", "europe-west6", "us-east5"]
    paths = render(spec, "gke", regions, tmp_path)
    chosen = {}
    for path in paths[:-1]:
        deployment = next(doc for doc in documents(path) if doc["kind"] == "Deployment")
        chosen[path.stem] = deployment["spec"]["template"]["spec"]["nodeSelector"]["cloud.google.com/gke-accelerator"]
    assert chosen == {
        "us-central1": "nvidia-l4",
        "us-west2": "nvidia-tesla-t4",
        "europe-west6": "nvidia-l4",
        "us-east5": "nvidia-a100-80gb",
    }
    names = {
        path.stem: next(d for d in documents(path) if d["kind"] == "Deployment")["metadata"]["name"]
        for path in paths[:-1]
    }
    assert names["us-central1"] == "stable-diffusion-l4" and names["us-west2"] == "stable-diffusion-t4"


def test_gpu_count_steers_the_choice_to_a_gpu_that_takes_it() -> None:
    # GKE Autopilot takes 8 L4 per pod but at most 4 T4.
    spec = make_spec(["nvidia-tesla-t4", "nvidia-l4"], gpu_count=8)
    assert choose_gpu(spec, "us-central1", load_catalog()) == "nvidia-l4"


def test_render_again_gives_the_same_bytes(tmp_path: Path) -> None:
    spec = load_spec(EXAMPLE)
    first = [path.read_bytes() for path in render(spec, "gke", REGIONS, tmp_path / "a", "gateway")]
    second = [path.read_bytes() for path in render(spec, "gke", REGIONS, tmp_path / "b", "gateway")]
    assert first == second


@pytest.mark.parametrize(
    ("regions", "spec_args", "message"),
    [
        (["us-centrall"], {}, r"unknown region 'us-centrall'; did you mean us-central1.*regions come from the bundled"),
        (["mars-north1"], {}, r"unknown region 'mars-north1'; regions come from .*us-central1, us-east1"),
        ([], {}, r"no regions given; pass --regions"),
        (["us-central1", "us-central1"], {}, r"region us-central1 is listed twice"),
        (["asia-southeast1"], {"deny": ["asia-*"]}, r"region asia-southeast1 is not allowed by the spec"),
    ],
)
def test_bad_regions_are_refused_clearly(
    tmp_path: Path, regions: list[str], spec_args: dict[str, Any], message: str
) -> None:
    spec = make_spec(["nvidia-l4"], **spec_args)
    with pytest.raises(RenderError, match=message):
        render(spec, "gke", regions, tmp_path / "out")
    assert not (tmp_path / "out").exists()  # nothing written on error


def test_a_region_without_the_spec_gpus_names_what_it_offers(tmp_path: Path) -> None:
    spec = make_spec(["nvidia-h100-80gb", "nvidia-a100-80gb"])
    with pytest.raises(RenderError) as caught:
        render(spec, "gke", ["us-central1", "us-west2"], tmp_path / "out")
    message = str(caught.value)
    assert "region us-west2 offers none of the spec's GPU types (nvidia-h100-80gb, nvidia-a100-80gb)" in message
    assert "it offers nvidia-tesla-t4" in message
    assert not (tmp_path / "out").exists()  # us-central1 was fine, but nothing is written


def test_a_gpu_count_no_offered_gpu_takes_is_refused_with_the_counts(tmp_path: Path) -> None:
    spec = make_spec(["nvidia-tesla-t4"], gpu_count=8)
    with pytest.raises(RenderError, match=r"takes resources.gpu_count 8 per pod \(nvidia-tesla-t4 takes 1, 2, 4\)"):
        render(spec, "gke", ["us-central1"], tmp_path)


@pytest.mark.parametrize(
    ("provider", "endpoint", "message"),
    [
        ("aws", "ingress", r"unknown provider 'aws'; use one of: kubernetes, gke"),
        ("gke", "mcs", r"unknown endpoint 'mcs'; use one of: ingress, gateway"),
    ],
)
def test_bad_provider_or_endpoint_is_refused(tmp_path: Path, provider: str, endpoint: str, message: str) -> None:
    with pytest.raises(RenderError, match=message):
        render(make_spec(["nvidia-l4"]), provider, ["us-central1"], tmp_path, endpoint)


def test_an_unwritable_output_folder_is_a_render_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(RenderError, match="cannot create output folder"):
        render(make_spec(["nvidia-l4"]), "gke", ["us-central1"], blocker / "out")
