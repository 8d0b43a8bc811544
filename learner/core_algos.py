"""Advantage estimators and policy losses: one small, documented function each.

Shapes: per-token tensors are [batch, response_len] with a 0/1 `mask` for padding.
"""
from __future__ import annotations

import torch


def masked_sum(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return (x * mask).sum()


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return (x * mask).sum() / mask.sum().clamp(min=1)


def grpo_advantages(rewards: torch.Tensor, group_size: int, eps: float = 1e-6) -> torch.Tensor:
    """GRPO: each sample's reward minus its group's mean, divided by the group's std.

    `rewards` is flat, ordered so that each consecutive `group_size` entries share a prompt.
    A group whose rewards are all equal gets advantage 0 (it carries no learning signal).
    The std is the unbiased one, as in the GRPO paper's reference implementation.
    """
    groups = rewards.view(-1, group_size)
    mean = groups.mean(dim=1, keepdim=True)
    std = groups.std(dim=1, keepdim=True) if group_size > 1 else torch.zeros_like(mean)
    return ((groups - mean) / (std + eps)).view(-1)


def token_logprobs(logits: torch.Tensor, token_ids: torch.Tensor) -> torch.Tensor:
    """log p(token_ids[t]) from logits[t], computed in fp32; logits [B, T, V], ids [B, T]."""
    logp = torch.log_softmax(logits.float(), dim=-1)
    return logp.gather(-1, token_ids.unsqueeze(-1)).squeeze(-1)


def entropy_from_logits(logits: torch.Tensor) -> torch.Tensor:
    """Per-token entropy of the next-token distribution, [B, T]."""
    logp = torch.log_softmax(logits.float(), dim=-1)
    return -(logp.exp() * logp).sum(-1)


def ppo_clip_loss(logprobs: torch.Tensor, old_logprobs: torch.Tensor, advantages: torch.Tensor,
                  clip_low: float, clip_high: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-token PPO clipped surrogate, to be minimised: -min(r*A, clip(r, 1-lo, 1+hi)*A).

    `old_logprobs` are the sampling logprobs recorded by the rollout engine, so the ratio also
    corrects for any mismatch between the engine and the learner. `advantages` is [B] or [B, T].
    Returns (loss per token, ratio, clipped indicator).
    """
    adv = advantages.unsqueeze(-1) if advantages.dim() == 1 else advantages
    ratio = torch.exp(logprobs - old_logprobs)
    unclipped = ratio * adv
    clipped = torch.clamp(ratio, 1.0 - clip_low, 1.0 + clip_high) * adv
    loss = -torch.minimum(unclipped, clipped)
    return loss, ratio, (clipped < unclipped).float()


def kl_k3(logprobs: torch.Tensor, ref_logprobs: torch.Tensor) -> torch.Tensor:
    """Schulman's k3 estimator of KL(policy || reference) per token: exp(d) - d - 1, d = ref - policy.

    Unbiased and always >= 0; used as a loss term (GRPO / SimpleRL-Zero style).
    """
    delta = ref_logprobs - logprobs
    return torch.exp(delta) - delta - 1.0


def sft_loss(logprobs: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Per-token negative log-likelihood of the target tokens (supervised warm-up)."""
    return -logprobs * mask
