"""One check shared by the reward tests: an answer pair through the equivalence rules and through the
whole scoring path (a boxed response, reward.judge)."""
from __future__ import annotations

from reward import judge
from reward.equivalence import answers_equal


def assert_pays(pred: str, gold: str, equal: bool) -> None:
    assert answers_equal(pred, gold) == equal, (pred, gold)
    assert judge(f"so $\\boxed{{{pred}}}$", gold).reward == (1.0 if equal else 0.0), (pred, gold)
