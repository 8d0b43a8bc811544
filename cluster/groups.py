"""Driver-side handles for the actor groups (learner, critic, rollout, reward). Every call here is one
RPC per actor."""
from __future__ import annotations

import dataclasses
import inspect
import re
import sys
import threading
from dataclasses import dataclass
import time
from typing import Any, TypeVar

import ray

from cluster.config import Config
from cluster.placement import Placement
from cluster.specs import critic_spec, engine_spec, learner_spec
from learner.critic import CriticWorker
from learner.worker import LearnerWorker
from protocol.batch import Prompt, Sample, TrainBatch
from reward.scoring import Verdict, describe_error, error_kind
from reward.worker import RewardWorker
from rollout.worker import RolloutWorker

T = TypeVar("T")


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


def actor_error_text(error: Exception) -> str:
    """'ExceptionClass: last line of its message', of the remote cause when Ray wrapped it; a kill by
    Ray's memory monitor as such, with the memory figures Ray gives (oom_text)."""
    cause = getattr(error, "cause", None) or error
    if (oom := oom_text(str(cause))) is not None:
        return oom
    return f"{type(cause).__name__}: {str(cause).strip().splitlines()[-1] if str(cause).strip() else ''}"


def oom_text(message: str) -> str | None:
    """One line from Ray's OOM-kill message (ray.exceptions.OutOfMemoryError, or an actor death whose
    detail carries it): the node's memory against Ray's threshold and what the killed worker used.
    None when the message is not one."""
    if "running low on memory" not in message:
        return None
    node = re.search(r"was ([\d.]+GB) used / ([\d.]+GB) limit", message)
    threshold = re.search(r"threshold of \d+B \(([\d.]+)% of", message)
    killed = re.search(r"Selected to kill: .*?task name=([^,]+),.*?pid=(\d+), actual memory used=([\d.]+GB)", message, re.S)
    parts = ["killed by Ray's memory monitor (OOM)"]
    if killed:
        parts.append(f"{killed.group(1)} (pid {killed.group(2)}) used {killed.group(3)}")
    if node:
        parts.append(f"the node had {node.group(1)} used of {node.group(2)}"
                     + (f", above Ray's kill threshold of {threshold.group(1)}%" if threshold else ""))
    return "; ".join(parts) + " (python -m cluster.memory --config ... predicts each process; RAY_memory_usage_threshold)"


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else text


def wait_named(named: list[tuple[str, ray.ObjectRef]], timeout_s: float, what: str,
               error: type[ActorFailure] = ActorFailure, name_task_errors: bool = True,
               grace_s: float = 10.0) -> list[Any]:
    """Results of every actor's part; the first failure, or the deadline, raises `error` naming the
    actor(s). `name_task_errors=False` lets an exception raised by the method itself through as Ray
    gives it (an instance of the remote exception's class, so `except OSError` still works), unless
    other actors are still running `grace_s` after it: a rank that hangs leaves the others failing in a
    collective (gloo's timeout), so then the error names both. Deaths and timeouts are always named."""
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
                ray.wait(list(pending), num_returns=len(pending), timeout=min(grace_s, max(0.0, deadline - time.monotonic())))
                stuck = [n for ref, n in pending.items() if not ray.wait([ref], timeout=0)[0]]
                if not stuck:
                    raise
                raise error(f"{what}: {', '.join(stuck)} did not finish, and {name} failed meanwhile "
                            f"({actor_error_text(err)}): {' and '.join(stuck)} hangs, or waits for {name} in a collective",
                            stuck[0]) from err
            lost = isinstance(err, (ray.exceptions.RayActorError, ray.exceptions.ActorUnavailableError,
                                    ray.exceptions.OutOfMemoryError))
            raise error(f"{what}: {name} failed: {actor_error_text(err)}", name, lost) from err
    return ray.get([ref for _, ref in named])


def shared_batches(args: tuple[Any, ...]) -> tuple[Any, ...]:
    """`args` with each TrainBatch put into Ray's object store once, as a reference: every rank of the
    call reads the same serialised copy (Ray resolves a top-level reference argument), instead of Ray
    pickling the batch into each rank's call (hundreds of MB per copy at 7B batch sizes)."""
    return tuple(ray.put(a) if isinstance(a, TrainBatch) else a for a in args)


def merge_indexed(per_rank: list[list[tuple[int, T]]], size: int) -> list[T]:
    """The ranks' (sample index, value) pairs as one list in batch order; every index exactly once."""
    out: list[Any] = [None] * size
    for index, value in (pair for part in per_rank for pair in part):
        out[index] = value
    missing = [i for i, v in enumerate(out) if v is None]
    if missing:
        raise RuntimeError(f"no rank returned samples {missing[:5]}")
    return out


