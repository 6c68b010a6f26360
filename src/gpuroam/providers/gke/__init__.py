"""The gke provider: GKE Autopilot clusters per region in one fleet, behind a global load balancer.

`manifests` builds the global endpoint's objects as plain dicts and needs no Google client; the part
that creates clusters and fleet memberships (the `gke` extra) lives beside it.
"""
