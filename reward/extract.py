"""Final-answer extraction.

`boxed` (training's default): the content of the last brace-matched \\boxed{...} or \\fbox{...};
no box, no answer. `boxed_or_phrase` (evaluation of Minerva-style or instruct models): without a
complete box, the last answer phrase of the response's tail counts: "The final answer is $15$. I
hope it is correct.", "Answer: 8", "**Final Answer**\\n100", "the answer is \\(42\\)." A truncated
box is never rescued by a phrase, and a box or phrase holding code scores nothing.
"""
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


EXTRACT_MODES: tuple[str, ...] = ("boxed", "boxed_or_phrase")
_CODE = re.compile(r"```|\b(?:def|return|import|lambda|print|eval|exec|open|system)\b|__|(?<!\\);|==|=>|\w\.\w+\(")
_PHRASE = re.compile(r"final\s+answer(?:\s*\*\*)?\s*(?:is\b|:|=)?|the\s+answer\s+is\b\s*:?"
                     r"|^[ \t]*(?:\*\*|#{1,6}[ \t]*)?answer(?:[ \t]*\*\*)?[ \t]*(?::|is\b|(?=[ \t]*(?:\$|\\\(|\\\[)))",
                     re.IGNORECASE | re.MULTILINE)
_SPANS = (("$$", "$$"), ("\\[", "\\]"), ("\\(", "\\)"), ("$", "$"))
_SENTENCE_END = re.compile(r"\.(?=\s|$)|\n")
PHRASE_TAIL_CHARS = 2_000  # answer phrases are looked for in the tail only
MAX_PHRASE_ANSWER = 200


def looks_like_code(answer: str) -> bool:
    """A box holding code (a fence, keywords, statements) is not an answer and scores 0."""
    return bool(_CODE.search(answer))


def _phrase_value(text: str) -> str | None:
    """The answer written right after a phrase: a math span, or the rest of the sentence."""
    rest = text.lstrip(" \t*:")
    if rest.startswith("\n"):  # "**Final Answer**\n100": the next non-empty line
        rest = rest.lstrip(" \t\n*:")
    for open_, close in _SPANS:
        if rest.startswith(open_):
            end = rest.find(close, len(open_))
            if end < 0 or (open_ in ("$", "\\(") and "\n" in rest[:end]):
                return None
            return rest[len(open_): end].strip() or None
    end = _SENTENCE_END.search(rest)
    value = rest[: end.start() if end else len(rest)].strip().rstrip("*").strip()
    if " is " in value:  # "The largest $n$ is 34"
        return _phrase_value(value.rsplit(" is ", 1)[1])
    return value.strip("$ ") or None


def last_phrase(text: str) -> str | None:
    """The answer of the last answer phrase in the response's tail that is followed by one."""
    tail = text[-PHRASE_TAIL_CHARS:]
    for match in reversed(list(_PHRASE.finditer(tail))):
        value = _phrase_value(tail[match.end(): match.end() + MAX_PHRASE_ANSWER * 2])
        if value is not None and len(value) <= MAX_PHRASE_ANSWER:
            return value
    return None


def extract_answer(text: str, mode: str = "boxed") -> tuple[str | None, bool]:
    """(answer, boxed) under an extraction mode (EXTRACT_MODES)."""
    if mode not in EXTRACT_MODES:
        raise ValueError(f"unknown extraction mode {mode!r}; expected one of {EXTRACT_MODES}")
    boxed = last_boxed(text)
    if boxed is not None:
        return (None if looks_like_code(boxed) else boxed), True
    if mode == "boxed" or _BOX.search(text[-MAX_RESPONSE_CHARS:]):
        return None, False  # a truncated box is never rescued by a phrase
    phrase = last_phrase(text)
    if phrase is None or looks_like_code(phrase):
        return None, False
    return phrase, False
