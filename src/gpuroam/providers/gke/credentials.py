"""Kubernetes API clients for GKE clusters: the cluster's endpoint and CA, and a Google bearer token.

GKE's API servers take a Google OAuth access token (what `gke-gcloud-auth-plugin` hands kubectl). Tokens
last about an hour, and a controller runs for days, so the token is checked before every request (the
kubernetes client's `refresh_api_key_hook`) and refreshed when less than five minutes are left.

Written against google-auth 2.62 and kubernetes 37; tested only against fakes, never against real GCP here.
"""

from __future__ import annotations

import base64
import binascii
import threading
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

from kubernetes.client import ApiClient, Configuration

from gpuroam.providers.base import ProviderError

CLOUD_PLATFORM = "https://www.googleapis.com/auth/cloud-platform"
REFRESH_MARGIN = timedelta(minutes=5)


class GoogleCredentials(Protocol):
    """What is used of `google.auth.credentials.Credentials`: a token, its expiry (naive UTC), refresh."""

    token: str | None
    expiry: datetime | None

    def refresh(self, request: Any) -> None: ...


def _utcnow() -> datetime:
    """Naive UTC, as google-auth keeps `expiry`."""
    return datetime.now(UTC).replace(tzinfo=None)


def _default_request() -> Any:
    from google.auth.transport.requests import Request

    return Request()


class BearerToken:
    """An access token from Google credentials, refreshed before it expires; thread-safe.

    One instance serves every cluster's client: the token is the caller's identity, not the cluster's."""

    def __init__(
        self,
        credentials: GoogleCredentials,
        *,
        margin: timedelta = REFRESH_MARGIN,
        request_factory: Callable[[], Any] = _default_request,
        now: Callable[[], datetime] = _utcnow,
    ) -> None:
        self.credentials = credentials
        self.margin = margin
        self.request_factory = request_factory
        self.now = now
        self.refreshes = 0
        self._lock = threading.Lock()

    def value(self) -> str:
        """The current token, refreshed first if it is missing or expires within the margin."""
        with self._lock:
            if self._stale():
                try:
                    self.credentials.refresh(self.request_factory())
                except Exception as error:  # google.auth.exceptions.RefreshError, transport errors
                    raise ProviderError(f"cannot refresh the Google access token: {error}") from error
                self.refreshes += 1
            token = self.credentials.token
        if not token:
            raise ProviderError("the Google credentials gave no access token")
        return token

    def _stale(self) -> bool:
        if not self.credentials.token:
            return True
        expiry = self.credentials.expiry
        if expiry is None:
            return False  # a token without expiry (e.g. a fixed one) is used as it is
        if expiry.tzinfo is not None:
            expiry = expiry.astimezone(UTC).replace(tzinfo=None)
        return expiry - self.now() < self.margin

    def attach(self, configuration: Configuration) -> None:
        """Send `Authorization: Bearer <token>` on every request, the token checked each time."""
        configuration.api_key["authorization"] = self.value()
        configuration.api_key_prefix["authorization"] = "Bearer"
        # The client's Configuration declares the hook as None, though it calls it when set.
        configuration.refresh_api_key_hook = self._refresh_hook  # type: ignore[assignment]

    def _refresh_hook(self, configuration: Configuration) -> None:
        configuration.api_key["authorization"] = self.value()


def cluster_ca(encoded: str) -> str:
    """The cluster's CA certificate (PEM) from get_cluster's base64 `master_auth.cluster_ca_certificate`."""
    try:
        pem = base64.b64decode(encoded, validate=True).decode("ascii")
    except (binascii.Error, UnicodeDecodeError) as error:
        raise ProviderError(f"the cluster's CA certificate is not base64 PEM: {error}") from error
    if "BEGIN CERTIFICATE" not in pem:
        raise ProviderError("the cluster's CA certificate is not a PEM certificate")
    return pem


def cluster_api_client(endpoint: str, ca_certificate: str, token: BearerToken, *, host: str | None = None) -> ApiClient:
    """A kubernetes ApiClient for a GKE cluster: https://<endpoint>, verified against the cluster's CA.

    `host` replaces the URL (another route to the API server, such as the DNS endpoint, or a fake)."""
    configuration = Configuration(host=host or f"https://{endpoint}", ca_cert_data=cluster_ca(ca_certificate))
    configuration.verify_ssl = True
    token.attach(configuration)
    return ApiClient(configuration)
