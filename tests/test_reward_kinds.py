"""The answer kinds of issue 16: false positives first (units, hidden characters, digits of other
scripts), then notations real models write, unboxed answer phrases, and one item's exception.
Everything here runs the real grader (reward.judge / reward.equivalence); no Ray."""
from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import pytest

from reward import judge
from reward.equivalence import answers_equal
from tests.reward_helpers import assert_pays, reward_worker

ROOT = Path(__file__).resolve().parent.parent

FALSE_POSITIVES = [  # (predicted answer, gold): never equal
    ("5\\text{ cm}", "5\\text{ m}"), ("5 \\text{ km}", "5\\text{ meters}"), ("3\\text{ cm}^2", "3\\text{ cm}"),
    ("60 \\text{ minutes}", "60 \\text{ hours}"), ("2 \\mbox{ feet}", "2 \\text{ inches}"), ("7 kg", "7 \\text{ g}"),
    ("1\u200b2", "12"), ("1\u200c2", "12"), ("1\u200d2", "12"), ("1\u2060000", "1000"), ("1\u00ad000", "1000"),
    ("3.1\u200b4", "3.14"), ("\\frac{1}{\u200b2}", "\\frac12"), ("1\u202e2", "12"),
    ("\u0663", "3"), ("\u0661\u0662", "12"), ("\u06f5", "5"), ("\u0967\u0966", "10"), ("\u0e53", "3"),
    ("x\u00b2", "2x"), ("x\u00b2", "x2"), ("2 3", "6"), ("2 3", "23"), ("5 2/3", "\\frac{10}{3}"),
]
EQUAL = [  # (predicted answer, gold): equal
    # units that agree, or a unit on one side only
    ("12 \\text{ meters}", "12\\text{ m}"), ("5 cm", "5"), ("5", "5 \\text{ cm}"), ("12 students", "12"),
    ("2 \\text{ square feet}", "2 \\text{ ft}^2"), ("6 \\text{ square units}", "6"),
    # invisible characters at the ends only; fullwidth and mathematical digits are ASCII digits
    ("12\u200b", "12"), ("\ufeff42", "42"), ("\uff11\uff12", "12"), ("\U0001d7d1", "3"),
    # {a \over b}, \degree
    ("{1 \\over 2}", "\\frac12"), ("{a+1 \\over b}", "\\frac{a+1}{b}"), ("3 \\over 4", "0.75"),
    ("\\frac{{1 \\over 2}}{3}", "\\frac16"), ("30\\degree", "30"), ("30^{\\degree}", "30^\\circ"), ("45\u00b0", "45"),
    # a ratio for a percent gold and back
    ("0.25", "25\\%"), ("\\frac14", "25\\%"), ("25\\%", "0.25"), ("25", "25\\%"), ("25\\%", "25"), ("100\\%", "1"),
    ("12.5\\%", "\\frac18"),
    # a singleton set and its element
    ("\\{5\\}", "5"), ("5", "\\{5\\}"), ("\\{\\frac12\\}", "0.5"),
    # named coordinates and a tuple
    ("x=4, y=7", "(4,7)"), ("y=7, x=4", "(4,7)"), ("(4,7)", "x=4, y=7"), ("x = 4, y = 7", "y=7, x=4"),
    ("(x, y) = (4, 7)", "(4, 7)"), ("a = 1, b = 2", "2, 1"),
    # \left(\begin{array}...\right) and pmatrix
    ("\\left(\\begin{array}{cc}1 & 2 \\\\ 3 & 4\\end{array}\\right)", "\\begin{pmatrix}1&2\\\\3&4\\end{pmatrix}"),
    ("\\left[\\begin{array}{c}1 \\\\ -2\\end{array}\\right]", "\\begin{pmatrix}1\\\\-2\\end{pmatrix}"),
    # the same line rearranged; a named left-hand side
    ("2x - y + 1 = 0", "y=2x+1"), ("y - 2x = 1", "y = 2x + 1"), ("4x - 2y = -2", "y=2x+1"),
    ("a+b=5", "5"), ("f(3) = 10", "10"), ("x_1 = 4", "4"), ("\\frac{a}{b} = -\\frac{2}{3}", "-\\frac23"),
    ("x = \\frac{6}{8} = \\frac{3}{4}", "\\frac34"), ("y = 2x+1", "2x+1"),
    # thousands separated by spaces or thin spaces; plain-text mixed numbers
    ("1 000 000", "1000000"), ("1\u2009000", "1000"), ("1\u202f000", "1000"), ("1\u00a0000", "1000"),
    ("1\\ 000", "1000"), ("12 345.5", "12345.5"),
    ("5 2/3", "\\frac{17}{3}"), ("-1 1/2", "-1.5"), ("2\u00bd", "2.5"), ("\u00be", "0.75"),
    # Unicode math symbols
    ("\u03c0/2", "\\frac{\\pi}{2}"), ("2\u03c0", "2\\pi"), ("3\u00d74", "12"), ("6\u00f74", "1.5"), ("\u22125", "-5"),
    ("\u221a2", "\\sqrt{2}"), ("2\u221a3", "\\sqrt{12}"), ("\u221a12", "2\\sqrt3"), ("\u221a(x+1)", "\\sqrt{x+1}"),
    ("\u221b8", "2"), ("x \u2264 3", "x \\le 3"), ("\u221e", "\\infty"), ("x\u00b2 + 1", "x^2+1"), ("10\u207b\u00b3", "0.001"),
    ("3 \u00b1 \u221a2", "3+\\sqrt2, 3-\\sqrt2"),
    # the same inequality rearranged; a relation on one quantity and its interval; TeX shorthand
    ("-x > -1", "x < 1"), ("2x \\le 4", "x \\le 2"), ("-793 < a < 10", "(-793, 10)"), ("x \\ge 3", "[3, \\infty)"),
    ("(-2, 7]", "-2 < x \\le 7"), ("\\fracab", "\\frac{a}{b}"), ("\\sqrtab", "\\sqrt{a}b"),
]
NOT_EQUAL = [  # notations read correctly, but different values
    ("x=7, y=4", "(4,7)"), ("2x - y - 1 = 0", "y=2x+1"), ("x+1=5", "5"), ("x = 5+5+1 = 7 = 11", "11"),
    ("0.25", "25"), ("0.3", "25\\%"), ("\\{5, 6\\}", "5"), ("{1 \\over 3}", "\\frac12"), ("25\\%", "0.025"),
    ("\\left(\\begin{array}{cc}1 & 2 \\\\ 3 & 5\\end{array}\\right)", "\\begin{pmatrix}1&2\\\\3&4\\end{pmatrix}"),
    ("7 = 11a+c", "11a+c"), ("x^2 = 4", "4"),
    ("x > -1", "x < 1"), ("-2x < 4", "x < -2"), ("1 < 2", "3 < 5"), ("x > 3", "[3, \\infty)"), ("1 < x < 2", "(1, 3)"),
]


