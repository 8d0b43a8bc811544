"""Is a predicted final answer equivalent to the gold answer? Each rule is explicit.

1. Both answers are normalised (reward.normalize lists every rewrite); equal strings match. When
   both name a known unit, the units must agree (5 m is not 5 cm; reward.units). A percentage and a
   plain number match when the number equals the percentage or its ratio: a gold of 25% accepts
   25%, 25 and 0.25, and a gold of 0.25 accepts 25% (and a gold of 25 accepts 25%, never 0.25).
   A numeral with a base subscript is read in its base: 1010_2 is 10 (not 1010), and a plain
   1010 against a gold of 1010_2 is read in base 2.
2. Equations compare as equations (reward.equations): x + y = 1 is not x - y = 1, y = 2 is not
   x = 2, y = 2x + 1 is 2x - y + 1 = 0, a gold x = 2 wants x solved (2x = 4 is the problem restated, not
   its solution); a predicted "a+b = 5" or chain "x = 6/8 = 3/4" is read as its
   value against a gold value; a gold equation is read as its value only when its left side is a
   label (y = 2x + 3 accepts 2x + 3; x + y = 1 does not accept 1).
3. The shape of each answer is read, and shapes must agree:
   - matrix (\\begin{pmatrix}/bmatrix/matrix/array, also inside ( ) or [ ]): same size, entries
     equal in place. A one-row or one-column matrix also equals a tuple with the same entries.
   - union of intervals (A \\cup B): the pieces match one to one, in any order.
   - tuple or interval, (a, b) / [a, b) / ...: the same bracket types, entries equal in order.
   - set \\{a, b\\} or bare list "a, b": equal as multisets (order free); a \\pm b is the list
     a+b, a-b. A set of one element equals that element. A system of equations is such a list.
   - named values "x = 4, y = 7" (distinct names): equal to the same names with equal values, to
     the tuple of the values ordered by name ((4, 7)), or to a list of the values in any order.
   - a relation on one named quantity and an interval: a < x <= b is (a, b], x >= a is [a, \\infty);
     on an absolute value, a union: 1 <= |z| <= 2 is [-2, -1] \\cup [1, 2], |x| < 3 is (-3, 3).
   - single value.
4. A single value: inequalities need the same operators (x > 3 is read as 3 < x) and equal sides,
   or, for one operator, (right - left) of one a positive constant multiple of the other's
   (-x > -1 is x < 1);
   text answers (a run of three or more letters, e.g. "east") compare case-insensitively;
   everything else is parsed by the whitelist grammar (reward.parse) and compared by
   reward.numeric: exactly for rational values, to 40 significant digits for irrational ones, and
   at fixed random points for expressions with variables. Unparseable answers match only as
   identical strings (spaces ignored).
"""
from __future__ import annotations

import re
from fractions import Fraction
from typing import Callable

from reward.equations import equations_equal, is_name, split_top_level
from reward.normalize import Normalized, base_value, normalize_answer
from reward.numeric import NotExact, Undefined, exact, proportional, values_equal
from reward.parse import parse_ast
from reward.units import units_conflict

_MATRIX = re.compile(r"^[(\[]?\s*\\begin\{([pbB]?matrix|array)\}(?:\{[lcr| ]*\})?(.*)\\end\{\1\}\s*[)\]]?$", re.S)
_NAMED_ITEM = re.compile(r"^([a-zA-Z]+(?:_\{?\w+\}?)?)\s*=(?!=)\s*(.+)$", re.S)
_SPACES = re.compile(r"(?<![\d.])\s+|\s+(?![\d.])")
_WORD = re.compile(r"(?<![\\a-zA-Z])[a-zA-Z]{3,}")
_OPEN, _CLOSE = "([{", ")]}"
_RELATION = re.compile(r"(<=|>=|!=|<|>)")
_ABS_NAME = re.compile(r"^\|\s*[a-zA-Z](?:_\{?\w+\}?)?\s*\|$")
_FLIP = {"<": ">", ">": "<", "<=": ">=", ">=": "<=", "!=": "!="}

