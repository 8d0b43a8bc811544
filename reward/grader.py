"""Is a predicted final answer equivalent to the gold answer? Each rule is explicit.

1. Normalised strings equal (presentation stripped: $, \\left, \\!, units, \\text{}, x= prefix,
   thousands separators, answer-choice parentheses).
2. Intervals and tuples: same bracket types, elementwise equal in order. Braced sets and bare
   comma lists: equal as multisets.
3. Single values: parsed by the whitelist grammar (reward.parse) into sympy; numbers compare
   exactly when both are rational (no rounding), otherwise to 1e-9 relative; expressions with
   variables compare as functions at fixed random points.
"""
from __future__ import annotations

import random
import re

import sympy

from reward.normalize import normalize
from reward.parse import ParseError, parse_math

_INTERVAL = re.compile(r"^([\(\[])(.*)([\)\]])$")


def split_top_level(s: str, sep: str = ",") -> list[str]:
    parts, depth, start = [], 0, 0
    for i, ch in enumerate(s):
        if ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth -= 1
        elif ch == sep and depth == 0:
            parts.append(s[start:i])
            start = i + 1
    parts.append(s[start:])
    return [p.strip() for p in parts]


def values_equal(a: sympy.Expr, b: sympy.Expr) -> bool:
    if a == b:
        return True
    symbols = sorted(a.free_symbols | b.free_symbols, key=str)
    points = [{}] if not symbols else [
        {s: sympy.Rational(rng.randint(1, 97), rng.randint(1, 13)) for s in symbols}
        for rng in (random.Random(seed) for seed in range(4))
    ]
    for point in points:
        x, y = a.subs(point), b.subs(point)
        if x.is_Rational and y.is_Rational:
            if x != y:
                return False
            continue
        try:
            xv, yv = complex(sympy.N(x, 30)), complex(sympy.N(y, 30))
        except (TypeError, ValueError):
            return False
        if abs(xv - yv) > 1e-9 * max(1.0, abs(yv)):
            return False
    return True


def _single_equal(pred: str, gold: str) -> bool:
    if pred == gold:
        return True
    try:
        return values_equal(parse_math(pred), parse_math(gold))
    except (ParseError, ZeroDivisionError, OverflowError, ValueError, TypeError, RecursionError):
        return False


def _compound(s: str) -> tuple[str, str, list[str]] | None:
    """('(', ')', items) for tuples/intervals, ('{', '}', items) for sets, ('', '', items) for lists."""
    braced = re.fullmatch(r"\\\{(.*)\\\}", s)
    if braced:
        return "{", "}", split_top_level(braced.group(1))
    m = _INTERVAL.match(s)
    if m and len(split_top_level(m.group(2))) > 1 and split_top_level(s)[0] == s:
        return m.group(1), m.group(3), split_top_level(m.group(2))
    items = split_top_level(s)
    return ("", "", items) if len(items) > 1 else None


def answers_equal(pred: str, gold: str) -> bool:
    p, g = normalize(pred), normalize(gold)
    if not p:
        return False
    if p == g:
        return True
    pc, gc = _compound(p), _compound(g)
    if pc is None and gc is None:
        return _single_equal(p, g)
    if pc is None or gc is None or len(pc[2]) != len(gc[2]):
        return False
    if pc[:2] != gc[:2] and not ({pc[0], gc[0]} <= {"", "{"}):
        return False
    if gc[0] in ("(", "["):  # ordered
        return all(_single_equal(x, y) for x, y in zip(pc[2], gc[2]))
    remaining = list(gc[2])  # unordered: match each predicted item to a distinct gold item
    for item in pc[2]:
        match = next((j for j, y in enumerate(remaining) if _single_equal(item, y)), None)
        if match is None:
            return False
        remaining.pop(match)
    return True
