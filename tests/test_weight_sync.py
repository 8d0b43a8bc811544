"""Weight sync beyond the session trainer's own path: ZeRO-2 exactness, two engines kept identical,
broken receivers failing fast with their name, and the GPU transports (skipped without CUDA).

The extra actors run outside the session's placement group (its bundles are all taken), with
num_cpus=0; everything else is the real Ray + vLLM + DeepSpeed stack."""
from __future__ import annotations

import os
import time
import uuid
from dataclasses import replace

import pytest
import ray
import torch

from cluster.handles.actor_group import wait_named
from protocol.batch import Prompt, TrainBatch
from protocol.shm_stream import StreamError, StreamSegment
from protocol.transports import SyncSetup
from protocol.weight_sync import DTYPES, WeightManifest, build_manifest

SMALL_BUCKET_MB = 0.02  # ~20 KB: the tiny test model spans dozens of buckets


class Unplaced:
    """Stands in for cluster.infra.placement_group.Placement: actors outside any placement group."""

    def __init__(self, gpus: float = 0.0) -> None:
        self.gpus = gpus

    def options(self, role: str, index: int) -> dict[str, float]:
        return {"num_cpus": 0, "num_gpus": self.gpus}

    def engine_ranks(self, index: int) -> tuple[tuple[int, ...], float]:
        return (), 1.0


def _with(cfg, **sections):
    """cfg with some fields of some sections replaced: _with(cfg, sync={"timeout_s": 3})."""
    return cfg.model_copy(update={k: getattr(cfg, k).model_copy(update=v) for k, v in sections.items()})


def _sequence(trainer) -> tuple[list[int], list[int]]:
    prompt = trainer.eval_prompts[2].token_ids
    return prompt, trainer.rollouts.generate([Prompt(0, prompt, "0")], 1, 1.0, seed=11)[0].response_ids


def _engine_logprobs(rollouts, prompt, response) -> list[torch.Tensor]:
    """Response logprobs from every engine of the group."""
    per_worker = rollouts.sequence_logprobs([prompt + response])
    return [torch.tensor(w[0][len(prompt) - 1:]) for w in per_worker]


def _learner_logprobs(learners, prompt, response) -> torch.Tensor:
    return torch.tensor(learners.logprobs(TrainBatch([prompt], [response], [], [0.0], []))[0])


@pytest.fixture(scope="module")
def two_engines(session_trainer):
    from cluster.handles.groups import RolloutGroup

    cfg = _with(session_trainer.cfg, rollout={"num_workers": 2, "kv_cache_gib": 0.05})
    group = RolloutGroup(cfg, session_trainer.model_path, Unplaced())
    yield group
    group.kill()


def test_zero2_sync_leaves_two_engines_identical_to_the_learner(trainer, two_engines):
    """ZeRO-3 is the session trainer's layout (test_end_to_end); here a ZeRO-2 group of 2 ranks
    trains one step and syncs into two engines, which must both serve its weights (fp32, 1e-4)."""
    from cluster.handles.groups import LearnerGroup
    from cluster.loop.sync import WeightSync

    learners = LearnerGroup(trainer.cfg, trainer.model_path, Unplaced(), zero_stage=2)
    try:
        prompt, response = _sequence(trainer)
        old = _engine_logprobs(two_engines, prompt, response)[0]
        learners.train(TrainBatch([prompt], [response], [old.tolist()], [1.0], [[1.0] * len(response)]))
        sync = WeightSync(trainer.cfg, learners, two_engines)
        try:
            metrics = sync.sync()
        finally:
            sync.close()
        first, second = _engine_logprobs(two_engines, prompt, response)
        learner = _learner_logprobs(learners, prompt, response)
    finally:
        learners.kill()
    assert torch.equal(first, second), "the two engines serve different weights"
    assert (first - learner).abs().max() < 1e-4, "engines differ from the ZeRO-2 learner"
    assert (first - old).abs().max() > 1e-4, "the ZeRO-2 step changed nothing"
    assert metrics["policy_version"] == 1


@pytest.mark.parametrize("broken", ["unknown name", "wrong shape"])
def test_bad_manifest_is_refused_before_loading(trainer, broken):
    from cluster.loop.sync import WeightSyncError

    layout = list(trainer.sync.layout)
    if broken == "unknown name":
        layout.append(("model.layers.7.mlp.extra_proj.weight", (4, 4)))
    else:
        name, shape = layout[0]
        layout[0] = (name, (shape[0] + 1, *shape[1:]))
    manifest = build_manifest(layout, DTYPES[trainer.cfg.model.dtype], 0, "shm")
    with pytest.raises(WeightSyncError, match=r"rollout\[0\] failed: ValueError: weight .*(not a parameter|shape)"):
        trainer.sync.check(manifest)
    samples = trainer.rollouts.generate([Prompt(0, trainer.eval_prompts[0].token_ids, "0")], 1, 1.0, seed=1)
    assert samples[0].response_ids, "the engine no longer generates after a refused update"


