"""One batch of prompts in flight: streamed from the rollout workers into the reward pool as prompts finish.

Each worker runs `RolloutWorker.generate_stream`, a Ray streaming generator that hands back every
prompt (all n completions) in the engine step it finishes, so scoring overlaps generation.

A worker that dies mid-batch is restarted by Ray (`rollout.max_restarts`); `resync(i)` loads the
current policy into the new engine and the worker's unfinished prompts are issued to it again with the
same seeds, so the batch completes with every prompt exactly once. An error raised inside the engine
(a RayTaskError: the actor lives, its engine may not) is handled the same way: the worker is told to
exit, Ray restarts it, and its prompts are re-issued. A worker that died between batches (Ray restarted
it before this batch reached it) refuses to generate until re-synced (EngineRestarted): it is re-synced
and its prompts re-issued the same way, instead of serving the base model's weights. The cause is
printed and kept in `ScoredBatch.restart_causes`. A worker that fails a second time in the same batch
stops it (ActorFailure naming the worker and both causes): the failure repeats on the same prompts.
Every wait is bounded by `rollout.timeout_s`: a worker that finishes no prompt for that long is named in
a GenerationError.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable

import ray

from cluster.infra import faults
from cluster.handles.actor_group import ActorFailure, actor_error_text
from cluster.handles.groups import RewardPool
from cluster.handles.rollout_group import RolloutGroup
from protocol.batch import GeneratedChunk, Prompt, Sample, ScoredSample
from reward.scoring import Verdict
from rollout.worker import EngineRestarted

Shaping = Callable[[Sample], float]  # an addition to a sample's reward (cluster.loop.dynamic.overlong_shaping)

# What a stream raises when its actor died or lost its connection (the actor may be restarting).
# A worker killed by Ray's memory monitor raises OutOfMemoryError to its caller; Ray restarts the actor.
ACTOR_LOST = (ray.exceptions.RayActorError, ray.exceptions.ActorUnavailableError, ray.exceptions.OutOfMemoryError)
# Every failure of a worker's stream that `StreamedBatch` recovers from (see `what_failed`).
WORKER_FAILED = (*ACTOR_LOST, EngineRestarted, ray.exceptions.RayTaskError)


def what_failed(error: Exception) -> tuple[str, bool]:
    """What happened to a worker whose stream raised `error` (one of WORKER_FAILED), and whether it must be
    made to exit before Ray restarts it (an error inside its engine leaves the actor alive)."""
    if isinstance(error, ACTOR_LOST):
        return "died", False
    if isinstance(error, EngineRestarted):  # died between batches: Ray restarted it before this batch came
        return "was restarted by Ray with the base model's weights", False
    return "failed inside its engine", True


class GenerationError(RuntimeError):
    pass


@dataclass
class ScoredBatch:
    """A finished batch: scored samples sorted by prompt, and what it cost."""

    samples: list[ScoredSample]
    counts: dict[str, float]  # reward timeouts, errors, unboxed answers, replaced reward actors
    engine_s: list[float]  # seconds each rollout worker's engine worked on this batch
    wall_s: float  # from submission to the last verdict
    restarts: int = 0  # rollout workers that died or failed and were restarted during the batch
    reissued: int = 0  # prompts given again to restarted workers (unfinished when their worker died)
    restart_causes: list[str] = field(default_factory=list)  # "rollout[i] <what happened>: <error>" each
    metrics: dict[str, float] = field(default_factory=dict)  # what the pipeline did to it (cluster/loop/dynamic.py)


class StreamedBatch:
    """Submits generation at construction (so it is ordered against weight syncs submitted later);
    `result()` consumes the streams, and may run in another thread."""

    def __init__(self, rollouts: RolloutGroup, pool: RewardPool, prompts: list[Prompt], n: int,
                 temperature: float, seed: int, resync: Callable[[int], None] | None = None,
                 on_chunk: Callable[[int, GeneratedChunk], None] | None = None, step: int | None = None,
                 shaping: Shaping | None = None) -> None:
        """`resync(i)`: loads the current policy into restarted rollout[i]; `on_chunk(i, chunk)` sees every
        chunk as it arrives (progress display, fault-injection tests); `step`: the training step (from 1)
        this batch is for, None for evaluation (messages, fault injection); `shaping`: added to each
        sample's reward (see `scored_samples`)."""
        self.rollouts, self.pool, self.n, self.step, self.shaping = rollouts, pool, n, step, shaping
        self.causes: dict[int, list[str]] = {}  # worker -> what made it restart during this batch
        self.temperature, self.seed, self.resync, self.on_chunk = temperature, seed, resync, on_chunk
        self.answers = {p.index: p.answer for p in prompts}
        self.started = time.perf_counter()
        self.streams: dict[ray.ObjectRefGenerator, tuple[int, list[Prompt]]] = {}
        for worker, part in enumerate(rollouts.split(prompts)):
            if part:
                self._issue(worker, part)

    def _issue(self, worker: int, prompts: list[Prompt]) -> None:
        r = self.rollouts.cfg
        faults.engine_error(self.step, worker, self.rollouts, reissue=worker in self.causes)
        stream = self.rollouts.submit_generate_stream(worker, prompts, self.n, self.temperature, r.top_p,
                                                      r.max_new_tokens, self.seed + worker)
        self.streams[stream] = (worker, list(prompts))

    def result(self) -> ScoredBatch:
        samples: list[Sample] = []
        jobs: list = []
        engine_s = [0.0] * self.rollouts.size
        restarts = reissued = 0
        while self.streams:
            stream, worker, unfinished = self._next_ready()
            try:
                chunk: GeneratedChunk = ray.get(next(stream))
            except StopIteration:
                del self.streams[stream]
                if unfinished:
                    raise GenerationError(f"{self.rollouts.actor_name(worker)} ended its stream with {len(unfinished)} prompts unfinished")
                continue
            except WORKER_FAILED as error:
                del self.streams[stream]
                restarts += 1
                reissued += len(unfinished)
                self._recover(worker, unfinished, error)
                continue
            self.rollouts.note_progress(worker)
            if self.on_chunk is not None:
                self.on_chunk(worker, chunk)
            self._mark_finished(unfinished, chunk.samples)
            samples.extend(chunk.samples)
            engine_s[worker] += chunk.engine_s
            jobs.extend(self.pool.submit(chunk.samples, self.answers))
        verdicts, counts = self.pool.collect(jobs)  # in submission order: the order of `samples`
        scored = scored_samples(samples, verdicts, self.shaping)
        scored.sort(key=lambda s: s.prompt_index)  # stable: a prompt's completions keep their order
        causes = [c for w in sorted(self.causes) for c in self.causes[w]]
        return ScoredBatch(scored, counts, engine_s, time.perf_counter() - self.started, restarts, reissued, causes)

    def _next_ready(self) -> tuple[ray.ObjectRefGenerator, int, list[Prompt]]:
        timeout = self.rollouts.cfg.timeout_s
        ready, _ = ray.wait(list(self.streams), num_returns=1, timeout=timeout)
        if not ready:
            stuck = ", ".join(f"{self.rollouts.actor_name(w)} ({len(left)} prompts left)" for w, left in self.streams.values())
            raise GenerationError(f"generation: {stuck} finished no prompt within rollout.timeout_s={timeout:g}s")
        return ready[0], *self.streams[ready[0]]

    def _mark_finished(self, unfinished: list[Prompt], samples: list[Sample]) -> None:
        done = {s.prompt_index for s in samples}
        unfinished[:] = [p for p in unfinished if p.index not in done]

    def _recover(self, worker: int, unfinished: list[Prompt], error: Exception) -> None:
        """The worker died or its engine failed: (an engine error: make it exit,) wait for Ray to restart
        it, load the current weights, re-issue its prompts. A second failure in this batch raises."""
        what, restart = what_failed(error)
        name, where = self.rollouts.actor_name(worker), "" if self.step is None else f" (step {self.step})"
        cause = f"{name} {what}{where}: {actor_error_text(error)}"
        earlier = self.causes.setdefault(worker, [])
        earlier.append(cause)
        if len(earlier) > 1:
            raise ActorFailure(f"{name} failed again after a restart, on the same prompts: {'; then '.join(earlier)}",
                               name)
        print(f"{cause}; restarting it and re-issuing its {len(unfinished)} unfinished prompts", flush=True)
        if restart:
            self.rollouts.restart(worker)
        self.rollouts.wait_alive(worker)
        if self.resync is not None:
            self.resync(worker)
        if unfinished:
            self._issue(worker, unfinished)


def scored_samples(samples: list[Sample], verdicts: list[Verdict],
                   shaping: Shaping | None = None) -> list[ScoredSample]:
    """The one place a sample's reward and correctness are set: its verdict's (from
    `cluster.handles.groups.RewardPool.collect`), with `shaping(sample)` added to the reward when given."""
    return [ScoredSample.of(s, v.reward + shaping(s) if shaping is not None else v.reward, v.correct)
            for s, v in zip(samples, verdicts, strict=True)]


def generate_and_score(rollouts: RolloutGroup, pool: RewardPool, prompts: list[Prompt], n: int, temperature: float,
                       seed: int, resync: Callable[[int], None] | None = None) -> ScoredBatch:
    """Generate n completions per prompt and score them, streaming finished prompts to the pool."""
    return StreamedBatch(rollouts, pool, prompts, n, temperature, seed, resync).result()
