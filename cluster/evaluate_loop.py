"""Held-out evaluation with the live rollout workers and the reward pool."""
from __future__ import annotations

from cluster.groups import RewardPool, RolloutGroup
from protocol.batch import Prompt, Sample


def score_prompts(rollouts: RolloutGroup, pool: RewardPool, prompts: list[Prompt], n: int, temperature: float,
                  seed: int) -> tuple[list[Sample], dict[str, float]]:
    """Generate n completions per prompt and score them, streaming each worker's chunk to the pool."""
    import ray

    answers = {p.index: p.answer for p in prompts}
    pending = rollouts.generate_async(prompts, n, temperature, seed)
    jobs, samples = [], []
    while pending:
        done, pending = ray.wait(pending, num_returns=1, timeout=rollouts.timeout_s)
        if not done:
            raise TimeoutError(f"generation did not finish within {rollouts.timeout_s:.0f}s")
        chunk = ray.get(done[0])
        samples.extend(chunk)
        jobs.extend(pool.submit(chunk, answers))
    counts = pool.collect(jobs)
    samples.sort(key=lambda s: s.prompt_index)
    return samples, counts


def evaluate(rollouts: RolloutGroup, pool: RewardPool, prompts: list[Prompt], samples_per_prompt: int,
             temperature: float, seed: int) -> dict[str, float]:
    """Sampled accuracy (mean over samples_per_prompt draws at `temperature`) and greedy accuracy."""
    sampled, _ = score_prompts(rollouts, pool, prompts, samples_per_prompt, temperature, seed)
    greedy, _ = score_prompts(rollouts, pool, prompts, 1, 0.0, seed)
    mean = lambda xs: sum(xs) / max(len(xs), 1)  # noqa: E731
    return {
        "eval/accuracy": mean([s.correct for s in sampled]),
        "eval/greedy_accuracy": mean([s.correct for s in greedy]),
        "eval/boxed_rate": mean(["\\boxed" in s.text for s in sampled]),
        "eval/response_len": mean([len(s.response_ids) for s in sampled]),
    }
