"""Prometheus metrics of the control plane: what each service wants and has, its load and its cost.

Built from the store and the gateway's report at each scrape (nothing is kept between scrapes), on
a registry of its own. Behind the same bearer token as the rest of the API: Prometheus sends it with
`authorization: {credentials: TOKEN}` in the scrape config.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterator

from fastapi import APIRouter
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from gpuroam.controller.api.context import ApiContext, Context
from gpuroam.controller.api.services import cost_per_hour, gpu_count, scale_of
from gpuroam.controller.signals import read_report, signals_from_report
from gpuroam.records import Capacity, ReplicaState

router = APIRouter()


class ServiceCollector(Collector):
    def __init__(self, context: ApiContext, now: float) -> None:
        self.context, self.now = context, now

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        store, catalog = self.context.store, self.context.catalog
        desired = GaugeMetricFamily(
            "gpuroam_service_desired_replicas", "Replicas the autoscaler wants", labels=["service"]
        )
        ready = GaugeMetricFamily(
            "gpuroam_service_ready_replicas", "Ready replicas", labels=["service", "region", "gpu", "capacity"]
        )
        cost = GaugeMetricFamily(
            "gpuroam_service_cost_dollars_per_hour", "GPU cost of live replicas", labels=["service"]
        )
        on_demand_cost = GaugeMetricFamily(
            "gpuroam_service_on_demand_cost_dollars_per_hour",
            "What the live replicas would cost all on demand",
            labels=["service"],
        )
        events = CounterMetricFamily(
            "gpuroam_events", "Events in the timeline (preempted, failover, stockout, ...)", labels=["kind", "service"]
        )
        for (kind, service), count in sorted(store.count_events().items(), key=str):
            events.add_metric([kind, service or ""], count)
        in_flight = GaugeMetricFamily("gpuroam_service_in_flight_requests", "At the replicas now", labels=["service"])
        held = GaugeMetricFamily("gpuroam_service_held_requests", "Waiting at the gateway now", labels=["service"])
        report = read_report(store, self.context.gateway)[0] if self.context.gateway is not None else None
        signals = signals_from_report(report) if report is not None else {}
        for record in store.list_services():
            desired.add_metric([record.name], scale_of(store, record, self.now).desired)
            live = [r for r in store.list_replicas(service=record.name) if r.state.live]
            per_slot = Counter((r.region, r.gpu, r.capacity.value) for r in live if r.state is ReplicaState.READY)
            for (region, gpu, capacity), count in sorted(per_slot.items()):
                ready.add_metric([record.name, region, gpu, capacity], count)
            cost.add_metric([record.name], cost_per_hour(catalog, gpu_count(record), live))
            on_demand_cost.add_metric(
                [record.name], cost_per_hour(catalog, gpu_count(record), live, Capacity.ON_DEMAND)
            )
            if record.name in signals:
                in_flight.add_metric([record.name], signals[record.name].in_flight)
                held.add_metric([record.name], signals[record.name].held)
        yield from (desired, ready, cost, on_demand_cost, in_flight, held, events)


@router.get("/api/v1/metrics", response_class=Response)
def metrics(context: Context) -> Response:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(ServiceCollector(context, time.time()))
    return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)
