"""Memory at 7B on real DeepSpeed (2 gloo ranks in Ray actors, ZeRO-3, fp32, the session trainer's tiny
model): each memory feature leaves the losses and gradients as they were, to 1e-5.

- `learner.gradient_checkpointing` (policy and critic), against the same ranks with it switched off;
- log-probs and entropy at response positions only, in chunks of `learner.logprob_chunk_tokens`
  (here 4, so every micro-batch runs several chunks and the ranks must agree on their count), against
  one chunk, and against plain torch with full-vocabulary logits over the whole sequences;
- the reference model sharded by a ZeRO-3 inference engine, against the full model in plain torch,
  and holding only its partition on each rank;
- micro-batches by token budget (`max_tokens_per_micro_batch`, sorted by length), against micro-batches
  by count; the old log-probs (scored in the same micro-batches) still give a ratio of exactly 1.

The gradients are read inside each rank just before the optimizer step (DeepSpeed's
`safe_get_full_grad`, on every rank in the same order); the learning rate is so small that the
weights stay put between the variants.
"""
from __future__ import annotations

import pytest
import ray
import torch

from learner import core_algos as algos
from learner.batching import pad
from protocol.batch import TrainBatch
from tests.test_weight_sync import Unplaced, _with

KL, ENTROPY, BUDGET = 0.05, 0.01, 128


def _batch(vocab: int, size: int = 11, seed: int = 5) -> TrainBatch:
    gen = torch.Generator().manual_seed(seed)
    rand = lambda lo, hi: int(torch.randint(lo, hi, (1,), generator=gen))  # noqa: E731
    prompts = [torch.randint(3, vocab, (rand(2, 9),), generator=gen).tolist() for _ in range(size)]
    responses = [torch.randint(3, vocab, (rand(1, 30),), generator=gen).tolist() for _ in range(size)]
    return TrainBatch(prompts, responses, [], torch.randn(size, generator=gen).tolist(),
                      [[1.0] * len(r) for r in responses])


def _capture_gradients(worker) -> None:
    """Inside a rank: keep the full gradient of every parameter just before each optimizer step."""
    import deepspeed

    engine, step = worker.engine, worker.engine.step

    def capturing_step(*args, **kwargs):
        worker.captured = [deepspeed.utils.safe_get_full_grad(p).detach().float().clone()
                           for p in engine.module.parameters()]
        return step(*args, **kwargs)

    engine.step = capturing_step


def _captured(worker) -> list[torch.Tensor]:
    return worker.captured


def _set(worker, chunk: int | None = None, budget: str | int | None = "keep", checkpointing: bool | None = None) -> None:
    model = worker.engine.module
    if chunk is not None:
        model.chunk_tokens = chunk
    if budget != "keep":
        worker.spec.max_tokens_per_micro_batch = budget
    if checkpointing is not None:
        hf = model.lm if hasattr(model, "lm") else model.body
        hf.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False}) if checkpointing \
            else hf.gradient_checkpointing_disable()


def _state(worker) -> dict:
    """What a rank holds: checkpointing on, and the reference model's local share of its parameters."""
    model = worker.engine.module
    hf = model.lm if hasattr(model, "lm") else model.body
    out = {"checkpointing": hf.is_gradient_checkpointing}
    ref = getattr(worker, "ref_model", None)
    if ref is not None:
        params = list(ref.module.parameters())
        out["ref_local"] = sum(p.ds_tensor.numel() if hasattr(p, "ds_tensor") else p.numel() for p in params)
        out["ref_full"] = sum(p.ds_numel if hasattr(p, "ds_numel") else p.numel() for p in params)
    return out


def _apply(group, **settings) -> None:
    ray.get([a.__ray_call__.remote(_set, **settings) for a in group.actors])


def _run(group, batch: TrainBatch, score: str, **settings) -> tuple[dict, list[torch.Tensor], list[list[float]]]:
    """One update of `batch` with `settings` on every rank: (metrics, the gradient, the scores before it)."""
    _apply(group, **settings)
    batch = TrainBatch(**vars(batch))
    scores = getattr(group, score)(batch, 3)
    if score == "old_logprobs":
        batch.old_logprobs, batch.ref_logprobs = scores, group.ref_logprobs(batch, 3)
    else:
        batch.values = scores
    metrics = group.train(batch, 3)
    grads = ray.get(group.actors[0].__ray_call__.remote(_captured))
    return metrics, grads, scores


def _close(a: list[torch.Tensor], b: list[torch.Tensor], tol: float = 1e-5) -> float:
    worst = max(float((x - y).abs().max()) for x, y in zip(a, b, strict=True))
    assert worst <= tol, worst
    return worst


