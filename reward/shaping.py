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


def overlong_penalty(response_tokens: int, max_new_tokens: int, buffer: int, factor: float) -> float:
    """DAPO's soft overlong punishment (algorithm.overlong_buffer / overlong_penalty), added to the reward:
    0 up to `max_new_tokens - buffer` tokens, then falling linearly to `-factor` at `max_new_tokens`
    (a response cut at the cap gets the whole penalty). `buffer` 0: no penalty.

    Formula as in verl's DAPO reward manager (volcengine/verl@003364bc724da7d6efb63834fa1c496e1a55c888,
    verl/workers/reward_manager/dapo.py: min(-(length - (max_resp_len - len)) / len * penalty_factor, 0)).
    """
    if buffer <= 0:
        return 0.0
    exceed = response_tokens - (max_new_tokens - buffer)
    return min(-exceed / buffer * factor, 0.0)
