"""The embedded default provider: regions are named sites on this machine, replicas are worker processes.

The process table is the truth. Each worker carries this provider's id and its service in its environment
and its replica, region, GPU and port on its command line, so `observe()` finds every one of them in
/proc, including one spawned an instant before the controller was killed. Only chaos (capacity taken
away) is kept in a file, written atomically, so it outlives a controller restart.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import secrets
import signal
import socket
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from subprocess import DEVNULL, STDOUT, Popen
from typing import TYPE_CHECKING, Any

import httpx
import yaml

from gpuroam.providers.base import CapacityError, Observed, ObservedState, ProviderError
from gpuroam.records import Replica

if TYPE_CHECKING:
    from gpuroam.providers.netns import RegionNetwork

_EXAMPLE = "regions:\n  us-central1: {nvidia-l4: 1, nvidia-tesla-t4: 2}"


class LocalSitesError(ValueError):
    """The local regions file is wrong; the message names the file, the entry and the fix."""


def load_sites(path: Path | str) -> dict[str, dict[str, int]]:
    """Read region -> GPU type -> how many replicas of it the site holds at once."""
    path = Path(path)

    def fail(problem: str) -> LocalSitesError:
        return LocalSitesError(f"{path}: {problem}")

    try:
        data = yaml.safe_load(path.read_text())
    except OSError as error:
        raise fail(f"cannot read it ({error.strerror}); pass a file like examples/local-regions.yaml") from None
    except yaml.YAMLError as error:
        raise fail(f"not valid YAML: {error}") from None
    if not isinstance(data, dict):
        raise fail(f"expected a mapping with a 'regions' key, for example:\n{_EXAMPLE}")
    unknown = sorted(map(str, set(data) - {"regions"}))
    if unknown:
        raise fail(f"unknown top-level key(s) {', '.join(unknown)}; the only key is 'regions'")
    regions = data.get("regions")
    if not isinstance(regions, dict) or not regions:
        raise fail(f"'regions' must map at least one region to its GPUs, for example:\n{_EXAMPLE}")
    sites: dict[str, dict[str, int]] = {}
    for region, gpus in regions.items():
        if not isinstance(gpus, dict) or not gpus:
            raise fail(f"regions.{region} must map GPU types to counts, e.g. {{nvidia-l4: 1}}; got {gpus!r}")
        for gpu, count in gpus.items():
            if isinstance(count, bool) or not isinstance(count, int) or count < 0:
                raise fail(f"regions.{region}.{gpu} is {count!r}; write a whole number of replicas, 0 or more")
        sites[str(region)] = {str(gpu): count for gpu, count in gpus.items()}
    return sites


@dataclass(frozen=True)
class _Worker:
    """A live worker process of this provider, as read from /proc."""

    pid: int
    replica_id: str
    service: str
    region: str
    gpu: str
    port: int
    cuda_device: str | None
    host: str = "127.0.0.1"

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def observed(self, ready: bool) -> Observed:
        state = ObservedState.READY if ready else ObservedState.STARTING
        return Observed(self.replica_id, self.service, self.region, self.gpu, state, self.url, f"pid {self.pid}")


def _parse_worker(pid: int, cmdline: list[str], environ: dict[str, str]) -> _Worker | None:
    """A `gpuroam worker ... --replica ID` command line, or None; the last value of an option wins, as in click."""
    starts = [i for i in range(1, len(cmdline)) if cmdline[i] == "worker" and Path(cmdline[i - 1]).name == "gpuroam"]
    if not starts:
        return None
    options: dict[str, str] = {}
    rest = cmdline[starts[0] + 1 :]
    for i, arg in enumerate(rest):
        if arg.startswith("--") and "=" in arg:
            key, value = arg[2:].split("=", 1)
            options[key] = value
        elif arg.startswith("--") and i + 1 < len(rest):
            options[arg[2:]] = rest[i + 1]
    if "replica" not in options or not options.get("port", "").isdigit():
        return None
    region, gpu, port = options.get("region", ""), options.get("gpu", ""), int(options["port"])
    service, device = environ.get("GPUROAM_SERVICE", ""), environ.get("CUDA_VISIBLE_DEVICES")
    return _Worker(pid, options["replica"], service, region, gpu, port, device, options.get("host", "127.0.0.1"))


def _read_worker(pid: int, marker: str) -> _Worker | None:
    """The worker process `pid` if it is live (not a zombie) and its environment carries `marker`.

    A process just past execve can show an empty environment for an instant; `_spawn` waits that out."""
    proc = Path("/proc", str(pid))
    try:
        environ_raw = (proc / "environ").read_bytes().decode(errors="replace").split("\0")
        if marker not in environ_raw:
            return None
        cmdline = (proc / "cmdline").read_bytes().decode(errors="replace").split("\0")
        stat = (proc / "stat").read_text()
    except OSError:  # gone meanwhile, or another user's process
        return None
    if stat.rsplit(")", 1)[1].split()[0] == "Z":
        return None
    return _parse_worker(pid, cmdline, dict(item.split("=", 1) for item in environ_raw if "=" in item))


def _scan_workers(marker: str) -> list[_Worker]:
    """Every live `gpuroam worker` process whose environment carries `marker`, oldest first."""
    found = (_read_worker(int(entry.name), marker) for entry in os.scandir("/proc") if entry.name.isdigit())
    return sorted((w for w in found if w is not None), key=lambda w: w.pid)


def free_port() -> int:
    """A loopback TCP port free now (for a worker here; tests and benchmarks use it for their servers)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _ready(url: str, timeout_s: float) -> bool:
    try:
        return httpx.get(f"{url}/internal/ping", timeout=timeout_s, trust_env=False).status_code == 200
    except httpx.HTTPError:
        return False


