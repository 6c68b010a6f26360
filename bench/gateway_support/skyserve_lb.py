"""Run SkyServe's load balancer (`python -m sky.serve.load_balancer ...`) bound to 127.0.0.1.

sky/serve/load_balancer.py hard-codes `uvicorn.run(app, host='0.0.0.0', ...)`; this wrapper
replaces `uvicorn.run` with one that forces the loopback host, then runs the module as
`__main__` with the same arguments. Run it with the SkyServe venv's Python, not gpuroam's:

    /work/skyserve-venv/bin/python bench/gateway_support/skyserve_lb.py \\
        --controller-addr http://127.0.0.1:20001 --load-balancer-port 20000
"""

from __future__ import annotations

import runpy
from typing import Any

import uvicorn

_uvicorn_run = uvicorn.run


def _run_on_loopback(app: Any, **kwargs: Any) -> None:
    kwargs["host"] = "127.0.0.1"
    _uvicorn_run(app, **kwargs)


if __name__ == "__main__":
    uvicorn.run = _run_on_loopback
    runpy.run_module("sky.serve.load_balancer", run_name="__main__", alter_sys=True)
