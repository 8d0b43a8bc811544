"""benchmarks/peers.py's own code on given numbers: the mapping of our config onto TRL's GRPOConfig options,
the step-figure derivations, the speed-up and goal, the process-tree memory sampler (on a real child process)
and the docs table. No TRL import here; the one check against TRL's real GRPOConfig runs it in a child process
with the bench site on its path and is skipped when requirements/bench.txt is not installed."""
from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from benchmarks.peers import (BENCH_SITE, NoEquivalent, TreeSampler, compare, median_after, step_cpu_seconds,
                              summarize_ours, summarize_trl, trl_args)
from benchmarks.peers_report import section
from cluster.config import load_config

ROOT = Path(__file__).resolve().parent.parent


def test_default_shape_maps_to_one_generation_and_one_optimizer_step() -> None:
    args = trl_args(load_config("configs/tiny.yaml", ["model.dtype=float32"]))
    assert args["num_generations"] == 8
    # 32 prompts x 8 samples per optimizer step, generated at once: TRL's generation batch = micro x steps
    assert args["per_device_train_batch_size"] * args["gradient_accumulation_steps"] == 256
    assert args["steps_per_generation"] == args["gradient_accumulation_steps"] == 4
    assert args["per_device_train_batch_size"] == 64  # our micro_batch_size (our own micro-batches: a planned token budget)
    assert (args["loss_type"], args["scale_rewards"], args["beta"]) == ("dapo", "group", 0.0)
    assert (args["max_completion_length"], args["learning_rate"], args["lr_scheduler_type"]) == (64, 2e-4, "constant")
    assert args["bf16"] is False and args["shuffle_dataset"] is False


def test_cpu_scale_maps_kl_entropy_bf16_and_the_token_budget() -> None:
    args = trl_args(load_config("configs/cpu_scale.yaml"))
    assert (args["beta"], args["entropy_coef"], args["bf16"]) == (1e-4, 1e-3, True)
    # 2560-token budget / 320-token sequences = 8 per micro-batch; 8 prompts x 8 = 64 completions
    assert (args["per_device_train_batch_size"], args["gradient_accumulation_steps"]) == (8, 8)
    assert (args["max_completion_length"], args["learning_rate"]) == (256, 1e-5)


def test_other_aggregations_map_and_settings_without_equivalent_are_refused() -> None:
    assert trl_args(load_config("configs/tiny.yaml", ["algorithm.loss_agg=seq_mean_token_mean"]))["loss_type"] == "grpo"
    dr = trl_args(load_config("configs/tiny.yaml", ["algorithm.advantage=dr_grpo",
                                                    "algorithm.loss_agg=seq_mean_token_sum_norm"]))
    assert (dr["loss_type"], dr["scale_rewards"]) == ("dr_grpo", "none")
    for override in ("algorithm.loss_agg=seq_mean_token_sum", "algorithm.advantage=rloo", "algorithm.dual_clip=3",
                     "algorithm.ppo_mini_batches=2"):
        with pytest.raises(NoEquivalent):
            trl_args(load_config("configs/tiny.yaml", [override]))


def test_median_leaves_out_the_warm_up_steps() -> None:
    assert median_after([30.0, 9.0, 2.0, 4.0, 3.0], 2) == 3.0
    assert median_after([5.0, 7.0], 4) == 6.0  # nothing left after the skip: all of them
    with pytest.raises(ValueError):
        median_after([], 1)


def _ours_rows() -> list[dict[str, float]]:
    step = lambda s, length, acc: {"step": s, "time/step_s": [9.0, 4.0, 2.0, 3.0][s - 1],  # noqa: E731
                                   "time/train_s": 1.0 + s, "time/generate_s": 0.5, "train/response_len": length,
                                   "train/accuracy": acc}
    return [{"step": 0, "eval/accuracy": 0.25}] + [step(s, 10.0 * s, 0.1 * s) for s in range(1, 5)]


def test_our_figures_come_from_the_training_rows() -> None:
    out = summarize_ours(_ours_rows(), skip=1, samples_per_step=8)
    assert out["step_s"] == [9.0, 4.0, 2.0, 3.0] and out["median_step_s"] == 3.0
    # tokens/s per step: 8 x 20 / 4, 8 x 30 / 2, 8 x 40 / 3 -> median 80
    assert out["tokens_per_s"] == pytest.approx(320 / 3)
    assert out["phases_s"] == {"generate_s": 0.5, "train_s": 4.0}
    assert out["train_accuracy"] == pytest.approx([0.1, 0.2, 0.3, 0.4])


def test_trl_figures_speedup_and_goal() -> None:
    steps = [{"step_s": s, "generate_s": g, "tokens": 600, "reward_mean": 0.5} for s, g in
             ((20.0, 15.0), (6.0, 4.0), (7.5, 5.0), (6.5, 4.5))]
    trl = {**summarize_trl(steps, skip=1), "peak_pss_bytes": 2.0, "heldout": {"accuracy": 0.5}}
    assert trl["median_step_s"] == 6.5 and trl["tokens_per_s"] == pytest.approx(600 / 6.5)
    assert trl["phases_s"] == {"generate_s": 4.5, "rest_s": 2.0}
    ours = {"median_step_s": 4.0, "tokens_per_s": 150.0, "peak_pss_bytes": 3.0, "heldout": {"accuracy": 0.5}}
    c = compare(ours, trl)
    assert c["speedup"] == pytest.approx(6.5 / 4.0) and c["memory_ratio"] == 1.5 and c["goal_met"]
    assert c["cpu_ratio"] is None  # no CPU figures on either side
    steps_cpu = [{**s, "cpu_s": 2 * s["step_s"]} for s in steps]
    with_cpu = compare({**ours, "median_cpu_s": 6.5}, summarize_trl(steps_cpu, skip=1) | {
        "peak_pss_bytes": 2.0, "heldout": {"accuracy": 0.5}})
    assert with_cpu["cpu_ratio"] == pytest.approx(13.0 / 6.5)
    assert not compare({**ours, "median_step_s": 5.0}, trl)["goal_met"]  # 1.3x: short of 1.5x
    assert not compare({**ours, "heldout": {"accuracy": 0.45}}, trl)["goal_met"]  # fast but less accurate


