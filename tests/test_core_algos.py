"""Advantage estimators, losses, KL estimators and loss aggregation against hand-computed values."""
import math

import pytest
import torch

from learner import core_algos as algos
from learner.batching import pad, split
from protocol.batch import Sample, TrainBatch

# ---- advantage estimators ---------------------------------------------------------------------


def test_grpo_advantages_hand_computed():
    rewards = torch.tensor([1.0, 0.0, 0.0, 0.0, 1.0, 1.0, 1.0, 1.0])
    adv = algos.grpo_advantages(rewards, group_size=4, eps=0.0 + 1e-12)
    # group 1: mean 0.25, unbiased std sqrt(0.25) = 0.5 -> (1-0.25)/0.5 = 1.5, (0-0.25)/0.5 = -0.5
    assert torch.allclose(adv[:4], torch.tensor([1.5, -0.5, -0.5, -0.5]), atol=1e-5)
    # group 2: all equal -> no signal
    assert torch.allclose(adv[4:], torch.zeros(4))


def test_dr_grpo_advantages_hand_computed():
    rewards = torch.tensor([1.0, 0.0, 0.0, 0.0, 1.0, 1.0, 1.0, 1.0])
    adv = algos.dr_grpo_advantages(rewards, group_size=4)
    # group 1: mean 0.25 and no division by the std -> 0.75, -0.25, -0.25, -0.25; group 2: all 0
    assert torch.allclose(adv, torch.tensor([0.75, -0.25, -0.25, -0.25, 0.0, 0.0, 0.0, 0.0]))


def test_rloo_advantages_hand_computed():
    rewards = torch.tensor([1.0, 0.0, 0.0, 0.0, 3.0, 1.0, 2.0, 2.0])
    adv = algos.rloo_advantages(rewards, group_size=4)
    # group 1: 1 - mean(0,0,0) = 1;  0 - mean(1,0,0) = -1/3 (three times)
    # group 2: 3 - mean(1,2,2) = 4/3;  1 - mean(3,2,2) = -4/3;  2 - mean(3,1,2) = 0 (twice)
    expected = torch.tensor([1.0, -1 / 3, -1 / 3, -1 / 3, 4 / 3, -4 / 3, 0.0, 0.0])
    assert torch.allclose(adv, expected, atol=1e-6)
    with pytest.raises(ValueError, match="at least 2"):
        algos.rloo_advantages(rewards, group_size=1)


def test_reinforce_pp_baseline_hand_computed():
    rewards = torch.tensor([1.0, 0.0, 3.0, 1.0])
    adv = algos.reinforce_pp_baseline_advantages(rewards, group_size=2, eps=1e-12)
    # group means 0.5 and 2 -> centred [0.5, -0.5, 1, -1]; batch mean 0,
    # unbiased batch std = sqrt((0.25 + 0.25 + 1 + 1) / 3) = sqrt(5/6) = 0.9128709
    # -> [0.5477226, -0.5477226, 1.0954451, -1.0954451]
    assert torch.allclose(adv, torch.tensor([0.5477226, -0.5477226, 1.0954451, -1.0954451]), atol=1e-6)


def test_registry_selects_estimators_by_config_name():
    assert set(algos.ADVANTAGE_ESTIMATORS) == {"grpo", "dr_grpo", "rloo", "reinforce_pp", "gae"}
    rewards = torch.tensor([1.0, 0.0])
    assert torch.allclose(algos.compute_advantages("dr_grpo", rewards, 2), torch.tensor([0.5, -0.5]))
    with pytest.raises(ValueError, match="unknown advantage estimator"):
        algos.compute_advantages("ppo", rewards, 2)
    with pytest.raises(ValueError, match="gae needs"):
        algos.compute_advantages("gae", rewards, 2)


