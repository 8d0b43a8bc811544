"""A whitelist parser for LaTeX math answers that builds a small tuple AST.

Model output is hostile: it never reaches eval, exec, sympify or parse_expr. The tokenizer
accepts only numbers, single-letter variables, a fixed set of LaTeX commands and operators;
anything else makes the answer unparseable (it can then only match the gold answer as a string).
Pre-screens (length, bracket nesting, token count, digits, exponent size, factorial argument)
run before any arithmetic, so no input can make the evaluator build astronomically large numbers.

AST nodes are hashable tuples (cached freely):
  ("num", Fraction) ("sym", name) ("const", "pi"|"e"|"i"|"oo") ("neg", a) ("add", a, b)
  ("mul", a, b) ("div", a, b) ("pow", a, b) ("fact", a) ("abs", a) ("fn", name, a)
"""
from __future__ import annotations

import math
import re
from fractions import Fraction
from functools import lru_cache

MAX_CHARS = 400
MAX_TOKENS = 200
MAX_DEPTH = 30
MAX_DIGITS = 60
MAX_EXPONENT = 10_000  # a literal exponent larger than this is refused
MAX_POWER_NESTING = 2  # a^{b^{c}} is allowed, a^{b^{c^{d}}} is not
MAX_POWER_DEPTH = 6  # powers nested in any position, ((x^2)^3)^4 is 3
MAX_FACTORIAL = 100

Node = tuple
_NUMBER = r"(\d*\.\d*\\overline\{\d+\}|\d+(?:\.\d*)?[eE][-+]?\d+|\d+\.\d*|\.\d+|\d+)"
_TOKEN = re.compile(r"\s*(?:" + _NUMBER + r"|(\\[a-zA-Z]+)|([a-zA-Z])|([-+*/^()\[\]{}!|_]))", re.ASCII)
_FUNCTIONS = {"\\sin", "\\cos", "\\tan", "\\cot", "\\sec", "\\csc", "\\arcsin", "\\arccos",
              "\\arctan", "\\ln", "\\log", "\\exp", "\\sinh", "\\cosh", "\\tanh"}
_CONSTANTS = {"\\pi": ("const", "pi"), "\\infty": ("const", "oo"), "\\inf": ("const", "oo"),
              "e": ("const", "e"), "i": ("const", "i")}
_COMMANDS = _FUNCTIONS | set(_CONSTANTS) | {"\\frac", "\\sqrt", "\\binom"}
_STARTS_ATOM = {"(", "{", "\\frac", "\\sqrt", "\\binom"} | _FUNCTIONS | set(_CONSTANTS)
MAX_BINOM = 1000


class ParseError(ValueError):
    pass


def number_value(tok: str) -> Fraction:
    """Exact value of a number token: integers, decimals, 1.5e3, and repeating 0.1\\overline{6}."""
    if len(tok) > MAX_DIGITS:
        raise ParseError("number too long")
    if "\\overline" in tok:
        head, _, rep = tok.partition("\\overline{")
        rep = rep.rstrip("}")
        whole, _, frac = head.partition(".")
        shift = Fraction(1, 10 ** len(frac))
        return Fraction(whole + "." + frac if frac else whole or "0") + Fraction(int(rep), 10 ** len(rep) - 1) * shift
    if "e" in tok.lower():
        mantissa, _, exponent = tok.lower().partition("e")
        if abs(int(exponent)) > MAX_EXPONENT:
            raise ParseError("exponent too large")
        return Fraction(mantissa) * Fraction(10) ** int(exponent)
    return Fraction(tok)


def _is_number(tok: str) -> bool:
    return tok[0].isdigit() or tok[0] == "."


def max_nesting(text: str) -> int:
    depth = deepest = 0
    for ch in text:
        if ch in "([{":
            depth += 1
            deepest = max(deepest, depth)
        elif ch in ")]}":
            depth -= 1
    return deepest


