"""Reward verification benchmark: ours vs math-verify on one core, side by side.

    /work/main/.venv/bin/python benchmarks/reward.py [--write-docs]

Inputs (the same for both verifiers):
  - MATH500 gold answers as boxed responses, checked against rewritten equivalent forms
    (cosmetic LaTeX changes, a/b for \\frac{a}{b}, decimals, thousands separators) and, for
    integer answers, against a wrong value;
  - the adversarial and code-in-box rows of tests/data/reward_labelled.jsonl plus a few extra hostile
    payloads, each timed per call;
  - the whole labelled set, for agreement with the labels.
math-verify (a benchmark-only dependency: pip install math-verify) runs in a child process: its own
signal timeouts (1 s) guard each parse/verify, and the parent kills the child when one call runs
past HARD_LIMIT_S, recording that case as a timeout. Our verifier runs in this process with its
own 2 s per-check limit. Caches are cleared before each timed run.
"""
from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import re
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.doc_sections import replace_section  # noqa: E402
from reward.normalize import normalize  # noqa: E402
from reward.parse import parse_ast  # noqa: E402
from reward.scoring import judge  # noqa: E402

MATH500 = Path("/work/shared/data/math500_test.jsonl")
LABELLED = ROOT / "tests" / "data" / "reward_labelled.jsonl"
DOCS = ROOT / "docs" / "benchmarks.md"
HARD_LIMIT_S = 10.0
COMMAND = "/work/main/.venv/bin/python benchmarks/reward.py --write-docs"
EXTRA_HOSTILE = ["9^{9^{9}}", "10^{10^{10^{10}}}", "(" * 500 + "1" + ")" * 500, "2^{2^{2^{2^{2^{2}}}}}",
                 "x" * 1_000_000, "\\frac{1}{" * 200 + "1" + "}" * 200, "1" * 100_000 + "!", "\x00" * 100_000]


def rewrites(gold: str) -> list[tuple[str, bool]]:
    """Equivalent rewritten forms of a MATH500 gold answer (and a wrong one for integers)."""
    out = [(gold, True)]
    cosmetic = gold.replace("\\frac", "\\dfrac").replace("\\left", "").replace("\\right", "")
    cosmetic = re.sub(r",(?!\\!|\d{3})", ", ", cosmetic)  # space list commas, not thousands separators
    if cosmetic != gold:
        out.append((cosmetic, True))
    if re.fullmatch(r"-?\d+", gold):
        n = int(gold)
        out.append((f"{n:,}" if abs(n) >= 1000 else f"{n}.0", True))
        out.append((str(n + 1), False))
    frac = re.fullmatch(r"(-?)\\[dt]?frac\{(\d+)\}\{(\d+)\}", gold)
    if frac:
        sign, a, b = frac.groups()
        out.append((f"{sign}{a}/{b}", True))
        den = int(b)
        while den % 2 == 0:
            den //= 2
        while den % 5 == 0:
            den //= 5
        if den == 1:
            out.append((f"{sign}{int(a) / int(b)!r}", True))
    return out


def math500_pairs() -> list[tuple[str, str, bool]]:
    pairs = []
    for line in MATH500.read_text().splitlines():
        gold = json.loads(line)["answer"]
        for form, equal in rewrites(gold):
            pairs.append((f"Thus the answer is $\\boxed{{{gold}}}$.", form, equal))
    return pairs


def labelled_rows() -> list[dict[str, Any]]:
    return [json.loads(line) for line in LABELLED.read_text().splitlines() if line.strip()]


def adversarial_pairs(rows: list[dict[str, Any]]) -> list[tuple[str, str, bool]]:
    pairs = [(r["response"], r["gold"], r["equal"]) for r in rows if r["category"] in ("adversarial", "code_in_box")]
    return pairs + [(f"\\boxed{{{p}}}", "5", False) for p in EXTRA_HOSTILE]


# ---- our verifier --------------------------------------------------------------------------

def ours_clear() -> None:
    parse_ast.cache_clear()
    normalize.cache_clear()


def ours_run(pairs: list[tuple[str, str, bool]], per_call: bool = False) -> dict[str, Any]:
    ours_clear()
    results, times = [], []
    start = time.perf_counter()
    for response, gold, _ in pairs:
        t0 = time.perf_counter()
        results.append(judge(response, gold, timeout_s=2.0))
        times.append(time.perf_counter() - t0)
    total = time.perf_counter() - start
    return {"total": total, "times": times, "verdicts": [v.correct for v in results],
            "timeouts": sum(v.timed_out for v in results)}


# ---- math-verify, in a child process --------------------------------------------------------

def _mv_check(response: str, gold: str) -> tuple[bool, bool]:
    """(verdict, errored) for one pair, with math-verify's own 1 s signal timeouts."""
    from math_verify import parse, verify
    try:
        gold_parsed = parse(f"${gold}$", parsing_timeout=1)
        pred_parsed = parse(response, parsing_timeout=1)
        return bool(verify(gold_parsed, pred_parsed, timeout_seconds=1)), False
    except Exception:  # noqa: BLE001 - any failure of the competitor scores 0
        return False, True


def _mv_child(conn: Any) -> None:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import logging
    logging.disable(logging.CRITICAL)
    import math_verify  # noqa: F401 - warm the import before timing
    while True:
        job = conn.recv()
        if job is None:
            return
        response, gold = job
        t0 = time.perf_counter()
        verdict, errored = _mv_check(response, gold)
        conn.send((verdict, errored, time.perf_counter() - t0))