Shape = tuple[str, list]


def _wrapped(s: str) -> bool:
    """True when the first character's bracket closes at the last character."""
    if len(s) < 2 or s[0] not in "([" or s[-1] not in ")]":
        return False
    depth = 0
    for i, ch in enumerate(s):
        depth += (ch in _OPEN) - (ch in _CLOSE)
        if depth == 0 and i < len(s) - 1:
            return False
    return depth == 0


def _expand_pm(items: list[str]) -> list[str]:
    out = []
    for item in items:
        if item.count("\\pm") == 1:
            out += [item.replace("\\pm", "+"), item.replace("\\pm", "-")]
        else:
            out.append(item)
    return out


def _unbrace(s: str) -> str:
    """Braces around the whole answer only group: {1,3} is the list 1,3."""
    while len(s) >= 2 and s[0] == "{" and s[-1] == "}":
        depth = 0
        for i, ch in enumerate(s):
            depth += (ch in _OPEN) - (ch in _CLOSE)
            if depth == 0 and i < len(s) - 1:
                return s
        s = s[1:-1].strip()
    return s


def shape(s: str) -> Shape:
    s = _unbrace(s)
    matrix = _MATRIX.match(s)
    if matrix:
        rows = [r for r in matrix.group(2).split("\\\\") if r.strip()]
        return "matrix", [[c.strip() for c in r.split("&")] for r in rows]
    pieces = split_top_level(s, "\\cup")
    if len(pieces) > 1:
        return "union", pieces
    if s.startswith("\\{") and s.endswith("\\}"):
        return "set", _expand_pm(split_top_level(s[2:-2]))
    if _wrapped(s):
        items = split_top_level(s[1:-1])
        if len(items) > 1:
            return s[0] + s[-1], items
    items = _expand_pm(split_top_level(s))
    return ("set", items) if len(items) > 1 else ("single", items)


def _as_vector(sh: Shape) -> list[str] | None:
    kind, items = sh
    if kind == "()":
        return items
    if kind == "matrix" and (len(items) == 1 or all(len(r) == 1 for r in items)):
        return [c for r in items for c in r]
    return None


def _ordered(xs: list[str], ys: list[str], eq: Callable[[str, str], bool]) -> bool:
    return len(xs) == len(ys) and all(eq(x, y) for x, y in zip(xs, ys))


def _unordered(xs: list[str], ys: list[str], eq: Callable[[str, str], bool]) -> bool:
    """Match each predicted item to a distinct gold item."""
    if len(xs) != len(ys):
        return False
    remaining = list(ys)
    for x in xs:
        j = next((j for j, y in enumerate(remaining) if eq(x, y)), None)
        if j is None:
            return False
        remaining.pop(j)
    return True


def _named_values(sh: Shape) -> dict[str, str] | None:
    """{name: value} of a list of assignments to distinct names ("x = 4, y = 7"), else None."""
    kind, items = sh
    if kind != "set":
        return None
    matches = [_NAMED_ITEM.match(item) for item in items]
    if not all(matches):
        return None
    named = {m.group(1): m.group(2).strip() for m in matches if m}
    return named if len(named) == len(items) else None


def _named_equal(pn: dict[str, str] | None, gn: dict[str, str] | None, psh: Shape, gsh: Shape) -> bool:
    """Named values against named values (by name), a tuple (ordered by name) or a list (any order)."""
    if pn is not None and gn is not None:
        return pn.keys() == gn.keys() and all(single_equal(pn[k], gn[k]) for k in pn)
    if pn is not None:
        values, (kind, items) = [pn[k] for k in sorted(pn)], gsh
        if kind == "()":
            return _ordered(values, items, single_equal)
        return kind == "set" and _unordered(values, items, single_equal)
    assert gn is not None
    values, (kind, items) = [gn[k] for k in sorted(gn)], psh
    if kind == "()":
        return _ordered(items, values, single_equal)
    return kind == "set" and _unordered(items, values, single_equal)


