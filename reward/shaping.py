"""Reward shaping: how a verdict (correct / wrong / no box) becomes the scalar reward.

- "binary" (default): 1.0 correct, 0.0 otherwise.
- "simplerl": +1.0 correct, -0.5 a boxed wrong answer, -1.0 no box (none, or a truncated one),
  which also pushes the policy to finish and box its answer. A check that timed out or raised
  (its `error`) counts as a wrong boxed answer: an error never pays better than a wrong answer.
  With reward.extract=boxed_or_phrase, a correct unboxed answer earns +1.0.
"""
from __future__ import annotations

from typing import Literal, Protocol

ShapingStyle = Literal["binary", "simplerl"]
STYLES: tuple[str, ...] = ("binary", "simplerl")


class Judged(Protocol):
    correct: bool
    boxed: bool


def shaped_reward(verdict: Judged, style: str = "binary") -> float:
    """Pure function of the verdict's flags."""
    if style == "binary":
        return 1.0 if verdict.correct else 0.0
    if style == "simplerl":
        if verdict.correct:
            return 1.0
        return -0.5 if verdict.boxed else -1.0
    raise ValueError(f"unknown reward shaping {style!r}; expected one of {STYLES}")
