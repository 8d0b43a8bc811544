"""The settings of one reward actor, passed whole from the driver to `reward.worker.RewardWorker`.

No field has a default: every value is the `reward` config section's field of the same name (cluster/config.py),
through `cluster.loop.specs.reward_spec`; tests/test_specs.py fails when a default appears here or a field
names no `reward` setting.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class RewardSpec:
    kind: str  # "math": the grader (or custom_fn); "code": programs run against tests (reward/code.py)
    timeout_s: float  # per answer, grader or custom_fn (a SIGALRM in the actor)
    grace_s: float  # the pool's deadline slack; reward.kind=code budgets its judge's batch within it
    custom_fn: str | None  # "module:function(response, answer) -> float", or None for the grader
    shaping: str  # reward.shaping.STYLES
    extract: str  # reward.extract.EXTRACT_MODES
    code: Any  # the reward.code section: a mapping of reward.code.CodeScorer's arguments (read with dict())
