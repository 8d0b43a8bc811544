"""What a learning run's row keeps of its metrics.jsonl beyond summary.json: the held-out curve, the share of
each training batch cut at max_new_tokens, the median step phases and update statistics, and the settings
that the default's figures depend on. benchmarks/learning.py stores it in each row of a runs file, so the
sections drawn from it (the update rule, the end-of-sequence token) are rendered from a committed file.
"""
from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any

# Medians over the steps after the first two (their time includes compilation and warm caches).
PHASES = ("time/step_s", "time/rollout_wall_s", "time/logprobs_s", "time/train_s")
UPDATE = ("train/ratio_max", "train/clip_frac", "train/approx_kl", "train/rollout_logprob_diff_max",
          "train/optimizer_steps")


def run_series(run_dir: Path) -> dict[str, Any]:
    from cluster.infra.metrics import read_metrics

    rows = read_metrics(run_dir)
    evals = [{"step": r["step"], "accuracy": r["eval/accuracy"], "greedy": r.get("eval/greedy_accuracy"),
              "response_tokens": r.get("eval/response_len"), "worked": r.get("eval/worked_frac")}
             for r in rows if "eval/accuracy" in r]
    steps = [r for r in rows if "time/step_s" in r]
    later = steps[2:] or steps
    medians = {key: statistics.median(r[key] for r in later if key in r)
               for key in PHASES + UPDATE if any(key in r for r in later)}
    truncated = [[r["step"], r["train/truncated_frac"]] for r in rows if "train/truncated_frac" in r]
    return {"evals": evals, "medians": medians, "truncated_by_step": truncated}


def settings(cfg: Any) -> dict[str, Any]:
    """The resolved settings a row's figures depend on that its overrides may not show (the config's own)."""
    return {"dtype": cfg.model.dtype, "max_tokens_per_micro_batch": cfg.learner.max_tokens_per_micro_batch,
            "micro_batch_size": cfg.learner.micro_batch_size, "overlong_buffer": cfg.algorithm.overlong_buffer,
            "ppo_mini_batches": cfg.algorithm.ppo_mini_batches, "ppo_epochs": cfg.algorithm.ppo_epochs}
