"""Public scoring API: reward.score(response, answer) -> 1.0 or 0.0, and a batch form."""
from __future__ import annotations

import signal
import threading
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import Iterator

from reward.extract import extract_answer
from reward.equivalence import answers_equal
from reward.shaping import shaped_reward


class CheckTimeout(Exception):
    pass


@contextmanager
def time_limit(seconds: float) -> Iterator[None]:
    """Interrupt Python-level work after `seconds` (main thread only; elsewhere the caller's
    process-level timeout, which kills the worker, is the bound). Memory is bounded by the size
    pre-screens in reward.normalize and reward.parse, not here: setrlimit is process-wide."""
    if threading.current_thread() is not threading.main_thread() or seconds <= 0:
        yield
        return

    def _raise(signum: int, frame: object) -> None:
        raise CheckTimeout()

    previous = signal.signal(signal.SIGALRM, _raise)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


@dataclass
class Verdict:
    reward: float
    correct: bool
    boxed: bool
    timed_out: bool = False


TIMEOUTS = {"count": 0}  # checks that hit the time limit in this process (each scored as wrong)


def judge(response: str, answer: str, timeout_s: float = 2.0, shaping: str = "binary",
          fallbacks: bool = False) -> Verdict:
    """Extract the final answer and compare it with the gold answer under a time limit."""
    predicted, boxed = extract_answer(response, fallbacks)
    correct, timed_out = False, False
    if predicted is not None:
        try:
            with time_limit(timeout_s):
                correct = answers_equal(predicted, answer)
        except CheckTimeout:
            timed_out = True
            TIMEOUTS["count"] += 1
        except (RecursionError, MemoryError, ValueError, ArithmeticError):
            correct = False
    verdict = Verdict(0.0, correct, boxed, timed_out)
    return replace(verdict, reward=shaped_reward(verdict, shaping))


def score(response: str, answer: str) -> float:
    """1.0 when the last boxed answer equals `answer`, else 0.0."""
    return judge(response, answer).reward


def score_batch(pairs: list[tuple[str, str]], timeout_s: float = 2.0, shaping: str = "binary",
                fallbacks: bool = False) -> list[Verdict]:
    """Score many (response, answer) pairs; identical pairs are checked once."""
    cache: dict[tuple[str, str], Verdict] = {}
    out = []
    for pair in pairs:
        if pair not in cache:
            cache[pair] = judge(pair[0], pair[1], timeout_s, shaping, fallbacks)
        out.append(cache[pair])
    return out
