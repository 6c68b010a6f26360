"""Providers run replicas somewhere: local worker processes, Kubernetes clusters, GKE."""

from gpuroam.providers.base import (
    CapacityError,
    ChaosControls,
    Launched,
    Observed,
    ObservedState,
    Provider,
    ProviderError,
    Regions,
    SecretSource,
    SpecLookup,
)

__all__ = [
    "CapacityError",
    "ChaosControls",
    "Launched",
    "Observed",
    "ObservedState",
    "Provider",
    "ProviderError",
    "Regions",
    "SecretSource",
    "SpecLookup",
]
