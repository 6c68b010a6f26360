"""The control-plane API under fuzzing: schemathesis from its OpenAPI schema against a real uvicorn
(SQLite store, the local provider on a temporary state dir, no reconciler), then the inputs it found
to break things as regressions on both store backends. Whatever arrives, the answer is a clean 4xx
or a 2xx: never a 5xx, a hang, or a stream cut short.

The events stream is made short (0.1 s a response) so each of its examples is quick.
GPUROAM_FUZZ_EXAMPLES sets the examples per operation and mode.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
import schemathesis
from fakes import FakeProvider
from fastapi.testclient import TestClient
from hypothesis import given
from schemathesis.generation.modes import GenerationMode

from fuzzing import fuzz_settings, schema_cases, serve_app
from gpuroam.catalog import load_catalog
from gpuroam.controller.api import ApiContext, GatewayAddress, create_api
from gpuroam.controller.api import events as events_api
from gpuroam.controller.store import Store
from gpuroam.providers.local import LocalProvider, free_port

DEFAULT_EXAMPLES = 30
TOKEN = "fuzz-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
SITES = {"us-central1": {"nvidia-l4": 1}, "europe-west4": {"nvidia-tesla-t4": 1}}
SPEC = {"name": "stable-diffusion", "resources": {"gpus": ["nvidia-l4", "nvidia-tesla-t4"]}}


def _schema() -> Any:
    """The schema of the API as served (the store and provider play no part in it)."""
    provider = FakeProvider({})
    return schemathesis.openapi.from_dict(create_api(ApiContext(None, provider, load_catalog(), TOKEN)).openapi())  # type: ignore[arg-type]


SCHEMA = _schema()
OPERATIONS = {op.label: op for op in (result.ok() for result in SCHEMA.get_all_operations())}


CASES = schema_cases(OPERATIONS)


@pytest.fixture(scope="module")
def control_plane_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    state = tmp_path_factory.mktemp("fuzz-control-plane") / "state"
    store = Store.for_state_dir(state)
    provider = LocalProvider(SITES, state)
    app = create_api(ApiContext(store, provider, load_catalog(), TOKEN, GatewayAddress("127.0.0.1", free_port())))
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(events_api, "EVENT_STREAM_MAX_S", 0.1)
        patch.setattr(events_api, "EVENT_POLL_S", 0.05)
        with serve_app(app, "/") as url:
            assert requests.post(f"{url}/api/v1/services", json=SPEC, headers=AUTH, timeout=10).status_code == 201
            yield url
    store.close()


@pytest.fixture(scope="module")
def http() -> Iterator[requests.Session]:
    with requests.Session() as session:
        yield session


def assert_clean(response: Any, what: str) -> None:
    status = response.status_code
    assert status < 500, f"{what} answered {status}: {response.text[:600]}"
    assert "Traceback" not in response.text, f"{what} leaked a traceback"
    assert status != 401, f"{what}: the token was refused"


@pytest.mark.parametrize(("label", "mode"), CASES)
def test_every_operation_answers_cleanly(
    label: str, mode: GenerationMode, control_plane_url: str, http: requests.Session
) -> None:
    operation = OPERATIONS[label]

    @fuzz_settings(DEFAULT_EXAMPLES)
    @given(case=operation.as_strategy(generation_mode=mode))
    def fuzz(case: Any) -> None:
        # requests raises on a connection dropped or a stream cut short (ChunkedEncodingError): a failure too
        response = case.call(base_url=control_plane_url, session=http, headers=AUTH, timeout=(5, 30))
        assert_clean(response, case.as_curl_command())

    fuzz()


# The inputs the fuzzer found, as regressions, on SQLite and PostgreSQL (where NUL was a 500 too).
@pytest.fixture
def client(store_url: str, tmp_path: Path) -> Iterator[TestClient]:
    store = Store.open(store_url)
    provider = LocalProvider(SITES, tmp_path / "state")
    app = create_api(ApiContext(store, provider, load_catalog(), TOKEN, GatewayAddress("127.0.0.1", free_port())))
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(events_api, "EVENT_STREAM_MAX_S", 0.2)
        with TestClient(app, raise_server_exceptions=False) as test_client:
            assert test_client.post("/api/v1/services", json=SPEC, headers=AUTH).status_code == 201
            yield test_client
    store.close()


HUGE = "9" * 30


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        pytest.param("GET", f"/api/v1/events?after={HUGE}", None, id="after-past-64-bits"),
        pytest.param("GET", f"/api/v1/events?after=-{HUGE}", None, id="after-negative-huge"),
        pytest.param("GET", "/api/v1/events?limit=-5", None, id="negative-limit"),
        pytest.param("GET", f"/api/v1/events?limit=-{HUGE}", None, id="limit-negative-huge"),
        pytest.param("GET", f"/api/v1/events/stream?after={HUGE}", None, id="stream-after-past-64-bits"),
        pytest.param("GET", "/api/v1/events?service=a%00b", None, id="nul-in-events-filter"),
        pytest.param("GET", "/api/v1/replicas?service=%00", None, id="nul-in-replicas-filter"),
        pytest.param("GET", "/api/v1/events/stream?service=%00", None, id="nul-in-stream-filter"),
        pytest.param("GET", "/api/v1/services/a%00b", None, id="nul-in-service-name"),
        pytest.param("DELETE", "/api/v1/services/%00", None, id="nul-in-deleted-name"),
        pytest.param("POST", "/api/v1/services/%00/expand", b'{"region": "us-central1"}', id="nul-in-expanded-name"),
        pytest.param("POST", "/api/v1/services/%00/shrink", b'{"region": "us-central1"}', id="nul-in-shrunk-name"),
        pytest.param("POST", "/api/v1/chaos/fail", b'{"region": NaN}', id="nan-echoed-in-422"),
        pytest.param("POST", "/api/v1/chaos/fail", b'{"region": ["\\ud800"]}', id="surrogate-echoed-in-422"),
        pytest.param("POST", "/api/v1/services/stable-diffusion/expand", b'{"region": Infinity}', id="infinity"),
        pytest.param("POST", "/api/v1/services", b'{"name": "\\ud800", "resources": {}}', id="surrogate-spec"),
    ],
)
def test_bad_input_found_by_fuzzing_is_a_4xx(client: TestClient, method: str, path: str, body: bytes | None) -> None:
    headers = {**AUTH, "content-type": "application/json"}
    response = client.request(method, path, content=body, headers=headers)
    assert 400 <= response.status_code < 500, response.text
    assert response.json()["detail"], response.text


@pytest.mark.parametrize("last_event_id", [b"\xb2", HUGE.encode(), b"-1", b"12abc", b" 7 "])
def test_a_last_event_id_we_never_sent_is_ignored_not_a_cut_stream(client: TestClient, last_event_id: bytes) -> None:
    """b"\\xb2" arrives as '²' (headers are latin-1), which str.isdigit() accepts and int() refuses; an id
    past 64 bits broke the stream after its head went out. Both are ignored now, as if never sent."""
    with client.stream("GET", "/api/v1/events/stream", headers={**AUTH, "last-event-id": last_event_id}) as response:
        assert response.status_code == 200
        text = "".join(response.iter_text())
    assert text.startswith("retry: 1000")
    assert ("id: 1\n" in text) == (last_event_id != b" 7 "), text  # from the start, unless resumed after 7


def test_event_ids_are_parsed_strictly() -> None:
    assert events_api.resume_id("²", 3) == 3
    assert events_api.resume_id(str(2**63), 3) == 3
    assert events_api.resume_id(str(2**63 - 1), 3) == 2**63 - 1
    assert events_api.resume_id(" 42 ", 3) == 42
