"""Convert public code sets to `data.kind=code` rows (cluster/loop/data.py; docs/sandbox.md).

    python -m cluster.code_sets mbpp mbpp.jsonl OUT.jsonl [--commit SHA] [--task-ids 11-510]
    python -m cluster.code_sets humaneval HumanEval.jsonl OUT.jsonl [--commit SHA]

Fetch the source file yourself and keep its licence with every copy:
- MBPP (Austin et al. 2021), google-research/google-research, file mbpp/mbpp.jsonl, CC-BY-4.0:
  https://raw.githubusercontent.com/google-research/google-research/master/mbpp/mbpp.jsonl
  Task ids: 1-10 few-shot prompts, 11-510 test, 511-600 validation, 601-974 train.
- HumanEval (Chen et al. 2021), openai/human-eval, file data/HumanEval.jsonl.gz (gunzip first), MIT.
  An evaluation set: use it for held-out evaluation (data.eval_path), not for training.

Each output row names its source (repository, commit, file, task id) and licence. The MBPP prompt is the
task text followed by its first test (the usual MBPP prompting, which shows the function's name and
signature); HumanEval's prompt is its signature and docstring, and its `check(candidate)` is the test.
"""
from __future__ import annotations

import argparse
import json
import re
from pathlib import Path
from typing import Any, Iterator

MBPP = {"repo": "google-research/google-research", "file": "mbpp/mbpp.jsonl", "licence": "CC-BY-4.0"}
HUMANEVAL = {"repo": "openai/human-eval", "file": "data/HumanEval.jsonl.gz", "licence": "MIT"}
CALLED = re.compile(r"assert\s+\(?\s*(?:not\s+)?([A-Za-z_]\w*)\s*\(")


def _source(meta: dict[str, str], commit: str, task: Any) -> str:
    return f"{meta['repo']}@{commit} {meta['file']} task {task}"


def mbpp_rows(rows: list[dict[str, Any]], commit: str, task_ids: range | None) -> Iterator[dict[str, Any]]:
    for row in rows:
        if task_ids is not None and row["task_id"] not in task_ids:
            continue
        called = CALLED.match(row["test_list"][0].strip())
        if called is None:
            raise ValueError(f"MBPP task {row['task_id']}: cannot find the function its first test calls")
        yield {"prompt": f"{row['text']} Your code should pass this test:\n{row['test_list'][0].strip()}",
               "entry_point": called.group(1), "tests": row["test_list"], "setup": row.get("test_setup_code", ""),
               "canonical_solution": row["code"], "source": _source(MBPP, commit, row["task_id"]),
               "licence": MBPP["licence"]}


def humaneval_rows(rows: list[dict[str, Any]], commit: str) -> Iterator[dict[str, Any]]:
    for row in rows:
        yield {"prompt": row["prompt"], "entry_point": row["entry_point"], "tests": [row["test"]],
               "canonical_solution": row["prompt"] + row["canonical_solution"],
               "source": _source(HUMANEVAL, commit, row["task_id"]), "licence": HUMANEVAL["licence"]}


def _task_range(text: str) -> range:
    low, _, high = text.partition("-")
    return range(int(low), int(high or low) + 1)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m cluster.code_sets", description=__doc__.splitlines()[0])
    parser.add_argument("set", choices=("mbpp", "humaneval"))
    parser.add_argument("source", type=Path, help="the set's JSONL file, as published")
    parser.add_argument("out", type=Path)
    parser.add_argument("--commit", default="unknown", help="the source repository's commit the file came from")
    parser.add_argument("--task-ids", type=_task_range, default=None, help="MBPP: keep these task ids, e.g. 11-510")
    args = parser.parse_args(argv)
    rows = [json.loads(line) for line in args.source.read_text().splitlines() if line.strip()]
    out = list(mbpp_rows(rows, args.commit, args.task_ids) if args.set == "mbpp" else humaneval_rows(rows, args.commit))
    args.out.write_text("".join(json.dumps(r) + "\n" for r in out))
    print(f"{len(out)} {args.set} problems -> {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