def test_step_cpu_is_cut_where_each_row_appeared() -> None:
    rows = _ours_rows()  # line 1: the step-0 evaluation, lines 2-5: steps 1-4
    seen = {0: 1.0, 1: 20.0, 2: 35.0, 3: 44.5, 5: 70.0}  # line 4 appeared between two samples: never seen
    assert step_cpu_seconds(rows, seen) == [15.0, 9.5, None, None]
    out = summarize_ours(rows, skip=1, samples_per_step=8, cpu=step_cpu_seconds(rows, seen))
    assert out["median_cpu_s"] == 9.5  # the unseen steps are left out, not counted as 0
    assert summarize_ours(rows, 1, 8)["median_cpu_s"] is None


def test_tree_sampler_sees_a_child_process_memory() -> None:
    """A real child that holds 300 MB for a while: the sampled peak of its tree counts it."""
    child = subprocess.Popen([sys.executable, "-c", "b = bytearray(300 * 2**20); import time; time.sleep(3)"])
    sampler = TreeSampler(child.pid, period=0.2)
    child.wait(timeout=30)
    time.sleep(0.3)
    out = sampler.stop()
    assert out["peak_pss_bytes"] > 300 * 2**20
    assert out["loadavg_1m_max"] is not None and out["loadavg_1m_max"] >= 0
    assert 0.0 < out["cpu_s_total"] < 30.0  # allocating 300 MB takes CPU time; the sleep takes none


def _results(reduced: bool) -> dict:
    def side(step: float, acc: float) -> dict:
        return {"median_step_s": step, "tokens_per_s": 1000 / step, "peak_pss_bytes": 3 * 2**30, "step_s": [9.0, step],
                "phases_s": {"generate_s": 1.25, "rest_s": 0.75}, "heldout": {"accuracy": acc, "greedy_accuracy": 0.5, "samples": 1024},
                "heldout_start": {"accuracy": 0.2}, "loadavg_1m_mean": 7.5, "loadavg_1m_max": 9.0}
    ours, trl = side(2.0, 0.6), side(5.0, 0.55)
    return {"shapes": {"default": {"config": "configs/tiny.yaml", "prompts_per_step": 32, "samples_per_prompt": 8,
                                   "max_new_tokens": 64, "dtype": "float32", "steps": 2, "skip": 1,
                                   "heldout_problems": 256, "eval_samples": 4, "measured": "then", "reduced": reduced,
                                   "ours": ours, "trl": trl, "comparison": compare(ours, trl)}}}


def test_docs_section_states_the_measured_ratio() -> None:
    text = section(_results(reduced=False))
    assert text.startswith("## Against a peer")
    assert "| default | **ours / TRL** | **2.50x** (TRL's step / ours) | n/a |" in text  # no CPU figures given
    assert "| default | ReasonRL | 2.00 | n/a | 500 | 3.00 | 0.600 | 0.500 | 7.5 |" in text
    assert "Goal met: yes (2.50x per step)" in text and "Reduced run" not in text
    # 0.6 vs 0.55 on 1024 answers each: difference +0.05, standard error sqrt(.24/1024 + .2475/1024) = 0.0218
    assert "ours minus TRL: +0.050 (binomial standard error 0.022" in text
    assert "Reduced run" in section(_results(reduced=True))
    assert "HF `generate` for 1.2 s (25%)" in text  # TRL's generation share of its 5 s step


@pytest.mark.skipif(not (BENCH_SITE / "trl").is_dir(), reason="TRL not installed (requirements/bench.txt)")
def test_trl_accepts_every_mapped_option() -> None:
    """TRL's real GRPOConfig, in a child process with the bench site on its path, takes our arguments as given."""
    args = {name: trl_args(load_config(path)) for name, path in (("tiny", "configs/tiny.yaml"),
                                                                 ("scale", "configs/cpu_scale.yaml"))}
    code = ("import json, sys\nfrom trl import GRPOConfig\nfor name, a in json.loads(sys.argv[1]).items():\n"
            "    c = GRPOConfig(output_dir='/tmp/peers-test', **a)\n"
            "    print(name, c.generation_batch_size, c.loss_type, c.beta, c.max_completion_length)\n")
    out = subprocess.run([sys.executable, "-c", code, json.dumps(args)], cwd=ROOT, capture_output=True, text=True,
                         env={"PYTHONPATH": f"{BENCH_SITE}:{ROOT}", "PATH": "/usr/bin:/bin"}, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "tiny 256 dapo 0.0 64" in out.stdout and "scale 64 dapo 0.0001 256" in out.stdout
