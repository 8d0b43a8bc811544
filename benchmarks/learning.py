"""Learning you can trust: the README's main command (configs/tiny.yaml) over several seeds, synchronous
and with train.max_staleness=1, and RL against SFT distillation and rejection-sampling fine-tuning.

Seeds: each (train.seed, max_staleness) run is the full default run; a seed's first run builds that seed's
base model (its warm-up data and initialisation follow the seed). Every finished run is appended to
docs/learning/runs.jsonl, so runs can be made one at a time (each ~5-8 min) and the table written from
what is recorded: mean and sd (n-1) of each summary.json figure. Goal: sd of the accuracy gain <= 5 points.

Comparison (`--compare`): `python -m cluster.compare` into runs/compare/, its plot, table and results.json
copied to docs/compare/.

    .venv/bin/python benchmarks/learning.py --seeds 0 --staleness 0        # one run, recorded
    .venv/bin/python benchmarks/learning.py --seeds 0,1,2 --staleness 0,1 --write-docs
    .venv/bin/python benchmarks/learning.py --write-docs                   # the table from recorded runs
    .venv/bin/python benchmarks/learning.py --compare --write-docs
    .venv/bin/python benchmarks/learning.py --config configs/tiny_reflect.yaml --seeds 0,1,2 --write-docs
"""
from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
RUNS = ROOT / "docs" / "learning" / "runs.jsonl"
DEFAULT_CONFIG = ROOT / "configs" / "tiny.yaml"
# The comparison's base model reads the rephrased wording too: 10% of its warm-up prompts use it (never in
# RL, SFT or RFT), so accuracy on rephrased held-out questions measures what each method carries over to a
# wording it was not tuned on, instead of sitting at the floor of a wording the model cannot read.
COMPARE_OVERRIDES = ["model.warmup.rephrased_fraction=0.1"]
COMPARE = ROOT / "docs" / "compare"  # what the docs show: compare.png, compare.md, results.json
COMPARE_RUNS = ROOT / "runs" / "compare"  # the method runs themselves
EMERGENCE_RUN = ROOT / "runs" / "learning" / "seed0-k0"
EMERGENCE_PNG = ROOT / "docs" / "learning" / "emergence.png"

from benchmarks import dynamic_section  # noqa: E402
from benchmarks.doc_sections import replace_section  # noqa: E402
from benchmarks.learning_sections import all_rows, eos_section, update_rule_section  # noqa: E402
from benchmarks.run_series import run_series, settings as run_settings  # noqa: E402
from benchmarks.reflect_section import DESIGNS, REFLECT_CONFIG, REFLECT_PNG, REFLECT_RUN, reflect_section  # noqa: E402

# (summary.json key, label, scale for display)
FIGURES = [("eval_accuracy_start", "held-out accuracy, step 0", 100), ("eval_accuracy_end", "held-out accuracy, end", 100),
           ("gain", "accuracy gain (points)", 100),
           ("eval_greedy_accuracy_start", "greedy accuracy, step 0", 100),
           ("eval_greedy_accuracy_end", "greedy accuracy, end", 100),
           ("eval_boxed_rate_start", "boxed rate, step 0", 100), ("eval_boxed_rate_end", "boxed rate, end", 100),
           ("eval_response_tokens_start", "mean response tokens, step 0", 1),
           ("eval_response_tokens_end", "mean response tokens, end", 1), ("length_ratio", "response length ratio", 1),
           ("eval_worked_frac_start", "worked share, step 0 (%)", 100),
           ("eval_worked_frac_end", "worked share, end (%)", 100),
           ("eval_reflection_frac_start", "self-check share, step 0 (%)", 100),
           ("eval_reflection_frac_end", "self-check share, end (%)", 100),
           ("train_truncated_frac_end", "cut at max_new_tokens, last training batch (%)", 100),
           ("cached_wall_seconds", "run wall seconds (Ray start + RL + evals; runs with a cached base model)", 1)]