def _shapes_equal(p: str, g: str) -> bool:
    if p == g:
        return True
    equation = equations_equal(p, g, _shapes_equal)
    if equation is not None:
        return equation
    if bool(_RELATION.search(p)) != bool(_RELATION.search(g)):  # -2 <= x < 7 is [-2, 7)
        p2, g2 = relation_interval(p) or p, relation_interval(g) or g
        if (p2, g2) != (p, g):
            return _shapes_equal(p2, g2)
    psh, gsh = shape(p), shape(g)
    (pk, pi), (gk, gi) = psh, gsh
    pn, gn = _named_values(psh), _named_values(gsh)
    if pn is not None or gn is not None:
        return _named_equal(pn, gn, psh, gsh)
    if pk == gk == "single":
        return single_equal(pi[0], gi[0])
    if {pk, gk} == {"set", "single"} and len(pi) == len(gi) == 1:  # \{5\} is 5
        return single_equal(pi[0], gi[0])
    if pk == gk == "matrix":
        return len(pi) == len(gi) and all(_ordered(x, y, single_equal) for x, y in zip(pi, gi))
    if "matrix" in (pk, gk):
        pv, gv = _as_vector(psh), _as_vector(gsh)
        return pv is not None and gv is not None and _ordered(pv, gv, single_equal)
    if pk == gk == "union":
        return _unordered(pi, gi, _shapes_equal)
    if pk == gk and pk in ("()", "[]", "(]", "[)"):
        return _ordered(pi, gi, single_equal)
    if pk == gk == "set":
        return _unordered(pi, gi, single_equal)
    return False


def _is_text(s: str) -> bool:
    return bool(_WORD.search(s))


def single_equal(pred: str, gold: str) -> bool:
    p, g = pred.strip(), gold.strip()
    if p == g:
        return True
    equation = equations_equal(p, g, _shapes_equal)
    if equation is not None:
        return equation
    if _is_text(p) or _is_text(g):
        return p.lower().replace(" ", "") == g.lower().replace(" ", "")
    if _RELATION.search(p) or _RELATION.search(g):
        return _relations_equal(p, g)
    a, b = parse_ast(p), parse_ast(g)
    if a is None or b is None:
        return _squash(p) == _squash(g)
    return values_equal(a, b)


def _squash(s: str) -> str:
    """Spaces dropped, except between two digits ("2 3" is not "23")."""
    return " ".join(_SPACES.sub("", s).split())


def _relation_chain(s: str) -> tuple[list[str], list[str]]:
    """Sides and operators of a (chained) relation, written with < / <= where it has any."""
    parts = _RELATION.split(s)
    sides, ops = [p.strip() for p in parts[0::2]], parts[1::2]
    if any(op in (">", ">=") for op in ops):
        sides, ops = sides[::-1], [_FLIP[op] for op in reversed(ops)]
    return sides, ops


def _relations_equal(p: str, g: str) -> bool:
    """Inequalities: the same operators (x > 3 is 3 < x) and equal sides in order."""
    (sp, op), (sg, og) = _relation_chain(p), _relation_chain(g)
    if op != og:
        return False
    if _ordered(sp, sg, single_equal):
        return True
    if len(op) != 1:
        return False
    asts = [parse_ast(side) for side in sp + sg]  # -x > -1 is x < 1: (right - left) a positive multiple
    if any(a is None for a in asts):
        return False
    lp, rp, lg, rg = asts
    return proportional(("add", rp, ("neg", lp)), ("add", rg, ("neg", lg)), positive=op[0] != "!=")


