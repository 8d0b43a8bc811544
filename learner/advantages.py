"""Advantage estimators: one small function each, selected by name (`algorithm.advantage`).

Outcome estimators (OUTCOME_ESTIMATORS) take flat `rewards` [B], ordered so that each consecutive
`group_size` entries are samples of the same prompt, and return one advantage per sample [B] that
the learner broadcasts to every response token. GAE (`gae_advantages`) needs a critic: it turns
per-token rewards and the critic's per-token values into per-token advantages and value targets.
"""
from __future__ import annotations

from typing import Callable

import torch

AdvantageFn = Callable[[torch.Tensor, int], torch.Tensor]


def _groups(rewards: torch.Tensor, group_size: int) -> torch.Tensor:
    if rewards.numel() % group_size:
        raise ValueError(f"{rewards.numel()} rewards do not split into groups of {group_size}")
    return rewards.view(-1, group_size)


def _centred(rewards: torch.Tensor, group_size: int) -> torch.Tensor:
    """Each reward minus the mean of its group, shape [num_groups, group_size]."""
    groups = _groups(rewards, group_size)
    return groups - groups.mean(dim=1, keepdim=True)


def grpo_advantages(rewards: torch.Tensor, group_size: int, eps: float = 1e-6) -> torch.Tensor:
    """GRPO: each sample's reward minus its group's mean, divided by the group's std.

    A group whose rewards are all equal gets advantage 0 (it carries no learning signal).
    The std is the unbiased one, as in the GRPO paper's reference implementation.
    """
    groups = _groups(rewards, group_size)
    centred = groups - groups.mean(dim=1, keepdim=True)
    std = groups.std(dim=1, keepdim=True) if group_size > 1 else torch.zeros_like(centred[:, :1])
    return (centred / (std + eps)).reshape(-1)


def dr_grpo_advantages(rewards: torch.Tensor, group_size: int) -> torch.Tensor:
    """Dr. GRPO ("GRPO done right"): the group mean is subtracted but nothing is divided by the std.

    Dividing by the std up-weights groups that are almost all right or all wrong (small std), a
    question-difficulty bias the Dr. GRPO paper removes. Pair it with the
    "seq_mean_token_sum_norm" loss aggregation to also remove the response-length bias.
    """
    return _centred(rewards, group_size).reshape(-1)


def rloo_advantages(rewards: torch.Tensor, group_size: int) -> torch.Tensor:
    """RLOO: r_i minus the mean of the *other* G-1 rewards of its group (leave-one-out baseline).

    The baseline does not depend on r_i, so the policy-gradient estimate stays unbiased.
    Algebraically r_i - (S - r_i)/(G-1) = G/(G-1) * (r_i - mean), i.e. Dr. GRPO scaled by G/(G-1).
    """
    if group_size < 2:
        raise ValueError("rloo needs at least 2 samples per prompt (the baseline is the others' mean)")
    groups = _groups(rewards, group_size)
    others_mean = (groups.sum(dim=1, keepdim=True) - groups) / (group_size - 1)
    return (groups - others_mean).reshape(-1)


def reinforce_pp_baseline_advantages(rewards: torch.Tensor, group_size: int, eps: float = 1e-6) -> torch.Tensor:
    """REINFORCE++ with baseline: subtract the group mean, then divide by the std over the whole batch.

    The group mean removes per-prompt difficulty; normalising by one global (unbiased) std keeps
    the scale stable without GRPO's per-group re-weighting. Groups with identical rewards get 0.
    """
    centred = _centred(rewards, group_size).reshape(-1)
    std = centred.std() if centred.numel() > 1 else torch.zeros(())
    return centred / (std + eps)