def test_receiver_that_never_joins_is_named_within_the_timeout(trainer, two_engines):
    """The broadcast group forms; then rollout[1] is busy and never joins a new one: opening fails fast
    and names it."""
    from cluster.loop.sync import WeightSync, WeightSyncError

    sync = WeightSync(_with(trainer.cfg, sync={"transport": "broadcast", "timeout_s": 3.0}), trainer.learners,
                      two_engines)
    busy = two_engines.actors[1].__ray_call__.remote(lambda self: time.sleep(6))
    start = time.perf_counter()
    with pytest.raises(WeightSyncError, match=r"learner\[0\] failed: TimeoutError: .*rollout\[1\] did not join within 3s"):
        sync.open()
    assert time.perf_counter() - start < 3.0 * 1.25 + 2.0 + 1.0
    ray.get(busy)


# ---- shm streaming ------------------------------------------------------------------------
class Writer:
    """Publishes weights into a stream segment bucket by bucket, as learner rank 0 does, with the
    test in control of when each bucket is stamped. The values are the session learner's (ZeRO-3)
    weights, exported by the learner's own code (the shm transport) into a scratch segment and read back.
    `load` opens the shm transport on the engines, pointed at this segment, and loads a version."""

    def __init__(self, trainer, bucket_mb: float = SMALL_BUCKET_MB) -> None:
        self.bucket_bytes = int(bucket_mb * 2**20)
        path = f"/dev/shm/reasonrl-test-{uuid.uuid4().hex[:8]}.weights"
        self.manifest: WeightManifest = build_manifest(trainer.sync.layout, DTYPES[trainer.cfg.model.dtype], 0,
                                                       "shm", path)
        self.buckets = self.manifest.buckets(self.bucket_bytes)
        rows, total = self.manifest.bucket_rows(self.bucket_bytes), self.manifest.total_bytes
        source_setup = SyncSetup(rows, total, 30.0, location=path + ".src")
        learners, timeout_s = trainer.learners, trainer.learners.timeout_s
        wait_named(learners.submit_open_weight_transport("test-writer", "shm", source_setup.as_dict()), timeout_s, "open")
        wait_named(learners.submit_export_weights("test-writer", 1), timeout_s, "export")
        ray.get(learners.submit_close_weight_transport("test-writer"), timeout=timeout_s)
        source = StreamSegment(path + ".src", self.buckets, total, create=False)
        self.values = [[view.clone() for _, view in bucket] for bucket in source.views]
        os.remove(path + ".src")
        self.segment = StreamSegment(path, self.buckets, total, create=True)
        self.setup = SyncSetup(rows, total, 30.0, location=path)

    def publish_all(self, version: int, scale: float = 1.0) -> None:
        for index, values in enumerate(self.values):
            self.segment.publish(index, version, [v * scale for v in values])

    def load(self, engines, version: int, timeout_s: float = 30.0) -> list[ray.ObjectRef]:
        setup = replace(self.setup, timeout_s=timeout_s).as_dict()
        ray.get([a.open_weight_transport.remote("test-writer", "shm", setup, 1) for a in engines.actors])
        return [a.load_weights.remote("test-writer", version) for a in engines.actors]

    def close(self) -> None:
        os.remove(self.manifest.location)


@pytest.fixture
def writer(trainer):
    w = Writer(trainer)
    yield w
    w.close()


