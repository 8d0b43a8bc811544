"""One batch of prompts in flight: streamed from the rollout workers into the reward pool as prompts finish.

Each worker runs `RolloutWorker.generate_stream`, a Ray streaming generator that hands back every
prompt (all n completions) in the engine step it finishes, so scoring overlaps generation.

A worker that dies mid-batch is restarted by Ray (`rollout.max_restarts`); `resync(i)` loads the
current policy into the new engine and the worker's unfinished prompts are issued to it again with the
same seeds, so the batch completes with every prompt exactly once. Every wait is bounded by
`rollout.timeout_s`: a worker that finishes no prompt for that long is named in a GenerationError.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

import ray

from cluster.groups import RewardPool, RolloutGroup
from protocol.batch import GeneratedChunk, Prompt, Sample

# What a stream raises when its actor died or lost its connection (the actor may be restarting).
ACTOR_LOST = (ray.exceptions.RayActorError, ray.exceptions.ActorUnavailableError)


class GenerationError(RuntimeError):
    pass


@dataclass
class ScoredBatch:
    """A finished batch: scored samples sorted by prompt, and what it cost."""

    samples: list[Sample]
    counts: dict[str, float]  # reward timeouts, errors, unboxed answers, replaced reward actors
    engine_s: list[float]  # seconds each rollout worker's engine worked on this batch
    wall_s: float  # from submission to the last verdict
    restarts: int = 0  # rollout workers that died and were restarted during the batch
    reissued: int = 0  # prompts given again to restarted workers (unfinished when their worker died)


class StreamedBatch:
    """Submits generation at construction (so it is ordered against weight syncs submitted later);
    `result()` consumes the streams, and may run in another thread."""

    def __init__(self, rollouts: RolloutGroup, pool: RewardPool, prompts: list[Prompt], n: int,
                 temperature: float, seed: int, resync: Callable[[int], None] | None = None,
                 on_chunk: Callable[[int, GeneratedChunk], None] | None = None) -> None:
        """`resync(i)`: loads the current policy into restarted rollout[i]; `on_chunk(i, chunk)` sees every
        chunk as it arrives (progress display, fault-injection tests)."""
        self.rollouts, self.pool, self.n = rollouts, pool, n
        self.temperature, self.seed, self.resync, self.on_chunk = temperature, seed, resync, on_chunk
        self.answers = {p.index: p.answer for p in prompts}
        self.started = time.perf_counter()
        self.streams: dict[ray.ObjectRefGenerator, tuple[int, list[Prompt]]] = {}
        for worker, part in enumerate(rollouts.split(prompts)):
            if part:
                self._issue(worker, part)

    def _issue(self, worker: int, prompts: list[Prompt]) -> None:
        r = self.rollouts.cfg
        stream = self.rollouts.actors[worker].generate_stream.remote(
            prompts, self.n, self.temperature, r.top_p, r.max_new_tokens, self.seed + worker)
        self.streams[stream] = (worker, list(prompts))

    def result(self) -> ScoredBatch:
        samples: list[Sample] = []
        jobs: list = []
        engine_s = [0.0] * len(self.rollouts.actors)
        restarts = reissued = 0
        while self.streams:
            stream, worker, unfinished = self._next_ready()
            try:
                chunk: GeneratedChunk = ray.get(next(stream))
            except StopIteration:
                del self.streams[stream]
                if unfinished:
                    raise GenerationError(f"rollout[{worker}] ended its stream with {len(unfinished)} prompts unfinished")
                continue
            except ACTOR_LOST:
                del self.streams[stream]
                restarts += 1
                reissued += len(unfinished)
                self._recover(worker, unfinished)
                continue
            if self.on_chunk is not None:
                self.on_chunk(worker, chunk)
            self._mark_finished(unfinished, chunk.samples)
            samples.extend(chunk.samples)
            engine_s[worker] += chunk.engine_s
            jobs.extend(self.pool.submit(chunk.samples, self.answers))
        counts = self.pool.collect(jobs)
        samples.sort(key=lambda s: s.prompt_index)  # stable: a prompt's completions keep their order
        return ScoredBatch(samples, counts, engine_s, time.perf_counter() - self.started, restarts, reissued)

    def _next_ready(self) -> tuple[ray.ObjectRefGenerator, int, list[Prompt]]:
        timeout = self.rollouts.cfg.timeout_s
        ready, _ = ray.wait(list(self.streams), num_returns=1, timeout=timeout)
        if not ready:
            stuck = ", ".join(f"rollout[{w}] ({len(left)} prompts left)" for w, left in self.streams.values())
            raise GenerationError(f"generation: {stuck} finished no prompt within rollout.timeout_s={timeout:g}s")
        return ready[0], *self.streams[ready[0]]

    def _mark_finished(self, unfinished: list[Prompt], samples: list[Sample]) -> None:
        done = {s.prompt_index for s in samples}
        unfinished[:] = [p for p in unfinished if p.index not in done]

    def _recover(self, worker: int, unfinished: list[Prompt]) -> None:
        """The worker died: wait for Ray to restart it, load the current weights, re-issue its prompts."""
        self.rollouts.wait_alive(worker)
        if self.resync is not None:
            self.resync(worker)
        print(f"rollout[{worker}] died and was restarted; re-issuing its {len(unfinished)} unfinished prompts")
        if unfinished:
            self._issue(worker, unfinished)


def generate_and_score(rollouts: RolloutGroup, pool: RewardPool, prompts: list[Prompt], n: int, temperature: float,
                       seed: int, resync: Callable[[int], None] | None = None) -> ScoredBatch:
    """Generate n completions per prompt and score them, streaming finished prompts to the pool."""
    return StreamedBatch(rollouts, pool, prompts, n, temperature, seed, resync).result()
