"""Is a predicted final answer equivalent to the gold answer? Each rule is explicit.

1. Both answers are normalised (reward.normalize lists every rewrite); equal strings match. When
   both name a known unit, the units must agree (5 m is not 5 cm; reward.units). A percentage and a
   plain number match when the number equals the percentage or its ratio: a gold of 25% accepts
   25%, 25 and 0.25, and a gold of 0.25 accepts 25% (and a gold of 25 accepts 25%, never 0.25).
2. Equations: two equations are equal when (left - right) of one is a nonzero constant multiple of
   the other's (y = 2x + 1 is 2x - y + 1 = 0). Otherwise a named left-hand side (one with no digits
   outside subscripts and function arguments: x, a+b, f(3), \\frac{a}{b}, (x, y)) is dropped,
   and every remaining side must equal the other answer: x = 3 and a+b = 3 equal 3, a chain
   x = 6/8 = 3/4 equals 3/4, but x = 5+5+1 = 7 = 11 does not equal 11 and x+1 = 5 does not equal 5.
3. The shape of each answer is read, and shapes must agree:
   - matrix (\\begin{pmatrix}/bmatrix/matrix/array, also inside ( ) or [ ]): same size, entries
     equal in place. A one-row or one-column matrix also equals a tuple with the same entries.
   - union of intervals (A \\cup B): the pieces match one to one, in any order.
   - tuple or interval, (a, b) / [a, b) / ...: the same bracket types, entries equal in order.
   - set \\{a, b\\} or bare list "a, b": equal as multisets (order free); a \\pm b is the list
     a+b, a-b. A set of one element equals that element.
   - named values "x = 4, y = 7" (distinct names): equal to the same names with equal values, to
     the tuple of the values ordered by name ((4, 7)), or to a list of the values in any order.
   - a relation on one named quantity and an interval: a < x <= b is (a, b], x >= a is [a, \\infty).
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

from reward.normalize import Normalized, normalize, normalize_answer
from reward.numeric import proportional, values_equal
from reward.parse import parse_ast
from reward.units import units_conflict

_MATRIX = re.compile(r"^[(\[]?\s*\\begin\{([pbB]?matrix|array)\}(?:\{[lcr| ]*\})?(.*)\\end\{\1\}\s*[)\]]?$", re.S)
_NAMED_ITEM = re.compile(r"^([a-zA-Z]+(?:_\{?\w+\}?)?)\s*=(?!=)\s*(.+)$", re.S)
_SUBSCRIPT = re.compile(r"_\{[^{}]*\}|_\w")
_CALL = re.compile(r"(?<=[a-zA-Z])\([^()]*\)")
_SPACES = re.compile(r"(?<![\d.])\s+|\s+(?![\d.])")
_WORD = re.compile(r"(?<![\\a-zA-Z])[a-zA-Z]{3,}")
_OPEN, _CLOSE = "([{", ")]}"
_RELATION = re.compile(r"(<=|>=|!=|<|>)")
_FLIP = {"<": ">", ">": "<", "<=": ">=", ">=": "<=", "!=": "!="}

Shape = tuple[str, list]


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
    equation = _equation_equal(p, g)
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
    equation = _equation_equal(p, g)
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
    [a, \\infty)), or None."""
    if "!=" in s or "," in s:
        return None
    sides, ops = _relation_chain(s)
    bracket = {"<": ("(", ")"), "<=": ("[", "]")}
    if len(ops) == 2 and is_name(sides[1]) and not (is_name(sides[0]) or is_name(sides[2])):
        return f"{bracket[ops[0]][0]}{sides[0]}, {sides[2]}{bracket[ops[1]][1]}"
    if len(ops) == 1 and is_name(sides[0]) != is_name(sides[1]):
        if is_name(sides[0]):
            return f"(-\\infty, {sides[1]}{bracket[ops[0]][1]}"
        return f"{bracket[ops[0]][0]}{sides[0]}, \\infty)"
    return None


def is_name(side: str) -> bool:
    """A left-hand side that names the answer rather than computes it: letters, but no digits
    outside subscripts and function arguments (x, a+b, x_1, f(3), \\frac{a}{b}, (x, y), |AB|)."""
    core = _CALL.sub("", _SUBSCRIPT.sub("", side))
    return bool(re.search(r"[a-zA-Z]", core)) and not re.search(r"\d", core)


def _is_equation(s: str) -> bool:
    """One equation or a chain (a top-level "="), not a list of assignments (x = 1, y = 2)."""
    if "=" not in s or _RELATION.search(s) or "==" in s:
        return False
    items = split_top_level(s)
    return not (len(items) > 1 and all("=" in item for item in items)) and len(split_top_level(s, "=")) > 1


def _values(s: str) -> list[str]:
    """The sides of an equation that carry its value: all but a named left-hand side."""
    if not _is_equation(s):
        return [s]
    sides = split_top_level(s, "=")
    if is_name(sides[0]):
        sides = sides[1:]
    return [normalize(side) for side in sides]


def _equation_equal(p: str, g: str) -> bool | None:
    """None when neither answer is an equation; else rule 2 of the module docstring."""
    if not (_is_equation(p) or _is_equation(g)):
        return None
    ps, gs = split_top_level(p, "="), split_top_level(g, "=")
    if _is_equation(p) and _is_equation(g) and len(ps) == len(gs) == 2:
        asts = [parse_ast(side) for side in ps + gs]
        if all(a is not None for a in asts):
            lp, rp, lg, rg = asts
            if proportional(("add", lp, ("neg", rp)), ("add", lg, ("neg", rg))):
                return True
    pv, gv = _values(p), _values(g)
    return all(x and y and _shapes_equal(x, y) for x in pv for y in gv)


def _scaled_equal(plain: str, percent: str) -> bool:
    """plain == percent / 100, for single values."""
    a, b = parse_ast(plain), parse_ast(percent)
    return a is not None and b is not None and values_equal(a, ("div", b, ("num", Fraction(100))))


def equal_normalized(p: Normalized, g: Normalized) -> bool:
    if not p.text or not g.text or units_conflict(p.unit, g.unit):
        return False
    if _shapes_equal(p.text, g.text):
        return True
    if p.percent == g.percent:
        return False
    return _scaled_equal(g.text, p.text) if p.percent else _scaled_equal(p.text, g.text)


def answers_equal(pred: str, gold: str) -> bool:
    return equal_normalized(normalize_answer(pred), normalize_answer(gold))
