"""Driver-side handles for the learner and critic ranks and the reward pool; the rollout workers' handle is
cluster/handles/rollout_group.py, their shared base and waiting cluster/handles/actor_group.py (re-exported here). Every
call here is one RPC per actor."""
from __future__ import annotations

import dataclasses
import sys
import threading
import time
from dataclasses import dataclass
from typing import Any

import ray

from cluster.handles.actor_group import (ActorFailure, ActorGroup, Named, _last_line, actor_error_text, actor_name,
                                 merge_indexed, oom_text, shared_batches, wait_named)
from cluster.config import Config
from cluster.infra.placement_group import Placement
from cluster.handles.rollout_group import RolloutGroup
from cluster.loop.specs import critic_spec, learner_spec, reward_spec
from learner.critic import CriticWorker
from learner.worker import LearnerWorker
from protocol.batch import Sample, TrainBatch
from reward.scoring import Verdict, describe_error, error_kind
from reward.worker import RewardWorker

__all__ = ["ActorFailure", "ActorGroup", "CriticGroup", "LearnerGroup", "RankGroup", "RewardPool", "RolloutGroup",
           "ScoreJob", "actor_error_text", "actor_name", "merge_indexed", "oom_text", "shared_batches", "wait_named"]


class RankGroup(ActorGroup):
    """`num_ranks` DeepSpeed ranks of one role (`learner`, `critic`) as Ray actors in their bundles."""

    def __init__(self, role: str, worker: type, spec: Any, num_ranks: int, placement: Placement,
                 call_timeout_s: float) -> None:
        remote = ray.remote(worker)
        self.role, self.spec = role, spec
        self.timeout_s = call_timeout_s  # <role>.call_timeout_s: one call on all ranks
        env = {"env_vars": {"DS_ACCELERATOR": "cpu"}} if spec.device == "cpu" else None
        self.actors = [remote.options(**placement.options(role, i), runtime_env=env).remote(i, num_ranks, spec)
                       for i in range(num_ranks)]
        addr, port = wait_named([(self.actor_name(0), self.actors[0].address.remote())], self.timeout_s,
                                f"{role} start (enough free CPUs/GPUs?)")[0]
        print(f"{role} rendezvous: {addr}:{port} ({self.actor_name(0)}'s node)")
        self.num_params = self._call("setup", addr, port)[0]

    def _call(self, method: str, *args: Any) -> list[Any]:
        """Run `method` on every rank at once (ZeRO needs all ranks) and return each rank's result.
        A rank that dies or hangs raises ActorFailure naming it (`learner[i]`); an exception the
        method raises comes through as itself, unless other ranks are still running after it: then
        they are the ones named (a rank that hangs leaves the others failing in a collective)."""
        # A rank waiting in a collective for a failed peer fails itself within the process group's
        # timeout (<role>.collective_timeout_s): one still running after that is the one that hangs.
        args = shared_batches(args)
        return wait_named(self._each(lambda a: getattr(a, method).remote(*args)),
                          self.timeout_s, f"{self.role}.{method}", name_task_errors=False,
                          grace_s=self.spec.collective_timeout_s)

    def _scoring_call(self, method: str, batch: TrainBatch, seed: int | None) -> list[list[float]]:
        """Per-token values of every sample from a scoring `method` (old_logprobs, ref_logprobs, values)."""
        return merge_indexed(self._call(method, batch, seed), len(batch))

    def train(self, batch: TrainBatch, seed: int | None = None, *args: Any) -> dict[str, float]:
        """The update on the global batch. Returns `loss` (the mean over mini-batches of the aggregate
        that was minimised), `grad_norm` (mean over optimizer steps), `optimizer_steps`, every `<x>_max`
        as a maximum and every other statistic as a mean over the batch's loss tokens (all epochs)."""
        per_rank = self._call("train_step", batch, seed, *args)
        sums = {k: sum(r.get(k, 0.0) for r in per_rank) for k in per_rank[0] if not k.endswith("_max")}
        steps = per_rank[0]["optimizer_steps"]
        out = {k: v / max(sums["tokens"], 1.0) for k, v in sums.items()
               if k not in ("tokens", "loss", "grad_norm", "mini_batches", "optimizer_steps")}
        out.update({k: max(r[k] for r in per_rank if k in r) for k in {k for r in per_rank for k in r if k.endswith("_max")}})
        out["loss"] = sums["loss"] / max(per_rank[0]["mini_batches"], 1.0)
        out["grad_norm"], out["optimizer_steps"] = per_rank[0]["grad_norm"] / max(steps, 1.0), steps
        return out

    def save_checkpoint(self, path: str) -> list[tuple[str, dict[str, Any]]]:
        """Every rank writes its DeepSpeed partitions under `path`; returns each rank's name and what it
        wrote, {"node", "files"} (cluster.infra.checkpoint.check_visible)."""
        return [(self.actor_name(i), view) for i, view in enumerate(self._call("save_checkpoint", path))]

    def load_checkpoint(self, path: str) -> None:
        self._call("load_checkpoint", path)


