"""The state directory of `gpuroam serve`: where it is, and what it tells other processes.

`serve` writes `server.json` (its URL) and `token` (the API's bearer token) here; client
commands and the gateway process read them to find the control plane. Standard library only:
`gpuroam status` and the gateway import this and nothing of the control plane's server.
"""

from __future__ import annotations

import json
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

DEFAULT_STATE_DIR = Path(os.environ.get("GPUROAM_STATE", Path.home() / ".gpuroam"))
SERVER_FILE = "server.json"
TOKEN_FILE = "token"


def ensure_state_dir(state_dir: Path) -> None:
    """Create the state dir readable by its owner only (0700), and make what is in it so (0600): it holds
    the API token, the store and the logs, which name every replica's address."""
    state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    state_dir.chmod(0o700)
    for path in state_dir.iterdir():
        if path.is_file() and not path.is_symlink():
            path.chmod(0o600)


def token_path(state_dir: Path) -> Path:
    return state_dir / TOKEN_FILE


@dataclass(frozen=True)
class ServerInfo:
    """What client commands need to reach a running server."""

    url: str
    token: str

    @classmethod
    def read(cls, state_dir: Path) -> ServerInfo | None:
        path = state_dir / SERVER_FILE
        if not path.is_file():
            return None
        data = json.loads(path.read_text())
        return cls(url=data["url"], token=token_path(state_dir).read_text().strip())


def write_server_info(state_dir: Path, url: str) -> None:
    """Announce the server's URL (and this process's pid) to client commands."""
    path = state_dir / SERVER_FILE
    path.write_text(json.dumps({"url": url, "pid": os.getpid()}))
    path.chmod(0o600)


def load_or_create_token(state_dir: Path) -> str:
    """One token per state dir, readable by its owner only."""
    path = token_path(state_dir)
    if path.is_file():
        return path.read_text().strip()
    token = secrets.token_urlsafe(32)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(token + "\n")
    return token
