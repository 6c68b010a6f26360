"""gpuroam: run a GPU web service wherever GPUs can be found, behind one global endpoint."""

__version__ = "0.1.0"
