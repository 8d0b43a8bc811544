"""The README's figures of the main command, from a run directory of it.

    bash scripts/setup.sh && .venv/bin/python -m cluster.train --config configs/tiny.yaml   # from a fresh clone
    .venv/bin/python benchmarks/main_run.py --run-dir runs/tiny-<time> --write-docs

Copies the run's summary.json and metrics.jsonl to docs/main_run/ (the result files every quoted figure
comes from) and rewrites the README block between `<!-- main-run -->` and `<!-- /main-run -->` from them;
tests/test_doc_figures.py checks that the README's block is what these files render.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "docs" / "main_run"
README = ROOT / "README.md"
BEGIN, END = "<!-- main-run -->", "<!-- /main-run -->"
PHASES = (("time/rollout_wall_s", "generate and score"), ("time/logprobs_s", "the learner's extra forward passes"),
          ("time/train_s", "train"), ("time/sync_s", "sync"))


def load(results: Path = RESULTS) -> tuple[dict, list[dict], dict]:
    summary = json.loads((results / "summary.json").read_text())
    rows = [json.loads(line) for line in (results / "metrics.jsonl").read_text().splitlines() if line.strip()]
    meta = json.loads((results / "run.json").read_text())
    return summary, rows, meta


def render(summary: dict, rows: list[dict], meta: dict) -> str:
    """The README block: the start/end table, the worked share and length along training, step times."""
    s = summary
    ratio = s["eval_response_tokens_end"] / max(s["eval_response_tokens_start"], 1e-9)
    pct = lambda x: f"{100 * x:.0f}%"  # noqa: E731
    table = [
        f"| | step 0 (base model) | after {s['steps']} RL steps |", "|---|---|---|",
        f"| held-out accuracy (sampled, T=1) | {s['eval_accuracy_start']:.3f} | {s['eval_accuracy_end']:.3f} |",
        f"| greedy accuracy | {s['eval_greedy_accuracy_start']:.3f} | {s['eval_greedy_accuracy_end']:.3f} |",
        f"| boxed rate | {s['eval_boxed_rate_start']:.3f} | {s['eval_boxed_rate_end']:.3f} |",
        f"| mean response length (tokens) | {s['eval_response_tokens_start']:.1f} | "
        f"{s['eval_response_tokens_end']:.1f} ({ratio:.1f}x) |",
        f"| worked answers (`is_worked`) | {pct(s['eval_worked_frac_start'])} | {pct(s['eval_worked_frac_end'])} |",
        f"| self-checks (`REFLECTION`) | {100 * s['eval_reflection_frac_start']:.1f}% | "
        f"{100 * s['eval_reflection_frac_end']:.1f}% |",
    ]
    train = [r for r in rows if "train/worked_frac" in r]
    marks = [r for r in train if r["step"] in (1, 5, 10, 20, s["steps"])]
    along = ", ".join(f"step {r['step']} {pct(r['train/worked_frac'])} ({r['train/response_len']:.0f} tokens, "
                      f"accuracy {r['train/accuracy']:.2f})" for r in marks)
    steps = [r for r in rows if "time/step_s" in r]
    median = lambda key: statistics.median(r[key] for r in steps)  # noqa: E731
    phases = ", ".join(f"{name} {median(key):.2f} s" for key, name in PHASES)
    return "\n".join([
        f"Measured on the 2-core CPU machine ({meta['where']}; `configs/tiny.yaml`, seed 0; "
        f"held-out: {meta['eval_size']} problems, {meta['eval_samples']} samples each at T=1, and greedy):", "",
        *table, "",
        f"Training samples that work the sum out, with their length and accuracy: {along}.", "",
        f"Time: the whole command {meta['wall_s'] / 60:.1f} min ({meta['build']}); the {len(steps)} RL steps "
        f"{median('time/step_s'):.2f} s each (median: {phases}). Result files: `docs/main_run/` "
        f"(`benchmarks/main_run.py`).",
    ])


def replace_block(text: str, block: str) -> str:
    start, end = text.index(BEGIN) + len(BEGIN), text.index(END)
    return text[:start] + "\n" + block + "\n" + text[end:]


def readme_block(text: str) -> str:
    return text[text.index(BEGIN) + len(BEGIN): text.index(END)].strip("\n")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="benchmarks/main_run.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run-dir", required=True, help="a run directory of the main command")
    p.add_argument("--wall-s", type=float, required=True, help="the whole command's wall seconds, as timed")
    p.add_argument("--build", required=True, help="what the wall time includes, e.g. 'base model build 4m20s included'")
    p.add_argument("--where", default="", help="machine note (default: cores and load average)")
    p.add_argument("--write-docs", action="store_true")
    args = p.parse_args(argv)
    run = Path(args.run_dir)
    cfg_text = (run / "config.yaml").read_text()
    import yaml

    cfg = yaml.safe_load(cfg_text)
    meta = {"wall_s": args.wall_s, "build": args.build,
            "where": args.where or f"{os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f} at the end",
            "eval_size": cfg["data"]["eval_size"], "eval_samples": cfg["train"]["eval_samples"]}
    summary = json.loads((run / "summary.json").read_text())
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]
    block = render(summary, rows, meta)
    print(block)
    if args.write_docs:
        RESULTS.mkdir(parents=True, exist_ok=True)
        shutil.copy(run / "summary.json", RESULTS / "summary.json")
        shutil.copy(run / "metrics.jsonl", RESULTS / "metrics.jsonl")
        (RESULTS / "run.json").write_text(json.dumps(meta, indent=2) + "\n")
        README.write_text(replace_block(README.read_text(), block))
    return 0


if __name__ == "__main__":
    sys.exit(main())
