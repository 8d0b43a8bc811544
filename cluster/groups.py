"""Driver-side handles for the three actor groups. Every call here is one RPC per actor."""
from __future__ import annotations

import dataclasses
import threading
from dataclasses import dataclass
import time
from typing import Any

import ray

from cluster.config import Config
from cluster.memory import engine_sequences
from cluster.placement import Placement
from learner.core_algos import batch_normalisers
from learner.worker import LearnerSpec, LearnerWorker
from protocol.batch import Prompt, Sample, TrainBatch, unshard
from reward.scoring import Verdict
from reward.worker import RewardWorker
from rollout.worker import EngineSpec, RolloutWorker


def _get(refs: Any, timeout_s: float, what: str) -> Any:
    try:
        return ray.get(refs, timeout=timeout_s)
    except ray.exceptions.GetTimeoutError:
        raise TimeoutError(f"{what} did not finish within {timeout_s:.0f}s") from None


class ActorFailure(RuntimeError):
    """An actor died, failed or did not answer in time; the message names it, e.g. `learner[1]`.
    `worker`: that name (None for a deadline); `lost`: the actor died (it may be restarting)."""

    def __init__(self, message: str, worker: str | None = None, lost: bool = False) -> None:
        super().__init__(message)
        self.worker, self.lost = worker, lost


def describe_error(error: Exception) -> str:
    """'ExceptionClass: last line of its message', of the remote cause when Ray wrapped it."""
    cause = getattr(error, "cause", None) or error
    return f"{type(cause).__name__}: {str(cause).strip().splitlines()[-1] if str(cause).strip() else ''}"


def wait_named(named: list[tuple[str, ray.ObjectRef]], timeout_s: float, what: str,
               error: type[ActorFailure] = ActorFailure, name_task_errors: bool = True) -> list[Any]:
    """Results of every actor's part; the first failure, or the deadline, raises `error` naming the
    actor(s). `name_task_errors=False` lets an exception raised by the method itself through as Ray
    gives it (an instance of the remote exception's class, so `except OSError` still works); deaths
    and timeouts are always named."""
    pending = {ref: name for name, ref in named}
    deadline = time.monotonic() + timeout_s
    while pending:
        ready, _ = ray.wait(list(pending), num_returns=1, timeout=max(0.0, deadline - time.monotonic()))
        if not ready:
            raise error(f"{what}: {', '.join(pending.values())} did not finish within {timeout_s:g}s")
        name = pending.pop(ready[0])
        try:
            ray.get(ready[0])
        except ray.exceptions.RayError as err:
            if isinstance(err, ray.exceptions.RayTaskError) and not name_task_errors:
                raise
            lost = isinstance(err, (ray.exceptions.RayActorError, ray.exceptions.ActorUnavailableError))
            raise error(f"{what}: {name} failed: {describe_error(err)}", name, lost) from err
    return ray.get([ref for _, ref in named])


class LearnerGroup:
    def __init__(self, cfg: Config, model_path: str, placement: Placement, **overrides: Any) -> None:
        l, a = cfg.learner, cfg.algorithm
        spec = LearnerSpec(model_path=model_path, device=cfg.cluster.device, dtype=cfg.model.dtype,
                           zero_stage=l.zero_stage, lr=l.lr, weight_decay=l.weight_decay, grad_clip=l.grad_clip,
                           micro_batch_size=l.micro_batch_size, clip_low=a.clip_low, clip_high=a.clip_high,
                           dual_clip=a.dual_clip, loss_agg=a.loss_agg, max_response_len=cfg.rollout.max_new_tokens,
                           entropy_coef=a.entropy_coef, kl_coef=a.kl_coef, kl_estimator=a.kl_estimator,
                           kl_in_reward=a.kl_in_reward, tis_cap=a.tis_cap, seed=cfg.train.seed,
                           timeout_s=cfg.sync.timeout_s)
        spec = dataclasses.replace(spec, **overrides)
        remote = ray.remote(LearnerWorker)
        self.timeout_s = cfg.sync.timeout_s * 5
        self.actors = [remote.options(**placement.options("learner", i),
                                      runtime_env={"env_vars": {"DS_ACCELERATOR": "cpu"}} if spec.device == "cpu" else None)
                       .remote(i, l.num_ranks, spec) for i in range(l.num_ranks)]
        addr, port = wait_named([("learner[0]", self.actors[0].address.remote())], self.timeout_s,
                                "learner start (enough free CPUs/GPUs?)")[0]
        self.num_params = self.call("setup", addr, port)[0]

    def call(self, method: str, *args: Any) -> list[Any]:
        """Run `method` on every rank at once (ZeRO needs all ranks) and return each rank's result.
        A rank that dies or hangs raises ActorFailure naming it (`learner[i]`); an exception the
        method raises comes through as itself."""
        return wait_named([(f"learner[{i}]", getattr(a, method).remote(*args)) for i, a in enumerate(self.actors)],
                          self.timeout_s, f"learner.{method}", name_task_errors=False)

    def train(self, batch: TrainBatch, loss: str = "policy") -> dict[str, float]:
        """One optimizer step on the global batch. Returns `loss` (the aggregate that was minimised),
        `grad_norm`, and every other statistic as a mean over the batch's loss tokens."""
        total_tokens, num_sequences = batch_normalisers(batch.loss_mask)
        per_rank = self.call("train_step", batch, total_tokens, num_sequences, loss)
        sums = {k: sum(r.get(k, 0.0) for r in per_rank) for k in per_rank[0]}
        tokens = max(sums.pop("tokens"), 1.0)
        out = {k: v / tokens for k, v in sums.items() if k not in ("grad_norm", "loss")}
        out["loss"], out["grad_norm"] = sums["loss"], per_rank[0]["grad_norm"]
        return out

    def logprobs(self, batch: TrainBatch) -> list[list[float]]:
        """Response logprobs under the learner's current weights, each rank scoring its shard."""
        return unshard(self.call("logprobs", batch))

    def ref_logprobs(self, batch: TrainBatch) -> list[list[float]]:
        """Reference-model logprobs of every response, each rank scoring its shard."""
        return unshard(self.call("ref_logprobs", batch))

    def kill(self) -> None:
        for a in self.actors:
            ray.kill(a)


