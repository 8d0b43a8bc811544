"""Scoring: final-answer extraction and a safe equivalence check, run by a pool of Ray actors."""
from reward.scoring import score, score_batch

__all__ = ["score", "score_batch"]
