"""String normalisation of answers before parsing: strip presentation, keep meaning.

Each rewrite is listed here so the rules stay explicit:
  - answers longer than MAX_ANSWER_CHARS or holding control characters normalise to "" (score 0),
    and so do answers with an invisible character inside or a non-ASCII digit (reward.notation);
  - Unicode math symbols become LaTeX (π, ×, −, √, x², ½: reward.notation), then NFKC (fullwidth
    digits become ASCII; confusables such as Cyrillic letters stay foreign);
  - spacing commands, \\left/\\right, \\displaystyle, $ and \\$, degree marks (^\\circ, \\degree, °)
    are dropped; {a \\over b} becomes \\frac{a}{b};
  - a percent mark (%, \\%, "percent", "pct") is dropped and remembered: reward.equivalence then
    reads 25% as 25 or 0.25 (see there);
  - \\dfrac/\\tfrac/\\cfrac become \\frac, \\cdot/\\times become *; \\le, \\ge, \\ne become <=, >=, !=;
  - \\mathbb{R} becomes (-\\infty,\\infty); \\varnothing and \\{\\} become \\emptyset;
  - a trailing unit, in \\text{...}, as a word from _UNIT_WORDS or as words of 3+ letters after a
    value, is dropped (5 cm, 12 students) and, when it is a known unit, remembered (reward.units);
  - "and"/"or" between answers and ";" become a comma (2 \\text{ and } 3 is the list 2, 3); groups of
    assignments to the same names separated by ";" become value tuples ordered by name
    (p=5,q=2;p=7,q=2 is (5,2),(7,2), as x = 4, y = 7 is (4, 7) in reward.equivalence);
  - \\text{(C)} and (C) become C; other \\text{...} wrappers are unwrapped;
  - thousands separators go: 1,000 / 1\\,000 / 1{,}000 / 1{, }000 / 10,\\!080 / 1 000 (spaces, thin spaces);
  - "x \\in S" becomes S; \\begin{cases} a \\\\ b \\end{cases} becomes the list a, b;
  - a numeral with a base subscript (2516_8) keeps its digits and its base (`base`), and
    reward.equivalence reads it in that base;
  - a mixed number, 1\\frac{4}{5} or 1 4/5, becomes (1+4/5).
"v = ..." prefixes and equations are left to reward.equivalence, which reads both sides.
"""
from __future__ import annotations

import re
import unicodedata
from functools import lru_cache
from typing import NamedTuple

from reward.notation import foreign_digits, has_invisible, rewrite_over, strip_invisible_ends, unicode_to_latex
from reward.units import canonical_unit

MAX_ANSWER_CHARS = 1000


class Normalized(NamedTuple):
    text: str  # "" when the answer is void (scores 0)
    unit: str | None  # the canonical trailing unit (reward.units), when it is a known one
    percent: bool  # the answer was written as a percentage
    base: int | None = None  # the answer is a numeral with a base subscript (2516_8): text holds its digits


