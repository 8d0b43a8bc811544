"""Score a JSONL file of {"response": ..., "answer": ...} rows from the command line.

    python -m reward.grade FILE.jsonl [--rows] [--shaping binary|simplerl] [--extract boxed|boxed_or_phrase]

Prints a summary (rows, correct, accuracy, unboxed, timeouts, errors, mean reward), and with --rows one
line per row: its number, its reward and whether a box was found. A bad row (not JSON, not an
object, or missing a string "response"/"answer") is reported with its line number on stderr and
makes the exit status 2; the other rows are still scored.
"""
from __future__ import annotations

import argparse
import json
import sys
from typing import Iterator

from reward.extract import EXTRACT_MODES
from reward.scoring import judge
from reward.shaping import STYLES


def read_rows(path: str) -> Iterator[tuple[int, tuple[str, str] | str]]:
    """(line number, (response, answer)) for good rows, (line number, error message) for bad ones."""
    with open(path, encoding="utf-8", errors="replace") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                yield number, f"not valid JSON ({e.msg})"
                continue
            if not isinstance(row, dict):
                yield number, "not a JSON object"
                continue
            missing = [k for k in ("response", "answer") if not isinstance(row.get(k), str)]
            if missing:
                yield number, f"missing or non-string field(s): {', '.join(missing)}"
                continue
            yield number, (row["response"], row["answer"])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m reward.grade", description=__doc__.splitlines()[0])
    parser.add_argument("file", help="JSONL file with response and answer fields")
    parser.add_argument("--rows", action="store_true", help="print one line per row")
    parser.add_argument("--shaping", choices=STYLES, default="binary")
    parser.add_argument("--extract", choices=EXTRACT_MODES, default="boxed",
                        help='boxed_or_phrase also reads "The final answer is X" / "Answer: X" when there is no box')
    parser.add_argument("--timeout", type=float, default=2.0, help="seconds per check")
    args = parser.parse_args(argv)
    try:
        rows = list(read_rows(args.file))
    except OSError as e:
        print(f"error: cannot read {args.file}: {e.strerror}", file=sys.stderr)
        return 2
    totals = {"rows": 0, "correct": 0, "unboxed": 0, "timeouts": 0, "errors": 0, "bad": 0, "reward": 0.0}
    for number, item in rows:
        if isinstance(item, str):
            totals["bad"] += 1
            print(f"error: line {number}: {item}", file=sys.stderr)
            continue
        verdict = judge(item[0], item[1], args.timeout, args.shaping, args.extract)
        totals["rows"] += 1
        totals["correct"] += verdict.correct
        totals["unboxed"] += not verdict.boxed
        totals["timeouts"] += verdict.timed_out
        totals["errors"] += verdict.error is not None
        if verdict.error:
            print(f"error: line {number}: {verdict.error}", file=sys.stderr)
        totals["reward"] += verdict.reward
        if args.rows:
            print(f"{number}\t{verdict.reward:g}\t{'boxed' if verdict.boxed else 'unboxed'}")
    n = max(totals["rows"], 1)
    print(f"rows={totals['rows']} correct={totals['correct']} accuracy={totals['correct'] / n:.4f} "
          f"unboxed={totals['unboxed']} timeouts={totals['timeouts']} errors={totals['errors']} mean_reward={totals['reward'] / n:.4f} "
          f"bad_rows={totals['bad']}")
    return 2 if totals["bad"] else 0


if __name__ == "__main__":
    sys.exit(main())
