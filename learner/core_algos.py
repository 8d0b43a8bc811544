"""The RL algorithm pieces, one small documented function each, with registries so config names
select them. This module is the public facade; the code lives in:

- learner/advantages.py   advantage estimators (ADVANTAGE_ESTIMATORS: outcome ones and GAE), KL-penalised rewards
- learner/losses.py       token logprobs, entropy, PPO clip loss (clip-higher, dual clip), TIS weights, value
                          loss (clipped), SFT loss
- learner/kl.py           KL estimators k1 / k2 / k3 (KL_ESTIMATORS)
- learner/aggregation.py  loss aggregation modes and the exact per-token weights for sharded batches
"""
from __future__ import annotations

from learner.advantages import (ADVANTAGE_ESTIMATORS, OUTCOME_ESTIMATORS, compute_advantages, dr_grpo_advantages,
                                gae_advantages, grpo_advantages, kl_penalised_rewards, outcome_token_rewards,
                                reinforce_pp_baseline_advantages, rloo_advantages, whiten)
from learner.aggregation import (AGG_MODES, aggregate, aggregation_weights, batch_normalisers, masked_mean,
                                 masked_sum)
from learner.kl import KL_ESTIMATORS, kl_estimator, kl_k1, kl_k2, kl_k3, sequence_kl
from learner.losses import (TIS_LEVELS, entropy_from_logits, importance_weight_stats, policy_loss, ppo_clip_loss,
                            sft_loss, token_logprobs, truncated_importance_weights, value_loss)

__all__ = [
    "ADVANTAGE_ESTIMATORS", "OUTCOME_ESTIMATORS", "compute_advantages", "dr_grpo_advantages", "gae_advantages",
    "grpo_advantages", "kl_penalised_rewards", "outcome_token_rewards", "reinforce_pp_baseline_advantages",
    "rloo_advantages", "whiten",
    "AGG_MODES", "aggregate", "aggregation_weights", "batch_normalisers", "masked_mean", "masked_sum",
    "KL_ESTIMATORS", "kl_estimator", "kl_k1", "kl_k2", "kl_k3", "sequence_kl",
    "TIS_LEVELS", "entropy_from_logits", "policy_loss", "ppo_clip_loss", "sft_loss", "token_logprobs",
    "truncated_importance_weights", "importance_weight_stats", "value_loss",
]
