"""The worker's HTTP API under fuzzing: schemathesis from its OpenAPI schema, then raw bodies that no
schema describes (bytes, NaN, lone surrogates, deep nesting). Whatever arrives, the answer is a clean
HTTP status: 4xx for bad input, 503 only for "busy", never a 500, a hang or a dropped connection.

The worker runs under uvicorn on loopback with the session's tiny model. Generation is kept small so
the run stays short: steps, width, height, batch_size and n_iter are capped (2, 64, 64, 1, 1) when a
case asks for more or leaves them out. In positive mode img2img's first init image is a tiny PNG, so
the img2img path generates too. GPUROAM_FUZZ_EXAMPLES sets the examples per operation and mode.
"""

from __future__ import annotations

import base64
import io
import json
import math
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
import requests
import schemathesis
from hypothesis import given
from hypothesis import strategies as st
from PIL import Image
from schemathesis.generation.modes import GenerationMode
from schemathesis.specs.openapi.checks import response_schema_conformance

from fuzzing import fuzz_settings, schema_cases, serve_app
from gpuroam.worker import LoadedModel, WorkerConfig, create_app

DEFAULT_EXAMPLES = 40
SCHEMA = schemathesis.openapi.from_dict(create_app(WorkerConfig()).openapi())  # no model: the schema only
OPERATIONS = {op.label: op for op in (result.ok() for result in SCHEMA.get_all_operations())}
SMALL = {"steps": 2, "width": 64, "height": 64, "batch_size": 1, "n_iter": 1}
GENERATION_PATHS = ("/sdapi/v1/txt2img", "/sdapi/v1/img2img")
BUSY = 503  # the queue is full or the model is loading: the one 5xx a worker may give


def _png() -> str:
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), (200, 30, 30)).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


TINY_PNG = _png()


CASES = schema_cases(OPERATIONS)


@pytest.fixture(scope="module")
def worker_url(tiny_model: LoadedModel) -> Iterator[str]:
    config = WorkerConfig(region="fuzz-region", gpu="cpu", replica="fuzz-1", max_queued_images=64)
    with serve_app(create_app(config, model=tiny_model), "/internal/ping") as url:
        yield url


@pytest.fixture(scope="module")
def http() -> Iterator[requests.Session]:
    with requests.Session() as session:
        yield session


def keep_small(body: Any, positive: bool, img2img: bool) -> Any:
    """Cap what makes generation slow; numbers of the wrong type or below the minimum stay as drawn."""
    if not isinstance(body, dict):
        return body
    for field, most in SMALL.items():
        value = body.get(field)
        if field not in body or (isinstance(value, int | float) and not isinstance(value, bool) and value > most):
            body[field] = most
    images = body.get("init_images")
    if positive and img2img and isinstance(images, list) and images:
        images[0] = TINY_PNG
    return body


def content_type(response: Any) -> str:
    """requests gives a header as a string, schemathesis's Response as a list of them."""
    value = {key.lower(): value for key, value in response.headers.items()}.get("content-type", "")
    return value[0] if isinstance(value, list) else value


def assert_clean(response: Any, what: str) -> None:
    status = response.status_code
    assert status < 500 or status == BUSY, f"{what} answered {status}: {response.text[:600]}"
    assert "Traceback" not in response.text, f"{what} leaked a traceback"
    if status >= 400:
        assert content_type(response).startswith("application/json"), what
        assert "detail" in response.json(), what


@pytest.mark.parametrize(("label", "mode"), CASES)
def test_every_operation_answers_cleanly(
    label: str, mode: GenerationMode, worker_url: str, http: requests.Session
) -> None:
    operation = OPERATIONS[label]
    positive = mode is GenerationMode.POSITIVE

    @fuzz_settings(DEFAULT_EXAMPLES)
    @given(case=operation.as_strategy(generation_mode=mode))
    def fuzz(case: Any) -> None:
        if operation.path in GENERATION_PATHS:
            case.body = keep_small(case.body, positive, img2img=operation.path.endswith("img2img"))
        response = case.call(base_url=worker_url, session=http, timeout=(5, 120))
        assert_clean(response, case.as_curl_command())
        if response.status_code < 300:  # what it answers is what the schema says
            case.validate_response(response, checks=[response_schema_conformance])

    fuzz()


# Bodies no schema describes: what json.loads accepts but JSON cannot carry back, and plain junk.
special_floats = st.sampled_from([math.nan, math.inf, -math.inf, 1e308, -0.0])
any_text = st.text(st.characters(exclude_categories=[]), max_size=12)  # lone surrogates included
leaves = st.none() | st.booleans() | st.integers() | special_floats | any_text
json_values = st.recursive(
    leaves,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(any_text, inner, max_size=3),
    max_leaves=12,
)
FIELDS = ["prompt", "negative_prompt", "styles", "seed", "cfg_scale", "sampler_name", "scheduler", "eta",
          "override_settings", "script_args", "alwayson_scripts", "force_task_id", "init_images", "mask",
          "denoising_strength", "sd_model_checkpoint", "CLIP_stop_at_last_layers", "eta_ddim"]  # fmt: skip