def runs_file(config: Path) -> Path:
    """Where a config's runs are recorded: docs/learning/runs.jsonl for the default (configs/tiny.yaml),
    docs/learning/<config name>_runs.jsonl for a preset."""
    return RUNS if config.name == "tiny.yaml" else RUNS.with_name(f"{config.stem}_runs.jsonl")


def run_default(seed: int, staleness: int, overrides: list[str], config: Path = DEFAULT_CONFIG) -> dict[str, Any]:
    from cluster.toy.base_model import tiny_model_dir
    from cluster.config import load_config
    from cluster.loop.trainer import Trainer

    cfg = load_config(str(config), [f"train.seed={seed}", f"train.max_staleness={staleness}", *overrides])
    cached = (tiny_model_dir(cfg) / "config.json").is_file()
    run_dir = ROOT / "runs" / "learning" / run_name(config, seed, staleness, overrides)
    trainer = Trainer(cfg, run_dir)
    try:
        summary = trainer.run()
    finally:
        trainer.close()
    series = run_series(run_dir)
    # The share of the last training batch cut at rollout.max_new_tokens: a policy that lost its EOS (it keeps
    # writing after the boxed answer) makes responses long without reasoning more.
    cut = series["truncated_by_step"]
    row = {"seed": seed, "max_staleness": staleness, "overrides": overrides, "base_model_cached": cached,
           **{k: v for k, v in summary.items() if isinstance(v, (int, float)) or v is None},
           "train_truncated_frac_end": cut[-1][1] if cut else None,
           "settings": run_settings(trainer.cfg), **series}
    RUNS.parent.mkdir(parents=True, exist_ok=True)
    with runs_file(config).open("a") as f:
        f.write(json.dumps(row) + "\n")
    return row


def run_name(config: Path, seed: int, staleness: int, overrides: list[str]) -> str:
    """runs/learning/<name>: a preset's runs and runs with overrides each get their own directory."""
    preset = "" if config.name == DEFAULT_CONFIG.name else f"{config.stem}-"
    return f"{preset}seed{seed}-k{staleness}" + "".join(f"-{o.replace('/', '_')}" for o in overrides)


def reseries(config: Path = DEFAULT_CONFIG) -> int:
    """Recompute the series (benchmarks/run_series.py) of every recorded row whose run directory is still in
    runs/learning and is that row's run (its last held-out accuracy is the row's); returns how many."""
    path, updated = runs_file(config), 0
    rows = all_rows(path)
    for row in rows:
        run_dir = ROOT / "runs" / "learning" / run_name(config, row["seed"], row["max_staleness"], row["overrides"])
        if "evals" not in row or not (run_dir / "metrics.jsonl").exists():
            continue
        series = run_series(run_dir)
        if series["evals"] and series["evals"][-1]["accuracy"] == row["eval_accuracy_end"]:
            row.update(series)
            updated += 1
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return updated


def derived(row: dict[str, Any]) -> dict[str, Any]:
    return {**row, "gain": row["eval_accuracy_end"] - row["eval_accuracy_start"],
            "length_ratio": row["eval_response_tokens_end"] / row["eval_response_tokens_start"],
            "cached_wall_seconds": row["wall_seconds"] if row.get("base_model_cached", True) else None}


def recorded(path: Path = RUNS) -> list[dict[str, Any]]:
    """The newest recorded run of each (seed, max_staleness) of a config's runs file (no overrides)."""
    rows: dict[tuple[int, int], dict[str, Any]] = {}
    for row in all_rows(path):
        if not row["overrides"]:
            rows[(row["seed"], row["max_staleness"])] = derived(row)
    return [rows[k] for k in sorted(rows)]


def seeds_table(rows: list[dict[str, Any]]) -> str:
    settings = sorted({r["max_staleness"] for r in rows})
    head = " | ".join(f"max_staleness={k}: mean ± sd (n={sum(r['max_staleness'] == k for r in rows)})" for k in settings)
    lines = [f"| figure | {head} |", "|---|" + "---|" * len(settings)]
    for key, label, scale in FIGURES:
        cells = []
        for k in settings:
            values = [r[key] * scale for r in rows if r["max_staleness"] == k and r.get(key) is not None]
            if len(values) == 1:
                cells.append(f"{values[0]:.1f} (one run)")
            else:
                cells.append(f"{statistics.mean(values):.1f} ± {statistics.stdev(values):.1f}" if values else "-")
        lines.append(f"| {label} | {' | '.join(cells)} |")
    return "\n".join(lines)


