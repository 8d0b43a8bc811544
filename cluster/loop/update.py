"""The driver's side of the update rule: build the step's TrainBatch once, then update the policy (and
the critic).

`build`: from the scored samples, the learner ranks compute the PPO old log-probs (their own forward,
in the micro-batches the first mini-batch will train on) when the update needs them apart from its
training forward (`needs_old_pass`), the reference log-probs (algorithm.kl_coef > 0) and, with
`algorithm.advantage=gae`, the critic ranks the values; then the advantages (and GAE's returns), with the
KL in the reward when configured. With one optimizer step per batch (the default), the old policy is the
current one, and the training forward's own log-probs serve as the old ones (learner/worker.py): no
second forward. The rollout engine's sampling log-probs travel as `behaviour_logprobs`: they feed only
the mismatch metric (`train/rollout_logprob_diff_*`, computed by the learner) and the importance
correction (algorithm.tis). `train`: the critic's update, then the policy's (skipped for the
first critic.warmup_steps steps), each algorithm.ppo_epochs x ppo_mini_batches optimizer steps in the
same shuffled order (from `seed`).
"""
from __future__ import annotations

import torch

from cluster.config import Config
from cluster.handles.groups import CriticGroup, LearnerGroup
from cluster.infra.metrics import PhaseTimer
from learner.core_algos import (compute_advantages, gae_advantages, kl_estimator, kl_penalised_rewards,
                                outcome_token_rewards, whiten)
from protocol.batch import ScoredSample, TrainBatch


def needs_old_pass(cfg: Config) -> bool:
    """Whether the old log-probs need a forward of their own before the update: more than one optimizer
    step per batch (the policy moves before the last mini-batch trains), or the KL in the reward (the
    advantages need them before any training)."""
    a = cfg.algorithm
    return a.ppo_epochs * a.ppo_mini_batches > 1 or (a.kl_in_reward and a.kl_coef > 0)


class PolicyUpdate:
    def __init__(self, cfg: Config, learners: LearnerGroup, critic: CriticGroup | None) -> None:
        self.cfg, self.learners, self.critic = cfg, learners, critic

    def build(self, samples: list[ScoredSample], seed: int, timer: PhaseTimer) -> tuple[TrainBatch, dict[str, float]]:
        """The step's complete TrainBatch (the advantages live only there) and its metrics."""
        a = self.cfg.algorithm
        batch = TrainBatch.from_samples(samples, a.mask_truncated)
        with timer("logprobs"):
            if needs_old_pass(self.cfg):
                batch.old_logprobs = self.learners.old_logprobs(batch, seed)
            if a.kl_coef > 0:
                batch.ref_logprobs = self.learners.ref_logprobs(batch, seed)
            if self.critic is not None:
                batch.values = self.critic.values(batch, seed)
        with timer("advantages"):
            metrics = self._advantages(batch, samples)
        return batch, metrics

    def _advantages(self, batch: TrainBatch, samples: list[ScoredSample]) -> dict[str, float]:
        """Advantages into `batch` (per sample, or per token with GAE, plus its returns). With the KL in
        the reward, the per-token KL of the learner's old policy to the reference is subtracted (x kl_coef):
        from the outcome reward for the outcome estimators (summed over the response), token by token for GAE."""
        a, c = self.cfg.algorithm, self.cfg.critic
        rewards = torch.tensor([s.reward for s in samples], dtype=torch.float32)
        metrics: dict[str, float] = {}
        token_kl = None
        if a.kl_in_reward and a.kl_coef > 0:
            estimate = kl_estimator(a.kl_estimator)
            token_kl = [estimate(torch.tensor(old), torch.tensor(ref))
                        for old, ref in zip(batch.old_logprobs, batch.ref_logprobs, strict=True)]
            sums = torch.tensor([float(k.sum()) for k in token_kl])
            metrics["train/kl_in_reward"] = float(sums.mean()) if len(sums) else 0.0
        if a.advantage == "gae":
            lengths = [len(r) for r in batch.response_ids]
            token_rewards = outcome_token_rewards(rewards, lengths, token_kl, a.kl_coef)
            values = [torch.tensor(v, dtype=torch.float32) for v in batch.values]
            advantages, returns = gae_advantages(token_rewards, values, c.gamma, c.lam)
            advantages = whiten(advantages, [torch.tensor(m) for m in batch.loss_mask])
            batch.advantages, batch.returns = [x.tolist() for x in advantages], [x.tolist() for x in returns]
        else:
            if token_kl is not None:
                rewards = kl_penalised_rewards(rewards, sums, a.kl_coef)
            batch.advantages = compute_advantages(a.advantage, rewards, self.cfg.rollout.samples_per_prompt).tolist()
        return metrics

    def train(self, batch: TrainBatch, seed: int, step: int) -> dict[str, float]:
        """The critic's update, then the policy's (not during the critic's warm-up steps)."""
        metrics: dict[str, float] = {}
        if self.critic is not None:
            metrics.update({f"critic/{k}": v for k, v in self.critic.train(batch, seed).items()})
            if step < self.cfg.critic.warmup_steps:
                return metrics
        metrics.update({f"train/{k}": v for k, v in self.learners.train(batch, seed).items()})
        return metrics
