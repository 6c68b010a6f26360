"""The service spec: the example's values, defaults, one clear error per mistake, and that any input
either parses or fails with a SpecError (never another exception)."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st
from pydantic import BaseModel, ValidationError

from gpuroam.spec import (
    AppSpec,
    EndpointSpec,
    LimitsSpec,
    PlacementSpec,
    RegionsSpec,
    ReplicasSpec,
    ResourcesSpec,
    ServiceSpec,
    SpecError,
    load_spec,
    parse_spec,
    spec_to_dict,
)

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
MINIMAL: dict[str, Any] = {"name": "sd", "resources": {"gpus": ["nvidia-l4"]}}
DELETE = object()


def edited(**changes: Any) -> dict[str, Any]:
    """MINIMAL with changes at dotted paths (`placement__race=0` sets placement.race; DELETE removes)."""
    data = copy.deepcopy(MINIMAL)
    for dotted, value in changes.items():
        *parents, last = dotted.split("__")
        node = data
        for part in parents:
            node = node.setdefault(part, {})
        if value is DELETE:
            del node[last]
        else:
            node[last] = value
    return data


def test_example_loads_with_its_values() -> None:
    spec = load_spec(EXAMPLES / "stable-diffusion.yaml")
    assert spec.name == "stable-diffusion"
    assert spec.app == AppSpec()
    assert spec.resources.gpus == ("nvidia-l4", "nvidia-tesla-t4", "nvidia-tesla-a100")
    assert (spec.resources.gpu_count, spec.resources.spot, spec.resources.on_demand_base) == (1, "never", 0)
    assert (spec.regions.allow, spec.regions.deny, spec.regions.min_regions) == (("*",), (), 2)
    assert (spec.replicas.per_region, spec.replicas.min, spec.replicas.max) == (1, 2, 6)
    placement = spec.placement
    assert (placement.race, placement.provision_timeout_s, placement.block_ttl_s) == (3, 120, 15)
    assert placement.move_back_after_s == 10
    assert parse_spec(spec_to_dict(spec)) == spec


def test_local_regions_example_matches_the_spec_gpus() -> None:
    regions = yaml.safe_load((EXAMPLES / "local-regions.yaml").read_text())["regions"]
    assert regions == {
        "us-central1": {"nvidia-l4": 1, "nvidia-tesla-t4": 2, "spot": {"nvidia-l4": 2}},
        "europe-west4": {"nvidia-l4": 1, "nvidia-tesla-t4": 1, "spot": {"nvidia-l4": 1, "nvidia-tesla-t4": 1}},
        "asia-southeast1": {"nvidia-tesla-t4": 1, "nvidia-tesla-a100": 1, "spot": {"nvidia-tesla-t4": 1}},
    }
    gpus = load_spec(EXAMPLES / "stable-diffusion.yaml").resources.gpus
    on_demand = {gpu for inventory in regions.values() for gpu in inventory if gpu != "spot"}
    assert on_demand == set(gpus)
    assert {gpu for inventory in regions.values() for gpu in inventory["spot"]} <= set(gpus)


def test_defaults_fill_a_minimal_spec() -> None:
    spec = parse_spec(MINIMAL)
    assert spec.app == AppSpec(
        kind="sd-webui",
        image="ghcr.io/gpuroam/worker:0.1.0",
        port=7860,
        readiness_path="/internal/ping",
        args=(),
        model="tiny",
    )
    assert spec.resources == ResourcesSpec(gpus=("nvidia-l4",), gpu_count=1, spot="never", on_demand_base=0)
    assert spec.regions == RegionsSpec(allow=("*",), deny=(), min_regions=1)
    assert spec.replicas == ReplicasSpec(per_region=1, min=1, max=8)
    assert spec.placement == PlacementSpec(
        race=5,
        race_fallback_gpu=True,
        provision_timeout_s=900,
        block_ttl_s=300,
        block_backoff=2.0,
        block_max_s=3600,
        move_back_after_s=120,
    )


def test_limits_default_to_what_usual_a1111_use_needs_and_become_worker_flags() -> None:
    limits = parse_spec(MINIMAL).limits
    assert limits == LimitsSpec(max_megapixel_steps=1000.0, max_prompt_chars=10_000)
    assert 512 * 512 / 1e6 * 50 * 64 < limits.max_megapixel_steps, "64 images of 512x512 at 50 steps fit"
    assert 2048 * 2048 / 1e6 * 150 * 64 > limits.max_megapixel_steps, "an hour of a GPU does not"
    tight = parse_spec(edited(limits={"max_megapixel_steps": 50, "max_prompt_chars": 500})).limits
    assert tight.worker_args() == ("--max-megapixel-steps", "50", "--max-prompt-chars", "500")


def test_the_endpoint_section_limits_each_caller_only_when_asked() -> None:
    assert parse_spec(MINIMAL).endpoint == EndpointSpec(requests_per_minute=None, images_per_day=None, max_in_flight=64)
    endpoint = parse_spec(edited(endpoint={"requests_per_minute": 30, "images_per_day": 500})).endpoint
    assert (endpoint.requests_per_minute, endpoint.images_per_day) == (30, 500)
    with pytest.raises(SpecError, match="endpoint.requests_per_minute"):
        parse_spec(edited(endpoint={"requests_per_minute": 0}))


def test_keys_and_certificate_files_are_found_from_the_specs_folder(tmp_path: Path) -> None:
    (tmp_path / "sd.yaml").write_text(
        yaml.safe_dump(
            {**MINIMAL, "endpoint": {"api_keys": "keys.txt", "tls": {"certificate": "c.pem", "key": "k.pem"}}}
        )
    )
    endpoint = load_spec(tmp_path / "sd.yaml").endpoint
    assert endpoint.key_file() == str(tmp_path / "keys.txt") and endpoint.key_secret() is None
    assert endpoint.tls is not None and (endpoint.tls.certificate, endpoint.tls.key) == (
        str(tmp_path / "c.pem"),
        str(tmp_path / "k.pem"),
    )
    (tmp_path / "s.yaml").write_text(yaml.safe_dump({**MINIMAL, "endpoint": {"api_keys": "secret:sd-keys"}}))
    assert load_spec(tmp_path / "s.yaml").endpoint.key_secret() == "sd-keys", "a Secret's name is left as it is"


@pytest.mark.parametrize(
    ("tls", "says"),
    [
        ({"certificate": "c.pem"}, "give both 'certificate' and 'key'"),
        ({}, "or 'gcp_certificate' on GKE"),
        ({"gcp_certificate": "Not_A_Name"}, "endpoint.tls.gcp_certificate"),
    ],
)
def test_a_half_given_tls_section_says_what_is_missing(tls: dict[str, str], says: str) -> None:
    with pytest.raises(SpecError, match=says):
        parse_spec(edited(endpoint={"tls": tls}))


def test_an_empty_section_means_its_defaults() -> None:
    assert parse_spec(edited(regions=None, placement=None)) == parse_spec(MINIMAL)


def test_spec_is_immutable_and_json_serialisable() -> None:
    spec = parse_spec(MINIMAL)
    with pytest.raises(ValidationError):
        spec.name = "other"  # type: ignore[misc]
    assert parse_spec(json.loads(json.dumps(spec_to_dict(spec)))) == spec
    assert hash(spec) == hash(parse_spec(MINIMAL))


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        pytest.param(edited(name="Stable_Diffusion"), ["name: 'Stable_Diffusion'", "lowercase"], id="bad-name"),
        pytest.param(edited(name="a" * 41), ["name: is 41 characters", "at most 40"], id="long-name"),
        pytest.param(edited(name=DELETE), ["name: required field is missing", "DNS-1035"], id="no-name"),
        pytest.param(edited(resources__gpus=[]), ["resources.gpus: no GPU types", "at least one"], id="no-gpus"),
        pytest.param(
            edited(resources__gpus=["nvidia-l4", "nvidia-tesla-t4", "nvidia-l4"]),
            ["resources.gpus[2]: 'nvidia-l4' is already at [0]", "list each GPU type once"],
            id="duplicate-gpu",
        ),
        pytest.param(
            edited(resources__gpus=["nvidia-l4", "NVIDIA T4"]),
            ["resources.gpus[1]: 'NVIDIA T4'", "lowercase letters, digits and '-'"],
            id="gpu-name-form",
        ),
        pytest.param(
            edited(resources__gpus="nvidia-l4"), ["resources.gpus: input should be a list", "e.g. ["], id="gpus-str"
        ),
        pytest.param(edited(resources__gpu_count=0), ["resources.gpu_count:", "1..16"], id="gpu-count-0"),
        pytest.param(edited(resources__gpu_count="2"), ["resources.gpu_count:", "integer"], id="gpu-count-str"),
        pytest.param(
            edited(replica={"max": 4}),
            ["unknown field 'replica' under (top level); did you mean 'replicas'?"],
            id="unknown-top-level",
        ),
        pytest.param(
            edited(placement__rcae=2),
            ["unknown field 'rcae' under placement; did you mean 'race'?"],
            id="unknown-nested",
        ),
        pytest.param(
            edited(zzz=1), ["unknown field 'zzz' under (top level); valid fields there: name, app"], id="unknown-far"
        ),
        pytest.param(edited(placement__race=0), ["placement.race:", "1..16"], id="race-0"),
        pytest.param(
            edited(placement__race_fallback_gpu="yes"),
            ["placement.race_fallback_gpu: input should be a valid boolean (got 'yes')", "true or false"],
            id="fallback-str",
        ),
        pytest.param(
            edited(replicas__min=3, replicas__max=2),
            ["replicas.max: max (2) is below min (3)", "raise replicas.max to at least 3"],
            id="max-below-min",
        ),
        pytest.param(
            edited(regions__min_regions=3, replicas__per_region=2, replicas__max=4),
            ["replicas.max:", "raise replicas.max to at least 6", "lower min_regions or per_region"],
            id="regions-exceed-max",
        ),
        pytest.param(
            edited(app__readiness_path="internal/ping"),
            ["app.readiness_path:", "start with '/'", "e.g. /internal/ping"],
            id="readiness-path",
        ),
        pytest.param(edited(app__kind="comfyui"), ["app.kind:", "'sd-webui'"], id="app-kind"),
        pytest.param(
            edited(app__compile_cache="s3://bucket/x"), ["app.compile_cache:", "gs://BUCKET", "pvc:CLAIM"], id="cache"
        ),
        pytest.param(edited(app__args=["--steps", 20]), ["app.args[1]:", "quote numbers"], id="args-number"),
        pytest.param(edited(app=["x"]), ["app: must be a mapping", "what runs"], id="section-list"),
        pytest.param(edited(regions__allow=[]), ["regions.allow: is empty", "['*']"], id="allow-empty"),
        pytest.param(edited(regions__deny=["US-*"]), ["regions.deny[0]:", "'us-*'"], id="deny-uppercase"),
        pytest.param(
            edited(placement__block_ttl_s=600, placement__block_max_s=60),
            ["placement.block_max_s: 60 is below block_ttl_s", "at least 600"],
            id="block-max-below-ttl",
        ),
        pytest.param(edited(placement__provision_timeout_s=float("nan")), ["finite"], id="nan-timeout"),
        pytest.param(edited(placement__block_backoff=True), ["placement.block_backoff:", ">= 1"], id="bool-number"),
        pytest.param(["name", "sd"], ["top level must be a mapping", "not list"], id="top-level-list"),
    ],
)
def test_each_mistake_names_its_field_and_a_fix(data: Any, expected: list[str]) -> None:
    with pytest.raises(SpecError) as caught:
        parse_spec(data, source="examples/x.yaml")
    message = str(caught.value)
    assert message.startswith("spec examples/x.yaml: ")
    for fragment in expected:
        assert fragment in message


def test_several_problems_one_per_line() -> None:
    with pytest.raises(SpecError) as caught:
        parse_spec(edited(name="X", placement__race=99, app__port=0), source="s.yaml")
    lines = str(caught.value).splitlines()
    assert len(lines) == len(caught.value.problems) == 3
    assert all(line.startswith("spec s.yaml: ") for line in lines)
    assert [line.split(": ")[1] for line in lines] == ["name", "app.port", "placement.race"]


def test_region_allowed_deny_wins() -> None:
    spec = parse_spec(edited(regions={"allow": ["us-*", "europe-west4"], "deny": ["us-east*", "europe-*"]}))
    assert spec.region_allowed("us-central1")
    assert not spec.region_allowed("us-east1")  # allowed by us-*, denied by us-east*
    assert not spec.region_allowed("europe-west4")  # allowed by name, denied by europe-*
    assert not spec.region_allowed("asia-east1")  # never allowed
    assert parse_spec(MINIMAL).region_allowed("anything-at-all1")


def test_gpu_rank_is_the_preference_order() -> None:
    spec = parse_spec(edited(resources__gpus=["nvidia-l4", "nvidia-tesla-t4"]))
    assert [spec.gpu_rank(g) for g in ("nvidia-l4", "nvidia-tesla-t4", "nvidia-h100-80gb")] == [0, 1, None]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param(
            "name: sd\nresources:\n  gpus: [nvidia-l4\nreplicas: {}\n", ["invalid YAML at line 4"], id="syntax"
        ),
        pytest.param("name: sd\n  bad: indent\n", ["invalid YAML at line 2", "indent"], id="indent"),
        pytest.param(
            "name: sd\nresources: {gpus: [nvidia-l4]}\nname: other\n",
            ["invalid YAML at line 3", "'name' appears twice"],
            id="duplicate-key",
        ),
        pytest.param(
            "name: sd\nresources:\n  gpus: !!set {nvidia-l4, nvidia-tesla-t4}\n",
            ["invalid YAML at line 3", "!!set has no order", "write a list"],
            id="unordered-set",
        ),
        pytest.param("- name: sd\n", ["top level must be a mapping", "not list"], id="top-level-list"),
        pytest.param("# nothing yet\n", ["the file is empty", "examples/stable-diffusion.yaml"], id="empty"),
        pytest.param("name: sd\nresources: {gpus: [nvidia-l4]}\n1: x\n", ["key 1 is not text"], id="int-key"),
        pytest.param("name: sd\nresources: {gpus: [nvidia-l4], gpu_count: 2}\n", [], id="valid"),
    ],
)
def test_load_spec_file_problems(tmp_path: Path, text: str, expected: list[str]) -> None:
    path = tmp_path / "svc.yaml"
    path.write_text(text)
    if not expected:
        assert load_spec(path).resources.gpu_count == 2
        return
    with pytest.raises(SpecError) as caught:
        load_spec(path)
    assert str(caught.value).startswith(f"spec {path}: ")
    for fragment in expected:
        assert fragment in str(caught.value)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(SpecError, match=r"nope\.yaml: file not found; check the path"):
        load_spec(tmp_path / "nope.yaml")


names = st.from_regex(r"[a-z]([-a-z0-9]{0,38}[a-z0-9])?", fullmatch=True)
gpu_names = st.from_regex(r"[a-z0-9-]{1,24}", fullmatch=True)
patterns = st.from_regex(r"[a-z0-9*?-]{1,16}", fullmatch=True)
seconds = st.one_of(st.integers(1, 10**6), st.floats(1e-3, 1e6))
spot_choices = st.sampled_from(["never", "prefer", "only", True, False])


def some_of(draw: st.DrawFn, fields: dict[str, Any]) -> dict[str, Any]:
    """A random subset of a section's fields: the rest take their defaults."""
    return {key: value for key, value in fields.items() if draw(st.booleans())}


