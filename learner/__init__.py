"""Training: DeepSpeed ZeRO ranks as Ray actors, and the RL losses."""
