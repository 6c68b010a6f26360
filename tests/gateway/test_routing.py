"""Routing is pure: least outstanding, weighted by GPU speed, nearest region first, spill over."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from gpuroam.catalog import load_catalog
from gpuroam.gateway.routing import Backend, Load, Policy, affinity_holds, choose, load_score

CATALOG = load_catalog()
US_L4 = Backend("us-l4", "http://127.0.0.1:1", "us-central1", "nvidia-l4", 2.2)
US_T4 = Backend("us-t4", "http://127.0.0.1:2", "us-central1", "nvidia-tesla-t4", 1.0)
EU_L4 = Backend("eu-l4", "http://127.0.0.1:3", "europe-west4", "nvidia-l4", 2.2)
ASIA_A100 = Backend("asia-a100", "http://127.0.0.1:4", "asia-southeast1", "nvidia-tesla-a100", 5.0)
ALL = [US_L4, US_T4, EU_L4, ASIA_A100]


def test_faster_gpus_take_more_outstanding_requests() -> None:
    loads = {"us-l4": Load(outstanding=2), "us-t4": Load(outstanding=1)}
    assert choose([US_L4, US_T4], loads, now=0) == US_L4  # 3/2.2 < 2/1.0


def test_the_nearest_region_serves_until_it_is_saturated() -> None:
    assert choose(ALL, {}, 0, "europe-west4", CATALOG.distance_km) == EU_L4
    busy = {"eu-l4": Load(outstanding=20)}
    spilled = choose(ALL, busy, 0, "europe-west4", CATALOG.distance_km)
    assert spilled is not None and spilled.region != "europe-west4"


def test_everything_busy_goes_to_the_least_loaded_anywhere() -> None:
    loads = {b.replica: Load(outstanding=50) for b in ALL}
    assert choose(ALL, loads, 0, "europe-west4", CATALOG.distance_km) == ASIA_A100


def test_ejected_unhealthy_and_already_tried_backends_are_skipped() -> None:
    loads = {"us-l4": Load(ejected_until=10.0), "us-t4": Load(healthy=False)}
    assert choose([US_L4, US_T4, EU_L4], loads, now=5.0, exclude={"eu-l4"}) is None
    assert choose([US_L4, US_T4, EU_L4], loads, now=10.0, exclude={"eu-l4"}) == US_L4, "back after the ejection"


def test_a_retry_prefers_another_region() -> None:
    picked = choose([US_L4, US_T4, EU_L4], {}, 0, exclude={"us-l4"}, avoid_region="us-central1")
    assert picked == EU_L4
    assert choose([US_L4, US_T4], {}, 0, exclude={"us-l4"}, avoid_region="us-central1") == US_T4, "same region if only"


loads_strategy = st.fixed_dictionaries(
    {b.replica: st.builds(Load, st.integers(0, 40), st.booleans(), st.sampled_from([0.0, 100.0])) for b in ALL}
)


@given(
    loads_strategy,
    st.sampled_from([None, *sorted(CATALOG.regions)]),
    st.sets(st.sampled_from([b.replica for b in ALL])),
)
def test_choice_is_usable_and_no_usable_backend_is_less_loaded_nearby(loads, client_region, exclude) -> None:  # type: ignore[no-untyped-def]
    picked = choose(ALL, loads, 50.0, client_region, CATALOG.distance_km, exclude=exclude)
    usable = [b for b in ALL if b.replica not in exclude and loads[b.replica].usable(50.0)]
    if not usable:
        assert picked is None
        return
    assert picked in usable
    same_region = [b for b in usable if b.region == picked.region]
    assert load_score(picked, loads[picked.replica]) == min(load_score(b, loads[b.replica]) for b in same_region)
    if client_region is None or load_score(picked, loads[picked.replica]) > Policy().saturation:
        assert load_score(picked, loads[picked.replica]) == min(load_score(b, loads[b.replica]) for b in usable)


def test_a_sticky_replica_keeps_its_clients_only_while_it_is_not_clearly_busier_than_the_least_loaded() -> None:
    both = [US_L4, EU_L4]  # same speed
    assert affinity_holds(
        US_L4, both, {"us-l4": Load(outstanding=2), "eu-l4": Load(outstanding=0)}, 0
    )  # 3/2.2 vs 1/2.2
    new_replica_idle = {"us-l4": Load(outstanding=3), "eu-l4": Load(outstanding=0)}  # 4/2.2 - 1/2.2 > 1
    assert not affinity_holds(US_L4, both, new_replica_idle, 0)
    assert affinity_holds(US_L4, [US_L4], {"us-l4": Load(outstanding=5)}, 0), "alone: nowhere better to go"
    assert not affinity_holds(US_T4, [US_T4], {"us-t4": Load(outstanding=9)}, 0), "saturated: spill over"
    ejected = {"us-l4": Load(outstanding=3), "eu-l4": Load(ejected_until=10.0)}
    assert affinity_holds(US_L4, both, ejected, 0), "an unusable replica is no reason to move"
