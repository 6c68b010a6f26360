"""The control plane's HTTP API: one router per concern, sharing an `ApiContext` through `app.state`."""

from gpuroam.controller.api.app import create_api
from gpuroam.controller.api.context import ApiContext
from gpuroam.controller.signals import GatewayAddress

__all__ = ["ApiContext", "GatewayAddress", "create_api"]
