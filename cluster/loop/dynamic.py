"""What happens to a scored batch before the learner sees it: DAPO's overlong reward shaping and dynamic
sampling (algorithm.overlong_buffer, algorithm.dynamic_sampling).

Overlong shaping adds `reward.shaping.overlong_penalty` of each response's length to its reward as the
sample is scored (`overlong_shaping`, applied by cluster.loop.generation.scored_samples), so the advantages
and the dynamic-sampling filter both see it.

Dynamic sampling: a prompt group whose rewards are all equal has zero advantage under every group
estimator: it costs a learner forward and backward and teaches nothing. Such groups are dropped and
more prompts are generated (each round sized by the deficit over the share kept so far) until
train.prompts_per_step informative groups are in, at most algorithm.dynamic_sampling_max_rounds
generations in all. Informative groups past the batch size are left out; a batch still short after the
last round is filled with dropped groups (zero advantage: they change no gradient of the policy term),
so every step trains on the same number of samples. Every group is counted (`dynamic/*` metrics):
nothing is left out silently.

Extra prompts are drawn from the training set by a generator seeded from (train.seed, step, round) (a
pure function of them, like every other batch, and independent of train.steps, which a resume may
change), indexed after the first round's prompts so that a batch's prompt indices stay unique (and
their sampling seeds distinct).
"""
from __future__ import annotations

import math
import random
from typing import Callable

from cluster.config import Config
from cluster.loop.data import PromptSource
from cluster.loop.generation import ScoredBatch, Shaping
from protocol.batch import Prompt, Sample, ScoredSample
from reward.shaping import overlong_penalty

Group = list[ScoredSample]
Round = Callable[[list[Prompt]], ScoredBatch]  # generate and score these prompts


def overlong_shaping(cfg: Config) -> Shaping | None:
    """DAPO's soft overlong penalty of a sample (added to its reward when it is scored); None when off."""
    a, cap = cfg.algorithm, cfg.rollout.max_new_tokens
    if not a.overlong_buffer:
        return None
    return lambda s: overlong_penalty(len(s.response_ids), cap, a.overlong_buffer, a.overlong_penalty)


def overlong_metrics(samples: list[Sample], cfg: Config) -> dict[str, float]:
    penalty = overlong_shaping(cfg)
    if penalty is None:
        return {}
    penalties = [penalty(s) for s in samples]
    n = max(len(penalties), 1)
    return {"reward/overlong_penalty_mean": sum(penalties) / n,
            "reward/overlong_frac": sum(p < 0 for p in penalties) / n}


def groups_of(samples: list[ScoredSample], n: int) -> list[Group]:
    """A batch's samples (sorted by prompt, n per prompt) as its prompt groups."""
    return [samples[i: i + n] for i in range(0, len(samples), n)]


def informative(group: Group) -> bool:
    """Whether the group's rewards differ (a nonzero advantage for some sample)."""
    return len({s.reward for s in group}) > 1


def merge(batches: list[ScoredBatch], samples: list[ScoredSample], metrics: dict[str, float]) -> ScoredBatch:
    """One ScoredBatch from the rounds of a step, holding `samples` (the groups trained on)."""
    counts: dict[str, float] = {}
    for b in batches:
        for key, value in b.counts.items():
            counts[key] = counts.get(key, 0.0) + value
    engine_s = [sum(per) for per in zip(*(b.engine_s for b in batches))]
    return ScoredBatch(samples, counts, engine_s, sum(b.wall_s for b in batches), sum(b.restarts for b in batches),
                       sum(b.reissued for b in batches), [c for b in batches for c in b.restart_causes],
                       {**metrics, **{k: v for b in batches for k, v in b.metrics.items()}})


def extra_prompts(source: PromptSource, cfg: Config, step: int, round_: int, size: int) -> list[Prompt]:
    """`size` distinct training prompts for round `round_` (from 1) of `step`, drawn by a generator seeded
    from (train.seed, step, round) alone, so a resumed run, whatever its train.steps, draws the same;
    indexed after every earlier round's prompts."""
    rng = random.Random(f"dynamic-sampling:{cfg.train.seed}:{step}:{round_}")  # str seeds are stable across runs
    picks = rng.sample(range(len(source.problems)), min(size, len(source.problems)))
    first = round_ * cfg.train.prompts_per_step
    return [Prompt(first + i, source.ids[j], source.problems[j].answer, source.problems[j].prompt)
            for i, j in enumerate(picks)]


def fill_batch(cfg: Config, step: int, prompts: list[Prompt], first: ScoredBatch, generate: Round,
               source: PromptSource) -> tuple[list[Prompt], ScoredBatch]:
    """Dynamic sampling for one step's batch (see the module docstring): the prompts of every round and
    the merged ScoredBatch of train.prompts_per_step groups, with its `dynamic/*` metrics."""
    n, wanted = cfg.rollout.samples_per_prompt, cfg.train.prompts_per_step
    batches, kept, dropped = [first], [], []
    all_prompts = list(prompts)
    generated_tokens = sum(len(s.response_ids) for s in first.samples)
    for group in groups_of(first.samples, n):
        (kept if informative(group) else dropped).append(group)
    generated = len(first.samples) // n
    while len(kept) < wanted and len(batches) < cfg.algorithm.dynamic_sampling_max_rounds:
        share = len(kept) / max(generated, 1)
        size = wanted if share == 0 else min(wanted, math.ceil((wanted - len(kept)) / share))
        more = extra_prompts(source, cfg, step, len(batches), size)
        scored = generate(more)
        batches.append(scored)
        all_prompts.extend(more)
        generated += len(scored.samples) // n
        generated_tokens += sum(len(s.response_ids) for s in scored.samples)
        for group in groups_of(scored.samples, n):
            (kept if informative(group) else dropped).append(group)
    informative_kept = len(kept)
    trained = kept[:wanted] + dropped[: max(0, wanted - len(kept))]
    metrics = {"dynamic/rounds": float(len(batches)), "dynamic/generated_groups": float(generated),
               "dynamic/generated_tokens": float(generated_tokens),
               "dynamic/kept_groups": float(min(informative_kept, wanted)),
               "dynamic/dropped_groups": float(len(dropped)),
               "dynamic/surplus_groups": float(max(0, informative_kept - wanted)),
               "dynamic/filled_groups": float(max(0, wanted - informative_kept))}
    return all_prompts, merge(batches, [s for g in trained for s in g], metrics)