class MathVerifyRunner:
    """One child process; a call that runs past HARD_LIMIT_S kills it and counts as a timeout."""

    def __init__(self) -> None:
        self.ctx = mp.get_context("fork")
        self._start()

    def _start(self) -> None:
        self.conn, child = self.ctx.Pipe()
        self.proc = self.ctx.Process(target=_mv_child, args=(child,), daemon=True)
        self.proc.start()

    def check(self, response: str, gold: str) -> tuple[bool, float, bool]:
        """(verdict, seconds, killed)."""
        self.conn.send((response, gold))
        if self.conn.poll(HARD_LIMIT_S):
            verdict, _, seconds = self.conn.recv()
            return verdict, seconds, False
        self.proc.kill()
        self.proc.join()
        self._start()
        return False, HARD_LIMIT_S, True

    def close(self) -> None:
        self.conn.send(None)
        self.proc.join(timeout=5)


def mv_run(runner: MathVerifyRunner, pairs: list[tuple[str, str, bool]]) -> dict[str, Any]:
    results = [runner.check(r, g) for r, g, _ in pairs]
    times = [s for _, s, _ in results]
    return {"total": sum(times), "times": times, "verdicts": [v for v, _, _ in results],
            "timeouts": sum(k for _, _, k in results)}


# ---- report ---------------------------------------------------------------------------------

def agreement(verdicts: list[bool], pairs: list[tuple[str, str, bool]]) -> tuple[int, int]:
    return sum(v == p[2] for v, p in zip(verdicts, pairs)), len(pairs)


def table(results: dict[str, dict[str, dict[str, Any]]], sets: dict[str, list]) -> list[str]:
    lines = ["| measure | ours | math-verify |", "| --- | --- | --- |"]
    ours, mv = results["ours"], results["math-verify"]
    n = len(sets["math500"])
    lines.append(f"| MATH500 rewrites: verifications/s (one core, {n} pairs) | "
                 f"{n / ours['math500']['total']:,.0f} | {n / mv['math500']['total']:,.0f} |")
    for name, label in (("math500", "MATH500 rewrites: agreement with expected"),
                        ("labelled", "labelled set: agreement with labels"),
                        ("adversarial", "adversarial: agreement (score 0 unless labelled equal)")):
        rows = []
        for who in (ours, mv):
            ok, total = agreement(who[name]["verdicts"], sets[name])
            rows.append(f"{ok}/{total} ({ok / total:.1%})")
        lines.append(f"| {label} | {rows[0]} | {rows[1]} |")
    for name in ("adversarial", "labelled"):
        lines.append(f"| {name}: slowest single call (s) | {max(ours[name]['times']):.3f} | "
                     f"{max(mv[name]['times']):.3f} |")
    lines.append(f"| adversarial: calls over 1 s | {sum(t > 1 for t in ours['adversarial']['times'])} | "
                 f"{sum(t > 1 for t in mv['adversarial']['times'])} |")
    lines.append(f"| timeouts (ours: 2 s check limit; math-verify: killed at {HARD_LIMIT_S:.0f} s) | "
                 f"{sum(ours[k]['timeouts'] for k in sets)} | {sum(mv[k]['timeouts'] for k in sets)} |")
    return lines


def write_docs(lines: list[str], sets: dict[str, list]) -> None:
    section = "\n".join([
        "## Reward verification", "",
        "Our verifier (reward/) against math-verify 0.9 on the same inputs, one core, one process. "
        f"Inputs: {len(sets['math500'])} pairs built from the 500 MATH500 gold answers, each boxed as "
        "the response and checked against itself, rewritten equivalent forms and (for integers) a wrong "
        f"value; {len(sets['labelled'])} hand-labelled rows "
        f"(tests/data/reward_labelled.jsonl); {len(sets['adversarial'])} adversarial/code-in-box inputs. "
        "math-verify runs in a child process guarded per call (its 1 s signal timeouts, and a "
        f"{HARD_LIMIT_S:.0f} s kill). Caches are cleared before each timed run. math-verify is a "
        "benchmark-only dependency (pip install math-verify). The labelled set was written for this "
        "verifier's documented rules (e.g. no 6-digit rounding, no percent x100 matching), so "
        "math-verify's lower agreement partly reflects different conventions, not only errors; "
        "throughput varies with machine load.", "",
        *lines, "", "Reproduce:", "", "```", COMMAND, "```", ""])
    replace_section(section, DOCS)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write-docs", action="store_true", help="update docs/benchmarks.md")
    args = parser.parse_args()
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})  # one core, children inherit
    rows = labelled_rows()
    sets = {"math500": math500_pairs(), "labelled": [(r["response"], r["gold"], r["equal"]) for r in rows],
            "adversarial": adversarial_pairs(rows)}
    runner = MathVerifyRunner()
    results = {"ours": {k: ours_run(v) for k, v in sets.items()},
               "math-verify": {k: mv_run(runner, v) for k, v in sets.items()}}
    runner.close()
    lines = table(results, sets)
    print("\n".join(lines))
    ours_l, mv_l = results["ours"]["labelled"], results["math-verify"]["labelled"]
    for i, (pair, v) in enumerate(zip(sets["labelled"], ours_l["verdicts"])):
        if v != pair[2]:
            print(f"ours disagrees on labelled row {i}: {pair[0][:80]!r} vs {pair[1][:40]!r} (label {pair[2]})")
    print(f"math-verify disagrees on {sum(v != p[2] for v, p in zip(mv_l['verdicts'], sets['labelled']))} labelled rows")
    if args.write_docs:
        write_docs(lines, sets)
        print(f"updated {DOCS.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
