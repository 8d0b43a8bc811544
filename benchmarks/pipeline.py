"""Synchronous vs asynchronous rollouts (train.max_staleness 0 / 1 / 2), same config and seed, one run.

Step timing: each setting trains `--steps` policy steps on the embedded tiny config (no evaluation) and
reports medians after `--skip` warm-up steps: step time, samples/s, generation (engine busy) time,
learner time (train + sync) and each role's idle time. Goal: the async step
time within 1.15x of max(generation, training + sync) of the synchronous run, against the sync sum.

Learning (`--learning`): the full default run (40 steps, evaluations) for max_staleness 0 and 1;
goal: the async accuracy gain within 5 points of the synchronous one after the same samples.

    .venv/bin/python benchmarks/pipeline.py --write-docs [--learning]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
RESULTS = ROOT / "docs" / "pipeline"

from benchmarks.doc_sections import replace_section  # noqa: E402
from benchmarks.role_cpu import ORDER, RoleCPU, idle_share, step_deltas  # noqa: E402
from cluster.config import load_config  # noqa: E402
from cluster.loop.trainer import Trainer  # noqa: E402

KEYS = {"step_s": "time/step_s", "generate_s": "time/generate_s", "wait_rollout_s": "time/wait_rollout_s",
        "train_s": "time/train_s", "sync_s": "time/sync_s",
        "rollout_idle_s": "time/rollout_idle_s", "learner_idle_s": "time/learner_idle_s",
        "rollout_busy_s": "time/rollout_busy_s", "learner_busy_s": "time/learner_busy_s",
        "samples_per_s": "perf/samples_per_s", "staleness": "async/staleness_mean"}


def time_steps(staleness: int, steps: int, skip: int, overrides: list[str]) -> dict[str, Any]:
    cfg = load_config(str(ROOT / "configs" / "tiny.yaml"),
                      [f"train.max_staleness={staleness}", f"train.steps={steps}", *overrides])
    trainer = Trainer(cfg, Path(tempfile.mkdtemp(prefix=f"pipeline-k{staleness}-")))
    roles, cores = RoleCPU(), len(os.sched_getaffinity(0))
    try:
        trainer.setup()
        rows, cpu = [], []
        for step in range(steps):
            before, start = roles.snapshot(), time.perf_counter()
            rows.append(trainer.step(step))
            wall = time.perf_counter() - start
            cpu.append({**step_deltas(before, roles.snapshot()), "wall_s": wall})
            print(f"k={staleness} step {step}: {rows[-1]['time/step_s']:.2f}s, CPU by role "
                  + ", ".join(f"{k} {v:.2f}" for k, v in cpu[-1].items()), flush=True)
    finally:
        trainer.close()
    kept = rows[skip:]
    out: dict[str, Any] = {name: statistics.median(r.get(key, 0.0) for r in kept) for name, key in KEYS.items()}
    out["learner_s"] = out["train_s"] + out["sync_s"]
    out["max_staleness"] = staleness
    out["cores"] = cores
    out["cpu_s"] = {role: statistics.median(c[role] for c in cpu[skip:]) for role in ORDER}
    out["idle_share"] = statistics.median(idle_share({r: c[r] for r in ORDER}, c["wall_s"], cores) for c in cpu[skip:])
    return out


def learning(staleness: int, overrides: list[str]) -> dict[str, Any]:
    cfg = load_config(str(ROOT / "configs" / "tiny.yaml"), [f"train.max_staleness={staleness}", *overrides])
    trainer = Trainer(cfg, Path(tempfile.mkdtemp(prefix=f"learning-k{staleness}-")))
    try:
        summary = trainer.run()
    finally:
        trainer.close()
    return {"max_staleness": staleness, **{k: summary[k] for k in (
        "eval_accuracy_start", "eval_accuracy_end", "eval_greedy_accuracy_start", "eval_greedy_accuracy_end",
        "steps", "wall_seconds")}}


def timing_table(rows: list[dict[str, Any]]) -> str:
    sync = next(r for r in rows if r["max_staleness"] == 0)
    lines = ["| max_staleness | step s | samples/s | speed-up | rollout busy s (generate + load) | rollout idle s | "
             "learner busy s (train + export) | learner idle s | mean staleness |", "|" + "---|" * 9]
    for r in rows:
        lines.append(f"| {r['max_staleness']} | {r['step_s']:.2f} | {r['samples_per_s']:.1f} | "
                     f"{sync['step_s'] / r['step_s']:.2f}x | {r['rollout_busy_s']:.2f} | {r['rollout_idle_s']:.2f} | "
                     f"{r['learner_busy_s']:.2f} | {r['learner_idle_s']:.2f} | {r['staleness']:.2f} |")
    return "\n".join(lines)


def cpu_table(rows: list[dict[str, Any]]) -> str | None:
    """CPU seconds per step of each role and the share of the machine the run left idle (rows that have them)."""
    rows = [r for r in rows if "cpu_s" in r]
    if not rows:
        return None
    roles = [role for role in ORDER if any(r["cpu_s"][role] > 0.005 for r in rows)]
    lines = ["| max_staleness | step s | " + " | ".join(f"{role} CPU s" for role in roles)
             + " | run's CPU s | cores idle |", "|" + "---|" * (len(roles) + 4)]
    for r in rows:
        lines.append(f"| {r['max_staleness']} | {r['step_s']:.2f} | " + " | ".join(f"{r['cpu_s'][role]:.2f}" for role in roles)
                     + f" | {sum(r['cpu_s'].values()):.2f} | {r['idle_share']:.0%} of {r['cores']} |")
    return "\n".join(lines)


def idle_reading(rows: list[dict[str, Any]]) -> list[str]:
    """What the CPU table says about the synchronous run's idle cores and how overlapping roles use them."""
    sync = next((r for r in rows if r["max_staleness"] == 0 and "cpu_s" in r), None)
    if sync is None:
        return []
    out = [f"Synchronous: the engine generates ({sync['rollout_busy_s']:.2f} s, {sync['cpu_s']['rollout']:.2f} CPU s) "
           f"while the learner ranks wait, then the ranks train ({sync['learner_busy_s']:.2f} s, "
           f"{sync['cpu_s']['learner']:.2f} CPU s) while the engine waits: {sync['idle_share']:.0%} of the cores idle."]
    for r in rows:
        if r["max_staleness"] and "cpu_s" in r:
            out.append(f"- max_staleness {r['max_staleness']}: the roles overlap, {r['idle_share']:.0%} idle, "
                       f"step {sync['step_s'] / r['step_s']:.2f}x faster")
    return out


