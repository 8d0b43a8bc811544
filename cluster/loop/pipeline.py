"""Asynchronous rollouts (train.max_staleness = k): generation for steps s+1..s+k runs while the learner
trains on step s.

Ordering is what bounds staleness. A rollout worker is a Ray actor that runs its calls in submission
order, so a batch generates with the weights of the last sync submitted before it. The trainer asks
for batches s..s+k at the start of step s, before that step's sync: batch t is therefore submitted
while the learner holds version t-k (or later, near the start), and is trained on at step t, when
the learner holds version t. Staleness is at most k by construction; `split_stale` still checks
every sample, because a re-issued prompt after a worker restart may come from another version.

The weight sync after step s queues on each worker behind the generation already submitted, so
workers stop only for the load itself; the driver waits for it before the next step's generation
is submitted (the shared-memory buffer is rewritten by the next export).

With train.partial_rollouts the sync does not wait for that generation to drain: each engine loads the
new weights between two engine steps and the requests in flight continue under them (on a multiprocess
engine: aborted, then resubmitted with their tokens so far; cluster/loop/sync.py,
RolloutWorker.load_weights_in_flight), so one sample's tokens may come from two or more versions
(`Sample.token_versions`). Loads only come earlier than without it, so every token is at least as new as
the bound above allows; a sample's `policy_version` is its oldest token's, and the checks below judge it.
"""
from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor
from typing import Callable

from cluster.loop import dynamic
from cluster.config import Config
from cluster.loop.data import PromptSource
from cluster.loop.generation import ScoredBatch, StreamedBatch
from cluster.handles.groups import RewardPool
from cluster.handles.rollout_group import RolloutGroup
from protocol.batch import Prompt, Sample, ScoredSample


def step_seed(train_seed: int, step: int) -> int:
    return train_seed * 1_000_003 + step


class RolloutPipeline:
    """Batches in flight, keyed by the step that will train on them."""

    def __init__(self, cfg: Config, rollouts: RolloutGroup, rewards: RewardPool, source: PromptSource,
                 resync: Callable[[int], None]) -> None:
        self.cfg, self.rollouts, self.rewards, self.source, self.resync = cfg, rollouts, rewards, source, resync
        self.ahead = cfg.train.max_staleness
        # Each batch's streams are consumed (and scored) on its own thread, so scoring keeps pace
        # with generation while the driver's main thread waits on the learner.
        self.executor = ThreadPoolExecutor(max_workers=self.ahead + 1, thread_name_prefix="rollout")
        self.in_flight: dict[int, Future[tuple[list[Prompt], ScoredBatch]]] = {}

    def _submit(self, t: int, prompts: list[Prompt]) -> StreamedBatch:
        r = self.cfg.rollout
        return StreamedBatch(self.rollouts, self.rewards, prompts, r.samples_per_prompt, r.temperature,
                             step_seed(self.cfg.train.seed, t), self.resync, step=t + 1,
                             shaping=dynamic.overlong_shaping(self.cfg))

    def _collect(self, t: int, prompts: list[Prompt], first: StreamedBatch) -> tuple[list[Prompt], ScoredBatch]:
        """On a pipeline thread: the batch scored and shaped; with dynamic sampling, filled up by more rounds
        (submitted from here, so they queue behind whatever the workers hold by then)."""
        scored = first.result()
        if not self.cfg.algorithm.dynamic_sampling:
            return prompts, scored
        return dynamic.fill_batch(self.cfg, t, prompts, scored, lambda more: self._submit(t, more).result(),
                                  self.source)

    def fill(self, step: int) -> None:
        """Make sure batches for steps step..step+k are submitted (none past the last step)."""
        for t in range(step, min(step + self.ahead, self.cfg.train.steps - 1) + 1):
            if t not in self.in_flight:
                prompts = self.source.batch(t, self.cfg.train.prompts_per_step)
                self.in_flight[t] = self.executor.submit(self._collect, t, prompts, self._submit(t, prompts))

    def take(self, step: int) -> tuple[list[Prompt], ScoredBatch]:
        """The scored batch for `step` and every prompt generated for it (waits for it)."""
        self.fill(step)
        return self.in_flight.pop(step).result()

    def close(self, wait: bool = True) -> None:
        """Drop batches not yet started; `wait`: let running ones finish (each wait is bounded by
        rollout.timeout_s), so no thread still uses the actors after this returns."""
        self.executor.shutdown(wait=wait, cancel_futures=True)
        self.in_flight.clear()


def split_stale(samples: list[ScoredSample], learner_version: int, max_staleness: int,
                samples_per_prompt: int) -> tuple[list[ScoredSample], int]:
    """Drop every prompt group that holds a sample more than `max_staleness` versions older than the
    learner (a group is kept or dropped whole, so its advantage baseline stays intact).
    Returns (kept samples, number of dropped samples)."""
    kept: list[ScoredSample] = []
    for lo in range(0, len(samples), samples_per_prompt):
        group = samples[lo: lo + samples_per_prompt]
        if all(learner_version - s.policy_version <= max_staleness for s in group):
            kept.extend(group)
    return kept, len(samples) - len(kept)


class StalenessError(RuntimeError):
    """A sample about to be trained on is more than train.max_staleness policy versions old."""


def check_staleness(samples: list[Sample], learner_version: int, max_staleness: int) -> None:
    """Assert the bound on what is trained: every token's version lag (learner version - the version of
    the weights that generated it) is at most `max_staleness`. A sample's `policy_version` is its oldest
    token's (partial rollouts: `token_versions` holds each token's). Raises StalenessError naming the worst."""
    late = [s for s in samples if learner_version - s.policy_version > max_staleness]
    if late:
        worst = min(late, key=lambda s: s.policy_version)
        raise StalenessError(f"{len(late)} samples to train on are more than train.max_staleness={max_staleness} "
                             f"versions behind the learner (v{learner_version}); the oldest, of prompt "
                             f"{worst.prompt_index}, is from v{worst.policy_version}")


def staleness_metrics(samples: list[Sample], learner_version: int, max_staleness: int = 0) -> dict[str, float]:
    """Version lag of the samples trained on (a sample's: its oldest token's): mean, max, the versions seen,
    and the token-version lag histogram (`async/token_lag_<j>_frac`: the share of response tokens generated
    j versions behind the learner, j = 0..max_staleness, every bin logged; each token counted at its own
    version). Partial rollouts: `async/token_lag_max` and `rollout/partial_samples` (samples whose tokens
    span more than one version)."""
    ages = [learner_version - s.policy_version for s in samples] or [0]
    versions = [s.policy_version for s in samples] or [learner_version]
    token_lags = [learner_version - v for s in samples for v in s.versions()]
    tokens = [0] * (max(max_staleness, max(ages), max(token_lags, default=0)) + 1)
    for lag in token_lags:
        tokens[lag] += 1
    total = max(sum(tokens), 1)
    return {"async/staleness_mean": sum(ages) / len(ages), "async/staleness_max": float(max(ages)),
            "async/version_min": float(min(versions)), "async/version_max": float(max(versions)),
            "async/token_lag_max": float(max(token_lags, default=0)),
            "rollout/partial_samples": float(sum(len(set(s.token_versions)) > 1 for s in samples)),
            **{f"async/token_lag_{j}_frac": n / total for j, n in enumerate(tokens)}}
