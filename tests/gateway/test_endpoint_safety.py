"""The endpoint on the internet: through the real gateway and two real workers (tiny model), one caller
cannot stop, watch or reconfigure another's work, and the gateway's insides are its operator's.

Clients that keep cookies (an httpx.Client) get a session each; clients that keep none are their address.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest

from gpuroam.gateway import Backend, ProxyConfig
from live_jobs import generating, wait_until

SLOW = {"steps": 150, "width": 256, "height": 256, "sampler_name": "Euler a", "seed": 1}
QUICK = {"steps": 2, "width": 64, "height": 64, "seed": 2}


@pytest.fixture
def endpoint(live_worker, start_gateway) -> Iterator[Callable[..., str]]:  # type: ignore[no-untyped-def]
    """`endpoint(config=..., internal_token=...)`: the URL of a gateway in front of two live workers."""
    with contextlib.ExitStack() as stack:

        def start(**gateway_options: Any) -> str:
            urls = [stack.enter_context(live_worker(max_batch=8, replica=f"w{i}")) for i in range(2)]
            backends = [
                Backend(replica=f"w{i}", url=url, region="us-central1", gpu="cpu") for i, url in enumerate(urls)
            ]
            gateway_options.setdefault("config", ProxyConfig(hold_s=5.0, retries=1, upstream_timeout_s=120.0))
            return str(start_gateway(backends, **gateway_options).url)

        yield start


@contextlib.contextmanager
def session(url: str) -> Iterator[httpx.Client]:
    """A client that keeps cookies, with its session cookie already issued."""
    with httpx.Client(base_url=url, timeout=120) as client:
        client.get("/sdapi/v1/progress")
        assert "gpuroam_session" in client.cookies, "the gateway issues a session cookie"
        yield client


def test_two_clients_with_cookies_cannot_interrupt_skip_or_watch_each_other(endpoint) -> None:  # type: ignore[no-untyped-def]
    url = endpoint()
    with session(url) as alice, session(url) as bob, httpx.Client(base_url=url) as anonymous:
        alice_id = "session:" + hashlib.sha256(alice.cookies["gpuroam_session"].encode()).hexdigest()[:24]
        with generating(alice, {**SLOW, "force_task_id": "task(alice)"}) as result:
            claims = {"x-gpuroam-identity": alice_id}  # what a client sends as its identity is dropped
            named = {"id_task": "task(alice)"}  # to the replica that has the job
            assert anonymous.get("/sdapi/v1/progress", params=named, headers=claims).json()["state"]["job"] == ""
            assert anonymous.post("/sdapi/v1/interrupt", params=named, headers=claims).status_code == 200
            for intruder in (bob, anonymous):
                assert intruder.get("/sdapi/v1/progress").json()["state"]["job"] == ""
                named = intruder.get("/sdapi/v1/progress", params={"id_task": "task(alice)"}).json()
                assert named["state"]["job"] == "" and named["progress"] == 0.0
                for action in ("interrupt", "skip"):
                    intruder.post(f"/sdapi/v1/{action}")
                    intruder.post(f"/sdapi/v1/{action}", params={"id_task": "task(alice)"})
            mine = alice.get("/sdapi/v1/progress").json()
            assert mine["state"]["job"] == "task(alice)"
            assert not mine["state"]["interrupted"] and not mine["state"]["skipped"]
            alice.post("/sdapi/v1/interrupt")
        assert result["r"].status_code == 200 and '"interrupted": true' in result["r"].json()["info"]


def test_options_are_kept_per_caller_and_follow_it(endpoint) -> None:  # type: ignore[no-untyped-def]
    url = endpoint()
    with session(url) as alice, session(url) as bob:
        assert alice.post("/sdapi/v1/options", json={"CLIP_stop_at_last_layers": 2}).status_code == 200
        assert alice.get("/sdapi/v1/options").json()["CLIP_stop_at_last_layers"] == 2
        assert bob.get("/sdapi/v1/options").json()["CLIP_stop_at_last_layers"] == 1, "bob's options are his own"
        for _ in range(2):  # two replicas: the option goes with alice to either
            info = json.loads(alice.post("/sdapi/v1/txt2img", json=QUICK).json()["info"])
            assert info["clip_skip"] == 2
        assert json.loads(bob.post("/sdapi/v1/txt2img", json=QUICK).json()["info"])["clip_skip"] == 1
        own = {**QUICK, "override_settings": {"CLIP_stop_at_last_layers": 1}}
        assert json.loads(alice.post("/sdapi/v1/txt2img", json=own).json()["info"])["clip_skip"] == 1, (
            "the request wins"
        )


def test_an_invalid_option_is_a_422_and_every_later_generation_succeeds(endpoint) -> None:  # type: ignore[no-untyped-def]
    url = endpoint()
    with httpx.Client(base_url=url, timeout=120) as mallory, session(url) as alice:
        for _ in range(4):  # each replica in turn, as the attacker did with the replica cookie
            refused = mallory.post("/sdapi/v1/options", json={"CLIP_stop_at_last_layers": 12})
            assert refused.status_code == 422 and "text encoder has 2 layers" in refused.text
        for client in (mallory, alice, mallory, alice):
            assert client.post("/sdapi/v1/txt2img", json=QUICK).status_code == 200


def test_a_caller_gets_429_past_its_requests_in_flight_and_others_are_served(endpoint) -> None:  # type: ignore[no-untyped-def]
    url = endpoint(config=ProxyConfig(hold_s=5.0, retries=1, upstream_timeout_s=120.0, max_in_flight_per_caller=1))
    with session(url) as alice, session(url) as bob, generating(alice, SLOW):
        refused = alice.post("/sdapi/v1/txt2img", json=QUICK)
        assert refused.status_code == 429 and "retry-after" in refused.headers
        assert "endpoint.max_in_flight" in refused.json()["error"]
        assert bob.post("/sdapi/v1/txt2img", json=QUICK).status_code == 200
        assert alice.get("/sdapi/v1/progress").status_code == 200, "progress polls are never counted"
        alice.post("/sdapi/v1/interrupt")


def test_a_client_that_hangs_up_frees_the_worker(endpoint) -> None:  # type: ignore[no-untyped-def]
    url = endpoint()
    with httpx.Client(base_url=url, timeout=60) as watcher:
        named = {"id_task": "task(gone)"}
        with httpx.Client(base_url=url, timeout=2) as client, contextlib.suppress(httpx.TimeoutException):
            client.post("/sdapi/v1/txt2img", json={**SLOW, "force_task_id": "task(gone)"})  # gives up, hangs up
        assert watcher.get("/sdapi/v1/progress", params=named).json()["state"]["sampling_step"] > 0, "it had begun"
        left = time.monotonic()
        wait_until(lambda: watcher.get("/sdapi/v1/progress", params=named).json()["state"]["job"] == "")
        assert time.monotonic() - left < 5, "the job ended within a few steps of its client leaving"
        assert watcher.post("/sdapi/v1/txt2img", json=QUICK).status_code == 200


def test_the_gateways_insides_need_the_operators_token(endpoint) -> None:  # type: ignore[no-untyped-def]
    url = endpoint(internal_token="s3cret")
    assert httpx.get(f"{url}/gpuroam/health").json() == {"status": "ok"}, "liveness says nothing of backends"
    refused = httpx.get(f"{url}/metrics")
    assert refused.status_code == 401 and "Bearer" in refused.headers["www-authenticate"]
    assert httpx.get(f"{url}/metrics", headers={"Authorization": "Bearer wrong"}).status_code == 401
    operator = {"Authorization": "Bearer s3cret"}
    report = httpx.get(f"{url}/gpuroam/health", headers=operator).json()
    assert {b["replica"] for b in report["services"][0]["backends"]} == {"w0", "w1"}
    assert "gpuroam_gateway" in httpx.get(f"{url}/metrics", headers=operator).text


def keys(*names: str) -> dict[str, str]:
    """Keys named `names` as the control plane sends them: SHA-256 of the key -> name (the key is `secret-NAME`)."""
    return {hashlib.sha256(f"secret-{name}".encode()).hexdigest(): name for name in names}


def bearer(name: str) -> dict[str, str]:
    return {"Authorization": f"Bearer secret-{name}"}


def test_with_keys_a_request_needs_one_and_two_keys_cannot_touch_each_others_jobs(live_worker, start_gateway) -> None:  # type: ignore[no-untyped-def]
    with live_worker(max_batch=8, replica="w0") as worker:
        config = ProxyConfig(hold_s=5.0, retries=1, upstream_timeout_s=120.0)
        gw = start_gateway([Backend(replica="w0", url=worker, region="us-central1", gpu="cpu")], config=config)
        gw.set_backends([Backend(replica="w0", url=worker, region="us-central1", gpu="cpu")], keys("alice", "bob"))
        refused = httpx.post(f"{gw.url}/sdapi/v1/txt2img", json=QUICK, timeout=60)
        assert refused.status_code == 401 and "Basic" in refused.headers["www-authenticate"], "a browser asks for it"
        assert "gpuroam keys add svc" in refused.json()["error"]
        assert httpx.get(f"{gw.url}/", headers=bearer("mallory")).status_code == 401, "a key it does not know"
        basic = httpx.post(f"{gw.url}/sdapi/v1/txt2img", json=QUICK, auth=("anyone", "secret-bob"), timeout=60)
        assert basic.status_code == 200, "A1111's basic-auth form: the key is the password"
        with (
            httpx.Client(base_url=gw.url, headers=bearer("alice"), timeout=120) as alice,
            generating(alice, {**SLOW, "steps": 100, "force_task_id": "task(alice)"}) as result,
        ):
            named = {"id_task": "task(alice)"}
            assert (
                httpx.get(f"{gw.url}/sdapi/v1/progress", params=named, headers=bearer("bob")).json()["state"]["job"]
                == ""
            )
            httpx.post(f"{gw.url}/sdapi/v1/interrupt", params=named, headers=bearer("bob"))
            httpx.post(f"{gw.url}/sdapi/v1/interrupt", headers=bearer("bob"))
            state = alice.get("/sdapi/v1/progress", params=named).json()["state"]
            assert state["job"] == "task(alice)" and not state["interrupted"], "still running, untouched"
            gw.set_backends([Backend(replica="w0", url=worker, region="us-central1", gpu="cpu")], keys("bob"))
            assert alice.get("/sdapi/v1/progress").status_code == 401, "a revoked key is refused at once"
            httpx.post(f"{gw.url}/sdapi/v1/interrupt", params=named, headers=bearer("bob"))
        assert result["r"].status_code == 200, "a generation under way when its key was revoked still finishes"


def test_an_a1111_client_with_a_key_works_through_the_gateway_and_keeps_its_own_options(
    live_worker, start_gateway
) -> None:  # type: ignore[no-untyped-def]
    import webuiapi

    with live_worker(max_batch=8, replica="w0") as worker:
        config = ProxyConfig(hold_s=5.0, retries=1, upstream_timeout_s=120.0)
        gw = start_gateway([Backend(replica="w0", url=worker, region="us-central1", gpu="cpu")], config=config)
        gw.set_backends([Backend(replica="w0", url=worker, region="us-central1", gpu="cpu")], keys("ci", "other"))
        api = webuiapi.WebUIApi(host="127.0.0.1", port=gw.port, steps=2, username="ci", password="secret-ci")
        result = api.txt2img(prompt="a lighthouse", seed=7, width=64, height=64, batch_size=2)
        assert len(result.images) == 2 and result.info["all_seeds"] == [7, 8]
        api.set_options({"CLIP_stop_at_last_layers": 2})
        assert api.get_options()["CLIP_stop_at_last_layers"] == 2
        assert api.txt2img(prompt="x", width=64, height=64).info["clip_skip"] == 2, "its options follow it"
        other = webuiapi.WebUIApi(host="127.0.0.1", port=gw.port, steps=2, username="x", password="secret-other")
        assert other.get_options()["CLIP_stop_at_last_layers"] == 1, "another key's options are its own"
        assert api.get_progress()["state"]["job"] == ""