@pytest.mark.parametrize("gamma, lam, advantages, returns", [
    # delta_2 = 1 - 0.8 = 0.2; delta_1 = 0.8 - 0.6 = 0.2; delta_0 = 0.6 - 0.5 = 0.1
    # A_2 = 0.2; A_1 = 0.2 + 0.5 * 0.2 = 0.3; A_0 = 0.1 + 0.5 * 0.3 = 0.25; returns = A + V
    (1.0, 0.5, [0.25, 0.3, 0.2], [0.75, 0.9, 1.0]),
    # lam = 1: the returns are the discounted Monte-Carlo returns 0.81, 0.9, 1
    # delta_1 = 0.9 * 0.8 - 0.6 = 0.12 -> A_1 = 0.12 + 0.9 * 0.2 = 0.30; delta_0 = 0.54 - 0.5 -> A_0 = 0.04 + 0.27
    (0.9, 1.0, [0.31, 0.30, 0.2], [0.81, 0.9, 1.0]),
])
def test_gae_hand_computed(gamma, lam, advantages, returns):
    rewards = algos.outcome_token_rewards(torch.tensor([1.0, -1.0]), [3, 0])
    assert rewards[0].tolist() == [0.0, 0.0, 1.0] and rewards[1].numel() == 0  # an empty response has no reward
    adv, ret = algos.gae_advantages(rewards, [torch.tensor([0.5, 0.6, 0.8]), torch.zeros(0)], gamma, lam)
    assert torch.allclose(adv[0], torch.tensor(advantages), atol=1e-6)
    assert torch.allclose(ret[0], torch.tensor(returns), atol=1e-6)
    assert adv[1].numel() == ret[1].numel() == 0


def test_gae_token_rewards_carry_the_kl_penalty_on_every_token():
    kl = [torch.tensor([0.1, 0.2, 0.3])]
    rewards = algos.outcome_token_rewards(torch.tensor([1.0]), [3], kl, kl_coef=0.5)
    assert torch.allclose(rewards[0], torch.tensor([-0.05, -0.1, 1.0 - 0.15]))


def test_whiten_uses_only_tokens_in_the_mask():
    x = [torch.tensor([1.0, 2.0]), torch.tensor([3.0, 100.0])]
    mask = [torch.tensor([1.0, 1.0]), torch.tensor([1.0, 0.0])]
    out = algos.whiten(x, mask)
    std = (2.0 / 3.0) ** 0.5  # of 1, 2, 3 (population std, as OpenRLHF's replay-buffer normalisation)
    assert torch.allclose(torch.cat(out), torch.tensor([-1.0, 0.0, 1.0, 98.0]) / std, atol=1e-5)
    assert algos.whiten(x, [torch.zeros(2), torch.zeros(2)]) is x  # nothing counts: unchanged


def test_value_loss_clipping_hand_computed():
    values = torch.tensor([[1.0, 0.0, 0.6]])
    old = torch.tensor([[0.5, 0.5, 0.5]])
    returns = torch.tensor([[2.0, 0.0, 1.0]])
    loss, stats = algos.value_loss(values, old, returns, clip=0.2)
    # V_clip = 0.7, 0.3, 0.6: 0.5 * max((V-R)^2, (V_clip-R)^2) = 0.5*max(1, 1.69), 0.5*max(0, 0.09), 0.5*0.16
    assert torch.allclose(loss, torch.tensor([[0.845, 0.045, 0.08]]), atol=1e-6)
    assert stats["value_clip_frac"].tolist() == [[1.0, 1.0, 0.0]]
    unclipped, _ = algos.value_loss(values, old, returns, clip=None)
    assert torch.allclose(unclipped, torch.tensor([[0.5, 0.0, 0.08]]), atol=1e-6)


def test_sequence_level_importance_weights_use_the_response_product():
    old = torch.tensor([[-1.0, -1.0, 0.0]])  # the last column is padding: 0 in both
    behaviour = torch.tensor([[-1.5, -1.2, 0.0]])
    token, _ = algos.truncated_importance_weights(old, behaviour, cap=None, level="token")
    assert torch.allclose(token[0, :2], torch.exp(torch.tensor([0.5, 0.2])))
    seq, capped = algos.truncated_importance_weights(old, behaviour, cap=None, level="sequence")
    assert torch.allclose(seq, torch.full((1, 3), float(torch.exp(torch.tensor(0.7)))))  # e^(0.5 + 0.2) = 2.01
    seq, capped = algos.truncated_importance_weights(old, behaviour, cap=2.0, level="sequence")
    assert seq.tolist() == [[2.0, 2.0, 2.0]] and capped.tolist() == [[1.0, 1.0, 1.0]]


