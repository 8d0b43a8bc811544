"""What a run stands on: paths, placement, the lifeline, checkpoints, outputs and fault injection."""
