"""Malformed HTTP at the gateway: garbage, truncation, bad framing, smuggling attempts, oversized
heads, slow clients, then random bytes. Each gets a 4xx (400, 408, 413, 431) and a closed connection
before any backend is involved, and the gateway serves the next client as before.

The random-bytes fuzzer (hypothesis) checks each payload against a reference parse of the same
bytes: a payload with complete requests gets answers, a broken one gets one 4xx and a close, an
incomplete one a close; never a hang, a dropped parseable request or a second answer to one request.
GPUROAM_FUZZ_EXAMPLES sets its examples.
"""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from collections.abc import Callable

import httpx
import pytest
from harness import FakeReplica, LoopThread, Reply, Running, backend
from hypothesis import given
from hypothesis import strategies as st
from rawhttp import Listener, exchange, reference_parse

from fuzzing import fuzz_settings
from gpuroam.gateway import Limits
from gpuroam.gateway.downstream import ClientConnection
from gpuroam.gateway.wire import Request, json_response

LIMITS = Limits(max_body_bytes=10_000, max_header_bytes=4_000, header_timeout_s=0.5, keepalive_timeout_s=5.0)
SLOW_S = 3.5  # past header_timeout_s plus the once-a-second housekeeping that notices it
REJECTED = {400, 408, 413, 431, 501, 505}
GOOD = b"GET /good HTTP/1.1\r\nHost: a\r\n\r\n"
H = b"Host: gw\r\n"


@pytest.fixture
def replica(loops: LoopThread) -> Listener:
    return Listener(loops).start()


@pytest.fixture
def gw(replica: Listener, start_gateway: Callable[..., Running]) -> Running:
    return start_gateway([backend(replica)], limits=LIMITS)  # type: ignore[arg-type]


def still_serving(gw: Running) -> None:
    response = httpx.get(f"{gw.url}/still-ok", timeout=5)
    assert response.status_code == 200 and response.text == "ok", "the gateway stopped serving after that"


def post(headers: bytes, body: bytes = b"") -> bytes:
    return b"POST /sdapi/v1/txt2img HTTP/1.1\r\n" + H + headers + b"\r\n" + body