def runs_table(rows: list[dict[str, Any]]) -> str:
    lines = ["| seed | max_staleness | accuracy | greedy | response tokens | worked share | self-check share | "
             "cut at max_new_tokens, last batch | wall s |", "|" + "---|" * 9]
    for r in rows:
        lines.append(f"| {r['seed']} | {r['max_staleness']} | {r['eval_accuracy_start']:.3f} -> {r['eval_accuracy_end']:.3f} | "
                     f"{r['eval_greedy_accuracy_start']:.3f} -> {r['eval_greedy_accuracy_end']:.3f} | "
                     f"{r['eval_response_tokens_start']:.1f} -> {r['eval_response_tokens_end']:.1f} | "
                     f"{r['eval_worked_frac_start']:.2f} -> {r['eval_worked_frac_end']:.2f} | "
                     f"{r['eval_reflection_frac_start']:.3f} -> {r['eval_reflection_frac_end']:.3f} | "
                     f"{'-' if r.get('train_truncated_frac_end') is None else format(r['train_truncated_frac_end'], '.2f')} | "
                     f"{r['wall_seconds']:.0f}{'' if r.get('base_model_cached', True) else ' (with the base-model build)'} |")
    return "\n".join(lines)


def seeds_section(rows: list[dict[str, Any]]) -> str:
    gains = {k: [r["gain"] * 100 for r in rows if r["max_staleness"] == k] for k in sorted({r["max_staleness"] for r in rows})}
    verdict = "; ".join(f"max_staleness={k}: gain sd {statistics.stdev(v):.1f} points "
                        f"({'meets' if statistics.stdev(v) <= 5 else 'misses'} the <= 5 goal)"
                        for k, v in gains.items() if len(v) > 1)
    return f"""## Learning over seeds (the default run)

`benchmarks/learning.py --seeds 0,1,2 --staleness 0,1 --write-docs`: the README's main command
(`configs/tiny.yaml`, 40 GRPO steps) with `train.seed` 0, 1, 2 (each seed builds its own base model:
warm-up data and initialisation follow the seed), synchronous and with `train.max_staleness=1`. Held-out:
256 problems, 4 samples each at T=1 (accuracy), greedy; "worked" is `tasks.column_addition.is_worked`,
"self-check" `cluster.infra.metrics.REFLECTION`. Goal: the accuracy gain's sd <= 5 points.
{verdict or ''}.
"Cut at max_new_tokens" is the share of the last training batch that hit `rollout.max_new_tokens`: a
run near 100% has lost its end-of-sequence token and keeps writing after the boxed answer (e.g.
`So \\boxed{{1531}}.}}.}}.}}.`), which the answer reward alone neither sees nor penalises (the default's
overlong penalty does: "The end-of-sequence token (overlong shaping)"); its response length then measures
the cap, not the worked steps (its worked share and accuracy are still read as usual).

{seeds_table(rows)}

Every run:

{runs_table(rows)}

`emergence.png` of seed 0, synchronous (per held-out evaluation; thin lines: the same per training batch):

![emergence, seed 0](learning/emergence.png)
"""


