"""Turn ragged (prompt, response) lists into padded tensors aligned with next-token logits."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from protocol.batch import TrainBatch


@dataclass
class PaddedBatch:
    """Row i holds prompt+response; column t of the *_tok tensors refers to the token at t+1.

    `mask[i, t]` is 1 where token t+1 is a response token that counts in the loss.
    """

    input_ids: torch.Tensor  # [B, L]
    attention_mask: torch.Tensor  # [B, L]
    targets: torch.Tensor  # [B, L-1]
    old_logprobs: torch.Tensor  # [B, L-1]
    behaviour_logprobs: torch.Tensor | None  # [B, L-1]; None: on-policy batch (see TrainBatch)
    advantages: torch.Tensor  # [B]
    mask: torch.Tensor  # [B, L-1]
    response_starts: list[int]
    response_lens: list[int]

    def response_values(self, per_token: torch.Tensor) -> list[list[float]]:
        """Cut a [B, L-1] tensor back into per-sample response lists."""
        rows = per_token.detach().cpu()
        return [rows[i, s: s + n].tolist() for i, (s, n) in enumerate(zip(self.response_starts, self.response_lens))]


def pad(batch: TrainBatch, pad_id: int, device: torch.device) -> PaddedBatch:
    seqs = [p + r for p, r in zip(batch.prompt_ids, batch.response_ids)]
    size, length = len(seqs), max(len(s) for s in seqs)
    input_ids = torch.full((size, length), pad_id, dtype=torch.long)
    attention = torch.zeros((size, length), dtype=torch.long)
    old = torch.zeros((size, length - 1))
    behaviour = torch.zeros((size, length - 1)) if batch.behaviour_logprobs else None
    mask = torch.zeros((size, length - 1))
    starts, lens = [], []
    for i, (prompt, response) in enumerate(zip(batch.prompt_ids, batch.response_ids)):
        seq = prompt + response
        input_ids[i, : len(seq)] = torch.tensor(seq)
        attention[i, : len(seq)] = 1
        start = len(prompt) - 1
        starts.append(start)
        lens.append(len(response))
        if response:
            if batch.old_logprobs:
                old[i, start: start + len(response)] = torch.tensor(batch.old_logprobs[i], dtype=torch.float32)
            if behaviour is not None:
                behaviour[i, start: start + len(response)] = torch.tensor(batch.behaviour_logprobs[i])
            loss_mask = batch.loss_mask[i] if batch.loss_mask else [1.0] * len(response)
            mask[i, start: start + len(response)] = torch.tensor(loss_mask, dtype=torch.float32)
    adv = torch.tensor(batch.advantages or [0.0] * size, dtype=torch.float32)
    return PaddedBatch(input_ids.to(device), attention.to(device), input_ids[:, 1:].to(device), old.to(device),
                       None if behaviour is None else behaviour.to(device), adv.to(device), mask.to(device), starts, lens)


def split(batch: TrainBatch, parts: int) -> list[TrainBatch]:
    """Exactly `parts` consecutive, near-equal micro-batches (every rank must run the same count)."""
    size = len(batch)
    bounds = [size * k // parts for k in range(parts + 1)]
    out = []
    for lo, hi in zip(bounds, bounds[1:]):
        out.append(TrainBatch(batch.prompt_ids[lo:hi], batch.response_ids[lo:hi], batch.old_logprobs[lo:hi],
                              batch.advantages[lo:hi], batch.loss_mask[lo:hi], batch.behaviour_logprobs[lo:hi]))
    return out
