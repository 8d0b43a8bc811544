"""Held-out evaluation with the live rollout workers and the reward pool."""
from __future__ import annotations

from typing import Callable

from cluster.loop.generation import generate_and_score
from cluster.handles.groups import RewardPool
from cluster.handles.rollout_group import RolloutGroup
from cluster.infra.metrics import boxed_rate, mean, reflects
from protocol.batch import Prompt, ScoredSample


EVAL_SEED = 777  # every held-out evaluation samples with this seed: evaluations compare across steps and runs


def score_prompts(rollouts: RolloutGroup, pool: RewardPool, prompts: list[Prompt], n: int, temperature: float,
                  seed: int, resync: Callable[[int], None] | None = None) -> tuple[list[ScoredSample], dict[str, float]]:
    """Generate n completions per prompt and score them as they finish (see cluster/loop/generation.py)."""
    rollout = generate_and_score(rollouts, pool, prompts, n, temperature, seed, resync)
    return rollout.samples, rollout.counts


def held_out_metrics(rollouts: RolloutGroup, pool: RewardPool, prompts: list[Prompt], samples_per_prompt: int,
                     temperature: float, seed: int, resync: Callable[[int], None] | None = None,
                     worked: Callable[[str], bool] | None = None, prefix: str = "eval") -> dict[str, float]:
    """Sampled accuracy (mean over samples_per_prompt draws at `temperature`) and greedy accuracy; of the
    sampled responses: boxed rate, mean length in tokens, share with reflection (cluster.infra.metrics.REFLECTION),
    accuracy among the responses that check themselves and among those that do not, and, with the embedded task's `worked` predicate, the share that work the problem out."""
    sampled, counts = score_prompts(rollouts, pool, prompts, samples_per_prompt, temperature, seed, resync)
    greedy, _ = score_prompts(rollouts, pool, prompts, 1, 0.0, seed, resync)
    out = {
        f"{prefix}/accuracy": mean([s.correct for s in sampled]),
        f"{prefix}/greedy_accuracy": mean([s.correct for s in greedy]),
        f"{prefix}/boxed_rate": boxed_rate(counts, len(sampled)),
        f"{prefix}/response_len": mean([len(s.response_ids) for s in sampled]),
        f"{prefix}/reflection_frac": mean([reflects(s.text) for s in sampled]),
    }
    for name, checked in (("self_checked", True), ("not_self_checked", False)):
        group = [s.correct for s in sampled if reflects(s.text) is checked]
        if group:  # accuracy split by whether the response checks itself (absent when no response falls there)
            out[f"{prefix}/accuracy_{name}"] = mean(group)
    if worked is not None:
        out[f"{prefix}/worked_frac"] = mean([worked(s.text) for s in sampled])
    return out