@st.composite
def valid_specs(draw: st.DrawFn) -> dict[str, Any]:
    data: dict[str, Any] = {
        "name": draw(names),
        "resources": {
            "gpus": draw(st.lists(gpu_names, min_size=1, max_size=5, unique=True)),
            **some_of(draw, {"gpu_count": draw(st.integers(1, 16)), "spot": draw(spot_choices)}),
        },
    }
    app = {
        "kind": "sd-webui",
        "image": draw(st.text(min_size=1, max_size=30)),
        "port": draw(st.integers(1, 65535)),
        "readiness_path": "/" + draw(st.text(max_size=20)),
        "args": draw(st.lists(st.text(max_size=10), max_size=4)),
        "model": draw(st.text(min_size=1, max_size=20)),
    }
    data["app"] = some_of(draw, app)
    if draw(st.booleans()):  # regions and replicas together: min_regions * per_region <= max
        min_regions, per_region, least = draw(st.integers(1, 6)), draw(st.integers(1, 4)), draw(st.integers(1, 30))
        most = max(least, min_regions * per_region) + draw(st.integers(0, 10))
        allow, deny = draw(st.lists(patterns, min_size=1, max_size=3)), draw(st.lists(patterns, max_size=3))
        data["regions"] = {"allow": allow, "deny": deny, "min_regions": min_regions}
        data["replicas"] = {"per_region": per_region, "min": least, "max": most}
    if draw(st.booleans()):  # at most replicas.max (8 when not drawn)
        data["resources"]["on_demand_base"] = draw(st.integers(0, data.get("replicas", {}).get("max", 8)))
    if draw(st.booleans()):
        ttl = draw(seconds)
        data["placement"] = {
            "race": draw(st.integers(1, 16)),
            "race_fallback_gpu": draw(st.booleans()),
            "provision_timeout_s": draw(seconds),
            "block_ttl_s": ttl,
            "block_backoff": draw(st.floats(1, 10)),
            "block_max_s": ttl * draw(st.integers(1, 100)),
            "move_back_after_s": draw(st.one_of(st.just(0), seconds)),
        }
    return data


