"""Two docs/benchmarks.md sections drawn from docs/learning/runs.jsonl (benchmarks/learning.py writes the rows,
benchmarks/run_series.py what each keeps of its run's metrics): the update rule (the default against more
mini-batches per batch) and the end-of-sequence token (how much of each training batch hit max_new_tokens).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

UPDATE_TITLE = "## Update rule"
EOS_TITLE = "## The end-of-sequence token (overlong shaping)"
MINI_BATCHES = "algorithm.ppo_mini_batches=4"
NO_SHAPING = "algorithm.overlong_buffer=0"
EVAL_STEPS = (10, 20, 30, 40)


def all_rows(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


def newest(rows: list[dict[str, Any]], seed: int, staleness: int, overrides: list[str]) -> dict[str, Any] | None:
    """The newest row of (seed, staleness, overrides) that carries its run's series."""
    found = [r for r in rows if r["seed"] == seed and r["max_staleness"] == staleness and r["overrides"] == overrides
             and "evals" in r]
    return found[-1] if found else None


def _curve_cell(row: dict[str, Any], step: int) -> str:
    e = next((e for e in row["evals"] if e["step"] == step), None)
    return "-" if e is None else f"{e['accuracy']:.3f} ({e['greedy']:.3f})"


def _median(row: dict[str, Any], key: str, fmt: str = ".2f") -> str:
    value = row["medians"].get(key)
    return "-" if value is None else format(value, fmt)


def update_rule_section(rows: list[dict[str, Any]]) -> str:
    default, more = newest(rows, 0, 0, []), newest(rows, 0, 0, [MINI_BATCHES])
    if default is None or more is None:
        return f"{UPDATE_TITLE}\n\nNot measured yet: `benchmarks/learning.py --seeds 0` and `--seeds 0 {MINI_BATCHES}`.\n"
    head = "| update | " + " | ".join(f"step {s}" for s in EVAL_STEPS) + \
        " | optimizer steps / batch | step s | old-log-prob pass s | train s |"
    lines = [head, "|" + "---|" * (len(EVAL_STEPS) + 5)]
    for label, row in (("defaults: 1 epoch x 1 mini-batch, the ratio from the training forward, TIS token cap 2",
                        default), (f"`{MINI_BATCHES}`", more)):
        lines.append(f"| {label} | " + " | ".join(_curve_cell(row, s) for s in EVAL_STEPS) + " | "
                     f"{_median(row, 'train/optimizer_steps', '.0f')} | {_median(row, 'time/step_s')} | "
                     f"{_median(row, 'time/logprobs_s')} | {_median(row, 'time/train_s')} |")
    d, m = default["medians"], more["medians"]
    start = default["evals"][0]
    nan = float("nan")
    return f"""{UPDATE_TITLE}

Learning of the embedded default (`configs/tiny.yaml`, seed 0, synchronous, one cached base model for both
rows) under the update rule of README "The update rule", and the same run with four mini-batches per batch
(four optimizer steps on each batch, the PPO ratio moving from the second on). Held-out accuracy: 256
problems, 4 samples each at T=1 (greedy in brackets); step times and update statistics are medians over
steps 3-40 of each run's metrics. Base model at step 0: {start['accuracy']:.3f} (greedy {start['greedy']:.3f}).

{chr(10).join(lines)}

- Defaults: the ratio comes from the training forward itself (median `train/ratio_max` {d.get('train/ratio_max', nan):.3f}, `train/clip_frac` {d.get('train/clip_frac', nan):.3f}); the learner/vLLM gap `train/rollout_logprob_diff_max` has median {d.get('train/rollout_logprob_diff_max', nan):.2g} nats ({default['settings']['dtype']}), which the TIS weights correct.
- Four mini-batches: median `train/ratio_max` {m.get('train/ratio_max', nan):.2f}, `train/clip_frac` {m.get('train/clip_frac', nan):.3f}, `train/approx_kl` {m.get('train/approx_kl', nan):.3f}.
- Both rows ran one after the other on this 2-core machine; rows: docs/learning/runs.jsonl.

```
.venv/bin/python benchmarks/learning.py --seeds 0 --write-docs
.venv/bin/python benchmarks/learning.py --seeds 0 --write-docs {MINI_BATCHES}
```
"""


def _cut_row(r: dict[str, Any]) -> str:
    cut = r["truncated_by_step"]
    step, worst = max(cut, key=lambda p: (p[1], -p[0])) if cut else (0, 0.0)
    return (f"| {r['seed']} | {r['max_staleness']} | {r['settings']['overlong_buffer']} | "
            f"{worst:.1%}{f' (step {step})' if worst else ''} | {r['train_truncated_frac_end']:.1%} | "
            f"{r['eval_accuracy_end']:.3f} | {r['eval_response_tokens_end']:.1f} |")


def eos_section(rows: list[dict[str, Any]], recorded: list[dict[str, Any]]) -> str:
    """`recorded`: the tabled runs (benchmarks/learning.py recorded()); `rows`: the whole runs file, whose rows
    without `settings` were written before overlong shaping was in configs/tiny.yaml."""
    before = [r for r in rows if "settings" not in r and not r["overrides"] and r.get("train_truncated_frac_end") is not None]
    lost = [r for r in before if r["train_truncated_frac_end"] >= 0.5]
    history = "; ".join(f"seed {r['seed']} with max_staleness={r['max_staleness']} ended with "
                        f"{r['train_truncated_frac_end']:.0%} of its last training batch cut and held-out answers of "
                        f"{r['eval_response_tokens_end']:.1f} tokens" for r in lost) or "no run lost it"
    head = ["| seed | max_staleness | overlong_buffer | largest share cut in a training batch | cut in the last batch | "
            "held-out accuracy, end | held-out response tokens, end |", "|---|---|---|---|---|---|---|"]
    lines = head + [_cut_row(r) for r in recorded if "truncated_by_step" in r]
    ablation = [r for s, k in {(r["seed"], r["max_staleness"]) for r in recorded}
                if (r := newest(rows, s, k, [NO_SHAPING])) is not None]
    without = ("" if not ablation else "\n\nWithout the penalty (`" + NO_SHAPING + "`, everything else as today's "
               "default; seed 2 with max_staleness=1 is the run that drifted before):\n\n" + "\n".join(head + [_cut_row(r) for r in sorted(ablation, key=lambda r: (r["seed"], r["max_staleness"]))]))
    return f"""{EOS_TITLE}

A policy can stop emitting its end-of-sequence token and keep writing after the boxed answer (e.g.
`So \\boxed{{1531}}.}}.}}.}}.`): the answer reward reads only the last box, so the correct ones among those
answers still earn 1 and their extra tokens are reinforced. The earlier default (fp32, micro-batches of 64
samples, neighbouring prompts' seeds overlapping, no overlong shaping: the {len(before)} rows of
docs/learning/runs.jsonl without `settings`) lost it once: {history}. Today's default has
`algorithm.overlong_buffer: 16` (DAPO's soft overlong penalty: an answer longer than 48 of its 64 tokens
loses reward in proportion to the tokens past 48, `reward/shaping.py`). The share of each training batch
cut at `rollout.max_new_tokens`, per run of "Learning over seeds":

{chr(10).join(lines)}{without}

The drift came in one run of six, late in that run, so a run that keeps its end token with or without the
penalty says little about the penalty alone; what the penalty guarantees is that an answer running to the cap
earns at most 0 even when its last box is right.
"""
