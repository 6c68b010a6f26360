"""Prometheus metrics of the control plane: what each service wants and has, its load and its cost.

Built from the store and the gateway's report at each scrape (nothing is kept between scrapes), on
a registry of its own. Behind the same bearer token as the rest of the API: Prometheus sends it with
`authorization: {credentials: TOKEN}` in the scrape config.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

from fastapi import APIRouter
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from gpuroam.controller.api.context import ApiContext, Context
from gpuroam.controller.api.services import cost_per_hour, gpu_count, scale_of
from gpuroam.controller.signals import read_report, signals_from_report
from gpuroam.records import ReplicaState

router = APIRouter()


class ServiceCollector(Collector):
    def __init__(self, context: ApiContext, now: float) -> None:
        self.context, self.now = context, now

    def collect(self) -> Iterator[GaugeMetricFamily]:
        store, catalog = self.context.store, self.context.catalog
        desired = GaugeMetricFamily(
            "gpuroam_service_desired_replicas", "Replicas the autoscaler wants", labels=["service"]
        )
        ready = GaugeMetricFamily(
            "gpuroam_service_ready_replicas", "Ready replicas", labels=["service", "region", "gpu"]
        )
        cost = GaugeMetricFamily(
            "gpuroam_service_cost_dollars_per_hour", "GPU cost of live replicas", labels=["service"]
        )
        in_flight = GaugeMetricFamily("gpuroam_service_in_flight_requests", "At the replicas now", labels=["service"])
        held = GaugeMetricFamily("gpuroam_service_held_requests", "Waiting at the gateway now", labels=["service"])
        report = read_report(store, self.context.gateway)[0] if self.context.gateway is not None else None
        signals = signals_from_report(report) if report is not None else {}
        for record in store.list_services():
            desired.add_metric([record.name], scale_of(store, record, self.now).desired)
            live = [r for r in store.list_replicas(service=record.name) if r.state.live]
            per_pair: dict[tuple[str, str], int] = {}
            for replica in live:
                if replica.state is ReplicaState.READY:
                    per_pair[(replica.region, replica.gpu)] = per_pair.get((replica.region, replica.gpu), 0) + 1
            for (region, gpu), count in sorted(per_pair.items()):
                ready.add_metric([record.name, region, gpu], count)
            cost.add_metric([record.name], cost_per_hour(catalog, gpu_count(record), live))
            if record.name in signals:
                in_flight.add_metric([record.name], signals[record.name].in_flight)
                held.add_metric([record.name], signals[record.name].held)
        yield from (desired, ready, cost, in_flight, held)


@router.get("/api/v1/metrics", response_class=Response)
def metrics(context: Context) -> Response:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(ServiceCollector(context, time.time()))
    return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)
