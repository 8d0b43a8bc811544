"""The reward on common cases, and its safety on hostile input."""
import time

import pytest

from reward import score
from reward.extract import last_boxed
from reward.numeric import exact
from reward.parse import ParseError, parse

B = "\\boxed"

CASES = [
    # (response, gold, expected)
    (f"so {B}{{85}}.", "85", 1.0),
    (f"{B}{{84}}", "85", 0.0),
    ("The answer is 85.", "85", 0.0),  # no box: no reward in training
    (f"{B}{{85", "85", 0.0),  # truncated box
    (f"{B}{{5}} then {B}{{6}}", "6", 1.0),  # the last box counts
    (f"{B}{{5}} then {B}{{6}}", "5", 0.0),
    (f"\\fbox{{12}}", "12", 1.0),
    (f"{B}{{\\frac{{1}}{{2}}}}", "0.5", 1.0),
    (f"{B}{{\\dfrac12}}", "\\frac{1}{2}", 1.0),
    (f"{B}{{0.333}}", "\\frac{1}{3}", 0.0),  # exact rationals, no rounding
    (f"{B}{{2\\sqrt{{3}}}}", "\\sqrt{12}", 1.0),
    (f"{B}{{\\pi/2}}", "\\frac{\\pi}{2}", 1.0),
    (f"{B}{{x=3}}", "3", 1.0),
    (f"{B}{{1,000}}", "1000", 1.0),
    (f"{B}{{1{{,}}000}}", "1000", 1.0),
    (f"{B}{{(1,2)}}", "(1, 2)", 1.0),
    (f"{B}{{(2,1)}}", "(1, 2)", 0.0),  # tuples are ordered
    (f"{B}{{[1,2)}}", "(1,2)", 0.0),  # interval brackets must match
    (f"{B}{{3, 1}}", "1,3", 1.0),  # lists of solutions are unordered
    (f"{B}{{x^2+2x+1}}", "(x+1)^2", 1.0),
    (f"{B}{{x^2+1}}", "(x+1)^2", 0.0),
    (f"{B}{{\\text{{(C)}}}}", "C", 1.0),
    (f"{B}{{10\\%}}", "10", 1.0),
    (f"{B}{{30^\\circ}}", "30", 1.0),
    (f"{B}{{5\\text{{ cm}}}}", "5", 1.0),
    (f"{B}{{-7}}", "-7", 1.0),
    (f"{B}{{7}}", "-7", 0.0),
]


@pytest.mark.parametrize("response, gold, expected", CASES)
def test_common_cases(response, gold, expected):
    assert score(response, gold) == expected


def test_last_boxed_matches_braces():
    assert last_boxed("a \\boxed{\\frac{1}{2}} b") == "\\frac{1}{2}"
    assert last_boxed("no box here") is None
    assert last_boxed("\\boxed{1} and \\boxed{2") is None  # the last box is open


HOSTILE = [
    "__import__('os').system('echo pwned')",
    "9^9^9", "9**9**9", "10^{10^{10}}", "(((((((((((((((((((((((((((((((((1)))))))))))))))))))))))))))))))))",
    "1000000!", "x" * 100_000, "\x00\x01\x02" * 1000, "\\input{/etc/passwd}", "eval(1)", "lambda: 1",
    "1" * 5000, "\u0430\u0440\u0440le",  # Cyrillic confusables
]


@pytest.mark.parametrize("payload", HOSTILE)
def test_hostile_answers_score_zero_quickly(payload):
    start = time.perf_counter()
    assert score(f"\\boxed{{{payload}}}", "5") == 0.0
    assert time.perf_counter() - start < 5.0  # a hang would be caught here, not a speed target


def test_megabyte_response_without_box():
    assert score("7 " * 500_000, "7") == 0.0


def test_parser_refuses_code_and_huge_powers():
    for text in ("__import__('os')", "9^9^9", "a.b", "1;2"):
        with pytest.raises(ParseError):
            parse(text)
    assert exact(parse("2^{10}"), {}) == 1024


def test_shaping_styles():
    from reward import judge, shaped_reward
    assert judge("\\boxed{5}", "5", shaping="simplerl").reward == 1.0
    assert judge("\\boxed{4}", "5", shaping="simplerl").reward == -0.5
    assert judge("no box", "5", shaping="simplerl").reward == -1.0
    assert judge("\\boxed{5", "5", shaping="simplerl").reward == -1.0  # truncated box
    assert judge("\\boxed{4}", "5").reward == 0.0
    with pytest.raises(ValueError):
        shaped_reward(judge("\\boxed{5}", "5"), "bogus")


def test_phrases_are_off_by_default_and_never_rescue_a_truncated_box():
    from reward import judge
    assert not judge("The answer is 85.", "85").correct
    assert judge("The answer is 85.", "85", extract="boxed_or_phrase").correct
    assert not judge("The answer is \\boxed{85", "85", extract="boxed_or_phrase").correct
    with pytest.raises(ValueError):
        judge("\\boxed{1}", "1", extract="phrase")


def test_a_timeout_scores_zero_and_is_counted(monkeypatch):
    import reward.scoring as scoring

    def slow(pred, gold):
        while True:
            pass

    monkeypatch.setattr(scoring, "answers_equal", slow)
    before = scoring.TIMEOUTS["count"]
    verdict = scoring.judge("\\boxed{1}", "1", timeout_s=0.05)
    assert verdict.timed_out and verdict.reward == 0.0 and scoring.TIMEOUTS["count"] == before + 1


def test_grade_cli(tmp_path, capsys):
    from reward.grade import main
    path = tmp_path / "rows.jsonl"
    path.write_text('{"response": "\\\\boxed{5}", "answer": "5"}\n{"response": "x", "answer": "5"}\n')
    assert main([str(path), "--rows"]) == 0
    out = capsys.readouterr().out
    assert "1\t1\tboxed" in out and "rows=2 correct=1" in out
    path.write_text('{"response": 1}\nnot json\n')
    assert main([str(path)]) == 2
    assert "line 1" in capsys.readouterr().err


def test_worker_applies_shaping():
    from tests.reward_helpers import reward_worker
    verdicts = reward_worker("reward.shaping=simplerl").score([("\\boxed{4}", "5"), ("none", "5")])
    assert [v.reward for v in verdicts] == [-0.5, -1.0]