def test_kl_penalised_rewards_hand_computed():
    # r - coef * sum_t kl: 1 - 0.1 * 0.5 = 0.95; 0 - 0.1 * 2 = -0.2
    out = algos.kl_penalised_rewards(torch.tensor([1.0, 0.0]), torch.tensor([0.5, 2.0]), kl_coef=0.1)
    assert torch.allclose(out, torch.tensor([0.95, -0.2]))


# ---- policy loss ------------------------------------------------------------------------------


def test_ppo_clip_loss_hand_computed():
    old = torch.log(torch.tensor([[0.5, 0.5, 0.5]]))
    new = torch.log(torch.tensor([[0.5, 0.75, 0.25]]))  # ratios 1.0, 1.5, 0.5
    loss, stats = algos.ppo_clip_loss(new, old, torch.tensor([2.0]), clip_low=0.2, clip_high=0.2)
    assert torch.allclose(stats["ratio"], torch.tensor([[1.0, 1.5, 0.5]]))
    # A>0: min(r*A, clip(r)*A) = [2.0, min(3.0, 2.4), min(1.0, 1.6)] -> loss = -[2.0, 2.4, 1.0]
    assert torch.allclose(loss, torch.tensor([[-2.0, -2.4, -1.0]]))
    assert stats["clip_frac"].tolist() == stats["clip_high_frac"].tolist() == [[0.0, 1.0, 0.0]]
    loss_neg, stats_neg = algos.ppo_clip_loss(new, old, torch.tensor([-1.0]), 0.2, 0.2)
    # A<0: min(-r, -clip(r)) = [-1.0, -1.5, -0.8] -> loss = [1.0, 1.5, 0.8]
    assert torch.allclose(loss_neg, torch.tensor([[1.0, 1.5, 0.8]]))
    assert stats_neg["clip_frac"].tolist() == stats_neg["clip_low_frac"].tolist() == [[0.0, 0.0, 1.0]]
    assert stats_neg["dual_clip_frac"].sum() == 0


def test_asymmetric_clip_higher():
    old = torch.zeros(1, 1)
    new = torch.log(torch.tensor([[1.25]]))
    loss, _ = algos.ppo_clip_loss(new, old, torch.tensor([1.0]), clip_low=0.2, clip_high=0.28)
    assert math.isclose(loss.item(), -1.25, rel_tol=1e-6)  # 1.25 < 1.28: not clipped


def test_dual_clip_hand_computed():
    old = torch.zeros(1, 4)
    new = torch.log(torch.tensor([[1.0, 4.0, 0.5, 2.0]])).requires_grad_()  # ratios 1, 4, 0.5, 2
    loss, stats = algos.ppo_clip_loss(new, old, torch.tensor([-1.0]), 0.2, 0.2, dual_clip=3.0)
    # A = -1: PPO loss = max(r, clip(r, 0.8, 1.2)) = [1, 4, 0.8, 2]; dual clip caps it at -c*A = 3
    assert torch.allclose(loss, torch.tensor([[1.0, 3.0, 0.8, 2.0]]))
    assert stats["dual_clip_frac"].tolist() == [[0.0, 1.0, 0.0, 0.0]]
    assert stats["clip_frac"].tolist() == [[0.0, 0.0, 1.0, 0.0]]
    loss.sum().backward()
    # d loss / d logp = r * |A| where unclipped, 0 where either clip is active
    assert torch.allclose(new.grad, torch.tensor([[1.0, 0.0, 0.0, 2.0]]))
    # A > 0: dual clip changes nothing: -min(2r, 2 clip(r)) = -[2, 2.4, 1.0, 2.4]
    loss_pos, stats_pos = algos.ppo_clip_loss(new.detach(), old, torch.tensor([2.0]), 0.2, 0.2, dual_clip=3.0)
    assert torch.allclose(loss_pos, torch.tensor([[-2.0, -2.4, -1.0, -2.4]]))
    assert stats_pos["dual_clip_frac"].sum() == 0
    with pytest.raises(ValueError, match="> 1"):
        algos.ppo_clip_loss(new, old, torch.tensor([1.0]), 0.2, 0.2, dual_clip=1.0)