class RankGroup:
    """`num_ranks` DeepSpeed ranks of one role (`learner`, `critic`) as Ray actors in their bundles."""

    def __init__(self, role: str, worker: type, spec: Any, num_ranks: int, placement: Placement,
                 call_timeout_s: float) -> None:
        remote = ray.remote(worker)
        self.role, self.spec = role, spec
        self.timeout_s = call_timeout_s  # <role>.call_timeout_s: one call on all ranks
        env = {"env_vars": {"DS_ACCELERATOR": "cpu"}} if spec.device == "cpu" else None
        self.actors = [remote.options(**placement.options(role, i), runtime_env=env).remote(i, num_ranks, spec)
                       for i in range(num_ranks)]
        addr, port = wait_named([(f"{role}[0]", self.actors[0].address.remote())], self.timeout_s,
                                f"{role} start (enough free CPUs/GPUs?)")[0]
        print(f"{role} rendezvous: {addr}:{port} ({role}[0]'s node)")
        self.num_params = self.call("setup", addr, port)[0]

    def call(self, method: str, *args: Any) -> list[Any]:
        """Run `method` on every rank at once (ZeRO needs all ranks) and return each rank's result.
        A rank that dies or hangs raises ActorFailure naming it (`learner[i]`); an exception the
        method raises comes through as itself, unless other ranks are still running after it: then
        they are the ones named (a rank that hangs leaves the others failing in a collective)."""
        # A rank waiting in a collective for a failed peer fails itself within the process group's
        # timeout (<role>.collective_timeout_s): one still running after that is the one that hangs.
        args = shared_batches(args)
        return wait_named([(f"{self.role}[{i}]", getattr(a, method).remote(*args)) for i, a in enumerate(self.actors)],
                          self.timeout_s, f"{self.role}.{method}", name_task_errors=False,
                          grace_s=self.spec.collective_timeout_s)

    def scored(self, method: str, batch: TrainBatch, seed: int | None) -> list[list[float]]:
        """Per-token values of every sample from a scoring `method` (old_logprobs, ref_logprobs, values)."""
        return merge_indexed(self.call(method, batch, seed), len(batch))

    def train(self, batch: TrainBatch, seed: int | None = None, *args: Any) -> dict[str, float]:
        """The update on the global batch. Returns `loss` (the mean over mini-batches of the aggregate
        that was minimised), `grad_norm` (mean over optimizer steps), `optimizer_steps`, every `<x>_max`
        as a maximum and every other statistic as a mean over the batch's loss tokens (all epochs)."""
        per_rank = self.call("train_step", batch, seed, *args)
        sums = {k: sum(r.get(k, 0.0) for r in per_rank) for k in per_rank[0] if not k.endswith("_max")}
        steps = per_rank[0]["optimizer_steps"]
        out = {k: v / max(sums["tokens"], 1.0) for k, v in sums.items()
               if k not in ("tokens", "loss", "grad_norm", "mini_batches", "optimizer_steps")}
        out.update({k: max(r[k] for r in per_rank if k in r) for k in {k for r in per_rank for k in r if k.endswith("_max")}})
        out["loss"] = sums["loss"] / max(per_rank[0]["mini_batches"], 1.0)
        out["grad_norm"], out["optimizer_steps"] = per_rank[0]["grad_norm"] / max(steps, 1.0), steps
        return out

    def kill(self) -> None:
        for a in self.actors:
            ray.kill(a)