@given(valid_specs())
def test_valid_specs_round_trip(data: dict[str, Any]) -> None:
    spec = parse_spec(data)
    stored = json.loads(json.dumps(spec_to_dict(spec)))
    assert parse_spec(stored) == spec
    assert spec_to_dict(parse_spec(stored)) == stored


SPOT_WORDS = {"never": "never", "prefer": "prefer", "only": "only", True: "only", False: "never"}


@given(spot_choices)
def test_spot_is_a_choice_and_the_old_booleans_keep_their_meaning(choice: str | bool) -> None:
    spec = parse_spec(edited(resources__spot=choice))
    assert spec.resources.spot == SPOT_WORDS[choice]
    assert spec_to_dict(spec)["resources"]["spot"] == SPOT_WORDS[choice], "stored as the word, which reads back"
    assert parse_spec(spec_to_dict(spec)) == spec


@given(st.one_of(st.text(max_size=12), st.integers(), st.floats(), st.none(), st.lists(st.booleans(), max_size=2)))
def test_spot_refuses_anything_but_the_three_words_and_booleans(value: object) -> None:
    if value in ("never", "prefer", "only"):
        return
    with pytest.raises(SpecError) as caught:
        parse_spec(edited(resources__spot=value))
    assert "resources.spot: input should be 'never', 'prefer' or 'only'" in str(caught.value)
    assert "true means only" in str(caught.value)


