"""Shared by the reward tests: an answer pair through the equivalence rules and through the whole
scoring path (a boxed response, reward.judge); a RewardWorker with the settings a run's pool gives it."""
from __future__ import annotations

import inspect

from cluster.config import load_config
from reward import judge
from reward.equivalence import answers_equal
from reward.worker import RewardWorker


def reward_worker(*overrides: str) -> RewardWorker:
    """A RewardWorker in this process with the `reward` section of the default config plus `overrides`
    ("reward.timeout_s=0.5", ...), each setting passed by name as cluster.groups.RewardPool passes it."""
    section = load_config(None, list(overrides)).reward
    return RewardWorker(**{name: getattr(section, name) for name in inspect.signature(RewardWorker).parameters})


def assert_pays(pred: str, gold: str, equal: bool) -> None:
    assert answers_equal(pred, gold) == equal, (pred, gold)
    assert judge(f"so $\\boxed{{{pred}}}$", gold).reward == (1.0 if equal else 0.0), (pred, gold)
