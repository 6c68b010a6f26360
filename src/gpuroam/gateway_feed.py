"""The hand-off from the control plane to the data plane: which replicas serve each service, and where.

The control plane answers `GET /api/v1/gateway` with a `GatewayFeed`; the gateway reads the same
model back. One definition for both ends, so a field added or renamed on one side cannot drift
from the other. pydantic only: the gateway process imports neither FastAPI nor the store.
"""

from __future__ import annotations

from pydantic import BaseModel, Field, field_validator


class FeedBackend(BaseModel):
    """One ready replica the gateway may send requests to."""

    replica: str
    url: str
    region: str
    gpu: str
    speed: float = Field(1.0, gt=0, description="relative Stable Diffusion speed of the GPU (catalog)")

    @field_validator("url")
    @classmethod
    def _no_trailing_slash(cls, url: str) -> str:
        return url.rstrip("/")


class FeedLimits(BaseModel):
    """What each caller of a service may do (the spec's `endpoint:`); None: no limit."""

    requests_per_minute: int | None = Field(default=None, ge=1)
    images_per_day: int | None = Field(default=None, ge=1)
    max_in_flight: int | None = Field(default=None, ge=1, description="None: the gateway's --max-in-flight-per-caller")


class FeedTls(BaseModel):
    """HTTPS on the service's port: PEM files on the gateway's machine."""

    certificate: str
    key: str


class FeedService(BaseModel):
    """A service, the gateway port that is its endpoint, and its ready replicas."""

    name: str
    port: int = Field(ge=0, le=65535)
    backends: list[FeedBackend] = Field(default_factory=list)
    api_keys: dict[str, str] = Field(
        default_factory=dict, description="SHA-256 of each key -> its name; none: the endpoint is open"
    )
    key_required: bool = Field(
        default=False, description="the endpoint asks for a key even with none listed (its keys' source is empty)"
    )
    limits: FeedLimits = Field(default_factory=FeedLimits)
    tls: FeedTls | None = Field(default=None, description="none: plain HTTP")


class GatewayFeed(BaseModel):
    services: list[FeedService] = Field(default_factory=list)
