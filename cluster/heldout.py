"""Held-out evaluation with the live rollout workers and the reward pool."""
from __future__ import annotations

from typing import Callable

from cluster.generation import generate_and_score
from cluster.groups import RewardPool, RolloutGroup
from protocol.batch import Prompt, Sample


def score_prompts(rollouts: RolloutGroup, pool: RewardPool, prompts: list[Prompt], n: int, temperature: float,
                  seed: int, resync: Callable[[int], None] | None = None) -> tuple[list[Sample], dict[str, float]]:
    """Generate n completions per prompt and score them as they finish (see cluster/generation.py)."""
    rollout = generate_and_score(rollouts, pool, prompts, n, temperature, seed, resync)
    return rollout.samples, rollout.counts


def held_out_metrics(rollouts: RolloutGroup, pool: RewardPool, prompts: list[Prompt], samples_per_prompt: int,
             temperature: float, seed: int, resync: Callable[[int], None] | None = None) -> dict[str, float]:
    """Sampled accuracy (mean over samples_per_prompt draws at `temperature`) and greedy accuracy."""
    sampled, _ = score_prompts(rollouts, pool, prompts, samples_per_prompt, temperature, seed, resync)
    greedy, _ = score_prompts(rollouts, pool, prompts, 1, 0.0, seed, resync)
    mean = lambda xs: sum(xs) / max(len(xs), 1)  # noqa: E731
    return {
        "eval/accuracy": mean([s.correct for s in sampled]),
        "eval/greedy_accuracy": mean([s.correct for s in greedy]),
        "eval/boxed_rate": mean(["\\boxed" in s.text for s in sampled]),
        "eval/response_len": mean([len(s.response_ids) for s in sampled]),
    }
