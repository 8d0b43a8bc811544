"""Per-token policy losses and the quantities they are built from.

Shapes: per-token tensors are [batch, response_len]; every function here returns a per-token loss
(to be minimised) and leaves the reduction to `learner.aggregation`.
"""
from __future__ import annotations

import torch


def token_logprobs(logits: torch.Tensor, token_ids: torch.Tensor) -> torch.Tensor:
    """log p(token_ids[t]) from logits[t], computed in fp32; logits [B, T, V], ids [B, T]."""
    logp = torch.log_softmax(logits.float(), dim=-1)
    return logp.gather(-1, token_ids.unsqueeze(-1)).squeeze(-1)


def entropy_from_logits(logits: torch.Tensor) -> torch.Tensor:
    """Per-token entropy of the next-token distribution, [B, T]."""
    logp = torch.log_softmax(logits.float(), dim=-1)
    return -(logp.exp() * logp).sum(-1)


def ppo_clip_loss(logprobs: torch.Tensor, old_logprobs: torch.Tensor, advantages: torch.Tensor,
                  clip_low: float, clip_high: float,
                  dual_clip: float | None = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Per-token PPO clipped surrogate, to be minimised: -min(r*A, clip(r, 1-lo, 1+hi)*A).

    Separate `clip_low` / `clip_high` allow DAPO's clip-higher (a larger upper bound keeps
    low-probability tokens able to grow, which slows entropy collapse).

    `dual_clip` = c > 1 (Dual-clip PPO, Ye et al. 2020): for A < 0 the objective is additionally
    bounded below by c*A, so the loss is min(PPO loss, -c*A). Without it a token with A < 0 and a
    huge ratio r contributes an unbounded loss |A|*r; with it, tokens with r > c get zero gradient.

    `old_logprobs` are the learner's own log-probs before the first update of this batch (the
    proximal policy): the ratio is exactly 1 on the first mini-batch and moves from the second on.
    `advantages` is [B] or [B, T]. Returns (loss per token, stats): per-token 0/1 indicators
    `clip_frac` (the clipped branch was taken), split into `clip_high_frac` (r > 1+hi, A > 0) and
    `clip_low_frac` (r < 1-lo, A < 0), `dual_clip_frac` (the dual-clip bound was taken), the `ratio`
    itself and `approx_kl`, log pi_old - log pi per token (its mean estimates KL(pi_old || pi), verl's
    ppo_kl).
    """
    if dual_clip is not None and dual_clip <= 1.0:
        raise ValueError(f"dual_clip must be > 1, got {dual_clip}")
    adv = advantages.unsqueeze(-1) if advantages.dim() == 1 else advantages
    ratio = torch.exp(logprobs - old_logprobs)
    unclipped = ratio * adv
    clipped = torch.clamp(ratio, 1.0 - clip_low, 1.0 + clip_high) * adv
    loss = -torch.minimum(unclipped, clipped)
    clip_taken = (clipped < unclipped).float()
    dual_taken = torch.zeros_like(loss)
    if dual_clip is not None:
        bound = -dual_clip * adv  # > 0 where A < 0
        dual_taken = ((adv < 0) & (loss > bound)).float()
        loss = torch.where(dual_taken.bool(), bound.expand_as(loss), loss)
    stats = {"ratio": ratio, "approx_kl": (old_logprobs - logprobs).detach(), "clip_frac": clip_taken, "clip_high_frac": clip_taken * (adv > 0),
             "clip_low_frac": clip_taken * (adv < 0), "dual_clip_frac": dual_taken}
    return loss, stats


TIS_LEVELS = ("off", "token", "sequence")
MAX_LOG_RATIO = 20.0  # importance log-ratios are clamped to +-this before exp (a long sequence can overflow)


def importance_log_ratio(old_logprobs: torch.Tensor, behaviour_logprobs: torch.Tensor,
                         level: str = "token") -> torch.Tensor:
    """log(pi_old / pi_behaviour) per token [B, T]: the token's own ("token"), or the sum over its
    row, i.e. the whole response's ("sequence"; padded positions hold 0 in both inputs), repeated."""
    delta = (old_logprobs - behaviour_logprobs).detach()
    if level == "sequence":
        delta = delta.sum(dim=-1, keepdim=True).expand_as(delta)
    elif level != "token":
        raise ValueError(f"unknown importance-sampling level {level!r}; known: token, sequence")
    return delta.clamp(-MAX_LOG_RATIO, MAX_LOG_RATIO)