def test_shm_stream_loads_bucket_by_bucket_while_the_learner_writes(trainer, two_engines, writer):
    """The engines take bucket i while later buckets are not written yet, and end up serving exactly
    the learner's weights (fp32, 1e-4) after a perturbed version was loaded first."""
    assert len(writer.buckets) >= 8, "the test model must span many buckets"
    prompt, response = _sequence(trainer)
    writer.publish_all(1, scale=0.5)
    ray.get(writer.load(two_engines, 1))
    perturbed = _engine_logprobs(two_engines, prompt, response)[0]

    refs, started = writer.load(two_engines, 2), []
    time.sleep(0.5)  # the loads are waiting on bucket 0's stamp
    for index, values in enumerate(writer.values):
        if index == len(writer.values) - 1:
            assert not ray.wait(refs, num_returns=len(refs), timeout=0.2)[0], "a load finished before the last bucket"
        started.append(time.monotonic())
        writer.segment.publish(index, 2, values)
        time.sleep(0.03)
    ray.get(refs)
    for trace in (ray.get(a.__ray_call__.remote(lambda self: self.last_load))[0] for a in two_engines.actors):
        assert len(trace) == len(writer.buckets)
        assert all(ready >= start for (ready, _), start in zip(trace, started)), "a bucket was read before its stamp"
        assert trace[0][1] < started[-1], "vLLM did not take bucket 0 before the last bucket was written"
    first, second = _engine_logprobs(two_engines, prompt, response)
    learner = _learner_logprobs(trainer.learners, prompt, response)
    assert torch.equal(first, second)
    assert (first - learner).abs().max() < 1e-4, "streamed weights differ from the learner's"
    assert (perturbed - learner).abs().max() > 1e-3, "the perturbed version changed nothing: the test proves nothing"


def test_driver_sync_streams_many_buckets_from_zero3(trainer, two_engines, writer):
    """WeightSync submits the ZeRO-3 export (every rank gathers, rank 0 writes) and the loads together."""
    from cluster.loop.sync import WeightSync

    prompt, response = _sequence(trainer)
    writer.publish_all(1, scale=0.5)
    ray.get(writer.load(two_engines, 1))
    perturbed = _engine_logprobs(two_engines, prompt, response)[0]
    sync = WeightSync(_with(trainer.cfg, sync={"transport": "shm", "bucket_mb": SMALL_BUCKET_MB}),
                      trainer.learners, two_engines)
    try:
        metrics = [sync.sync() for _ in range(2)][-1]  # the second reuses the segment and stamps
    finally:
        sync.close()
    first, second = _engine_logprobs(two_engines, prompt, response)
    learner = _learner_logprobs(trainer.learners, prompt, response)
    traces = ray.get([a.__ray_call__.remote(lambda self: self.last_load) for a in two_engines.actors])
    assert torch.equal(first, second) and (first - learner).abs().max() < 1e-4
    assert (perturbed - learner).abs().max() > 1e-3
    assert all(len(t[0]) == len(writer.buckets) for t in traces)
    assert metrics["policy_version"] == 2 and metrics["sync/total_s"] > 0 and metrics["sync/load_s"] > 0


def test_bucket_never_stamped_fails_naming_worker_bucket_and_version(trainer, two_engines, writer):
    """Bucket 0 of version 7 is never stamped: the load fails within the timeout, names the worker,
    the bucket and the version, and the engine, untouched, still serves its weights."""
    from cluster.loop.sync import WeightSyncError, wait_named

    prompt, response = _sequence(trainer)
    before = _engine_logprobs(two_engines, prompt, response)[0]
    start = time.perf_counter()
    ref = writer.load(two_engines, 7, timeout_s=2.0)[0]
    with pytest.raises(WeightSyncError, match=r"rollout\[0\] failed: StreamError: .*bucket 0/\d+ of weight version 7 "
                                              r"was not published within 2s"):
        wait_named([("rollout[0]", ref)], 10.0, "weight sync v7 (shm)")
    assert time.perf_counter() - start < 2.0 + 3.0
    assert torch.equal(_engine_logprobs(two_engines, prompt, response)[0], before)


def test_stream_reader_names_the_missing_bucket_mid_stream() -> None:
    """Protocol level, no engine: buckets 0-1 stamped, bucket 2 never: the reader stops at bucket 2
    within its timeout; a bucket overwritten by a newer version is refused, never read torn."""
    metas = build_manifest([(f"w{i}", (64, 64)) for i in range(6)], torch.float32, 0, "shm").buckets(2 * 64 * 64 * 4)
    path = f"/dev/shm/reasonrl-test-{uuid.uuid4().hex[:8]}.weights"
    total = max(m.offset + m.nbytes for b in metas for m in b)
    writer = StreamSegment(path, metas, total, create=True)
    try:
        reader = StreamSegment(path, metas, total, create=False)
        for index in (0, 1):
            writer.publish(index, 1, [torch.ones(64, 64)] * len(metas[index]))
        got, start = [], time.monotonic()
        with pytest.raises(StreamError, match=r"bucket 2/3 of weight version 1 was not published within 0.5s"):
            for name, _ in reader.stream(1, start + 0.5, 0.5):
                got.append(name)
        assert got == ["w0", "w1", "w2", "w3"] and time.monotonic() - start < 1.5
        writer.publish(0, 2, [torch.zeros(64, 64)] * 2)
        with pytest.raises(StreamError, match=r"bucket 0/3 was overwritten by version 2 while version 1"):
            reader.wait(0, 1, time.monotonic() + 1, 1)
    finally:
        os.remove(path)


