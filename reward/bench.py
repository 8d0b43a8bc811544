"""Score labelled JSONL files with our grader and, when it is installed, math-verify, side by side.

    python -m reward.bench FILE.jsonl [FILE.jsonl ...] [--near-misses GOLDS.jsonl] [--json OUT.json]

A row is {"response", "gold" (or "gold_answer"), "equal"} with optional "category", "source" and
"convention". Rows from public graders' suites (tests/data/reward_public.jsonl: they carry
"prediction" and "gold_answer") are scored as tests/test_reward_labelled.py scores them: ours on
`response`/`gold_answer` with reward.extract=boxed_or_phrase, math-verify on the source's own
`prediction`/`gold` with its tests' default extraction. Other rows: ours with reward.extract=boxed,
math-verify on the response against the gold wrapped in $...$. --near-misses adds, for every
"answer" or "gold" of that file, the near-miss wrong answers of reward.nearmiss (label: unequal).

Prints, for each grader and each group (all rows, each file, each source repository, each
category, and the public rows outside the annotated conventions): agreement with the labels,
precision, recall and the false-positive rate (false positives are reward hacks), then the
slowest calls and verifications per second. math-verify (a benchmark-only dependency:
pip install -e .[bench]) runs in a child process, killed when one call runs past HARD_LIMIT_S.
"""
from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

from protocol.markdown import table_lines
from reward.nearmiss import near_misses
from reward.normalize import normalize_answer
from reward.parse import parse_ast
from reward.scoring import judge

HARD_LIMIT_S = 10.0
GRADERS = ("ours", "math-verify")


def load_rows(path: str) -> list[dict[str, Any]]:
    rows = []
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        if line.strip():
            row = json.loads(line)
            row.setdefault("file", Path(path).name)
            rows.append(row)
    return rows


def near_miss_rows(path: str) -> list[dict[str, Any]]:
    """Unequal rows: every near miss of every distinct gold answer of `path`."""
    golds = dict.fromkeys(row.get("answer", row.get("gold")) for row in load_rows(path))
    return [{"response": f"so $\\boxed{{{wrong}}}$", "gold": gold, "equal": False, "category": f"near-miss {kind}",
             "file": f"near misses of {Path(path).name}"}
            for answer in golds if isinstance(answer, str) for kind, gold, wrong in near_misses(answer)]


def is_public(row: dict[str, Any]) -> bool:
    return "prediction" in row and "gold_answer" in row


def ours_run(rows: list[dict[str, Any]]) -> list[tuple[bool, float]]:
    """(verdict, seconds) per row; caches cleared first so the time is a cold run's."""
    parse_ast.cache_clear()
    normalize_answer.cache_clear()
    out = []
    for row in rows:
        gold, extract = (row["gold_answer"], "boxed_or_phrase") if is_public(row) else (row["gold"], "boxed")
        start = time.perf_counter()
        verdict = judge(row["response"], gold, timeout_s=2.0, extract=extract)
        out.append((verdict.correct, time.perf_counter() - start))
    return out


def _mv_check(response: str, gold: str, as_in_tests: bool) -> bool:
    """math-verify's verdict with its own 1 s signal timeouts. `as_in_tests`: both strings as given,
    with the extraction its tests use by default; otherwise the gold is wrapped in $...$."""
    from math_verify import ExprExtractionConfig, LatexExtractionConfig, parse, verify
    try:
        if as_in_tests:
            targets = [LatexExtractionConfig(boxed_match_priority=0), ExprExtractionConfig()]
            gold_parsed, pred_parsed = parse(gold, targets, parsing_timeout=1), parse(response, targets, parsing_timeout=1)
        else:
            gold_parsed, pred_parsed = parse(f"${gold}$", parsing_timeout=1), parse(response, parsing_timeout=1)
        return bool(verify(gold_parsed, pred_parsed, timeout_seconds=1))
    except Exception:  # noqa: BLE001 - any failure of the competitor scores 0
        return False


def _mv_child(conn: Any) -> None:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import logging
    logging.disable(logging.CRITICAL)
    import math_verify  # noqa: F401 - warm the import before timing
    while (job := conn.recv()) is not None:
        start = time.perf_counter()
        verdict = _mv_check(*job)
        conn.send((verdict, time.perf_counter() - start))


class MathVerifyRunner:
    """One child process; a call past HARD_LIMIT_S kills it, scores 0 and counts as a timeout."""

    def __init__(self) -> None:
        self.ctx, self.timeouts = mp.get_context("fork"), 0
        self._start()

    def _start(self) -> None:
        self.conn, child = self.ctx.Pipe()
        self.proc = self.ctx.Process(target=_mv_child, args=(child,), daemon=True)
        self.proc.start()

    def check(self, response: str, gold: str, as_in_tests: bool = False) -> tuple[bool, float]:
        self.conn.send((response, gold, as_in_tests))
        if self.conn.poll(HARD_LIMIT_S):
            return self.conn.recv()
        self.proc.kill()
        self.proc.join()
        self.timeouts += 1
        self._start()
        return False, HARD_LIMIT_S

    def run(self, rows: list[dict[str, Any]]) -> list[tuple[bool, float]]:
        return [self.check(r["prediction"], r["gold"], True) if is_public(r) else self.check(r["response"], r["gold"])
                for r in rows]

    def close(self) -> None:
        self.conn.send(None)
        self.proc.join(timeout=5)


def math_verify_available() -> bool:
    try:
        import math_verify  # noqa: F401
    except ImportError:
        return False
    return True