def _plain_torch(model_path: str, batch: TrainBatch) -> tuple[float, list[torch.Tensor], torch.Tensor]:
    """The same loss in plain torch, full-vocabulary logits over the whole sequences, whole batch at
    once: (loss, gradient, reference log-probs [B, L-1])."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32)
    pb = pad(batch, 0, torch.device("cpu"))
    with torch.no_grad():
        ref = algos.token_logprobs(model(input_ids=pb.input_ids, attention_mask=pb.attention_mask).logits[:, :-1],
                                   pb.targets)
    logits = model(input_ids=pb.input_ids, attention_mask=pb.attention_mask).logits[:, :-1]
    logprobs = algos.token_logprobs(logits, pb.targets)
    per_token, _ = algos.policy_loss(logprobs, logprobs.detach(), pb.advantages, clip_low=0.2, clip_high=0.2,
                                     kl=algos.kl_estimator("k3")(logprobs, ref), kl_coef=KL,
                                     entropy=algos.entropy_from_logits(logits), entropy_coef=ENTROPY)
    loss = algos.aggregate(per_token, pb.mask, "token_mean")
    loss.backward()
    return float(loss.detach()), [p.grad for p in model.parameters()], ref * pb.mask


@pytest.fixture(scope="module")
def policy(session_trainer):
    from cluster.handles.groups import LearnerGroup

    cfg = _with(session_trainer.cfg, learner={"zero_stage": 3, "micro_batch_size": 2, "lr": 1e-12,
                                              "gradient_checkpointing": True, "logprob_chunk_tokens": 4,
                                              "max_tokens_per_micro_batch": BUDGET},
                algorithm={"ppo_mini_batches": 1, "kl_coef": KL, "kl_in_reward": False, "kl_estimator": "k3",
                           "entropy_coef": ENTROPY, "tis": "off", "loss_agg": "token_mean"})
    group = LearnerGroup(cfg, session_trainer.model_path, Unplaced())
    try:
        ray.get([a.__ray_call__.remote(_capture_gradients) for a in group.actors])
        yield group
    finally:
        group.kill()


def test_memory_features_leave_the_policy_loss_and_gradient_unchanged(session_trainer, policy):
    from transformers import AutoConfig

    vocab = AutoConfig.from_pretrained(session_trainer.model_path).vocab_size
    batch = _batch(vocab)
    states = ray.get([a.__ray_call__.remote(_state) for a in policy.actors])
    assert all(s["checkpointing"] for s in states)  # learner.gradient_checkpointing reached the ranks
    for s in states:  # the reference model: each rank holds about half of it (small vectors stay whole)
        assert s["ref_local"] < 0.6 * s["ref_full"], s

    every, grads, old = _run(policy, batch, "old_logprobs")
    assert every["ratio_max"] == 1.0 and every["approx_kl"] == 0.0  # scored in the micro-batches trained on
    loss, want, ref = _plain_torch(session_trainer.model_path, batch)
    assert every["loss"] == pytest.approx(loss, abs=1e-5)
    _close(grads, want)
    ref_sharded = TrainBatch(**vars(batch))
    ref_sharded.old_logprobs = policy.ref_logprobs(batch, 3)
    got = pad(ref_sharded, 0, torch.device("cpu")).old_logprobs
    assert float((got - ref).abs().max()) <= 1e-5  # the sharded reference computes the full model's log-probs

    for without in ({"checkpointing": False}, {"chunk": 10**6}, {"budget": None}):
        metrics, other, old_other = _run(policy, batch, "old_logprobs", **without)
        assert metrics["loss"] == pytest.approx(every["loss"], abs=1e-5), without
        assert max(abs(a - b) for x, y in zip(old, old_other) for a, b in zip(x, y)) <= 1e-5, without
        _close(other, grads)
        _apply(policy, checkpointing=True, chunk=4, budget=BUDGET)  # back to every feature on


def test_memory_features_leave_the_critic_loss_and_gradient_unchanged(session_trainer):
    from transformers import AutoConfig

    from cluster.handles.groups import CriticGroup

    cfg = _with(session_trainer.cfg, algorithm={"advantage": "gae", "ppo_mini_batches": 1},
                critic={"zero_stage": 3, "micro_batch_size": 2, "lr": 1e-12, "gradient_checkpointing": True,
                        "max_tokens_per_micro_batch": BUDGET})
    critic = CriticGroup(cfg, session_trainer.model_path, Unplaced())
    try:
        ray.get([a.__ray_call__.remote(_capture_gradients) for a in critic.actors])
        assert all(s["checkpointing"] for s in ray.get([a.__ray_call__.remote(_state) for a in critic.actors]))
        batch = _batch(AutoConfig.from_pretrained(session_trainer.model_path).vocab_size, seed=6)
        gen = torch.Generator().manual_seed(2)
        batch.returns = [torch.randn(len(r), generator=gen).tolist() for r in batch.response_ids]
        every, grads, values = _run(critic, batch, "values")
        assert sum(float(g.abs().max()) > 0 for g in grads) > len(grads) // 2  # real gradients to compare
        for without in ({"checkpointing": False}, {"budget": None}):
            metrics, other, values_other = _run(critic, batch, "values", **without)
            assert metrics["loss"] == pytest.approx(every["loss"], abs=1e-5), without
            assert max(abs(a - b) for x, y in zip(values, values_other) for a, b in zip(x, y)) <= 1e-5
            _close(other, grads)
            _apply(critic, checkpointing=True, budget=BUDGET)
    finally:
        critic.kill()
