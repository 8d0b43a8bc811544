"""Orchestration: config, placement, the training loop, metrics and the CLI."""
