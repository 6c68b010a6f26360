"""What the gateway counts of a service's clients for the autoscaler, bounded whatever clients send."""

from __future__ import annotations

from gpuroam.gateway.demand import MAX_NAME, MAX_REGIONS, OTHER, ServiceDemand

T = 1_800_000_000.0


def test_requests_per_second_by_client_region_over_the_window() -> None:
    demand = ServiceDemand(window_s=10)
    demand.arrived("us-east1", T)
    for i in range(20):
        demand.arrived("europe-west4", T + i * 0.25)  # 4 a second for 5 s
    assert demand.by_region(T + 6) == {"europe-west4": 2.0, "us-east1": 0.1}
    assert demand.by_region(T + 30) == {}, "older than the window"
    assert demand.last_request_at == T + 4.75


def test_hostile_region_headers_cannot_grow_the_counts_without_bound() -> None:
    demand = ServiceDemand()
    for i in range(10_000):
        demand.arrived(f"region-{i}-" + "x" * 1000, T)
    counts = demand.by_region(T + 1)
    assert len(counts) == MAX_REGIONS + 1 and OTHER in counts
    assert all(len(region) <= MAX_NAME for region in counts)