def relation_interval(s: str) -> str | None:
    """The interval a relation on one named quantity describes (a < x <= b is (a, b], x >= a is
    [a, \\infty)), or the union of intervals a relation on its absolute value describes
    (1 <= |z| <= 2 is [-2, -1] \\cup [1, 2]), or None."""
    if "!=" in s or "," in s:
        return None
    sides, ops = _relation_chain(s)
    bracket = {"<": ("(", ")"), "<=": ("[", "]")}
    if len(ops) == 2 and is_name(sides[1]) and not (is_name(sides[0]) or is_name(sides[2])):
        if _ABS_NAME.match(sides[1]):
            return _abs_range(sides[0], ops[0], sides[2], ops[1])
        return f"{bracket[ops[0]][0]}{sides[0]}, {sides[2]}{bracket[ops[1]][1]}"
    if len(ops) == 1 and is_name(sides[0]) != is_name(sides[1]):
        if _ABS_NAME.match(sides[0]) or _ABS_NAME.match(sides[1]):
            return _abs_range(None, None, sides[1], ops[0]) if is_name(sides[0]) else _abs_range(sides[0], ops[0], None, None)
        if is_name(sides[0]):
            return f"(-\\infty, {sides[1]}{bracket[ops[0]][1]}"
        return f"{bracket[ops[0]][0]}{sides[0]}, \\infty)"
    return None


def _abs_range(low: str | None, low_op: str | None, high: str | None, high_op: str | None) -> str | None:
    """low (<|<=) |x| (<|<=) high as intervals of x; None when low is not a known non-negative number."""
    low_value = None
    if low is not None:
        ast = parse_ast(low)
        try:
            low_value = exact(ast, {}) if ast is not None else None
        except (NotExact, Undefined, KeyError):
            return None
        if low_value is None or low_value < 0:
            return None
    inner_close = {"<": ")", "<=": "]"}
    inner_open = {"<": "(", "<=": "["}
    if low is None or (low_value == 0 and low_op == "<="):  # |x| < b: one interval around 0
        if high is None:
            return None
        return f"{inner_open[high_op]}-({high}), {high}{inner_close[high_op]}"  # type: ignore[index]
    left_end = f"{inner_open[high_op]}-({high})" if high is not None else "(-\\infty"  # type: ignore[index]
    right_end = f"{high}{inner_close[high_op]}" if high is not None else "\\infty)"  # type: ignore[index]
    return (f"{left_end}, -({low}){inner_close[low_op]} \\cup "  # type: ignore[index]
            f"{inner_open[low_op]}{low}, {right_end}")  # type: ignore[index]


def _scaled_equal(plain: str, percent: str) -> bool:
    """plain == percent / 100, for single values."""
    a, b = parse_ast(plain), parse_ast(percent)
    return a is not None and b is not None and values_equal(a, ("div", b, ("num", Fraction(100))))


def _numerals_equal(p: Normalized, g: Normalized) -> bool:
    """A numeral with a base subscript is read in its base (1010_2 is 10, never 1010); a plain
    answer against a gold numeral in base b is read as digits in base b (2516 for 2516_8), since
    the question asked for that base; a plain decimal against a predicted numeral is its value."""
    if p.base is not None and g.base is not None:
        return base_value(p.text, p.base) == base_value(g.text, g.base)
    if g.base is not None:
        return re.fullmatch(r"[0-9A-Z]+", p.text) is not None and base_value(p.text, g.base) == base_value(g.text, g.base)
    assert p.base is not None
    return re.fullmatch(r"\d+", g.text) is not None and base_value(p.text, p.base) == int(g.text)


def equal_normalized(p: Normalized, g: Normalized) -> bool:
    if not p.text or not g.text or units_conflict(p.unit, g.unit):
        return False
    if p.base is not None or g.base is not None:
        return _numerals_equal(p, g)
    if _shapes_equal(p.text, g.text):
        return True
    if p.percent == g.percent:
        return False
    return _scaled_equal(g.text, p.text) if p.percent else _scaled_equal(p.text, g.text)


def answers_equal(pred: str, gold: str) -> bool:
    return equal_normalized(normalize_answer(pred), normalize_answer(gold))
