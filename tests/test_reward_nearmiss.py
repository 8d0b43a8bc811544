"""The false-positive hunt: near-miss wrong answers (reward.nearmiss) against the gold answers of
MATH500 (data/math500_test.jsonl) and of the labelled set; the real grader (reward.equivalence,
reward.judge) must accept none of them. Pure Python, about a second."""
from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from reward import judge
from reward.equivalence import answers_equal
from reward.nearmiss import KINDS, equations_differ, near_misses, values_differ

ROOT = Path(__file__).resolve().parent.parent
GOLDS = list(dict.fromkeys(
    [json.loads(line)["answer"] for line in (ROOT / "data" / "math500_test.jsonl").read_text().splitlines() if line]
    + [json.loads(line)["gold"] for line in (ROOT / "tests" / "data" / "reward_labelled.jsonl").read_text().splitlines()
       if line]))
PAIRS = [triple for gold in GOLDS for triple in near_misses(gold)]


def test_the_hunt_is_large_and_covers_every_kind():
    counts = Counter(kind for kind, _, _ in PAIRS)
    print(f"near misses: {len(PAIRS)} from {len(GOLDS)} gold answers, by kind {dict(counts)}")
    assert len(PAIRS) >= 1000
    assert set(counts) == set(KINDS) and min(counts.values()) >= 10, counts


def test_the_grader_accepts_no_near_miss():
    accepted = [(kind, gold, wrong) for kind, gold, wrong in PAIRS if answers_equal(wrong, gold)]
    print(f"near misses rejected: {len(PAIRS) - len(accepted)}/{len(PAIRS)}")
    assert not accepted, accepted[:20]


def test_no_near_miss_pays_as_a_boxed_response():
    """The whole scoring path (extraction, time limit, shaping) on every pair."""
    paid = [(gold, wrong) for _, gold, wrong in PAIRS if judge(f"so $\\boxed{{{wrong}}}$", gold).reward > 0]
    assert not paid, paid[:20]


def test_the_golds_themselves_pay():
    """A grader that refused everything would pass the hunt: each gold must equal itself, boxed."""
    golds = {gold for _, gold, _ in PAIRS}
    refused = [gold for gold in golds if judge(f"so $\\boxed{{{gold}}}$", gold).reward != 1.0]
    assert not refused, refused[:20]


@pytest.mark.parametrize("a, b", [("2\\sqrt3", "\\sqrt{12}"), ("x+y", "y+x"), ("\\frac{2}{4}", "0.5"), ("1^2", "1^3"),
                                  ("(x+1)^2", "x^2+2x+1")])
def test_the_difference_check_never_calls_equal_values_different(a, b):
    assert not values_differ(a, b)


@pytest.mark.parametrize("a, b", [("x+y=1", "y+x=1"), ("y=2x+1", "2x-y+1=0"), ("2x=4", "x=2")])
def test_the_equation_check_never_calls_the_same_relation_different(a, b):
    assert not equations_differ(a, b)


def test_symmetric_golds_get_no_swap():
    assert not [wrong for kind, _, wrong in near_misses("x+y") if kind == "swap"]
    assert not [wrong for kind, _, wrong in near_misses("(2, 2)") if kind == "swap"]
    assert [wrong for kind, _, wrong in near_misses("x-y") if kind == "swap"] == ["y-x"]