class LearnerGroup(RankGroup):
    """The policy's ranks. `overrides` replace spec fields (the base-model warm-up: lr, kl_coef)."""

    def __init__(self, cfg: Config, model_path: str, placement: Placement, **overrides: Any) -> None:
        spec = dataclasses.replace(learner_spec(cfg, model_path), **overrides)
        super().__init__("learner", LearnerWorker, spec, cfg.learner.num_ranks, placement, cfg.learner.call_timeout_s)

    def train(self, batch: TrainBatch, seed: int | None = None, loss: str = "policy") -> dict[str, float]:
        """The policy update (`loss="sft"`: one supervised step, the base-model warm-up). The step's batch
        (cluster/loop/update.py) carries its reference log-probs, and its old log-probs when the update takes
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
        return self._scoring_call("old_logprobs", batch, seed)

    def ref_logprobs(self, batch: TrainBatch, seed: int | None = None) -> list[list[float]]:
        """Reference-model logprobs of every response, each rank scoring its share."""
        return self._scoring_call("ref_logprobs", batch, seed)

    def logprobs(self, batch: TrainBatch, temperature: float | None = None) -> list[list[float]]:
        """Response logprobs under the learner's current weights at `temperature` (None: the rollout
        temperature), each rank scoring its share."""
        return merge_indexed(self._call("logprobs", batch, temperature), len(batch))

    def save_hf(self, path: str) -> None:
        """The policy as a Hugging Face checkpoint in `path` (rank 0 writes; every rank gathers)."""
        self._call("save_hf", path)

    def check_run_dir(self, token_file: str, token: str) -> list[str | None]:
        """Each rank's problem with the run directory (does it see the driver's token file?), None where none."""
        return self._call("check_run_dir", token_file, token)

    # ---- weight sync (cluster/loop/sync.py): submitted calls are returned named, for its own waiting ----
    def weight_layout(self) -> list[tuple[str, tuple[int, ...]]]:
        """Rank 0's weight layout (names, shapes, dtypes) that every sync's manifest is built from."""
        return self._call("weight_layout")[0]

    def rendezvous_address(self, timeout_s: float) -> tuple[str, int]:
        """A fresh (host, port) on rank 0's node, for a transport group that rank 0 joins."""
        return ray.get(self.actors[0].address.remote(), timeout=timeout_s)

    def submit_open_weight_transport(self, key: str, transport: str, setup: dict[str, Any]) -> list[Named]:
        return self._each(lambda a: a.open_weight_transport.remote(key, transport, setup))

    def submit_export_weights(self, key: str, version: int) -> list[Named]:
        return self._each(lambda a: a.export_weights.remote(key, version))

    def submit_last_export_steps(self) -> list[Named]:
        """Returns once each rank is idle (not training): its optimizer steps at its last export."""
        return self._each(lambda a: a.last_export_steps.remote())

    def last_export_steps(self, timeout_s: float) -> int:
        """Rank 0's optimizer steps at the last export."""
        return ray.get(self.actors[0].last_export_steps.remote(), timeout=timeout_s)

    def submit_close_weight_transport(self, key: str) -> list[ray.ObjectRef]:
        """Close the transport `key` on every rank (best effort: the caller waits as long as it likes)."""
        return [ref for _, ref in self._each(lambda a: a.close_weight_transport.remote(key))]


class CriticGroup(RankGroup):
    """The value model's ranks (`algorithm.advantage=gae`), placed in the `critic` bundles."""

    def __init__(self, cfg: Config, model_path: str, placement: Placement) -> None:
        super().__init__("critic", CriticWorker, critic_spec(cfg, model_path), cfg.critic.num_ranks, placement,
                         cfg.critic.call_timeout_s)

    def values(self, batch: TrainBatch, seed: int | None) -> list[list[float]]:
        return self._scoring_call("values", batch, seed)