class RolloutGroup:
    def __init__(self, cfg: Config, model_path: str, placement: Placement) -> None:
        r = cfg.rollout
        spec = EngineSpec(model_path=model_path, device=cfg.cluster.device, dtype=cfg.model.dtype,
                          max_model_len=r.max_model_len, kv_cache_gib=r.kv_cache_gib, max_num_seqs=r.max_num_seqs,
                          max_num_batched_tokens=r.max_num_batched_tokens, sequences=engine_sequences(cfg),
                          threads=max(1, int(r.cpus_per_worker)),
                          gpu_memory_utilization=r.gpu_memory_utilization, tensor_parallel_size=r.tensor_parallel_size,
                          multiprocess=r.multiprocess_engine, seed=cfg.train.seed)
        # Ray restarts a dead worker (same bundle, fresh engine from the base model); the driver then
        # re-syncs its weights and re-issues its prompts (cluster/generation.py). Tasks are not retried
        # by Ray: a re-issue must carry the current policy version, which only the driver knows.
        remote = ray.remote(max_restarts=r.max_restarts, max_task_retries=0)(RolloutWorker)
        self.cfg = r
        self.timeout_s = r.timeout_s
        self.actors = [remote.options(**placement.options("rollout", i)).remote(spec)
                       for i in range(r.num_workers)]
        _get([a.__ray_ready__.remote() for a in self.actors], self.timeout_s, "rollout engine start")

    def split(self, prompts: list[Prompt]) -> list[list[Prompt]]:
        """An even, deterministic split: worker i gets prompts i, i+k, i+2k, ..."""
        k = len(self.actors)
        return [prompts[i::k] for i in range(k)]

    def generate(self, prompts: list[Prompt], n: int, temperature: float, seed: int) -> list[Sample]:
        """All completions at once (no streaming, no restarts): for tests and quick checks."""
        refs = [actor.generate.remote(part, n, temperature, self.cfg.top_p, self.cfg.max_new_tokens, seed + i)
                for i, (actor, part) in enumerate(zip(self.actors, self.split(prompts))) if part]
        chunks = _get(refs, self.timeout_s, "generation")
        return sorted((s for c in chunks for s in c), key=lambda s: s.prompt_index)

    def wait_alive(self, index: int) -> None:
        """Block until rollout[index] answers (after a restart its engine is rebuilt: this can take a while)."""
        deadline = time.monotonic() + self.timeout_s
        while True:
            try:
                ray.get(self.actors[index].__ray_ready__.remote(), timeout=max(1.0, deadline - time.monotonic()))
                return
            except (ray.exceptions.RayActorError, ray.exceptions.ActorUnavailableError) as error:
                if isinstance(error, ray.exceptions.ActorDiedError) or time.monotonic() > deadline:
                    raise ActorFailure(f"rollout[{index}] died and was not restarted "
                                       f"(rollout.max_restarts={self.cfg.max_restarts}): {describe_error(error)}",
                                       f"rollout[{index}]", lost=True) from None
                time.sleep(0.5)
            except ray.exceptions.GetTimeoutError:
                raise ActorFailure(f"rollout[{index}] did not come back within rollout.timeout_s="
                                   f"{self.timeout_s:g}s after dying", f"rollout[{index}]") from None

    def restart(self, index: int) -> None:
        """Make rollout[index] exit (its engine failed) so that Ray restarts it; returns once it is gone."""
        try:
            ray.get(self.actors[index].restart.remote(), timeout=self.timeout_s)
        except (ray.exceptions.RayActorError, ray.exceptions.ActorUnavailableError):
            return  # exited, as asked
        except ray.exceptions.GetTimeoutError:
            ray.kill(self.actors[index], no_restart=False)

    def call(self, method: str, *args: Any) -> list[Any]:
        return _get([getattr(a, method).remote(*args) for a in self.actors], self.timeout_s, f"rollout.{method}")

    def kill(self) -> None:
        try:
            ray.get([a.shutdown.remote() for a in self.actors], timeout=30)
        finally:
            for a in self.actors:
                ray.kill(a)


