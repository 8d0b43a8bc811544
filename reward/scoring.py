"""Public scoring API: reward.score(response, answer) -> 1.0 or 0.0, and a batch form."""
from __future__ import annotations

import signal
import threading
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator

from reward.extract import last_boxed
from reward.grader import answers_equal


class CheckTimeout(Exception):
    pass


@contextmanager
def time_limit(seconds: float) -> Iterator[None]:
    """Interrupt Python-level work after `seconds` (main thread only; elsewhere the caller's
    process-level timeout, which kills the worker, is the bound)."""
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


def judge(response: str, answer: str, timeout_s: float = 2.0) -> Verdict:
    """Extract the last boxed answer and compare it with the gold answer under a time limit."""
    predicted = last_boxed(response)
    if predicted is None:
        return Verdict(0.0, False, False)
    try:
        with time_limit(timeout_s):
            correct = answers_equal(predicted, answer)
    except CheckTimeout:
        return Verdict(0.0, False, True, timed_out=True)
    except RecursionError:
        correct = False
    return Verdict(float(correct), correct, True)


def score(response: str, answer: str) -> float:
    return judge(response, answer).reward


def score_batch(pairs: list[tuple[str, str]], timeout_s: float = 2.0) -> list[Verdict]:
    """Score many (response, answer) pairs; identical pairs are checked once."""
    cache: dict[tuple[str, str], Verdict] = {}
    out = []
    for pair in pairs:
        if pair not in cache:
            cache[pair] = judge(pair[0], pair[1], timeout_s)
        out.append(cache[pair])
    return out
