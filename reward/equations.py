"""Equations compared as equations, and the labels that name an answer.

Two equations are equal when they describe the same relation, never because one side happens to
match: x + y = 1 is not x - y = 1, and y = 2 is not x = 2.

- Both answers equations (or chains a = b = c):
  0. a gold solved for one variable (x = 2, x = \\pm 3, x = 6/8 = 3/4: a variable on one side, numbers
     on the other) needs a prediction solved for the same variable with the same values: 2x = 4 is the
     problem restated, not its solution, and must not pay (2 = x and x = 4/2 do);
  1. (left - right) of one is a nonzero constant multiple of the other's (y = 2x + 1 is
     2x - y + 1 = 0, x - y = 3 is 2y - 2x = -6); needs both to be single equations whose sides all
     parse and hold a variable;
  2. else both left sides are labels (see `label`) and the labels are the same (y = 2 against
     x = 2 is a mismatch of labels), and every value side of one equals every value side of the
     other (x = 6/8 = 3/4 equals x = 3/4; x = \\{1, 2\\} equals x = \\{2, 1\\});
  3. else the sides are equal one to one, in order.
- A predicted equation against a gold value: a left side that names a quantity (`is_name`: letters
  and no digits outside subscripts and arguments, e.g. x, a+b, f(3)) is dropped and every remaining
  side must equal the gold (a+b = 5 equals 5, x = 5+5+1 = 7 = 11 does not equal 11, x+1 = 5 does
  not equal 5). The value is what is paid for, so writing "x - y = 5" earns what writing 5 earns.
- A gold equation against a predicted value: the gold's left side is dropped only when it is a
  label (y = 2x + 3 accepts 2x + 3), never when it is an expression: a gold of x + y = 1 (a line)
  is not the answer 1.
A list of equations (a system) is compared as a multiset of equations by reward.equivalence.
"""
from __future__ import annotations

import re
from typing import Callable

from reward.normalize import normalize
from reward.numeric import proportional, symbols
from reward.parse import parse_ast

_RELATION = re.compile(r"<=|>=|!=|<|>")
_SUBSCRIPT = re.compile(r"_\{[^{}]*\}|_\w")
_CALL = re.compile(r"(?<=[a-zA-Z])\([^()]*\)")
_OPEN, _CLOSE = "([{", ")]}"
_GREEK = (r"\\(?:alpha|beta|gamma|delta|epsilon|varepsilon|zeta|eta|theta|vartheta|iota|kappa|lambda|mu|nu|xi|"
          r"rho|sigma|tau|phi|varphi|chi|psi|omega|Gamma|Delta|Theta|Lambda|Xi|Sigma|Phi|Psi|Omega)(?![a-zA-Z])")
_SYMBOL = r"(?:[a-zA-Z]|" + _GREEK + r")(?:_\{[\w,]+\}|_\w)?'*"
_ATOM = "|".join([
    _SYMBOL,  # x, y, x_1, a_{10}, S_{ABC}, \theta, y'
    _SYMBOL + r"(?:\^\{?-1\}?)?\([^()=]*\)",  # f(x), f(3), f^{-1}(x), P(x, y)
    r"\(\s*" + _SYMBOL + r"(?:\s*,\s*" + _SYMBOL + r")+\s*\)",  # (x, y), (a,b,c)
    r"[A-Z]{2,3}|\|[A-Z]{2}\||\\overline\{[A-Z]{2}\}|(?:m\s*)?\\angle\s*[A-Z]{1,3}",  # AB, |AB|, \angle ABC
])
_ATOM = _ATOM + r"|\\frac\{(?:" + _ATOM + r")\}\{(?:" + _ATOM + r")\}"  # \frac{NO}{BO}
_LABEL = re.compile(r"(?:" + _ATOM + r")(?:\s*:\s*(?:" + _ATOM + r"))*")  # and ratios of them, AB:BC
_SPACE = re.compile(r"\s+")
_VARIABLE = re.compile(r"\s*" + _SYMBOL + r"\s*")


def split_top_level(s: str, sep: str = ",") -> list[str]:
    """Split on `sep` outside all brackets."""
    parts, depth, start, i = [], 0, 0, 0
    while i < len(s):
        ch = s[i]
        if ch in _OPEN:
            depth += 1
        elif ch in _CLOSE:
            depth -= 1
        elif depth == 0 and s.startswith(sep, i):
            parts.append(s[start:i])
            start = i + len(sep)
            i = start
            continue
        i += 1
    parts.append(s[start:])
    return [p.strip() for p in parts]