EMPTY = Normalized("", None, False)
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")
_DROPPED = re.compile(r"\\(?:left|right|displaystyle|textstyle|big|Big|bigl|bigr|Bigl|Bigr)(?![a-zA-Z])|(?<!\\)\\!")
_SPACING = re.compile(r"(?<!\\)\\(?:[,;: ]|(?:quad|qquad)(?![a-zA-Z]))|~")
_PERCENT = re.compile(r"\\?%|\s*\\text\s*\{\s*(?:percent|percentage|pct)\s*\}|\s*\b(?:percent|percentage|pct)\b")
_REPLACE = [
    ("{,}", ""), ("{, }", ""), ("\\dfrac", "\\frac"), ("\\tfrac", "\\frac"), ("\\cfrac", "\\frac"),
    ("^{\\circ}", ""), ("^\\circ", ""), ("^{\\degree}", ""), ("^\\degree", ""), ("\\textdegree", ""),
    ("\\degree", ""), ("\\circ", ""), ("\u00b0", ""), ("\\$", ""), ("$", ""), ("\\cdot", "*"),
    ("\\times", "*"), ("\\leq", "<="), ("\\geq", ">="), ("\\le", "<="), ("\\ge", ">="), ("\\lt", "<"),
    ("\\gt", ">"), ("\\neq", "!="), ("\\ne", "!="), ("\\mathbb{R}", "(-\\infty,\\infty)"),
    ("\\varnothing", "\\emptyset"), ("\\{\\}", "\\emptyset"), ("\\lbrace", "\\{"),
    ("\\rbrace", "\\}"), ("\\lvert", "|"), ("\\rvert", "|"), ("\\vert", "|"), ("\\mathrm{e}", "e"),
]
_UNIT_WORDS = (r"(?:cm|mm|km|kg|mg|ml|units?|degrees?|dollars?|cents?|inches|inch|feet|foot|ft|"
               r"meters?|metres?|miles?|hours?|hrs?|minutes?|mins?|seconds?|secs?|days?|weeks?|"
               r"years?|sq|square|mph|liters?|litres?|grams?|pounds?|lbs?|ounces?|oz|radians?)")
_TEXT_UNIT = re.compile(r"(?<=[\w}).])\s*\\(?:text|mbox|mathrm|textrm|textnormal|textbf)\s*\{\s*[a-zA-Z./ ]+\}"
                        r"\s*(?:\^\{?\d\}?)?$")
_BARE_UNIT = re.compile(r"(?<=[\d}).])\s*(?:" + _UNIT_WORDS + r"\s*)+(?:\^\{?\d\}?)?$"
                        r"|(?<=[\d}).])(?:\s+[a-zA-Z]{3,})+(?:\^\{?\d\}?)?$")  # "5 cm", "12 students"
_AND = re.compile(r"\s*(?:\\text\s*\{\s*(?:and|or)\s*\}|\b(?:and|or)\b)\s*")
_CHOICE = re.compile(r"\\text(?:bf)?\s*\{\s*\(([A-E])\)\s*\}|^\(([A-E])\)$")
_TEXT = re.compile(r"\\(?:text|textbf|textrm|textnormal|mathrm|mbox|mathbf|textit|mathit|operatorname)\s*\{([^{}]*)\}")
_THOUSANDS = re.compile(r"-?\d{1,3}(?:,\d{3})+(?:\.\d+)?")
_SPACED_THOUSANDS = re.compile(r"(?<![\w.])\d{1,3}(?: \d{3})+(?:\.\d+)?(?![\w.])")
_IN_SET = re.compile(r"^[a-zA-Z]\s*\\in\s*")
_BASE = re.compile(r"^([0-9A-Z]+)_\{?(\d+)\}?$")
_MIXED = re.compile(r"^(-?)(\d+)\s*\\frac(?:\{(\d+)\}\{(\d+)\}|(\d)(\d))$")
_ASSIGNMENT = re.compile(r"([a-zA-Z](?:_\{?\w+\}?)?)\s*=\s*([^=,;]+)")
_CASES = re.compile(r"^\\begin\{cases\}(.*)\\end\{cases\}$", re.S)
_PLAIN_MIXED = re.compile(r"^(-?)(\d+) (\d+)\s*/\s*(\d+)$")


def _assignment_groups(s: str) -> str:
    """Groups of assignments separated by ";" ("p=5,q=2;p=7,q=2"), each to the same distinct names,
    become the list of their value tuples ordered by name: (5,2),(7,2)."""
    if ";" not in s or "=" not in s:
        return s
    tuples, names = [], None
    for group in s.split(";"):
        pairs = [_ASSIGNMENT.fullmatch(item.strip()) for item in group.split(",")]
        if not all(pairs) or len(pairs) < 2:
            return s
        values = {m.group(1): m.group(2).strip() for m in pairs if m}
        if len(values) != len(pairs) or (names is not None and set(values) != names):
            return s
        names = set(values)
        tuples.append("(" + ",".join(values[name] for name in sorted(values)) + ")")
    return ",".join(tuples)


