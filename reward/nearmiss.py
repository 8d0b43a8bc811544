"""Near-miss answers: wrong answers that look almost like a gold answer, to hunt false positives.

`near_misses(gold)` rewrites a gold answer in the ways a policy's wrong answer resembles the right
one, and keeps a rewrite only when it is certainly a different answer:
  - sign:      the sign of one item flipped (3 -> -3, 2x+1 -> -(2x+1)), or one + made a -;
  - number:    one integer literal off by one (2516_8 -> 2517_8, \\frac{3}{4} -> \\frac{4}{4});
  - exponent:  one exponent off by one (x^2 -> x^3, 2^{10} -> 2^{11});
  - swap:      two variables exchanged (y = 2x+3 -> x = 2y+3, a-b -> b-a), or the two first
               entries of a pair or interval ((1, 2) -> (2, 1));
  - factor:    a coefficient or factor dropped (2\\sqrt3 -> \\sqrt3, 3\\pi -> 3);
  - subset:    one solution dropped from a list of all solutions, or one wrong one added;
  - interval:  one finite end moved by one, or its bracket flipped ((1, 3] -> (1, 3));
  - unit:      the unit of the gold changed (5 cm -> 5 m, 15 cm^2 -> 15 cm);
  - base:      the digits of the gold in another base (1010 -> 1010_8, 2516_8 -> 2516_9).
"Certainly different" is decided here, independently of the grader's equivalence rules: the changed
item (or, for an equation, left - right) is evaluated in floating point at fixed points, and the
rewrite is kept only when the values differ by more than 1e-6 relative at some point (for
equations: when left - right of the two are not proportional). Items this check cannot evaluate
are not rewritten, except by the subset, interval-bracket and unit rewrites, which differ by
construction. Uses reward.normalize and reward.parse (to read items), never reward.equivalence.
"""
from __future__ import annotations

import random
import re
from fractions import Fraction
from typing import Iterator

from reward.equations import split_top_level
from reward.normalize import base_value, normalize, normalize_answer
from reward.numeric import FLOAT, Undefined, symbols
from reward.parse import Node, parse_ast

KINDS = ("sign", "number", "exponent", "swap", "factor", "subset", "interval", "unit", "base")
_INTEGER = re.compile(r"(?<![\d.\\^_])\d+(?![\d.])")
_EXPONENT = re.compile(r"\^\{?(\d+)\}?")
_VARIABLE = re.compile(r"(?<![\\a-zA-Z])([a-df-hj-zA-Z])(?![a-zA-Z])")  # one letter, not e or i
_COEFFICIENT = re.compile(r"(?<![\w.}^_])(\d+)(?=\\sqrt|\\pi|[a-zA-Z(])")
_FACTOR = re.compile(r"(?<=\d)(\\pi|\\sqrt\{\d+\}|\\sqrt\d)")
_WORD = re.compile(r"(?<![\\a-zA-Z])[a-zA-Z]{3,}")
_INTERVAL = re.compile(r"^([(\[])(.+),(.+)([)\]])$")
_UNIT_SWAP = {"cm": "m", "m": "cm", "mm": "cm", "km": "m", "inches": "feet", "feet": "inches", "degrees": "radians",
              "cents": "dollars", "dollars": "cents", "hours": "minutes", "minutes": "hours", "seconds": "minutes"}
_UNIT = re.compile(r"\\(?:text|mbox)\{\s*(" + "|".join(_UNIT_SWAP) + r")\s*\}(\^\{?2\}?)?$")
_POINTS = [{name: Fraction(random.Random(f"{k}{name}").randint(-50, 50), 7) for name in "abcdfghjklmnopqrstuvwxyzABCDFGHJKLMNOPQRSTUVWXYZ"}
           for k in range(4)]
TOLERANCE = 1e-6


def _values(node: Node) -> list[complex] | None:
    out = []
    for env in _POINTS:
        try:
            out.append(complex(FLOAT.value(node, env)))
        except (Undefined, ValueError, ZeroDivisionError, OverflowError, KeyError, TypeError):
            return None
    return out if all(abs(v) < 1e12 for v in out) else None


def _ast(text: str) -> Node | None:
    text = normalize(text)
    return parse_ast(text) if text else None


def values_differ(a: str, b: str) -> bool:
    """Both items evaluate at every point, and at one point they differ by more than TOLERANCE."""
    na, nb = _ast(a), _ast(b)
    va, vb = (_values(na) if na else None), (_values(nb) if nb else None)
    if va is None or vb is None:
        return False
    return any(abs(x - y) > TOLERANCE * max(1.0, abs(x), abs(y)) for x, y in zip(va, vb))


def equations_differ(a: str, b: str) -> bool:
    """Two one-equation strings whose left - right are not proportional (nor both identically 0)."""
    sides = [split_top_level(s, "=") for s in (a, b)]
    if any(len(s) != 2 for s in sides):
        return False
    nodes = [_ast(x) for s in sides for x in s]
    if any(n is None for n in nodes):
        return False
    diffs = [_values(("add", nodes[i], ("neg", nodes[i + 1]))) for i in (0, 2)]  # type: ignore[arg-type]
    if diffs[0] is None or diffs[1] is None or not (symbols(nodes[0]) | symbols(nodes[1])):  # type: ignore[arg-type]
        return False
    (da, db) = diffs
    if all(abs(x) <= TOLERANCE for x in da) or all(abs(y) <= TOLERANCE for y in db):
        return False
    # proportional when da * db[k] == db * da[k] at every point for a k with db[k] != 0
    k = max(range(len(db)), key=lambda j: abs(db[j]))
    return any(abs(x * db[k] - y * da[k]) > TOLERANCE * max(1.0, abs(x * db[k]), abs(y * da[k])) for x, y in zip(da, db))