@given(st.integers(1, 40), st.integers(0, 60))
def test_on_demand_base_is_at_most_replicas_max(most: int, base: int) -> None:
    data = edited(resources__on_demand_base=base, replicas__max=most)
    if base <= most:
        assert parse_spec(data).resources.on_demand_base == base
        return
    with pytest.raises(SpecError) as caught:
        parse_spec(data)
    assert str(caught.value) == (
        f"spec <spec>: resources.on_demand_base: {base} is above replicas.max ({most}); "
        f"lower resources.on_demand_base to at most {most} or raise replicas.max to {base}"
    )


@pytest.mark.parametrize(
    ("base", "fragment"), [(-1, "greater than or equal to 0"), (1.5, "valid integer"), ("2", "valid integer")]
)
def test_on_demand_base_must_be_a_whole_number(base: object, fragment: str) -> None:
    with pytest.raises(
        SpecError, match=f"resources.on_demand_base: .*{fragment}.*on-demand replicas Spot never replaces"
    ):
        parse_spec(edited(resources__on_demand_base=base))


json_like = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=12),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4),
    max_leaves=20,
)


def spec_shaped(model: type[BaseModel]) -> st.SearchStrategy[dict[str, Any]]:
    """Dicts that use a section's real field names (and a few wrong ones), with arbitrary values."""
    keys = st.sampled_from(list(model.model_fields)) | st.text(max_size=8)
    return st.dictionaries(keys, json_like, max_size=6)


shaped_specs = st.fixed_dictionaries(
    {},
    optional={
        "name": names | json_like,
        "app": spec_shaped(AppSpec) | json_like,
        "resources": spec_shaped(ResourcesSpec) | st.fixed_dictionaries({"gpus": st.lists(gpu_names | json_like)}),
        "regions": spec_shaped(RegionsSpec),
        "replicas": spec_shaped(ReplicasSpec),
        "placement": spec_shaped(PlacementSpec),
    },
)


@given(json_like | shaped_specs)
def test_any_input_parses_or_raises_spec_error(data: Any) -> None:
    try:
        spec = parse_spec(data, source="fuzz.yaml")
    except SpecError as exc:
        assert exc.problems
        assert all(line.startswith("spec fuzz.yaml: ") for line in str(exc).splitlines())
    else:
        assert isinstance(spec, ServiceSpec)
