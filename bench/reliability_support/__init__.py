"""The reliability suite's parts: load from a separate process, a served cluster, faults, the report."""
