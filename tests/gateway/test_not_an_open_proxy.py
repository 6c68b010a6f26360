"""The gateway reaches only the backends it was given. Whatever a client puts in the request line,
Host, X-Forwarded-Host, Forwarded, a CONNECT, a `//host/path` target or the affinity cookie and job
id, the only connections made are to the configured replica; a second listener, named in every one
of those places, must see none.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest
from harness import LoopThread, Running, backend
from rawhttp import Listener, exchange

from gpuroam.gateway import Limits

REPLICA = "sd-us-1"


@pytest.fixture
def replica(loops: LoopThread) -> Listener:
    return Listener(loops, name=REPLICA).start()


@pytest.fixture
def elsewhere(loops: LoopThread) -> Listener:
    """Somewhere a client would like the gateway to go: it must never be contacted."""
    return Listener(loops).start()


@pytest.fixture
def gw(replica: Listener, start_gateway: Callable[..., Running]) -> Running:
    return start_gateway([backend(replica)], limits=Limits(header_timeout_s=1.0))  # type: ignore[arg-type]


def attempts(evil: str, hostport: str) -> dict[str, tuple[bytes, set[int]]]:
    """Requests naming `evil` (a URL) / `hostport` as where to go, and the statuses each may get."""
    ok, refused = {200}, {400}
    url = evil.encode()
    get = b"GET /sdapi/v1/progress HTTP/1.1\r\n"
    return {
        "absolute-form": (b"GET %s/x HTTP/1.1\r\nHost: %s\r\n\r\n" % (evil.encode(), hostport.encode()), refused),
        "absolute-form https": (b"GET https://%s/x HTTP/1.1\r\nHost: a\r\n\r\n" % hostport.encode(), refused),
        "absolute-form with userinfo": (b"GET http://u:p@%s/ HTTP/1.1\r\nHost: a\r\n\r\n" % hostport.encode(), refused),
        "authority-form GET": (b"GET %s HTTP/1.1\r\nHost: a\r\n\r\n" % hostport.encode(), refused),
        "CONNECT": (b"CONNECT %s HTTP/1.1\r\nHost: %s\r\n\r\n" % (hostport.encode(), hostport.encode()), refused),
        "CONNECT origin-form": (b"CONNECT / HTTP/1.1\r\nHost: %s\r\n\r\n" % hostport.encode(), refused),
        "Host header": (get + b"Host: %s\r\n\r\n" % hostport.encode(), ok),
        "X-Forwarded-Host": (get + b"Host: a\r\nX-Forwarded-Host: %s\r\n\r\n" % hostport.encode(), ok),
        "Forwarded": (get + b"Host: a\r\nForwarded: host=%s;proto=http\r\n\r\n" % hostport.encode(), ok),
        "X-Original-URL": (get + b"Host: a\r\nX-Original-URL: %s/x\r\nX-Rewrite-URL: %s/x\r\n\r\n" % (url, url), ok),
        "//host/path target": (b"GET //%s/x HTTP/1.1\r\nHost: a\r\n\r\n" % hostport.encode(), ok),
        "///host/path target": (b"GET ///%s/x HTTP/1.1\r\nHost: a\r\n\r\n" % hostport.encode(), ok),
        "/@host target": (b"GET /@%s/x HTTP/1.1\r\nHost: a\r\n\r\n" % hostport.encode(), ok),
        "cookie names a URL": (get + b"Host: a\r\nCookie: gpuroam_replica=%s\r\n\r\n" % evil.encode(), ok),
        "cookie names host:port": (get + b"Host: a\r\nCookie: gpuroam_replica=%s\r\n\r\n" % hostport.encode(), ok),
        "cookie names an unknown replica": (get + b"Host: a\r\nCookie: gpuroam_replica=sd-eu-9\r\n\r\n", ok),
        "job header names a URL": (get + b"Host: a\r\nX-Gpuroam-Job: %s\r\n\r\n" % evil.encode(), ok),
        "id_task names a URL": (
            b"POST /sdapi/v1/interrupt?id_task=%s HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n" % evil.encode(),
            ok,
        ),
        "upgrade to the host": (
            b"GET /ws HTTP/1.1\r\nHost: %s\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n" % hostport.encode(),
            ok,
        ),
        "pipelined after a good one": (
            b"GET /good HTTP/1.1\r\nHost: a\r\n\r\nGET %s/x HTTP/1.1\r\nHost: a\r\n\r\n" % evil.encode(),
            {200, 400},
        ),
    }


NAMES = list(attempts("http://h:1", "h:1"))


@pytest.mark.parametrize("name", NAMES)
def test_only_the_configured_backend_is_ever_contacted(
    gw: Running, replica: Listener, elsewhere: Listener, name: str
) -> None:
    payload, allowed = attempts(elsewhere.url, f"127.0.0.1:{elsewhere.port}")[name]
    before = len(replica.requests())
    got = exchange(gw.port, payload + b"GET /last HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
    assert got.responses and not got.timed_out, got
    assert set(got.statuses) <= allowed | {200}, got.statuses
    assert got.statuses[0] in allowed, got.statuses
    for response in got.responses:
        if response.status == 200:
            assert response.headers["x-gpuroam-replica"] == REPLICA
            assert response.body == b"ok"
    if allowed == {400}:
        assert len(replica.requests()) == before, "a refused target still reached the replica"
    time.sleep(0.1)  # anything the gateway would start towards `elsewhere` has started by now
    assert elsewhere.connections == 0, f"{name}: the gateway connected to a host it was not given"


def test_a_cookie_naming_a_configured_replica_is_the_only_way_to_choose_one(
    loops: LoopThread, replica: Listener, elsewhere: Listener, start_gateway: Callable[..., Running]
) -> None:
    """The affinity cookie picks among the configured replicas, by their ids, and nothing else."""
    other = Listener(loops, name="sd-eu-1").start()
    gw = start_gateway([backend(replica), backend(other, region="europe-west4")])
    cookie = b"GET /sdapi/v1/progress HTTP/1.1\r\nHost: a\r\nCookie: gpuroam_replica=sd-eu-1\r\n\r\n"
    got = exchange(gw.port, cookie * 3, until=3)
    assert [r.headers["x-gpuroam-replica"] for r in got.responses] == ["sd-eu-1"] * 3
    for value in (elsewhere.url, other.url, f"127.0.0.1:{elsewhere.port}", "../sd-eu-1", "sd-eu-1\x00"):
        request = b"GET /x HTTP/1.1\r\nHost: a\r\nCookie: gpuroam_replica=%s\r\n\r\n" % value.encode()
        got = exchange(gw.port, request, until=1)
        assert got.statuses in ([200], [400]), got
    assert elsewhere.connections == 0
