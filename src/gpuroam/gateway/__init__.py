"""The global endpoint: one URL in front of every region's replicas (the data plane)."""

from gpuroam.gateway.backends import BackendSet, HealthPolicy
from gpuroam.gateway.feed import follow_control_plane, parse_backend, services_from_api
from gpuroam.gateway.proxy import ProxyConfig, Route
from gpuroam.gateway.routing import Backend, Load, Policy, choose
from gpuroam.gateway.run import run as run_gateway
from gpuroam.gateway.run import serve_gateway
from gpuroam.gateway.server import Gateway, ServiceBackends
from gpuroam.gateway.wire import Limits

__all__ = [
    "Backend",
    "BackendSet",
    "Gateway",
    "HealthPolicy",
    "Limits",
    "Load",
    "Policy",
    "ProxyConfig",
    "Route",
    "ServiceBackends",
    "choose",
    "follow_control_plane",
    "parse_backend",
    "run_gateway",
    "serve_gateway",
    "services_from_api",
]
