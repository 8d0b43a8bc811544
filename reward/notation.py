"""Notations rewritten into the LaTeX the grammar reads, and characters that make an answer void.

- Unicode math symbols: π × · ÷ − √ ∛ ∞ ≤ ≥ ≠ ± ∪ ∩ ∈ ∅, superscript and subscript digits
  (x² is x^{2}, never x2), vulgar fractions (3½ is the mixed number 3\\frac{1}{2}).
- TeX's {a \\over b} is \\frac{a}{b}.
- Void (the answer scores 0): an invisible format character (zero-width space, joiner, bidi
  control, soft hyphen; Unicode category Cf) anywhere but at the ends, which could hide inside a
  number, and any digit that is not ASCII 0-9 after NFKC (Arabic-Indic, Devanagari, ...): the
  grader never reads a digit of another script as the ASCII one. Fullwidth and mathematical
  digits (NFKC-equal to ASCII) are read as ASCII.
"""
from __future__ import annotations

import re
import unicodedata

_SYMBOLS = {
    "\u03c0": "\\pi ", "\u00d7": "\\times ", "\u00b7": "\\cdot ", "\u22c5": "\\cdot ", "\u2219": "\\cdot ",
    "\u00f7": "/", "\u2212": "-", "\u221e": "\\infty ", "\u2264": "\\le ", "\u2265": "\\ge ",
    "\u2260": "\\ne ", "\u00b1": "\\pm ", "\u222a": "\\cup ", "\u2229": "\\cap ", "\u2208": "\\in ",
    "\u2205": "\\emptyset ", "\u2044": "/", "\u2215": "/", "\u03b8": "\\theta ",
}
_SUPERSCRIPTS = dict(zip("\u2070\u00b9\u00b2\u00b3\u2074\u2075\u2076\u2077\u2078\u2079\u207a\u207b", "0123456789+-"))
_SUBSCRIPTS = dict(zip("\u2080\u2081\u2082\u2083\u2084\u2085\u2086\u2087\u2088\u2089", "0123456789"))
_SUPER_RUN = re.compile("[" + "".join(_SUPERSCRIPTS) + "]+")
_SUB_RUN = re.compile("[" + "".join(_SUBSCRIPTS) + "]+")
_VULGAR = re.compile("[\u00bc-\u00be\u2150-\u215e]")
_ROOT = re.compile(r"(\u221a|\u221b|\u221c)\s*(\d+(?:\.\d+)?|[a-zA-Z]|\\pi|\((?:[^()]|\([^()]*\))*\)|\{[^{}]*\})?")
_ROOT_INDEX = {"\u221a": "", "\u221b": "[3]", "\u221c": "[4]"}
_OVER = re.compile(r"\\over(?![a-zA-Z])")
MAX_OVER = 8  # \over rewrites per answer


def is_invisible(ch: str) -> bool:
    return unicodedata.category(ch) == "Cf"


def strip_invisible_ends(s: str) -> str:
    """Drop whitespace and invisible format characters at both ends."""
    i, j = 0, len(s)
    while i < j and (s[i].isspace() or is_invisible(s[i])):
        i += 1
    while j > i and (s[j - 1].isspace() or is_invisible(s[j - 1])):
        j -= 1
    return s[i:j]


def has_invisible(s: str) -> bool:
    return not s.isascii() and any(is_invisible(ch) for ch in s)


def foreign_digits(s: str) -> bool:
    """A digit or numeral outside ASCII 0-9 (call after NFKC)."""
    return not s.isascii() and any(ord(ch) > 127 and unicodedata.category(ch) in ("Nd", "Nl", "No") for ch in s)


def _vulgar(match: re.Match[str]) -> str:
    num, _, den = unicodedata.normalize("NFKC", match.group(0)).partition("\u2044")
    return f"\\frac{{{num}}}{{{den}}}"


def _root(match: re.Match[str]) -> str:
    sign, arg = match.group(1), match.group(2)
    head = "\\sqrt" + _ROOT_INDEX[sign]
    if arg is None:
        return head
    return head + (arg if arg.startswith("{") else "{" + arg + "}")


def unicode_to_latex(s: str) -> str:
    """Rewrite Unicode math symbols into LaTeX (before NFKC, which would turn x² into x2)."""
    if s.isascii():
        return s
    s = _SUPER_RUN.sub(lambda m: "^{" + "".join(_SUPERSCRIPTS[c] for c in m.group(0)) + "}", s)
    s = _SUB_RUN.sub(lambda m: "_{" + "".join(_SUBSCRIPTS[c] for c in m.group(0)) + "}", s)
    s = _VULGAR.sub(_vulgar, s)
    s = _ROOT.sub(_root, s)
    return "".join(_SYMBOLS.get(ch, ch) for ch in s)


def _enclosing_group(s: str, at: int) -> tuple[int, int]:
    """(start, end) of the content of the innermost {...} around position `at` (the whole string
    when there is none)."""
    depth, start = 0, 0
    for i in range(at - 1, -1, -1):
        if s[i] == "}" and (i == 0 or s[i - 1] != "\\"):
            depth += 1
        elif s[i] == "{" and (i == 0 or s[i - 1] != "\\"):
            if depth == 0:
                start = i + 1
                break
            depth -= 1
    else:
        return 0, len(s)
    depth = 0
    for j in range(at, len(s)):
        if s[j] == "{" and s[j - 1] != "\\":
            depth += 1
        elif s[j] == "}" and s[j - 1] != "\\":
            if depth == 0:
                return start, j
            depth -= 1
    return start, len(s)


def rewrite_over(s: str) -> str:
    """{a \\over b} -> {\\frac{a}{b}}; a bare "a \\over b" -> \\frac{a}{b}."""
    for _ in range(MAX_OVER):
        match = _OVER.search(s)
        if not match:
            return s
        start, end = _enclosing_group(s, match.start())
        numerator, denominator = s[start: match.start()].strip(), s[match.end(): end].strip()
        s = s[:start] + f"\\frac{{{numerator}}}{{{denominator}}}" + s[end:]
    return s
