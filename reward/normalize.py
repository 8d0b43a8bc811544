"""String normalisation of answers before parsing: strip presentation, keep meaning.

Each rewrite is listed here so the rules stay explicit:
  - answers longer than MAX_ANSWER_CHARS or holding control characters normalise to "" (score 0);
  - invisible format characters (zero-width spaces, bidi overrides) are removed;
  - NFKC (fullwidth digits become ASCII; confusables such as Cyrillic letters stay foreign);
  - spacing commands, \\left/\\right, \\displaystyle, $ and \\$, % and \\%, degree marks are dropped
    (so 10\\% == 10 and 30^\\circ == 30, but 10\\% != 0.1 and 30^\\circ != \\pi/6);
  - \\dfrac/\\tfrac become \\frac, \\cdot/\\times become *; \\le, \\ge, \\ne become <=, >=, !=;
  - \\mathbb{R} becomes (-\\infty,\\infty); \\varnothing and \\{\\} become \\emptyset;
  - a trailing unit, in \\text{...}, as a word from _UNIT_WORDS or as words of 3+ letters after a
    space, is dropped after a value (5 cm, 12 students);
  - "and"/"or" between answers become a comma (2 \\text{ and } 3 is the list 2, 3);
  - \\text{(C)} and (C) become C; other \\text{...} wrappers are unwrapped;
  - thousands separators go: 1,000 / 1\\,000 / 1{,}000 / 10,\\!080;
  - "x \\in S" becomes S; a numeral's base subscript (2516_8) is dropped;
  - a mixed number 1\\frac{4}{5} becomes (1+4/5).
"""
from __future__ import annotations

import re
import unicodedata
from functools import lru_cache

MAX_ANSWER_CHARS = 1000

_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")
_INVISIBLE = re.compile(r"[\u200b-\u200f\u202a-\u202e\u2060-\u2064\ufeff]")  # zero-width, bidi controls
_SPACING = re.compile(r"(?<!\\)\\[,;:! ]|\\(?:left|right|displaystyle|big|Big|bigl|bigr|Bigl|Bigr)\b")
_REPLACE = [
    ("{,}", ""), ("\\dfrac", "\\frac"), ("\\tfrac", "\\frac"), ("^{\\circ}", ""), ("^\\circ", ""),
    ("\\circ", ""), ("\u00b0", ""), ("\\%", ""), ("%", ""), ("\\$", ""), ("$", ""), ("\\cdot", "*"),
    ("\\times", "*"), ("\u2212", "-"), ("\\leq", "<="), ("\\geq", ">="), ("\\le", "<="),
    ("\\ge", ">="), ("\\neq", "!="), ("\\ne", "!="), ("\\mathbb{R}", "(-\\infty,\\infty)"),
    ("\\varnothing", "\\emptyset"), ("\\{\\}", "\\emptyset"), ("\\lbrace", "\\{"),
    ("\\rbrace", "\\}"), ("\\lvert", "|"), ("\\rvert", "|"), ("\\vert", "|"), ("\\mathrm{e}", "e"),
]
_UNIT_WORDS = (r"(?:cm|mm|km|kg|mg|ml|units?|degrees?|dollars?|cents?|inches|inch|feet|foot|ft|"
               r"meters?|metres?|miles?|hours?|hrs?|minutes?|mins?|seconds?|secs?|days?|weeks?|"
               r"years?|sq|square|mph|liters?|litres?|grams?|pounds?|lbs?|ounces?|oz|radians?|percent)")
_TEXT_UNIT = re.compile(r"(?<=[\w}).])\s*\\(?:text|mbox|mathrm|textrm)\s*\{\s*[a-zA-Z. ]+\}\s*(?:\^\{?\d\}?)?$")
_BARE_UNIT = re.compile(r"(?<=[\d}).])\s*(?:" + _UNIT_WORDS + r"\s*)+(?:\^\{?\d\}?)?$"
                        r"|(?<=[\d}).])(?:\s+[a-zA-Z]{3,})+(?:\^\{?\d\}?)?$")  # "5 cm", "12 students"
_AND = re.compile(r"\s*(?:\\text\s*\{\s*(?:and|or)\s*\}|\b(?:and|or)\b)\s*")
_CHOICE = re.compile(r"\\text(?:bf)?\s*\{\s*\(([A-E])\)\s*\}|^\(([A-E])\)$")
_TEXT = re.compile(r"\\(?:text|textbf|textrm|mathrm|mbox|mathbf|textit|mathit|operatorname)\s*\{([^{}]*)\}")
_THOUSANDS = re.compile(r"-?\d{1,3}(?:,\d{3})+(?:\.\d+)?")
_IN_SET = re.compile(r"^[a-zA-Z]\s*\\in\s*")
_BASE = re.compile(r"^([0-9A-F]+)_\{?\d+\}?$")
_MIXED = re.compile(r"^(-?)(\d+)\s*\\frac(?:\{(\d+)\}\{(\d+)\}|(\d)(\d))$")
_EQUATION = re.compile(r"[a-zA-Z]\s*=\s*[^=<>]+")


@lru_cache(maxsize=16384)
def normalize(answer: str) -> str:
    if len(answer) > MAX_ANSWER_CHARS or _CONTROL.search(answer):
        return ""
    s = unicodedata.normalize("NFKC", _INVISIBLE.sub("", answer)).strip()
    s = re.sub(r",\\!\s*", ",", s)  # 10,\!080 and 11,\! 111,\! 100
    s = _SPACING.sub("", s)
    for old, new in _REPLACE:
        s = s.replace(old, new)
    s = _AND.sub(", ", s)  # "2 \\text{ and } 3" is the list 2, 3
    s = _CHOICE.sub(lambda m: m.group(1) or m.group(2), s)
    s = _TEXT_UNIT.sub("", s.strip())
    s = _TEXT.sub(r"\1", s)
    s = s.strip().rstrip(".").strip()
    s = _BARE_UNIT.sub("", s).strip()
    s = _IN_SET.sub("", s)
    if _THOUSANDS.fullmatch(s):
        s = s.replace(",", "")
    if _EQUATION.fullmatch(s):  # "x = 3" -> "3"
        s = s.split("=", 1)[1].strip()
    choice = re.fullmatch(r"\(?([A-E])\)?", s)
    if choice:
        s = choice.group(1)
    s = _BASE.sub(r"\1", s)
    mixed = _MIXED.match(s)
    if mixed:
        sign, whole, num, den = mixed.group(1), mixed.group(2), mixed.group(3) or mixed.group(5), mixed.group(4) or mixed.group(6)
        s = f"{sign}({whole}+{num}/{den})"
    return " ".join(s.split())
