"""The reward actor's body: the driver runs K of these as Ray actors (see cluster/).

One item never fails a batch: the grader turns any exception into that item's `error`
(reward.scoring), and so does this actor for a `custom_fn` (`reward.custom_fn`), which runs under
the grader's per-answer time limit (a SIGALRM in the actor's main thread: an overrun scores 0 as a
timeout). A custom function stuck where the alarm cannot reach it (C code, blocked signals) holds
the actor past the pool's deadline, and the pool kills and replaces the actor.

With reward.kind=code the actor hands its batch to a judge subprocess that runs each program in a
sandbox (reward/code.py); no program runs in the actor.

This module imports no sympy, and neither does the grader: only a custom function may bring it in.
"""
from __future__ import annotations

import math
from typing import Callable

from reward.custom import load_custom_fn
from reward.extract import EXTRACT_MODES
from reward.scoring import CheckTimeout, Verdict, describe_error, score_batch, time_limit
from reward.shaping import STYLES
from reward.spec import RewardSpec


class RewardWorker:
    """Its settings come whole, as a `RewardSpec` (reward/spec.py) built from the `reward` config section by
    `cluster.loop.specs.reward_spec`: the config's defaults are the only ones (tests/test_specs.py)."""

    def __init__(self, spec: RewardSpec) -> None:
        if spec.shaping not in STYLES:
            raise ValueError(f"unknown reward shaping {spec.shaping!r}")
        if spec.extract not in EXTRACT_MODES:
            raise ValueError(f"unknown reward.extract {spec.extract!r}; expected one of {EXTRACT_MODES}")
        self.timeout_s, self.shaping, self.extract = spec.timeout_s, spec.shaping, spec.extract
        self.custom: Callable[[str, str], float] | None = None
        self.custom_name = spec.custom_fn or ""
        if spec.custom_fn:
            self.custom = load_custom_fn(spec.custom_fn)  # CustomFnError: the pool ends the run with it
        self.code = None
        if spec.kind == "code":  # reward.code: programs run in sandboxes by a judge subprocess (reward/code.py)
            from reward.code import CodeScorer, time_budget

            self.code = CodeScorer(**dict(spec.code or {}), batch_budget_s=time_budget(spec.timeout_s, spec.grace_s))

    def score(self, pairs: list[tuple[str, str]]) -> list[Verdict]:
        if self.code is not None:
            return self.code.score(pairs)
        if self.custom is not None:
            return [self._custom_verdict(response, answer) for response, answer in pairs]
        return score_batch(pairs, self.timeout_s, self.shaping, self.extract)

    def _custom_verdict(self, response: str, answer: str) -> Verdict:
        """The custom function's reward, bounded like the grader; an exception or a non-number
        scores 0 with the error named."""
        where = f"reward.custom_fn {self.custom_name}"
        try:
            with time_limit(self.timeout_s):
                value = float(self.custom(response, answer))  # type: ignore[misc]
        except CheckTimeout:
            return Verdict(0.0, False, True, timed_out=True)
        except Exception as e:  # noqa: BLE001 - a user's function may raise anything
            return Verdict(0.0, False, True, error=describe_error(where, e))
        if not math.isfinite(value):
            return Verdict(0.0, False, True, error=f"{where}: ValueError: returned {value}")
        return Verdict(value, value > 0, True)

    def ping(self) -> bool:
        return True
