"""docs/benchmarks.md "Self-correction": what we tried to make self-checks emerge, from result files only:
docs/learning/reflect_designs.jsonl (one record per warm-up design: its settings, the commit it ran at and
its held-out evaluations as logged) and, once a design is run over seeds with
`benchmarks/learning.py --config configs/tiny_reflect.yaml --seeds 0,1,2`, its runs file; beside the
default's self-check share (docs/learning/runs.jsonl)."""
from __future__ import annotations

import json
import statistics
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
REFLECT_CONFIG = ROOT / "configs" / "tiny_reflect.yaml"
REFLECT_RUN = ROOT / "runs" / "learning" / "tiny_reflect-seed0-k0"
REFLECT_PNG = ROOT / "docs" / "learning" / "reflect_emergence.png"
DESIGNS = ROOT / "docs" / "learning" / "reflect_designs.jsonl"
RISE_FROM, RISE_TO = 0.05, 0.30  # the goal: self-check share <= 5% at step 0, >= 30% at the end (held-out)


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f}%"


def designs() -> list[dict[str, Any]]:
    return [json.loads(line) for line in DESIGNS.read_text().splitlines() if line.strip()] if DESIGNS.exists() else []


def designs_table(rows: list[dict[str, Any]]) -> str:
    lines = ["| design (commit) | warm-up | self-check share, step 0 -> end | self-checking responses correct, step 0 "
             "| held-out accuracy, step 0 -> end |", "|" + "---|" * 5]
    for d in rows:
        first, last = d["evals"][0], d["evals"][-1]
        lines.append(f"| {d['design']} ({d['commit']}, seed {d['seed']}, {d['steps_run']} steps) | {d['what']} | "
                     f"{_pct(first['eval/reflection_frac'])} -> {_pct(last['eval/reflection_frac'])} | "
                     f"{_pct(first.get('eval/accuracy_self_checked'))} | "
                     f"{first['eval/accuracy']:.3f} -> {last['eval/accuracy']:.3f} |")
    return "\n".join(lines)


PROBES = ROOT / "docs" / "learning" / "base_probe.jsonl"


def probes_table() -> str:
    """benchmarks/base_probe.py's records: each base model's answers by kind, share and accuracy."""
    rows = [json.loads(line) for line in PROBES.read_text().splitlines() if line.strip()] if PROBES.exists() else []
    lines = ["| base model | direct: share, accuracy | worked from the start | self-check |", "|---|---|---|---|"]
    for r in rows:
        cells = [f"{_pct(k['share'])}, {_pct(k['accuracy'])} of {k['responses']}" for k in
                 (r["kinds"]["direct"], r["kinds"]["worked"], r["kinds"]["self-check"])]
        lines.append(f"| {r['label']} | {' | '.join(cells)} |")
    return "\n".join(lines) if rows else ""


def seeds_table(rows: list[dict[str, Any]]) -> str:
    lines = ["| seed | self-check share | accuracy | accuracy of self-checking / other responses, end | "
             "response tokens | wall s |", "|" + "---|" * 6]
    for r in rows:
        lines.append(
            f"| {r['seed']} | {_pct(r['eval_reflection_frac_start'])} -> {_pct(r['eval_reflection_frac_end'])} | "
            f"{r['eval_accuracy_start']:.3f} -> {r['eval_accuracy_end']:.3f} | "
            f"{_pct(r.get('eval_accuracy_self_checked_end'))} / {_pct(r.get('eval_accuracy_not_self_checked_end'))} | "
            f"{r['eval_response_tokens_start']:.1f} -> {r['eval_response_tokens_end']:.1f} | "
            f"{r['wall_seconds']:.0f}{'' if r.get('base_model_cached', True) else ' (with the base-model build)'} |")
    risen = sum(r["eval_reflection_frac_start"] <= RISE_FROM and r["eval_reflection_frac_end"] >= RISE_TO for r in rows)
    gains = [100 * (r["eval_accuracy_end"] - r["eval_accuracy_start"]) for r in rows]
    sd = f", sd {statistics.stdev(gains):.1f}" if len(gains) > 1 else ""
    return (f"configs/tiny_reflect.yaml over seeds: the self-check share rose from <= {RISE_FROM:.0%} to >= "
            f"{RISE_TO:.0%} on {risen} of {len(rows)} seeds; accuracy gain {statistics.mean(gains):.1f} points on "
            f"average{sd}.\n\n" + "\n".join(lines) +
            "\n\n`emergence.png` of seed 0 (the right panel: accuracy of the responses that check themselves "
            "and of those that do not):\n\n![self-correction, seed 0](learning/reflect_emergence.png)")


def reflect_section(seed_rows: list[dict[str, Any]], default_rows: list[dict[str, Any]]) -> str:
    default = [r["eval_reflection_frac_end"] for r in default_rows if r["max_staleness"] == 0]
    default_line = (f"On the default (`configs/tiny.yaml`, \"Learning over seeds\") the self-check share ends at "
                    f"{', '.join(_pct(x) for x in default)}: its base model checks only after a column slip (a tenth "
                    "of its worked warm-up answers), and once RL has it work every column out a slip is rare, so a "
                    "check earns nothing and fades." if default else "")
    seeds = seeds_table(seed_rows) if seed_rows else ("No design has been run over seeds yet: none has "
                                                      "elicited checks in its first run.")
    return f"""## Self-correction (configs/tiny_reflect.yaml)

Does checking emerge when it pays? Goal (issue 26): on held-out problems the share of responses that check
themselves (`cluster.infra.metrics.REFLECTION`) rises from <= 5% to >= 30% under RL on the answer alone,
with the accuracy. {default_line}

`configs/tiny_reflect.yaml` gives the base model a reason to check: it answers directly (a 3.3M model's
direct answers to 3-digit sums are right 1-3% of the time) and it was taught one way to work a sum out,
as a check after its answer (`tasks.column_addition.Problem.rechecked`: `\\boxed{{guess}}. Wait, let me
check: ...` then the columns worked out and the answer boxed again; the grader reads the last box), which
its warm-up's habit stage shows after 3% of the direct answers. Then 40 GRPO steps on the answer reward
as in the default; nothing rewards or shows a check. Designs tried (one run each; held-out 256 problems x
4 samples at T=1; result file `docs/learning/reflect_designs.jsonl`):

{designs_table(designs())}

Neither elicited checks: the share fell to ~0 while RL sharpened the direct answers instead. The reason
is in the fourth column and in how each base model answers before RL (`benchmarks/base_probe.py`: 60
held-out problems x 8 samples at T=1 with Hugging Face generate; result file `docs/learning/base_probe.jsonl`):

{probes_table()}

The default's base model works 15% of its answers out and gets 29% of those right, against 1% of its
direct answers: working pays from the first step. The preset's base model checks rarely and its checks
are seldom right (it writes column sums of the wrong digits and boxes its direct guess again), so checks
win few groups. Under an answer-only reward a
behaviour grows only when the base model already carries it out well enough, and often enough, to win
inside its groups; a check after a guess, with the guess's digits beside the prompt's, is harder for the
tiny model to learn than working from the start. Since the second design the check restates the numbers
before working them (`Wait, let me check: 457 + 385. 7+5=12. ...`); a longer warm-up that teaches the
check to the accuracy the default reaches for worked answers is the next design to run.

{seeds}
"""
