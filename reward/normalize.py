"""String normalisation of answers before parsing: strip presentation, keep meaning."""
from __future__ import annotations

import re
import unicodedata

_TEXT = re.compile(r"\\(?:text|textbf|mathrm|mbox|mathbf)\s*\{([^{}]*)\}")
_UNITS = re.compile(r"\s*(?:\\,|\\;|\\ )?\s*\\?(?:text\{)?\s*(?:cm|m|km|kg|g|s|units?|degrees?|dollars?|cents?|"
                    r"inches|inch|feet|foot|ft|meters?|hours?|minutes?|seconds?|days?|sq|square)\s*\}?\s*(\^\{?\d\}?)?$")
_REPLACE = [
    ("\\left", ""), ("\\right", ""), ("\\!", ""), ("\\,", ""), ("\\;", ""), ("\\:", ""), ("\\ ", ""),
    ("\\dfrac", "\\frac"), ("\\tfrac", "\\frac"), ("\\displaystyle", ""), ("^\\circ", ""), ("^{\\circ}", ""),
    ("\\circ", ""), ("\\%", ""), ("%", ""), ("\\$", ""), ("$", ""), ("\\cdot", "*"), ("\\times", "*"),
    ("{,}", ""), ("\u2212", "-"), ("\\le", "<="), ("\\ge", ">="),
]


def normalize(answer: str) -> str:
    s = unicodedata.normalize("NFKC", answer).strip()
    for old, new in _REPLACE:
        s = s.replace(old, new)
    s = _UNITS.sub("", s)
    s = _TEXT.sub(r"\1", s)
    s = s.strip().rstrip(".").strip()
    if re.fullmatch(r"-?\d{1,3}(,\d{3})+(\.\d+)?", s):  # thousands separators
        s = s.replace(",", "")
    if re.fullmatch(r"[a-zA-Z]\s*=\s*[^=]+", s):  # "x = 3" -> "3"
        s = s.split("=", 1)[1].strip()
    choice = re.fullmatch(r"\(?([A-E])\)?", s)
    if choice:
        s = choice.group(1)
    return " ".join(s.split())