@pytest.mark.parametrize("pred, gold", FALSE_POSITIVES)
def test_false_positives_are_refused(pred, gold):
    assert_pays(pred, gold, False)


@pytest.mark.parametrize("pred, gold", EQUAL)
def test_notations_models_write_are_accepted(pred, gold):
    assert_pays(pred, gold, True)


@pytest.mark.parametrize("pred, gold", NOT_EQUAL)
def test_different_values_in_those_notations_are_refused(pred, gold):
    assert not answers_equal(pred, gold)


PHRASES = [  # (response, gold, correct under boxed_or_phrase)
    ("Final Answer: The final answer is $15$. I hope it is correct.", "15", True),
    ("The final answer is $15$. I hope it is correct.", "16", False),
    ("So we get 8.\nAnswer: 8", "8", True),
    ("**Final Answer**\n100", "100", True),
    ("**Final Answer**\n\n$\\frac{1}{2}$", "0.5", True),
    ("Thus the answer is \\(42\\).", "42", True),
    ("Final Answer: The largest $n$ is 34.", "34", True),
    ("The answer is 5. Wait, that is wrong. The answer is 6.", "6", True),  # the last phrase wins
    ("The answer is 5. Wait, that is wrong. The answer is 6.", "5", False),
    ("The answer is 5, as \\boxed{6} shows.", "6", True),  # a box wins over a phrase
    ("The answer is 5, as \\boxed{6} shows.", "5", False),
    ("The answer is 7, so \\boxed{7", "7", False),  # a truncated box is never rescued
    ("Answer: __import__('os').system('x')", "0", False),
    ("The answer is $x = 3$.", "3", True),
    ("So $10,000 \\cdot 0.05 = \\boxed{500}$ of interest. Final Answer: The final answer is $10,500$. I hope it is "
     "correct.", "10500", True),  # a phrase after the last box wins
]


