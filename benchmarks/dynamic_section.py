"""The "Dynamic sampling" section of docs/benchmarks.md and its plot, from docs/learning/runs.jsonl: the
default run (synchronous) of each seed against the same run with `algorithm.dynamic_sampling=true`,
held-out accuracy against the tokens the engines generated (benchmarks/run_series.py)."""
from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any

from benchmarks.learning_sections import newest

TITLE = "## Dynamic sampling (held-out accuracy against generated tokens)"
DYNAMIC = "algorithm.dynamic_sampling=true"
PNG = "learning/dynamic_sampling.png"


def pairs(rows: list[dict[str, Any]]) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """(default, dynamic) rows of each seed that has both, each with its tokens per evaluation."""
    out = []
    for seed in sorted({r["seed"] for r in rows}):
        plain, dyn = newest(rows, seed, 0, []), newest(rows, seed, 0, [DYNAMIC])
        if plain and dyn and all(e.get("generated_tokens") is not None for e in plain["evals"] + dyn["evals"]):
            out.append((plain, dyn))
    return out


def accuracy_at(row: dict[str, Any], tokens: float) -> float:
    """Held-out accuracy after `tokens` generated tokens: linear between the run's evaluations."""
    evals = row["evals"]
    for a, b in zip(evals, evals[1:]):
        if a["generated_tokens"] <= tokens <= b["generated_tokens"]:
            span = b["generated_tokens"] - a["generated_tokens"]
            return a["accuracy"] + (b["accuracy"] - a["accuracy"]) * ((tokens - a["generated_tokens"]) / span if span else 1)
    return evals[-1]["accuracy"]


def _mean_sd(values: list[float], fmt: str) -> str:
    sd = f" ± {format(statistics.stdev(values), fmt)}" if len(values) > 1 else ""
    return f"{format(statistics.mean(values), fmt)}{sd}"


def _verdict(plain_end: list[float], dyn_end: list[float], at_budget: list[float]) -> str:
    per_step = "ahead" if statistics.mean(dyn_end) > statistics.mean(plain_end) else "not ahead"
    per_token = "ahead" if statistics.mean(at_budget) > statistics.mean(plain_end) else "behind"
    return (f"Per optimizer step dynamic sampling is {per_step} of the default (every batch carries signal);\n"
            f"  per generated token it is {per_token} (the dropped groups cost generation).")


def section(rows: list[dict[str, Any]]) -> str:
    found = pairs(rows)
    if not found:
        return (f"{TITLE}\n\nNot measured yet: `benchmarks/learning.py --seeds 0,1,2 --staleness 0 --write-docs "
                f"{DYNAMIC}`.\n")
    lines = ["| seed | default: generated tokens | default: held-out end | dynamic: generated tokens | "
             "dynamic: held-out end | dynamic: held-out at the default's tokens | dynamic: rounds per step (median) | "
             "dynamic: groups generated per step (median) |", "|" + "---|" * 8]
    at_budget, plain_end, dyn_end, ratio = [], [], [], []
    for plain, dyn in found:
        budget = plain["evals"][-1]["generated_tokens"]
        at_budget.append(accuracy_at(dyn, budget))
        plain_end.append(plain["eval_accuracy_end"])
        dyn_end.append(dyn["eval_accuracy_end"])
        ratio.append(dyn["evals"][-1]["generated_tokens"] / budget)
        m = dyn["medians"]
        lines.append(f"| {plain['seed']} | {budget:,.0f} | {plain['eval_accuracy_end']:.3f} | "
                     f"{dyn['evals'][-1]['generated_tokens']:,.0f} | {dyn['eval_accuracy_end']:.3f} | {at_budget[-1]:.3f} | "
                     f"{m.get('dynamic/rounds', float('nan')):.0f} | {m.get('dynamic/generated_groups', float('nan')):.0f} |")
    steps = found[0][0]["evals"][-1]["step"]
    return f"""{TITLE}

`algorithm.dynamic_sampling=true` (DAPO): a group whose rewards are all equal carries no GRPO signal, so
it is dropped and more prompts are generated until the batch holds `train.prompts_per_step` informative
groups (at most `algorithm.dynamic_sampling_max_rounds` rounds; a batch still short is filled with dropped
groups: `cluster/loop/dynamic.py`). Same seeds, cached base models and
config as "Learning over seeds" (`configs/tiny.yaml`, synchronous, {steps} steps); held-out accuracy (256
problems x 4 at T=1) against every token the engines generated, dropped groups included. Between two
evaluations (every 10 steps) the curve is read linearly.

{chr(10).join(lines)}

- Held-out accuracy at the end: default {_mean_sd(plain_end, '.3f')}, dynamic sampling {_mean_sd(dyn_end, '.3f')}
  (n={len(found)}), for {_mean_sd(ratio, '.2f')}x the generated tokens.
- At the default run's token total: dynamic sampling {_mean_sd(at_budget, '.3f')}.
- {_verdict(plain_end, dyn_end, at_budget)}

![held-out accuracy against generated tokens]({PNG})

```
.venv/bin/python benchmarks/learning.py --seeds 0,1,2 --staleness 0 --write-docs            # the default rows
.venv/bin/python benchmarks/learning.py --reseries --write-docs   # tokens per evaluation for rows recorded before rows kept them
.venv/bin/python benchmarks/learning.py --seeds 0,1,2 --staleness 0 --write-docs {DYNAMIC}
```
"""


def plot(rows: list[dict[str, Any]], out: Path) -> bool:
    """Held-out accuracy against generated tokens, every seed, both settings; False when nothing to draw."""
    found = pairs(rows)
    if not found:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4))
    for i, (plain, dyn) in enumerate(found):
        for row, color, label in ((plain, "tab:blue", "default"), (dyn, "tab:orange", "dynamic sampling")):
            ax.plot([e["generated_tokens"] / 1e3 for e in row["evals"]], [e["accuracy"] for e in row["evals"]],
                    marker="o", color=color, alpha=0.8, label=label if i == 0 else None)
    ax.set_xlabel("tokens generated (thousands)")
    ax.set_ylabel("held-out accuracy (T=1)")
    ax.set_title(f"configs/tiny.yaml, {len(found)} seeds")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return True
