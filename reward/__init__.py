"""Scoring: final-answer extraction and a safe equivalence check, run by a pool of Ray actors."""
from reward.scoring import Verdict, judge, score, score_batch
from reward.shaping import shaped_reward

__all__ = ["Verdict", "judge", "score", "score_batch", "shaped_reward"]