class LearnerGroup(RankGroup):
    """The policy's ranks. `overrides` replace spec fields (the base-model warm-up: lr, kl_coef)."""

    def __init__(self, cfg: Config, model_path: str, placement: Placement, **overrides: Any) -> None:
        spec = dataclasses.replace(learner_spec(cfg, model_path), **overrides)
        super().__init__("learner", LearnerWorker, spec, cfg.learner.num_ranks, placement, cfg.learner.call_timeout_s)

    def train(self, batch: TrainBatch, seed: int | None = None, loss: str = "policy") -> dict[str, float]:
        """The policy update (`loss="sft"`: one supervised step, the base-model warm-up). The step's batch
        (cluster/update.py) carries its reference log-probs, and its old log-probs when the update takes
        more than one optimizer step; a bare batch gets them here first (with one optimizer step, the
        ranks take the old log-probs from their training forward)."""
        single = self.spec.ppo_epochs * self.spec.ppo_mini_batches == 1
        if loss == "policy" and len(batch) and not batch.old_logprobs and not single:
            batch = dataclasses.replace(batch, old_logprobs=self.old_logprobs(batch, seed))
        if loss == "policy" and len(batch) and not batch.ref_logprobs and self.spec.kl_coef > 0 and not self.spec.kl_in_reward:
            batch = dataclasses.replace(batch, ref_logprobs=self.ref_logprobs(batch, seed))
        return super().train(batch, seed, loss)

    def old_logprobs(self, batch: TrainBatch, seed: int | None) -> list[list[float]]:
        """The PPO old log-probs: the current weights' log-probs of every response, computed in the
        micro-batches that `train(batch, seed)` will train on first."""
        return self.scored("old_logprobs", batch, seed)

    def ref_logprobs(self, batch: TrainBatch, seed: int | None = None) -> list[list[float]]:
        """Reference-model logprobs of every response, each rank scoring its share."""
        return self.scored("ref_logprobs", batch, seed)

    def logprobs(self, batch: TrainBatch, temperature: float | None = None) -> list[list[float]]:
        """Response logprobs under the learner's current weights at `temperature` (None: the rollout
        temperature), each rank scoring its share."""
        return merge_indexed(self.call("logprobs", batch, temperature), len(batch))


class CriticGroup(RankGroup):
    """The value model's ranks (`algorithm.advantage=gae`), placed in the `critic` bundles."""

    def __init__(self, cfg: Config, model_path: str, placement: Placement) -> None:
        super().__init__("critic", CriticWorker, critic_spec(cfg, model_path), cfg.critic.num_ranks, placement,
                         cfg.critic.call_timeout_s)

    def values(self, batch: TrainBatch, seed: int | None) -> list[list[float]]:
        return self.scored("values", batch, seed)


SYNC_THREAD = "sync"  # the rollout actors' concurrency group for RolloutWorker.load_weights_in_flight


class RolloutGroup:
    def __init__(self, cfg: Config, model_path: str, placement: Placement, **overrides: Any) -> None:
        """`overrides`: EngineSpec fields that differ from what the config gives (tests)."""
        r = cfg.rollout
        spec = dataclasses.replace(engine_spec(cfg, model_path), **overrides)
        # Ray restarts a dead worker (same bundle, fresh engine from the base model); the driver then
        # re-syncs its weights and re-issues its prompts (cluster/generation.py). Tasks are not retried
        # by Ray: a re-issue must carry the current policy version, which only the driver knows.
        # SYNC_THREAD: a second thread for weight loads that must not wait behind generation (partial rollouts).
        remote = ray.remote(max_restarts=r.max_restarts, max_task_retries=0,
                            concurrency_groups={SYNC_THREAD: 1})(RolloutWorker)
        self.cfg = r
        self.timeout_s = r.timeout_s
        self.sleeps = spec.sleep_mode  # colocated: engines sleep while the learner trains
        self.actors = []
        for i in range(r.num_workers):
            bundles, share = placement.engine_ranks(i)  # a GPU engine's TP ranks: their bundles and GPU share
            self.actors.append(remote.options(**placement.options("rollout", i)).remote(
                dataclasses.replace(spec, ray_bundles=bundles, gpus_per_rank=share)))
        # When each worker last showed progress (started, or finished a prompt): a call queued behind its
        # generation (a weight load) is judged by the same rule as generation itself (cluster/sync.py).
        self.progress = [time.monotonic()] * r.num_workers
        _get([a.__ray_ready__.remote() for a in self.actors], self.timeout_s, "rollout engine start")

    def note_progress(self, index: int) -> None:
        self.progress[index] = time.monotonic()

    def sleep(self) -> None:
        """Colocated: every engine frees its GPU memory for the learner; the next weight load wakes it."""
        if self.sleeps:
            wait_named([(f"rollout[{i}]", a.sleep.remote()) for i, a in enumerate(self.actors)], self.timeout_s,
                       "rollout engines going to sleep")

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
                                       f"(rollout.max_restarts={self.cfg.max_restarts}): {actor_error_text(error)}",
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
    deadline: float  # monotonic: the actor's queue ahead of it and its own items, each within timeout_s


