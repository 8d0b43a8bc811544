"""Scoring: final-answer extraction and a safe equivalence check, run by a pool of Ray actors; code
rewards (reward.code) run programs against tests in a sandbox (reward.sandbox), never in the actor."""
from reward.scoring import Verdict, judge, score, score_batch
from reward.shaping import shaped_reward

__all__ = ["Verdict", "judge", "score", "score_batch", "shaped_reward"]