# ---- syncs behind generation, and a receiver that dies --------------------------------------
def test_sync_deadline_counts_the_load_not_the_generation_queued_ahead(trainer, two_engines):
    """With train.max_staleness > 0 a sync's loads queue behind generation on each engine. rollout[1] is
    busy for 8 s (a call ahead of the load in its queue, standing in for a long generation) while
    sync.timeout_s=2 gives each load 4.5 s: the sync waits for the queue, then the load meets its deadline.
    The loads started from the session weights, so both engines then serve the learner's weights."""
    from cluster.loop.sync import WeightSync

    sync = WeightSync(_with(trainer.cfg, sync={"transport": "shm", "timeout_s": 2.0}), trainer.learners, two_engines)
    try:
        busy = two_engines.actors[1].__ray_call__.remote(lambda self: time.sleep(8))
        start = time.perf_counter()
        metrics = sync.sync()
        elapsed = time.perf_counter() - start
    finally:
        sync.close()
    ray.get(busy)
    assert elapsed > 7.0, "the sync did not wait for the engine's queue: the test proves nothing"
    assert elapsed > sync.deadline_s and metrics["sync/load_s"] < sync.deadline_s
    prompt, response = _sequence(trainer)
    learner = _learner_logprobs(trainer.learners, prompt, response)
    assert all((e - learner).abs().max() < 1e-4 for e in _engine_logprobs(two_engines, prompt, response))


def test_a_queue_that_makes_no_progress_is_named_by_the_generation_rule(trainer, two_engines):
    """The wait for the queue is not unbounded: an engine that finishes no prompt for rollout.timeout_s
    (here 2 s; rollout[1] is stuck for 8 s) is named, and the sync gives up long before the stuck call ends."""
    from cluster.loop.sync import WeightSync, WeightSyncError

    cfg = _with(trainer.cfg, sync={"transport": "shm", "timeout_s": 30.0}, rollout={"timeout_s": 2.0})
    sync = WeightSync(cfg, trainer.learners, two_engines)
    busy = two_engines.actors[1].__ray_call__.remote(lambda self: time.sleep(8))
    start = time.perf_counter()
    try:
        with pytest.raises(WeightSyncError, match=r"rollout\[1\] did not reach its load: the generation queued ahead "
                                                  r"of it finished no prompt within rollout.timeout_s=2s"):
            sync.sync()
        assert time.perf_counter() - start < 6.0
    finally:
        ray.get(busy)
        ray.wait([a.policy_version.remote() for a in two_engines.actors], num_returns=2, timeout=60)  # loads drained
        sync.close()


def test_a_receiver_that_dies_during_a_sync_is_restarted_and_reloaded(trainer, two_engines, writer):
    """rollout[0] is killed while the sync's load waits in its queue (Ray restarts it with the base model's
    weights): the sync still succeeds, reloads the restarted engine from the kept shm segment without the
    learner, and says so in sync/recovered; both engines then serve the learner's weights."""
    import threading

    from cluster.loop.sync import WeightSync

    prompt, response = _sequence(trainer)
    writer.publish_all(1, scale=0.5)
    ray.get(writer.load(two_engines, 1))  # both engines differ from the learner before the sync
    sync = WeightSync(_with(trainer.cfg, sync={"transport": "shm", "timeout_s": 60.0}), trainer.learners, two_engines)
    victim = two_engines.actors[0]
    busy = victim.__ray_call__.remote(lambda self: time.sleep(5))
    killer = threading.Timer(1.0, lambda: ray.kill(victim, no_restart=False))
    killer.start()
    try:
        metrics = sync.sync()
    finally:
        killer.join()
        sync.close()
    with pytest.raises(ray.exceptions.RayActorError):
        ray.get(busy)  # the kill really landed while the sync waited on rollout[0]
    assert metrics["sync/recovered"] == 1 and metrics["policy_version"] == 1
    assert ray.get(victim.policy_version.remote()) == sync.version
    learner = _learner_logprobs(trainer.learners, prompt, response)
    assert all((e - learner).abs().max() < 1e-4 for e in _engine_logprobs(two_engines, prompt, response))