class RewardPool:
    """K reward actors. Work is sent as soon as each generation chunk arrives; a stuck actor is
    killed and replaced and its items are counted as timeouts (reward 0). An item whose scoring
    raised (the grader or reward.custom_fn) scores as a wrong answer and counts in `errors`; each
    kind of error (where + exception type) is printed once per pool."""

    def __init__(self, cfg: Config, placement: Placement | None = None) -> None:
        self.cfg = cfg.reward
        self.placement = placement
        self.remote = ray.remote(RewardWorker)
        self.actors = [self._new_actor(i) for i in range(self.cfg.num_workers)]
        self.next = 0
        self.restarts = 0
        self.lock = threading.Lock()  # batches in flight (train.max_staleness > 0) score from their own threads
        self.error_kinds: set[str] = set()
        self.queued = [0] * len(self.actors)  # items sent to each actor and not yet collected

    def _new_actor(self, index: int) -> Any:
        """Actor `index`, in its reserved bundle when the pool was placed (a replacement reuses it)."""
        where = self.placement.options("reward", index) if self.placement else {"num_cpus": self.cfg.cpus_per_worker}
        fields = type(self.cfg).model_fields  # every reward.* setting the actor's constructor takes, by name
        settings = {name: getattr(self.cfg, name) for name in inspect.signature(RewardWorker).parameters if name in fields}
        return self.remote.options(max_concurrency=1, **where).remote(**settings)

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
            self.queued[index] += len(part)
            jobs.append(ScoreJob(actor.score.remote(pairs), index, actor, part, pairs, self._deadline(self.queued[index])))
        return jobs

    def _deadline(self, items: int) -> float:
        """When `items` answers queued on one actor must be scored by: each is bounded by timeout_s inside
        the actor (one more for the call itself), plus grace_s for start-up and imports."""
        return time.monotonic() + self.cfg.timeout_s * (items + 1) + self.cfg.grace_s

    def collect(self, jobs: list[ScoreJob]) -> dict[str, float]:
        """Write verdicts into the samples; returns counts of timeouts, errors, unboxed answers and
        replaced actors.

        A reward actor that hangs past the deadline is killed and replaced, and its items count as
        timeouts (reward 0). One that dies is replaced and its items are scored again, once. Items
        whose scoring raised count as errors (scored as wrong answers: reward.scoring)."""
        counts = {"timeouts": 0.0, "errors": 0.0, "unboxed": 0.0, "restarts": 0.0}
        for job in jobs:
            try:
                verdicts = self._verdicts(job, job.deadline, counts)
            finally:
                with self.lock:
                    self.queued[job.actor_index] -= len(job.samples)
            for sample, verdict in zip(job.samples, verdicts):
                sample.reward, sample.correct = verdict.reward, verdict.correct
                counts["timeouts"] += verdict.timed_out
                counts["unboxed"] += not verdict.boxed
                if verdict.error is not None:
                    counts["errors"] += 1
                    self._report(job.actor_index, verdict.error)
        return counts

    def _report(self, index: int, error: str) -> None:
        """Print an error the first time its kind (where + exception type) is seen by this pool."""
        kind = error_kind(error)
        with self.lock:
            if kind in self.error_kinds:
                return
            self.error_kinds.add(kind)
        print(f"reward[{index}]: {error} (scored as a wrong answer and counted in reward/errors; "
              f"later errors of this kind are counted, not printed)", file=sys.stderr, flush=True)

    def _verdicts(self, job: ScoreJob, deadline: float, counts: dict[str, float], retry: bool = True) -> list[Verdict]:
        index, part = job.actor_index, job.samples
        timed_out = [Verdict(0.0, False, True, timed_out=True) for _ in part]
        try:
            return ray.get(job.ref, timeout=max(0.1, deadline - time.monotonic()))
        except ray.exceptions.RayTaskError as error:  # raised outside the per-item guards: the job's items fail
            cause = describe_error(f"reward[{index}].score", getattr(error, "cause", None) or error)
            return [Verdict(0.0, False, True, error=cause) for _ in part]
        except ray.exceptions.GetTimeoutError:
            print(f"reward[{index}] did not answer within its deadline: replaced; {len(part)} items count as timeouts")
            self._replace(job, counts)
            return timed_out
        except (ray.exceptions.RayActorError, ray.exceptions.OutOfMemoryError) as error:
            if getattr(error, "actor_init_failed", False):  # e.g. reward.custom_fn cannot be imported: every replacement would fail too
                raise ActorFailure(f"reward[{index}] failed to start: {_last_line(str(error))}", f"reward[{index}]") from None
            self._replace(job, counts)
            if not retry:
                return timed_out
            print(f"reward[{index}] died or was replaced ({actor_error_text(error)}): scoring its {len(part)} items again")
            actor = self.actors[index]
            again = ScoreJob(actor.score.remote(job.pairs), index, actor, part, job.pairs, self._deadline(len(part)))
            return self._verdicts(again, again.deadline, counts, retry=False)

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
