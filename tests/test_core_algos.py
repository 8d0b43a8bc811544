"""Loss and advantage functions against small hand-computed cases."""
import math

import torch

from learner import core_algos as algos


def test_grpo_advantages_hand_computed():
    rewards = torch.tensor([1.0, 0.0, 0.0, 0.0, 1.0, 1.0, 1.0, 1.0])
    adv = algos.grpo_advantages(rewards, group_size=4, eps=0.0 + 1e-12)
    # group 1: mean 0.25, unbiased std sqrt(0.25) = 0.5 -> (1-0.25)/0.5 = 1.5, (0-0.25)/0.5 = -0.5
    assert torch.allclose(adv[:4], torch.tensor([1.5, -0.5, -0.5, -0.5]), atol=1e-5)
    # group 2: all equal -> no signal
    assert torch.allclose(adv[4:], torch.zeros(4))


def test_ppo_clip_loss_hand_computed():
    old = torch.log(torch.tensor([[0.5, 0.5, 0.5]]))
    new = torch.log(torch.tensor([[0.5, 0.75, 0.25]]))  # ratios 1.0, 1.5, 0.5
    loss, ratio, clipped = algos.ppo_clip_loss(new, old, torch.tensor([2.0]), clip_low=0.2, clip_high=0.2)
    assert torch.allclose(ratio, torch.tensor([[1.0, 1.5, 0.5]]))
    # A>0: min(r*A, clip(r)*A) = [2.0, min(3.0, 2.4), min(1.0, 1.6)] -> loss = -[2.0, 2.4, 1.0]
    assert torch.allclose(loss, torch.tensor([[-2.0, -2.4, -1.0]]))
    assert clipped.tolist() == [[0.0, 1.0, 0.0]]
    loss_neg, _, clipped_neg = algos.ppo_clip_loss(new, old, torch.tensor([-1.0]), 0.2, 0.2)
    # A<0: min(-r, -clip(r)) = [-1.0, -1.5, -0.8] -> loss = [1.0, 1.5, 0.8]
    assert torch.allclose(loss_neg, torch.tensor([[1.0, 1.5, 0.8]]))
    assert clipped_neg.tolist() == [[0.0, 0.0, 1.0]]


def test_asymmetric_clip_higher():
    old = torch.zeros(1, 1)
    new = torch.log(torch.tensor([[1.25]]))
    loss, _, _ = algos.ppo_clip_loss(new, old, torch.tensor([1.0]), clip_low=0.2, clip_high=0.28)
    assert math.isclose(loss.item(), -1.25, rel_tol=1e-6)  # 1.25 < 1.28: not clipped


def test_k3_kl_hand_computed():
    logp = torch.log(torch.tensor([0.5, 0.2]))
    ref = torch.log(torch.tensor([0.25, 0.2]))
    kl = algos.kl_k3(logp, ref)
    # d = log(0.25/0.5) = -log 2: exp(d) - d - 1 = 0.5 + log 2 - 1
    assert math.isclose(kl[0].item(), 0.5 + math.log(2) - 1, rel_tol=1e-6)
    assert kl[1].item() == 0.0


def test_token_logprobs_and_entropy():
    logits = torch.tensor([[[0.0, math.log(3.0)]]])  # p = [0.25, 0.75]
    assert math.isclose(algos.token_logprobs(logits, torch.tensor([[1]])).item(), math.log(0.75), rel_tol=1e-6)
    expected = -(0.25 * math.log(0.25) + 0.75 * math.log(0.75))
    assert math.isclose(algos.entropy_from_logits(logits).item(), expected, rel_tol=1e-6)


def test_masked_mean_is_token_level():
    x = torch.tensor([[1.0, 1.0, 1.0], [4.0, 0.0, 0.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 0.0, 0.0]])
    assert algos.masked_mean(x, mask).item() == 7.0 / 4.0  # token mean, not the mean of sequence means (2.5)