def gae_advantages(token_rewards: list[torch.Tensor], values: list[torch.Tensor], gamma: float,
                   lam: float) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Generalised advantage estimation (Schulman et al. 2016), per response, from the end back:

        delta_t = r_t + gamma * V_{t+1} - V_t   (V after the last token is 0: the episode ends)
        A_t = delta_t + gamma * lam * A_{t+1},  return_t = A_t + V_t (the critic's target)

    `token_rewards[i]` and `values[i]` hold one entry per response token of sample i (V_t: the
    critic's value of the state before token t). Outcome rewards sit on the last token
    (`outcome_token_rewards`). gamma = lam = 1 gives A_t = R - V_t.
    """
    advantages, returns = [], []
    for rewards, vals in zip(token_rewards, values, strict=True):
        adv = torch.zeros_like(rewards)
        running = torch.zeros(())
        for t in reversed(range(rewards.numel())):
            next_value = vals[t + 1] if t + 1 < vals.numel() else 0.0
            running = rewards[t] + gamma * next_value - vals[t] + gamma * lam * running
            adv[t] = running
        advantages.append(adv)
        returns.append(adv + vals)
    return advantages, returns


def outcome_token_rewards(rewards: torch.Tensor, lengths: list[int],
                          token_kl: list[torch.Tensor] | None = None, kl_coef: float = 0.0) -> list[torch.Tensor]:
    """Per-token rewards for GAE: the outcome reward on each response's last token, minus
    kl_coef * KL_t on every token when the KL is in the reward (PPO-style shaping, as OpenRLHF's
    compute_reward). An empty response gets no rewards."""
    out = []
    for i, n in enumerate(lengths):
        r = -kl_coef * token_kl[i].float() if token_kl is not None else torch.zeros(n)
        if n:
            r[-1] += rewards[i]
        out.append(r)
    return out


def whiten(per_token: list[torch.Tensor], mask: list[torch.Tensor], eps: float = 1e-8) -> list[torch.Tensor]:
    """(x - mean) / std over every token of the batch where `mask` is 1 (OpenRLHF normalises GAE
    advantages over the rollout batch this way before PPO). Unchanged when no token counts."""
    flat, keep = torch.cat(per_token) if per_token else torch.zeros(0), torch.cat(mask) if mask else torch.zeros(0)
    count = keep.sum()
    if count < 1:
        return per_token
    mean = (flat * keep).sum() / count
    std = (((flat - mean) ** 2 * keep).sum() / count).sqrt()
    return [(x - mean) / (std + eps) for x in per_token]


OUTCOME_ESTIMATORS: dict[str, AdvantageFn] = {
    "grpo": grpo_advantages,
    "dr_grpo": dr_grpo_advantages,
    "rloo": rloo_advantages,
    "reinforce_pp": reinforce_pp_baseline_advantages,
}
# Every name `algorithm.advantage` accepts; "gae" has its own signature (token rewards + critic values).
ADVANTAGE_ESTIMATORS: dict[str, Callable] = {**OUTCOME_ESTIMATORS, "gae": gae_advantages}


def compute_advantages(name: str, rewards: torch.Tensor, group_size: int) -> torch.Tensor:
    """Look up the outcome estimator `name` in OUTCOME_ESTIMATORS and apply it."""
    if name == "gae":
        raise ValueError("gae needs per-token rewards and critic values: call gae_advantages")
    try:
        estimator = OUTCOME_ESTIMATORS[name]
    except KeyError:
        raise ValueError(f"unknown advantage estimator {name!r}; known: {sorted(ADVANTAGE_ESTIMATORS)}") from None
    return estimator(rewards, group_size)


def kl_penalised_rewards(rewards: torch.Tensor, sequence_kl: torch.Tensor, kl_coef: float) -> torch.Tensor:
    """KL "in the reward": r_i - kl_coef * sum_t kl_{i,t}, applied before any advantage estimator.

    The per-token penalty of PPO-style reward shaping, kl_coef * kl_t, is subtracted from the
    per-token reward. Our rewards are outcome rewards and every estimator here gives one advantage
    per sequence, so the penalised return of the sequence is simply the reward minus the summed
    penalty. `sequence_kl` [B] is that sum per sample, usually of the k1 estimator
    (log pi_old - log pi_ref over the sampled response): its sum is an unbiased estimate of the
    sequence-level KL(pi || pi_ref). The result is constant w.r.t. the policy parameters: the KL
    acts through the advantages, not as a differentiable loss term.
    """
    return rewards - kl_coef * sequence_kl