def nested(depth: int) -> Any:
    value: Any = "x"
    for _ in range(depth):
        value = [value]
    return value


@st.composite
def raw_bodies(draw: st.DrawFn) -> bytes:
    kind = draw(st.sampled_from(["object", "object", "object", "value", "bytes", "deep"]))
    if kind == "bytes":
        return draw(st.binary(max_size=64))
    if kind == "value":
        return json.dumps(draw(json_values)).encode()  # ensure_ascii: surrogates go as \udXXX escapes
    if kind == "deep":  # past json.loads' own limit too: written as text, json.dumps would recurse
        field, depth = draw(st.sampled_from(FIELDS)), draw(st.integers(20, 2000))
        return b'{"%s": %s"x"%s}' % (field.encode(), b"[" * depth, b"]" * depth)
    body = {**SMALL, **draw(st.dictionaries(st.sampled_from(FIELDS), json_values, max_size=4))}
    return json.dumps(body).encode()


@pytest.mark.parametrize("path", ["/sdapi/v1/txt2img", "/sdapi/v1/img2img", "/sdapi/v1/options"])
def test_raw_bodies_get_4xx_never_a_crash(path: str, worker_url: str, http: requests.Session) -> None:
    @fuzz_settings(DEFAULT_EXAMPLES)
    @given(body=raw_bodies())
    def fuzz(body: bytes) -> None:
        response = http.post(
            worker_url + path, data=body, headers={"content-type": "application/json"}, timeout=(5, 120)
        )
        assert_clean(response, f"POST {path} {body[:300]!r}")

    fuzz()


# Regressions the fuzzers found (each was a 500, the batch failure also failing other clients' images).
@pytest.mark.parametrize(
    ("path", "body", "field"),
    [
        pytest.param("/sdapi/v1/txt2img", b'{"prompt": "\\ud800"}', "prompt", id="surrogate-prompt-failed-the-batch"),
        pytest.param("/sdapi/v1/txt2img", b'{"prompt": ["\\ud800"]}', "prompt", id="surrogate-echoed-in-422"),
        pytest.param("/sdapi/v1/txt2img", b'{"styles": ["\\udc00"]}', "styles", id="surrogate-echoed-in-200"),
        pytest.param(
            "/sdapi/v1/txt2img", b'{"override_settings": {"\\udc00": 1}}', "override_settings", id="surrogate-key"
        ),
        pytest.param("/sdapi/v1/txt2img", b'{"cfg_scale": NaN}', "cfg_scale", id="nan-echoed-in-422"),
        pytest.param("/sdapi/v1/txt2img", b'{"cfg_scale": Infinity}', "cfg_scale", id="infinity-echoed-in-422"),
        pytest.param(
            "/sdapi/v1/txt2img",
            json.dumps({"alwayson_scripts": {"x": nested(500)}}).encode(),
            "alwayson_scripts",
            id="deep-echo-recursed",
        ),
        pytest.param("/sdapi/v1/options", b'{"sd_model_checkpoint": []}', "sd_model_checkpoint", id="unhashable-model"),
        pytest.param(
            "/sdapi/v1/txt2img",
            b'{"override_settings": {"sd_model_checkpoint": {}}}',
            "override_settings",
            id="unhashable-override",
        ),
    ],
)
def test_bad_input_found_by_fuzzing_is_a_422_naming_the_field(
    path: str, body: bytes, field: str, worker_url: str, http: requests.Session
) -> None:
    if path.endswith("txt2img"):
        body = json.dumps(SMALL)[:-1].encode() + b", " + body[1:]  # small images, then the field under test
    response = http.post(worker_url + path, data=body, headers={"content-type": "application/json"}, timeout=60)
    assert response.status_code == 422, response.text
    assert field in {str(part) for item in response.json()["detail"] for part in item["loc"]}, response.text


def test_a_bad_prompt_does_not_fail_the_other_images_of_its_batch(worker_url: str) -> None:
    """A lone surrogate used to reach the tokenizer and fail the whole batch it was grouped into, so the
    clients whose requests were batched with it got a 500 too."""
    good = json.dumps({**SMALL, "prompt": "a cat"}).encode()
    bad = json.dumps(SMALL)[:-1].encode() + b', "prompt": "a \\udc80 cat"}'

    def post(body: bytes) -> int:
        headers = {"content-type": "application/json"}
        return requests.post(worker_url + "/sdapi/v1/txt2img", data=body, headers=headers, timeout=60).status_code

    with ThreadPoolExecutor(8) as pool:
        statuses = list(pool.map(post, [good, bad] * 4))
    assert statuses == [200, 422] * 4
