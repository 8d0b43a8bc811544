"""The parity check after every weight sync: do the engines serve the learner's weights?

A sync can "succeed" and still leave an engine on wrong weights: a bucket torn or skipped by a transport,
a name mapping that a vLLM upgrade changed (a fused projection loaded into the wrong slice), a stale
prefix cache. Nothing in the sync itself would notice; the run would train on samples from a policy it
does not hold. So after every sync a small fixed batch (`sync.parity_samples` held-out prompts, each
with one completion drawn once, from the base weights, when the trainer starts) is scored by every
engine (vLLM's prompt log-probs of prompt + completion, at temperature 1) and by the learner ranks (the
same tokens, the same temperature); the largest absolute gap over the completion tokens of every engine
is `sync/parity_max_abs`. Above the bound (`sync.parity_max_abs`; by default 1e-3 for float32 weights,
where engine and learner agree within 1e-4, and 0.5 for bfloat16) the run stops with a ParityError
naming the engine, the version and the gap, or with `sync.parity_action=warn` prints it and goes on.

The engines score after their load and before any generation submitted later (a Ray actor runs its
calls in order; one that died is waited for, re-synced and asked again), and reset their prefix cache
after scoring, so the engines generate next from the state the load left them in: a run logs the same
metrics with the check as without it (measured on configs/tiny.yaml, README). With train.partial_rollouts
the check does not wait for the generation in progress either: each engine scores the batch between two
of its engine steps, beside the requests in flight (RolloutWorker.parity_logprobs_in_flight).
"""
from __future__ import annotations

from typing import Any, Callable

import ray

from cluster.config import Config
from cluster.handles.actor_group import ActorFailure, wait_named
from cluster.handles.groups import LearnerGroup
from cluster.handles.rollout_group import RolloutGroup
from protocol.batch import Prompt, TrainBatch
from rollout.worker import EngineRestarted

DEFAULT_BOUND = {"float32": 1e-3, "bfloat16": 0.5}
PARITY_SEED = 4242  # the completions of the fixed batch (drawn once)


class ParityError(RuntimeError):
    """An engine's log-probs differ from the learner's beyond sync.parity_max_abs after a sync."""


def max_gaps(engine_logprobs: list[list[list[float]]], learner_logprobs: list[list[float]]) -> list[float]:
    """Per engine, the largest |engine - learner| over every token of every sequence. `engine_logprobs`:
    per engine, per sequence, the response tokens' log-probs (same lengths as the learner's)."""
    gaps = []
    for per_engine in engine_logprobs:
        worst = 0.0
        for engine, learner in zip(per_engine, learner_logprobs, strict=True):
            if len(engine) != len(learner):
                raise ValueError(f"parity check: {len(engine)} engine log-probs for {len(learner)} tokens")
            worst = max([worst, *(abs(a - b) for a, b in zip(engine, learner))])
        gaps.append(worst)
    return gaps


class ParityCheck:
    def __init__(self, cfg: Config, learners: LearnerGroup, rollouts: RolloutGroup, prompts: list[Prompt],
                 resync: Callable[[int], None] | None = None) -> None:
        """`resync(i)`: loads the current weights into rollout[i] after Ray restarted it (WeightSync.resync);
        an engine that dies during the check is then scored again, once."""
        self.cfg, self.learners, self.rollouts, self.resync = cfg, learners, rollouts, resync
        self.prompts = prompts[: cfg.sync.parity_samples]
        self.bound = cfg.sync.parity_max_abs or DEFAULT_BOUND[cfg.model.dtype]
        self.batch: TrainBatch | None = None  # the fixed batch, drawn at the first check
        self.recovered = 0  # engines restarted and re-synced during this check

    def _on_engine(self, index: int, what: str, submit: Callable[[], ray.ObjectRef], ref: Any = None) -> Any:
        """The result of `submit()`, a call on rollout[index] (`ref`: that call, submitted already); a worker
        that died (or was restarted by Ray since the sync) is waited for, re-synced and asked again, once."""
        name = self.rollouts.actor_name(index)
        for attempt in range(2):
            if ref is None or attempt:
                ref = submit()
            try:
                return wait_named([(name, ref)], self.cfg.rollout.timeout_s, f"parity check ({what})")[0]
            except ActorFailure as error:
                restarted = error.lost or isinstance(error.__cause__, EngineRestarted)
                if attempt or not restarted or self.resync is None:
                    raise
                print(f"parity check: {name} was restarted ({error}); re-syncing it and scoring again", flush=True)
                self.rollouts.wait_alive(index)
                self.resync(index)
                self.recovered += 1

    @property
    def enabled(self) -> bool:
        return bool(self.prompts)

    def prepare(self) -> None:
        """Draw the fixed batch now, from the base weights every engine starts with (a fresh run and a
        resumed one draw the same, so a resumed run logs the same parity gaps), and leave the engines'
        prefix caches empty, as they started."""
        if self.enabled:
            self.engine_logprobs(self._fixed_batch())

    def _fixed_batch(self) -> TrainBatch:
        if self.batch is None:
            r = self.cfg.rollout
            prompts = [Prompt(i, p.token_ids, p.answer) for i, p in enumerate(self.prompts)]
            samples = self._on_engine(0, "generate", lambda: self.rollouts.submit_generate(
                0, prompts, 1, r.temperature, r.top_p, r.max_new_tokens, PARITY_SEED))
            self.batch = TrainBatch([s.prompt_ids for s in samples], [s.response_ids for s in samples], [],
                                    [0.0] * len(samples))
        return self.batch

    def engine_logprobs(self, batch: TrainBatch) -> list[list[list[float]]]:
        """Per engine, per sequence: the response tokens' log-probs under the engine's weights (T=1)."""
        sequences = [p + r for p, r in zip(batch.prompt_ids, batch.response_ids)]
        engines = range(self.rollouts.size)
        # partial rollouts: scored beside the generation in progress, not after it
        submit = (self.rollouts.submit_parity_logprobs_in_flight if self.cfg.train.partial_rollouts
                  else self.rollouts.submit_parity_logprobs)
        refs = [submit(i, sequences) for i in engines]  # all engines at once
        per_engine = [self._on_engine(i, "parity_logprobs", lambda i=i: submit(i, sequences),
                                      ref=ref) for i, ref in zip(engines, refs)]
        return [[lp[len(p) - 1:] for lp, p in zip(engine, batch.prompt_ids)] for engine in per_engine]

    def check(self, version: int) -> dict[str, float]:
        """Score the fixed batch on every engine and the learner; raise ParityError (or warn) above the bound."""
        if not self.enabled:
            return {}
        self.recovered = 0
        batch = self._fixed_batch()
        gaps = max_gaps(self.engine_logprobs(batch), self.learners.logprobs(batch, 1.0))
        worst = max(range(len(gaps)), key=gaps.__getitem__)
        if gaps[worst] > self.bound:
            message = (f"weight parity after sync v{version}: {self.rollouts.actor_name(worst)}'s log-probs differ from the learner's "
                       f"by up to {gaps[worst]:.3g} (bound sync.parity_max_abs={self.bound:g}; every engine: "
                       f"{', '.join(f'{g:.3g}' for g in gaps)}): the engine does not serve the learner's weights")
            if self.cfg.sync.parity_action == "stop":
                raise ParityError(message)
            print(f"warning: {message}", flush=True)
        return {"sync/parity_max_abs": gaps[worst], "sync/parity_failed": float(gaps[worst] > self.bound),
                "sync/parity_recovered": float(self.recovered)}
