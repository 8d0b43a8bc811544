"""docs/benchmarks.md "Self-correction": configs/tiny_reflect.yaml over seeds (benchmarks/learning.py
--config configs/tiny_reflect.yaml), read from its runs file, beside the default's self-check share
(docs/learning/runs.jsonl) and the first design that did not elicit checks
(docs/learning/tiny_reflect_first_design.jsonl: the held-out evaluations of that run, as logged)."""
from __future__ import annotations

import json
import statistics
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
REFLECT_CONFIG = ROOT / "configs" / "tiny_reflect.yaml"
REFLECT_RUN = ROOT / "runs" / "learning" / "tiny_reflect-seed0-k0"
REFLECT_PNG = ROOT / "docs" / "learning" / "reflect_emergence.png"
FIRST_DESIGN = ROOT / "docs" / "learning" / "tiny_reflect_first_design.jsonl"
RISE_FROM, RISE_TO = 0.05, 0.30  # the goal: self-check share <= 5% at step 0, >= 30% at the end (held-out)


def rises(row: dict[str, Any]) -> bool:
    return row["eval_reflection_frac_start"] <= RISE_FROM and row["eval_reflection_frac_end"] >= RISE_TO


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f}%"


def runs_table(rows: list[dict[str, Any]]) -> str:
    lines = ["| seed | self-check share | accuracy | accuracy of self-checking / other responses, end | "
             "response tokens | wall s |", "|" + "---|" * 6]
    for r in rows:
        lines.append(
            f"| {r['seed']} | {_pct(r['eval_reflection_frac_start'])} -> {_pct(r['eval_reflection_frac_end'])} | "
            f"{r['eval_accuracy_start']:.3f} -> {r['eval_accuracy_end']:.3f} | "
            f"{_pct(r.get('eval_accuracy_self_checked_end'))} / {_pct(r.get('eval_accuracy_not_self_checked_end'))} | "
            f"{r['eval_response_tokens_start']:.1f} -> {r['eval_response_tokens_end']:.1f} | "
            f"{r['wall_seconds']:.0f}{'' if r.get('base_model_cached', True) else ' (with the base-model build)'} |")
    return "\n".join(lines)


def first_design_line() -> str:
    """The first design's held-out evaluations, one phrase each."""
    if not FIRST_DESIGN.exists():
        return ""
    evals = [json.loads(line) for line in FIRST_DESIGN.read_text().splitlines() if line.strip()]
    steps = ", ".join(f"step {e['step']}: self-check share {_pct(e['eval/reflection_frac'])}, accuracy "
                      f"{e['eval/accuracy']:.3f}, self-checking responses correct {_pct(e.get('eval/accuracy_self_checked'))}"
                      for e in evals)
    return steps


def reflect_section(rows: list[dict[str, Any]], default_rows: list[dict[str, Any]]) -> str:
    risen = sum(rises(r) for r in rows)
    gains = [100 * (r["eval_accuracy_end"] - r["eval_accuracy_start"]) for r in rows]
    sd = f", sd {statistics.stdev(gains):.1f}" if len(gains) > 1 else ""
    default = [r["eval_reflection_frac_end"] for r in default_rows if r["max_staleness"] == 0]
    default_line = (f"On the default (`configs/tiny.yaml`, the seeds above) the self-check share ends at "
                    f"{', '.join(_pct(x) for x in default)}: the base model checks only after a column slip "
                    "(10% of its worked warm-up answers), and once RL has it work every column a slip is rare, so "
                    "a check earns nothing and fades." if default else "")
    first = first_design_line()
    return f"""## Self-correction (configs/tiny_reflect.yaml)

`benchmarks/learning.py --config configs/tiny_reflect.yaml --seeds 0,1,2 --write-docs`: does checking
emerge when it pays? The preset's base model answers directly (the tiny model's direct answers are
mostly wrong) and knows one way to work a sum out, as a check: its warm-up's skill stage is 80% answers
of the form `\\boxed{{guess}}. Wait, let me check: 7+5=12. ... So \\boxed{{answer}}.` (the guess wrong
half the time, one digit off; the grader reads the last box), its habit stage (the last 150 warm-up steps)
3% of them and the rest direct answers. Then 40 GRPO steps on the answer reward alone, as the default:
nothing rewards or shows a check. Held-out: 256 problems, 4 samples each at T=1; a response "checks
itself" when `cluster.infra.metrics.REFLECTION` matches it. Goal: the self-check share rises from <= 5% to
>= 30%, with the accuracy.

Self-check share rose from <= {RISE_FROM:.0%} to >= {RISE_TO:.0%} on {risen} of {len(rows)} seeds; accuracy
gain {statistics.mean(gains):.1f} points on average{sd}.

{runs_table(rows)}

{default_line}

The first design did not elicit checks (one run, seed 0, stopped after step 30; held-out evaluations
in `docs/learning/tiny_reflect_first_design.jsonl`): the same habit stage, but a skill stage that
taught working the columns from the start (80%) and the check only as 3% of its direct answers.
{first}. The base model could work a sum out, but not inside a check: its checks read the wrong digits
(`\\boxed{{1178}}. Wait, let me check: 0+8=9. 7+9=17. ...`), so a check never paid and RL removed it.
A behaviour emerges under an answer-only reward when the base model can already carry it out and does
so rarely, and when carrying it out raises the reward; the warm-up has to teach the skill in the place
where it will be used.

`emergence.png` of seed 0 (per held-out evaluation; the right panel: accuracy of the responses that check
themselves and of those that do not):

![self-correction emergence, seed 0](learning/reflect_emergence.png)
"""
