"""The local gateway as a process of its own, started (or adopted) by `gpuroam serve`.

The gateway is a separate process so the data plane outlives the control plane: a controller
that crashes, is upgraded or is killed with SIGKILL leaves the gateway serving its last known
replicas. A restarted controller adopts the gateway it finds (gateway.json in the state dir)
instead of starting a second one on the same ports.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger("gpuroam.controller")


@dataclass(frozen=True)
class GatewayProcess:
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

    def stop(self, timeout_s: float = 10.0) -> None:
        pid = self.running_pid()
        if pid is None:
            return
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout_s
        while _alive(pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        if _alive(pid):
            os.kill(pid, signal.SIGKILL)
        self.record.unlink(missing_ok=True)


def _alive(pid: int) -> bool:
    try:
        os.waitpid(pid, os.WNOHANG)  # reap it if it is our exited child
    except ChildProcessError:
        pass
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie is dead for our purposes
        return Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1][0] != "Z"
    except (OSError, IndexError):
        return True


def _is_gateway(pid: int) -> bool:
    if not _alive(pid):
        return False
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return True  # no /proc: trust the record
    return b"gpuroam" in argv and b"gateway" in argv
