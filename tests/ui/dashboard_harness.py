"""Helpers for the dashboard tests: a control plane's client with waits, and light traffic."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import httpx

from gpuroam.controller.client import ControlPlaneClient
from gpuroam.serve import ControlPlane


class LightLoad:
    """One client generating small images through the endpoint a few times a second."""

    def __init__(self, client: ControlPlaneClient, service: str) -> None:
        self.client, self.service = client, service
        self.ok = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="light-load", daemon=True)

    def start(self) -> LightLoad:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=30)

    def _run(self) -> None:
        endpoint = self.client.get(f"/services/{self.service}")["endpoint"]
        body = {"prompt": "a lighthouse", "steps": 2, "width": 64, "height": 64, "seed": 1}
        with httpx.Client(timeout=60) as http:
            while not self._stop.wait(0.25):
                http.cookies.clear()  # no stickiness: the gateway spreads the requests as for many clients
                try:
                    if http.post(f"{endpoint}/sdapi/v1/txt2img", json=body).status_code == 200:
                        self.ok += 1
                except httpx.HTTPError:
                    pass


class Demo:
    """A control plane serving the example service, and a client of its API."""

    def __init__(self, plane: ControlPlane) -> None:
        self.plane = plane
        self.url, self.token = plane.url, plane.token
        self.client = ControlPlaneClient(plane.url, plane.token)

    def ready(self) -> set[tuple[str, str]]:
        replicas = self.client.get("/services/stable-diffusion")["replicas"]
        return {(r["region"], r["gpu"]) for r in replicas if r["state"] == "ready"}

    def wait_for(self, what: str, condition: Callable[[], object], timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            assert time.monotonic() < deadline, f"timed out after {timeout:.0f} s waiting for {what}"
            time.sleep(0.25)
