"""LearnerWorker.train_step's gradient scaling, with a fake DeepSpeed engine (pure torch, no Ray).

The fake engine does what DeepSpeed does to gradients with one accumulation step (the learner's
setting): `backward` accumulates them, `step` acts only at the boundary the learner sets, and the
ranks' gradients are averaged (here: by the test). tests/test_optimizer_steps.py runs real DeepSpeed.
"""
import dataclasses
from types import SimpleNamespace

import pytest
import torch

from learner import core_algos as algos
from learner.batching import pad
from learner.policy_model import PolicyModel
from learner.worker import LearnerSpec, LearnerWorker
from protocol.batch import TrainBatch

VOCAB = 11


class TinyBody(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = torch.nn.Embedding(VOCAB, 8)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, use_cache: bool = False) -> SimpleNamespace:
        return SimpleNamespace(last_hidden_state=torch.tanh(self.embed(input_ids)))


class TinyLM(torch.nn.Module):
    """The layout of a transformers causal LM (`model` body, `lm_head`); called, it gives full logits."""

    def __init__(self, seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.model = TinyBody()
        self.lm_head = torch.nn.Linear(8, VOCAB)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> SimpleNamespace:
        return SimpleNamespace(logits=self.lm_head(self.model(input_ids, attention_mask).last_hidden_state))


class FakeEngine:
    def __init__(self, module: torch.nn.Module) -> None:
        self.module, self.boundary, self.global_steps = module, False, 0
        self.device = torch.device("cpu")

    def __call__(self, **kwargs):
        return self.module(**kwargs)

    def set_gradient_accumulation_boundary(self, boundary: bool) -> None:
        self.boundary = boundary

    def backward(self, loss: torch.Tensor) -> None:
        loss.backward()

    def train(self) -> None: ...
    def eval(self) -> None: ...

    def step(self) -> None:
        self.global_steps += self.boundary  # gradients stay for the test to read

    def get_global_grad_norm(self) -> float:
        return 0.0


def _spec(**fields) -> LearnerSpec:
    base = dict(model_path="", device="cpu", dtype="float32", zero_stage=0, lr=1.0, weight_decay=0.0, grad_clip=1.0,
                micro_batch_size=2, max_tokens_per_micro_batch=None, gradient_checkpointing=False,
                logprob_chunk_tokens=3, ppo_epochs=1, ppo_mini_batches=1, seed=0, grad_accum_dtype="float32", collective_timeout_s=60.0,
                cpus_per_rank=0.5, clip_low=0.2,
                clip_high=0.2, dual_clip=None, loss_agg="token_mean", max_response_len=6, entropy_coef=0.0,
                kl_coef=0.0, kl_estimator="k3", kl_in_reward=False, tis="off", tis_cap=None, temperature=1.0)
    return LearnerSpec(**{**base, **fields})


def _batch() -> TrainBatch:
    gen = torch.Generator().manual_seed(1)
    lengths = [4, 1, 6, 3, 5]
    prompts = [[1, 2], [3], [4, 5, 6], [2], [7, 8]]
    responses = [torch.randint(0, VOCAB, (n,), generator=gen).tolist() for n in lengths]
    old = [(-torch.rand(n, generator=gen)).tolist() for n in lengths]
    masks = [[1.0] * n for n in lengths]
    masks[3] = [0.0] * 3  # a masked (truncated) response
    behaviour = [(torch.tensor(o) - 0.3 * torch.rand(len(o), generator=gen)).tolist() for o in old]
    pb = pad(TrainBatch(prompts, responses, [], [], masks), 0, torch.device("cpu"))
    with torch.no_grad():
        ref = pb.response_values(algos.token_logprobs(TinyLM(seed=1)(pb.input_ids, pb.attention_mask).logits[:, :-1], pb.targets))
    return TrainBatch(prompts, responses, old, [1.0, -0.5, 2.0, 0.3, -1.0], masks, behaviour, ref_logprobs=ref)


def _worker_run(batch: TrainBatch, spec: LearnerSpec, world: int) -> tuple[list[torch.Tensor], float]:
    """(rank-averaged gradients, summed reported loss) of one train_step on every fake rank."""
    per_rank, loss = [], 0.0
    for rank in range(world):
        worker = LearnerWorker(rank, world, spec)
        worker.engine = FakeEngine(PolicyModel(TinyLM(), spec.logprob_chunk_tokens))
        out = worker.train_step(batch)
        assert out["optimizer_steps"] == 1.0
        loss += out["loss"]
        per_rank.append([p.grad.clone() for p in worker.engine.module.parameters()])
    return [sum(g) / world for g in zip(*per_rank)], loss  # gradients: the all-reduce average


def _reference_run(batch: TrainBatch, spec: LearnerSpec) -> tuple[list[torch.Tensor], float]:
    """The same loss on the whole batch in one piece."""
    model = TinyLM()
    pb = pad(batch, 0, torch.device("cpu"))
    logits = model(pb.input_ids, pb.attention_mask).logits[:, :-1] / spec.temperature  # the sampling distribution
    logprobs = algos.token_logprobs(logits, pb.targets)
    kl = None
    if spec.kl_coef > 0 and not spec.kl_in_reward:
        ref = algos.token_logprobs(TinyLM(seed=1)(pb.input_ids, pb.attention_mask).logits[:, :-1], pb.targets)
        kl = algos.KL_ESTIMATORS[spec.kl_estimator](logprobs, ref.detach())
    weights = None
    if spec.tis != "off":  # straight from the definition: pi_old / pi_behaviour per token or per response
        log_w = pb.old_logprobs - pb.behaviour_logprobs  # padding holds 0 in both
        if spec.tis == "sequence":
            log_w = log_w.sum(-1, keepdim=True).expand_as(log_w)
        weights = torch.exp(log_w).clamp(max=spec.tis_cap)
    per_token, _ = algos.policy_loss(logprobs, pb.old_logprobs, pb.advantages, clip_low=spec.clip_low,
                                     clip_high=spec.clip_high, dual_clip=spec.dual_clip, kl=kl, kl_coef=spec.kl_coef,
                                     entropy=algos.entropy_from_logits(logits), entropy_coef=spec.entropy_coef,
                                     is_weights=weights)
    loss = algos.aggregate(per_token, pb.mask, spec.loss_agg, spec.max_response_len)
    loss.backward()
    return [p.grad for p in model.parameters()], loss.item()


def _assert_matches_reference(spec: LearnerSpec, world: int) -> None:
    (grads, loss), (want_grads, want_loss) = _worker_run(_batch(), spec, world), _reference_run(_batch(), spec)
    assert loss == pytest.approx(want_loss, rel=1e-5)
    for got, want in zip(grads, want_grads):
        assert torch.allclose(got, want, atol=1e-6, rtol=1e-4)


@pytest.mark.parametrize("mode", list(algos.AGG_MODES))
@pytest.mark.parametrize("world, micro", [(1, 8), (2, 1), (2, 2), (3, 1)])
def test_train_step_gradient_equals_global_aggregate(mode, world, micro):
    spec = _spec(micro_batch_size=micro, loss_agg=mode, dual_clip=2.0, entropy_coef=0.01)
    _assert_matches_reference(spec, world)


@pytest.mark.parametrize("temperature", [0.6, 1.7])
def test_train_step_log_probs_and_entropy_are_at_the_rollout_temperature(temperature):
    """The ratio, the loss and the entropy bonus use softmax(logits / T), the distribution the engine
    sampled from; the same spec at T = 1 gives a different loss."""
    spec = _spec(micro_batch_size=2, entropy_coef=0.01, temperature=temperature)
    _assert_matches_reference(spec, world=2)
    assert _worker_run(_batch(), spec, 2)[1] != pytest.approx(_worker_run(_batch(), _spec(micro_batch_size=2, entropy_coef=0.01), 2)[1])


@pytest.mark.parametrize("world, budget", [(1, 9), (2, 12), (3, 9), (2, 1000)])
def test_token_budget_micro_batches_give_the_global_aggregate(world, budget):
    """Micro-batches by padded-token budget (sorted by length, dealt to the ranks): the same gradient."""
    spec = _spec(micro_batch_size=1, max_tokens_per_micro_batch=budget, loss_agg="seq_mean_token_mean",
                 entropy_coef=0.01, kl_coef=0.5)
    _assert_matches_reference(spec, world)


@pytest.mark.parametrize("level", ["token", "sequence"])
def test_train_step_weights_the_ppo_term_by_truncated_importance_ratios(level):
    """pi_old (the batch's old log-probs) over pi_behaviour (the rollout's), capped, per token or per response."""
    spec = _spec(micro_batch_size=2, tis=level, tis_cap=1.2, kl_coef=0.5)
    _assert_matches_reference(spec, world=2)
    assert _worker_run(_batch(), spec, 2)[1] != pytest.approx(_worker_run(_batch(), _spec(micro_batch_size=2, kl_coef=0.5), 2)[1])


@pytest.mark.parametrize("estimator, in_reward", [("k1", False), ("k2", False), ("k3", False), ("k3", True)])
def test_train_step_kl_term(estimator, in_reward):
    spec = _spec(micro_batch_size=2, kl_coef=0.5, kl_estimator=estimator, kl_in_reward=in_reward)
    _assert_matches_reference(spec, world=2)


def test_train_step_kl_in_reward_adds_no_loss_term():
    base = _spec(micro_batch_size=2)
    in_reward = _spec(micro_batch_size=2, kl_coef=0.5, kl_in_reward=True)
    assert _worker_run(_batch(), in_reward, 2)[1] == pytest.approx(_worker_run(_batch(), base, 2)[1])


@pytest.mark.parametrize("temperature", [1.0, 0.6])
def test_sft_step_reports_the_token_mean_nll_whatever_the_policy_aggregation(temperature):
    """The supervised loss is the plain (temperature 1) NLL, whatever the rollout temperature."""
    batch = _batch()
    spec = _spec(micro_batch_size=2, loss_agg="seq_mean_token_sum", temperature=temperature)
    worker = LearnerWorker(0, 1, spec)
    worker.engine = FakeEngine(PolicyModel(TinyLM(), spec.logprob_chunk_tokens))
    pb = pad(batch, 0, torch.device("cpu"))
    with torch.no_grad():
        nll = -algos.token_logprobs(TinyLM()(pb.input_ids, pb.attention_mask).logits[:, :-1], pb.targets)
    got = worker.train_step(batch, loss="sft")["loss"]
    assert got == pytest.approx(algos.masked_mean(nll, pb.mask).item(), rel=1e-5)


def test_a_single_update_takes_the_old_log_probs_from_its_training_forward():
    """One optimizer step per batch: a batch without old log-probs trains exactly as one carrying the
    policy's own log-probs (what the skipped separate pass would give): same loss, same gradients, same
    TIS weights and mismatch statistic. With two mini-batches the old log-probs must be given."""
    spec = _spec(micro_batch_size=2, tis="token", tis_cap=1.5, entropy_coef=0.01, temperature=0.7)
    batch = _batch()
    pb = pad(batch, 0, torch.device("cpu"))
    with torch.no_grad():
        own = pb.response_values(algos.token_logprobs(TinyLM()(pb.input_ids, pb.attention_mask).logits[:, :-1] / 0.7,
                                                      pb.targets))
    (got, loss), (want, want_loss) = (_worker_run(dataclasses.replace(batch, old_logprobs=[]), spec, 2),
                                      _worker_run(dataclasses.replace(batch, old_logprobs=own), spec, 2))
    assert loss == pytest.approx(want_loss, rel=1e-6)
    for g, w in zip(got, want):
        assert torch.allclose(g, w, atol=1e-7, rtol=1e-5)
    worker = LearnerWorker(0, 1, spec)
    worker.engine = FakeEngine(PolicyModel(TinyLM(), spec.logprob_chunk_tokens))
    fused = worker.train_step(dataclasses.replace(batch, old_logprobs=[]))
    assert fused["ratio_max"] == 1.0 and fused["rollout_logprob_diff_max"] > 0
    with pytest.raises(ValueError, match="no old_logprobs"):
        LearnerWorker(0, 1, _spec(ppo_mini_batches=2)).train_step(dataclasses.replace(batch, old_logprobs=[]))
