"""The dashboard shows Spot: each replica's capacity and $/hour, the service's $/hour beside what all
on-demand would cost, Spot slots on the map, and a preemption in the timeline (a real browser against the
control-plane API over a store written directly)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import expect

from fuzzing import serve_app
from gpuroam.catalog import load_catalog
from gpuroam.controller.api import ApiContext, create_api
from gpuroam.controller.store import Store
from gpuroam.records import Capacity, Event, EventKind, Replica, ReplicaState
from gpuroam.spec import load_spec, spec_to_dict
from gpuroam.ui import dashboard_url

TOKEN = "spot-token"
EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "stable-diffusion.yaml"


class SpotSites:
    name = "spot-sites"

    def regions(self) -> dict[str, dict[str, int | None]]:
        return {"us-central1": {"nvidia-l4": 1}, "europe-west4": {"nvidia-l4": 0}}

    def spot_regions(self) -> dict[str, dict[str, int | None]]:
        return {"us-central1": {"nvidia-l4": 2}}

    def endpoint(self, service: str) -> str | None:
        return None


@pytest.fixture
def dashboard(tmp_path: Path) -> Iterator[str]:
    store = Store.for_state_dir(tmp_path / "state")
    now = time.time()
    spec = spec_to_dict(load_spec(EXAMPLE))
    spec["resources"]["spot"] = "prefer"
    store.put_service("stable-diffusion", spec, now)
    for rid, region, capacity in (("sp", "us-central1", Capacity.SPOT), ("od", "europe-west4", Capacity.ON_DEMAND)):
        replica = Replica(
            rid, "stable-diffusion", region, "nvidia-l4", ReplicaState.READY, now, now, now, capacity=capacity
        )
        store.add_replica(replica)
    store.add_event(
        Event(now, EventKind.PREEMPTED, "sp2 preempted: reclaimed in 30 s", "stable-diffusion", "us-central1")
    )
    app = create_api(ApiContext(store, SpotSites(), load_catalog(), TOKEN))  # type: ignore[arg-type]
    try:
        with serve_app(app, "/") as url:
            yield url
    finally:
        store.close()


def test_the_dashboard_shows_spot_replicas_their_price_and_the_saving(browser: Any, dashboard: str) -> None:
    catalog = load_catalog()
    spot, on_demand = catalog.spot_price("us-central1", "nvidia-l4"), catalog.price("europe-west4", "nvidia-l4")
    all_on_demand = catalog.price("us-central1", "nvidia-l4") + on_demand
    page = browser.new_context(viewport={"width": 1440, "height": 900}).new_page()
    page.set_default_timeout(15_000)
    page.goto(dashboard_url(dashboard, TOKEN))
    rows = page.locator("#services tbody tr")
    expect(rows).to_have_count(2)
    expect(page.locator('#services tr[data-replica="sp"]')).to_contain_text("Spot")
    expect(page.locator('#services tr[data-replica="sp"]')).to_contain_text(f"${spot:.2f}")
    expect(page.locator('#services tr[data-replica="od"]')).to_contain_text("on-demand")
    saved = round((1 - (spot + on_demand) / all_on_demand) * 100)
    expect(page.locator("#services .scale")).to_contain_text(
        f"${spot + on_demand:.2f}/h (all on-demand ${all_on_demand:.2f}/h, Spot saves {saved}%)"
    )
    expect(page.locator("#events .event[data-kind='preempted']")).to_have_count(1)
    page.locator('.marker[data-region="us-central1"]').click()
    expect(page.locator("#region-detail .gpus")).to_contain_text("1 free · Spot 2 free")
    page.context.close()
