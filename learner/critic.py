"""The critic's DeepSpeed ZeRO rank: a value model (the policy's architecture, its transformer body
initialised from the same checkpoint, with a scalar head instead of the language-model head) trained
on GAE returns with a clipped value loss. Its own group of Ray actors (cluster/handles/groups.py CriticGroup),
used when `algorithm.advantage=gae`.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from learner import core_algos as algos
from learner.batching import PaddedBatch
from learner.ds_rank import DeepSpeedRank, RankSpec
from protocol.batch import TrainBatch


@dataclass
class CriticSpec(RankSpec):
    """The critic rank's settings; every field comes from the config (cluster/loop/specs.py `spec_from`)."""

    value_clip: float | None


class ValueModel(torch.nn.Module):
    """Transformer body + a bias-free linear head giving one value per position, [B, L]."""

    def __init__(self, body: torch.nn.Module, hidden_size: int) -> None:
        super().__init__()
        self.body = body
        self.value_head = torch.nn.Linear(hidden_size, 1, bias=False, dtype=next(body.parameters()).dtype)
        # Small values at the start (OpenRLHF's value-head init), so early advantages are ~ the returns.
        torch.nn.init.normal_(self.value_head.weight, std=1.0 / (hidden_size + 1))

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.body(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).last_hidden_state
        return self.value_head(hidden).squeeze(-1)


def forward_values(model: torch.nn.Module, pb: PaddedBatch) -> torch.Tensor:
    """V(state before token t+1) in column t, [B, L-1]: aligned with the policy's log-probs."""
    return model(input_ids=pb.input_ids, attention_mask=pb.attention_mask)[:, :-1].float()


class CriticWorker(DeepSpeedRank):
    spec: CriticSpec

    def _build_model(self, dtype: torch.dtype) -> torch.nn.Module:
        from transformers import AutoConfig, AutoModel

        config = AutoConfig.from_pretrained(self.spec.model_path)
        self.pad_id = int(config.pad_token_id or config.eos_token_id or 0)
        body = AutoModel.from_pretrained(self.spec.model_path, dtype=dtype)  # the causal LM minus its head
        self._checkpointing(body)
        return ValueModel(body, config.hidden_size)

    def values(self, batch: TrainBatch, seed: int | None = None) -> list[tuple[int, list[float]]]:
        """(sample index, per-token values) of this rank's samples before the update."""
        self.engine.eval()
        return self._score(batch, seed, lambda pb: forward_values(self.engine, pb))

    def train_step(self, batch: TrainBatch, seed: int | None = None) -> dict[str, float]:
        """The critic update on `batch` (needs `values` and `returns`): the same epochs, mini-batches
        and shuffle as the policy's, token-mean clipped value loss. Per-rank sums, as the policy's."""
        if len(batch) and not (len(batch.values) == len(batch.returns) == len(batch)):
            raise ValueError("critic train_step: the batch needs values and returns (GAE)")
        return self._optimise(batch, seed, self._value_loss, "token_mean")

    def _value_loss(self, pb: PaddedBatch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        return algos.value_loss(forward_values(self.engine, pb), pb.values, pb.returns, self.spec.value_clip)
