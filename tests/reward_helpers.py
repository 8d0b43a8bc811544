"""Shared by the reward tests: an answer pair through the equivalence rules and through the whole
scoring path (a boxed response, reward.judge); a RewardWorker and a CodeScorer with the settings a run
gives them."""
from __future__ import annotations

from typing import Any

from cluster.config import CodeRewardConfig, load_config
from cluster.loop.specs import reward_spec
from reward import judge
from reward.code import CodeScorer
from reward.equivalence import answers_equal
from reward.worker import RewardWorker


def reward_worker(*overrides: str) -> RewardWorker:
    """A RewardWorker in this process with the `reward` section of the default config plus `overrides`
    ("reward.timeout_s=0.5", ...), its RewardSpec built as cluster.handles.groups.RewardPool builds it."""
    return RewardWorker(reward_spec(load_config(None, list(overrides))))


def assert_pays(pred: str, gold: str, equal: bool) -> None:
    assert answers_equal(pred, gold) == equal, (pred, gold)
    assert judge(f"so $\\boxed{{{pred}}}$", gold).reward == (1.0 if equal else 0.0), (pred, gold)


def code_scorer(batch_budget_s: float, **code: Any) -> CodeScorer:
    """A CodeScorer with the `reward.code` section of the default config, `code` fields replaced (validated
    as the config validates them), as RewardWorker builds it."""
    return CodeScorer(**CodeRewardConfig(**code).model_dump(), batch_budget_s=batch_budget_s)
