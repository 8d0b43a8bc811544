"""python -m reward.bench on small labelled files, with our grader only (math-verify is a
benchmark-only dependency and is not installed for tests); the real grader, in this process."""
from __future__ import annotations

import json
from pathlib import Path

from reward.bench import counts, evaluate, groups, main, near_miss_rows


def _write(path: Path, rows: list[dict]) -> str:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return str(path)


ROWS = [
    {"response": "\\boxed{x+y=1}", "gold": "x-y=1", "equal": False, "category": "equation"},  # the hack
    {"response": "\\boxed{y=2x+1}", "gold": "2x-y+1=0", "equal": True, "category": "equation"},
    {"response": "\\boxed{1010_2}", "gold": "1010", "equal": False, "category": "base"},
    {"response": "\\boxed{5}", "gold": "5", "equal": True, "category": "base"},
    {"response": "\\boxed{(1,2)}", "gold": "(2,1)", "equal": True, "category": "tuple"},  # mislabelled on purpose: one false negative
]


def test_counts_are_a_confusion_matrix():
    c = counts([True, True, False, False, True], [True, False, True, False, True])
    assert (c["tp"], c["fn"], c["fp"], c["tn"]) == (2, 1, 1, 1)
    assert c["precision"] == round(2 / 3, 4) and c["recall"] == round(2 / 3, 4) and c["false_positive_rate"] == 0.5


def test_evaluate_scores_rows_with_the_real_grader(tmp_path):
    rows = [dict(row, file="f.jsonl") for row in ROWS]
    result = evaluate(rows, with_math_verify=False)
    everything = result["groups"]["all"]["ours"]
    assert (everything["tp"], everything["fp"], everything["fn"], everything["tn"]) == (2, 0, 1, 2)
    assert result["groups"]["category tuple"]["ours"]["recall"] == 0.0
    assert result["graders"] == ["ours"] and result["speed"]["ours"]["calls"] == 5


def test_public_rows_are_scored_as_the_public_test_scores_them():
    """A public row (prediction + gold_answer) is judged on response/gold_answer with boxed_or_phrase."""
    row = {"source": "x/y@1 t.py::t", "gold": "$7$", "prediction": "The final answer is $7$.", "gold_answer": "7",
           "response": "The final answer is $7$.", "equal": True, "file": "p.jsonl"}
    result = evaluate([row, dict(row, convention="unanchored", equal=False)], with_math_verify=False)
    assert result["groups"]["all"]["ours"]["tp"] == 1
    assert set(groups([dict(row)])) == {"all", "file p.jsonl", "source x/y", "public, outside the annotated conventions"}


def test_near_miss_rows_are_all_unequal(tmp_path):
    path = _write(tmp_path / "golds.jsonl", [{"answer": "y = 2x + 3"}, {"answer": "(1, 3]"}, {"answer": "3, 5, 7"}])
    rows = near_miss_rows(path)
    assert len(rows) >= 10 and not any(row["equal"] for row in rows)
    assert {row["category"] for row in rows} >= {"near-miss interval", "near-miss subset", "near-miss sign"}


def test_cli_prints_the_table_and_writes_json(tmp_path, capsys):
    data = _write(tmp_path / "rows.jsonl", ROWS)
    out = tmp_path / "result.json"
    assert main([data, "--no-math-verify", "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "| all | 4/5 (80.0%) | 100.0% | 66.7% | **0** (0.0%) |" in printed
    assert "verifications/s" in printed
    assert json.loads(out.read_text())["groups"]["file rows.jsonl"]["ours"]["rows"] == 5
