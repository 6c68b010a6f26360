"""A stand-in for SkyServe's controller: the one endpoint its load balancer calls.

`POST /controller/load_balancer_sync` answers with the replicas that pass a readiness probe
(GET /internal/ping, 200 within 0.5 s) right now, in the shape that skypilot 0.14.1's
controller sends (sky/serve/controller.py): `replica_info` maps each ready replica URL to
`{"gpu_type": ...}`, and the load balancer takes its ready list from those keys. Older load
balancers read `ready_replica_urls` instead, so that is sent too. Stdlib only.

    python bench/gateway_support/skyserve_controller.py --port 20001 --replica http://127.0.0.1:20002
"""

from __future__ import annotations

import argparse
import http.client
import json
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit


def is_ready(url: str) -> bool:
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=0.5)
    try:
        conn.request("GET", "/internal/ping")
        return conn.getresponse().status == 200
    except OSError:
        return False
    finally:
        conn.close()


def make_handler(replicas: list[str]) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("Content-Length", 0)))  # the request aggregator
            if self.path != "/controller/load_balancer_sync":
                self.send_error(404)
                return
            ready = [url for url in replicas if is_ready(url)]
            body = json.dumps(
                {"replica_info": {url: {"gpu_type": "unknown"} for url in ready}, "ready_replica_urls": ready}
            ).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            pass

    return Handler


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--replica", action="append", required=True, help="replica base URL (repeat)")
    args = parser.parse_args()
    ThreadingHTTPServer(("127.0.0.1", args.port), make_handler(args.replica)).serve_forever()


if __name__ == "__main__":
    main()