def test_policy_loss_adds_kl_and_entropy_bonus():
    old = torch.zeros(1, 2)
    new = torch.zeros(1, 2)  # ratio 1: PPO loss = -A = -1
    kl, entropy = torch.tensor([[0.5, 1.0]]), torch.tensor([[2.0, 0.0]])
    loss, stats = algos.policy_loss(new, old, torch.tensor([1.0]), clip_low=0.2, clip_high=0.2,
                                    kl=kl, kl_coef=0.1, entropy=entropy, entropy_coef=0.01)
    # -1 + 0.1 * [0.5, 1.0] - 0.01 * [2.0, 0.0] = [-0.97, -0.9]
    assert torch.allclose(loss, torch.tensor([[-0.97, -0.9]]))
    assert torch.equal(stats["kl"], kl) and torch.allclose(stats["pg_loss"], torch.tensor([[-1.0, -1.0]]))
    plain, stats = algos.policy_loss(new, old, torch.tensor([1.0]), clip_low=0.2, clip_high=0.2, entropy=entropy)
    assert torch.allclose(plain, torch.tensor([[-1.0, -1.0]])) and "kl" not in stats  # coef 0: no bonus


# ---- KL estimators ----------------------------------------------------------------------------


def test_kl_estimators_hand_computed():
    logp = torch.log(torch.tensor([0.5, 0.2]))
    ref = torch.log(torch.tensor([0.25, 0.2]))
    # token 0: logp - ref = log 2 = 0.6931472; token 1: equal probabilities -> every estimator 0
    assert torch.allclose(algos.kl_k1(logp, ref), torch.tensor([math.log(2), 0.0]))
    # k2 = (log 2)^2 / 2 = 0.2402265
    assert torch.allclose(algos.kl_k2(logp, ref), torch.tensor([0.2402265, 0.0]))
    # k3: d = ref - logp = -log 2 -> exp(d) - d - 1 = 0.5 + log 2 - 1 = 0.1931472
    assert torch.allclose(algos.kl_k3(logp, ref), torch.tensor([0.1931472, 0.0]))
    assert algos.KL_ESTIMATORS["k3"] is algos.kl_k3
    with pytest.raises(ValueError, match="unknown KL estimator"):
        algos.kl_estimator("k4")


def test_sequence_kl_sums_tokens_per_sample():
    logp = [[math.log(0.5), math.log(0.2)], [math.log(0.5)], []]
    ref = [[math.log(0.25), math.log(0.1)], [math.log(0.5)], []]
    # sample 0: log 2 + log 2 = 1.3862944; sample 1: 0; sample 2 (empty response): 0
    assert torch.allclose(algos.sequence_kl(logp, ref, "k1"), torch.tensor([1.3862944, 0.0, 0.0]))


# ---- aggregation ------------------------------------------------------------------------------

X = torch.tensor([[1.0, 2.0, 3.0, 0.0], [4.0, 0.0, 0.0, 0.0], [5.0, 5.0, 0.0, 0.0], [9.0, 9.0, 0.0, 0.0]])
MASK = torch.tensor([[1.0, 1.0, 1.0, 0.0], [1.0, 0.0, 0.0, 0.0], [1.0, 1.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]])


@pytest.mark.parametrize("mode, expected", [
    ("token_mean", 20 / 6),               # (1+2+3 + 4 + 5+5) / 6 tokens; the fully masked row adds nothing
    ("seq_mean_token_sum", 20 / 3),       # sequence sums 6, 4, 10 over the 3 sequences with tokens
    ("seq_mean_token_mean", 11 / 3),      # sequence means 2, 4, 5 -> 11 / 3
    ("seq_mean_token_sum_norm", 5 / 3),   # (6 + 4 + 10) / max_len 4 / 3 sequences
])
def test_aggregation_modes_hand_computed(mode, expected):
    assert math.isclose(algos.aggregate(X, MASK, mode, max_len=4).item(), expected, rel_tol=1e-6)