def _item_rewrites(item: str) -> Iterator[tuple[str, str]]:
    """(kind, rewritten item) for one item of an answer; not yet checked."""
    yield "sign", item[1:] if item.startswith("-") else f"-({item})" if re.search(r"[-+]", item) else f"-{item}"
    plus = item.find("+")
    if plus > 0:
        yield "sign", item[:plus] + "-" + item[plus + 1:]
    for m in list(_INTEGER.finditer(item))[:2]:
        yield "number", item[:m.start()] + str(int(m.group()) + 1) + item[m.end():]
    for m in list(_EXPONENT.finditer(item))[:2]:
        yield "exponent", item[:m.start(1)] + str(int(m.group(1)) + 1) + item[m.end(1):]
    names = list(dict.fromkeys(m.group(1) for m in _VARIABLE.finditer(item)))
    if len(names) >= 2:
        a, b = names[:2]
        yield "swap", re.sub(rf"(?<![\\a-zA-Z])[{a}{b}](?![a-zA-Z])", lambda m: b if m.group() == a else a, item)
    m = _COEFFICIENT.search(item)
    if m and m.group(1) != "1":
        yield "factor", item[:m.start()] + item[m.end():]
    m = _FACTOR.search(item)
    if m:
        yield "factor", item[:m.start()] + item[m.end():]


def _rewrite_items(gold: str, sep: str, check: bool) -> Iterator[tuple[str, str]]:
    items = split_top_level(gold, sep)
    for i, item in enumerate(items):
        for kind, new in _item_rewrites(item):
            if new != item and (not check or values_differ(new, item)):
                yield kind, f"{sep} ".join(items[:i] + [new] + items[i + 1:]) if sep == "," else \
                    f" {sep} ".join(items[:i] + [new] + items[i + 1:])


def near_misses(gold: str) -> list[tuple[str, str, str]]:
    """(kind, gold, wrong answer) for one gold answer, each wrong answer certainly not equal to its
    gold (the gold is the given one, except that the unit rewrite of a bare integer n pairs a gold
    of n cm with n m)."""
    return [("unit", f"{wrong}\\text{{ cm}}", f"{wrong}\\text{{ m}}") if kind == "unit+" else (kind, gold, wrong)
            for kind, wrong in _near_misses(gold)]


def _near_misses(gold: str) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    unit = _UNIT.search(gold.strip())
    if unit:
        text = gold.strip()
        out.append(("unit", text[:unit.start(1)] + _UNIT_SWAP[unit.group(1)] + text[unit.end(1):]))
        if unit.group(2):
            out.append(("unit", text[:unit.start(2)]))
        return out
    normalized = normalize_answer(gold)
    text = gold.strip() if normalized.base is not None else normalized.text  # rewrite what the grader reads
    if not text or _WORD.search(text) or re.fullmatch(r"[A-E]", text):
        return out  # text and multiple-choice answers: no near misses of this kind
    if re.fullmatch(r"-?\d+", text):
        out.append(("unit+", text))  # a unit added to both: n cm against n m
    if re.fullmatch(r"[0-7]{2,}", text) and int(text) >= 8:
        out.append(("base", f"{text}_8"))  # digits of a decimal answer read in base 8
    if normalized.base is not None and normalized.base < 36 and (
            base_value(normalized.text, normalized.base) != base_value(normalized.text, normalized.base + 1)):
        out.append(("base", f"{normalized.text}_{{{normalized.base + 1}}}"))
    sides = split_top_level(text, "=")
    if len(sides) == 2 and "," not in text and not re.search(r"[<>]|\\[lg]e", text):
        out += [(k, new) for k, new in _rewrite_items(text, "=", check=False) if equations_differ(new, text)]
        return out
    interval = _INTERVAL.match(text)
    if interval and len(split_top_level(text[1:-1])) == 2:
        opening, left, right, closing = interval.groups()
        if "infty" not in right:
            out.append(("interval", f"{opening}{left},{right}{')' if closing == ']' else ']'}"))
            out.append(("interval", f"{opening}{left},{right}+1{closing}"))
        if "infty" not in left:
            out.append(("interval", f"{'(' if opening == '[' else '['}{left},{right}{closing}"))
            out.append(("interval", f"{opening}{left}-1,{right}{closing}"))
        if values_differ(left, right):
            out.append(("swap", f"{opening}{right},{left}{closing}"))
        return out
    items = split_top_level(text)
    if len(items) >= 2 and not re.match(r"^[(\[]", text):
        out += [("subset", ", ".join(items[:i] + items[i + 1:])) for i in range(min(len(items), 3))]
        extra = next((new for kind, new in _item_rewrites(items[-1]) if values_differ(new, items[-1])), None)
        if extra is not None:
            out.append(("subset", f"{text}, {extra}"))
    inner = text[1:-1] if len(items) == 1 and re.match(r"^\(.*\)$", text) and "," in text else None
    if inner is not None:
        out += [(k, f"({new})") for k, new in _rewrite_items(inner, ",", check=True)]
        first, second, *rest = split_top_level(inner)
        if values_differ(first, second):  # an ordered pair in the wrong order
            out.append(("swap", "(" + ", ".join([second, first, *rest]) + ")"))
    else:
        out += list(_rewrite_items(text, ",", check=True))
    return out
