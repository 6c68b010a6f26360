"""The gateway end to end on loopback: proxying, retries, ejection, holding, streaming, limits."""

from __future__ import annotations

import json
import socket
import threading
import time

import httpx
import pytest
from harness import CutMidway, FakeReplica, LoopThread, Reply, Reset, Running, Seen, backend, echo

from gpuroam.gateway import ProxyConfig

TXT2IMG = "/sdapi/v1/txt2img"


def test_proxies_requests_and_stamps_where_they_were_served(loops: LoopThread, start_gateway) -> None:
    replica = FakeReplica(loops, echo, name="sd-eu-1").start()
    gw: Running = start_gateway([backend(replica, region="europe-west4", gpu="nvidia-tesla-t4")])
    response = httpx.post(f"{gw.url}{TXT2IMG}?x=1", json={"prompt": "a cat"}, headers={"X-Custom": "kept"})
    assert response.status_code == 200
    assert response.headers["x-gpuroam-region"] == "europe-west4"
    assert response.headers["x-gpuroam-gpu"] == "nvidia-tesla-t4"
    assert response.headers["x-gpuroam-replica"] == "sd-eu-1"
    forwarded = response.json()
    assert forwarded["path"] == f"{TXT2IMG}?x=1" and forwarded["method"] == "POST"
    assert forwarded["headers"]["x-custom"] == "kept"
    assert forwarded["headers"]["x-forwarded-for"] == "127.0.0.1"
    assert forwarded["size"] == len(b'{"prompt":"a cat"}')
    page = httpx.get(f"{gw.url}/static/app.js")
    assert page.status_code == 200 and page.headers["x-gpuroam-replica"] == "sd-eu-1"


def test_a_refused_connection_is_retried_on_a_replica_in_another_region(loops: LoopThread, start_gateway) -> None:
    alive = FakeReplica(loops, name="alive").start()
    dead = FakeReplica(loops, name="dead").start()
    dead.kill()  # after alive holds its port, so alive cannot be given the dead one's port
    gw = start_gateway([backend(dead, region="us-central1"), backend(alive, region="europe-west4")])
    with httpx.Client(headers={"X-Client-Region": "us-central1"}) as client:  # nearest first: the dead one
        for _ in range(6):
            response = client.post(f"{gw.url}{TXT2IMG}", json={"prompt": "x"})
            assert response.status_code == 200 and response.headers["x-gpuroam-replica"] == "alive"
    metrics = httpx.get(f"{gw.url}/metrics").text
    assert 'gpuroam_gateway_retries_total{reason="connect",service="svc"}' in metrics
    assert 'gpuroam_gateway_ejections_total{region="us-central1",service="svc"}' in metrics


def test_503_and_reset_before_the_first_byte_go_to_another_replica(loops: LoopThread, start_gateway) -> None:
    busy = FakeReplica(loops, lambda seen: Reply(status=503, body=b"queue full"), name="busy").start()
    resets = FakeReplica(loops, lambda seen: Reset(), name="resets").start()
    good = FakeReplica(loops, name="good").start()
    gw = start_gateway([backend(busy), backend(resets, region="asia-southeast1"), backend(good, region="europe-west4")])
    for _ in range(4):
        response = httpx.post(f"{gw.url}{TXT2IMG}", json={"prompt": "x"})
        assert response.status_code == 200 and response.headers["x-gpuroam-replica"] == "good"


def test_a_request_a_replica_may_have_run_is_resent_only_when_safe(loops: LoopThread, start_gateway) -> None:
    resets = FakeReplica(loops, lambda seen: Reset(), name="resets").start()
    other = FakeReplica(loops, name="other").start()
    gw = start_gateway([backend(resets, region="us-central1"), backend(other, region="asia-southeast1")])
    near_resets = {"X-Client-Region": "us-central1"}
    options = httpx.post(f"{gw.url}/sdapi/v1/options", json={"x": 1}, headers=near_resets)
    assert options.status_code == 502 and "resets" in options.json()["error"]
    assert len(resets.requests("/sdapi/v1/options")) == 1 and other.seen == [], "a state change is never sent twice"
    _wait_usable(gw, "resets")
    generation = httpx.post(f"{gw.url}{TXT2IMG}", json={"prompt": "x", "seed": 1}, headers=near_resets)
    assert generation.status_code == 200 and generation.headers["x-gpuroam-replica"] == "other"
    assert resets.requests(TXT2IMG), "a seeded generation failed there is sent again, elsewhere"