@dataclass
class ScoreJob:
    """Samples sent to one reward actor, with the (response, gold answer) pairs, for a re-send."""

    ref: ray.ObjectRef
    actor_index: int
    actor: Any  # the handle it was sent to (the pool's slot may hold a replacement since)
    samples: list[Sample]
    pairs: list[tuple[str, str]]


class RewardPool:
    """K reward actors. Work is sent as soon as each generation chunk arrives; a stuck actor is
    killed and replaced and its items are counted as timeouts (reward 0)."""

    def __init__(self, cfg: Config, placement: Placement | None = None) -> None:
        self.cfg = cfg.reward
        self.placement = placement
        self.remote = ray.remote(RewardWorker)
        self.actors = [self._new_actor(i) for i in range(self.cfg.num_workers)]
        self.next = 0
        self.restarts = 0
        self.lock = threading.Lock()  # batches in flight (train.max_staleness > 0) score from their own threads

    def _new_actor(self, index: int) -> Any:
        """Actor `index`, in its reserved bundle when the pool was placed (a replacement reuses it)."""
        where = self.placement.options("reward", index) if self.placement else {"num_cpus": self.cfg.cpus_per_worker}
        return self.remote.options(max_concurrency=1, **where).remote(self.cfg.timeout_s, self.cfg.custom_fn,
                                                                      self.cfg.shaping)

    def submit(self, samples: list[Sample], answers: dict[int, str]) -> list[ScoreJob]:
        """Spread `samples` over the actors (round robin); verdicts come back through `collect`."""
        chunk = max(1, -(-len(samples) // len(self.actors)))
        with self.lock:
            return self._submit(samples, answers, chunk)

    def _submit(self, samples: list[Sample], answers: dict[int, str], chunk: int) -> list[ScoreJob]:
        jobs = []
        for lo in range(0, len(samples), chunk):
            part = samples[lo: lo + chunk]
            index = self.next % len(self.actors)
            self.next += 1
            pairs = [(s.text, answers[s.prompt_index]) for s in part]
            actor = self.actors[index]
            jobs.append(ScoreJob(actor.score.remote(pairs), index, actor, part, pairs))
        return jobs

    def collect(self, jobs: list[ScoreJob]) -> dict[str, float]:
        """Write verdicts into the samples; returns counts of timeouts, unboxed answers and replaced actors.

        A reward actor that hangs past the deadline is killed and replaced, and its items count as
        timeouts (reward 0). One that dies is replaced and its items are scored again, once."""
        counts = {"timeouts": 0.0, "unboxed": 0.0, "restarts": 0.0}
        deadline = time.monotonic() + self.cfg.timeout_s * 2 + self.cfg.grace_s
        for job in jobs:
            verdicts = self._verdicts(job, deadline, counts)
            for sample, verdict in zip(job.samples, verdicts):
                sample.reward, sample.correct = verdict.reward, verdict.correct
                counts["timeouts"] += verdict.timed_out
                counts["unboxed"] += not verdict.boxed
        return counts

    def _verdicts(self, job: ScoreJob, deadline: float, counts: dict[str, float], retry: bool = True) -> list[Verdict]:
        index, part = job.actor_index, job.samples
        timed_out = [Verdict(0.0, False, True, timed_out=True) for _ in part]
        try:
            return ray.get(job.ref, timeout=max(0.1, deadline - time.monotonic()))
        except ray.exceptions.GetTimeoutError:
            print(f"reward[{index}] did not answer within its deadline: replaced; {len(part)} items count as timeouts")
            self._replace(job, counts)
            return timed_out
        except ray.exceptions.RayActorError:
            self._replace(job, counts)
            if not retry:
                return timed_out
            print(f"reward[{index}] died or was replaced: scoring its {len(part)} items again")
            actor = self.actors[index]
            again = ScoreJob(actor.score.remote(job.pairs), index, actor, part, job.pairs)
            return self._verdicts(again, time.monotonic() + self.cfg.timeout_s * 2 + self.cfg.grace_s, counts, retry=False)

    def _replace(self, job: ScoreJob, counts: dict[str, float]) -> None:
        """Kill and replace the job's actor, unless an earlier job already did."""
        with self.lock:
            if self.actors[job.actor_index] is not job.actor:
                return
            ray.kill(job.actor)
            self.actors[job.actor_index] = self._new_actor(job.actor_index)
            self.restarts += 1
        counts["restarts"] += 1

    def kill(self) -> None:
        for a in self.actors:
            ray.kill(a)
