"""The reconcile loop: one pass a second in a thread of its own, whatever a pass raises."""

from __future__ import annotations

import logging
import threading

from gpuroam.controller.reconciler import Reconciler

log = logging.getLogger("gpuroam.controller")


class ReconcileLoop:
    """Runs passes until stopped; a failing pass is logged and the next one runs anyway."""

    def __init__(self, reconciler: Reconciler, interval_s: float) -> None:
        self.reconciler = reconciler
        self.interval_s = interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="gpuroam-reconcile", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=30)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.reconciler.reconcile()
            except Exception:
                log.exception("reconcile pass failed")
            self._stop.wait(self.interval_s)
