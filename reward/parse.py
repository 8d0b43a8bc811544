"""A whitelist parser for LaTeX math answers that builds sympy objects directly.

Model output is hostile: it never reaches eval, exec, sympify or parse_expr. The tokenizer
accepts only numbers, single-letter variables, a few LaTeX commands and operators; anything else
makes the answer unparseable (score 0). Size bounds stop huge numbers before sympy sees them.
"""
from __future__ import annotations

import math
import re

import sympy

MAX_CHARS = 300
MAX_TOKENS = 200
MAX_DEPTH = 30
MAX_DIGITS = 60
MAX_RESULT_DIGITS = 2000  # base**exponent with more digits than this is refused
MAX_FACTORIAL = 100

_TOKEN = re.compile(r"\s*(?:(\d+\.\d*|\.\d+|\d+)|(\\[a-zA-Z]+)|([a-zA-Z])|(\*\*|[-+*/^()\[\]{}!]))")
_COMMANDS = {"\\frac", "\\sqrt", "\\pi", "\\infty", "\\inf"}


class ParseError(ValueError):
    pass


def tokenize(text: str) -> list[str]:
    if len(text) > MAX_CHARS:
        raise ParseError("answer too long")
    tokens, pos = [], 0
    text = text.rstrip()
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if not m:
            raise ParseError(f"unexpected character {text[pos]!r}")
        tok = next(g for g in m.groups() if g is not None)
        if tok.startswith("\\") and tok not in _COMMANDS:
            raise ParseError(f"unsupported command {tok}")
        tokens.append("^" if tok == "**" else tok)
        pos = m.end()
    if len(tokens) > MAX_TOKENS:
        raise ParseError("too many tokens")
    return tokens


class _Parser:
    def __init__(self, tokens: list[str]) -> None:
        self.tokens, self.pos, self.depth = tokens, 0, 0

    def peek(self) -> str | None:
        return self.tokens[self.pos] if self.pos < len(self.tokens) else None

    def take(self, expected: str | None = None) -> str:
        tok = self.peek()
        if tok is None or (expected is not None and tok != expected):
            raise ParseError(f"expected {expected or 'a token'}, got {tok}")
        self.pos += 1
        return tok

    def parse(self) -> sympy.Expr:
        value = self.expr()
        if self.peek() is not None:
            raise ParseError(f"trailing token {self.peek()}")
        return value

    def expr(self) -> sympy.Expr:
        self.depth += 1
        if self.depth > MAX_DEPTH:
            raise ParseError("nesting too deep")
        value = self.term()
        while self.peek() in ("+", "-"):
            op = self.take()
            rhs = self.term()
            value = value + rhs if op == "+" else value - rhs
        self.depth -= 1
        return value

    def term(self) -> sympy.Expr:
        value = self.unary()
        while True:
            tok = self.peek()
            if tok in ("*", "/"):
                self.take()
                rhs = self.unary()
                if tok == "/" and rhs == 0:
                    raise ParseError("division by zero")
                value = value * rhs if tok == "*" else value / rhs
            elif tok is not None and (tok[0].isalnum() or tok in ("(", "\\frac", "\\sqrt", "\\pi", "{")):
                value = value * self.power()  # implicit multiplication: 2\pi, 3x, 2(1+x)
            else:
                return value

    def unary(self) -> sympy.Expr:
        if self.peek() in ("-", "+"):
            sign = -1 if self.take() == "-" else 1
            return sign * self.unary()
        return self.power()

    def power(self) -> sympy.Expr:
        base = self.postfix()
        if self.peek() != "^":
            return base
        self.take("^")
        exponent = self.group() if self.peek() == "{" else self.unary_atom()
        return bounded_pow(base, exponent)

    def unary_atom(self) -> sympy.Expr:
        if self.peek() == "-":
            self.take()
            return -self.postfix()
        return self.postfix()

    def postfix(self) -> sympy.Expr:
        value = self.atom()
        while self.peek() == "!":
            self.take()
            if not (value.is_Integer and 0 <= value <= MAX_FACTORIAL):
                raise ParseError("factorial argument out of range")
            value = sympy.factorial(value)
        return value

    def group(self) -> sympy.Expr:
        """A braced group, or a single digit/letter as in \\frac12."""
        if self.peek() == "{":
            self.take("{")
            value = self.expr()
            self.take("}")
            return value
        tok = self.take()
        if tok.isdigit():
            self.tokens.insert(self.pos, tok[1:]) if len(tok) > 1 else None
            return sympy.Integer(tok[0])
        if len(tok) == 1 and tok.isalpha():
            return sympy.Symbol(tok)
        raise ParseError(f"expected a group, got {tok}")

    def atom(self) -> sympy.Expr:
        tok = self.take()
        if tok[0].isdigit() or tok[0] == ".":
            if len(tok) > MAX_DIGITS:
                raise ParseError("number too long")
            return sympy.Integer(tok) if tok.isdigit() else sympy.Rational(tok)
        if len(tok) == 1 and tok.isalpha():
            return sympy.Symbol(tok)
        if tok == "\\pi":
            return sympy.pi
        if tok in ("\\infty", "\\inf"):
            return sympy.oo
        if tok in ("(", "{"):
            value = self.expr()
            self.take(")" if tok == "(" else "}")
            return value
        if tok == "\\frac":
            num, den = self.group(), self.group()
            if den == 0:
                raise ParseError("division by zero")
            return num / den
        if tok == "\\sqrt":
            index = sympy.Integer(2)
            if self.peek() == "[":
                self.take("[")
                index = self.expr()
                self.take("]")
            return bounded_pow(self.group(), 1 / index)
        raise ParseError(f"unexpected token {tok}")


def bounded_pow(base: sympy.Expr, exponent: sympy.Expr) -> sympy.Expr:
    """base**exponent, refused when the result could be astronomically large (e.g. 9^9^9)."""
    if exponent.is_number:
        magnitude = abs(float(exponent)) if exponent.is_finite else math.inf
        base_size = abs(float(base)) if base.is_number and base.is_finite and base.is_real else 10.0
        if magnitude > 10_000 or magnitude * math.log10(max(base_size, 10.0)) > MAX_RESULT_DIGITS:
            raise ParseError("exponent too large")
    elif exponent.free_symbols and base.is_number and abs(complex(base)) > 1e6:
        raise ParseError("symbolic power of a huge base")
    return sympy.Pow(base, exponent)


def parse_math(text: str) -> sympy.Expr:
    """Parse an answer string into a sympy expression, or raise ParseError."""
    return _Parser(tokenize(text)).parse()