def timing_goal(rows: list[dict[str, Any]]) -> list[str]:
    sync = next(r for r in rows if r["max_staleness"] == 0)
    bound = max(sync["wait_rollout_s"], sync["train_s"] + sync["sync_s"])
    out = [f"Synchronous run: generation+scoring {sync['wait_rollout_s']:.2f} s, training + sync "
           f"{sync['train_s'] + sync['sync_s']:.2f} s per step; their max is {bound:.2f} s, their sum "
           f"{sync['step_s']:.2f} s."]
    for r in rows:
        if r["max_staleness"]:
            ratio = r["step_s"] / bound
            out.append(f"- max_staleness {r['max_staleness']}: step {r['step_s']:.2f} s = {ratio:.2f}x the max "
                       f"({'met' if ratio <= 1.15 else 'MISSED'}, goal <= 1.15x)")
    return out


def learning_table(rows: list[dict[str, Any]]) -> str:
    lines = ["| max_staleness | held-out accuracy start -> end | gain | greedy start -> end | wall s |",
             "|---|---|---|---|---|"]
    for r in rows:
        gain = r["eval_accuracy_end"] - r["eval_accuracy_start"]
        lines.append(f"| {r['max_staleness']} | {r['eval_accuracy_start']:.3f} -> {r['eval_accuracy_end']:.3f} | "
                     f"{gain:+.3f} | {r['eval_greedy_accuracy_start']:.3f} -> {r['eval_greedy_accuracy_end']:.3f} | "
                     f"{r['wall_seconds']:.0f} |")
    return "\n".join(lines)


TIMINGS = {
    "timing": "Each role on its own core, as on a GPU cluster each role has its own GPUs (`learner.num_ranks=1`: "
              "the vLLM engine is pinned to one core, the learner rank runs on the other):",
    "timing-shared-cores": "The default config (2 learner ranks on the 2 cores): when the roles overlap they compete "
                           "for the same 2 cores, so each phase slows down and the max() bound cannot be reached:",
}


CPU_CAPTION = ("The same steps by CPU (benchmarks/role_cpu.py: user + system seconds of each role's processes "
               "between the step's start and end, read from /proc; medians): where a role's CPU seconds fall "
               "short of the step time, its cores wait. Cores idle: the share of the machine's core-seconds in "
               "the step that the run did not use.")


