"""PPO mini-batches on real DeepSpeed: exactly one optimizer step per mini-batch, whatever the batch
sizes before (ZeRO 1, 2 and 3; 2 gloo ranks in Ray actors, the session trainer's tiny model).

Three calls with 5, 12 and 3 samples, 2 mini-batches each: DeepSpeed's own accumulation counter is
global across calls, so a learner that resized its accumulation per call stepped mid-batch here. The
learner's weights afterwards must equal plain-torch AdamW (same loss, same shuffled mini-batches,
clipping 1.0) on the whole mini-batches, and the engine must have counted 6 steps.
"""
from __future__ import annotations

import pytest
import torch

from learner import core_algos as algos
from learner.batching import mini_batches, pad
from protocol.batch import TrainBatch
from tests.test_weight_sync import Unplaced, _with

SIZES, SEEDS, LR = (5, 12, 3), (11, 12, 13), 1e-3


def _batch(size: int, vocab: int, seed: int) -> TrainBatch:
    gen = torch.Generator().manual_seed(seed)
    rand = lambda lo, hi: int(torch.randint(lo, hi, (1,), generator=gen))  # noqa: E731
    prompts = [torch.randint(3, vocab, (rand(2, 6),), generator=gen).tolist() for _ in range(size)]
    responses = [torch.randint(3, vocab, (rand(1, 8),), generator=gen).tolist() for _ in range(size)]
    advantages = (torch.randn(size, generator=gen)).tolist()
    return TrainBatch(prompts, responses, [], advantages, [[1.0] * len(r) for r in responses])


def _logprobs(model, batch: TrainBatch) -> torch.Tensor:
    pb = pad(batch, 0, torch.device("cpu"))
    return algos.token_logprobs(model(input_ids=pb.input_ids, attention_mask=pb.attention_mask).logits[:, :-1], pb.targets)


def _reference(model_path: str, batches: list[TrainBatch], count: int, epochs: int = 1
               ) -> tuple[torch.nn.Module, list[float]]:
    """Plain torch: the old log-probs of each batch before its first step, then one AdamW step per
    whole mini-batch, `epochs` passes (token-mean PPO loss, clip 0.2, gradient norm clipped to 1).
    Returns the model and, per batch, the mean gradient norm before clipping over its steps."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32)
    optimizer = torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=0.0)
    mean_norms = []
    for batch, seed in zip(batches, SEEDS):
        with torch.no_grad():
            batch.old_logprobs = pad(batch, 0, torch.device("cpu")).response_values(_logprobs(model, batch))
        norms = []
        for indices in [ix for epoch in mini_batches(len(batch), epochs, count, seed) for ix in epoch]:
            sub = batch.select(indices)
            pb = pad(sub, 0, torch.device("cpu"))
            per_token, _ = algos.ppo_clip_loss(_logprobs(model, sub), pb.old_logprobs, pb.advantages, 0.2, 0.2)
            optimizer.zero_grad()
            algos.aggregate(per_token, pb.mask, "token_mean").backward()
            norms.append(float(torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)))
            optimizer.step()
        mean_norms.append(sum(norms) / len(norms))
    return model, mean_norms


@pytest.mark.parametrize("stage, epochs", [(1, 1), (2, 1), (3, 1), (2, 2)])
def test_one_optimizer_step_per_mini_batch_whatever_the_batch_sizes(trainer, tmp_path, stage, epochs):
    """Also the gradient itself, not only the weights (AdamW's first steps hide a constant scale): each
    call's mean gradient norm before clipping, as DeepSpeed reports it after reducing the ranks'
    micro-batches (2 per rank per mini-batch here), equals plain torch's on the whole mini-batch; and
    with ppo_epochs=2 the second pass over the batch matches the reference too."""
    from transformers import AutoModelForCausalLM

    from cluster.handles.groups import LearnerGroup

    cfg = _with(trainer.cfg, learner={"zero_stage": stage, "micro_batch_size": 2, "lr": LR},
                algorithm={"ppo_mini_batches": 2, "ppo_epochs": epochs, "kl_coef": 0.0, "tis": "off",
                           "entropy_coef": 0.0})
    vocab = AutoModelForCausalLM.from_pretrained(trainer.model_path).config.vocab_size
    batches = [_batch(size, vocab, seed) for size, seed in zip(SIZES, SEEDS)]
    learners = LearnerGroup(cfg, trainer.model_path, Unplaced())
    try:
        runs = []
        for batch, seed in zip(batches, SEEDS):
            batch = TrainBatch(**vars(batch))
            batch.old_logprobs = learners.old_logprobs(batch, seed)
            runs.append((batch.old_logprobs, learners.train(batch, seed)))
        learners.save_hf(str(tmp_path / "model"))
        single = _batch(1, vocab, 99)  # one sample: one mini-batch, the ratio against the old policy is exactly 1
        single.old_logprobs = learners.old_logprobs(single, 7)
        first_only = learners.train(single, 7)
    finally:
        learners.kill()
    assert [metrics["optimizer_steps"] for _, metrics in runs] == [2.0 * epochs] * 3
    assert first_only["optimizer_steps"] == 1.0 * epochs
    if epochs == 1:
        assert first_only["ratio_max"] == 1.0 and first_only["approx_kl"] == 0.0 and first_only["clip_frac"] == 0.0
    assert max(metrics["ratio_max"] for _, metrics in runs) > 1.0  # from the second mini-batch on, the ratio moves

    reference, norms = _reference(trainer.model_path, batches, count=2, epochs=epochs)
    for (old, _), batch in zip(runs, batches):  # the learner's old log-probs are the policy's before the call
        assert max(abs(a - b) for got, want in zip(old, batch.old_logprobs) for a, b in zip(got, want)) < 1e-4
    for (_, metrics), norm in zip(runs, norms):
        assert metrics["grad_norm"] == pytest.approx(norm, rel=1e-3), (metrics["grad_norm"], norm)
    got = AutoModelForCausalLM.from_pretrained(tmp_path / "model", dtype=torch.float32).state_dict()
    want = reference.state_dict()
    base = AutoModelForCausalLM.from_pretrained(trainer.model_path, dtype=torch.float32).state_dict()
    for name, value in want.items():
        moved = (value - base[name]).abs().max()
        assert (got[name] - value).abs().max() <= 0.02 * LR + 1e-6, (name, float(moved))
