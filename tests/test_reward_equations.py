"""Equations as equations, labels, systems and base subscripts (issue 25), on the real grader
(reward.equivalence.answers_equal and reward.judge); no Ray, pure Python."""
from __future__ import annotations

import pytest

from reward.equations import label
from reward.equivalence import answers_equal
from tests.reward_helpers import assert_pays

EQUAL = [  # (predicted, gold)
    # the same relation, rearranged or scaled by a nonzero constant
    ("y = 2x + 1", "2x - y + 1 = 0"), ("x - y = 3", "-x + y = -3"), ("2x = 4", "x - 2 = 0"), ("2 = x", "x = 2"),
    ("x = \\frac42", "x = 2"), ("x = \\pm 2", "x = 2, -2"), ("x = 2, -2", "x = -2, 2"),
    ("x + y = 1", "y = 1 - x"), ("x - y = 3", "2x - 2y = 6"), ("y = -2x", "2x + y = 0"),
    # the same label and the same value (a chain counts when all its values agree)
    ("x = 5", "x=5"), ("f(x) = x^2", "f(x) = x \\cdot x"), ("x = \\frac{6}{8} = \\frac34", "x = 0.75"),
    ("x = \\{1, 2\\}", "x = \\{2, 1\\}"), ("S_{ABC} : S = 7 : 32", "S_{ABC}:S=7:32"), ("(x, y) = (1, 2)", "(x,y)=(1,2)"),
    # a gold equation with a label, against its value
    ("2x + 3", "y = 2x + 3"), ("5", "x = 5"), ("x^2", "f(x) = x^2"), ("\\frac{1}{\\sqrt6}", "\\frac{NO}{BO} = \\frac{1}{\\sqrt{6}}"),
    ("7:32", "S_{MBCN}:S=7:32"),
    # a predicted equation naming the gold's value
    ("x = 5", "5"), ("a + b = 5", "5"), ("(x, y) = (4, 7)", "(4, 7)"),
    # systems compare as sets of equations
    ("x + y = 3, x - y = 1", "x - y = 1, x + y = 3"), ("x + y = 3, x - y = 1", "2x + 2y = 6, y - x = -1"),
    ("\\begin{cases} x + y = 3 \\\\ x - y = 1 \\end{cases}", "x - y = 1, x + y = 3"),
    ("\\{x + y = 3, x - y = 1\\}", "x + y = 3, x - y = 1"),
    # base subscripts read in their base
    ("1010_2", "10"), ("1010_2", "1010_{2}"), ("12_8", "1010_2"), ("2516", "2516_8"), ("A3_{16}", "163"), ("FF_{16}", "255"),
    ("4210_5", "4210_{5}"),
    # gaps closed: groups of assignments, ranges of an absolute value, {, } thousands
    ("(5,2),(7,2)", "p=5,q=2;p=7,q=2"), ("(7,2),(5,2)", "p=5,q=2;p=7,q=2"),
    ("z \\in [-\\frac32, -1] \\cup [1, \\frac32]", "1 \\le |z| \\le \\frac32"), ("(-3, 3)", "|x| < 3"),
    ("(-\\infty, -2] \\cup [2, \\infty)", "|x| \\ge 2"), ("14 {, }916", "14916"),
]
NOT_EQUAL = [  # (predicted, gold): each a near miss of an EQUAL pair or of the counter-examples
    # the counter-examples: an expression on the left is not a label
    ("x + y = 1", "x - y = 1"), ("x - y = 3", "y - x = 3"), ("x + y = 1", "x + y = 2"), ("x + 2y = 1", "x + y = 1"),
    # labels must agree
    ("y = 2", "x = 2"), ("x = 2", "y = 2"), ("f(x) = x^2", "g(x) = x^2"), ("x_1 = 3", "x_2 = 3"),
    ("y = 2x + 1", "y = 2x - 1"), ("y = 2x + 1", "x = 2y + 1"), ("y = x^2", "y = x^3"),
    # a gold equation whose left side is an expression is not its right side
    ("1", "x + y = 1"), ("0", "5x - 7y + 11z + 4 = 0"), ("3", "x^2 = 3"),
    # chains and computations on the left
    ("x = 5+5+1 = 7 = 11", "x = 11"), ("x = 5+5+1 = 7 = 11", "11"), ("x + 1 = 5", "5"), ("x = 3", "x = 3 = 4"),
    # a trivial equation is not proportional to anything
    ("x = x", "y = 2x + 1"), ("0 = 0", "x = 0"),
    # systems: one equation changed, one dropped, a solution instead of the system
    ("x + y = 3, x - y = 2", "x + y = 3, x - y = 1"), ("x + y = 3", "x + y = 3, x - y = 1"),
    ("x = 2, y = 1", "x + y = 3, x - y = 1"),
    # base subscripts: the numeral's value, never its digits read in base ten
    ("1010_2", "1010"), ("10", "1010_2"), ("2517_8", "2516_8"), ("2516_7", "2516_8"), ("1010_3", "1010_2"),
    ("12_8", "12"), ("2516", "2517_8"), ("10", "A_{11}"), ("FF_{16}", "256"),
    # near misses of the closed gaps: a range of |z| is not the positive half alone
    ("(2,5),(2,7)", "p=5,q=2;p=7,q=2"), ("(5,2)", "p=5,q=2;p=7,q=2"), ("[1, \\frac32]", "1 \\le |z| \\le \\frac32"),
    ("[-3, 3]", "|x| < 3"), ("(-3, 3)", "|x| \\le 3"), ("[2, \\infty)", "|x| \\ge 2"),
]


RESTATED = [  # (predicted, gold): a gold solved for x wants x solved; the equation restated is not its solution
    ("2x = 4", "x = 2"), ("x - 5 = 0", "x = 5"), ("x^2 = 4", "x = \\pm 2"), ("x = 2", "x = \\pm 2"),
]


@pytest.mark.parametrize("pred, gold, equal",
                         [(*pair, True) for pair in EQUAL] + [(*pair, False) for pair in NOT_EQUAL + RESTATED])
def test_equations_labels_systems_bases_and_their_near_misses(pred, gold, equal):
    assert_pays(pred, gold, equal)


@pytest.mark.parametrize("pred, gold", [pair for pair in NOT_EQUAL if "=" in pair[0] and "=" in pair[1]])
def test_near_miss_equations_are_refused_both_ways(pred, gold):
    """Between two equations the rules are symmetric: swapping prediction and gold opens no hole."""
    assert not answers_equal(gold, pred)


@pytest.mark.parametrize("pred, gold", RESTATED[:2])
def test_a_solution_pays_against_a_gold_left_unsolved(pred, gold):
    """The other way round, x = 2 against a gold written 2x = 4, the prediction is the solution."""
    assert answers_equal(gold, pred)


@pytest.mark.parametrize("side, expected", [
    ("x", "x"), ("y'", "y'"), ("x_1", "x_1"), ("a_{10}", "a_{10}"), ("\\theta", "\\theta"), ("f(x)", "f(x)"),
    ("f^{-1}(3)", "f^{-1}(3)"), ("(x, y)", "(x,y)"), ("AB", "AB"), ("\\angle ABC", "\\angleABC"),
    ("S_{MBCN}:S", "S_{MBCN}:S"), ("\\frac{NO}{BO}", "\\frac{NO}{BO}"),
    ("x + y", None), ("x - y", None), ("2x", None), ("xy", None), ("x^2", None), ("\\frac{a+1}{b}", None), ("3", None),
])
def test_what_is_a_label(side, expected):
    assert label(side) == expected