# Result files written before they recorded their date (they carry no "measured") are of the task of that time.
LEGACY = ("Measured 2026-11-27 on the embedded task of that time (two-digit additions, before issue 15 replaced it "
          "by `tasks/column_addition.py`, whose worked answers are longer).")
LEGACY_LEARNING = ("; measured on the\ntwo-digit additions that were the embedded task before issue 15, see "
                   "\"Learning over seeds\" for today's")


def section() -> str:
    """The "Async pipelining" section of docs/benchmarks.md, from the result files in docs/pipeline/ alone."""
    files = {name: json.loads((RESULTS / f"{name}.json").read_text()) for name in (*TIMINGS, "learning")
             if (RESULTS / f"{name}.json").exists()}
    legacy = bool(files) and all("measured" not in data for data in files.values())
    parts = ["## Async pipelining", "",
             (LEGACY + " " if legacy else "") + "Same config (configs/tiny.yaml) and seed; `train.max_staleness` k "
             "lets generation for steps s+1..s+k run while the learner trains on step s (cluster/loop/pipeline.py). Per-step medians after warm-up; generation is "
             "the engine's busy time; busy times are measured inside the role (engine, learner); idle = step time "
             "minus the role's busy time. Scoring runs in reward actors, overlapped with generation."]
    for name, caption in TIMINGS.items():
        if name in files:
            data = files[name]
            parts += ["", caption, "", timing_table(data["rows"]), "", *timing_goal(data["rows"])]
            if table := cpu_table(data["rows"]):
                parts += ["", CPU_CAPTION, "", table, "", *idle_reading(data["rows"])]
            parts += ["", f"Machine: {data['machine']}{measured(data, legacy)}", "", "```", data["command"], "```"]
    if "learning" in files:
        data = files["learning"]
        rows = data["rows"]
        gains = {r["max_staleness"]: r["eval_accuracy_end"] - r["eval_accuracy_start"] for r in rows}
        parts += ["", "Learning, full default run (40 steps x 32 prompts x 8 samples, sampled held-out accuracy"
                  + (LEGACY_LEARNING if legacy else "") + "):", "", learning_table(rows), ""]
        if 0 in gains and 1 in gains:
            gap = gains[0] - gains[1]
            parts.append(f"Gain gap sync - async: {gap * 100:+.1f} points ({'met' if gap <= 0.05 else 'MISSED'}, "
                         "goal: within 5 points)")
        parts += ["", f"Machine: {data['machine']}{measured(data, legacy)}", "", "```", data["command"], "```"]
    return "\n".join(parts) + "\n"


def measured(data: dict[str, Any], legacy_said: bool) -> str:
    """When the file was measured: its own date, or (a file from before dates were recorded) the old task."""
    if "measured" in data:
        return f"; measured {data['measured']}"
    return "" if legacy_said else "; " + LEGACY[0].lower() + LEGACY[1:-1]


def result(rows: list[dict[str, Any]], command: str) -> dict[str, Any]:
    """A result file: its rows, the machine, the command that wrote it and when (UTC)."""
    return {"rows": rows, "machine": machine(), "command": command,
            "measured": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}


def machine() -> str:
    return f"{os.cpu_count()} cores; load average at the end {os.getloadavg()[0]:.1f} (shared machine)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--staleness", default="0,1,2")
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--skip", type=int, default=3, help="warm-up steps left out of the medians")
    parser.add_argument("--learning", action="store_true", help="also the full runs for k=0 and k=1 (long)")
    parser.add_argument("--no-timing", action="store_true")
    parser.add_argument("--write-docs", action="store_true")
    parser.add_argument("--name", default="timing", choices=sorted(TIMINGS), help="which timing result this is")
    parser.add_argument("overrides", nargs="*", help="config overrides for every run")
    args = parser.parse_args()
    RESULTS.mkdir(parents=True, exist_ok=True)
    command = " ".join([".venv/bin/python benchmarks/pipeline.py", *sys.argv[1:]])
    if not args.no_timing:
        started = time.perf_counter()
        rows = [time_steps(int(k), args.steps, args.skip, args.overrides) for k in args.staleness.split(",")]
        print(timing_table(rows), *timing_goal(rows), f"wall {time.perf_counter() - started:.0f}s", sep="\n")
        (RESULTS / f"{args.name}.json").write_text(json.dumps(result(rows, command), indent=1))
    if args.learning:
        rows = [learning(k, args.overrides) for k in (0, 1)]
        print(learning_table(rows))
        (RESULTS / "learning.json").write_text(json.dumps(result(rows, command), indent=1))
    if args.write_docs:
        replace_section(section())


if __name__ == "__main__":
    main()