# ---- GPU transports (run where CUDA is available) ------------------------------------------
def _gpu_roundtrip(tmp_path, transport: str, gpus_each: float) -> None:
    """A 1-rank learner and a 1-engine rollout group on GPUs: train one step, sync, compare logprobs."""
    from cluster.config import TinyModelConfig, load_config
    from cluster.handles.groups import LearnerGroup, RolloutGroup
    from cluster.loop.sync import WeightSync
    from cluster.toy.tiny_model import build_random_model

    if not ray.is_initialized():
        ray.init(address="local", include_dashboard=False)
    tiny = TinyModelConfig(hidden_size=64, intermediate_size=128, num_layers=2, num_heads=2, num_kv_heads=1)
    model = str(build_random_model(tiny, ["12 + 34 = 46"] * 200, tmp_path / "model", seed=0))
    colocate = transport == "ipc"
    cfg = load_config(None, ["cluster.device=gpu", f"sync.transport={transport}", "learner.num_ranks=1",
                             "learner.zero_stage=2", "rollout.gpu_memory_utilization=0.3", "rollout.max_model_len=128",
                             f"cluster.colocate={str(colocate).lower()}"])
    rollouts = RolloutGroup(cfg, model, Unplaced(gpus_each))
    learners = LearnerGroup(cfg, model, Unplaced(gpus_each))
    try:
        prompt, response = [1, 2, 3, 4, 5], [6, 7, 8, 9]
        old = _engine_logprobs(rollouts, prompt, response)[0]
        rollouts.sleep()  # colocated: vLLM frees its memory while the learner trains (no-op otherwise)
        learners.train(TrainBatch([prompt], [response], [old.tolist()], [1.0], [[1.0] * len(response)]))
        sync = WeightSync(cfg, learners, rollouts)
        assert sync.transport == transport
        sync.sync()
        after = _engine_logprobs(rollouts, prompt, response)[0]
        learner = _learner_logprobs(learners, prompt, response)
    finally:
        learners.kill()
        rollouts.kill()
    assert (after - learner).abs().max() < 1e-4 and (after - old).abs().max() > 1e-4


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA IPC needs a GPU")
def test_ipc_transport_on_a_shared_gpu(tmp_path):
    _gpu_roundtrip(tmp_path, "ipc", gpus_each=0.4)  # both actors on one GPU: colocated


@pytest.mark.skipif(not torch.cuda.is_available() or torch.cuda.device_count() < 2,
                    reason="NCCL needs two GPUs (NCCL refuses two ranks on one device)")
@pytest.mark.parametrize("transport", ["broadcast", "nccl", "nccl_sparse"])
def test_nccl_transports(tmp_path, transport):
    """Our broadcast group and vLLM's own dense and sparse engines (nccl_sparse: the first send is full)."""
    _gpu_roundtrip(tmp_path, transport, gpus_each=1.0)


def test_parity_check_fires_when_one_bucket_is_corrupted(trainer, two_engines, writer):
    """Both engines load the learner's weights through the shm stream: the parity check passes (fp32 gap
    below 1e-4). Then rollout[1] loads a version whose one bucket (of dozens) is corrupted: the check
    stops the run naming rollout[1], or with parity_action=warn reports the gap as a metric and goes on."""
    from cluster.loop.parity import ParityCheck, ParityError

    writer.publish_all(1)
    ray.get(writer.load(two_engines, 1))
    check = ParityCheck(trainer.cfg, trainer.learners, two_engines, trainer.eval_prompts)
    clean = check.check(1)
    assert clean["sync/parity_max_abs"] < 1e-4 and clean["sync/parity_failed"] == 0.0

    corrupted = len(writer.values) // 2
    for index, values in enumerate(writer.values):
        writer.segment.publish(index, 2, [v + 0.05 * torch.randn_like(v) if index == corrupted else v
                                          for v in values])
    setup = replace(writer.setup, timeout_s=30.0).as_dict()
    ray.get(two_engines.actors[1].open_weight_transport.remote("test-writer", "shm", setup, 1))
    ray.get(two_engines.actors[1].load_weights.remote("test-writer", 2))
    with pytest.raises(ParityError, match=r"after sync v2: rollout\[1\]'s log-probs differ from the learner's by up to"):
        check.check(2)
    warn_cfg = _with(trainer.cfg, sync={"parity_action": "warn"})
    warned = ParityCheck(warn_cfg, trainer.learners, two_engines, trainer.eval_prompts).check(2)
    assert warned["sync/parity_failed"] == 1.0 and warned["sync/parity_max_abs"] > check.bound
