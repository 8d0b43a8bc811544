"""What a learning run's row keeps of its metrics.jsonl beyond summary.json: the held-out curve, the share of
each training batch cut at max_new_tokens, the median step phases, update and dynamic-sampling statistics,
the tokens generated before each evaluation, and the settings that the default's figures depend on. benchmarks/learning.py stores it in each row of a runs file, so the
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
DYNAMIC = ("dynamic/rounds", "dynamic/generated_groups", "dynamic/dropped_groups", "dynamic/filled_groups")


def step_tokens(row: dict[str, Any]) -> float:
    """Tokens the engines generated for a step's batch: dynamic sampling logs them (dropped groups included);
    otherwise the step's generation rate times its generation seconds (what the rate was computed from)."""
    if "dynamic/generated_tokens" in row:
        return row["dynamic/generated_tokens"]
    return row.get("perf/gen_tokens_per_s", 0.0) * row.get("time/generate_s", 0.0)


def run_series(run_dir: Path) -> dict[str, Any]:
    from cluster.infra.metrics import read_metrics

    rows = read_metrics(run_dir)
    steps = [r for r in rows if "time/step_s" in r]
    generated, total = {0: 0.0}, 0.0  # tokens generated up to and including each step
    for r in sorted(steps, key=lambda r: r["step"]):
        total += step_tokens(r)
        generated[r["step"]] = total
    evals = [{"step": r["step"], "accuracy": r["eval/accuracy"], "greedy": r.get("eval/greedy_accuracy"),
              "response_tokens": r.get("eval/response_len"), "worked": r.get("eval/worked_frac"),
              "generated_tokens": generated.get(r["step"])}
             for r in rows if "eval/accuracy" in r]
    later = steps[2:] or steps
    medians = {key: statistics.median(r[key] for r in later if key in r)
               for key in PHASES + UPDATE + DYNAMIC if any(key in r for r in later)}
    truncated = [[r["step"], r["train/truncated_frac"]] for r in rows if "train/truncated_frac" in r]
    return {"evals": evals, "medians": medians, "truncated_by_step": truncated}


def settings(cfg: Any) -> dict[str, Any]:
    """The resolved settings a row's figures depend on that its overrides may not show (the config's own)."""
    return {"dtype": cfg.model.dtype, "max_tokens_per_micro_batch": cfg.learner.max_tokens_per_micro_batch,
            "micro_batch_size": cfg.learner.micro_batch_size, "overlong_buffer": cfg.algorithm.overlong_buffer,
            "ppo_mini_batches": cfg.algorithm.ppo_mini_batches, "ppo_epochs": cfg.algorithm.ppo_epochs}
