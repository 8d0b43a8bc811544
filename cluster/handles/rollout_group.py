"""Driver-side handle of the rollout workers (vLLM engines): every remote call the driver makes on an
engine is a method here, so the sync, generation, parity and fault code names what it runs."""
from __future__ import annotations

import dataclasses
import time
from typing import Any

import ray

from cluster.handles.actor_group import ActorFailure, ActorGroup, Named, actor_error_text, get_within, wait_named
from cluster.config import Config
from cluster.infra.placement_group import Placement
from cluster.loop.specs import engine_spec
from protocol.batch import Prompt, Sample
from protocol.weight_sync import WeightManifest
from rollout.worker import RolloutWorker


SYNC_THREAD = "sync"  # the rollout actors' concurrency group for RolloutWorker.load_weights_in_flight


class RolloutGroup(ActorGroup):
    def __init__(self, cfg: Config, model_path: str, placement: Placement, **overrides: Any) -> None:
        """`overrides`: EngineSpec fields that differ from what the config gives (tests)."""
        r = cfg.rollout
        spec = dataclasses.replace(engine_spec(cfg, model_path), **overrides)
        # Ray restarts a dead worker (same bundle, fresh engine from the base model); the driver then
        # re-syncs its weights and re-issues its prompts (cluster/loop/generation.py). Tasks are not retried
        # by Ray: a re-issue must carry the current policy version, which only the driver knows.
        # SYNC_THREAD: a second thread for weight loads that must not wait behind generation (partial rollouts).
        remote = ray.remote(max_restarts=r.max_restarts, max_task_retries=0,
                            concurrency_groups={SYNC_THREAD: 1})(RolloutWorker)
        self.role = "rollout"
        self.cfg = r
        self.timeout_s = r.timeout_s
        self.sleeps = spec.sleep_mode  # colocated: engines sleep while the learner trains
        self.actors = []
        for i in range(r.num_workers):
            bundles, share = placement.engine_ranks(i)  # a GPU engine's TP ranks: their bundles and GPU share
            self.actors.append(remote.options(**placement.options("rollout", i)).remote(
                dataclasses.replace(spec, ray_bundles=bundles, gpus_per_rank=share)))
        # When each worker last showed progress (started, or finished a prompt): a call queued behind its
        # generation (a weight load) is judged by the same rule as generation itself (cluster/loop/sync.py).
        self.progress = [time.monotonic()] * r.num_workers
        get_within([a.__ray_ready__.remote() for a in self.actors], self.timeout_s, "rollout engine start")

    def note_progress(self, index: int) -> None:
        self.progress[index] = time.monotonic()

    def sleep(self) -> None:
        """Colocated: every engine frees its GPU memory for the learner; the next weight load wakes it."""
        if self.sleeps:
            wait_named(self._each(lambda a: a.sleep.remote()), self.timeout_s, "rollout engines going to sleep")

    def split(self, prompts: list[Prompt]) -> list[list[Prompt]]:
        """An even, deterministic split: worker i gets prompts i, i+k, i+2k, ..."""
        k = len(self.actors)
        return [prompts[i::k] for i in range(k)]

    def generate(self, prompts: list[Prompt], n: int, temperature: float, seed: int) -> list[Sample]:
        """All completions at once (no streaming, no restarts): for tests and quick checks."""
        refs = [actor.generate.remote(part, n, temperature, self.cfg.top_p, self.cfg.max_new_tokens, seed + i)
                for i, (actor, part) in enumerate(zip(self.actors, self.split(prompts))) if part]
        chunks = get_within(refs, self.timeout_s, "generation")
        return sorted((s for c in chunks for s in c), key=lambda s: s.prompt_index)

    def wait_alive(self, index: int) -> None:
        """Block until rollout[index] answers (after a restart its engine is rebuilt: this can take a while)."""
        name, deadline = self.actor_name(index), time.monotonic() + self.timeout_s
        while True:
            try:
                ray.get(self.actors[index].__ray_ready__.remote(), timeout=max(1.0, deadline - time.monotonic()))
                return
            except (ray.exceptions.RayActorError, ray.exceptions.ActorUnavailableError) as error:
                if isinstance(error, ray.exceptions.ActorDiedError) or time.monotonic() > deadline:
                    raise ActorFailure(f"{name} died and was not restarted "
                                       f"(rollout.max_restarts={self.cfg.max_restarts}): {actor_error_text(error)}",
                                       name, lost=True) from None
                time.sleep(0.5)
            except ray.exceptions.GetTimeoutError:
                raise ActorFailure(f"{name} did not come back within rollout.timeout_s="
                                   f"{self.timeout_s:g}s after dying", name) from None

    def restart(self, index: int) -> None:
        """Make rollout[index] exit (its engine failed) so that Ray restarts it; returns once it is gone."""
        try:
            ray.get(self.actors[index].restart.remote(), timeout=self.timeout_s)
        except (ray.exceptions.RayActorError, ray.exceptions.ActorUnavailableError):
            return  # exited, as asked
        except ray.exceptions.GetTimeoutError:
            ray.kill(self.actors[index], no_restart=False)

    def sequence_logprobs(self, sequences: list[list[int]]) -> list[list[list[float]]]:
        """Per engine: each sequence's token log-probs under its weights (tests and GPU checks)."""
        return get_within([a.sequence_logprobs.remote(sequences) for a in self.actors], self.timeout_s,
                          "rollout.sequence_logprobs")

    # ---- generation (cluster/loop/generation.py) and the parity check (cluster/loop/parity.py) ----
    def submit_generate_stream(self, index: int, prompts: list[Prompt], n: int, temperature: float, top_p: float,
                               max_tokens: int, seed: int) -> ray.ObjectRefGenerator:
        """rollout[index] streams every prompt's completions as it finishes them (RolloutWorker.generate_stream)."""
        return self.actors[index].generate_stream.remote(prompts, n, temperature, top_p, max_tokens, seed)

    def submit_generate(self, index: int, prompts: list[Prompt], n: int, temperature: float, top_p: float,
                        max_tokens: int, seed: int) -> ray.ObjectRef:
        return self.actors[index].generate.remote(prompts, n, temperature, top_p, max_tokens, seed)

    def submit_parity_logprobs(self, index: int, sequences: list[list[int]]) -> ray.ObjectRef:
        return self.actors[index].parity_logprobs.remote(sequences)

    def submit_parity_logprobs_in_flight(self, index: int, sequences: list[list[int]]) -> ray.ObjectRef:
        """Partial rollouts: scored between two engine steps, beside the generation in progress."""
        return self.actors[index].parity_logprobs_in_flight.options(concurrency_group=SYNC_THREAD).remote(sequences)

    def arm_engine_error(self, index: int, message: str) -> None:
        """Fault injection: rollout[index]'s engine raises `message` at its next model step."""
        ray.get(self.actors[index].arm_engine_error.remote(message))

    # ---- weight sync (cluster/loop/sync.py): submitted calls are returned for its own waiting ----
    def submit_check_weight_names(self, manifest: WeightManifest) -> list[Named]:
        return self._each(lambda a: a.check_weight_names.remote(manifest))

    def submit_open_weight_transport(self, index: int, key: str, transport: str, setup: dict[str, Any],
                                     rank_offset: int) -> Named:
        return self.actor_name(index), self.actors[index].open_weight_transport.remote(key, transport, setup, rank_offset)

    def submit_policy_version(self, index: int) -> ray.ObjectRef:
        """A cheap call: it returns once rollout[index] has run every call submitted before it."""
        return self.actors[index].policy_version.remote()

    def policy_version(self, index: int, timeout_s: float) -> int:
        return ray.get(self.submit_policy_version(index), timeout=timeout_s)

    def submit_load_weights(self, index: int, key: str, version: int, payload: Any) -> ray.ObjectRef:
        return self.actors[index].load_weights.remote(key, version, payload)

    def submit_load_weights_in_flight(self, index: int, key: str, version: int, payload: Any) -> ray.ObjectRef:
        """Partial rollouts: on the "sync" thread; the generation in progress takes it between two steps."""
        return self.actors[index].load_weights_in_flight.options(concurrency_group=SYNC_THREAD).remote(
            key, version, payload)

    def submit_adopt_base_weights(self, index: int) -> Named:
        """rollout[index] (restarted) serves its base weights as the current policy (nothing exported yet)."""
        return self.actor_name(index), self.actors[index].adopt_base_weights.remote()

    def set_policy_version(self, index: int, version: int, timeout_s: float) -> None:
        ray.get(self.actors[index].set_policy_version.remote(version), timeout=timeout_s)

    def awaiting_weights(self, timeout_s: float) -> list[bool]:
        """Per worker: restarted by Ray and loaded nothing since."""
        return ray.get([a.awaiting_weights.remote() for a in self.actors], timeout=timeout_s)

    def submit_close_weight_transport(self, key: str, indices: list[int] | None = None) -> list[ray.ObjectRef]:
        """Close the transport `key` on every worker, or those at `indices` (best effort: not awaited)."""
        return [ref for _, ref in self._each(lambda a: a.close_weight_transport.remote(key), indices)]

    def kill(self) -> None:
        try:
            ray.get([a.shutdown.remote() for a in self.actors], timeout=30)
        finally:
            for a in self.actors:
                ray.kill(a)
