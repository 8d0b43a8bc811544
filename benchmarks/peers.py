"""ReasonRL against a peer, TRL's GRPOTrainer (trl==1.16.0), on exactly our workload, side by side in one run.

Shapes: "default" (configs/tiny.yaml: the embedded column_addition task, its cached base model, 32 prompts x 8
samples, 64-token answers, fp32) and "cpu_scale" (configs/cpu_scale.yaml: a random 104M Qwen2, 8 prompts x 8,
256-token answers, bf16, KL reference, entropy bonus). For each shape, back to back on the same machine:

- ours: the real CLI, `python -m cluster.train --config <yaml> --run-dir <dir> train.steps=N ...`; step times and
  phase times from its metrics.jsonl, held-out accuracy from its summary.json (cluster/loop/heldout.py: vLLM, T=1);
- TRL: benchmarks/peers_trl.py in one plain process on CPU (HF generate), GRPOTrainer configured by
  `trl_args` from the same config, trained on the very prompts our run trained on, in the same order, rewarded
  by our grader (reward.score on the last boxed answer); then the same held-out problems sampled at the same
  temperature with HF generate and scored by reward.score.

Step time is the median over the steps after the first `skip`; tokens/s is generated (response) tokens of a
step over its time; peak memory is the peak of the summed PSS of the run's whole process tree (our driver,
Ray's own processes, rollout/learner/reward actors; TRL's single process), sampled every 2 s. The load average
is sampled alongside: the machine is shared.

TRL is a benchmark-only dependency, never in the locked venv. Install it (and what the venv lacks) once:

    .venv/bin/python -m pip install --no-deps --target .cache/bench-site -r requirements/bench.txt

    .venv/bin/python benchmarks/peers.py [--shapes default cpu_scale] [--steps N] [--skip K] [--prompts P]
                                         [--write-docs]
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.doc_sections import replace_section  # noqa: E402
from benchmarks.peers_report import section  # noqa: E402

BENCH_SITE = ROOT / ".cache" / "bench-site"
WORK = Path(os.environ.get("BENCH_DIR", "/tmp/reasonrl-bench-peers"))
RESULTS = ROOT / "docs" / "peers" / "results.json"
SHAPES = {"default": "configs/tiny.yaml", "cpu_scale": "configs/cpu_scale.yaml"}
STEPS = {"default": (6, 2), "cpu_scale": (3, 1)}  # (steps run, first steps left out of the median)
GOAL = 1.5  # issue 28: ours >= 1.5x TRL per step
# Our loss aggregations and advantages that TRL has an equivalent of (its loss_type / scale_rewards).
LOSS_TYPES = {"token_mean": "dapo", "seq_mean_token_mean": "grpo", "seq_mean_token_sum_norm": "dr_grpo"}
SCALE_REWARDS = {"grpo": "group", "dr_grpo": "none"}


class NoEquivalent(ValueError):
    """A setting of ours that TRL's GRPOTrainer has no option for: the comparison would not be like for like."""