def _strip_unit(s: str) -> tuple[str, str | None]:
    """The answer without its trailing unit, and the unit's canonical name when it is a known one."""
    unit = None
    text_unit = _TEXT_UNIT.search(s)
    if text_unit:
        unit, s = canonical_unit(text_unit.group()), s[:text_unit.start()]
    s = _TEXT.sub(r"\1", s).strip().rstrip(".").strip()
    bare = _BARE_UNIT.search(s)
    if bare:
        unit, s = unit or canonical_unit(bare.group()), s[:bare.start()].strip()
    return s, unit


def _mixed_number(s: str) -> str:
    mixed = _MIXED.match(s)
    if mixed:
        sign, whole = mixed.group(1), mixed.group(2)
        num, den = mixed.group(3) or mixed.group(5), mixed.group(4) or mixed.group(6)
        return f"{sign}({whole}+{num}/{den})"
    plain = _PLAIN_MIXED.match(s)
    if plain:
        sign, whole, num, den = plain.groups()
        return f"{sign}({whole}+{num}/{den})"
    return s


@lru_cache(maxsize=16384)
def normalize_answer(answer: str) -> Normalized:
    """The normalised text of an answer, with its unit and percent mark (EMPTY when void)."""
    if len(answer) > MAX_ANSWER_CHARS or _CONTROL.search(answer):
        return EMPTY
    s = strip_invisible_ends(answer)
    if has_invisible(s):
        return EMPTY
    s = unicodedata.normalize("NFKC", unicode_to_latex(s))
    if foreign_digits(s):
        return EMPTY
    s = re.sub(r",\\!\s*", ",", s)  # 10,\!080 and 11,\! 111,\! 100
    s = _assignment_groups(_SPACING.sub(" ", _DROPPED.sub("", s))).replace(";", ",")
    s = rewrite_over(s)
    percent = bool(_PERCENT.search(s))
    s = _PERCENT.sub("", s)
    for old, new in _REPLACE:
        s = s.replace(old, new)
    s = re.sub(r",(?:\s*,)+", ",", _AND.sub(", ", s))  # "2 \\text{ and } 3" is the list 2, 3; "1, and 2" too
    s = _CHOICE.sub(lambda m: m.group(1) or m.group(2), s)
    s, unit = _strip_unit(s.strip())
    s = _IN_SET.sub("", s)
    cases = _CASES.match(s)
    if cases:  # a system written as cases is the list of its rows
        s = ", ".join(row.replace("&", " ").strip() for row in cases.group(1).split("\\\\") if row.strip())
    s = " ".join(s.split())
    if _THOUSANDS.fullmatch(s):
        s = s.replace(",", "")
    s = _SPACED_THOUSANDS.sub(lambda m: m.group().replace(" ", ""), s)
    choice = re.fullmatch(r"\(?([A-E])\)?", s)
    if choice:
        s = choice.group(1)
    numeral = _BASE.match(s)
    if numeral and base_value(numeral.group(1), int(numeral.group(2))) is not None and (
            re.search(r"\d", numeral.group(1)) or numeral.group(2) == "16"):  # A_{11} is a name, FF_{16} a numeral
        return Normalized(numeral.group(1), unit, percent, int(numeral.group(2)))
    return Normalized(_mixed_number(s), unit, percent)


def base_value(digits: str, base: int) -> int | None:
    """The value of `digits` read in `base` (2 to 36), or None when a digit is not one of that base."""
    if not 2 <= base <= 36 or len(digits) > 60:
        return None
    try:
        return int(digits, base)
    except ValueError:
        return None


def normalize(answer: str) -> str:
    """The normalised text alone ("" when the answer is void)."""
    return normalize_answer(answer).text
