"""CLI: python -m cluster.evaluate --model <HF dir | checkpoint | run dir> --benchmarks math500,gsm8k,...

Benchmark evaluation with the training stack's own rollout workers (vLLM) and reward pool (the
grader; reward.custom_fn is ignored here). --extract boxed_or_phrase (reward.extract) also accepts
unboxed final answers ("The final answer is $15$. I hope it is correct.", "Answer: 8"), as
Minerva-style few-shot and instruct models write them; the default scores boxed answers only. Per benchmark: greedy pass@1, and with --samples n > 0,
avg@n (mean correctness of n samples at --temperature) and pass@k for each k in --pass-k, with the
unbiased estimator 1 - C(n-c, k) / C(n, k) (Chen et al. 2021). Results are printed as a table and
written to <out>/results.json and <out>/results.md.

Files: MATH500 and GSM8K (MIT) ship in data/. AIME24, AMC23, Minerva and OlympiadBench are
evaluation-only (no open or a non-commercial license) and are never committed: they are read
from --data-dir (default ../shared/data beside the repository, when it exists). Any other name N
reads <data-dir>/N.jsonl or <data-dir>/N_test.jsonl (problem/answer fields).
"""
from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Any

from cluster.loop.benchmark_suite import BENCHMARKS, DEFAULT_DATA_DIR, BenchmarkResult, markdown_table, run_benchmarks


def _model_dir(model: Path, out: Path) -> Path:
    """An HF directory as given; a checkpoint (or run directory) is exported into <out>/model first."""
    if (model / "config.json").is_file() and not (model / "trainer_state.json").is_file():
        return model
    from cluster.infra.hf_export import export

    return export(model, out / "model")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m cluster.evaluate", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="Hugging Face model dir, checkpoints/step_<k>, or a run dir")
    p.add_argument("--benchmarks", required=True, help="comma-separated: " + ",".join(BENCHMARKS))
    p.add_argument("--data-dir", type=Path, help=f"evaluation-only sets (default {DEFAULT_DATA_DIR} if present)")
    p.add_argument("--out", type=Path, default=Path("runs/eval"), help="results directory")
    p.add_argument("--config", help="YAML config for rollout/reward/cluster settings (default: built-in)")
    p.add_argument("--template", choices=["plain", "qwen_boxed"], help="prompt template (default data.template)")
    p.add_argument("--samples", type=int, default=0, help="sampled completions per problem for avg@n/pass@k")
    p.add_argument("--pass-k", default="1", help="comma-separated k values for pass@k (k <= --samples)")
    p.add_argument("--temperature", type=float, help="sampling temperature (default rollout.temperature)")
    p.add_argument("--limit", type=int, help="first N problems of each benchmark")
    p.add_argument("--extract", choices=["boxed", "boxed_or_phrase"],
                   help="final-answer extraction (default reward.extract: boxed)")
    p.add_argument("overrides", nargs="*", help="section.key=value, e.g. rollout.max_new_tokens=3000")
    args = p.parse_args(argv)
    from cluster.config import ConfigError, load_config

    args.out.mkdir(parents=True, exist_ok=True)
    model = _model_dir(Path(args.model), args.out)
    try:
        extract = [f"reward.extract={args.extract}"] if args.extract else []
        cfg = load_config(args.config, args.overrides + extract + [f"model.path={model}", "reward.custom_fn=null"])
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    results = _evaluate(cfg, args)
    table = markdown_table(results)
    summary = [{k: v for k, v in asdict(r).items() if k != "completions"} for r in results]
    (args.out / "results.json").write_text(json.dumps({"model": str(model), "extract": cfg.reward.extract,
                                                       "results": summary}, indent=2))
    for r in results:
        (args.out / f"{r.name}_greedy.jsonl").write_text("".join(json.dumps(c) + "\n" for c in r.completions))
    (args.out / "results.md").write_text(f"Model: `{model}` (answer extraction: {cfg.reward.extract})\n\n{table}")
    print(table + f"\nresults: {args.out / 'results.json'}, {args.out / 'results.md'}")
    return 0


def _evaluate(cfg: Any, args: argparse.Namespace) -> list[BenchmarkResult]:
    from transformers import AutoTokenizer

    from cluster.handles.groups import RewardPool
    from cluster.handles.rollout_group import RolloutGroup
    from cluster.infra.placement_group import connect, place

    connect(cfg)
    rollouts = RolloutGroup(cfg, cfg.model.path, place(cfg))
    rewards = RewardPool(cfg)
    try:
        return run_benchmarks(args.benchmarks.split(","), rollouts, rewards, AutoTokenizer.from_pretrained(cfg.model.path),
                              args.template or cfg.data.template, cfg.rollout.max_model_len - cfg.rollout.max_new_tokens,
                              args.data_dir, args.samples,
                              cfg.rollout.temperature if args.temperature is None else args.temperature,
                              [int(k) for k in args.pass_k.split(",")], args.limit, cfg.train.seed)
    finally:
        rewards.kill()
        rollouts.kill()


if __name__ == "__main__":
    sys.exit(main())
