"""Orchestration, in wings: the commands at the top (`python -m cluster.X`) beside the config schema; the loop,
the actor handles, infrastructure, planning and the toy base model in sub-packages (docs/architecture.md)."""
