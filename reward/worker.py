"""The reward actor's body: the driver runs K of these as Ray actors (see cluster/)."""
from __future__ import annotations

import importlib
from typing import Callable

from reward.scoring import Verdict, score_batch
from reward.shaping import STYLES


class RewardWorker:
    def __init__(self, timeout_s: float = 2.0, custom_fn: str | None = None, shaping: str = "binary") -> None:
        if shaping not in STYLES:
            raise ValueError(f"unknown reward shaping {shaping!r}")
        self.timeout_s = timeout_s
        self.shaping = shaping
        self.custom: Callable[[str, str], float] | None = None
        if custom_fn:
            module, _, name = custom_fn.partition(":")
            self.custom = getattr(importlib.import_module(module), name)

    def score(self, pairs: list[tuple[str, str]]) -> list[Verdict]:
        if self.custom is not None:
            rewards = [float(self.custom(r, a)) for r, a in pairs]
            return [Verdict(x, x > 0, True) for x in rewards]
        return score_batch(pairs, self.timeout_s, self.shaping)

    def ping(self) -> bool:
        return True
