"""Host memory planned before a local CPU run (cluster/planning/host_memory.py), with the machine's memory given as
numbers: the default fits with only its `auto` token budget planned; a 100M-parameter model with sequence-counted micro-batches gets the
largest token budget that fits; a machine far too small is refused with the fields to change."""
from __future__ import annotations

from cluster.config import load_config
from cluster.planning.host_memory import demand, plan_host_memory, with_token_budget
from cluster.planning.memory_model import GIB
from tests.conftest import ROOT

# Issue 21's example of a bigger model through the default config, with micro-batches counted in sequences
# (configs/tiny.yaml plans them by tokens now: the last test).
BIG = ["model.tiny.preset=qwen2-100m", "rollout.max_new_tokens=128", "rollout.max_model_len=512",
       "train.prompts_per_step=16", "learner.max_tokens_per_micro_batch=null"]


def _cfg(*overrides: str):
    return load_config(str(ROOT / "configs" / "tiny.yaml"), list(overrides))


def test_the_default_fits_on_this_machines_size_with_only_its_auto_budget_planned():
    cfg = _cfg()
    plan = plan_host_memory(cfg, 24 * GIB, 22 * GIB)
    assert plan.problem is None and plan.cfg.learner.max_tokens_per_micro_batch == 2048  # the CPU cap
    assert plan.cfg.model_copy(update={"learner": cfg.learner}) == cfg  # nothing else changed
    assert 2 * GIB < plan.demand < plan.budget
    fixed = _cfg("learner.max_tokens_per_micro_batch=null")
    unchanged = plan_host_memory(fixed, 24 * GIB, 22 * GIB)
    assert unchanged.problem is None and unchanged.note is None and unchanged.cfg is fixed


def test_sequence_counted_micro_batches_that_do_not_fit_get_the_largest_token_budget_that_does():
    cfg = _cfg(*BIG)
    total, available = 24 * GIB, 22 * GIB
    assert demand(cfg, available)[0] > 0.95 * total  # 64 sequences x 512 tokens per micro-batch: far too much
    plan = plan_host_memory(cfg, total, available)
    tokens = plan.cfg.learner.max_tokens_per_micro_batch
    assert plan.problem is None and tokens is not None and "learner.max_tokens_per_micro_batch=" in plan.note
    assert cfg.rollout.max_model_len <= tokens < cfg.learner.micro_batch_size * cfg.rollout.max_model_len
    assert plan.demand <= plan.budget
    assert demand(with_token_budget(cfg, {"learner": tokens + 128, "critic": tokens + 128}), available)[0] > plan.budget  # the largest, to 64 tokens
    assert cfg.learner.max_tokens_per_micro_batch is None  # the given config is left as it was


def test_a_run_that_cannot_fit_is_refused_with_the_fields_to_change():
    plan = plan_host_memory(_cfg(*BIG), 4 * GIB, 3 * GIB)
    assert plan.problem is not None and plan.cfg.learner.max_tokens_per_micro_batch is None
    for hint in ("learner.gradient_checkpointing=true", "learner.num_ranks", "rollout.kv_cache_gib", "RAY_memory_usage_threshold"):
        assert hint in plan.problem


def test_the_bigger_model_through_the_default_config_fits_with_the_planned_token_budget():
    cfg = _cfg(*BIG[:-1])  # configs/tiny.yaml's own `auto`
    plan = plan_host_memory(cfg, 24 * GIB, 22 * GIB)
    tokens = plan.cfg.learner.max_tokens_per_micro_batch
    assert plan.problem is None and plan.demand <= plan.budget
    assert cfg.rollout.max_model_len <= tokens <= 2048