class LocalProvider:
    """Sites with a GPU inventory on this machine; each replica is a `gpuroam worker` on a loopback port.

    `gpu_devices` (optional, for machines with real GPUs) maps a (region, gpu) pair, or a GPU type,
    to CUDA device indexes: a replica there gets CUDA_VISIBLE_DEVICES set to one that no live worker
    of this provider holds. Without it, workers inherit the controller's CUDA_VISIBLE_DEVICES.

    `network` (optional, see providers/netns.py) puts each region's workers in that region's network
    namespace, bound to its address, behind an emulated WAN link; their URLs carry that address.
    """

    name = "local"

    def __init__(
        self,
        sites: dict[str, dict[str, int]],
        state_dir: Path,
        python: str = sys.executable,
        ready_timeout_s: float = 2.0,
        gpu_devices: dict[tuple[str, str] | str, list[int]] | None = None,
        network: RegionNetwork | None = None,
    ) -> None:
        self.sites = sites
        self.network = network
        self.python = python
        self.ready_timeout_s = ready_timeout_s
        self.gpu_devices = gpu_devices or {}
        self.dir = Path(state_dir) / "local"
        self.log_dir = self.dir / "logs"
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.provider_id = self._provider_id()
        self.marker = f"GPUROAM_PROVIDER_ID={self.provider_id}"
        self._children: dict[int, Popen[bytes]] = {}  # only to reap our own exited children

    @classmethod
    def from_file(cls, path: Path | str, state_dir: Path, network: RegionNetwork | None = None) -> LocalProvider:
        return cls(load_sites(path), state_dir, network=network)

    def _provider_id(self) -> str:
        """Created once per state dir (link is atomic: two starting controllers agree on one id)."""
        path = self.dir / "provider-id"
        if not path.exists():
            tmp = self.dir / f".provider-id.{os.getpid()}"
            tmp.write_text(secrets.token_hex(8))
            with contextlib.suppress(FileExistsError):
                os.link(tmp, path)
            tmp.unlink()
        return path.read_text().strip()

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        """Serialise capacity checks, spawns and chaos across threads and controller processes."""
        with open(self.dir / "lock", "w") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            yield

    def _workers(self) -> list[_Worker]:
        for pid, child in list(self._children.items()):
            if child.poll() is not None:
                del self._children[pid]
        return _scan_workers(self.marker)

    # -- the Provider interface -------------------------------------------------------------------

    def regions(self) -> dict[str, dict[str, int | None]]:
        workers, taken = self._workers(), self.taken_away()
        return {
            region: {gpu: self._free(region, gpu, workers, taken) for gpu in gpus}
            for region, gpus in self.sites.items()
        }

    def _free(self, region: str, gpu: str, workers: list[_Worker], taken: set[tuple[str, str]]) -> int:
        if (region, gpu) in taken:
            return 0
        used = sum(1 for w in workers if (w.region, w.gpu) == (region, gpu))
        return max(0, self.sites.get(region, {}).get(gpu, 0) - used)

    def launch(self, replica: Replica, app: dict) -> dict:
        if Path(replica.id).name != replica.id:
            raise ProviderError(f"replica id {replica.id!r} cannot name a log file")
        with self._locked():
            workers = self._workers()
            for worker in workers:
                if worker.replica_id == replica.id:
                    return self._handle(worker.pid, worker.port, replica.id, worker.host)
            region, gpu = replica.region, replica.gpu
            if region not in self.sites:
                raise CapacityError(region, gpu, f"no local site named {region}")
            if gpu not in self.sites[region]:
                raise CapacityError(region, gpu, f"local site {region} has no {gpu}")
            if (region, gpu) in self.taken_away():
                raise CapacityError(region, gpu, f"{gpu} in local site {region} was taken away (chaos)")
            if self._free(region, gpu, workers, set()) == 0:
                count = self.sites[region][gpu]
                raise CapacityError(region, gpu, f"local site {region} has {count} {gpu}, all in use")
            env = {"GPUROAM_PROVIDER_ID": self.provider_id, "GPUROAM_SERVICE": replica.service}
            device = self._cuda_device(region, gpu, workers)
            if device is not None:
                env["CUDA_VISIBLE_DEVICES"] = device
            host, prefix = "127.0.0.1", []
            if self.network is not None:  # NetworkError (a ProviderError) when the region has no namespace
                host, prefix = self.network.address(region), self.network.exec_prefix(region)
            port = free_port()
            args = ["--model", str(app.get("model", "tiny")), "--region", region, "--gpu", gpu]
            pid = self._spawn(replica.id, port, [*args, *map(str, app.get("args", ()))], env, host, prefix)
            return self._handle(pid, port, replica.id, host)

    def _cuda_device(self, region: str, gpu: str, workers: list[_Worker]) -> str | None:
        devices = self.gpu_devices.get((region, gpu), self.gpu_devices.get(gpu))
        if devices is None:
            return None
        held = {w.cuda_device for w in workers}
        free = [str(d) for d in devices if str(d) not in held]
        if not free:
            raise CapacityError(region, gpu, f"every CUDA device for {gpu} ({devices}) is held by a replica")
        return free[0]

    def _spawn(
        self,
        replica_id: str,
        port: int,
        args: list[str],
        env: dict[str, str],
        host: str = "127.0.0.1",
        prefix: list[str] | None = None,
    ) -> int:
        """Start a worker in its own session, so it outlives a controller that is killed.

        `prefix` (`ip netns exec NS`) execs, not forks, so the pid is the worker's. Returns once /proc
        shows the worker (or it has exited), so the next capacity check counts it."""
        worker = ["-m", "gpuroam", "worker", "--port", str(port), "--host", host, "--replica", replica_id]
        command = [*(prefix or []), self.python, *worker, *args]
        env = {**os.environ, "PYTHONUNBUFFERED": "1", **env}
        try:
            with open(self.log_dir / f"{replica_id}.log", "ab") as log:
                child = Popen(command, stdin=DEVNULL, stdout=log, stderr=STDOUT, env=env, start_new_session=True)
        except OSError as error:
            raise ProviderError(f"cannot start {command[0]}: {error}") from error
        self._children[child.pid] = child
        deadline = time.monotonic() + 5.0
        while child.poll() is None and _read_worker(child.pid, self.marker) is None and time.monotonic() < deadline:
            time.sleep(0.001)
        return child.pid

    def _handle(self, pid: int, port: int, replica_id: str, host: str = "127.0.0.1") -> dict[str, Any]:
        url = f"http://{host}:{port}"
        return {"pid": pid, "port": port, "url": url, "log": str(self.log_dir / f"{replica_id}.log")}

    def observe(self) -> list[Observed]:
        workers = list({w.replica_id: w for w in reversed(self._workers())}.values())  # oldest per replica
        with ThreadPoolExecutor(max_workers=min(16, len(workers) or 1)) as pool:
            ready = list(pool.map(lambda w: _ready(w.url, self.ready_timeout_s), workers))
        return [w.observed(up) for w, up in zip(workers, ready, strict=True)]

    def drain(self, replica_id: str) -> None:
        """Nothing to do: the gateway stops routing once the controller drops the replica from the ready set."""

    def terminate(self, replica_id: str) -> None:
        self._stop([w for w in self._workers() if w.replica_id == replica_id], signal.SIGTERM, grace_s=5.0)

    def endpoint(self, service: str) -> str | None:
        """None: the local gateway, not this provider, gives the service its endpoint."""
        return None

    def _stop(self, workers: list[_Worker], sig: signal.Signals, grace_s: float) -> None:
        """Signal each worker's process group, then SIGKILL whatever is still alive after `grace_s`."""
        for worker in workers:
            _signal_group(worker.pid, sig)
        deadline = time.monotonic() + grace_s
        pids = {w.pid for w in workers}
        while pids and time.monotonic() < deadline:
            time.sleep(0.05)
            pids &= {w.pid for w in self._workers()}
        for pid in pids:
            _signal_group(pid, signal.SIGKILL)
        while pids and time.monotonic() < deadline + 5.0:
            time.sleep(0.05)
            pids &= {w.pid for w in self._workers()}

    # -- chaos: capacity taken away and given back --------------------------------------------------

    def taken_away(self) -> set[tuple[str, str]]:
        path = self.dir / "capacity.json"
        if not path.exists():
            return set()
        try:
            return {(region, gpu) for region, gpu in json.loads(path.read_text())["taken_away"]}
        except (ValueError, KeyError, TypeError) as error:
            raise ProviderError(f"{path} is corrupt ({error}); delete it to give all capacity back") from error

    def _save_taken(self, taken: set[tuple[str, str]]) -> None:
        tmp = self.dir / f".capacity.json.{os.getpid()}"
        tmp.write_text(json.dumps({"taken_away": sorted(taken)}, indent=1))
        os.replace(tmp, self.dir / "capacity.json")

    def fail_region(self, region: str) -> list[str]:
        """Lose a region: all its GPUs go, and its replicas die abruptly (SIGKILL)."""
        self._check(region=region)
        return self._take_away({(region, gpu) for gpu in self.sites[region]})

    def fail_gpu(self, gpu: str, region: str | None = None) -> list[str]:
        """Lose a GPU type everywhere, or in one region; its replicas die abruptly."""
        self._check(region=region, gpu=gpu)
        return self._take_away(
            {(r, g) for r, gpus in self.sites.items() for g in gpus if g == gpu and region in (None, r)}
        )

    def _take_away(self, pairs: set[tuple[str, str]]) -> list[str]:
        with self._locked():
            self._save_taken(self.taken_away() | pairs)
            doomed = [w for w in self._workers() if (w.region, w.gpu) in pairs]
            self._stop(doomed, signal.SIGKILL, grace_s=5.0)
        return sorted({w.replica_id for w in doomed})

    def recover(self, region: str | None = None, gpu: str | None = None) -> list[tuple[str, str]]:
        """Give back what was taken away in `region` and/or of `gpu` (everything when both are None)."""
        self._check(region=region, gpu=gpu)
        with self._locked():
            taken = self.taken_away()
            restored = {(r, g) for r, g in taken if region in (None, r) and gpu in (None, g)}
            self._save_taken(taken - restored)
        return sorted(restored)

    def _check(self, region: str | None = None, gpu: str | None = None) -> None:
        if region is not None and region not in self.sites:
            raise ValueError(f"no local region {region!r}; the regions are: {', '.join(sorted(self.sites))}")
        gpus = self.sites[region] if region is not None else {g for gpus in self.sites.values() for g in gpus}
        if gpu is not None and gpu not in gpus:
            where = f"in {region}" if region is not None else "in any local region"
            raise ValueError(f"no GPU type {gpu!r} {where}; the GPU types are: {', '.join(sorted(gpus))}")


def _signal_group(pid: int, sig: signal.Signals) -> None:
    """Workers lead their own session, so their process group is their pid; fine if already gone."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        if os.getpgid(pid) == pid:
            os.killpg(pid, sig)
        else:
            os.kill(pid, sig)
