"""Faults the gateway must absorb: a replica that accepts requests but never answers, and its own
hand-over to a new gateway process (drain) without failing a request."""

from __future__ import annotations

import socket
import threading
import time

import httpx
from harness import FakeReplica, LoopThread, Reply, backend

from gpuroam.gateway import ProxyConfig

TXT2IMG = "/sdapi/v1/txt2img"


def test_requests_waiting_on_a_hung_replica_go_elsewhere_once_its_probes_fail(loops: LoopThread, start_gateway) -> None:
    never = threading.Event()
    hung = FakeReplica(loops, lambda _: Reply(release=never), name="hung").start()
    gw = start_gateway([backend(hung)], config=ProxyConfig(hold_s=2.0, retries=3, upstream_timeout_s=60.0))
    answers: list[httpx.Response] = []
    request = threading.Thread(
        target=lambda: answers.append(httpx.post(f"{gw.url}{TXT2IMG}", json={"prompt": "x"}, timeout=30))
    )
    began = time.monotonic()
    request.start()
    while not hung.requests(TXT2IMG):
        time.sleep(0.01)
    other = FakeReplica(loops, name="other").start()
    gw.set_backends([backend(hung), backend(other, region="europe-west4")])
    hung.ping_ok = False  # hung: its probes fail too
    request.join(timeout=20)
    never.set()
    assert answers and answers[0].status_code == 200
    assert answers[0].headers["x-gpuroam-replica"] == "other"
    assert time.monotonic() - began < 10, "rescued after a couple of failed probes, not the upstream timeout"


def test_a_request_already_answering_is_not_abandoned(loops: LoopThread, start_gateway) -> None:
    slow = FakeReplica(loops, lambda _: Reply(chunks=[b"a", b"b", b"c"], chunk_delay_s=0.4), name="slow").start()
    gw = start_gateway([backend(slow)])
    answers: list[httpx.Response] = []
    request = threading.Thread(target=lambda: answers.append(httpx.post(f"{gw.url}{TXT2IMG}", json={}, timeout=30)))
    request.start()
    while not slow.requests(TXT2IMG):
        time.sleep(0.01)
    slow.ping_ok = False
    request.join(timeout=20)
    assert answers and answers[0].content == b"abc", "mid-response, the replica's answer is relayed whole"


def test_drain_finishes_requests_in_flight_and_stops_accepting(loops: LoopThread, start_gateway) -> None:
    replica = FakeReplica(loops, lambda _: Reply(delay_s=0.6), name="r").start()
    gw = start_gateway([backend(replica)])
    idle = httpx.Client(timeout=10)
    assert idle.get(f"{gw.url}/x").status_code == 200  # leaves an idle keep-alive connection
    answers: list[httpx.Response] = []
    in_flight = threading.Thread(target=lambda: answers.append(httpx.post(f"{gw.url}{TXT2IMG}", json={}, timeout=10)))
    in_flight.start()
    while len(replica.requests(TXT2IMG)) < 1:
        time.sleep(0.01)
    drained = threading.Thread(target=lambda: loops.run(gw.gateway.drain(5.0)))
    drained.start()
    in_flight.join(timeout=10)
    drained.join(timeout=10)
    assert answers and answers[0].status_code == 200
    assert answers[0].headers["connection"] == "close", "the client is told to reconnect (to the new gateway)"
    with socket.socket() as sock:
        assert sock.connect_ex(("127.0.0.1", gw.port)) != 0, "a draining gateway accepts no new connection"
    idle.close()


def test_a_new_gateway_binds_the_same_port_beside_the_old_one(loops: LoopThread, start_gateway) -> None:
    replica = FakeReplica(loops, name="r").start()
    old = start_gateway([backend(replica)])
    new = start_gateway()
    new.port, new.url = old.port, old.url
    new.set_backends([backend(replica)])  # SO_REUSEPORT: both listen until the old one drains
    assert new.report()["services"][0]["port"] == old.port
    loops.run(old.gateway.drain(1.0))
    assert httpx.get(f"{old.url}/x").status_code == 200, "the new gateway serves on the same port"
