"""Weight sync beyond the session trainer's own path: ZeRO-2 exactness, two engines kept identical,
broken receivers failing fast with their name, and the GPU transports (skipped without CUDA).

The extra actors run outside the session's placement group (its bundles are all taken), with
num_cpus=0; everything else is the real Ray + vLLM + DeepSpeed stack."""
from __future__ import annotations

import time

import pytest
import ray
import torch

from protocol.batch import Prompt, TrainBatch
from protocol.weight_sync import DTYPES, build_manifest


class Unplaced:
    """Stands in for cluster.placement.Placement: actors outside any placement group."""

    def __init__(self, gpus: float = 0.0) -> None:
        self.gpus = gpus

    def options(self, role: str, index: int) -> dict[str, float]:
        return {"num_cpus": 0, "num_gpus": self.gpus}


def _with(cfg, **sections):
    """cfg with some fields of some sections replaced: _with(cfg, sync={"timeout_s": 3})."""
    return cfg.model_copy(update={k: getattr(cfg, k).model_copy(update=v) for k, v in sections.items()})


def _sequence(trainer) -> tuple[list[int], list[int]]:
    prompt = trainer.eval_prompts[2].token_ids
    return prompt, trainer.rollouts.generate([Prompt(0, prompt, "0")], 1, 1.0, seed=11)[0].response_ids


def _engine_logprobs(rollouts, prompt, response) -> list[torch.Tensor]:
    """Response logprobs from every engine of the group."""
    per_worker = rollouts.call("sequence_logprobs", [prompt + response])
    return [torch.tensor(w[0][len(prompt) - 1:]) for w in per_worker]


def _learner_logprobs(learners, prompt, response) -> torch.Tensor:
    return torch.tensor(learners.call("logprobs", TrainBatch([prompt], [response], [], [0.0], []))[0][0])


@pytest.fixture(scope="module")
def two_engines(trainer):
    from cluster.groups import RolloutGroup

    cfg = _with(trainer.cfg, rollout={"num_workers": 2, "kv_cache_gib": 0.05})
    group = RolloutGroup(cfg, trainer.model_path, Unplaced())
    yield group
    group.kill()


def test_zero2_sync_leaves_two_engines_identical_to_the_learner(trainer, two_engines):
    """ZeRO-3 is the session trainer's layout (test_end_to_end); here a ZeRO-2 group of 2 ranks
    trains one step and syncs into two engines, which must both serve its weights (fp32, 1e-4)."""
    from cluster.groups import LearnerGroup
    from cluster.sync import WeightSync

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
    from cluster.sync import WeightSyncError

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
    """rollout[1] is busy and never joins the broadcast group: the sync fails fast and names it."""
    from cluster.sync import WeightSync, WeightSyncError

    sync = WeightSync(_with(trainer.cfg, sync={"transport": "shm", "timeout_s": 3.0}), trainer.learners, two_engines)
    busy = two_engines.actors[1].__ray_call__.remote(lambda self: time.sleep(6))
    start = time.perf_counter()
    with pytest.raises(WeightSyncError, match=r"learner\[0\] failed: TimeoutError: .*rollout\[1\] did not join within 3s"):
        sync.open_groups()
    assert time.perf_counter() - start < 3.0 * 1.25 + 2.0 + 1.0
    ray.get(busy)


# ---- GPU transports (run where CUDA is available) ------------------------------------------
def _gpu_roundtrip(tmp_path, transport: str, gpus_each: float) -> None:
    """A 1-rank learner and a 1-engine rollout group on GPUs: train one step, sync, compare logprobs."""
    from cluster.config import TinyModelConfig, load_config
    from cluster.groups import LearnerGroup, RolloutGroup
    from cluster.sync import WeightSync
    from cluster.tiny_model import build_random_model

    if not ray.is_initialized():
        ray.init(address="local", include_dashboard=False)
    tiny = TinyModelConfig(hidden_size=64, intermediate_size=128, num_layers=2, num_heads=2, num_kv_heads=1)
    model = str(build_random_model(tiny, ["12 + 34 = 46"] * 200, tmp_path / "model", seed=0))
    cfg = load_config(None, ["cluster.device=gpu", f"sync.transport={transport}", "learner.num_ranks=1",
                             "learner.zero_stage=2", "rollout.gpu_memory_utilization=0.3", "rollout.max_model_len=128"])
    rollouts = RolloutGroup(cfg, model, Unplaced(gpus_each))
    learners = LearnerGroup(cfg, model, Unplaced(gpus_each))
    try:
        prompt, response = [1, 2, 3, 4, 5], [6, 7, 8, 9]
        old = _engine_logprobs(rollouts, prompt, response)[0]
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
                    reason="NCCL broadcast needs two GPUs (NCCL refuses two ranks on one device)")
def test_nccl_broadcast_transport(tmp_path):
    _gpu_roundtrip(tmp_path, "broadcast", gpus_each=1.0)