def test_aggregation_refuses_unknown_mode_and_missing_max_len():
    with pytest.raises(ValueError, match="unknown loss aggregation"):
        algos.aggregate(X, MASK, "sum")
    with pytest.raises(ValueError, match="max_len"):
        algos.aggregate(X, MASK, "seq_mean_token_sum_norm")


def test_masked_mean_is_token_level():
    x = torch.tensor([[1.0, 1.0, 1.0], [4.0, 0.0, 0.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 0.0, 0.0]])
    assert algos.masked_mean(x, mask).item() == 7.0 / 4.0  # token mean, not the mean of sequence means (2.5)


def _reference_aggregate(values: list[list[float]], masks: list[list[float]], mode: str, max_len: int) -> float:
    """Straight from the definitions, over ragged lists (independent of aggregation_weights)."""
    rows = [(sum(v * m for v, m in zip(vs, ms)), sum(ms)) for vs, ms in zip(values, masks) if sum(ms) > 0]
    if mode == "token_mean":
        return sum(s for s, _ in rows) / sum(n for _, n in rows)
    per_seq = {"seq_mean_token_sum": [s for s, _ in rows], "seq_mean_token_mean": [s / n for s, n in rows],
               "seq_mean_token_sum_norm": [s / max_len for s, _ in rows]}[mode]
    return sum(per_seq) / len(per_seq)


def _sharded_objective(batch: TrainBatch, world: int, micro_batch_size: int, mode: str, max_len: int) -> torch.Tensor:
    """What the learner's gradient is the gradient of: each rank scales each micro-batch's weighted
    sum by world * steps; DeepSpeed divides by the accumulation steps and averages over ranks."""
    total_tokens, num_sequences = algos.batch_normalisers(batch.loss_mask)
    steps = max(1, math.ceil(len(batch) / world / micro_batch_size))  # as in LearnerWorker.train_step
    rank_objectives = []
    for rank in range(world):
        rank_objective = torch.zeros(())
        for micro in split(batch.select(list(range(rank, len(batch), world))), steps):  # rank's share
            if len(micro) == 0:
                continue  # the worker runs a fully masked placeholder here: weight 0
            pb = pad(micro, 0, torch.device("cpu"))  # old_logprobs carry the per-token values
            weights = algos.aggregation_weights(pb.mask, mode, num_sequences, total_tokens, max_len)
            micro_loss = (pb.old_logprobs * weights).sum() * world * steps  # what engine.backward gets
            rank_objective = rank_objective + micro_loss / steps  # DeepSpeed: divided by accumulation steps
        rank_objectives.append(rank_objective)
    return sum(rank_objectives) / world  # the gradient all-reduce averages over ranks


@pytest.mark.parametrize("mode", list(algos.AGG_MODES))
@pytest.mark.parametrize("world, micro_batch_size", [(1, 64), (2, 2), (3, 1), (2, 3)])
def test_aggregation_weights_are_exact_over_shards_and_micro_batches(mode, world, micro_batch_size):
    gen = torch.Generator().manual_seed(0)
    lengths = [5, 1, 8, 3, 3, 6, 2]
    values = [torch.randn(n, generator=gen).tolist() for n in lengths]
    masks = [[1.0] * n for n in lengths]
    masks[2] = [0.0] * 8  # a fully masked (truncated) sample
    masks[5] = [1.0, 1.0, 1.0, 0.0, 0.0, 0.0]  # a partially masked one
    batch = TrainBatch([[7, 7]] * len(lengths), [[1] * n for n in lengths], values, [0.0] * len(lengths), masks)
    got = _sharded_objective(batch, world, micro_batch_size, mode, max_len=8)
    assert math.isclose(got.item(), _reference_aggregate(values, masks, mode, 8), rel_tol=1e-5)


# ---- overlong handling, logprobs, entropy -----------------------------------------------------


def _sample(n: int, finish_reason: str) -> Sample:
    return Sample(0, [1], [2] * n, [-0.1] * n, "", finish_reason, 0)