def _wait_usable(gw: Running, replica: str, usable: bool = True, within_s: float = 5.0) -> dict:
    deadline = time.monotonic() + within_s
    while True:
        states = {b["replica"]: b for b in gw.report()["services"][0]["backends"]}
        if states[replica]["usable"] == usable or time.monotonic() > deadline:
            return states[replica]
        time.sleep(0.05)


def test_an_ejected_replica_returns_once_a_probe_passes(loops: LoopThread, start_gateway) -> None:
    flaky_calls: list[Seen] = []

    def flaky(seen: Seen) -> Reply | Reset:
        flaky_calls.append(seen)
        return Reset() if len(flaky_calls) == 1 else Reply()

    flaky_replica = FakeReplica(loops, flaky, name="flaky").start()
    steady = FakeReplica(loops, name="steady").start()
    gw = start_gateway([backend(flaky_replica), backend(steady, region="europe-west4")])
    served = [httpx.get(f"{gw.url}/x").headers["x-gpuroam-replica"] for _ in range(2)]
    assert served.count("steady") >= 1
    assert _wait_usable(gw, "flaky")["usable"], "a passing probe brings an ejected replica back"
    seen_by = {httpx.get(f"{gw.url}/x").headers["x-gpuroam-replica"] for _ in range(10)}
    assert seen_by == {"flaky", "steady"}


def test_active_checks_take_a_dead_replica_out_before_a_request_finds_it(loops: LoopThread, start_gateway) -> None:
    doomed = FakeReplica(loops, name="doomed").start()
    other = FakeReplica(loops, name="other").start()
    gw = start_gateway([backend(doomed), backend(other)])
    doomed.ping_ok = False
    assert not _wait_usable(gw, "doomed", usable=False)["healthy"]
    before = len(doomed.seen)
    assert {httpx.get(f"{gw.url}/x").headers["x-gpuroam-replica"] for _ in range(5)} == {"other"}
    assert len(doomed.seen) == before


def test_requests_wait_for_a_replica_while_none_is_live(loops: LoopThread, start_gateway) -> None:
    gw = start_gateway([], config=ProxyConfig(hold_s=5.0))
    replacement = FakeReplica(loops, name="replacement").start()
    threading.Timer(0.5, gw.set_backends, args=([backend(replacement, gpu="nvidia-tesla-t4")],)).start()
    began = time.monotonic()
    response = httpx.post(f"{gw.url}{TXT2IMG}", json={"prompt": "x"}, timeout=10)
    assert response.status_code == 200 and response.headers["x-gpuroam-replica"] == "replacement"
    assert 0.4 < time.monotonic() - began < 4


def test_past_the_hold_bound_the_answer_is_503_with_retry_after(loops: LoopThread, start_gateway) -> None:
    gw = start_gateway([], config=ProxyConfig(hold_s=0.3, retry_after_s=7))
    response = httpx.get(f"{gw.url}/sdapi/v1/sd-models")
    assert response.status_code == 503
    assert response.headers["retry-after"] == "7"
    assert "is live yet" in response.json()["error"] and response.json()["finding_gpu"] is True
    page = httpx.get(f"{gw.url}/", headers={"Accept": "text/html,application/xhtml+xml"})
    assert page.status_code == 503 and page.headers["content-type"].startswith("text/html")
    assert '<meta http-equiv="refresh" content="7">' in page.text and "Finding a GPU" in page.text


def test_bodies_stream_both_ways(loops: LoopThread, start_gateway) -> None:
    pieces = [b"first-", b"second-", b"third"]
    streamer = FakeReplica(loops, lambda seen: Reply(chunks=pieces, chunk_delay_s=0.3), name="s").start()
    gw = start_gateway([backend(streamer)])
    arrivals = []
    with httpx.stream("GET", f"{gw.url}/stream", timeout=10) as response:
        assert response.headers.get("transfer-encoding") == "chunked"
        for piece in response.iter_raw():
            arrivals.append((time.monotonic(), piece))
    assert b"".join(p for _, p in arrivals) == b"".join(pieces)
    assert arrivals[-1][0] - arrivals[0][0] > 0.4, "the first piece arrived before the last was sent"
    big = b"x" * (3 * 1024 * 1024)
    echoed = FakeReplica(loops, echo, name="e").start()
    gw.set_backends([backend(echoed)])
    assert httpx.post(f"{gw.url}/sdapi/v1/img2img", content=big, timeout=10).json()["size"] == len(big)


