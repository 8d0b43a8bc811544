"""Final-answer extraction: the content of the last brace-matched \\boxed{...} or \\fbox{...}."""
from __future__ import annotations

import re

MAX_RESPONSE_CHARS = 200_000  # longer responses are judged on their tail only
_BOX = re.compile(r"\\(?:boxed|fbox)\s*\{")


def last_boxed(text: str) -> str | None:
    """Return the last complete boxed answer, or None if there is none or it is truncated.

    Only the last box counts (several boxes never merge), and an unclosed brace means the
    response was cut off, which scores nothing.
    """
    text = text[-MAX_RESPONSE_CHARS:]
    starts = [m.end() for m in _BOX.finditer(text)]
    for start in reversed(starts):
        depth, i = 1, start
        while i < len(text) and depth:
            ch = text[i]
            if ch == "\\" and i + 1 < len(text):
                i += 2
                continue
            depth += (ch == "{") - (ch == "}")
            i += 1
        if depth == 0:
            return text[start: i - 1].strip()
        return None  # the last box is open: truncated output
    return None


_CODE = re.compile(r"```|\b(?:def|return|import|lambda|print|eval|exec|open|system)\b|__|(?<!\\);|==|=>|\w\.\w+\(")
_FALLBACK = re.compile(r"(?:final answer|the answer)\s*(?:is|=|:)\s*:?\s*\$*(.+?)\$*\s*\.?\s*$",
                       re.IGNORECASE | re.MULTILINE)
FALLBACK_CHARS = 2_000  # fallback phrases are looked for in the tail only


def looks_like_code(answer: str) -> bool:
    """A box holding code (a fence, keywords, statements) is not an answer and scores 0."""
    return bool(_CODE.search(answer))


def extract_answer(text: str, fallbacks: bool = False) -> tuple[str | None, bool]:
    """(answer, boxed). Without a complete box, and with fallbacks on, the last "The answer is X"
    line of the tail is used (off in training: no box earns no reward)."""
    boxed = last_boxed(text)
    if boxed is not None:
        return (None if looks_like_code(boxed) else boxed), True
    if not fallbacks or _BOX.search(text[-MAX_RESPONSE_CHARS:]):
        return None, False  # a truncated box is never rescued by a fallback
    matches = _FALLBACK.findall(text[-FALLBACK_CHARS:])
    if not matches or looks_like_code(matches[-1]):
        return None, False
    return matches[-1].strip(), False
