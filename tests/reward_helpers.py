"""Shared by the reward tests: an answer pair through the equivalence rules and through the whole
scoring path (a boxed response, reward.judge); a RewardWorker and a CodeScorer with the settings a run
gives them."""
from __future__ import annotations

import inspect
from typing import Any

from cluster.config import CodeRewardConfig, load_config
from reward import judge
from reward.code import CodeScorer
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


def code_scorer(batch_budget_s: float, **code: Any) -> CodeScorer:
    """A CodeScorer with the `reward.code` section of the default config, `code` fields replaced (validated
    as the config validates them), as RewardWorker builds it."""
    return CodeScorer(**CodeRewardConfig(**code).model_dump(), batch_budget_s=batch_budget_s)