def test_a_replica_dying_mid_response_cuts_the_client_and_the_gateway_carries_on(
    loops: LoopThread, start_gateway
) -> None:
    dying = FakeReplica(loops, lambda seen: CutMidway(), name="dying").start()
    gw = start_gateway([backend(dying)])
    with pytest.raises(httpx.RemoteProtocolError):
        httpx.get(f"{gw.url}/x")
    assert len(dying.seen) == 1, "bytes had reached the client: never retried"
    healthy = FakeReplica(loops, name="healthy").start()
    gw.set_backends([backend(healthy)])
    assert httpx.get(f"{gw.url}/x").status_code == 200


def _raw(url: str, data: bytes, timeout: float = 5.0) -> bytes:
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=timeout) as sock:
        sock.sendall(data)
        chunks = []
        while True:
            try:
                piece = sock.recv(65536)
            except TimeoutError:
                break
            if not piece:
                break
            chunks.append(piece)
        return b"".join(chunks)


def test_limits_and_malformed_requests_get_4xx(loops: LoopThread, start_gateway) -> None:
    from gpuroam.gateway import Limits

    replica = FakeReplica(loops, name="r").start()
    limits = Limits(max_body_bytes=1000, max_header_bytes=2000, header_timeout_s=0.5)
    gw = start_gateway([backend(replica)], limits=limits)
    assert httpx.post(f"{gw.url}{TXT2IMG}", content=b"x" * 1001).status_code == 413
    assert httpx.get(f"{gw.url}/x", headers={"X-Big": "y" * 3000}).status_code == 431
    assert _raw(gw.url, b"NOT HTTP AT ALL\r\n\r\n").startswith(b"HTTP/1.1 400")
    slow = _raw(gw.url, b"GET /x HTTP/1.1\r\nHost: a\r\n")
    assert slow.startswith(b"HTTP/1.1 408")
    chunked = b"POST /x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n" + b"3e8\r\n" + b"y" * 1000 + b"\r\n"
    assert _raw(gw.url, chunked + b"1\r\nz\r\n0\r\n\r\n").startswith(b"HTTP/1.1 413")
    assert replica.seen == [], "nothing over a limit reached a replica"
    assert httpx.get(f"{gw.url}/x").status_code == 200


