"""Deciding whether two parsed answers are the same number or the same function.

Three evaluators over the AST of reward.parse, cheapest first:
  1. exact: Fractions. Integers, fractions, decimals, powers with integer exponents and roots of
     perfect powers are compared exactly, so 0.333 != 1/3 (no rounding).
  2. float: complex doubles, only to reject clearly different values quickly.
  3. mpmath at 60 significant digits: confirms equality of irrational values (2\\sqrt3 vs
     \\sqrt{12}) with a relative tolerance of 1e-40; a 17-digit decimal is not \\sqrt2.
Expressions with variables are compared as functions at fixed pseudo-random rational points
(Schwartz-Zippel style); a polynomial identity is then checked exactly.
"""
from __future__ import annotations

import cmath
import math
import random
from fractions import Fraction
from functools import lru_cache
from typing import Any, Callable

import mpmath

from reward.parse import Node

MAX_EXACT_BITS = 50_000  # exact intermediate results larger than this go to the float/mpmath path
POINTS = 5
FLOAT_REJECT = 1e-6
MP_TOLERANCE = mpmath.mpf(10) ** -40

_MP = mpmath.MPContext()
_MP.dps = 60


class NotExact(Exception):
    """The value is not (provably) rational: use the approximate evaluators."""


class Undefined(Exception):
    """Division by zero, 0^-1, log 0 and the like: the answer has no value here."""


def exact(node: Node, env: dict[str, Fraction]) -> Fraction:
    kind = node[0]
    if kind == "num":
        return node[1]
    if kind == "sym":
        return env[node[1]]
    if kind == "neg":
        return -exact(node[1], env)
    if kind == "add":
        return _bounded(exact(node[1], env) + exact(node[2], env))
    if kind == "mul":
        return _bounded(exact(node[1], env) * exact(node[2], env))
    if kind == "div":
        num, den = exact(node[1], env), exact(node[2], env)
        if den == 0:
            raise Undefined()
        return _bounded(num / den)
    if kind == "pow":
        return _exact_pow(exact(node[1], env), exact(node[2], env))
    if kind == "fact":
        return Fraction(math.factorial(int(exact(node[1], env))))
    if kind == "abs":
        return abs(exact(node[1], env))
    raise NotExact()


def _bounded(value: Fraction) -> Fraction:
    if value.numerator.bit_length() + value.denominator.bit_length() > MAX_EXACT_BITS:
        raise NotExact()
    return value


def _exact_root(n: int, k: int) -> int | None:
    if n < 0:
        return None
    r = round(n ** (1.0 / k)) if n.bit_length() < 1000 else None
    if r is None:
        return None
    return next((c for c in (r - 1, r, r + 1) if c >= 0 and c ** k == n), None)


def _exact_pow(base: Fraction, exponent: Fraction) -> Fraction:
    if base == 0 and exponent < 0:
        raise Undefined()
    size = max(base.numerator.bit_length(), base.denominator.bit_length())
    if size * abs(exponent) > MAX_EXACT_BITS:
        raise NotExact()
    if exponent.denominator != 1:  # rational only for perfect powers: \sqrt{16}, 8^{2/3}
        k = exponent.denominator
        if k > 64:
            raise NotExact()
        num, den = _exact_root(base.numerator, k), _exact_root(base.denominator, k)
        if num is None or den is None:
            raise NotExact()
        base = Fraction(num, den)
    return base ** exponent.numerator


def _float_pow(a: complex, b: complex) -> complex:
    if a == 0 and b.real <= 0:
        raise Undefined()
    if b.imag == 0 and b.real == int(b.real) and a.imag == 0:
        return complex(a.real ** int(b.real))
    return a ** b


def _mp_pow(a: Any, b: Any) -> Any:
    if a == 0 and _MP.re(b) <= 0:
        raise Undefined()
    return _MP.power(a, b)


def _cot(lib: Any) -> Callable[[Any], Any]:
    return lambda x: 1 / lib.tan(x)


def _functions(lib: Any) -> dict[str, Callable[[Any], Any]]:
    return {"sin": lib.sin, "cos": lib.cos, "tan": lib.tan, "cot": _cot(lib),
            "sec": lambda x: 1 / lib.cos(x), "csc": lambda x: 1 / lib.sin(x),
            "arcsin": lib.asin, "arccos": lib.acos, "arctan": lib.atan, "ln": lib.log, "log": lib.log,
            "exp": lib.exp, "sinh": lib.sinh, "cosh": lib.cosh, "tanh": lib.tanh}