OVER_LIMIT_CHUNKS = b"2710\r\n" + b"y" * 10_000 + b"\r\n1\r\nz\r\n0\r\n\r\n"  # 10,000 bytes, then one more
REFUSED = [
    pytest.param(b"\x00\x01\x02 garbage\r\n\r\n", 400, id="garbage"),
    pytest.param(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + b"\x00" * 32, 400, id="tls-client-hello"),
    pytest.param(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", 400, id="http2-preface"),
    pytest.param(b"GET / HTTP/9.9\r\n" + H + b"\r\n", 400, id="unknown-version"),
    pytest.param(b"get / HTTP/1.1\r\n" + H + b"\r\n", 400, id="lowercase-method"),
    pytest.param(b"G(T / HTTP/1.1\r\n" + H + b"\r\n", 400, id="method-with-separator"),
    pytest.param(b"GET /a b HTTP/1.1\r\n" + H + b"\r\n", 400, id="space-in-target"),
    pytest.param(b"GET /x\x00y HTTP/1.1\r\n" + H + b"\r\n", 400, id="nul-in-target"),
    pytest.param(b"GET /x\x7f HTTP/1.1\r\n" + H + b"\r\n", 400, id="del-in-target"),
    pytest.param(b"GET / HTTP/1.1\r\nHost: a\x00b\r\n\r\n", 400, id="nul-in-value"),
    pytest.param(b"GET / HTTP/1.1\r\nHo\x00st: a\r\n\r\n", 400, id="nul-in-name"),
    pytest.param(b"GET / HTTP/1.1\r\nX: a\x01b\r\n\r\n", 400, id="control-char-in-value"),
    pytest.param(b"GET / HTTP/1.1\r\nX(Y): z\r\n\r\n", 400, id="separator-in-name"),
    pytest.param(b"GET / HTTP/1.1\r\nHost a\r\n\r\n", 400, id="no-colon"),
    pytest.param(b"GET / HTTP/1.1\r\nHost : a\r\n\r\n", 400, id="space-before-colon"),
    pytest.param(b"GET / HTTP/1.1\r\n Host: a\r\n\r\n", 400, id="leading-whitespace"),
    pytest.param(b"GET / HTTP/1.1\r\nX: a\r\n b\r\n\r\n", 400, id="obs-fold"),
    pytest.param(b"GET / HTTP/1.1\nHost: a\n\n", 400, id="bare-lf"),
    pytest.param(b"GET / HTTP/1.1\r\nHost: a\nX: y\r\n\r\n", 400, id="bare-lf-in-head"),
    pytest.param(b"GET / HTTP/1.1\rHost: a\r\r", 400, id="bare-cr"),
    pytest.param(post(b"Content-Length: -1\r\n"), 400, id="negative-content-length"),
    pytest.param(post(b"Content-Length: abc\r\n"), 400, id="non-numeric-content-length"),
    pytest.param(post(b"Content-Length: +1\r\n", b"x"), 400, id="signed-content-length"),
    pytest.param(post(b"Content-Length: 0x1\r\n", b"x"), 400, id="hex-content-length"),
    pytest.param(post(b"Content-Length: 1\r\nContent-Length: 2\r\n", b"xx"), 400, id="two-content-lengths"),
    pytest.param(post(b"Content-Length: 1, 2\r\n", b"xx"), 400, id="content-length-list"),
    pytest.param(post(b"Content-Length: " + b"9" * 30 + b"\r\n", b"x"), 400, id="content-length-overflow"),
    pytest.param(post(b"Content-Length: 10001\r\n"), 413, id="content-length-over-limit"),
    pytest.param(
        post(
            b"Content-Length: 4\r\nTransfer-Encoding: chunked\r\n", b"0\r\n\r\nGET /smuggled HTTP/1.1\r\n" + H + b"\r\n"
        ),
        400,
        id="smuggling-cl-te",
    ),
    pytest.param(
        post(b"Transfer-Encoding: chunked\r\nContent-Length: 6\r\n", b"0\r\n\r\nGET /smuggled HTTP/1.1\r\n\r\n"),
        400,
        id="smuggling-te-cl",
    ),
    pytest.param(post(b"Transfer-Encoding: identity\r\n", b"0\r\n\r\n"), 400, id="te-identity"),
    pytest.param(post(b"Transfer-Encoding: xchunked\r\n", b"0\r\n\r\n"), 400, id="te-unknown"),
    pytest.param(post(b"Transfer-Encoding: chunked, identity\r\n", b"0\r\n\r\n"), 400, id="te-chunked-not-last"),
    pytest.param(post(b"Transfer-Encoding: chunked\r\nTransfer-Encoding: x\r\n", b"0\r\n\r\n"), 400, id="te-twice"),
    pytest.param(post(b"Transfer-Encoding: chunked\r\n", b"zz\r\n"), 400, id="bad-chunk-size"),
    pytest.param(post(b"Transfer-Encoding: chunked\r\n", b"f" * 20 + b"\r\n"), 400, id="chunk-size-overflow"),
    pytest.param(post(b"Transfer-Encoding: chunked\r\n", b"1\r\nzX\r\n0\r\n\r\n"), 400, id="chunk-overrun"),
    pytest.param(post(b"Transfer-Encoding: chunked\r\n", OVER_LIMIT_CHUNKS), 413, id="chunked-over-limit"),
    pytest.param(b"GET /" + b"a" * 5_000 + b" HTTP/1.1\r\n\r\n", 431, id="huge-target"),
    pytest.param(b"GET / HTTP/1.1\r\nX: " + b"a" * 5_000 + b"\r\n\r\n", 431, id="huge-header"),
    pytest.param(b"GET / HTTP/1.1\r\n" + b"a" * 5_000 + b": b\r\n\r\n", 431, id="huge-header-name"),
    pytest.param(b"GET / HTTP/1.1\r\n" + b"X: a\r\n" * 1_000 + b"\r\n", 431, id="many-headers"),
    pytest.param(b"GET http://127.0.0.1:9/x HTTP/1.1\r\n" + H + b"\r\n", 400, id="absolute-form"),
    pytest.param(b"OPTIONS * HTTP/1.1\r\n" + H + b"\r\n", 400, id="asterisk-form"),
    pytest.param(b"CONNECT 127.0.0.1:9 HTTP/1.1\r\n" + H + b"\r\n", 400, id="connect"),
    pytest.param(b"CONNECT /x HTTP/1.1\r\n" + H + b"\r\n", 400, id="connect-origin-form"),
    pytest.param(b"GET /x\r\n\r\n", 505, id="http-0.9"),
]


@pytest.mark.parametrize(("payload", "status"), REFUSED)
def test_malformed_requests_get_a_4xx_and_a_close(gw: Running, replica: Listener, payload: bytes, status: int) -> None:
    got = exchange(gw.port, payload)
    assert not got.timed_out and got.malformed is None, got
    assert got.statuses == [status], got.raw[:300]
    assert got.closed, "the connection stays open after a malformed request"
    assert got.interim == [], "a 100 Continue went out for a request that was refused"
    assert json.loads(got.responses[0].body)["error"]
    assert got.responses[0].headers.get("connection") == "close"
    assert replica.requests() == [], "a refused request reached a backend"
    still_serving(gw)


INCOMPLETE = [
    pytest.param(b"GET /x HTT", id="truncated-request-line"),
    pytest.param(b"GET /x HTTP/1.1\r\nHost: a\r\nX: y", id="truncated-headers"),
    pytest.param(post(b"Content-Length: 10\r\n", b"abc"), id="body-shorter-than-content-length"),
    pytest.param(post(b"Transfer-Encoding: chunked\r\n", b"5\r\nab"), id="truncated-chunk"),
    pytest.param(post(b"Transfer-Encoding: chunked\r\n", b"1\r\nz\r\n"), id="no-last-chunk"),
]


@pytest.mark.parametrize("payload", INCOMPLETE)
def test_an_incomplete_request_times_out_with_408(gw: Running, replica: Listener, payload: bytes) -> None:
    got = exchange(gw.port, payload, timeout_s=SLOW_S)
    assert got.statuses == [408] and got.closed, got
    assert replica.requests() == []
    still_serving(gw)


def test_a_client_that_gives_up_mid_request_is_closed_quietly(gw: Running, replica: Listener) -> None:
    got = exchange(gw.port, b"GET /x HTTP/1.1\r\nHost: a\r\n", half_close=True, timeout_s=2)
    assert got.closed and not got.timed_out and got.statuses == []
    still_serving(gw)


def test_a_client_that_half_closes_after_its_requests_still_gets_the_answers(
    loops: LoopThread, start_gateway: Callable[..., Running]
) -> None:
    """`printf 'GET / ...' | nc -N`: the client shuts its side once the request is sent. The gateway
    used to close at that EOF, and a request still waiting on a (slow) replica lost its answer."""
    slow = FakeReplica(loops, lambda seen: Reply(delay_s=0.3), name="slow").start()
    gw = start_gateway([backend(slow)], limits=LIMITS)
    got = exchange(gw.port, GOOD + b"GET /second HTTP/1.1\r\nHost: a\r\n\r\n", half_close=True)
    assert got.statuses == [200, 200] and got.closed and not got.timed_out, got
    assert [s.path for s in slow.requests()] == ["/good", "/second"]


def test_slowloris_gets_408_while_other_clients_are_served(gw: Running, replica: Listener) -> None:
    """Clients trickling their heads a byte at a time are cut at the header timeout; others never wait on them."""
    results: list[object] = []
    head = b"GET /slow HTTP/1.1\r\nHost: a\r\nX-Padding: " + b"a" * 100 + b"\r\n\r\n"
    slow = [
        threading.Thread(target=lambda: results.append(exchange(gw.port, head, trickle_s=0.05, timeout_s=SLOW_S + 2)))
        for _ in range(20)
    ]
    for thread in slow:
        thread.start()
    time.sleep(0.2)
    for _ in range(10):
        started = time.monotonic()
        still_serving(gw)
        assert time.monotonic() - started < 0.5, "a good request waited on the slow clients"
    for thread in slow:
        thread.join()
    assert len(results) == 20
    assert all(r.statuses == [408] and r.closed for r in results), results  # type: ignore[attr-defined]
    assert [s.target for s in replica.requests()] == ["/still-ok"] * 10


def test_pipelined_garbage_after_a_good_request_answers_both_in_order(gw: Running, replica: Listener) -> None:
    got = exchange(gw.port, GOOD + b"GARBAGE\r\n\r\n")
    assert got.statuses == [200, 400] and got.closed, got
    assert [s.target for s in replica.requests()] == ["/good"]
    still_serving(gw)


def test_pipelined_good_requests_are_answered_in_order(gw: Running, replica: Listener) -> None:
    requests = b"".join(b"GET /p%d HTTP/1.1\r\nHost: a\r\n\r\n" % i for i in range(20))
    got = exchange(gw.port, requests + b"GET /last HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
    assert got.statuses == [200] * 21 and got.closed, got
    assert [s.target for s in replica.requests()] == [f"/p{i}" for i in range(20)] + ["/last"]


def test_trailers_are_not_merged_into_the_headers(gw: Running, replica: Listener) -> None:
    """A trailer after a chunked body used to reach the backend as a header (a second Host, say)."""
    body = b"1\r\nz\r\n0\r\nX-Smuggled: yes\r\nHost: evil.example\r\n\r\n"
    got = exchange(gw.port, post(b"Transfer-Encoding: chunked\r\nConnection: close\r\n", body))
    assert got.statuses == [200], got
    (seen,) = replica.requests()
    assert seen.body == b"z"
    assert [value for name, value in seen.headers if name == "host"] == ["gw"]
    assert "x-smuggled" not in {name for name, _ in seen.headers}


def test_an_upgrade_request_gets_one_answer_then_a_close(gw: Running, replica: Listener) -> None:
    """WebSocket and h2c upgrades are served as HTTP/1.1 (Upgrade ignored); a 501 used to follow the 200."""
    for upgrade in (b"websocket", b"h2c"):
        head = b"GET /ws HTTP/1.1\r\n" + H + b"Connection: Upgrade\r\nUpgrade: " + upgrade + b"\r\n\r\n"
        got = exchange(gw.port, head + b"\x81\x05hello")
        assert got.statuses == [200] and got.closed, got
    assert all("upgrade" not in {name for name, _ in s.headers} for s in replica.requests())
    still_serving(gw)


def test_an_http10_request_with_transfer_encoding_is_served_then_closed(gw: Running, replica: Listener) -> None:
    """RFC 9112 6.1: its framing cannot be trusted, so the connection closes after the answer."""
    head = b"POST /x HTTP/1.0\r\nConnection: keep-alive\r\nTransfer-Encoding: chunked\r\n\r\n1\r\nz\r\n0\r\n\r\n"
    got = exchange(gw.port, head + GOOD)
    assert got.statuses == [200] and got.closed, got


def test_expect_100_continue_is_not_promised_for_a_body_over_the_limit(gw: Running) -> None:
    got = exchange(gw.port, post(b"Expect: 100-continue\r\nContent-Length: 20000\r\n"))
    assert got.interim == [] and got.statuses == [413] and got.closed, got


def test_a_deeply_nested_job_body_is_forwarded_not_dropped(gw: Running, replica: Listener) -> None:
    """The gateway reads force_task_id from generation bodies; JSON nested past Python's recursion limit
    raised RecursionError there, and the client's connection was closed without an answer."""
    body = b'{"force_task_id": "job-1", "x": ' + b"[" * 3000 + b"]" * 3000 + b"}"
    got = exchange(gw.port, post(b"Content-Length: %d\r\nConnection: close\r\n" % len(body), body))
    assert got.statuses == [200] and got.closed, got
    assert replica.requests()[0].body == body


def test_a_failing_handler_answers_500_instead_of_leaving_the_client_waiting(loops: LoopThread) -> None:
    """The safety net under every request: a bug in a handler is a 500 and a close, never a hang."""

    async def failing(client: ClientConnection, request: Request) -> None:
        if request.path == b"/partial":
            client.write(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\nhalf")
        raise RuntimeError("a bug")

    async def answering(client: ClientConnection, request: Request) -> None:
        client.write(json_response(200, {"ok": True}, request.keep_alive))

    async def serve(handler: Callable[..., object]) -> int:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(lambda: ClientConnection(handler, LIMITS, loop, set()), "127.0.0.1", 0)  # type: ignore[arg-type]
        return server.sockets[0].getsockname()[1]

    port = loops.run(serve(failing))
    got = exchange(port, b"GET /x HTTP/1.1\r\nHost: a\r\n\r\n" + GOOD)
    assert got.statuses == [500] and got.closed, got
    cut = exchange(port, b"GET /partial HTTP/1.1\r\nHost: a\r\n\r\n")
    assert cut.closed and cut.statuses == [] and cut.raw.startswith(b"HTTP/1.1 200 OK"), cut
    assert exchange(loops.run(serve(answering)), GOOD, until=1).statuses == [200]


# --- random bytes -------------------------------------------------------------------------------
TEMPLATES = [
    GOOD,
    b"GET /sdapi/v1/progress?id_task=abc HTTP/1.1\r\nHost: a\r\nCookie: gpuroam_replica=r1\r\n\r\n",
    post(b"Content-Type: application/json\r\nContent-Length: 17\r\n", b'{"prompt": "cat"}'),
    post(b"Transfer-Encoding: chunked\r\n", b"3\r\nabc\r\n0\r\nX-T: 1\r\n\r\n"),
    b"GET /a HTTP/1.1\r\nHost: a\r\n\r\nGET /b HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
    b"GET /ws HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
    b"GET /x HTTP/1.0\r\n\r\n",
    b"DELETE /y HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\nhi",
]
TOKENS = [b"\r\n", b"\n", b"\r", b"\x00", b" ", b"\t", b":", b"0", b"-1", b"9" * 20, b"chunked", b"Content-Length: 3",
          b"Transfer-Encoding: chunked", b"HTTP/1.1", b"GET / ", b"\xff", b"\r\n\r\n", b"http://evil/", b"CONNECT"]  # fmt: skip


@st.composite
def payloads(draw: st.DrawFn) -> bytes:
    if draw(st.integers(0, 4)) == 0:
        return draw(st.binary(min_size=1, max_size=200))
    data = bytearray(draw(st.sampled_from(TEMPLATES)))
    for _ in range(draw(st.integers(1, 4))):
        at = draw(st.integers(0, len(data)))
        action = draw(st.sampled_from(["insert", "delete", "replace", "truncate"]))
        if action == "insert":
            data[at:at] = draw(st.sampled_from(TOKENS) | st.binary(min_size=1, max_size=4))
        elif action == "delete":
            del data[at : at + draw(st.integers(1, 8))]
        elif action == "replace" and at < len(data):
            data[at] = draw(st.integers(0, 255))
        elif action == "truncate":
            del data[max(at, 1) :]
    return bytes(data) or b"\r"


def test_random_bytes_never_hang_drop_or_double_answer(gw: Running) -> None:
    @fuzz_settings(150)
    @given(payload=payloads())
    def fuzz(payload: bytes) -> None:
        reference = reference_parse(payload)
        broken = reference.error or reference.upgrade
        head_asked = b"HEAD" in reference.methods
        if broken or reference.complete == 0:
            # One answer per complete request, then (for what broke) one refusal; a request cut short
            # is given up by the client: the gateway must close, not wait for the rest.
            got = exchange(gw.port, payload, half_close=not broken and not reference.complete, timeout_s=5)
            assert got.closed and not got.timed_out, f"no close after {payload!r}: {got}"
        else:
            got = exchange(gw.port, payload, until=reference.complete, timeout_s=5)
            assert not got.timed_out, f"no answers to {payload!r}: {got}"
        if not head_asked:  # a HEAD answer's content-length describes a body that is not sent
            assert got.malformed is None, f"{payload!r} -> {got.raw[:300]!r}"
            most = reference.complete + reference.error  # one per request, and one refusal of what broke
            assert len(got.responses) <= most, f"more answers than requests to {payload!r}: {got.statuses}"
            assert all(s == 200 or s in REJECTED for s in got.statuses), f"{payload!r} -> {got.statuses}"
        if reference.complete and not head_asked:
            assert got.responses, f"a complete request in {payload!r} got no answer"
        if not reference.complete and broken and not head_asked:
            assert got.statuses and got.statuses[-1] in REJECTED, f"{payload!r} -> {got.statuses}"
        with socket.create_connection(("127.0.0.1", gw.port), timeout=5) as sock:
            sock.sendall(b"GET /after HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
            assert sock.recv(12) == b"HTTP/1.1 200", "the gateway stopped serving"

    fuzz()
