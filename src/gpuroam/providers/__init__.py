"""Providers run replicas somewhere: local worker processes, Kubernetes clusters, GKE."""

from gpuroam.providers.base import CapacityError, Observed, ObservedState, Provider, ProviderError

__all__ = ["CapacityError", "Observed", "ObservedState", "Provider", "ProviderError"]
