"""Predictions made before a run starts: memory per process and per node."""