def test_it_is_not_an_open_proxy(loops: LoopThread, start_gateway) -> None:
    replica = FakeReplica(loops, echo, name="r").start()
    gw = start_gateway([backend(replica)])
    absolute = _raw(gw.url, b"GET http://example.com/ HTTP/1.1\r\nHost: example.com\r\n\r\n")
    assert absolute.startswith(b"HTTP/1.1 400")
    connect = _raw(gw.url, b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n")
    assert connect.startswith(b"HTTP/1.1 4")
    other_host = httpx.get(f"{gw.url}/x", headers={"Host": "example.com"})
    assert other_host.headers["x-gpuroam-replica"] == "r", "the Host header never picks a destination"


def test_progress_and_interrupt_follow_the_job_to_its_replica(loops: LoopThread, start_gateway) -> None:
    release = threading.Event()

    def slow_generation(seen: Seen) -> Reply:
        if seen.path == TXT2IMG:
            return Reply(release=release)
        return Reply(body=json.dumps({"job": seen.path}).encode())

    first = FakeReplica(loops, slow_generation, name="first").start()
    second = FakeReplica(loops, slow_generation, name="second").start()
    gw = start_gateway([backend(first), backend(second, region="europe-west4")])
    results: dict[str, httpx.Response] = {}

    def generate(job: str) -> None:
        results[job] = httpx.post(f"{gw.url}{TXT2IMG}", json={"prompt": "x", "force_task_id": job}, timeout=20)

    threads = [threading.Thread(target=generate, args=(job,)) for job in ("job-a", "job-b")]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + 5
    while len(first.requests(TXT2IMG)) + len(second.requests(TXT2IMG)) < 2 and time.monotonic() < deadline:
        time.sleep(0.02)
    holder = {json.loads(s.body)["force_task_id"]: r.name for r in (first, second) for s in r.requests(TXT2IMG)}
    assert set(holder.values()) == {"first", "second"}, "two generations spread over both replicas"
    for job, replica in holder.items():
        for _ in range(5):
            progress = httpx.get(f"{gw.url}/sdapi/v1/progress", params={"id_task": job})
            assert progress.headers["x-gpuroam-replica"] == replica
        by_header = httpx.post(f"{gw.url}/sdapi/v1/interrupt", headers={"X-Gpuroam-Job": job})
        assert by_header.headers["x-gpuroam-replica"] == replica
    release.set()
    for thread in threads:
        thread.join(10)
    assert all(r.status_code == 200 for r in results.values())
    cookie = f"gpuroam_replica={results['job-a'].cookies['gpuroam_replica']}"
    progress = httpx.get(f"{gw.url}/sdapi/v1/progress", headers={"Cookie": cookie})
    assert progress.headers["x-gpuroam-replica"] == holder["job-a"]
    assert "gpuroam_replica" not in progress.headers.get("set-cookie", ""), "the cookie is set only when it changes"


def test_a_replica_that_does_not_answer_in_time_gets_504_and_is_ejected(loops: LoopThread, start_gateway) -> None:
    stuck = FakeReplica(loops, lambda seen: Reply(delay_s=5), name="stuck").start()
    gw = start_gateway([backend(stuck)], config=ProxyConfig(upstream_timeout_s=0.5))
    began = time.monotonic()
    response = httpx.get(f"{gw.url}/x", timeout=10)
    assert response.status_code == 504 and "stuck" in response.json()["error"]
    assert time.monotonic() - began < 3
    assert "backend_timeout" in httpx.get(f"{gw.url}/metrics").text


def test_health_reports_live_traffic_per_region(loops: LoopThread, start_gateway) -> None:
    near = FakeReplica(loops, name="near").start()
    gw = start_gateway([backend(near, region="europe-west4")])
    for _ in range(20):
        assert httpx.get(f"{gw.url}/x").status_code == 200
    time.sleep(1.05)  # the current second is not reported until it is over
    traffic = httpx.get(f"{gw.url}/gpuroam/health").json()["traffic"]["svc"]
    assert traffic["regions"]["europe-west4"]["rps"] == pytest.approx(2.0)  # 20 requests over a 10 s window
    assert 0 < traffic["regions"]["europe-west4"]["p50_ms"] < 1000
    assert traffic["failed_per_s"] == 0


def test_cookie_keeping_clients_fill_a_new_replica_within_seconds(loops: LoopThread, start_gateway) -> None:
    """Affinity yields to a much less loaded replica: a replica the autoscaler adds (or one that recovered)
    takes work at once, though every client holds a cookie for the old one. Three clients keep the old
    replica below saturation, so only the affinity rule can move them."""
    old = FakeReplica(loops, lambda seen: Reply(delay_s=0.2), name="old").start()
    gw = start_gateway([backend(old)])
    cookie = httpx.post(f"{gw.url}{TXT2IMG}", json={}, timeout=10).headers["set-cookie"].split(";")[0]
    new = FakeReplica(loops, lambda seen: Reply(delay_s=0.2), name="new").start()
    gw.set_backends([backend(old), backend(new, region="europe-west4")])
    served: list[str] = []

    def client() -> None:
        for _ in range(8):
            answer = httpx.post(f"{gw.url}{TXT2IMG}", json={}, headers={"Cookie": cookie}, timeout=10)
            served.append(answer.headers["x-gpuroam-replica"])

    threads = [threading.Thread(target=client) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert len(served) == 24 and served.count("new") >= 6, f"the new replica took {served.count('new')} of 24"


def test_health_reports_what_the_autoscaler_reads(loops: LoopThread, start_gateway) -> None:
    release = threading.Event()
    replica = FakeReplica(loops, lambda seen: Reply(release=release), name="r").start()
    gw = start_gateway([backend(replica)])
    began = time.time()
    pending = [
        threading.Thread(
            target=httpx.post,
            args=(f"{gw.url}{TXT2IMG}",),
            kwargs={"headers": {"X-Client-Region": region}, "timeout": 10},
        )
        for region in ("europe-west4", "europe-west4", "asia-southeast1")
    ]
    for thread in pending:
        thread.start()
    deadline = time.monotonic() + 5
    while len(replica.requests(TXT2IMG)) < 3 and time.monotonic() < deadline:
        time.sleep(0.02)
    (svc,) = httpx.get(f"{gw.url}/gpuroam/health").json()["services"]
    assert (svc["in_flight"], svc["held"]) == (3, 0)
    assert began <= svc["last_request_at"] <= time.time()
    release.set()
    for thread in pending:
        thread.join(10)
    time.sleep(1.05)  # the current second is not reported until it is over
    (svc,) = httpx.get(f"{gw.url}/gpuroam/health").json()["services"]
    assert svc["in_flight"] == 0
    assert svc["demand"] == {
        "asia-southeast1": pytest.approx(1 / 60, abs=1e-3),
        "europe-west4": pytest.approx(2 / 60, abs=1e-3),
    }
