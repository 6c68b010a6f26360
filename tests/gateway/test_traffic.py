"""The live traffic window: requests per second and median latency per region."""

from __future__ import annotations

from gpuroam.gateway.traffic import Traffic


def test_a_window_of_full_seconds() -> None:
    traffic = Traffic(window_s=10)
    for second in range(100, 112):
        for latency in (0.01, 0.02, 0.03):
            traffic.served("sd", "us-central1", latency, now=second + 0.5)
    traffic.failed("sd", now=111.2)
    snapshot = traffic.snapshot(now=111.9)
    region = snapshot["sd"]["regions"]["us-central1"]
    assert region == {"rps": 3.0, "p50_ms": 20.0}, "seconds 101..110: the current one (111) is not over"
    assert snapshot["sd"]["failed_per_s"] == 0.0
    assert Traffic().snapshot(now=5.0) == {}
    assert traffic.snapshot(now=112.5)["sd"]["failed_per_s"] == 0.1
    assert traffic.snapshot(now=500.0) == {}, "old traffic ages out"
