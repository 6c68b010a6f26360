"""The processes of bench/gateway.py: backend nginx replicas and the proxies in front of them.

Every process starts in its own process group (so a SIGKILL takes a whole nginx, master and
worker) and logs to a file in the bench's temp dir. `Processes` stops whatever is still up.
"""

from __future__ import annotations

import http.client
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from gpuroam.providers.local import free_port

SUPPORT = Path(__file__).resolve().parent
API_PATH = "/sdapi/v1/txt2img"
BODY = b'{"prompt":"a cat","steps":1}'

_NGINX_COMMON = """worker_processes 1;
pid {dir}/nginx.pid;
error_log {dir}/error.log warn;
events {{ worker_connections 8192; }}
http {{
    client_body_temp_path {dir}/client_body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;
    keepalive_requests 1000000;
{http}
}}
"""

_BACKEND = """    access_log off;
    server {{
        listen 127.0.0.1:{port} backlog=4096;
        location / {{
            default_type application/json;
            add_header X-Backend {name};
            return 200 '{{"ok":true}}';
        }}
    }}"""

_PROXY = """    access_log {dir}/access.log combined buffer=64k flush=1s;
    upstream replicas {{
{servers}
        keepalive 64;
        keepalive_requests 1000000;
    }}
    server {{
        listen 127.0.0.1:{port} backlog=4096;
        location / {{
            proxy_pass http://replicas;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
{extra}
        }}
    }}"""

# Retry a request on the next replica even after it was sent (the default never does for POST).
NGINX_TUNED = "            proxy_next_upstream error timeout http_502 http_503 non_idempotent;"


def request(url: str, method: str = "GET", body: bytes | None = None, timeout: float = 5.0) -> tuple[int, str] | None:
    """Status and X-Backend header of one request, or None without an answer (ignores proxy variables)."""
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=timeout)
    try:
        headers = {"Content-Type": "application/json"} if body is not None else {}
        conn.request(method, parts.path or "/", body=body, headers=headers)
        response = conn.getresponse()
        response.read()
        return response.status, response.getheader("X-Backend", "")
    except OSError:
        return None
    finally:
        conn.close()


def answers_200(url: str) -> bool:
    answer = request(url, timeout=1)
    return answer is not None and answer[0] == 200


def wait_until(check: Callable[[], bool], what: str, timeout: float, process: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"{what}: the process exited with code {process.returncode}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what}: not ready after {timeout:.0f} s")
        time.sleep(0.1)


def reaches_all(url: str, backends: list[Backend], tries: int = 30) -> bool:
    """Whether POSTs to the API path answer 200 and, within `tries`, come from every backend."""
    missing = {b.name for b in backends}
    for _ in range(tries):
        answer = request(url + API_PATH, "POST", BODY)
        if answer is None or answer[0] != 200:
            return False
        missing.discard(answer[1])
        if not missing:
            return True
    return False


@dataclass
class Processes:
    """The process groups this bench started, stopped on `stop_all`."""

    root: Path
    running: list[subprocess.Popen] = field(default_factory=list)

    def start(self, name: str, command: list[str]) -> subprocess.Popen:
        with (self.root / f"{name}.out").open("ab") as log:
            process = subprocess.Popen(
                command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True
            )
        self.running.append(process)
        return process

    def kill(self, process: subprocess.Popen) -> None:
        """SIGKILL the whole process group at once, as a crashed machine would go."""
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
        self.running.remove(process)

    def stop(self, process: subprocess.Popen) -> None:
        try:
            os.killpg(process.pid, signal.SIGTERM)
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        except ProcessLookupError:
            pass
        self.running.remove(process)

    def stop_all(self) -> None:
        for process in list(self.running):
            self.stop(process)

    def nginx(self, name: str, http_block: str) -> subprocess.Popen:
        folder = self.root / name
        folder.mkdir(exist_ok=True)
        folder.chmod(0o755)  # nginx workers drop to `nobody` when the bench runs as root
        conf = folder / "nginx.conf"
        conf.write_text(_NGINX_COMMON.format(dir=folder, http=http_block))
        command = ["nginx", "-p", str(folder), "-e", str(folder / "error.log"), "-c", str(conf), "-g", "daemon off;"]
        return self.start(name, command)


@dataclass
class Backend:
    name: str
    port: int
    process: subprocess.Popen

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


def start_backend(procs: Processes, name: str, port: int | None = None) -> Backend:
    port = port or free_port()
    process = procs.nginx(name, _BACKEND.format(port=port, name=name))
    backend = Backend(name, port, process)
    wait_until(lambda: answers_200(backend.url + "/internal/ping"), name, 10, process)
    return backend


@dataclass
class Target:
    """Something to send load to: a backend directly or a proxy over all of them."""

    name: str
    url: str
    processes: list[subprocess.Popen]


def _start_nginx_proxy(procs: Processes, name: str, backends: list[Backend], tuned: bool) -> Target:
    port = free_port()
    servers = "\n".join(f"        server 127.0.0.1:{b.port};" for b in backends)
    block = _PROXY.format(dir=procs.root / name, port=port, servers=servers, extra=NGINX_TUNED if tuned else "")
    return Target(name, f"http://127.0.0.1:{port}", [procs.nginx(name, block)])


def _start_skyserve(procs: Processes, name: str, backends: list[Backend], skyserve_python: str) -> Target:
    controller_port, lb_port = free_port(), free_port()
    replicas = [arg for b in backends for arg in ("--replica", b.url)]
    controller = procs.start(
        f"{name}-controller",
        [sys.executable, str(SUPPORT / "skyserve_controller.py"), "--port", str(controller_port), *replicas],
    )
    lb = procs.start(
        name,
        [
            skyserve_python,
            str(SUPPORT / "skyserve_lb.py"),
            "--controller-addr",
            f"http://127.0.0.1:{controller_port}",
            "--load-balancer-port",
            str(lb_port),
        ],
    )
    return Target(name, f"http://127.0.0.1:{lb_port}", [controller, lb])


def _start_gpuroam(procs: Processes, name: str, backends: list[Backend]) -> Target:
    port = free_port()
    flags = [arg for b in backends for arg in ("--backend", b.url)]
    command = [sys.executable, "-m", "gpuroam", "gateway", "--host", "127.0.0.1", "--port", str(port), *flags]
    target = Target(name, f"http://127.0.0.1:{port}", [procs.start(name, command)])
    health = target.url + "/gpuroam/health"
    wait_until(lambda: answers_200(health), f"{name} /gpuroam/health", 60, target.processes[0])
    return target


def start_target(procs: Processes, name: str, backends: list[Backend], skyserve_python: str) -> Target:
    """Start one target and wait until POSTs through it reach every backend (SkyServe syncs ~5 s in)."""
    if name == "direct":
        target = Target(name, backends[0].url, [])
    elif name in ("nginx", "nginx-tuned"):
        target = _start_nginx_proxy(procs, name, backends, tuned=name == "nginx-tuned")
    elif name == "skyserve":
        target = _start_skyserve(procs, name, backends, skyserve_python)
    elif name == "gpuroam":
        target = _start_gpuroam(procs, name, backends)
    else:
        raise ValueError(f"unknown target {name!r}")
    if name != "direct":
        what = f"{name}: POST {API_PATH} reaching all {len(backends)} backends"
        wait_until(lambda: reaches_all(target.url, backends), what, 90, target.processes[-1])
    return target
