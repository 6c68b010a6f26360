"""The global endpoint: one URL in front of every region's replicas (the data plane)."""
