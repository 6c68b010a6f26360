"""The local provider: regions are sites on this machine, replicas are `gpuroam worker` processes,
optionally each region in a network namespace behind an emulated WAN link (netns.py, wanlink.py)."""

from gpuroam.providers.local.provider import LocalProvider
from gpuroam.providers.local.sites import LocalSitesError, Sites, load_sites
from gpuroam.providers.local.workers import free_port

__all__ = ["LocalProvider", "LocalSitesError", "Sites", "free_port", "load_sites"]