def test_mask_truncated_zeroes_only_length_finished_samples():
    samples = [_sample(2, "stop"), _sample(3, "length")]
    assert TrainBatch.from_samples(samples).loss_mask == [[1.0, 1.0], [1.0, 1.0, 1.0]]
    assert TrainBatch.from_samples(samples, mask_truncated=True).loss_mask == [[1.0, 1.0], [0.0, 0.0, 0.0]]
    assert algos.batch_normalisers(TrainBatch.from_samples(samples, mask_truncated=True).loss_mask) == (2, 1)


def test_token_logprobs_and_entropy():
    logits = torch.tensor([[[0.0, math.log(3.0)]]])  # p = [0.25, 0.75]
    assert math.isclose(algos.token_logprobs(logits, torch.tensor([[1]])).item(), math.log(0.75), rel_tol=1e-6)
    expected = -(0.25 * math.log(0.25) + 0.75 * math.log(0.75))
    assert math.isclose(algos.entropy_from_logits(logits).item(), expected, rel_tol=1e-6)


# ---- PPO epochs, mini-batches, micro-batches ----------------------------------------------------


def test_mini_batches_cover_every_sample_once_per_epoch_and_reshuffle():
    from learner.batching import mini_batches

    plan = mini_batches(10, epochs=2, count=3, seed=5)
    assert [len(mb) for epoch in plan for mb in epoch] == [3, 3, 4, 3, 3, 4]
    for epoch in plan:
        assert sorted(i for mb in epoch for i in mb) == list(range(10))
    assert plan[0] != plan[1]  # each epoch draws its own order
    assert plan == mini_batches(10, 2, 3, 5) and plan != mini_batches(10, 2, 3, 6)  # a pure function of the seed
    assert mini_batches(10, 1, 3, None) == [[[0, 1, 2], [3, 4, 5], [6, 7, 8, 9]]]  # no seed: batch order
    assert [len(mb) for mb in mini_batches(2, 1, 4, 0)[0]] == [1, 1]  # never an empty mini-batch (no empty step)
    assert mini_batches(0, 2, 3, 0) == [[], []]


def test_rank_micro_batches_give_every_rank_the_same_count():
    from learner.batching import rank_micro_batches

    indices = [9, 3, 7, 1, 0, 5, 2]  # a shuffled mini-batch of 7 samples, 2 ranks, micro-batches of 2
    assert rank_micro_batches(indices, 0, 2, 2) == [[9, 7], [0, 2]]
    assert rank_micro_batches(indices, 1, 2, 2) == [[3], [1, 5]]
    assert rank_micro_batches([4], 1, 2, 2) == [[]]  # an empty share still runs one (placeholder) forward


def test_token_budget_micro_batches_pack_by_length_within_the_budget_with_the_same_count_on_every_rank():
    import random

    from learner.batching import padded_tokens, rank_micro_batches

    rng = random.Random(3)
    lengths = [rng.randint(20, 320) for _ in range(64)]
    indices = rng.sample(range(64), 40)  # a shuffled mini-batch of 40 of the 64 samples
    for world, budget in ((1, 320), (2, 640), (3, 1000), (2, 2560)):
        plans = [rank_micro_batches(indices, r, world, 8, lengths, budget) for r in range(world)]
        assert len({len(plan) for plan in plans}) == 1, (world, budget)  # ZeRO-3: the same forwards everywhere
        assert sorted(i for plan in plans for micro in plan for i in micro) == sorted(indices)  # each sample once
        for micro in (m for plan in plans for m in plan if m):
            assert len(micro) * max(lengths[i] for i in micro) <= budget
        assert plans == [rank_micro_batches(list(indices), r, world, 8, lengths, budget) for r in range(world)]
        by_count = [rank_micro_batches(indices, r, world, 8) for r in range(world)]
        packed, plain = (sum(padded_tokens(lengths, plan) for plan in p) for p in (plans, by_count))
        assert packed < plain, (world, budget)  # sorting by length computes less padding
    assert rank_micro_batches([5, 6], 3, 4, 8, lengths, 320) == [[]]  # a rank without samples: one placeholder
    with pytest.raises(ValueError, match="needs the sample lengths"):
        rank_micro_batches(indices, 0, 2, 8, None, 640)
