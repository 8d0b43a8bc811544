"""Asynchronous rollouts (train.max_staleness): the staleness bound, version records, TIS."""
from __future__ import annotations

import pytest
import torch

from cluster.loop.pipeline import RolloutPipeline, split_stale, staleness_metrics
from learner.core_algos import policy_loss, truncated_importance_weights
from protocol.batch import Sample


def _sample(prompt: int, version: int) -> Sample:
    return Sample(prompt_index=prompt, prompt_ids=[1], response_ids=[2], response_logprobs=[0.0], text="",
                  finish_reason="stop", policy_version=version)


def test_split_stale_drops_whole_groups_older_than_k():
    # 3 prompts x 2 samples; prompt 1 has one sample 3 versions old (a re-issue after a restart, say).
    samples = [_sample(0, 4), _sample(0, 4), _sample(1, 2), _sample(1, 4), _sample(2, 3), _sample(2, 3)]
    kept, dropped = split_stale(samples, learner_version=5, max_staleness=2, samples_per_prompt=2)
    assert [s.prompt_index for s in kept] == [0, 0, 2, 2] and dropped == 2
    kept, dropped = split_stale(samples, learner_version=5, max_staleness=3, samples_per_prompt=2)
    assert len(kept) == 6 and dropped == 0
    m = staleness_metrics(kept, 5)
    assert m["async/staleness_max"] == 3 and abs(m["async/staleness_mean"] - (1 + 1 + 3 + 1 + 2 + 2) / 6) < 1e-9
    # The token-version lag histogram (each sample has 1 response token here): lags 1, 1, 3, 1, 2, 2.
    m = staleness_metrics(kept, 5, max_staleness=4)
    assert [m[f"async/token_lag_{j}_frac"] for j in range(5)] == [0.0, 0.5, 2 / 6, 1 / 6, 0.0]


def test_truncated_importance_weights_cap_and_scale_only_the_policy_term():
    old = torch.tensor([[0.0, -1.0, -0.1]])
    behaviour = torch.tensor([[0.0, -2.0, -0.2]])  # ratios 1, e, e^0.1
    w, capped = truncated_importance_weights(old, behaviour, cap=2.0)
    assert torch.allclose(w, torch.tensor([[1.0, 2.0, float(torch.exp(torch.tensor(0.1)))]]))
    assert capped.tolist() == [[0.0, 1.0, 0.0]]
    logprobs = torch.zeros(1, 3, requires_grad=True)
    kl = torch.full((1, 3), 0.5)
    weighted, _ = policy_loss(logprobs, old, torch.tensor([1.0]), clip_low=10.0, clip_high=10.0, kl=kl,
                              kl_coef=1.0, is_weights=w)
    plain, _ = policy_loss(logprobs, old, torch.tensor([1.0]), clip_low=10.0, clip_high=10.0, kl=kl, kl_coef=1.0)
    assert torch.allclose(weighted - kl, (plain - kl) * w)  # the KL term is not reweighted
    weighted.sum().backward()
    assert logprobs.grad is not None and not w.requires_grad


def test_async_steps_bound_staleness_and_record_versions(trainer):
    """Three real steps with max_staleness=1 on the session trainer: from the second step on, every
    batch was generated one version behind the learner, never more; versions only grow."""
    cfg = trainer.cfg
    async_cfg = cfg.model_copy(update={"train": cfg.train.model_copy(update={"max_staleness": 1, "steps": 1000})})
    saved = trainer.cfg, trainer.pipeline
    trainer.cfg = async_cfg
    trainer.pipeline = RolloutPipeline(async_cfg, trainer.rollouts, trainer.rewards, trainer.train_data,
                                       trainer.sync.resync)
    start = trainer.sync.version
    try:
        rows = [trainer.step(step) for step in range(20, 23)]
    finally:
        trainer.pipeline.close()
        trainer.cfg, trainer.pipeline = saved
    assert trainer.sync.version == start + 3
    assert [r["async/staleness_max"] for r in rows] == [0.0, 1.0, 1.0]
    assert [r["async/version_max"] for r in rows] == [start, start, start + 1]
    assert all(r["async/dropped_stale"] == 0 for r in rows)
    bins = [k for k in rows[0] if k.startswith("train/is_frac_")]
    for r in rows:  # the learner applied TIS weights and reported their distribution
        assert r["train/is_weight"] > 0 and 0 <= r["train/is_capped_frac"] <= 1
        assert len(bins) == 5 and abs(sum(r[k] for k in bins) - 1.0) < 1e-6
    # Step 0 trained on its own policy's samples (weights 1, up to engine/learner float noise); at
    # staleness 1 the learner has moved on, so weights spread out of the central bin.
    central = "train/is_frac_0.8_1.25"
    assert rows[0][central] == 1.0 and abs(rows[0]["train/is_weight"] - 1.0) < 1e-3
    assert rows[1][central] < 1.0 or abs(rows[1]["train/is_weight"] - 1.0) > 1e-3


