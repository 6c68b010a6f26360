"""The backend set: thresholds, ejection with backoff, early return, holding while none is usable."""

from __future__ import annotations

import asyncio

from gpuroam.gateway.backends import BackendSet, HealthPolicy
from gpuroam.gateway.routing import Backend

A = Backend("a", "http://127.0.0.1:1", "us-central1", "nvidia-l4")
B = Backend("b", "http://127.0.0.1:2", "europe-west4", "nvidia-l4")


def make() -> BackendSet:
    backends = BackendSet(HealthPolicy(unhealthy_after=2, healthy_after=1, eject_s=1.0, eject_max_s=4.0))
    backends.replace_all([A, B])
    return backends


def test_active_checks_use_thresholds() -> None:
    backends = make()
    backends.probed("a", ok=False, now=0)
    assert backends.loads()["a"].healthy, "one failed probe is a blip"
    backends.probed("a", ok=False, now=0)
    assert not backends.loads()["a"].healthy
    backends.probed("a", ok=True, now=0)
    assert backends.loads()["a"].healthy


def test_ejection_doubles_and_a_passing_probe_brings_it_back() -> None:
    backends = make()
    assert backends.eject("a", now=0) == 1.0
    assert backends.eject("a", now=1) == 2.0
    assert backends.eject("a", now=3) == 4.0
    assert backends.eject("a", now=7) == 4.0, "capped"
    assert not backends.loads()["a"].usable(8)
    backends.probed("a", ok=True, now=8)
    assert backends.loads()["a"].usable(8), "a passing probe returns an ejected backend"
    backends.succeeded("a")
    assert backends.eject("a", now=9) == 1.0, "a success ends the run of ejections"


def test_replacing_the_set_keeps_what_was_learnt() -> None:
    backends = make()
    backends.started("a")
    backends.eject("b", now=0)
    backends.replace_all([A, Backend("c", "http://127.0.0.1:3", "asia-southeast1", "nvidia-tesla-t4")])
    assert backends.loads()["a"].outstanding == 1
    assert backends.get("b") is None and backends.get("c") is not None


def test_requests_wait_while_no_backend_is_usable() -> None:
    async def scenario() -> tuple[bool, bool]:
        backends = BackendSet()
        loop = asyncio.get_running_loop()
        backends.replace_all([])
        waiter = asyncio.create_task(backends.wait_usable(5.0, loop))
        await asyncio.sleep(0.05)
        assert not waiter.done()
        backends.replace_all([A])  # a replacement became ready
        held = await asyncio.wait_for(waiter, 1.0)
        empty = BackendSet()
        timed_out = await empty.wait_usable(0.1, loop)
        return held, timed_out

    held, timed_out = asyncio.run(scenario())
    assert held and not timed_out


def test_outstanding_never_goes_negative() -> None:
    backends = make()
    backends.finished("a")
    assert backends.loads()["a"].outstanding == 0


def test_a_replica_taken_out_with_requests_at_it_is_counted_until_they_finish() -> None:
    backends = make()
    backends.started("a")
    backends.started("a")
    backends.replace_all([B])  # "a" drains: the control plane took it out of the feed
    assert backends.retiring() == {"a": 2} and "a" not in backends.loads()
    backends.finished("a")
    assert backends.retiring() == {"a": 1}
    backends.finished("a")
    assert backends.retiring() == {}, "answered: nothing holds it any more"
    backends.replace_all([B])
    assert backends.retiring() == {}


def test_a_retiring_replica_put_back_keeps_its_count() -> None:
    backends = make()
    backends.started("a")
    backends.replace_all([B])
    backends.replace_all([A, B])
    assert backends.retiring() == {} and backends.loads()["a"].outstanding == 1


def test_a_warming_replica_gets_its_share_and_its_full_share_once_warm() -> None:
    """A replica compiling its fast path says how fast it is meanwhile; routing weights it by that."""
    from gpuroam.gateway.health import MIN_WARMTH, warmth
    from gpuroam.gateway.routing import choose

    assert warmth([(b"x-gpuroam-warmth", b"0.4")]) == 0.4
    assert warmth([]) == 1.0, "a worker that says nothing (an A1111 image) is at full speed"
    assert warmth([(b"x-gpuroam-warmth", b"7")]) == 1.0
    for nonsense in (b"-1", b"nan", b"inf", b"fast"):
        assert warmth([(b"x-gpuroam-warmth", nonsense)]) == MIN_WARMTH
    backends = make()
    backends.probed("a", ok=True, now=0, warmth=0.25)
    loads = backends.loads()
    loads["b"].outstanding = 2  # b: 3 per unit of speed with the next; a (warming): 1 / 0.25 = 4
    assert choose(backends.backends(), loads, now=0).replica == "b"
    backends.probed("a", ok=True, now=1, warmth=1.0)
    assert choose(backends.backends(), loads, now=1).replica == "a"
