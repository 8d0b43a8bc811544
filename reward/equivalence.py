"""Is a predicted final answer equivalent to the gold answer? Each rule is explicit.

1. Both answers are normalised (reward.normalize lists every rewrite); equal strings match.
2. The shape of each answer is read, and shapes must agree:
   - matrix (\\begin{pmatrix}/bmatrix/matrix): same size, entries equal in place. A one-row or
     one-column matrix also equals a tuple with the same entries in order (a vector).
   - union of intervals (A \\cup B): the pieces match one to one, in any order.
   - tuple or interval, (a, b) / [a, b) / ...: the same bracket types, entries equal in order.
   - set \\{a, b\\} or bare list "a, b": equal as multisets (order free); a \\pm b is the list
     a+b, a-b.
   - single value.
3. A single value: a "v = ..." prefix is dropped (x=3 equals 3); two equations are equal when
   (left - right) of one is a nonzero constant multiple of the other's; inequalities need the
   same operators (x > 3 is read as 3 < x) and equal sides; text answers (a run of
   three or more letters, e.g. "east") compare case-insensitively; everything else is parsed by the
   whitelist grammar (reward.parse) and compared by reward.numeric: exactly for rational values,
   to 40 significant digits for irrational ones, and at fixed random points for expressions with
   variables. Unparseable answers match only as identical strings (spaces ignored).
"""
from __future__ import annotations

import re
from typing import Callable

from reward.numeric import proportional, values_equal
from reward.normalize import normalize
from reward.parse import parse_ast

_MATRIX = re.compile(r"^\\begin\{([pbB]?matrix|array)\}(?:\{[lcr|]*\})?(.*)\\end\{\1\}$", re.S)
_PREFIX = re.compile(r"^[a-zA-Z]\s*=(?!=)\s*")
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


def shape(s: str) -> Shape:
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


def _shapes_equal(p: str, g: str) -> bool:
    if p == g:
        return True
    (pk, pi), (gk, gi) = shape(p), shape(g)
    if pk == gk == "single":
        return single_equal(pi[0], gi[0])
    if pk == gk == "matrix":
        return len(pi) == len(gi) and all(_ordered(x, y, single_equal) for x, y in zip(pi, gi))
    if "matrix" in (pk, gk):
        pv, gv = _as_vector((pk, pi)), _as_vector((gk, gi))
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
    p, g = _PREFIX.sub("", pred), _PREFIX.sub("", gold)
    if p == g:
        return True
    if _is_text(p) or _is_text(g):
        return p.lower().replace(" ", "") == g.lower().replace(" ", "")
    if _RELATION.search(p) or _RELATION.search(g):
        return _relations_equal(p, g)
    if "=" in p or "=" in g:
        return _equations_equal(p, g)
    a, b = parse_ast(p), parse_ast(g)
    if a is None or b is None:
        return p.replace(" ", "") == g.replace(" ", "")
    return values_equal(a, b)


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
    return op == og and _ordered(sp, sg, single_equal)


def _equations_equal(p: str, g: str) -> bool:
    sides_p, sides_g = p.split("="), g.split("=")
    if len(sides_p) != 2 or len(sides_g) != 2:
        return p.replace(" ", "") == g.replace(" ", "")
    asts = [parse_ast(s.strip()) for s in sides_p + sides_g]
    if any(a is None for a in asts):
        return False
    lp, rp, lg, rg = asts
    return proportional(("add", lp, ("neg", rp)), ("add", lg, ("neg", rg)))


def answers_equal(pred: str, gold: str) -> bool:
    p, g = normalize(pred), normalize(gold)
    if not p or not g:
        return False
    return _shapes_equal(p, g)
