"""The local gateway as a process of its own, started (or adopted) and kept up by `gpuroam serve`.

The gateway is a separate process so the data plane outlives the control plane: a controller
that crashes, is upgraded or is killed with SIGKILL leaves the gateway serving its last known
replicas. A restarted controller adopts the gateway it finds (gateway.json in the state dir)
instead of starting a second one on the same ports, and starts a new one if it dies.

`restart` hands over without a failed request: the new gateway binds the same ports beside the
old one (SO_REUSEPORT) and says when it listens (a ready file); only then is the old one told
to drain (SIGTERM), finishing the requests it holds.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from gpuroam import processes
from gpuroam.gateway.run import DRAIN_S

log = logging.getLogger("gpuroam.gateway.supervisor")


@dataclass(frozen=True)
class GatewayProcess:
    """The gateway of one state dir that follows the control plane at `controller_url`."""

    state_dir: Path
    controller_url: str
    host: str = "127.0.0.1"

    @property
    def record(self) -> Path:
        return self.state_dir / "gateway.json"

    def ensure(self) -> int:
        """The pid of a gateway following this controller: the one running, or a new one."""
        pid = self.running_pid()
        if pid is not None:
            log.info("gateway adopted", extra={"pid": pid})
            return pid
        return self._start()

    def supervise(self) -> None:
        """Start a new gateway if the recorded one has died (called about once a second)."""
        with self._locked(wait=False) as held:
            if held and self.running_pid() is None:
                log.warning("gateway not running: starting a new one")
                self._start()

    def restart(self, ready_timeout_s: float = 30.0) -> int:
        """A new gateway takes over from the running one without dropping a request; its pid."""
        with self._locked(wait=True):
            return self._restart(ready_timeout_s)

    @contextlib.contextmanager
    def _locked(self, wait: bool) -> Iterator[bool]:
        """Whether this process holds the state dir's gateway lock (a restart holds it throughout)."""
        with open(self.state_dir / "gateway.lock", "w") as handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
            except BlockingIOError:
                yield False
                return
            yield True

    def _restart(self, ready_timeout_s: float) -> int:
        old = self.running_pid()
        new = self._start(record=old is None)
        ready = ready_file(self.state_dir, new)
        deadline = time.monotonic() + ready_timeout_s
        while not ready.exists():
            if not processes.alive(new) or time.monotonic() > deadline:
                processes.stop([new], DRAIN_S)
                raise RuntimeError(f"the new gateway (pid {new}) did not listen; see {self.state_dir / 'gateway.log'}")
            time.sleep(0.02)
        ready.unlink()
        self.record.write_text(json.dumps({"pid": new, "controller": self.controller_url}))
        if old is not None:
            processes.stop([old], DRAIN_S + 5.0)
        log.info("gateway restarted", extra={"old": old, "new": new})
        return new

    def _start(self, record: bool = True) -> int:
        for stale in ready_file(self.state_dir, 0).parent.glob("*"):  # left by gateways gone since
            if not (stale.name.isdigit() and processes.alive(int(stale.name))):
                stale.unlink(missing_ok=True)
        log_file = (self.state_dir / "gateway.log").open("ab")
        command = [
            sys.executable,
            "-m",
            "gpuroam",
            "gateway",
            "--controller",
            self.controller_url,
            "--state",
            str(self.state_dir),
            "--host",
            self.host,
        ]
        process = subprocess.Popen(
            command, stdin=subprocess.DEVNULL, stdout=log_file, stderr=log_file, start_new_session=True
        )
        log_file.close()
        if record:
            self.record.write_text(json.dumps({"pid": process.pid, "controller": self.controller_url}))
        log.info("gateway started", extra={"pid": process.pid, "log": str(self.state_dir / "gateway.log")})
        return process.pid

    def running_pid(self) -> int | None:
        """The recorded gateway's pid if that process is alive and is our gateway."""
        try:
            recorded = json.loads(self.record.read_text())
            pid = int(recorded["pid"])
        except (OSError, ValueError, KeyError, TypeError):
            return None
        if recorded.get("controller") != self.controller_url or not _is_gateway(pid):
            return None
        return pid

    def stop(self, timeout_s: float = DRAIN_S + 5.0) -> None:
        """Drain the gateway (SIGTERM), SIGKILL it after `timeout_s`."""
        pid = self.running_pid()
        if pid is None:
            return
        processes.stop([pid], timeout_s)
        self.record.unlink(missing_ok=True)


def ready_file(state_dir: Path, pid: int) -> Path:
    return state_dir / "gateway-ready" / str(pid)


def mark_ready(state_dir: Path, pid: int) -> None:
    """Called by a gateway once it listens on every service's port."""
    path = ready_file(state_dir, pid)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.touch()


def _is_gateway(pid: int) -> bool:
    if not processes.alive(pid):
        return False
    argv = processes.command_line(pid)
    return argv is None or ("gpuroam" in argv and "gateway" in argv)  # no /proc: trust the record
