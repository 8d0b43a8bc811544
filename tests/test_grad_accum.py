"""Gradient accumulation dtype on real DeepSpeed 0.19.8 (CPU, gloo, one rank in a spawned process).

The project's DeepSpeedRank (learner/ds_rank.py: its DeepSpeed config and its `_optimise` loop, the
accumulation boundary set by hand) trains a small bf16 model on one mini-batch of 128 micro-batches,
as the SimpleRL-Zoo config does per optimizer step. Just before the optimizer step the rank reads
the accumulated gradient of every parameter (deepspeed.utils.safe_get_full_grad). The reference is
plain torch: the same bf16 model and the same padded micro-batches, each micro-batch's gradient
computed by autograd and summed in fp32. With `grad_accum_dtype="float32"` (the default) DeepSpeed's
sum must equal it to fp32 rounding at ZeRO 1, 2 and 3; with "model" (DeepSpeed's own default: the
model's bf16) it drifts by orders of magnitude more. Without ZeRO DeepSpeed refuses bf16 with fp32
accumulation, which is why the config rejects that combination.
One rank: the accumulation is each rank's own running sum (the reduce is per micro-batch, in bf16, in
both settings).
"""
from __future__ import annotations

import os
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from typing import Any

import pytest
import torch

from learner import core_algos as algos
from learner.batching import PaddedBatch
from learner.ds_rank import DeepSpeedRank, RankSpec
from protocol.batch import TrainBatch

VOCAB, WIDTH, MICRO_BATCHES, RESPONSE = 64, 32, 128, 6


class Bigram(torch.nn.Module):
    """The next token's logits from the current token: embedding, a hidden layer, the head."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = torch.nn.Embedding(VOCAB, WIDTH)
        self.hidden = torch.nn.Linear(WIDTH, WIDTH)
        self.head = torch.nn.Linear(WIDTH, VOCAB)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.head(torch.tanh(self.hidden(self.embed(input_ids))))


def policy_terms(model: torch.nn.Module, pb: PaddedBatch) -> torch.Tensor:
    """-advantage x log-prob of each target token (the policy-gradient term), [B, L-1], fp32."""
    logits = model(pb.input_ids)[:, :-1].float()
    logprobs = torch.log_softmax(logits, -1).gather(-1, pb.targets.unsqueeze(-1)).squeeze(-1)
    return -pb.advantages * logprobs


class GradProbe(DeepSpeedRank):
    """DeepSpeedRank around a Bigram; keeps its initial weights, the padded micro-batches it trained on,
    and the accumulated gradients at the optimizer step."""

    def _build_model(self, dtype: torch.dtype) -> torch.nn.Module:
        torch.manual_seed(0)
        model = Bigram().to(dtype)
        self.initial = {k: v.detach().clone() for k, v in model.state_dict().items()}
        self.padded: list[PaddedBatch] = []
        return model

    def _pad(self, batch: TrainBatch, indices: list[int]) -> PaddedBatch:
        pb = super()._pad(batch, indices)
        self.padded.append(pb)
        return pb

    def _optimizer_step(self) -> None:
        from deepspeed.utils import safe_get_full_grad

        self.grads = {n: safe_get_full_grad(p).float().clone() for n, p in self.engine.module.named_parameters()}
        super()._optimizer_step()

    def loss(self, pb: PaddedBatch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        return policy_terms(self.engine, pb), {}


def _batch() -> TrainBatch:
    gen = torch.Generator().manual_seed(3)
    prompts = torch.randint(0, VOCAB, (MICRO_BATCHES, 2), generator=gen).tolist()
    responses = torch.randint(0, VOCAB, (MICRO_BATCHES, RESPONSE), generator=gen).tolist()
    advantages = torch.randn(MICRO_BATCHES, generator=gen).tolist()
    return TrainBatch(prompts, responses, [], advantages, [[1.0] * RESPONSE for _ in range(MICRO_BATCHES)])


def _reference(probe: GradProbe, batch: TrainBatch) -> dict[str, torch.Tensor]:
    """Plain torch: the bf16 model, each micro-batch's gradient summed in fp32."""
    model = Bigram().to(torch.bfloat16)
    model.load_state_dict(probe.initial)
    total_tokens, num_sequences = algos.batch_normalisers(batch.loss_mask)
    sums = {n: torch.zeros_like(p, dtype=torch.float32) for n, p in model.named_parameters()}
    for pb in probe.padded:
        weights = algos.aggregation_weights(pb.mask, "token_mean", num_sequences, total_tokens, 0)
        model.zero_grad(set_to_none=True)
        (policy_terms(model, pb) * weights).sum().backward()
        for n, p in model.named_parameters():
            sums[n] += p.grad.float()
    return sums


def _relative_error(got: dict[str, torch.Tensor], want: dict[str, torch.Tensor]) -> float:
    diff = sum(float((got[n] - want[n]).double().pow(2).sum()) for n in want)
    return (diff / sum(float(w.double().pow(2).sum()) for w in want.values())) ** 0.5


def _spec(stage: int, accum: str) -> RankSpec:
    return RankSpec(model_path="", device="cpu", dtype="bfloat16", zero_stage=stage, lr=1e-3, weight_decay=0.0,
                    grad_clip=1.0, micro_batch_size=1, max_tokens_per_micro_batch=None, gradient_checkpointing=False,
                    ppo_epochs=1, ppo_mini_batches=1, seed=0, grad_accum_dtype=accum, collective_timeout_s=120.0,
                    cpus_per_rank=0.5)


def _accumulation_errors() -> dict[str, Any]:
    """In a fresh process: {"<stage>/<accum>": relative error against the reference, "0/float32": the
    error DeepSpeed raises}."""
    from protocol.endpoints import free_port

    os.environ["DS_ACCELERATOR"] = "cpu"
    port, out, batch = free_port(), {}, _batch()
    for stage in (1, 2, 3):
        for accum in ("float32", "model"):
            probe = GradProbe(0, 1, _spec(stage, accum))
            probe.setup("127.0.0.1", port)
            sums = probe._optimise(batch, 0, probe.loss, "token_mean")
            assert sums["optimizer_steps"] == 1.0 and len(probe.padded) == MICRO_BATCHES
            out[f"{stage}/{accum}"] = _relative_error(probe.grads, _reference(probe, batch))
    try:
        GradProbe(0, 1, _spec(0, "float32")).setup("127.0.0.1", port)
        out["0/float32"] = "accepted"
    except NotImplementedError as err:
        out["0/float32"] = str(err)
    return out


@pytest.fixture(scope="module")
def errors() -> dict[str, Any]:
    with ProcessPoolExecutor(1, mp_context=get_context("spawn")) as pool:
        return pool.submit(_accumulation_errors).result(timeout=600)


@pytest.mark.parametrize("stage", [1, 2, 3])
def test_fp32_accumulation_matches_plain_torch_and_bf16_drifts(errors, stage):
    ours, bf16 = errors[f"{stage}/float32"], errors[f"{stage}/model"]
    assert ours < 1e-5, errors
    assert bf16 > 1e-3 and bf16 > 100 * ours, errors


def test_deepspeed_refuses_bf16_with_fp32_accumulation_without_zero(errors):
    assert "unsupported mix" in errors["0/float32"]