@pytest.mark.parametrize("partial", [False, True], ids=["queued_syncs", "partial_rollouts"])
def test_async_run_with_a_rollout_worker_killed_at_a_random_point_trains_nothing_too_stale(trainer, partial):
    """Real steps at max_staleness=1 while rollout[0] is killed (ray.kill, Ray restarts it) at a seeded
    random moment (a random step, a random delay into it): wherever it lands (mid-generation, during a
    sync or the parity check, idle), the run goes on, every step's samples are checked against the bound
    before training (check_staleness raises otherwise), and the restart and what it regenerated are
    counted, not silent. The run goes on until two steps after the kill (at least 4, at most 12).
    `partial_rollouts`: the same with train.partial_rollouts (syncs and parity checks land between engine
    steps, on the actor's sync thread); staleness is then judged per token (`async/token_lag_max`)."""
    import random
    import threading

    import ray

    cfg = trainer.cfg
    async_cfg = cfg.model_copy(update={"train": cfg.train.model_copy(update={"max_staleness": 1, "steps": 1000,
                                                                             "partial_rollouts": partial})})
    parity_cfg = trainer.parity.cfg
    trainer.cfg = trainer.parity.cfg = async_cfg
    trainer.sync.partial = partial
    trainer.pipeline = RolloutPipeline(async_cfg, trainer.rollouts, trainer.rewards, trainer.train_data,
                                       trainer.sync.resync)
    rng = random.Random(24)
    kill_step, delay = rng.randrange(4), rng.uniform(0.0, 1.5)
    killed = threading.Event()

    def kill() -> None:
        ray.kill(trainer.rollouts.actors[0], no_restart=False)
        killed.set()

    killer = threading.Timer(delay, kill)
    start, rows, killed_in = trainer.sync.version, [], None
    try:
        for i in range(12):
            if i == kill_step:
                killer.start()
            rows.append(trainer.step(30 + i))
            if killed_in is None and killed.is_set():
                killed_in = i
            if killed_in is not None and i >= max(3, killed_in + 2):
                break
    finally:
        killer.cancel()
        trainer.pipeline.close()
        trainer.sync.partial, trainer.parity.cfg = False, parity_cfg
    assert killed.is_set(), "the kill never happened: the test proves nothing"
    assert trainer.sync.version == start + len(rows)
    assert all(r["async/staleness_max"] <= 1 and r["async/token_lag_max"] <= 1 and abs(r["async/token_lag_0_frac"] + r["async/token_lag_1_frac"] - 1) < 1e-9
               for r in rows)
    # One death can be noticed by more than one caller (a stream and the sync marker it queued before).
    noticed = sum(r["rollout/restarts"] + r["sync/recovered"] + r["sync/parity_recovered"] for r in rows)
    assert noticed >= 1, f"the kill in step {kill_step}, {delay:.2f}s in, was not noticed"
    regenerated = sum(r["rollout/regenerated_samples"] for r in rows)
    assert regenerated == cfg.rollout.samples_per_prompt * sum(r["rollout/reissued_prompts"] for r in rows)
    assert all(r["async/dropped_stale_total"] == sum(x["async/dropped_stale"] for x in rows[: i + 1])
               for i, r in enumerate(rows))
