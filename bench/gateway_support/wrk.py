"""Run wrk (one thread, fixed connections, a small JSON POST) and read its --latency report."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

LUA = """wrk.method = "POST"
wrk.body = '{"prompt":"a cat","steps":1}'
wrk.headers["Content-Type"] = "application/json"
"""

_UNITS_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0, "h": 3_600_000.0}
_PERCENTILE = re.compile(r"^\s*(50|75|90|99)%\s+([\d.]+)(us|ms|s|m|h)\s*$", re.MULTILINE)
_RPS = re.compile(r"^Requests/sec:\s+([\d.]+)", re.MULTILINE)
_NON_2XX = re.compile(r"Non-2xx or 3xx responses:\s+(\d+)")
_SOCKET = re.compile(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)")


def write_script(folder: Path) -> Path:
    path = folder / "post.lua"
    path.write_text(LUA)
    return path


def parse(output: str) -> dict:
    """Requests/s, latency percentiles in ms, and error counts from wrk's text report."""
    rps = _RPS.search(output)
    if rps is None:
        raise RuntimeError(f"wrk printed no Requests/sec line:\n{output}")
    result: dict = {"rps": float(rps.group(1))}
    for percent, value, unit in _PERCENTILE.findall(output):
        result[f"p{percent}_ms"] = round(float(value) * _UNITS_MS[unit], 4)
    non_2xx = _NON_2XX.search(output)
    socket = _SOCKET.search(output)
    result["non_2xx"] = int(non_2xx.group(1)) if non_2xx else 0
    result["socket_errors"] = sum(int(n) for n in socket.groups()) if socket else 0
    return result


def run(url: str, script: Path, connections: int, duration: int) -> dict:
    command = ["wrk", "-t1", f"-c{connections}", f"-d{duration}s", "--latency", "-s", str(script), url]
    done = subprocess.run(command, capture_output=True, text=True, timeout=duration + 60, check=True)
    return parse(done.stdout)
