"""The embedded default provider: regions are named sites on this machine, replicas are worker processes.

The process table is the truth (see workers.py): `observe()` finds every worker in /proc. Only chaos
(capacity taken away, preemption notices; see chaos.py) is kept in a file, so it outlives a controller
restart. A Spot replica given a notice (`preempt`) keeps running and serving until the notice runs out,
reported with its `reclaim_at` meanwhile; then `observe()` kills it (SIGKILL), as a cloud reclaims a VM.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import secrets
import signal
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from subprocess import DEVNULL, STDOUT, Popen
from typing import TYPE_CHECKING

import httpx

from gpuroam import processes
from gpuroam.providers.base import CapacityError, Launched, Observed, ProviderError, Regions
from gpuroam.providers.local.chaos import ChaosState
from gpuroam.providers.local.sites import Inventory, load_sites
from gpuroam.providers.local.workers import CAPACITY_ENV, Worker, free_port, read_worker, scan_workers
from gpuroam.records import Capacity, Replica
from gpuroam.spec import ServiceSpec

if TYPE_CHECKING:
    from gpuroam.providers.local.netns import RegionNetwork


def _ready(url: str, timeout_s: float) -> bool:
    try:
        return httpx.get(f"{url}/internal/ping", timeout=timeout_s, trust_env=False).status_code == 200
    except httpx.HTTPError:
        return False


class LocalProvider:
    """Sites with a GPU inventory on this machine; each replica is a `gpuroam worker` on a loopback port.

    `sites` is the on-demand inventory (it names every region), `spot` the Spot one: a replica takes a
    slot of its own capacity, so the two are counted apart. `regions()` reports on-demand slots, as
    before Spot; `spot_regions()` the Spot ones.

    `gpu_devices` (optional, for machines with real GPUs) maps a (region, gpu) pair, or a GPU type,
    to CUDA device indexes: a replica there gets CUDA_VISIBLE_DEVICES set to one that no live worker
    of this provider holds. Without it, workers inherit the controller's CUDA_VISIBLE_DEVICES.

    `network` (optional, see netns.py) puts each region's workers in that region's network
    namespace, bound to its address, behind an emulated WAN link; their URLs carry that address.
    """

    name = "local"

    def __init__(
        self,
        sites: Inventory,
        state_dir: Path,
        python: str = sys.executable,
        ready_timeout_s: float = 2.0,
        gpu_devices: dict[tuple[str, str] | str, list[int]] | None = None,
        network: RegionNetwork | None = None,
        spot: Inventory | None = None,
    ) -> None:
        self.sites = sites
        self.spot = spot or {}
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
        sites = load_sites(path)
        return cls(sites.on_demand, state_dir, network=network, spot=sites.spot)

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

    def _workers(self) -> list[Worker]:
        """The workers running now; reaps exited children. The API's threads and the reconcile loop call
        this at once, so two may reap the same child (a `del` there made GET /api/v1/regions a 500)."""
        for pid, child in list(self._children.items()):
            if child.poll() is not None:
                self._children.pop(pid, None)
        return scan_workers(self.marker)

    # -- the Provider interface -------------------------------------------------------------------

    def regions(self) -> Regions:
        """On-demand slots free now, per region and GPU type."""
        return self._free_slots(Capacity.ON_DEMAND)

    def spot_regions(self) -> Regions:
        """Spot slots free now, per region and GPU type (regions with Spot GPUs only)."""
        return self._free_slots(Capacity.SPOT)

    def _free_slots(self, capacity: Capacity) -> Regions:
        workers, chaos = self._workers(), ChaosState.load(self.dir)
        return {
            region: {gpu: self._free(region, gpu, capacity, workers, chaos) for gpu in gpus}
            for region, gpus in self._inventory(capacity).items()
        }

    def _inventory(self, capacity: Capacity) -> Inventory:
        return self.spot if capacity is Capacity.SPOT else self.sites

    def _free(
        self, region: str, gpu: str, capacity: Capacity, workers: list[Worker], chaos: ChaosState | None = None
    ) -> int:
        if chaos is not None and _taken(chaos, region, gpu, capacity):
            return 0
        used = sum(1 for w in workers if (w.region, w.gpu, w.capacity) == (region, gpu, capacity))
        return max(0, self._inventory(capacity).get(region, {}).get(gpu, 0) - used)

    def launch(self, replica: Replica, spec: ServiceSpec) -> Launched:
        if Path(replica.id).name != replica.id:
            raise ProviderError(f"replica id {replica.id!r} cannot name a log file")
        with self._locked():
            workers = self._workers()
            for worker in workers:
                if worker.replica_id == replica.id:
                    return self._handle(worker.pid, worker.port, replica.id, worker.host)
            region, gpu, capacity = replica.region, replica.gpu, replica.capacity
            inventory, kind = self._inventory(capacity), " as Spot" if capacity is Capacity.SPOT else ""
            if region not in self.sites:
                raise CapacityError(region, gpu, f"no local site named {region}")
            if gpu not in inventory.get(region, {}):
                raise CapacityError(region, gpu, f"local site {region} has no {gpu}{kind}")
            if _taken(ChaosState.load(self.dir), region, gpu, capacity):
                raise CapacityError(region, gpu, f"{gpu}{kind} in local site {region} was taken away (chaos)")
            if self._free(region, gpu, capacity, workers) == 0:
                count = inventory[region][gpu]
                raise CapacityError(region, gpu, f"local site {region} has {count} {gpu}{kind}, all in use")
            env = {"GPUROAM_PROVIDER_ID": self.provider_id, "GPUROAM_SERVICE": replica.service}
            env[CAPACITY_ENV] = capacity.value
            device = self._cuda_device(region, gpu, workers)
            if device is not None:
                env["CUDA_VISIBLE_DEVICES"] = device
            host, prefix = "127.0.0.1", []
            if self.network is not None:  # NetworkError (a ProviderError) when the region has no namespace
                host, prefix = self.network.address(region), self.network.exec_prefix(region)
            port = free_port()
            args = ["--model", spec.app.model, "--region", region, "--gpu", gpu, *spec.limits.worker_args()]
            args += spec.app.args
            pid = self._spawn(replica.id, port, args, env, host, prefix)
            return self._handle(pid, port, replica.id, host)

    def _cuda_device(self, region: str, gpu: str, workers: list[Worker]) -> str | None:
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
        while child.poll() is None and read_worker(child.pid, self.marker) is None and time.monotonic() < deadline:
            time.sleep(0.001)
        return child.pid

    def _handle(self, pid: int, port: int, replica_id: str, host: str = "127.0.0.1") -> Launched:
        url = f"http://{host}:{port}"
        return Launched(url, {"pid": pid, "port": port, "url": url, "log": str(self.log_dir / f"{replica_id}.log")})

    def observe(self) -> list[Observed]:
        reclaims = self._reclaim_due()
        workers = list({w.replica_id: w for w in reversed(self._workers())}.values())  # oldest per replica
        with ThreadPoolExecutor(max_workers=min(16, len(workers) or 1)) as pool:
            ready = list(pool.map(lambda w: _ready(w.url, self.ready_timeout_s), workers))
        return [w.observed(up, reclaims.get(w.replica_id)) for w, up in zip(workers, ready, strict=True)]

    def drain(self, replica_id: str) -> None:
        """Nothing to do: the gateway stops routing once the controller drops the replica from the ready set."""

    def terminate(self, replica_id: str) -> None:
        self._stop([w for w in self._workers() if w.replica_id == replica_id], signal.SIGTERM, grace_s=5.0)

    def endpoint(self, service: str) -> str | None:
        """None: the local gateway, not this provider, gives the service its endpoint."""
        return None

    def _stop(self, workers: list[Worker], sig: signal.Signals, grace_s: float) -> None:
        """Signal each worker's process group, then SIGKILL whatever is still alive after `grace_s`."""
        for worker in workers:
            processes.signal_group(worker.pid, sig)
        deadline = time.monotonic() + grace_s
        pids = {w.pid for w in workers}
        while pids and time.monotonic() < deadline:
            time.sleep(0.05)
            pids &= {w.pid for w in self._workers()}
        for pid in pids:
            processes.signal_group(pid, signal.SIGKILL)
        while pids and time.monotonic() < deadline + 5.0:
            time.sleep(0.05)
            pids &= {w.pid for w in self._workers()}

    # -- chaos: capacity taken away and given back --------------------------------------------------

    def taken_away(self) -> set[tuple[str, str]]:
        """The (region, GPU) pairs lost on demand and as Spot."""
        return ChaosState.load(self.dir).taken

    def fail_region(self, region: str) -> list[str]:
        """Lose a region: all its GPUs go, and its replicas die abruptly (SIGKILL)."""
        self._check(region=region)
        return self._take_away({(region, gpu) for gpu in self._gpus(region)})

    def fail_gpu(self, gpu: str, region: str | None = None) -> list[str]:
        """Lose a GPU type everywhere, or in one region; its replicas die abruptly."""
        self._check(region=region, gpu=gpu)
        return self._take_away({(r, gpu) for r in self.sites if gpu in self._gpus(r) and region in (None, r)})

    def _take_away(self, pairs: set[tuple[str, str]]) -> list[str]:
        with self._locked():
            chaos = ChaosState.load(self.dir)
            chaos.taken |= pairs
            chaos.save(self.dir)
            doomed = [w for w in self._workers() if (w.region, w.gpu) in pairs]
            self._stop(doomed, signal.SIGKILL, grace_s=5.0)
        return sorted({w.replica_id for w in doomed})

    def preempt(self, region: str | None = None, replica: str | None = None, notice_s: float = 30.0) -> list[str]:
        """Reclaim Spot replicas as a cloud does: one (`replica`), every one of `region` (a preemption wave,
        which also takes the region's Spot capacity until `recover`), or every one everywhere. They run on
        for `notice_s` seconds, reported with the notice, then die abruptly. The ids of the replicas doomed."""
        self._check(region=region)
        with self._locked():
            spot = [w for w in self._workers() if w.capacity is Capacity.SPOT and region in (None, w.region)]
            doomed = [w for w in spot if replica in (None, w.replica_id)]
            if replica is not None and not doomed:
                raise ValueError(f"no Spot replica {replica!r}{f' in {region}' if region else ''}; Spot replicas: "
                                 f"{', '.join(sorted(w.replica_id for w in spot)) or 'none'}")  # fmt: skip
            chaos = ChaosState.load(self.dir)
            if region is not None and replica is None:
                chaos.spot_taken |= {(region, gpu) for gpu in self.spot.get(region, {})}
            reclaim_at = time.time() + max(0.0, notice_s)
            chaos.reclaims.update({w.replica_id: min(chaos.reclaims.get(w.replica_id, reclaim_at), reclaim_at)
                                   for w in doomed})  # fmt: skip
            chaos.save(self.dir)
        self._reclaim_due()
        return sorted({w.replica_id for w in doomed})

    def _reclaim_due(self) -> dict[str, float]:
        """Kill the replicas whose notice ran out; the notices still running (replica id -> reclaim time)."""
        chaos = ChaosState.load(self.dir)
        if not chaos.reclaims:
            return {}
        with self._locked():
            chaos, now = ChaosState.load(self.dir), time.time()
            workers = self._workers()
            running = {w.replica_id for w in workers}
            due = {replica for replica, at in chaos.reclaims.items() if at <= now}
            self._stop([w for w in workers if w.replica_id in due], signal.SIGKILL, grace_s=5.0)
            kept = {replica: at for replica, at in chaos.reclaims.items() if replica in running and replica not in due}
            if kept != chaos.reclaims:
                chaos.reclaims = kept
                chaos.save(self.dir)
            return kept

    def recover(self, region: str | None = None, gpu: str | None = None) -> list[tuple[str, str]]:
        """Give back what was taken away in `region` and/or of `gpu` (everything when both are None), Spot
        capacity taken by a preemption wave included."""
        self._check(region=region, gpu=gpu)
        with self._locked():
            chaos = ChaosState.load(self.dir)
            restored = {(r, g) for r, g in chaos.taken | chaos.spot_taken if region in (None, r) and gpu in (None, g)}
            chaos.taken -= restored
            chaos.spot_taken -= restored
            chaos.save(self.dir)
        return sorted(restored)

    def _gpus(self, region: str) -> set[str]:
        """The GPU types a site has, on demand or as Spot: chaos takes both away."""
        return {*self.sites.get(region, {}), *self.spot.get(region, {})}

    def _check(self, region: str | None = None, gpu: str | None = None) -> None:
        if region is not None and region not in self.sites:
            raise ValueError(f"no local region {region!r}; the regions are: {', '.join(sorted(self.sites))}")
        gpus = self._gpus(region) if region is not None else {g for r in self.sites for g in self._gpus(r)}
        if gpu is not None and gpu not in gpus:
            where = f"in {region}" if region is not None else "in any local region"
            raise ValueError(f"no GPU type {gpu!r} {where}; the GPU types are: {', '.join(sorted(gpus))}")


def _taken(chaos: ChaosState, region: str, gpu: str, capacity: Capacity) -> bool:
    return (region, gpu) in chaos.taken or (capacity is Capacity.SPOT and (region, gpu) in chaos.spot_taken)