def compare_section() -> str:
    results = json.loads((COMPARE / "results.json").read_text())
    cfg, rows = results["config"], results["results"]
    wall = f" The whole comparison took {results['wall_seconds']:.0f} s." if "wall_seconds" in results else ""
    share = cfg["model"]["warmup"].get("rephrased_fraction", 0.0)
    exposure = (f"its warm-up asked {share:.0%} of its questions in the rephrased wording, the rest as training "
                "does" if share else "its warm-up never used the rephrased wording")
    floor = ("\n\nThe base model answers the rephrased questions at "
             f"{max(r['rephrased_accuracy_start'] for r in rows):.3f}: the wording is outside what the warm-up "
             "taught it to read, so that column is at its floor for every method and tells them apart by nothing."
             if all(r["rephrased_accuracy_start"] < 0.05 and r["rephrased_accuracy_end"] < 0.05 for r in rows) else "")
    return f"""## RL vs SFT distillation vs rejection-sampling fine-tuning

`benchmarks/learning.py --compare --write-docs` (`python -m cluster.compare --config configs/tiny.yaml
--out runs/compare{f" model.warmup.rephrased_fraction={share}" if share else ""}`, then the plot, table and results.json copied to
docs/compare/): from the same base model ({exposure}) and through the same learner code path, {cfg['train']['steps']} optimizer steps each with the
learner's settings (lr {cfg['learner']['lr']}), a budget of {cfg['train']['prompts_per_step']} x
{cfg['rollout']['samples_per_prompt']} sequences per step: RL (GRPO on the answer reward), SFT on the task
generator's worked solutions (a perfect teacher), and rejection-sampling fine-tuning on the model's own
distinct correct samples (STaR / RFT). "Rephrased" asks the same held-out questions as "Add 457 and 385.
What is the total?" instead of "What is 457 + 385?" (no method trains on it). Plot: held-out accuracy against
response tokens trained on and against training wall seconds (`docs/compare/compare.png`).{wall}

{(COMPARE / "compare.md").read_text().strip()}{floor}

![RL vs SFT vs RFT](compare/compare.png)
"""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, default=DEFAULT_CONFIG,
                        help="the config the seeds run (configs/tiny_reflect.yaml: the self-correction section)")
    parser.add_argument("--seeds", default="", help="comma-separated train.seed values to run (none: run nothing)")
    parser.add_argument("--staleness", default="0", help="comma-separated train.max_staleness values")
    parser.add_argument("--compare", action="store_true", help="run cluster.compare into runs/compare/ (plot, table, results to docs/compare/)")
    parser.add_argument("--write-docs", action="store_true")
    parser.add_argument("--reseries", action="store_true",
                        help="recompute the recorded rows' series from their run directories (runs/learning)")
    parser.add_argument("overrides", nargs="*", help="config overrides (runs with overrides are not tabled)")
    args = parser.parse_args()
    if args.reseries:
        print(f"series recomputed for {reseries(args.config.resolve())} recorded rows", flush=True)
    for seed in [int(s) for s in args.seeds.split(",") if s.strip()]:
        for k in [int(s) for s in args.staleness.split(",") if s.strip()]:
            print(json.dumps(run_default(seed, k, args.overrides, args.config.resolve())), flush=True)
    if args.compare:
        from cluster.compare import main as compare_main

        code = compare_main(["--config", str(DEFAULT_CONFIG), "--out", str(COMPARE_RUNS), *COMPARE_OVERRIDES,
                             *args.overrides])
        if code:
            return code
        COMPARE.mkdir(parents=True, exist_ok=True)
        for name in ("compare.png", "compare.md", "results.json"):  # the method runs stay in runs/compare
            shutil.copy(COMPARE_RUNS / name, COMPARE / name)
    if args.write_docs:
        rows = recorded()
        if (EMERGENCE_RUN / "emergence.png").exists():  # one run's emergence plot, shown in the section
            EMERGENCE_PNG.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(EMERGENCE_RUN / "emergence.png", EMERGENCE_PNG)
        if rows:
            print(seeds_section(rows))
            replace_section(seeds_section(rows))
            everything = all_rows(RUNS)
            replace_section(update_rule_section(everything))
            replace_section(eos_section(everything, rows))
            replace_section(dynamic_section.section(everything))
            dynamic_section.plot(everything, ROOT / "docs" / dynamic_section.PNG)
        if (COMPARE / "results.json").exists():
            replace_section(compare_section())
        reflect_rows = recorded(runs_file(REFLECT_CONFIG))
        if reflect_rows and (REFLECT_RUN / "emergence.png").exists():
            shutil.copy(REFLECT_RUN / "emergence.png", REFLECT_PNG)
        if reflect_rows or DESIGNS.exists():
            replace_section(reflect_section(reflect_rows, rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
