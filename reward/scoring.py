"""Public scoring API: reward.score(response, answer) -> 1.0 or 0.0, and a batch form.

Nothing raised while scoring one item escapes: a check that runs past its time limit is a timeout,
and any other exception (a bug, a MemoryError, ...) is that item's `error`; both score as a wrong
answer, and the reward pool counts them (`reward/timeouts`, `reward/errors`).
"""
from __future__ import annotations

import signal
import threading
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import Iterator

from reward.equivalence import answers_equal
from reward.extract import EXTRACT_MODES, extract_answer
from reward.shaping import shaped_reward

MAX_ERROR_CHARS = 300


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
    error: str | None = None  # "<where>: <ExceptionType>: <message>" when scoring this item raised


def describe_error(where: str, error: BaseException) -> str:
    """One line naming where an exception came from, its type and message (bounded)."""
    message = str(error).strip().splitlines()[0] if str(error).strip() else ""
    return f"{where}: {type(error).__name__}: {message}"[:MAX_ERROR_CHARS]


def error_kind(error: str) -> str:
    """The part of an error line that names its kind: where it came from and the exception type."""
    return ": ".join(error.split(": ")[:2])


TIMEOUTS = {"count": 0}  # checks that hit the time limit in this process (each scored as wrong)


def judge(response: str, answer: str, timeout_s: float = 2.0, shaping: str = "binary",
          extract: str = "boxed") -> Verdict:
    """Extract the final answer (`extract`: reward.extract.EXTRACT_MODES) and compare it with the
    gold answer under a time limit. Never raises for a bad response or answer."""
    if extract not in EXTRACT_MODES:
        raise ValueError(f"unknown extraction mode {extract!r}; expected one of {EXTRACT_MODES}")
    correct, timed_out, error, boxed = False, False, None, False
    try:
        predicted, boxed = extract_answer(response, extract)
        if predicted is not None:
            with time_limit(timeout_s):
                correct = answers_equal(predicted, answer)
    except CheckTimeout:
        timed_out = True
        TIMEOUTS["count"] += 1
    except Exception as e:  # noqa: BLE001 - one item's failure must not fail the batch
        error = describe_error("grader", e)
    verdict = Verdict(0.0, correct, boxed, timed_out, error)
    return replace(verdict, reward=shaped_reward(verdict, shaping))


def score(response: str, answer: str) -> float:
    """1.0 when the last boxed answer equals `answer`, else 0.0."""
    return judge(response, answer).reward


def score_batch(pairs: list[tuple[str, str]], timeout_s: float = 2.0, shaping: str = "binary",
                extract: str = "boxed") -> list[Verdict]:
    """Score many (response, answer) pairs; identical pairs are checked once."""
    cache: dict[tuple[str, str], Verdict] = {}
    out = []
    for pair in pairs:
        if pair not in cache:
            cache[pair] = judge(pair[0], pair[1], timeout_s, shaping, extract)
        out.append(cache[pair])
    return out
