"""Reward verification benchmark: ours vs math-verify on one core, side by side.

    PYTHONPATH=<math-verify 0.9.0 install> /work/main/.venv/bin/python benchmarks/reward.py [--write-docs]

Inputs (the same for both verifiers):
  - MATH500 gold answers as boxed responses, checked against rewritten equivalent forms
    (cosmetic LaTeX changes, a/b for \\frac{a}{b}, decimals, thousands separators) and, for
    integer answers, against a wrong value;
  - the adversarial and code-in-box rows of tests/data/reward_labelled.jsonl plus a few extra hostile
    payloads, each timed per call;
  - the whole labelled set, for agreement with the labels;
  - the public graders' cases (tests/data/reward_public.jsonl: math-verify's tests, Qwen2.5-Math's
    grader pairs, lm-evaluation-harness's Minerva/MATH normalisation cases), for agreement with the
    sources' labels: ours on the row's `response`/`gold_answer` with reward.extract=boxed_or_phrase,
    math-verify on the source's own `prediction`/`gold` strings with its tests' default settings.
math-verify (a benchmark-only dependency: pip install math-verify==0.9.0, or a --target install put
on PYTHONPATH, since it must not enter the product's environment) runs in a child process: its own
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
from reward.normalize import normalize_answer  # noqa: E402
from reward.parse import parse_ast  # noqa: E402
from reward.scoring import judge  # noqa: E402

MATH500 = Path("/work/shared/data/math500_test.jsonl")
LABELLED = ROOT / "tests" / "data" / "reward_labelled.jsonl"
PUBLIC = ROOT / "tests" / "data" / "reward_public.jsonl"
CONVENTIONS = ROOT / "tests" / "data" / "reward_public_conventions.json"
DOCS = ROOT / "docs" / "benchmarks.md"
HARD_LIMIT_S = 10.0
COMMAND = ("/work/main/.venv/bin/pip install --target /tmp/reasonrl-mv --no-deps math-verify==0.9.0 "
           "latex2sympy2_extended==1.11.0 antlr4-python3-runtime==4.13.2   # once\n"
           "PYTHONPATH=/tmp/reasonrl-mv /work/main/.venv/bin/python benchmarks/reward.py --write-docs")
EXTRA_HOSTILE = ["9^{9^{9}}", "10^{10^{10^{10}}}", "(" * 500 + "1" + ")" * 500, "2^{2^{2^{2^{2^{2}}}}}",
                 "x" * 1_000_000, "\\frac{1}{" * 200 + "1" + "}" * 200, "1" * 100_000 + "!", "\x00" * 100_000,
                 "1 \\over " * 100 + "2", "1=" * 300 + "5", "\u221a" * 300 + "2", "x=1, " * 150, "<".join(["x"] * 300),
                 "{" * 30 + "5 \\over 2" + "}" * 30, "5\u200b" * 200]


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


def labelled_rows(path: Path = LABELLED) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def adversarial_pairs(rows: list[dict[str, Any]]) -> list[tuple[str, str, bool]]:
    pairs = [(r["response"], r["gold"], r["equal"]) for r in rows if r["category"] in ("adversarial", "code_in_box")]
    return pairs + [(f"\\boxed{{{p}}}", "5", False) for p in EXTRA_HOSTILE]


# ---- our verifier --------------------------------------------------------------------------

def ours_clear() -> None:
    parse_ast.cache_clear()
    normalize_answer.cache_clear()


def ours_run(pairs: list[tuple[str, str, bool]], extract: str = "boxed") -> dict[str, Any]:
    ours_clear()
    results, times = [], []
    start = time.perf_counter()
    for response, gold, _ in pairs:
        t0 = time.perf_counter()
        results.append(judge(response, gold, timeout_s=2.0, extract=extract))
        times.append(time.perf_counter() - t0)
    total = time.perf_counter() - start
    return {"total": total, "times": times, "verdicts": [v.correct for v in results],
            "timeouts": sum(v.timed_out for v in results)}


# ---- math-verify, in a child process --------------------------------------------------------

def _mv_check(response: str, gold: str, as_in_tests: bool = False) -> tuple[bool, bool]:
    """(verdict, errored) for one pair, with math-verify's own 1 s signal timeouts. `as_in_tests`:
    both strings as given, with the extraction its tests use by default (boxed first, LaTeX and
    expressions); otherwise the gold answer is wrapped in $...$ and the defaults apply."""
    from math_verify import ExprExtractionConfig, LatexExtractionConfig, parse, verify
    try:
        if as_in_tests:
            targets = [LatexExtractionConfig(boxed_match_priority=0), ExprExtractionConfig()]
            gold_parsed = parse(gold, targets, parsing_timeout=1)
            pred_parsed = parse(response, targets, parsing_timeout=1)
        else:
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
        response, gold, as_in_tests = job
        t0 = time.perf_counter()
        verdict, errored = _mv_check(response, gold, as_in_tests)
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

    def check(self, response: str, gold: str, as_in_tests: bool = False) -> tuple[bool, float, bool]:
        """(verdict, seconds, killed)."""
        self.conn.send((response, gold, as_in_tests))
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


def mv_run(runner: MathVerifyRunner, pairs: list[tuple[str, str, bool]], as_in_tests: bool = False) -> dict[str, Any]:
    results = [runner.check(r, g, as_in_tests) for r, g, _ in pairs]
    times = [s for _, s, _ in results]
    return {"total": sum(times), "times": times, "verdicts": [v for v, _, _ in results],
            "timeouts": sum(k for _, _, k in results)}


# ---- report ---------------------------------------------------------------------------------

def agreement(verdicts: list[bool], pairs: list[tuple[str, str, bool]]) -> tuple[int, int]:
    return sum(v == p[2] for v, p in zip(verdicts, pairs)), len(pairs)


def _agreement_cell(verdicts: list[bool], pairs: list[tuple[str, str, bool]]) -> str:
    ok, total = agreement(verdicts, pairs)
    return f"{ok}/{total} ({ok / total:.1%})"


def table(results: dict[str, dict[str, dict[str, Any]]], sets: dict[str, list]) -> list[str]:
    lines = ["| measure | ours | math-verify |", "| --- | --- | --- |"]
    ours, mv = results["ours"], results["math-verify"]
    n = len(sets["math500"])
    lines.append(f"| MATH500 rewrites: verifications/s (one core, {n} pairs) | "
                 f"{n / ours['math500']['total']:,.0f} | {n / mv['math500']['total']:,.0f} |")
    for name, label in (("math500", "MATH500 rewrites: agreement with expected"),
                        ("labelled", "labelled set (ours): agreement with labels"),
                        ("public", "public graders' cases: agreement with the sources' labels"),
                        ("adversarial", "adversarial: agreement (score 0 unless labelled equal)")):
        lines.append(f"| {label} | {_agreement_cell(ours[name]['verdicts'], sets[name])} | "
                     f"{_agreement_cell(mv[name]['verdicts'], sets[name])} |")
        if name == "public":
            lines += _per_source(results, sets)
    for name in ("adversarial", "labelled", "public"):
        lines.append(f"| {name}: slowest single call (s) | {max(ours[name]['times']):.3f} | "
                     f"{max(mv[name]['times']):.3f} |")
    lines.append(f"| adversarial: calls over 1 s | {sum(t > 1 for t in ours['adversarial']['times'])} | "
                 f"{sum(t > 1 for t in mv['adversarial']['times'])} |")
    timed = [k for k in sets if k in ours]
    lines.append(f"| timeouts (ours: 2 s check limit; math-verify: killed at {HARD_LIMIT_S:.0f} s) | "
                 f"{sum(ours[k]['timeouts'] for k in timed)} | {sum(mv[k]['timeouts'] for k in timed)} |")
    return lines


def _per_source(results: dict[str, dict[str, dict[str, Any]]], sets: dict[str, list]) -> list[str]:
    lines = []
    for repo in sorted({row["source"].split("@")[0] for row in sets["public_rows"]}):
        keep = [i for i, row in enumerate(sets["public_rows"]) if row["source"].startswith(repo + "@")]
        pairs = [sets["public"][i] for i in keep]
        cells = [_agreement_cell([results[who]["public"]["verdicts"][i] for i in keep], pairs)
                 for who in ("ours", "math-verify")]
        lines.append(f"| &nbsp;&nbsp;of which {repo} | {cells[0]} | {cells[1]} |")
    return lines


def convention_table(rows: list[dict[str, Any]], verdicts: list[bool]) -> list[str]:
    """Every public row we disagree with, grouped by the convention that explains it."""
    explained = json.loads(CONVENTIONS.read_text())
    counts: dict[str, int] = {}
    for row, verdict in zip(rows, verdicts):
        if verdict != row["equal"]:
            key = row.get("convention", "UNEXPLAINED")
            counts[key] = counts.get(key, 0) + 1
    lines = ["| rows | our convention |", "| --- | --- |"]
    for key, count in sorted(counts.items(), key=lambda kv: -kv[1]):
        lines.append(f"| {count} | `{key}`: {explained.get(key, 'not explained: a bug to fix')} |")
    return lines


def write_docs(lines: list[str], conventions: list[str], sets: dict[str, list]) -> None:
    public = sets["public_rows"]
    section = "\n".join([
        "## Reward verification", "",
        "Our verifier (reward/) against math-verify 0.9.0 on the same inputs, one core, one process. "
        f"Inputs: {len(sets['math500'])} pairs built from the 500 MATH500 gold answers, each boxed as "
        "the response and checked against itself, rewritten equivalent forms and (for integers) a wrong "
        f"value; {len(sets['labelled'])} hand-labelled rows written by this team with the verifier's rules "
        f"(tests/data/reward_labelled.jsonl); {len(public)} input/expected pairs from public graders' test "
        "suites that this team did not write (tests/data/reward_public.jsonl: math-verify's tests, "
        "Qwen2.5-Math's grader pairs, lm-evaluation-harness's Minerva/MATH normalisation cases; each row "
        "names its repository, commit, file and test); "
        f"{len(sets['adversarial'])} adversarial/code-in-box inputs. On the public cases math-verify gets "
        "the sources' own strings with its tests' default settings, ours the same strings as a response "
        "(a bare answer boxed; reward.extract=boxed_or_phrase). math-verify runs in a child process guarded "
        f"per call (its 1 s signal timeouts, and a {HARD_LIMIT_S:.0f} s kill). Caches are cleared before "
        "each timed run. math-verify is a benchmark-only dependency (pip install math-verify==0.9.0). "
        "Throughput varies with machine load.", "",
        *lines, "",
        "Where we disagree with the public cases' labels, each row is annotated with the convention that "
        "explains it (`convention` in the data file; tests/test_reward_labelled.py fails if an "
        "unannotated row disagrees or an annotated one no longer does). Most of math-verify's cases test "
        "its own extraction from free text; our verifier is built for RL rewards, where an answer the "
        "model did not commit to must not pay:", "",
        *conventions, "", "Reproduce:", "", "```", COMMAND, "```", ""])
    replace_section(section, DOCS)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write-docs", action="store_true", help="update docs/benchmarks.md")
    args = parser.parse_args()
    try:
        import math_verify  # noqa: F401 - checked here so a missing install fails at once, not per call
    except ImportError:
        sys.exit("error: math-verify is not importable; install it as in the Reproduce block of "
                 "docs/benchmarks.md (Reward verification):\n" + COMMAND)
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})  # one core, children inherit
    rows, public = labelled_rows(), labelled_rows(PUBLIC)
    sets: dict[str, list] = {
        "math500": math500_pairs(), "labelled": [(r["response"], r["gold"], r["equal"]) for r in rows],
        "adversarial": adversarial_pairs(rows), "public": [(r["response"], r["gold_answer"], r["equal"]) for r in public]}
    runner = MathVerifyRunner()
    results = {"ours": {k: ours_run(v, "boxed_or_phrase" if k == "public" else "boxed") for k, v in sets.items()},
               "math-verify": {k: mv_run(runner, v) for k, v in sets.items() if k != "public"}}
    results["math-verify"]["public"] = mv_run(runner, [(r["prediction"], r["gold"], r["equal"]) for r in public],
                                              as_in_tests=True)
    runner.close()
    sets["public_rows"] = public
    lines = table(results, sets)
    conventions = convention_table(public, results["ours"]["public"]["verdicts"])
    print("\n".join(lines + [""] + conventions))
    for name in ("labelled", "public"):
        for i, (pair, v) in enumerate(zip(sets[name], results["ours"][name]["verdicts"])):
            if v != pair[2] and "convention" not in (public[i] if name == "public" else {}):
                print(f"ours disagrees on {name} row {i}: {pair[0][:80]!r} vs {pair[1][:40]!r} (label {pair[2]})")
        mv_v = results["math-verify"][name]["verdicts"]
        print(f"math-verify disagrees on {sum(v != p[2] for v, p in zip(mv_v, sets[name]))} {name} rows")
    if args.write_docs:
        write_docs(lines, conventions, sets)
        print(f"updated {DOCS.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
