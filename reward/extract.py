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
