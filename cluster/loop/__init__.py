"""The training loop: a step's generate, score, update and sync, and the evaluations it runs."""