def truncated_importance_weights(old_logprobs: torch.Tensor, behaviour_logprobs: torch.Tensor,
                                 cap: float | None, level: str = "token") -> tuple[torch.Tensor, torch.Tensor]:
    """Truncated importance sampling (TIS) weights min(pi_old / pi_behaviour, cap) per token, and the
    0/1 indicator of tokens whose weight was capped.

    The samples come from the rollout engine (pi_behaviour, its recorded log-probs): an older policy
    with asynchronous rollouts, and in any mode a numerically different one (bf16, other kernels).
    The PPO ratio is taken against pi_old, the learner's weights before this batch's first update;
    weighting the PPO term by pi_old / pi_behaviour corrects the gap. `level` "token" weighs each
    token by its own ratio, "sequence" every token of a response by the product over the response.
    Capping bounds the variance a few very unlikely tokens would add. `cap` None: no cap. No gradient
    flows through the weights.
    """
    weights = torch.exp(importance_log_ratio(old_logprobs, behaviour_logprobs, level))
    if cap is None:
        return weights, torch.zeros_like(weights)
    return torch.clamp(weights, max=cap), (weights > cap).float()


IS_BINS = (0.5, 0.8, 1.25, 2.0)  # edges of the importance-weight histogram in the metrics


def importance_weight_stats(old_logprobs: torch.Tensor, behaviour_logprobs: torch.Tensor,
                            capped: torch.Tensor, level: str = "token") -> dict[str, torch.Tensor]:
    """Per-token indicators whose masked means describe the importance-weight distribution: the
    uncapped weight, the capped fraction, and a histogram over IS_BINS (`is_frac_<lo>_<hi>`)."""
    raw = torch.exp(importance_log_ratio(old_logprobs, behaviour_logprobs, level))
    stats = {"is_weight": raw, "is_capped_frac": capped}
    edges = (0.0, *IS_BINS, float("inf"))
    for lo, hi in zip(edges, edges[1:]):
        stats[f"is_frac_{lo:g}_{hi:g}"] = ((raw >= lo) & (raw < hi)).float()
    return stats


def policy_loss(logprobs: torch.Tensor, old_logprobs: torch.Tensor, advantages: torch.Tensor, *,
                clip_low: float, clip_high: float, dual_clip: float | None = None,
                kl: torch.Tensor | None = None, kl_coef: float = 0.0,
                entropy: torch.Tensor | None = None, entropy_coef: float = 0.0,
                is_weights: torch.Tensor | None = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The full per-token policy loss: w * PPO clip loss + kl_coef * kl - entropy_coef * entropy.

    `kl` is a per-token KL estimate to the reference (pass None when the KL lives in the reward
    instead); `entropy` must carry gradients when `entropy_coef` > 0, since the bonus rewards a
    flatter next-token distribution; `is_weights` w (default 1) are off-policy correction weights
    (`truncated_importance_weights`). Stats hold the unweighted per-token terms.
    """
    per_token, stats = ppo_clip_loss(logprobs, old_logprobs, advantages, clip_low, clip_high, dual_clip)
    stats["pg_loss"] = per_token
    if is_weights is not None:
        per_token = per_token * is_weights
    if kl is not None:
        per_token = per_token + kl_coef * kl
        stats["kl"] = kl
    if entropy is not None and entropy_coef:
        per_token = per_token - entropy_coef * entropy
    return per_token, stats


def value_loss(values: torch.Tensor, old_values: torch.Tensor, returns: torch.Tensor,
               clip: float | None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Per-token critic loss 0.5 * (V - R)^2, with PPO value clipping when `clip` is set:
    0.5 * max((V - R)^2, (V_clip - R)^2), V_clip = V_old + clamp(V - V_old, -clip, clip), so one update
    cannot move a value further than `clip` from the value it had when the batch was collected
    (OpenRLHF's ValueLoss, verl's cliprange_value). Stats: `value_clip_frac` (the clipped branch was
    larger), `values`, `returns`, `value_error` (V - R)."""
    error = (values - returns) ** 2
    stats = {"values": values.detach(), "returns": returns, "value_error": (values - returns).detach()}
    if clip is None:
        stats["value_clip_frac"] = torch.zeros_like(error)
        return 0.5 * error, stats
    clipped = old_values + (values - old_values).clamp(-clip, clip)
    clipped_error = (clipped - returns) ** 2
    stats["value_clip_frac"] = (clipped_error > error).float()
    return 0.5 * torch.maximum(error, clipped_error), stats


def sft_loss(logprobs: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Per-token negative log-likelihood of the target tokens (supervised warm-up)."""
    return -logprobs * mask
