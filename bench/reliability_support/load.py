"""Steady load from a separate process: clients generating small images back to back.

Every request becomes one JSON line in `--out` (wall-clock start, latency, outcome, where it was
served), flushed at once, so the runner can read figures for any window while the load runs.
SIGTERM or SIGINT stops it after the requests in flight have their answers.

    python bench/reliability_support/load.py --endpoint http://127.0.0.1:8080 --out load.jsonl
"""

from __future__ import annotations

import argparse
import json
import signal
import threading
import time
from pathlib import Path
from typing import IO

import httpx


def client(
    endpoint: str, index: int, timeout_s: float, stop: threading.Event, out: IO[str], lock: threading.Lock
) -> None:
    body = {"prompt": f"a lighthouse, client {index}", "seed": index, "steps": 2, "width": 64, "height": 64}
    with httpx.Client(timeout=timeout_s, trust_env=False) as http:
        while not stop.is_set():
            began, clock = time.time(), time.perf_counter()
            record: dict[str, object] = {"client": index, "start": began}
            try:
                response = http.post(f"{endpoint}/sdapi/v1/txt2img", json=body)
            except httpx.HTTPError as error:
                record.update(ok=False, status=None, error=f"{type(error).__name__}: {error}"[:300])
            else:
                images = response.status_code == 200 and bool(response.json().get("images"))
                record.update(
                    ok=images,
                    status=response.status_code,
                    region=response.headers.get("x-gpuroam-region"),
                    replica=response.headers.get("x-gpuroam-replica"),
                    error=None if images else response.text[:300],
                )
            record["latency_s"] = round(time.perf_counter() - clock, 5)
            with lock:
                out.write(json.dumps(record) + "\n")
                out.flush()
            if not record["ok"]:
                time.sleep(0.05)  # a refused connection fails at once: do not spin


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--endpoint", required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds a client waits for one answer")
    args = parser.parse_args()
    stop, lock = threading.Event(), threading.Lock()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    with args.out.open("a") as out:
        threads = [
            threading.Thread(target=client, args=(args.endpoint, i, args.timeout, stop, out, lock))
            for i in range(args.clients)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()


if __name__ == "__main__":
    main()
