"""How CLI commands reach a running control plane: --server, else GPUROAM_SERVER, else the
server.json that `gpuroam serve` wrote into its state dir (with its token)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import httpx

from gpuroam.statedir import DEFAULT_STATE_DIR, SERVER_FILE, ServerInfo


class ClientError(RuntimeError):
    """A message for the person at the terminal: what went wrong and what to do."""


class NotFound(ClientError):
    """The server has no such thing (HTTP 404)."""


class ControlPlaneClient:
    def __init__(self, url: str, token: str, timeout_s: float = 30.0) -> None:
        self.url = url.rstrip("/")
        headers = {"Authorization": f"Bearer {token}"} if token else {}  # none known: the server says 401
        self._http = httpx.Client(base_url=self.url, timeout=timeout_s, headers=headers)

    @classmethod
    def find(cls, server: str | None, state_dir: Path | None) -> ControlPlaneClient:
        state_dir = state_dir or DEFAULT_STATE_DIR
        info = ServerInfo.read(state_dir) if state_dir.is_dir() else None
        url = server or os.environ.get("GPUROAM_SERVER") or (info.url if info else None)
        token = os.environ.get("GPUROAM_TOKEN") or (info.token if info else "")
        if url is None:
            raise ClientError(
                f"no gpuroam server found (looked for {state_dir / SERVER_FILE}); "
                "start one with `gpuroam serve`, or pass --server URL"
            )
        return cls(url, token)

    def request(self, method: str, path: str, **kwargs: Any) -> Any:
        try:
            response = self._http.request(method, f"/api/v1{path}", **kwargs)
        except httpx.ConnectError as error:
            raise ClientError(
                f"no gpuroam server answers at {self.url}: is `gpuroam serve` running? ({error})"
            ) from error
        except httpx.TimeoutException as error:
            raise ClientError(f"the gpuroam server at {self.url} did not answer in time") from error
        if response.status_code == 401:
            raise ClientError(
                f"the server at {self.url} refused the token; set GPUROAM_TOKEN or use the state dir "
                "`gpuroam serve` wrote"
            )
        if response.status_code >= 400:
            try:
                detail = response.json().get("detail", response.text)
            except ValueError:
                detail = response.text
            kind = NotFound if response.status_code == 404 else ClientError
            raise kind(f"{method} {path}: {response.status_code}: {detail}")
        return response.json()

    def get(self, path: str, **params: Any) -> Any:
        return self.request("GET", path, params={k: v for k, v in params.items() if v is not None})

    def post(self, path: str, body: dict[str, Any]) -> Any:
        return self.request("POST", path, json=body)

    def delete(self, path: str) -> Any:
        return self.request("DELETE", path)
