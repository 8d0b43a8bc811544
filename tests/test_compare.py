"""cluster/compare.py: the cost curves it plots, its table, and what the CLI refuses (no Ray); one SFT and
one RFT step on the session trainer (real Ray, vLLM, DeepSpeed, reward actors with the session's stub
reward); the seeds table of benchmarks/learning.py. (The whole comparison and the seeds run the real
stack: `benchmarks/learning.py`, docs/benchmarks.md.)"""
from __future__ import annotations

import json
import subprocess
import sys

from cluster.compare import LABELS, compare_figure, curve, table
from tests.conftest import ROOT


def test_curve_reads_the_cost_of_each_evaluation(tmp_path):
    """Each evaluation is placed at the tokens and seconds spent by the step it follows."""
    rows = [{"step": 0, "eval/accuracy": 0.1},
            {"step": 1, "compare/train_tokens": 100.0, "compare/train_s": 2.0},
            {"step": 2, "compare/train_tokens": 250.0, "compare/train_s": 3.5}, {"step": 2, "eval/accuracy": 0.4},
            {"step": 2, "rephrased/accuracy": 0.2}]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert curve(tmp_path) == [(0.0, 0.0, 0.1), (250.0, 3.5, 0.4)]


def test_compare_figure_draws_each_methods_curve(tmp_path):
    """compare.png: per method, held-out accuracy against tokens trained on (left) and seconds (right)."""
    for method, scale in (("rl", 1.0), ("sft", 3.0)):
        rows = [{"step": 0, "eval/accuracy": 0.1},
                {"step": 1, "compare/train_tokens": 100.0 * scale, "compare/train_s": 2.0 / scale},
                {"step": 1, "eval/accuracy": 0.2 * scale}]
        (tmp_path / method).mkdir()
        (tmp_path / method / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    fig = compare_figure(tmp_path, ["rl", "sft"])
    for ax, x in zip(fig.axes, (0, 1)):
        lines = {line.get_label(): line for line in ax.get_lines()}
        for method in ("rl", "sft"):
            points = curve(tmp_path / method)
            assert list(lines[LABELS[method]].get_xdata()) == [p[x] for p in points]
            assert list(lines[LABELS[method]].get_ydata()) == [p[2] for p in points]
    assert list(lines[LABELS["sft"]].get_ydata()) == [0.1, 0.2 * 3.0]  # sft: its own curve, not rl's


def test_table_has_a_row_per_method_with_start_and_end():
    figures = {f"{k}_{end}": v for k in ("accuracy", "greedy_accuracy", "worked_frac", "rephrased_accuracy")
               for end, v in (("start", 0.25), ("end", 0.75))}
    row = {"method": "rft", "steps": 40, "train_tokens": 12345.0, "train_seconds": 99.4, **figures,
           "response_len_start": 12.34, "response_len_end": 34.56}
    text = table([row])
    assert "| rejection-sampling FT (own correct samples) | 40 | 12,345 | 99 | 0.250 -> 0.750 | 0.250 -> 0.750 | " \
           "0.25 -> 0.75 | 12.3 -> 34.6 | 0.250 -> 0.750 |" in text


def test_cli_refuses_file_data_and_unknown_methods(tmp_path):
    data = tmp_path / "d.jsonl"
    data.write_text('{"problem": "1+1", "answer": "2"}\n')
    run = lambda *args: subprocess.run([sys.executable, "-m", "cluster.compare", "--config", "configs/tiny.yaml",  # noqa: E731
                                        "--out", str(tmp_path / "out"), *args], cwd=ROOT, capture_output=True,
                                       text=True, timeout=120)
    proc = run("data.kind=jsonl", f"data.train_path={data}")
    assert proc.returncode == 2 and "teacher" in proc.stderr
    proc = run("--methods", "rl,dpo")
    assert proc.returncode == 2 and "unknown dpo" in proc.stderr
    assert not (tmp_path / "out").exists()


def test_seeds_table_gives_mean_and_sd_per_staleness():
    """benchmarks/learning.py's table: mean ± sd (n-1) of each figure over the seeds of each max_staleness,
    and the gain-sd verdict against the issue's 5-point goal."""
    from benchmarks.learning import derived, seeds_section, seeds_table

    def row(seed: int, k: int, start: float, end: float) -> dict:
        return derived({"seed": seed, "max_staleness": k, "eval_accuracy_start": start, "eval_accuracy_end": end,
                        "eval_greedy_accuracy_start": 0.1, "eval_greedy_accuracy_end": 0.9,
                        "eval_boxed_rate_start": 1.0, "eval_boxed_rate_end": 1.0,
                        "eval_response_tokens_start": 10.0, "eval_response_tokens_end": 30.0 + seed,
                        "eval_worked_frac_start": 0.1, "eval_worked_frac_end": 1.0,
                        "eval_reflection_frac_start": 0.0, "eval_reflection_frac_end": 0.0, "wall_seconds": 200.0,
                        "train_truncated_frac_end": 1.0 if seed == 2 else 0.0})

    rows = [row(0, 0, 0.1, 0.8), row(1, 0, 0.1, 0.9), row(2, 0, 0.1, 0.7), row(0, 1, 0.1, 0.6)]
    text = seeds_table(rows)
    assert "| cut at max_new_tokens, last training batch (%) | 33.3 ± 57.7 | 0.0 (one run) |" in text
    assert "| accuracy gain (points) | 70.0 ± 10.0 | 50.0 (one run) |" in text
    assert "| response length ratio | 3.1 ± 0.1 | 3.0 (one run) |" in text
    assert "max_staleness=0: gain sd 10.0 points (misses the <= 5 goal)" in seeds_section(rows)


def test_one_sft_and_one_rft_step_train_the_policy_through_the_learner(trainer):
    """A MethodRun's step (the step its plan gives Trainer.run) on the session trainer's actors: the SFT step
    trains on the teacher's worked solutions of the step's problems, the RFT step on the distinct responses
    the reward marked correct; each is one optimizer step that moves the policy the engines then serve, and
    counts the tokens it trained on."""
    import dataclasses

    import torch

    from cluster.compare import MethodRun, RejectionStep, TeacherStep
    from protocol.batch import TrainBatch

    prompt = trainer.eval_prompts[0].token_ids
    probe = TrainBatch([prompt], [trainer.tokenizer.encode(" 7+5=12. So \\boxed{12}.")], [], [0.0], [])
    seen = {}
    for step, method in ((1000, "sft"), (0, "rft")):  # rft: the pipeline serves steps < train.steps
        run = MethodRun(method)
        run.prepare(trainer)
        assert run.plan().step == run.step and not run.plan().checkpointed
        assert isinstance(run.source, {"sft": TeacherStep, "rft": RejectionStep}[method])
        if method == "sft":
            batch, _ = run.source.batch(step)
            assert len(batch) == trainer.cfg.train.prompts_per_step * trainer.cfg.rollout.samples_per_prompt
            texts = [trainer.tokenizer.decode(r) for r in batch.response_ids]
            assert all(t.strip().startswith(run.source.teacher[p.text].strip()[:5]) for t, p in
                       zip(texts, trainer.train_data.batch(step, len(batch))))
        before = torch.tensor(trainer.learners.logprobs(dataclasses.replace(probe))[0])
        metrics = run.step(step)
        after = torch.tensor(trainer.learners.logprobs(dataclasses.replace(probe))[0])
        seen[method] = metrics
        assert metrics["compare/train_s"] > 0 and metrics["compare/train_tokens"] == run.tokens
        if method == "rft" and metrics["rft/kept"] == 0:
            continue  # nothing correct to train on: no step (checked below)
        assert metrics["train/optimizer_steps"] == 1.0, (method, metrics)
        assert metrics["compare/train_tokens"] > 0
        assert (after - before).abs().max() > 1e-4, f"{method}: the policy did not move"
    assert seen["sft"]["train/loss"] > 0
    assert seen["rft"]["rft/kept"] >= 1, "the stub reward marks about half the samples correct"
