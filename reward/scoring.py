"""Public scoring API: reward.score(response, answer) -> 1.0 or 0.0, and a batch form.

Nothing raised while scoring one item escapes: a check that runs past its time limit is a timeout,
and any other exception (a bug, a MemoryError, ...) is that item's `error`; both score as a wrong
answer, and the reward pool counts them (`reward/timeouts`, `reward/errors`).
"""
from __future__ import annotations

import signal
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import Iterator

from reward.equivalence import answers_equal
from reward.extract import EXTRACT_MODES, extract_answer
from reward.shaping import shaped_reward

MAX_ERROR_CHARS = 300


class CheckTimeout(Exception):
    pass


_deadlines: list[float] = []  # the open time_limit scopes of the main thread, outermost first
_REPEAT_S = 0.01  # after a deadline passes, the alarm repeats until its scope is left


def _on_alarm(signum: int, frame: object) -> None:
    now = time.monotonic()
    if not _deadlines:
        return  # a stale alarm after the last scope closed
    if min(_deadlines) > now:  # early (a re-armed timer's rounding): wait for the deadline
        signal.setitimer(signal.ITIMER_REAL, min(_deadlines) - now)
        return
    # Keep interrupting until the expired scope is left: code inside it that swallows one CheckTimeout
    # (the grader does, to score a timeout) does not outlive that scope's limit.
    signal.setitimer(signal.ITIMER_REAL, _REPEAT_S)
    raise CheckTimeout()


@contextmanager
def time_limit(seconds: float) -> Iterator[None]:
    """Interrupt Python-level work after `seconds` (main thread only; elsewhere the caller's
    process-level timeout, which kills the worker, is the bound). Memory is bounded by the size
    pre-screens in reward.normalize and reward.parse, not here: setrlimit is process-wide.

    Scopes nest: a custom reward function that calls the grader keeps its own limit. One timer is armed
    for the nearest open deadline; when it passes, CheckTimeout is raised, and raised again every
    10 ms until the scope whose deadline passed is left, so an inner scope that swallows it cannot carry
    the outer one past its limit. SIGALRM is blocked while the scopes are counted."""
    if threading.current_thread() is not threading.main_thread() or seconds <= 0:
        yield
        return
    alarm = {signal.SIGALRM}
    signal.pthread_sigmask(signal.SIG_BLOCK, alarm)
    previous = signal.signal(signal.SIGALRM, _on_alarm) if not _deadlines else None
    _deadlines.append(time.monotonic() + seconds)
    signal.setitimer(signal.ITIMER_REAL, max(1e-6, min(_deadlines) - time.monotonic()))
    signal.pthread_sigmask(signal.SIG_UNBLOCK, alarm)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_BLOCK, alarm)
        _deadlines.pop()
        if _deadlines:
            signal.setitimer(signal.ITIMER_REAL, max(1e-6, min(_deadlines) - time.monotonic()))
        else:
            signal.setitimer(signal.ITIMER_REAL, 0)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, alarm)  # a pending alarm runs _on_alarm (ignored if stale)
        if previous is not None:
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