def is_name(side: str) -> bool:
    """A left-hand side that names the answer rather than computes it: letters, but no digits
    outside subscripts and function arguments (x, a+b, x_1, f(3), \\frac{a}{b}, (x, y), |AB|)."""
    core = _CALL.sub("", _SUBSCRIPT.sub("", side))
    return bool(re.search(r"[a-zA-Z]", core)) and not re.search(r"\d", core)


def label(side: str) -> str | None:
    """The side, spaces removed, when it is a label naming the asked quantity (a variable, a
    function value, a tuple of variables, a segment or angle, a ratio of those), else None (x + y, 2x, \\frac{a}{b})."""
    side = side.strip()
    if _LABEL.fullmatch(side):
        return _SPACE.sub("", side)
    return None


def equation_sides(s: str) -> list[str] | None:
    """The sides of one equation or chain (a top-level "="), or None: not an equation, an
    inequality, or a list of equations (x = 1, y = 2 and systems are lists)."""
    if "=" not in s or _RELATION.search(s) or "==" in s:
        return None
    items = split_top_level(s)
    if len(items) > 1 and all("=" in item for item in items):
        return None
    sides = split_top_level(s, "=")
    return sides if len(sides) > 1 and all(sides) else None


def _proportional(ps: list[str], gs: list[str]) -> bool:
    if len(ps) != 2 or len(gs) != 2:
        return False
    asts = [parse_ast(side) for side in ps + gs]
    if any(a is None for a in asts):
        return False
    lp, rp, lg, rg = asts
    return proportional(("add", lp, ("neg", rp)), ("add", lg, ("neg", rg)))


def _all_equal(xs: list[str], ys: list[str], same: Callable[[str, str], bool]) -> bool:
    """Every side of xs equals every side of ys (a chain counts only when all its values agree)."""
    xs, ys = [normalize(x) for x in xs], [normalize(y) for y in ys]
    return all(x and y and same(x, y) for x in xs for y in ys)


def _constant(side: str) -> bool:
    """A side that is one or more numbers (2, \\frac{\\pi}{2}, 2, -3, \\pm\\sqrt2), no variable."""
    text = normalize(side)
    if text.startswith("\\{") and text.endswith("\\}"):
        text = text[2:-2]
    asts = [parse_ast(item) for item in split_top_level(text.replace("\\pm", "+"))]
    return bool(asts) and all(a is not None and not symbols(a) for a in asts)


def _solved(sides: list[str]) -> tuple[str, list[str]] | None:
    """(variable, values) of an equation solved for one variable (x = 2, 2 = x, x = 6/8 = 3/4,
    x = \\pm 2), else None."""
    if _VARIABLE.fullmatch(sides[0]) and all(_constant(side) for side in sides[1:]):
        return _SPACE.sub("", sides[0]), sides[1:]
    if len(sides) == 2 and _VARIABLE.fullmatch(sides[1]) and _constant(sides[0]):
        return _SPACE.sub("", sides[1]), sides[:1]
    return None


def equations_equal(pred: str, gold: str, same: Callable[[str, str], bool]) -> bool | None:
    """None when neither answer is one equation; else the rules of the module docstring. `same`
    compares two value sides (reward.equivalence's shape-aware equality)."""
    ps, gs = equation_sides(pred), equation_sides(gold)
    if ps is None and gs is None:
        return None
    if ps is not None and gs is not None:
        gold_solved = _solved(gs)
        if gold_solved is not None:  # x = 2 asks for x: 2x = 4 restates the problem and never pays
            pred_solved = _solved(ps)
            return (pred_solved is not None and pred_solved[0] == gold_solved[0]
                    and _all_equal(pred_solved[1], gold_solved[1], same))
        if _proportional(ps, gs):
            return True
        pl, gl = label(ps[0]), label(gs[0])
        if pl is not None and gl is not None:
            return pl == gl and _all_equal(ps[1:], gs[1:], same)
        return len(ps) == len(gs) and all(same(normalize(x), normalize(y)) for x, y in zip(ps, gs))
    if ps is not None:
        return _all_equal(ps[1:] if is_name(ps[0]) else ps, [gold], same)
    assert gs is not None
    if label(gs[0]) is None:
        return False
    return _all_equal([pred], gs[1:], same)
