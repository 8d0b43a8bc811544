"""Final-answer extraction.

`boxed` (training's default): the content of the last brace-matched \\boxed{...} or \\fbox{...};
no box, no answer. `boxed_or_phrase` (evaluation of Minerva-style or instruct models): an
answer phrase counts too, when it comes after the last box: "The final answer is $15$. I hope it is
correct.", "Answer: 8", "**Final Answer**\\n100", "the answer is \\(42\\)."; the last one wins. A
truncated box is never rescued by a phrase, and a box or phrase holding code scores nothing.
"""
from __future__ import annotations

import re

MAX_RESPONSE_CHARS = 200_000  # longer responses are judged on their tail only
_BOX = re.compile(r"\\(?:boxed|fbox)\s*\{")


_BRACE_OR_ESCAPE = re.compile(r"\\.|[{}]", re.S)


def _box_end(text: str, start: int) -> int | None:
    """Index just past the brace that closes a box whose content starts at `start` (None: never).
    An escaped brace (\\{) does not count; only braces and escapes are visited."""
    depth = 1
    for match in _BRACE_OR_ESCAPE.finditer(text, start):
        token = match.group()
        if token == "{":
            depth += 1
        elif token == "}":
            depth -= 1
            if depth == 0:
                return match.end()
    return None


def _last_box(text: str) -> tuple[int, str | None]:
    """(where the last box starts, its content); content None when that box never closes;
    (-1, None) without a box."""
    matches = list(_BOX.finditer(text))
    if not matches:
        return -1, None
    end = _box_end(text, matches[-1].end())
    return matches[-1].start(), (None if end is None else text[matches[-1].end(): end - 1].strip())


def last_boxed(text: str) -> str | None:
    """Return the last complete boxed answer, or None if there is none or it is truncated.

    Only the last box counts (several boxes never merge), and an unclosed brace means the
    response was cut off, which scores nothing.
    """
    return _last_box(text[-MAX_RESPONSE_CHARS:])[1]


EXTRACT_MODES: tuple[str, ...] = ("boxed", "boxed_or_phrase")
_CODE = re.compile(r"```|\b(?:def|return|import|lambda|print|eval|exec|open|system)\b|__|(?<!\\);|==|=>|\w\.\w+\(")
_PHRASE = re.compile(r"final\s+answer(?:\s*\*\*)?\s*(?:is\b|:|=)?|the\s+answer\s+is\b\s*:?"
                     r"|^[ \t]*(?:\*\*|#{1,6}[ \t]*)?answer(?:[ \t]*\*\*)?[ \t]*(?::|is\b|(?=[ \t]*(?:\$|\\\(|\\\[)))",
                     re.IGNORECASE | re.MULTILINE)
_SPANS = (("$$", "$$"), ("\\[", "\\]"), ("\\(", "\\)"), ("$", "$"))
_QUOTED = re.compile(r'\\?["\u201c]([^"\u201d\n]{1,200}?)\\?["\u201d]')
_SENTENCE_END = re.compile(r"\.(?=\s|$)|\n")
MAX_PHRASE_ANSWER = 200


def looks_like_code(answer: str) -> bool:
    """A box holding code (a fence, keywords, statements) is not an answer and scores 0."""
    return bool(_CODE.search(answer))


def _phrase_value(text: str) -> str | None:
    """The answer written right after a phrase: a math span, or the rest of the sentence."""
    rest = text.lstrip(" \t*:")
    if rest.startswith("\n"):  # "**Final Answer**\n100": the next non-empty line
        rest = rest.lstrip(" \t\n*:")
    quoted = _QUOTED.match(rest)
    if quoted:  # The final answer is "$12$ and $13$" (quotes escaped or not): all of it, $ dropped
        return quoted.group(1).replace("$", " ").strip() or None
    for open_, close in _SPANS:
        if rest.startswith(open_):
            end = rest.find(close, len(open_))
            while end > 0 and close == "$" and rest[end - 1] == "\\":  # \$ is a dollar sign
                end = rest.find(close, end + 1)
            if end < 0 or (open_ in ("$", "\\(") and "\n" in rest[:end]):
                return None
            return rest[len(open_): end].strip() or None
    end = _SENTENCE_END.search(rest)
    value = rest[: end.start() if end else len(rest)].strip().rstrip("*").strip()
    if " is " in value:  # "The largest $n$ is 34"
        return _phrase_value(value.rsplit(" is ", 1)[1])
    return value.strip("$ ") or None


def last_phrase(text: str) -> tuple[int, str | None]:
    """(where the last answer phrase followed by an answer starts, that answer); (-1, None) if none."""
    for match in reversed(list(_PHRASE.finditer(text))):
        value = _phrase_value(text[match.end(): match.end() + MAX_PHRASE_ANSWER * 2])
        if value is not None and len(value) <= MAX_PHRASE_ANSWER:
            return match.start(), value
    return -1, None


def extract_answer(text: str, mode: str = "boxed") -> tuple[str | None, bool]:
    """(answer, boxed) under an extraction mode (EXTRACT_MODES). With boxed_or_phrase, whichever of
    the last complete box and the last answer phrase starts later wins ("... \\boxed{255} ... Final
    Answer: The final answer is $10,455$." answers 10,455; "The final answer is $\\boxed{5}$" is 5)."""
    if mode not in EXTRACT_MODES:
        raise ValueError(f"unknown extraction mode {mode!r}; expected one of {EXTRACT_MODES}")
    text = text[-MAX_RESPONSE_CHARS:]
    box_at, boxed = _last_box(text)
    if box_at >= 0 and boxed is None:
        return None, False  # the last box is open: truncated output, never rescued by a phrase
    if mode == "boxed_or_phrase":
        phrase_at, phrase = last_phrase(text)
        if phrase is not None and phrase_at > box_at:
            return (None if looks_like_code(phrase) else phrase), False
    if boxed is None:
        return None, False
    return (None if looks_like_code(boxed) else boxed), True
