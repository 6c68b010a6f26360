"""The control plane: state store, reconcile loop, HTTP API and server."""
