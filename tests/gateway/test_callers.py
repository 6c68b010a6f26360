"""Per-caller rates at the gateway: generation requests a minute and images a UTC day (pure logic, then live)."""

from __future__ import annotations

import json
import math

import httpx
from harness import FakeReplica, LoopThread, backend
from hypothesis import given
from hypothesis import strategies as st

from gpuroam.gateway.callers import CallerLimits, Rates, requested_images

DAY = 86_400.0


@given(st.integers(1, 120), st.floats(0, 10 * DAY))
def test_a_caller_gets_its_requests_a_minute_then_one_more_as_each_token_comes_back(
    per_minute: int, now: float
) -> None:
    rates, limits = Rates(), CallerLimits(requests_per_minute=per_minute)
    assert all(rates.admit("a", 1, limits, now) is None for _ in range(per_minute)), "a full bucket to start"
    refusal = rates.admit("a", 1, limits, now)
    assert refusal is not None
    assert refusal.retry_after_s == math.ceil(60 / per_minute), "when the next token comes"
    assert rates.admit("b", 1, limits, now) is None, "another caller has its own bucket"
    assert rates.admit("a", 1, limits, now + 60 / per_minute + 1e-6) is None, "a token back after 60/N s"


def test_images_a_day_count_what_was_admitted_and_start_again_each_utc_day() -> None:
    rates, limits = Rates(), CallerLimits(images_per_day=100)
    noon = 20_000 * DAY + DAY / 2
    assert rates.admit("a", 64, limits, noon) is None
    refusal = rates.admit("a", 64, limits, noon + 1)
    assert refusal is not None and "36 left today" in refusal.reason
    assert refusal.retry_after_s == DAY / 2 - 1, "until the next UTC day"
    assert rates.admit("a", 36, limits, noon + 2) is None, "a refused request took nothing"
    assert rates.admit("a", 1, limits, noon + 3) is not None
    assert rates.admit("a", 64, limits, noon + DAY / 2) is None, "a new day"


def test_a_request_refused_for_its_images_takes_no_request_token() -> None:
    rates, limits = Rates(), CallerLimits(requests_per_minute=1, images_per_day=10)
    assert rates.admit("a", 64, limits, 0.0) is not None
    assert rates.admit("a", 8, limits, 0.0) is None


def test_requested_images_reads_batch_size_times_n_iter_and_never_fails() -> None:
    assert requested_images(json.dumps({"batch_size": 8, "n_iter": 8}).encode()) == 64
    assert requested_images(b"{}") == 1
    for body in (b"not json", b"[1]", b'{"batch_size": "8"}', b'{"batch_size": true}', b"[" * 100_000):
        assert requested_images(body) == 1


def test_the_endpoint_answers_429_with_retry_after_past_a_callers_rate(loops: LoopThread, start_gateway) -> None:  # type: ignore[no-untyped-def]
    replica = FakeReplica(loops).start()
    gw = start_gateway([backend(replica)])
    gw.set_backends([backend(replica)], limits=CallerLimits(requests_per_minute=2, images_per_day=20))
    with httpx.Client(base_url=gw.url) as alice, httpx.Client(base_url=gw.url) as bob:
        for client in (alice, bob):
            client.get("/sdapi/v1/progress")  # a session each
        assert [alice.post("/sdapi/v1/txt2img", json={}).status_code for _ in range(2)] == [200, 200]
        refused = alice.post("/sdapi/v1/txt2img", json={})
        assert refused.status_code == 429 and int(refused.headers["retry-after"]) == 30
        assert "2 generation requests a minute" in refused.json()["error"]
        assert alice.get("/sdapi/v1/progress").status_code == 200, "only generations are counted"
        too_many = bob.post("/sdapi/v1/txt2img", json={"batch_size": 8, "n_iter": 4})
        assert too_many.status_code == 429 and "20 a day" in too_many.json()["error"]
        assert bob.post("/sdapi/v1/txt2img", json={"batch_size": 8, "n_iter": 2}).status_code == 200
