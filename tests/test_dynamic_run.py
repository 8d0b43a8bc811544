"""Dynamic sampling, overlong shaping and the parity check on the real stack: the session trainer's
vLLM engine, reward actors (a custom reward, tests/rewards_fixture.py) and DeepSpeed learner ranks."""
from __future__ import annotations

import pytest

from cluster.handles.groups import RewardPool
from cluster.loop.pipeline import RolloutPipeline
from reward.shaping import overlong_penalty
from tests.rewards_fixture import even_length_for_even_answers

REWARD = "tests.rewards_fixture:even_length_for_even_answers"


def _configured(trainer, **algorithm):
    cfg = trainer.cfg
    return cfg.model_copy(update={"algorithm": cfg.algorithm.model_copy(update=algorithm),
                                  "reward": cfg.reward.model_copy(update={"custom_fn": REWARD}),
                                  "train": cfg.train.model_copy(update={"steps": 1000, "prompts_per_step": 4})})


def test_dynamic_sampling_and_overlong_shaping_on_a_real_batch(trainer):
    """Odd-answer prompts score 0 for every sample (no variance): dynamic sampling drops their groups and
    generates more prompts until 4 informative groups are in; every reward is the custom reward plus
    DAPO's overlong penalty of the response's length."""
    cfg = _configured(trainer, dynamic_sampling=True, dynamic_sampling_max_rounds=6, overlong_buffer=12,
                      overlong_penalty=0.5)
    pool = RewardPool(cfg)
    pipeline = RolloutPipeline(cfg, trainer.rollouts, pool, trainer.train_data, trainer.sync.resync)
    try:
        prompts, batch = pipeline.take(7)
    finally:
        pipeline.close()
        pool.kill()
    n, cap = cfg.rollout.samples_per_prompt, cfg.rollout.max_new_tokens
    answers = {p.index: p.answer for p in prompts}
    assert len({p.index for p in prompts}) == len(prompts)
    for s in batch.samples:
        expected = even_length_for_even_answers(s.text, answers[s.prompt_index]) + overlong_penalty(
            len(s.response_ids), cap, 12, 0.5)
        assert s.reward == pytest.approx(expected)
    groups = [batch.samples[i: i + n] for i in range(0, len(batch.samples), n)]
    m = batch.metrics
    assert len(groups) == 4 and m["dynamic/generated_groups"] == len(prompts) > 4
    assert m["dynamic/rounds"] >= 2 and m["dynamic/dropped_groups"] >= 1
    assert m["dynamic/kept_groups"] + m["dynamic/filled_groups"] == 4
    informative = sum(len({s.reward for s in g}) > 1 for g in groups)
    assert informative == m["dynamic/kept_groups"]
    assert m["dynamic/generated_tokens"] >= sum(len(s.response_ids) for s in batch.samples)
    assert any(s.reward < even_length_for_even_answers(s.text, answers[s.prompt_index]) for s in batch.samples), \
        "no response reached the overlong buffer: the shaping was not exercised"


def test_a_step_reports_dynamic_overlong_and_parity_metrics(trainer):
    """One real step with both on: the step trains on a full batch and logs every count; the parity
    check after its sync finds the engine serving the learner's weights (fp32: gap below 1e-4)."""
    cfg = _configured(trainer, dynamic_sampling=True, dynamic_sampling_max_rounds=6, overlong_buffer=12)
    trainer.cfg, trainer.rewards = cfg, RewardPool(cfg)
    trainer.pipeline = RolloutPipeline(cfg, trainer.rollouts, trainer.rewards, trainer.train_data, trainer.sync.resync)
    version = trainer.sync.version
    try:
        row = trainer.step(11)
    finally:
        trainer.pipeline.close()
        trainer.rewards.kill()
    assert trainer.sync.version == version + 1
    assert row["dynamic/kept_groups"] + row["dynamic/filled_groups"] == 4
    assert row["dynamic/generated_groups"] >= 4 and "reward/overlong_penalty_mean" in row
    assert row["reward/overlong_penalty_mean"] <= 0 and 0 <= row["reward/overlong_frac"] <= 1
    assert row["sync/parity_max_abs"] < 1e-4 and row["sync/parity_failed"] == 0.0
    assert row["async/dropped_stale"] == 0 and row["async/dropped_stale_total"] == 0
    assert "time/parity_s" in row