@pytest.mark.parametrize("response, gold, correct", PHRASES)
def test_answer_phrases_count_only_in_boxed_or_phrase(response, gold, correct):
    verdict = judge(response, gold, extract="boxed_or_phrase")
    assert verdict.correct == correct
    if "\\boxed" not in response:
        assert not judge(response, gold).correct  # training's default: no box, no reward
        assert not verdict.boxed


def test_an_exception_in_the_grader_scores_the_item_as_wrong_and_names_it(monkeypatch):
    import reward.scoring as scoring

    def broken(pred, gold):
        raise KeyError("bug")

    monkeypatch.setattr(scoring, "answers_equal", broken)
    verdict = scoring.judge("\\boxed{1}", "1", shaping="simplerl")
    assert verdict.error == "grader: KeyError: 'bug'" and not verdict.correct
    assert verdict.reward == -0.5  # no better than a wrong boxed answer


def test_custom_fn_errors_and_overruns_are_per_item():
    """The real RewardWorker in this process (the main thread, so its SIGALRM limit is live)."""
    worker = reward_worker("reward.timeout_s=0.2", "reward.custom_fn=tests.rewards_fixture:raise_on_marker")
    verdicts = worker.score([("xx", "1"), ("yy", "bad"), ("zz", "zero"), ("ww", "slow"), ("vvvv", "2")])
    assert [v.reward for v in verdicts] == [1.0, 0.0, 0.0, 0.0, 1.0]
    assert verdicts[1].error == ("reward.custom_fn tests.rewards_fixture:raise_on_marker: "
                                 "ValueError: cannot score 'yy'")
    assert verdicts[2].error is not None and "ZeroDivisionError" in verdicts[2].error
    assert verdicts[3].timed_out and verdicts[3].error is None


def test_custom_fn_that_returns_no_number_is_an_error(monkeypatch):
    worker = reward_worker("reward.custom_fn=tests.rewards_fixture:even_length")
    monkeypatch.setattr(worker, "custom", lambda response, answer: math.nan)
    assert worker.score([("x", "1")])[0].error == "reward.custom_fn tests.rewards_fixture:even_length: ValueError: returned nan"
    monkeypatch.setattr(worker, "custom", lambda response, answer: "high")
    assert "ValueError" in worker.score([("x", "1")])[0].error


def test_scoring_imports_no_sympy():
    """A fresh interpreter imports the reward actor's module and scores every answer shape."""
    code = (
        "import sys\n"
        "from tests.reward_helpers import reward_worker\n"
        "pairs = [('\\\\boxed{2\\\\sqrt{3}}', '\\\\sqrt{12}'), ('\\\\boxed{x^2+2x+1}', '(x+1)^2'), ('\\\\boxed{(1,2]}', '(1,2]'),\n"
        "         ('\\\\boxed{y=2x+1}', '2x-y+1=0'), ('\\\\boxed{\\\\begin{pmatrix}1\\\\\\\\2\\\\end{pmatrix}}', '(1,2)'),\n"
        "         ('The final answer is $\\\\sin(\\\\pi/6)$.', '0.5'), ('\\\\boxed{x \\\\ge 3}', 'x>=3')]\n"
        "verdicts = reward_worker('reward.extract=boxed_or_phrase').score(pairs)\n"
        "assert all(v.correct for v in verdicts), verdicts\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] == 'sympy'))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_reward_extract_is_a_checked_config_field():
    from cluster.config import ConfigError, load_config

    assert load_config(None, []).reward.extract == "boxed"  # training's default
    assert load_config(None, ["reward.extract=boxed_or_phrase"]).reward.extract == "boxed_or_phrase"
    with pytest.raises(ConfigError, match="reward.extract"):
        load_config(None, ["reward.extract=phrase"])


@pytest.mark.parametrize("response, gold, correct", [
    ('The final answer is \\"$12 $ and $13 $\\". I hope it is correct.', "12\\text{ and }13", True),
    ('The final answer is "$12$".', "12", True), ("The final answer is \u201c7\u201d.", "7", True),
    ('The final answer is "$12 $ and $14 $".', "12\\text{ and }13", False),
])
def test_a_quoted_final_answer_is_read_whole(response, gold, correct):
    assert judge(response, gold, extract="boxed_or_phrase").correct == correct
