"""The one entry point: `gpuroam ...`. Importing the command modules registers their commands,
in the order `gpuroam --help` lists them."""

# isort: skip_file
from gpuroam.cli import processes, render, services, keys, demo, net, sim  # noqa: F401
from gpuroam.cli.app import app

__all__ = ["app"]
