"""Reward verification benchmark: ours vs math-verify on one core, side by side (reward.bench).

    PYTHONPATH=<math-verify install> python benchmarks/reward.py [--write-docs]

Inputs (the same for both verifiers, scored by reward.bench.evaluate):
  - MATH500 gold answers (data/math500_test.jsonl) as boxed responses, checked against rewritten
    equivalent forms (cosmetic LaTeX changes, a/b for \\frac{a}{b}, decimals, thousands separators)
    and, for integer answers, against a wrong value: the throughput measure;
  - the adversarial and code-in-box rows of tests/data/reward_labelled.jsonl plus extra hostile
    payloads, each timed per call;
  - the whole labelled set, and the public graders' cases (tests/data/reward_public.jsonl), scored
    as reward.bench scores them;
  - the near misses (reward.nearmiss) of the MATH500 and labelled gold answers, and (ours only)
    of the training set's answers.
math-verify is a benchmark-only dependency (pip install -e .[bench], or a --target install put on
PYTHONPATH so that it stays out of the product's environment). --write-docs writes the result
document to docs/reward/bench.json and the tables of docs/benchmarks.md from it.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.doc_sections import replace_section  # noqa: E402
from reward.bench import HARD_LIMIT_S, evaluate, load_rows, math_verify_available, near_miss_rows, report, table  # noqa: E402

MATH500 = ROOT / "data" / "math500_test.jsonl"
LABELLED = ROOT / "tests" / "data" / "reward_labelled.jsonl"
PUBLIC = ROOT / "tests" / "data" / "reward_public.jsonl"
CONVENTIONS = ROOT / "tests" / "data" / "reward_public_conventions.json"
DOCS = ROOT / "docs" / "benchmarks.md"
RESULT = ROOT / "docs" / "reward" / "bench.json"
TRAIN = ROOT / "data" / "math_level3to5_train.jsonl"
TRAIN_RESULT = ROOT / "docs" / "reward" / "nearmiss_train.json"
COMMAND = ("pip install --target /tmp/reasonrl-mv --no-deps math-verify==0.9.0 latex2sympy2_extended==1.11.0 "
           "antlr4-python3-runtime==4.13.2   # once, outside the product's environment\n"
           "PYTHONPATH=/tmp/reasonrl-mv .venv/bin/python benchmarks/reward.py --write-docs\n"
           "PYTHONPATH=/tmp/reasonrl-mv .venv/bin/python -m reward.bench tests/data/reward_public.jsonl   # any labelled file")
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


def math500_rows() -> list[dict[str, Any]]:
    return [{"response": f"Thus the answer is $\\boxed{{{gold}}}$.", "gold": form, "equal": equal, "file": "MATH500 rewrites"}
            for gold in (row["answer"] for row in load_rows(str(MATH500))) for form, equal in rewrites(gold)]


def adversarial_rows(labelled: list[dict[str, Any]]) -> list[dict[str, Any]]:
    rows = [{"response": r["response"], "gold": r["gold"], "equal": r["equal"], "file": "adversarial"}
            for r in labelled if r["category"] in ("adversarial", "code_in_box")]
    return rows + [{"response": f"\\boxed{{{p}}}", "gold": "5", "equal": False, "file": "adversarial",
                    "category": "extra hostile"} for p in EXTRA_HOSTILE]


def speed_table(result: dict[str, Any]) -> list[str]:
    graders = result["graders"]
    lines = ["| input | calls | " + " | ".join(f"{g}: verifications/s | slowest call (s) | calls over 1 s" for g in graders) + " |",
             "| --- | --- |" + " --- | --- | --- |" * len(graders)]
    for name, by_grader in result["speed_by_file"].items():
        cells = [f"{by_grader[g]['verifications_per_s']:,.0f} | {by_grader[g]['slowest_s']:.3f} | {by_grader[g]['calls_over_1s']}"
                 for g in graders]
        lines.append(f"| {name} | {by_grader[graders[0]]['calls']} | " + " | ".join(cells) + " |")
    timeouts = " | ".join(f"{result['speed'][g]['timeouts']} | | " for g in graders)
    lines.append(f"| timeouts (ours: 2 s check limit; math-verify: killed at {HARD_LIMIT_S:.0f} s) | | {timeouts}|")
    return lines


def convention_table(rows: list[dict[str, Any]]) -> list[str]:
    """The annotated conventions of the public rows (each such row is one we knowingly disagree with)."""
    explained = json.loads(CONVENTIONS.read_text())
    counts: dict[str, int] = {}
    for row in rows:
        if "convention" in row:
            counts[row["convention"]] = counts.get(row["convention"], 0) + 1
    lines = ["| rows | our convention |", "| --- | --- |"]
    lines += [f"| {n} | `{key}`: {explained[key]} |" for key, n in sorted(counts.items(), key=lambda kv: -kv[1])]
    return lines


def _public_summary(result: dict[str, Any]) -> str:
    """One sentence on the public cases outside the annotated conventions, from the result document."""
    outside = result["groups"]["public, outside the annotated conventions"]
    ours, mv = outside["ours"], outside.get("math-verify")
    sentence = (f"On the public cases outside the annotated conventions ({ours['rows']} rows), ours has recall "
                f"{ours['recall']:.1%} and {ours['fp']} false positives")
    if mv is not None:
        sentence += f"; math-verify {mv['recall']:.1%} and {mv['fp']}"
    if ours["fp"] == 0:
        sentence += ". Every public case that ours pays against its label is annotated with a convention below"
    return sentence + "."


def section(result: dict[str, Any], public: list[dict[str, Any]], train: dict[str, Any]) -> str:
    """The "Reward verification" section of docs/benchmarks.md, from the result documents alone."""
    return "\n".join([
        "## Reward verification", "",
        "Our verifier (reward/) against math-verify 0.9.0 on the same inputs, one core, one process, scored by "
        "`python -m reward.bench` (reward/bench.py); every figure below comes from docs/reward/bench.json. Inputs: "
        "MATH500 rewrites (each of the 500 gold answers boxed as the response and checked against itself, "
        "rewritten equivalent forms and, for integers, a wrong value); the hand-labelled rows written by this "
        "team (tests/data/reward_labelled.jsonl); the input/expected pairs of public graders' test suites that "
        "this team did not write (tests/data/reward_public.jsonl, each row naming its repository, commit, file "
        "and test); adversarial inputs; and the near misses of the MATH500 and labelled gold answers "
        "(reward.nearmiss: certainly-wrong answers one sign, digit, exponent, factor, variable, list item, "
        "interval end or unit away from the gold). On the public cases math-verify gets the sources' own strings "
        "with its tests' default settings, ours the same strings as a response (a bare answer boxed; "
        "reward.extract=boxed_or_phrase). math-verify runs in a child process guarded per call (its 1 s signal "
        f"timeouts, and a {HARD_LIMIT_S:.0f} s kill). Caches are cleared before each run. Precision and recall "
        "treat 'equal' as the positive class; a false positive is a wrong answer that would be paid, a reward "
        "hack. Throughput varies with machine load.", "",
        *table(result), "", _public_summary(result), "", *speed_table(result), "",
        f"The same hunt on the answers of the training set (data/math_level3to5_train.jsonl), our grader only "
        f"(docs/reward/nearmiss_train.json): {train['groups']['all']['ours']['rows']:,} near misses, "
        f"{train['groups']['all']['ours']['fp']} accepted.", "",
        "Where we disagree with the public cases' labels, each row is annotated with the convention that "
        "explains it (`convention` in the data file; tests/test_reward_labelled.py fails if an unannotated row "
        "disagrees or an annotated one no longer does). Each is a choice made for RL rewards, where an answer "
        "the policy did not commit to, or a form that a policy could learn to exploit, must not pay:", "",
        *convention_table(public), "", "Reproduce:", "", "```", COMMAND, "```", ""])


def committed() -> tuple[dict[str, Any], list[dict[str, Any]], dict[str, Any]]:
    """The committed result documents (and the public rows whose conventions the section counts)."""
    return json.loads(RESULT.read_text()), load_rows(str(PUBLIC)), json.loads(TRAIN_RESULT.read_text())


def write_docs(result: dict[str, Any], public: list[dict[str, Any]], train: dict[str, Any]) -> None:
    replace_section(section(result, public, train), DOCS)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write-docs", action="store_true", help="write docs/reward/bench.json and docs/benchmarks.md")
    parser.add_argument("--docs-from-json", action="store_true",
                        help="rewrite docs/benchmarks.md from the committed result files, without measuring")
    args = parser.parse_args()
    if args.docs_from_json:
        write_docs(*committed())
        return
    if not math_verify_available():
        sys.exit("error: math-verify is not importable; install it as in the Reproduce block of "
                 "docs/benchmarks.md (Reward verification):\n" + COMMAND)
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})  # one core, children inherit
    labelled, public = load_rows(str(LABELLED)), load_rows(str(PUBLIC))
    rows = (math500_rows() + labelled + public + adversarial_rows(labelled)
            + near_miss_rows(str(MATH500)) + near_miss_rows(str(LABELLED)))
    result = evaluate(rows, with_math_verify=True)
    train = evaluate(near_miss_rows(str(TRAIN)), with_math_verify=False)
    print("\n".join(report(result) + [""] + speed_table(result)))
    print(f"near misses of the training set: {train['groups']['all']['ours']['rows']}, "
          f"accepted by ours: {train['groups']['all']['ours']['fp']}")
    if args.write_docs:
        RESULT.parent.mkdir(parents=True, exist_ok=True)
        RESULT.write_text(json.dumps(result, indent=1) + "\n")
        TRAIN_RESULT.write_text(json.dumps(train, indent=1) + "\n")
        write_docs(result, public, train)
        print(f"updated {DOCS.relative_to(ROOT)} and {RESULT.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