def tokenize(text: str) -> list[str]:
    if len(text) > MAX_CHARS:
        raise ParseError("answer too long")
    if max_nesting(text) > MAX_DEPTH:
        raise ParseError("nesting too deep")
    tokens, pos = [], 0
    text = text.rstrip()
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if not m:
            raise ParseError(f"unexpected character {text[pos]!r}")
        tok = next(g for g in m.groups() if g is not None)
        if tok.startswith("\\") and tok not in _COMMANDS:
            head = next((c for c in ("\\frac", "\\sqrt") if tok.startswith(c)), None)
            if head is None:
                raise ParseError(f"unsupported command {tok}")
            tokens += [head, *tok[len(head):-1]]  # \fracab is \frac a b (Minerva's reading)
            tok = tok[-1]
        if m.group(1) is not None and tokens and _is_number(tokens[-1]) and tokens[-2:-1] not in (["_"], ["^"]):
            raise ParseError("two numbers in a row")  # "2 3", "5 2/3": never a product (\log_2 8 is fine)
        tokens.append(tok)
        pos = m.end()
        if len(tokens) > MAX_TOKENS:
            raise ParseError("too many tokens")
    return tokens


def power_nesting(node: Node) -> int:
    """Height of the tallest power tower: exponents of exponents (a^{b^{c}} is 2). A power of a power,
    ((x^2-2)^{1/3})^2, is no taller than its parts: literal exponents are bounded (MAX_EXPONENT)."""
    if node[0] == "pow":
        return max(power_nesting(node[1]), 1 + power_nesting(node[2]))
    return max((power_nesting(c) for c in node[1:] if isinstance(c, tuple)), default=0)