def trl_args(cfg: Any) -> dict[str, Any]:
    """GRPOConfig keyword arguments that reproduce `cfg`'s step as closely as TRL's options allow: one
    generation of prompts_per_step x samples_per_prompt completions and one optimizer step per step, in
    micro-batches of our micro_batch_size (or of the full-length sequences a fixed token budget holds).
    Overlong shaping is not an argument: the TRL side adds the same penalty in its reward (peers_trl.py)."""
    a, r, le, t = cfg.algorithm, cfg.rollout, cfg.learner, cfg.train
    if a.advantage not in SCALE_REWARDS:
        raise NoEquivalent(f"algorithm.advantage={a.advantage}: TRL's GRPO only has group advantages (grpo, dr_grpo)")
    if a.loss_agg not in LOSS_TYPES:
        raise NoEquivalent(f"algorithm.loss_agg={a.loss_agg}: no TRL loss_type aggregates so")
    if a.ppo_mini_batches != 1 or a.dual_clip is not None or a.kl_in_reward or (a.kl_coef and a.kl_estimator != "k3"):
        raise NoEquivalent("ppo_mini_batches > 1, dual_clip, kl_in_reward and KL estimators other than k3 have no "
                           "TRL GRPO equivalent")
    completions = t.prompts_per_step * r.samples_per_prompt
    micro = le.micro_batch_size
    # A fixed budget in full-length sequences: TRL's micro-batches are by count. `auto` is planned per run and
    # machine, so TRL keeps micro_batch_size (configs/tiny.yaml: 64, TRL's setting before ours went by tokens).
    if isinstance(le.max_tokens_per_micro_batch, int):
        micro = max(1, le.max_tokens_per_micro_batch // r.max_model_len)
    micro = min(micro, completions)
    while completions % micro:
        micro -= 1
    accumulation = completions // micro
    return {
        "num_generations": r.samples_per_prompt, "per_device_train_batch_size": micro,
        "gradient_accumulation_steps": accumulation, "steps_per_generation": accumulation,
        "num_iterations": a.ppo_epochs, "max_completion_length": r.max_new_tokens,
        "temperature": r.temperature, "top_p": r.top_p, "top_k": 0,
        "learning_rate": le.lr, "lr_scheduler_type": "constant", "warmup_steps": 0,
        "weight_decay": le.weight_decay, "max_grad_norm": le.grad_clip,
        "adam_beta1": 0.9, "adam_beta2": 0.999, "adam_epsilon": 1e-8,  # torch.optim.AdamW's defaults, as ours
        "beta": a.kl_coef, "epsilon": a.clip_low, "epsilon_high": a.clip_high, "entropy_coef": a.entropy_coef,
        "loss_type": LOSS_TYPES[a.loss_agg], "scale_rewards": SCALE_REWARDS[a.advantage],
        "mask_truncated_completions": a.mask_truncated,
        "bf16": cfg.model.dtype == "bfloat16", "use_cpu": True, "seed": t.seed, "shuffle_dataset": False,
        "max_steps": t.steps, "logging_steps": 1, "save_strategy": "no", "report_to": "none",
        "disable_tqdm": True, "dataloader_num_workers": 0, "log_completions": False,
    }


def median_after(values: list[float], skip: int) -> float:
    """Median of `values` without the first `skip` (warm-up) entries; all of them when fewer remain."""
    kept = values[skip:] or values
    if not kept:
        raise ValueError("no values")
    return float(statistics.median(kept))


def cpu_median(cpu: list[float | None], skip: int) -> float | None:
    """Median CPU seconds per step after the first `skip` (None when no step after them was seen)."""
    kept = [c for c in cpu[skip:] if c is not None]
    return float(statistics.median(kept)) if kept else None


def summarize_ours(rows: list[dict[str, Any]], skip: int, samples_per_step: int,
                   cpu: list[float | None] | None = None) -> dict[str, Any]:
    """Step figures from our metrics.jsonl rows (the training rows carry time/step_s); `cpu`: each step's CPU
    seconds over the whole process tree (step_cpu_seconds)."""
    steps = [r for r in rows if "time/step_s" in r]
    cpu = cpu if cpu is not None else [None] * len(steps)
    phases = sorted({k for r in steps for k in r if k.startswith("time/") and k != "time/step_s"})
    tokens = [r["train/response_len"] * samples_per_step for r in steps]
    return {"step_s": [r["time/step_s"] for r in steps], "tokens": tokens,
            "median_step_s": median_after([r["time/step_s"] for r in steps], skip),
            "tokens_per_s": median_after([n / r["time/step_s"] for n, r in zip(tokens, steps)], skip),
            "phases_s": {k.removeprefix("time/"): median_after([r.get(k, 0.0) for r in steps], skip) for k in phases},
            "train_accuracy": [r["train/accuracy"] for r in steps],
            "cpu_s": cpu, "median_cpu_s": cpu_median(cpu, skip)}


def summarize_trl(steps: list[dict[str, float]], skip: int) -> dict[str, Any]:
    """Step figures from peers_trl.py's per-step records."""
    return {"step_s": [s["step_s"] for s in steps], "tokens": [s["tokens"] for s in steps],
            "median_step_s": median_after([s["step_s"] for s in steps], skip),
            "tokens_per_s": median_after([s["tokens"] / s["step_s"] for s in steps], skip),
            "phases_s": {"generate_s": median_after([s["generate_s"] for s in steps], skip),
                         "rest_s": median_after([s["step_s"] - s["generate_s"] for s in steps], skip)},
            "train_accuracy": [s["reward_mean"] for s in steps],
            "cpu_s": [s.get("cpu_s") for s in steps], "median_cpu_s": cpu_median([s.get("cpu_s") for s in steps], skip)}


def compare(ours: dict[str, Any], trl: dict[str, Any]) -> dict[str, Any]:
    """Speed-up per step (TRL's step time over ours), and whether issue 28's goal is met on this shape."""
    speedup = trl["median_step_s"] / ours["median_step_s"]
    cpu_ratio = (trl["median_cpu_s"] / ours["median_cpu_s"]
                 if ours.get("median_cpu_s") and trl.get("median_cpu_s") else None)
    accuracy_ok = ours["heldout"]["accuracy"] >= trl["heldout"]["accuracy"]
    # binomial standard error of the difference, as if every sampled answer were independent (an underestimate:
    # answers to the same problem are correlated)
    ses = [math.sqrt(h["accuracy"] * (1 - h["accuracy"]) / h["samples"]) if h.get("samples") else None
           for h in (ours["heldout"], trl["heldout"])]
    diff_se = math.hypot(*ses) if None not in ses else None
    return {"speedup": speedup, "cpu_ratio": cpu_ratio, "tokens_per_s_ratio": ours["tokens_per_s"] / trl["tokens_per_s"],
            "memory_ratio": ours["peak_pss_bytes"] / trl["peak_pss_bytes"], "accuracy_not_worse": accuracy_ok,
            "accuracy_diff": ours["heldout"]["accuracy"] - trl["heldout"]["accuracy"], "accuracy_diff_se": diff_se,
            "goal_met": speedup >= GOAL and accuracy_ok}


class TreeSampler:
    """Every `period` s: the CPU seconds used so far by a process and all its descendants (each process's
    last seen user + system time, kept after it exits) and the 1-minute load average; every `pss_every`-th
    time also the summed PSS (its peak is kept). With `watch` (a metrics.jsonl), the CPU seconds at the
    moment the file first had n lines, for every n: a step's CPU time is the difference at its row's line."""

    def __init__(self, pid: int, period: float = 0.5, pss_every: int = 4, watch: Path | None = None) -> None:
        self.pid, self.period, self.pss_every, self.watch = pid, period, pss_every, watch
        self.peak, self.loads, self.cpu_by_pid, self.cpu_at_line = 0.0, [], {}, {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        import psutil

        tick = 0
        while not self._stop.is_set():
            try:
                root = psutil.Process(self.pid)
                procs = [root, *root.children(recursive=True)]
            except psutil.NoSuchProcess:
                return
            pss = 0.0
            for proc in procs:
                try:
                    t = proc.cpu_times()
                    self.cpu_by_pid[proc.pid] = t.user + t.system
                    if tick % self.pss_every == 0:
                        pss += proc.memory_full_info().pss
                except (psutil.NoSuchProcess, psutil.AccessDenied):
                    pass
            self.peak = max(self.peak, pss)
            if self.watch is not None and self.watch.exists():
                lines = sum(1 for line in self.watch.read_text().splitlines() if line.strip())
                self.cpu_at_line.setdefault(lines, self.cpu_s)
            if tick % self.pss_every == 0:
                self.loads.append(os.getloadavg()[0])
            tick += 1
            self._stop.wait(self.period)

    @property
    def cpu_s(self) -> float:
        return sum(self.cpu_by_pid.values())

    def stop(self) -> dict[str, Any]:
        self._stop.set()
        self._thread.join()
        return {"peak_pss_bytes": self.peak, "loadavg_1m_mean": statistics.fmean(self.loads) if self.loads else None,
                "loadavg_1m_max": max(self.loads, default=None), "cpu_s_total": self.cpu_s,
                "cpu_s_at_line": dict(self.cpu_at_line)}


def step_cpu_seconds(rows: list[dict[str, Any]], cpu_at_line: dict[int, float]) -> list[float | None]:
    """CPU seconds of each training row's step: the tree's CPU time when its line appeared minus when the
    line before it did (None where either moment was not seen)."""
    out = []
    for line, row in enumerate(rows, start=1):
        if "time/step_s" in row:
            before, after = cpu_at_line.get(line - 1), cpu_at_line.get(line)
            out.append(after - before if before is not None and after is not None else None)
    return out


def run_sampled(cmd: list[str], env: dict[str, str], log: Path, timeout: float, watch: Path | None = None) -> dict[str, Any]:
    """Run `cmd` (output to `log`) while sampling its process tree's CPU time and memory, and the load."""
    load_before = os.getloadavg()
    start = time.perf_counter()
    with log.open("w") as out:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
        sampler = TreeSampler(proc.pid, watch=watch)
        try:
            code = proc.wait(timeout=timeout)
        finally:
            if proc.poll() is None:
                proc.kill()
            sampled = sampler.stop()
    if code != 0:
        raise RuntimeError(f"{' '.join(cmd[:4])} ... failed ({code}); last lines of {log}:\n"
                           + "\n".join(log.read_text().splitlines()[-30:]))
    return {**sampled, "wall_s": time.perf_counter() - start, "loadavg_before": list(load_before),
            "loadavg_after": list(os.getloadavg())}


def plain_env() -> dict[str, str]:
    """The environment for our side: without the bench site on PYTHONPATH (our processes never see TRL)."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in env.get("PYTHONPATH", "").split(os.pathsep)
                                        if p and Path(p).resolve() != BENCH_SITE.resolve())
    return env


def run_ours(shape: str, cfg: Any, overrides: list[str], skip: int) -> dict[str, Any]:
    from cluster.loop.data import load_problems

    samples_per_step = cfg.train.prompts_per_step * cfg.rollout.samples_per_prompt
    run_dir = WORK / shape / "ours"
    subprocess.run(["rm", "-rf", str(run_dir)], check=True)
    run_dir.parent.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "cluster.train", "--config", SHAPES[shape], "--run-dir", str(run_dir), *overrides]
    sampled = run_sampled(cmd, plain_env(), WORK / shape / "ours.log", timeout=3600, watch=run_dir / "metrics.jsonl")
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    cpu = step_cpu_seconds(rows, sampled.pop("cpu_s_at_line"))
    summary = json.loads((run_dir / "summary.json").read_text())
    start_eval = next(r for r in rows if r.get("step") == 0 and "eval/accuracy" in r)
    heldout = {"accuracy": summary["eval_accuracy_end"], "greedy_accuracy": summary["eval_greedy_accuracy_end"],
               "response_len": summary.get("eval_response_tokens_end"),
               "samples": len(load_problems(cfg)[1]) * cfg.train.eval_samples}
    return {**summarize_ours(rows, skip, samples_per_step, cpu), **sampled, "command": " ".join(cmd[1:]),
            "heldout": heldout, "heldout_start": {"accuracy": start_eval["eval/accuracy"],
                                                  "greedy_accuracy": start_eval["eval/greedy_accuracy"]}}


def run_trl(shape: str, cfg: Any, model_path: str, skip: int, threads: int | None = None) -> dict[str, Any]:
    """TRL in its own process; `threads`: its torch/OpenMP threads (None: torch's default, one per core)."""
    from transformers import AutoTokenizer

    from cluster.loop.data import PromptSource, load_problems

    tokenizer = AutoTokenizer.from_pretrained(model_path)
    train, held = load_problems(cfg)
    limit = cfg.rollout.max_model_len - cfg.rollout.max_new_tokens
    source = PromptSource(train, tokenizer, limit, cfg.train.seed)  # our run's prompt order, step by step
    prompts = [p for step in range(cfg.train.steps) for p in source.batch(step, cfg.train.prompts_per_step)]
    work = WORK / shape / "trl"
    subprocess.run(["rm", "-rf", str(work)], check=True)
    work.mkdir(parents=True)
    args = trl_args(cfg)
    a = cfg.algorithm
    payload = {"model_path": model_path, "seed": cfg.train.seed, "bf16": cfg.model.dtype == "bfloat16",
               "overlong": {"max_new_tokens": cfg.rollout.max_new_tokens, "buffer": a.overlong_buffer,
                            "factor": a.overlong_penalty},
               "trl_args": args, "work_dir": str(work / "out"), "eval_samples": cfg.train.eval_samples,
               "train": [{"prompt": p.text, "answer": p.answer} for p in prompts],
               "heldout": [{"prompt": p.prompt, "answer": p.answer} for p in held]}
    (work / "payload.json").write_text(json.dumps(payload))
    env = plain_env()
    env["PYTHONPATH"] = os.pathsep.join([str(BENCH_SITE), str(ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    cmd = [sys.executable, str(ROOT / "benchmarks" / "peers_trl.py"), str(work / "payload.json"), str(work / "result.json")]
    sampled = run_sampled(cmd, env, WORK / shape / "trl.log", timeout=3600)
    sampled.pop("cpu_s_at_line")
    result = json.loads((work / "result.json").read_text())
    return {**summarize_trl(result["steps"], skip), **sampled, "heldout": result["heldout"], "trl_args": args,
            "versions": result["versions"], "peak_rss_bytes": result["peak_rss_bytes"],
            "torch_threads": result["torch_threads"], "eval_s": result["eval_s"]}


def run_shape(shape: str, steps: int, skip: int, prompts: int | None, trl_threads: int | None = None) -> dict[str, Any]:
    from cluster.toy.base_model import tiny_model_dir
    from cluster.config import load_config
    from cluster.planning.token_budget import resolve_token_budget

    overrides = [f"train.steps={steps}", "train.eval_every=0", "train.benchmark_every=0"]
    if prompts:
        overrides.append(f"train.prompts_per_step={prompts}")
    cfg, _ = resolve_token_budget(load_config(SHAPES[shape], overrides))  # TRL's micro-batches from an `auto` budget
    print(f"[{shape}] ours: {steps} steps", flush=True)
    ours = run_ours(shape, cfg, overrides, skip)
    model_path = cfg.model.path or str(ROOT / tiny_model_dir(cfg))  # built by our run on first use
    print(f"[{shape}] ours: {ours['median_step_s']:.2f} s/step; TRL: {steps} steps", flush=True)
    trl = run_trl(shape, cfg, model_path, skip, trl_threads)
    print(f"[{shape}] TRL: {trl['median_step_s']:.2f} s/step", flush=True)
    return {"config": SHAPES[shape], "overrides": overrides, "steps": steps, "skip": skip,
            "prompts_per_step": cfg.train.prompts_per_step, "samples_per_prompt": cfg.rollout.samples_per_prompt,
            "max_new_tokens": cfg.rollout.max_new_tokens, "dtype": cfg.model.dtype,
            "reduced": prompts is not None, "heldout_problems": cfg.data.eval_size,
            "eval_samples": cfg.train.eval_samples, "trl_threads": trl_threads, "ours": ours, "trl": trl, "comparison": compare(ours, trl)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shapes", nargs="+", choices=list(SHAPES), default=list(SHAPES))
    parser.add_argument("--steps", type=int, help="steps per side (default: 6 default shape, 3 cpu_scale)")
    parser.add_argument("--skip", type=int, help="first steps left out of the median (default: 2, 1)")
    parser.add_argument("--prompts", type=int, help="prompts per step (a reduced run; default: the config's)")
    parser.add_argument("--trl-threads", type=int, help="TRL's torch threads (default: torch's, one per core); "
                        "results under '<shape>, TRL N thread(s)'")
    parser.add_argument("--write-docs", action="store_true", help="merge into docs/peers/results.json, rewrite the section")
    parser.add_argument("--docs-only", action="store_true",
                        help="measure nothing: re-derive the comparisons in docs/peers/results.json, rewrite the section")
    args = parser.parse_args(argv)
    if args.docs_only:
        write_docs(json.loads(RESULTS.read_text()))
        return 0
    if not (BENCH_SITE / "trl").is_dir():
        print(f"TRL is not installed in {BENCH_SITE}: see this script's docstring", file=sys.stderr)
        return 2
    results = json.loads(RESULTS.read_text()) if args.write_docs and RESULTS.exists() else {"shapes": {}}
    for shape in args.shapes:
        steps, skip = args.steps or STEPS[shape][0], args.skip if args.skip is not None else STEPS[shape][1]
        key = shape + (f", TRL {args.trl_threads} thread(s)" if args.trl_threads else "")
        results["shapes"][key] = {**run_shape(shape, steps, skip, args.prompts, args.trl_threads),
                                  "measured": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
        print(json.dumps(results["shapes"][key]["comparison"]), flush=True)
    results["machine"] = {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()}
    if args.write_docs:
        write_docs(results)
    else:
        print(section(results))
    return 0


def write_docs(results: dict[str, Any]) -> None:
    """Save the measurements first, then re-derive every shape's comparison (older entries included) and
    rewrite the docs section from them."""
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=1) + "\n")
    for s in results["shapes"].values():
        s["ours"]["heldout"].setdefault("samples", s["heldout_problems"] * s["eval_samples"])
        s["comparison"] = compare(s["ours"], s["trl"])
    RESULTS.write_text(json.dumps(results, indent=1) + "\n")
    text = section(results)
    print(text)
    replace_section(text)


if __name__ == "__main__":
    sys.exit(main())
