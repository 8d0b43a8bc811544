"""Turn ragged (prompt, response) lists into padded tensors aligned with next-token logits, and lay a
batch out into PPO epochs, mini-batches and per-rank micro-batches."""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from protocol.batch import TrainBatch


@dataclass
class PaddedBatch:
    """Row i holds prompt+response; column t of the [B, L-1] tensors refers to the token at t+1.

    `mask[i, t]` is 1 where token t+1 is a response token that counts in the loss. Per-token fields
    the batch does not carry are None (`old_logprobs`, `advantages` and `mask` are always present).
    """

    input_ids: torch.Tensor  # [B, L]
    attention_mask: torch.Tensor  # [B, L]
    targets: torch.Tensor  # [B, L-1]
    old_logprobs: torch.Tensor  # [B, L-1] (zeros when the batch has none)
    behaviour_logprobs: torch.Tensor | None  # [B, L-1]: the rollout engine's
    ref_logprobs: torch.Tensor | None  # [B, L-1]
    values: torch.Tensor | None  # [B, L-1]: the critic's, before the update
    returns: torch.Tensor | None  # [B, L-1]
    advantages: torch.Tensor  # [B, L-1] (a per-sample advantage is repeated over its response)
    mask: torch.Tensor  # [B, L-1]
    response_starts: list[int]
    response_lens: list[int]

    def response_index(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(rows, columns) of every response position of the [B, L-1] tensors, sample by sample."""
        rows = [i for i, n in enumerate(self.response_lens) for _ in range(n)]
        cols = [s + j for s, n in zip(self.response_starts, self.response_lens) for j in range(n)]
        device = self.targets.device
        return torch.tensor(rows, dtype=torch.long, device=device), torch.tensor(cols, dtype=torch.long, device=device)

    def scatter(self, rows: torch.Tensor, cols: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
        """A [B, L-1] fp32 tensor holding `values` at (rows, cols) and 0 elsewhere (differentiable)."""
        out = torch.zeros(self.targets.shape, dtype=torch.float32, device=values.device)
        return out.index_put((rows, cols), values.float())

    def response_values(self, per_token: torch.Tensor) -> list[list[float]]:
        """Cut a [B, L-1] tensor back into per-sample response lists."""
        rows = per_token.detach().float().cpu()
        return [rows[i, s: s + n].tolist() for i, (s, n) in enumerate(zip(self.response_starts, self.response_lens))]


def _per_token(rows: list[list[float]], starts: list[int], shape: tuple[int, int]) -> torch.Tensor:
    out = torch.zeros(shape)
    for i, (start, row) in enumerate(zip(starts, rows)):
        if row:
            out[i, start: start + len(row)] = torch.tensor(row, dtype=torch.float32)
    return out


def pad(batch: TrainBatch, pad_id: int, device: torch.device) -> PaddedBatch:
    seqs = [p + r for p, r in zip(batch.prompt_ids, batch.response_ids)]
    size, length = len(seqs), max(len(s) for s in seqs)
    input_ids = torch.full((size, length), pad_id, dtype=torch.long)
    attention = torch.zeros((size, length), dtype=torch.long)
    for i, seq in enumerate(seqs):
        input_ids[i, : len(seq)] = torch.tensor(seq)
        attention[i, : len(seq)] = 1
    starts = [len(p) - 1 for p in batch.prompt_ids]
    lens = [len(r) for r in batch.response_ids]
    shape = (size, length - 1)
    mask_rows = batch.loss_mask or [[1.0] * n for n in lens]
    adv = batch.advantages or [0.0] * size
    adv_rows = [a if isinstance(a, list) else [float(a)] * n for a, n in zip(adv, lens)]
    optional = {name: _per_token(getattr(batch, name), starts, shape).to(device) if getattr(batch, name) else None
                for name in ("behaviour_logprobs", "ref_logprobs", "values", "returns")}
    return PaddedBatch(input_ids.to(device), attention.to(device), input_ids[:, 1:].to(device),
                       _per_token(batch.old_logprobs, starts, shape).to(device), **optional,
                       advantages=_per_token(adv_rows, starts, shape).to(device),
                       mask=_per_token(mask_rows, starts, shape).to(device), response_starts=starts, response_lens=lens)


def split(batch: TrainBatch, parts: int) -> list[TrainBatch]:
    """Exactly `parts` consecutive, near-equal micro-batches (every rank must run the same count)."""
    return [batch.select(part) for part in split_indices(list(range(len(batch))), parts)]


def split_indices(indices: list[int], parts: int) -> list[list[int]]:
    """`indices` cut into exactly `parts` consecutive, near-equal pieces (some may be empty)."""
    bounds = [len(indices) * k // parts for k in range(parts + 1)]
    return [indices[lo:hi] for lo, hi in zip(bounds, bounds[1:])]


def epoch_order(size: int, epoch: int, seed: int | None) -> list[int]:
    """The sample order of one PPO epoch: a permutation drawn from (seed, epoch), identity for None."""
    if seed is None:
        return list(range(size))
    return np.random.default_rng([seed, epoch]).permutation(size).tolist()


def mini_batches(size: int, epochs: int, count: int, seed: int | None) -> list[list[list[int]]]:
    """[epoch][mini-batch] -> global sample indices. Each epoch shuffles the batch (`epoch_order`) and
    cuts it into `count` near-equal mini-batches (fewer when the batch has fewer samples; none when
    it is empty). Each mini-batch is one optimizer step. A pure function of its arguments, so every
    rank, and a resumed run, lays the batch out the same way."""
    count = min(count, size)
    return [split_indices(epoch_order(size, epoch, seed), count) if count else [] for epoch in range(epochs)]


def rank_micro_batches(indices: list[int], rank: int, world_size: int, micro_batch_size: int,
                       lengths: list[int] | None = None, max_tokens: int | None = None) -> list[list[int]]:
    """This rank's share of one mini-batch, cut into micro-batches. Every rank gets the same number of
    micro-batches (ZeRO-3 gathers weights collectively in every forward); a rank with fewer samples
    gets empty ones. A pure function of its arguments: the scoring forwards before an update and the
    first mini-batch's training forwards lay the samples out identically.

    Without `max_tokens`: every world_size-th sample, in micro-batches of at most `micro_batch_size`.
    With `max_tokens` (needs `lengths`, each sample's prompt + response tokens): the mini-batch sorted
    longest first and dealt to the ranks in turn (similar token counts per rank), each share packed
    in order into micro-batches whose padded size (samples x the longest) stays within `max_tokens`;
    sorting keeps similar lengths together, so little padding is computed. A sample longer than the
    budget gets a micro-batch of its own (cluster/config.py refuses such budgets)."""
    if max_tokens is None:
        parts = max(1, math.ceil(len(indices) / world_size / micro_batch_size))
        return split_indices(indices[rank::world_size], parts)
    if lengths is None:
        raise ValueError("rank_micro_batches: a token budget needs the sample lengths")
    order = sorted(indices, key=lambda i: (-lengths[i], i))
    plans = [pack_by_tokens(order[r::world_size], lengths, max_tokens) for r in range(world_size)]
    count = max(1, max(len(plan) for plan in plans))
    return plans[rank] + [[] for _ in range(count - len(plans[rank]))]


def pack_by_tokens(longest_first: list[int], lengths: list[int], max_tokens: int) -> list[list[int]]:
    """Consecutive micro-batches of `longest_first` (sorted by length, longest first) whose padded size,
    samples x the first (longest) sample's length, stays within `max_tokens`."""
    out: list[list[int]] = []
    for i in longest_first:
        if out and (len(out[-1]) + 1) * lengths[out[-1][0]] <= max_tokens:
            out[-1].append(i)
        else:
            out.append([i])
    return out


def padded_tokens(lengths: list[int], micro_batches: list[list[int]]) -> int:
    """Tokens a forward computes over these micro-batches: each padded to its longest sample."""
    return sum(len(m) * max(lengths[i] for i in m) for m in micro_batches if m)
