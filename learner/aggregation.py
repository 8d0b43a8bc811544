"""Reducing a per-token loss [B, T] with a 0/1 mask to the scalar that is minimised.

Modes (N = response tokens in the mask, S = sequences with at least one such token, L_i = tokens
of sequence i, L_max = a fixed length, usually rollout.max_new_tokens):

| mode                     | scalar                                  | weight of one token  |
| ------------------------ | --------------------------------------- | -------------------- |
| token_mean               | sum_i,t x / N                           | 1 / N                |
| seq_mean_token_sum       | mean_i (sum_t x)                        | 1 / S                |
| seq_mean_token_mean      | mean_i (sum_t x / L_i)                  | 1 / (S * L_i)        |
| seq_mean_token_sum_norm  | mean_i (sum_t x / L_max)  (Dr. GRPO)    | 1 / (S * L_max)      |

How the gradient scale differs:
- token_mean (DAPO's choice, our default): every token counts the same, so a sequence weighs in
  proportion to its length, and the overall scale does not grow with response length. A token's
  weight 1/N still depends on how long the *other* responses in the batch are.
- seq_mean_token_mean (the original GRPO): every sequence counts the same, so a token of a long
  response counts less. With A < 0 long wrong answers are punished less per token, a length bias.
- seq_mean_token_sum: every token weighs 1/S, so the gradient grows with response length (about
  mean(L_i) times token_mean's); the learning rate has to absorb that.
- seq_mean_token_sum_norm (Dr. GRPO): one constant normaliser, no length bias and a scale that
  does not drift with response length; it equals token_mean when every response has L_max tokens.

The learner splits a global batch over data-parallel ranks and micro-batches, so it cannot call
`aggregate` on the whole batch. `aggregation_weights` instead gives every token its weight
computed from *global* counts: the sum of `per_token * weights` over all shards is exactly the
global aggregate, whichever way the batch is cut.
"""
from __future__ import annotations

from typing import Literal, get_args

import torch

AggMode = Literal["token_mean", "seq_mean_token_sum", "seq_mean_token_mean", "seq_mean_token_sum_norm"]
AGG_MODES: tuple[str, ...] = get_args(AggMode)


def masked_sum(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return (x * mask).sum()


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return (x * mask).sum() / mask.sum().clamp(min=1)


def batch_normalisers(loss_mask: list[list[float]]) -> tuple[int, int]:
    """(total response tokens, sequences with at least one token) of a ragged global loss mask.

    Fully masked sequences (e.g. truncated responses under overlong masking) do not count as
    sequences, just as their tokens do not count as tokens.
    """
    lengths = [sum(m) for m in loss_mask]
    return int(sum(lengths)), sum(1 for n in lengths if n > 0)


def aggregation_weights(mask: torch.Tensor, mode: str, num_sequences: int, total_tokens: int,
                        max_len: int | None = None) -> torch.Tensor:
    """Per-token weights [B, T] for a shard of the global batch, from the global counts.

    `num_sequences` and `total_tokens` describe the whole global batch (`batch_normalisers`);
    `max_len` is the fixed normaliser of "seq_mean_token_sum_norm". The only per-shard quantity
    used is each row's own length, which a shard always holds in full.
    """
    sequences, tokens = max(num_sequences, 1), max(total_tokens, 1)
    if mode == "token_mean":
        return mask / tokens
    if mode == "seq_mean_token_sum":
        return mask / sequences
    if mode == "seq_mean_token_mean":
        return mask / (mask.sum(dim=-1, keepdim=True).clamp(min=1) * sequences)
    if mode == "seq_mean_token_sum_norm":
        if not max_len or max_len < 1:
            raise ValueError("seq_mean_token_sum_norm needs max_len >= 1")
        return mask / (max_len * sequences)
    raise ValueError(f"unknown loss aggregation {mode!r}; known: {list(AGG_MODES)}")


def aggregate(per_token: torch.Tensor, mask: torch.Tensor, mode: str, max_len: int | None = None) -> torch.Tensor:
    """The scalar loss of one whole batch under `mode` (see the table in the module docstring)."""
    lengths = mask.sum(dim=-1)
    weights = aggregation_weights(mask, mode, int((lengths > 0).sum()), int(lengths.sum()), max_len)
    return (per_token * weights).sum()
