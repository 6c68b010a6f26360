"""Browser fixtures: Debian's chromium driven by Playwright, and a real control plane serving the
example service on this machine (worker processes as replicas, the gateway, light traffic).

The browser is /usr/bin/chromium (Debian package `chromium`, which `make test` installs); Playwright's
own browser downloads are not used. Without it the browser tests fail and say so;
GPUROAM_SKIP_BROWSER=1 skips them instead.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from dashboard_harness import Demo, LightLoad

from gpuroam.providers.factories import local_provider
from gpuroam.providers.local import free_port
from gpuroam.serve import ControlPlane, ServeOptions
from gpuroam.spec import load_spec, spec_to_dict

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    """Module-scoped on purpose: while Playwright's sync API runs, its event loop is this thread's,
    and tests elsewhere that call asyncio.run() would fail."""
    if os.environ.get("GPUROAM_SKIP_BROWSER") == "1":
        pytest.skip("GPUROAM_SKIP_BROWSER=1: the browser tests are skipped")
    if not CHROMIUM.exists():
        pytest.fail(
            f"the dashboard tests need Debian's chromium at {CHROMIUM}. Run `make test`, which installs it "
            "(Debian package chromium), or set GPUROAM_SKIP_BROWSER=1 to skip the browser tests.",
            pytrace=False,
        )
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        yield launched
        launched.close()


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Demo]:
    """`gpuroam up` of the example service (test timings), settled on its preferred placement."""
    tmp = tmp_path_factory.mktemp("dashboard")
    spec = yaml.safe_load((EXAMPLES / "stable-diffusion.yaml").read_text())
    spec["placement"].update(provision_timeout_s=90, block_ttl_s=3, block_max_s=20, move_back_after_s=2)
    (tmp / "spec.yaml").write_text(yaml.safe_dump(spec))
    options = ServeOptions(tmp / "state", port=free_port(), interval_s=0.5, gateway_port=free_port())
    plane = ControlPlane(options, local_provider(EXAMPLES / "local-regions.yaml", options.state_dir))
    plane.start()
    load = None
    try:
        running = Demo(plane)
        running.client.post("/services", spec_to_dict(load_spec(tmp / "spec.yaml")))
        preferred = {("us-central1", "nvidia-l4"), ("europe-west4", "nvidia-l4")}
        running.wait_for("the preferred placement", lambda: running.ready() == preferred, 120)
        load = LightLoad(running.client, "stable-diffusion").start()
        running.wait_for("traffic through the gateway", lambda: load.ok >= 3, 60)
        yield running
    finally:
        if load is not None:
            load.stop()
        plane.stop()  # the loop first, so it cannot launch while we clean up
        for seen in plane.provider.observe():
            plane.provider.terminate(seen.replica_id)