class _Numeric:
    """One approximate number system: complex floats (cmath) or mpmath complex numbers."""

    def __init__(self, lib: Any, number: Callable[[Fraction], Any], power: Callable[[Any, Any], Any],
                 consts: dict[str, Any]) -> None:
        self.lib, self.number, self.power, self.consts = lib, number, power, consts
        self.functions = _functions(lib)

    def value(self, node: Node, env: dict[str, Fraction]) -> Any:
        kind = node[0]
        if kind == "num":
            return self.number(node[1])
        if kind == "sym":
            return self.number(env[node[1]])
        if kind == "const":
            return self.consts[node[1]]
        if kind == "fn":
            return self.functions[node[1]](self.value(node[2], env))
        args = [self.value(a, env) for a in node[1:]]
        if kind == "neg":
            return 0 - args[0]  # not -x: a signed zero would flip sqrt(-1) to -i
        if kind == "add":
            return args[0] + args[1]
        if kind == "mul":
            return args[0] * args[1]
        if kind == "div":
            if args[1] == 0:
                raise Undefined()
            return args[0] / args[1]
        if kind == "pow":
            return self.power(args[0], args[1])
        if kind == "abs":
            return abs(args[0])
        return self.lib.gamma(args[0] + 1)  # fact: arguments are small integer literals


FLOAT = _Numeric(cmath, lambda q: complex(q.numerator / q.denominator), _float_pow,
                 {"pi": complex(math.pi), "e": complex(math.e), "i": 1j, "oo": complex(math.inf)})
MP = _Numeric(_MP, lambda q: _MP.mpf(q.numerator) / q.denominator, _mp_pow,
              {"pi": _MP.mpc(_MP.pi), "e": _MP.mpc(_MP.e), "i": _MP.mpc(0, 1), "oo": _MP.mpc(_MP.inf)})


def symbols(node: Node) -> frozenset[str]:
    if node[0] == "sym":
        return frozenset((node[1],))
    found: frozenset[str] = frozenset()
    for child in node[1:]:
        if isinstance(child, tuple):
            found |= symbols(child)
    return found


@lru_cache(maxsize=1024)
def _coordinate(index: int, name: str) -> Fraction:
    """A fixed pseudo-random non-integer rational in [-9, 9] for variable `name` at point `index`."""
    rng = random.Random(f"{index}:{name}")
    value = Fraction(rng.randint(1, 9 * 13 - 1), rng.choice((7, 11, 13)))
    return value if index % 2 == 0 else -value


def points(a: Node, b: Node) -> list[dict[str, Fraction]]:
    names = sorted(symbols(a) | symbols(b))
    if not names:
        return [{}]
    return [{n: _coordinate(i, n) for n in names} for i in range(POINTS)]


def _close(x: Any, y: Any, tolerance: Any) -> bool:
    if not (_finite(x) and _finite(y)):
        return bool(x == y)
    return bool(abs(x - y) <= tolerance * max(1, abs(x), abs(y)))


def _finite(x: Any) -> bool:
    return cmath.isfinite(x) if isinstance(x, complex) else bool(_MP.isfinite(x))


def agree_at(a: Node, b: Node, env: dict[str, Fraction]) -> bool:
    """Same value at one point: exactly when both are rational, else floats then mpmath."""
    try:
        return exact(a, env) == exact(b, env)
    except NotExact:
        pass
    except (Undefined, ValueError, OverflowError):
        return False
    try:
        if not _close(FLOAT.value(a, env), FLOAT.value(b, env), FLOAT_REJECT):
            return False
    except (OverflowError, ValueError, ZeroDivisionError, Undefined):
        pass  # out of float range or a float artefact: let mpmath decide
    try:
        return _close(MP.value(a, env), MP.value(b, env), MP_TOLERANCE)
    except (Undefined, ValueError, ZeroDivisionError, OverflowError):
        return False


def values_equal(a: Node, b: Node) -> bool:
    """Equal numbers, or equal as functions of their variables."""
    if a == b:
        return True
    return all(agree_at(a, b, env) for env in points(a, b))


def proportional(a: Node, b: Node, positive: bool = False) -> bool:
    """a = k*b for one nonzero constant k (the sides of two equations, moved to one side); with
    `positive`, k > 0 (two inequalities). Only for expressions with variables: for numbers alone
    any two nonzero values would be "proportional"."""
    if not (symbols(a) | symbols(b)):
        return False
    ratio = ("div", a, b)
    try:
        values = [_value(ratio, env) for env in points(a, b)]
    except (Undefined, ValueError, ZeroDivisionError, OverflowError):
        return False
    first = values[0]
    if first == 0:
        return False
    if positive and not (first > 0 if isinstance(first, Fraction) else (abs(first.imag) <= MP_TOLERANCE * abs(first)
                                                                          and first.real > 0)):
        return False
    return all(v == first if isinstance(v, Fraction) and isinstance(first, Fraction)
               else _close(MP.number(v) if isinstance(v, Fraction) else v,
                           MP.number(first) if isinstance(first, Fraction) else first, MP_TOLERANCE)
               for v in values[1:])


def _value(node: Node, env: dict[str, Fraction]) -> Any:
    try:
        return exact(node, env)
    except NotExact:
        return MP.value(node, env)