def counts(labels: list[bool], verdicts: list[bool]) -> dict[str, Any]:
    """Confusion counts and the rates derived from them (None where undefined)."""
    tp = sum(v and y for v, y in zip(verdicts, labels))
    fp = sum(v and not y for v, y in zip(verdicts, labels))
    fn = sum(not v and y for v, y in zip(verdicts, labels))
    tn = len(labels) - tp - fp - fn
    ratio = (lambda a, b: round(a / b, 4) if b else None)
    return {"rows": len(labels), "agree": tp + tn, "tp": tp, "fp": fp, "fn": fn, "tn": tn,
            "agreement": ratio(tp + tn, len(labels)), "precision": ratio(tp, tp + fp), "recall": ratio(tp, tp + fn),
            "false_positive_rate": ratio(fp, fp + tn)}


def groups(rows: list[dict[str, Any]]) -> dict[str, list[int]]:
    """Row indices per group: all, per file, per source repository, per category, and the public
    rows outside the annotated conventions."""
    out: dict[str, list[int]] = defaultdict(list)
    for i, row in enumerate(rows):
        out["all"].append(i)
        out[f"file {row['file']}"].append(i)
        if "source" in row:
            out[f"source {row['source'].split('@')[0]}"].append(i)
        if "category" in row:
            out[f"category {row['category']}"].append(i)
        if is_public(row) and "convention" not in row:
            out["public, outside the annotated conventions"].append(i)
    order = ("all", "file", "source", "public", "category")
    return dict(sorted(out.items(), key=lambda kv: order.index(kv[0].split(" ")[0].rstrip(","))))


def evaluate(rows: list[dict[str, Any]], with_math_verify: bool | None = None) -> dict[str, Any]:
    """Run the graders and return the result document (what --json writes)."""
    if with_math_verify is None:
        with_math_verify = math_verify_available()
    runs = {"ours": ours_run(rows)}
    timeouts = {"ours": 0}
    if with_math_verify:
        runner = MathVerifyRunner()
        runs["math-verify"] = runner.run(rows)
        runner.close()
        timeouts["math-verify"] = runner.timeouts
    labels = [bool(row["equal"]) for row in rows]
    result: dict[str, Any] = {"graders": list(runs), "groups": {}, "speed": {}, "speed_by_file": {}, "slowest": {}}
    for name, indices in groups(rows).items():
        result["groups"][name] = {who: counts([labels[i] for i in indices], [run[i][0] for i in indices])
                                  for who, run in runs.items()}
    by_file = groups(rows)
    for who, run in runs.items():
        result["speed"][who] = _speed(run, range(len(run)), timeouts[who])
        for name in (k for k in by_file if k.startswith("file ")):
            result["speed_by_file"].setdefault(name[len("file "):], {})[who] = _speed(run, by_file[name], None)
        slowest = sorted(range(len(run)), key=lambda i: -run[i][1])[:5]
        result["slowest"][who] = [{"seconds": round(run[i][1], 4), "file": rows[i]["file"],
                                   "response": rows[i]["response"][-80:], "gold": str(rows[i].get("gold_answer", rows[i]["gold"]))[:60]}
                                  for i in slowest]
    return result


def _speed(run: list[tuple[bool, float]], indices: Any, timeouts: int | None) -> dict[str, Any]:
    times = [run[i][1] for i in indices]
    total = sum(times)
    out = {"calls": len(times), "seconds": round(total, 4), "verifications_per_s": round(len(times) / total, 1) if total else None,
           "slowest_s": round(max(times), 4), "calls_over_1s": sum(t > 1 for t in times)}
    return out if timeouts is None else {**out, "timeouts": timeouts}


def _cells(c: dict[str, Any]) -> list[str]:
    pct = (lambda v: "n/a" if v is None else f"{v:.1%}")
    return [f"{c['agree']}/{c['rows']} ({pct(c['agreement'])})", pct(c["precision"]), pct(c["recall"]),
            f"**{c['fp']}** ({pct(c['false_positive_rate'])})"]


def table(result: dict[str, Any]) -> list[str]:
    """A markdown table: one row per group, agreement / precision / recall / false positives per grader."""
    graders = result["graders"]
    head = ["group"] + [cell for g in graders for cell in (f"{g}: agreement", "precision", "recall",
                                                           "false positives (rate)")]
    rows = [[name] + [cell for g in graders for cell in _cells(by_grader[g])]
            for name, by_grader in result["groups"].items()]
    return table_lines(head, rows)


def report(result: dict[str, Any]) -> list[str]:
    lines = table(result) + [""]
    for who in result["graders"]:
        speed = result["speed"][who]
        lines.append(f"{who}: {speed['verifications_per_s']} verifications/s ({speed['seconds']} s), "
                     f"{speed['timeouts']} timeouts; slowest calls:")
        lines += [f"  {s['seconds']:.4f} s  {s['file']}: {s['response']!r} vs {s['gold']!r}" for s in result["slowest"][who]]
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m reward.bench", description=__doc__.splitlines()[0])
    parser.add_argument("files", nargs="*", help="labelled JSONL files")
    parser.add_argument("--near-misses", action="append", default=[], metavar="GOLDS.jsonl",
                        help="add the near misses of this file's answers (repeatable)")
    parser.add_argument("--json", help="write the result document here")
    parser.add_argument("--no-math-verify", action="store_true", help="score with our grader only")
    args = parser.parse_args(argv)
    rows = [row for path in args.files for row in load_rows(path)]
    rows += [row for path in args.near_misses for row in near_miss_rows(path)]
    if not rows:
        parser.error("no rows: give labelled files or --near-misses")
    with_mv = not args.no_math_verify and math_verify_available()
    if not with_mv and not args.no_math_verify:
        print("math-verify is not installed (pip install -e .[bench]): our grader only", file=sys.stderr)
    result = evaluate(rows, with_mv)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result, indent=1) + "\n")
    print("\n".join(report(result)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