def power_depth(node: Node) -> int:
    """Powers nested in any position."""
    inner = max((power_depth(c) for c in node[1:] if isinstance(c, tuple)), default=0)
    return inner + (node[0] == "pow")


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

    def nest(self) -> None:
        self.depth += 1
        if self.depth > MAX_DEPTH:
            raise ParseError("nesting too deep")

    def parse(self) -> Node:
        value = self.expr()
        if self.peek() is not None:
            raise ParseError(f"trailing token {self.peek()}")
        return value

    def expr(self) -> Node:
        self.nest()
        value = self.term()
        while self.peek() in ("+", "-"):
            op = self.take()
            rhs = self.term()
            value = ("add", value, rhs if op == "+" else ("neg", rhs))
        self.depth -= 1
        return value

    def term(self) -> Node:
        value = self.unary()
        while True:
            tok = self.peek()
            if tok in ("*", "/"):
                self.take()
                value = (("mul" if tok == "*" else "div"), value, self.unary())
            elif tok is not None and (tok[0].isalnum() or tok[0] == "." or tok in _STARTS_ATOM):
                value = ("mul", value, self.power())  # implicit multiplication: 2\pi, 3x, 2(1+x)
            else:
                return value

    def unary(self) -> Node:
        if self.peek() in ("-", "+"):
            self.nest()
            sign = self.take()
            inner = self.unary()
            self.depth -= 1
            return ("neg", inner) if sign == "-" else inner
        return self.power()

    def power(self) -> Node:
        base = self.postfix()
        if self.peek() != "^":
            return base
        self.take("^")
        exponent = self.group() if self.peek() == "{" else self.signed_atom()
        return make_pow(base, exponent)

    def signed_atom(self) -> Node:
        if self.peek() == "-":
            self.take()
            return ("neg", self.postfix())
        return self.postfix()

    def postfix(self) -> Node:
        value = self.atom()
        while self.peek() == "!":
            self.take()
            if value[0] != "num" or value[1].denominator != 1 or not 0 <= value[1] <= MAX_FACTORIAL:
                raise ParseError("factorial only of small integer literals")
            value = ("fact", value)
        return value

    def group(self) -> Node:
        """A braced group, or a single digit/letter as in \\frac12 or \\sqrt2."""
        if self.peek() == "{":
            self.take("{")
            value = self.expr()
            self.take("}")
            return value
        tok = self.take()
        if tok.isdigit():
            if len(tok) > 1:
                self.tokens.insert(self.pos, tok[1:])
            return ("num", Fraction(int(tok[0])))
        if len(tok) == 1 and tok.isalpha():
            return _CONSTANTS.get(tok, ("sym", tok))
        raise ParseError(f"expected a group, got {tok}")

    def atom(self) -> Node:
        tok = self.take()
        if tok[0].isdigit() or tok[0] == ".":
            return ("num", number_value(tok))
        if tok in _CONSTANTS:
            return _CONSTANTS[tok]
        if len(tok) == 1 and tok.isalpha():
            return ("sym", tok)
        if tok in ("(", "{", "["):
            value = self.expr()
            self.take({"(": ")", "{": "}", "[": "]"}[tok])
            return value
        if tok == "|":
            value = self.expr()
            self.take("|")
            return ("abs", value)
        if tok == "\\frac":
            return ("div", self.group(), self.group())
        if tok == "\\sqrt":
            return self.root()
        if tok == "\\binom":
            n, k = self.group(), self.group()
            if any(v[0] != "num" or v[1].denominator != 1 or not 0 <= v[1] <= MAX_BINOM for v in (n, k)):
                raise ParseError("binomial only of small integer literals")
            return ("num", Fraction(math.comb(int(n[1]), int(k[1]))))
        if tok in _FUNCTIONS:
            return self.function(tok[1:])
        raise ParseError(f"unexpected token {tok}")

    def root(self) -> Node:
        index: Node = ("num", Fraction(2))
        if self.peek() == "[":
            self.take("[")
            index = self.expr()
            self.take("]")
        return make_pow(self.group(), ("div", ("num", Fraction(1)), index))

    def function(self, name: str) -> Node:
        """\\sin x, \\sin(x), \\sin{x}, \\sin 2x (= sin(2x)), \\sin^2 x (the square of the sine),
        \\log_b x (= ln x / ln b)."""
        base = None
        if name == "log" and self.peek() == "_":
            self.take("_")
            base = self.group()
        exponent = None
        if self.peek() == "^":
            self.take("^")
            exponent = self.group()
        bracketed = self.peek() in ("(", "{")
        argument = self.power()
        while not bracketed and self.peek() is not None and (self.peek()[0].isalnum() or self.peek()[0] == "."):
            argument = ("mul", argument, self.power())  # \sin 2x: the argument is the product 2x
        value = ("fn", name, argument)
        if base is not None:
            value = ("div", ("fn", "ln", argument), ("fn", "ln", base))
        return make_pow(value, exponent) if exponent is not None else value


def make_pow(base: Node, exponent: Node) -> Node:
    """base^exponent, refused when a literal exponent is huge or powers are stacked (9^{9^{9^9}})."""
    literal = exponent[1] if exponent[0] == "num" else (
        exponent[1][1] if exponent[0] == "neg" and exponent[1][0] == "num" else None)
    if literal is not None and abs(literal) > MAX_EXPONENT:
        raise ParseError("exponent too large")
    node = ("pow", base, exponent)
    if power_nesting(node) > MAX_POWER_NESTING or power_depth(node) > MAX_POWER_DEPTH:
        raise ParseError("power tower too deep")
    return node


@lru_cache(maxsize=16384)
def parse_ast(text: str) -> Node | None:
    """The AST of an answer string, or None when it is outside the grammar (cached)."""
    try:
        return _Parser(tokenize(text)).parse()
    except (ParseError, RecursionError, ValueError, ZeroDivisionError):
        return None


def parse(text: str) -> Node:
    """The AST of an answer string; raises ParseError when it is outside the grammar (uncached)."""
    return _Parser(tokenize(text)).parse()