@dataclass
class ScoreJob:
    """Samples sent to one reward actor, with the (response, gold answer) pairs, for a re-send."""

    ref: ray.ObjectRef
    actor_index: int
    actor: Any  # the handle it was sent to (the pool's slot may hold a replacement since)
    samples: list[Sample]
    pairs: list[tuple[str, str]]
    deadline: float  # monotonic: the actor's queue ahead of it and its own items, each within timeout_s


class RewardPool(ActorGroup):
    """K reward actors, named `reward[i]`. Work is sent as soon as each generation chunk arrives; a stuck
    actor is killed and replaced and its items are counted as timeouts (reward 0). An item whose scoring
    raised (the grader or reward.custom_fn) scores as a wrong answer and counts in `errors`; each
    kind of error (where + exception type) is printed once per pool."""

    def __init__(self, cfg: Config, placement: Placement | None = None) -> None:
        self.role = "reward"
        self.run_cfg, self.cfg = cfg, cfg.reward
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
        spec = reward_spec(self.run_cfg)  # the actor's settings, whole (reward/spec.py), as the config reads now
        return self.remote.options(max_concurrency=1, **where).remote(spec)

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

    def collect(self, jobs: list[ScoreJob]) -> tuple[list[Verdict], dict[str, float]]:
        """The verdicts of the jobs' samples, in the order they were submitted (the caller makes the
        scored samples: cluster.loop.generation.scored_samples), and counts of timeouts, errors, unboxed
        answers and replaced actors.

        A reward actor that hangs past the deadline is killed and replaced, and its items count as
        timeouts (reward 0). One that dies is replaced and its items are scored again, once. Items
        whose scoring raised count as errors (scored as wrong answers: reward.scoring)."""
        counts = {"timeouts": 0.0, "errors": 0.0, "unboxed": 0.0, "restarts": 0.0}
        out: list[Verdict] = []
        for job in jobs:
            try:
                verdicts = self._verdicts(job, job.deadline, counts)
            finally:
                with self.lock:
                    self.queued[job.actor_index] -= len(job.samples)
            for verdict in verdicts:
                counts["timeouts"] += verdict.timed_out
                counts["unboxed"] += not verdict.boxed
                if verdict.error is not None:
                    counts["errors"] += 1
                    self._report(job.actor_index, verdict.error)
            out.extend(verdicts)
        return out, counts

    def _report(self, index: int, error: str) -> None:
        """Print an error the first time its kind (where + exception type) is seen by this pool."""
        kind = error_kind(error)
        with self.lock:
            if kind in self.error_kinds:
                return
            self.error_kinds.add(kind)
        print(f"{self.actor_name(index)}: {error} (scored as a wrong answer and counted in reward/errors; "
              f"later errors of this kind are counted, not printed)", file=sys.stderr, flush=True)

    def _verdicts(self, job: ScoreJob, deadline: float, counts: dict[str, float], retry: bool = True) -> list[Verdict]:
        index, part = job.actor_index, job.samples
        timed_out = [Verdict(0.0, False, True, timed_out=True) for _ in part]
        try:
            return ray.get(job.ref, timeout=max(0.1, deadline - time.monotonic()))
        except ray.exceptions.RayTaskError as error:  # raised outside the per-item guards: the job's items fail
            cause = describe_error(f"{self.actor_name(index)}.score", getattr(error, "cause", None) or error)
            return [Verdict(0.0, False, True, error=cause) for _ in part]
        except ray.exceptions.GetTimeoutError:
            print(f"{self.actor_name(index)} did not answer within its deadline: replaced; {len(part)} items count as timeouts")
            self._replace(job, counts)
            return timed_out
        except (ray.exceptions.RayActorError, ray.exceptions.OutOfMemoryError) as error:
            if getattr(error, "actor_init_failed", False):  # e.g. reward.custom_fn cannot be imported: every replacement would fail too
                name = self.actor_name(index)
                raise ActorFailure(f"{name} failed to start: {_last_line(str(error))}", name) from None
            self._replace(job, counts)
            if not retry:
                return timed_out
            print(f"{self.actor_name(index)} died or was replaced ({actor_error_text(error)}): scoring its {len(part)} items again")
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
