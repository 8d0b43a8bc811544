"""The rollout actor's body: one vLLM engine that generates samples and takes new weights in place."""
from __future__ import annotations

import os
import time
from typing import Any, Iterator

from protocol.batch import GeneratedChunk, Prompt, Sample
from protocol.rng import prompt_seed
from protocol.weight_sync import WeightManifest
from rollout.in_flight import InFlightWork
from rollout.kv_cache import KVPlan, cpu_kv_plan, read_model_config
from rollout.spec import EngineSpec

__all__ = ["EngineAsleep", "EngineRestarted", "EngineSpec", "RolloutWorker", "planned_engine"]


class EngineAsleep(RuntimeError):
    """Generation was asked of an engine that sleeps (colocated, the learner is training) and has not
    loaded the current weights since: it would hang, or serve stale or discarded weights."""


class EngineRestarted(RuntimeError):
    """Generation was asked of an engine that Ray restarted (the worker died between batches: a fresh
    engine from the base model) before the driver loaded the current weights into it: it would serve
    the base model's weights under a stale policy version."""


def _restarted_by_ray() -> bool:
    """Whether this process is a Ray actor that Ray restarted after a death (False outside Ray)."""
    import ray

    if not ray.is_initialized() or ray.get_runtime_context().get_actor_id() is None:
        return False
    return bool(ray.get_runtime_context().was_current_actor_reconstructed)


def _available_memory() -> int:
    import psutil

    return int(psutil.virtual_memory().available)


def planned_engine(spec: EngineSpec, available_bytes: int) -> tuple[KVPlan | None, dict[str, Any]]:
    """The KV plan (CPU engines; None on GPU, where vLLM sizes its cache from gpu_memory_utilization) and
    the `LLM(...)` arguments an engine with `spec` gets, `available_bytes` being the node's available
    memory. The plan is rollout/kv_cache.py's `cpu_kv_plan`, the one cluster/planning/memory_model.py predicts with."""
    from rollout import vllm_compat

    plan = cpu_kv_plan(read_model_config(spec.model_path), spec, available_bytes) if spec.device == "cpu" else None
    return plan, vllm_compat.engine_kwargs(spec, plan)


class RolloutWorker(InFlightWork):
    def __init__(self, spec: EngineSpec) -> None:
        from rollout import vllm_compat

        if spec.device == "cpu":
            vllm_compat.set_cpu_engine_env(spec.multiprocess, spec.tensor_parallel_size)
            if not spec.multiprocess:  # Ray set OMP_NUM_THREADS=1 here; vLLM then keeps torch's count
                import torch

                torch.set_num_threads(spec.threads)
        self.vc = vllm_compat
        self.spec = spec
        self.kv_plan, self.engine_args = planned_engine(spec, _available_memory())  # engine_args: what LLM(...) got
        if self.kv_plan is not None:
            print(f"rollout engine: {self.kv_plan.how}")
        self.engine = vllm_compat.make_engine(spec, self.engine_args)
        self.threads = vllm_compat.engine_threads()  # a thread other than this one joins them to run the engine
        self.version = 0
        self.asleep = False  # set by sleep(); only a weight load wakes the engine again
        # Restarted by Ray: the driver must load the current weights (or confirm the base model's) first.
        self.needs_weights = self.restarted = _restarted_by_ray()
        self.open_transports: set[str] = set()  # weight syncs (keys) opened in this instance
        self.last_load: list[Any] = []  # the transport's report of the last load, per engine worker (shm: bucket times)
        # Partial rollouts: a load that arrives (on the actor's "sync" thread) while a generation runs is
        # handed to the generating thread, which loads it between two engine steps (rollout/in_flight.py).
        self._init_in_flight()

    def _params(self, prompts: list[Prompt], n: int, temperature: float, top_p: float, max_tokens: int,
                seed: int | None) -> list[Any]:
        # One seed per prompt: a shared seed would draw the same random numbers for every prompt and
        # correlate their samples (measured: identical format choices across a whole batch). It also
        # makes a prompt's completions independent of which worker or batch generates it.
        return [self.vc.sampling_params(n, temperature, top_p, max_tokens,
                                        None if seed is None else prompt_seed(seed, p.index))
                for p in prompts]

    def _samples(self, prompt: Prompt, output: Any, switches: list[list[tuple[int, int]]] | None = None,
                 version: int | None = None) -> list[Sample]:
        """`switches` (partial rollouts): per completion, the (first token index, version) of each weight load
        during it; `version`: the weights it started with (default: the current ones)."""
        samples, start = [], self.version if version is None else version
        for j, completion in enumerate(output.outputs):
            ids = list(completion.token_ids)
            token_versions = []
            if switches and switches[j]:
                token_versions = [start] * len(ids)
                for first, new in switches[j]:
                    token_versions[first:] = [new] * (len(ids) - first)
            samples.append(Sample(
                prompt_index=prompt.index, prompt_ids=list(prompt.token_ids), response_ids=ids,
                response_logprobs=self.vc.sampled_logprobs(ids, completion.logprobs),
                text=completion.text, finish_reason=str(completion.finish_reason),
                policy_version=min(token_versions, default=start), token_versions=token_versions,
            ))
        return samples

    def generate(self, prompts: list[Prompt], n: int, temperature: float, top_p: float, max_tokens: int,
                 seed: int | None = None) -> list[Sample]:
        """n completions per prompt, with token ids, sampling logprobs and the policy version. Holds the
        engine's turn throughout: a load on the sync thread (partial rollouts) waits for it to end."""
        with self.turn:
            self._check_awake()
            params = self._params(prompts, n, temperature, top_p, max_tokens, seed)
            outputs = self.engine.generate(self.vc.token_prompts([p.token_ids for p in prompts]), params, use_tqdm=False)
            return [s for prompt, out in zip(prompts, outputs) for s in self._samples(prompt, out)]

    def generate_stream(self, prompts: list[Prompt], n: int, temperature: float, top_p: float, max_tokens: int,
                        seed: int | None = None) -> Iterator[GeneratedChunk]:
        """Like `generate`, but a Ray streaming generator: yields each engine step's finished prompts,
        so the driver can score them while the rest are still generating, and knows which prompts
        are unfinished if this worker dies. A weight load that arrives meanwhile through
        `load_weights_in_flight` (partial rollouts) is done between two engine steps; the requests in
        flight continue under the new weights (a multiprocess engine: aborted and resubmitted with their
        tokens so far) and their samples record each token's version."""
        with self.turn:
            self._check_awake()
            self.generating = True
        try:
            start_version = self.version
            params = self._params(prompts, n, temperature, top_p, max_tokens, seed)
            start = time.perf_counter()
            for finished in self.vc.stream_generate(self.engine, [p.token_ids for p in prompts], params,
                                                    swap=self._load_pending, side=self._pending_scores):
                samples = [s for i, out, switches in sorted(finished, key=lambda f: f[0])
                           for s in self._samples(prompts[i], out, switches, start_version)]
                now = time.perf_counter()
                yield GeneratedChunk(samples, now - start)
                start = time.perf_counter()
        finally:
            with self.turn:  # a load still waiting is done by its own thread
                self.generating = False
                self.turn.notify_all()

    def sequence_logprobs(self, token_ids: list[list[int]]) -> list[list[float]]:
        """Logprobs of tokens 1..end of each sequence under the engine's current weights (holding the turn,
        as `generate`)."""
        with self.turn:
            self._check_awake()
            params = self.vc.sampling_params(1, 1.0, 1.0, 1, 0, prompt_logprobs=True)
            outputs = self.engine.generate(self.vc.token_prompts(token_ids), params, use_tqdm=False)
            return [self.vc.prompt_token_logprobs(o) for o in outputs]

    def parity_logprobs(self, token_ids: list[list[int]]) -> list[list[float]]:
        """`sequence_logprobs` for the parity check after a sync (cluster/loop/parity.py), leaving the prefix
        cache empty as the load left it: the generation that follows is the same with the check as without."""
        try:
            return self.sequence_logprobs(token_ids)
        finally:
            self.vc.reset_prefix_cache(self.engine)

    def open_weight_transport(self, key: str, name: str, setup: dict[str, Any], rank_offset: int) -> None:
        """Open the engine side of transport `name` for the weight sync `key` in every engine worker (TP
        rank r is weight rank `rank_offset` + r); validates the layout's names and shapes first."""
        self.engine.collective_rpc("open_transport", args=(key, name, setup, rank_offset))
        self.open_transports.add(key)

    def close_weight_transport(self, key: str) -> None:
        self.engine.collective_rpc("close_transport", args=(key,))
        self.open_transports.discard(key)

    def load_weights(self, key: str, version: int, payload: Any = None) -> float:
        """Load weight `version` through sync `key`'s transport into every engine worker and drop the prefix
        cache; a sleeping engine wakes its weights first and its KV cache after. Returns seconds."""
        with self.turn:
            return self._load(key, version, payload)

    def _load(self, key: str, version: int, payload: Any, in_flight: bool = False) -> float:
        self.vc.join_engine_threads(self.threads)
        # Its previous instance had the transport open. Also after adopt_base_weights (a restart before the
        # first sync): the base weights were confirmed, but no transport was opened in this instance.
        if (self.needs_weights or self.restarted) and key not in self.open_transports:
            raise EngineRestarted(f"rollout engine was restarted by Ray and has not opened weight sync {key!r}: "
                                  "the driver re-opens it and loads the kept export")
        start = time.perf_counter()
        if self.asleep:
            self.vc.wake_up(self.engine, ["weights"])
        self.last_load = self.vc.load_weights(self.engine, "receive_weights", key, version, payload, in_flight=in_flight)
        if self.asleep:
            self.vc.wake_up(self.engine, ["kv_cache"])
            self.asleep = False
        self.version = version
        self.needs_weights = False
        return time.perf_counter() - start

    def awaiting_weights(self) -> bool:
        """Restarted by Ray and loaded nothing since (its weights are the base model's)."""
        return self.needs_weights

    def set_policy_version(self, version: int) -> None:
        """The driver names the version of the weights it just loaded here outside a sync (known only after
        the load: see WeightSync._readmit)."""
        self.version = version

    def adopt_base_weights(self) -> None:
        """The driver confirms that the base model this (restarted) engine holds is the current policy
        (nothing was synced yet), so it may generate."""
        self.needs_weights = False

    def sleep(self) -> None:
        """Colocated: free the engine's GPU memory for the learner (spec.sleep_level). The engine stays
        unusable for generation until the next weight load, so it never serves the weights it slept with."""
        if not self.spec.sleep_mode:
            raise RuntimeError("this engine was not started for sleep mode (cluster.colocate=false)")
        if not self.asleep:
            self.vc.sleep(self.engine, self.spec.sleep_level)
            self.asleep = True

    def sleeping(self) -> bool:
        """What vLLM itself says (its scheduler is paused while any part sleeps)."""
        return self.vc.is_sleeping(self.engine)

    def _check_awake(self) -> None:
        # The actor has a second thread (concurrency group "sync"), so Ray runs its calls on threads other
        # than the one that built the engine: each must run the CPU engine with the engine's OpenMP team
        # size (vLLM's CPU attention checks it; measured "thread_num == thread_num (2 vs. 1)" otherwise).
        self.vc.join_engine_threads(self.threads)
        if self.needs_weights:
            raise EngineRestarted("rollout engine was restarted by Ray (a fresh engine from the base model) and has "
                                  "loaded no weights since: the driver re-syncs it before it generates")
        if self.asleep:
            raise EngineAsleep(f"rollout engine (policy version {self.version}) is asleep: it woke for no weight load "
                               "since the learner trained; sync the weights first (WeightSync.sync wakes it)")

    def check_weight_names(self, manifest: WeightManifest) -> None:
        """Validate names and shapes against the engine's model before any load (raises ValueError)."""
        self.engine.collective_rpc("check_weight_names", args=([(m.name, list(m.shape)) for m in manifest.tensors],))

    def policy_version(self) -> int:
        return self.version

    def engine_stats(self) -> dict[str, float]:
        """KV cache bytes and concurrency (CPU), preemptions and rewound draws since the engine started."""
        plan = self.kv_plan
        return {**({"kv_cache_bytes": plan.cache_bytes, "max_num_seqs": plan.max_num_seqs} if plan else {}),
                **self.vc.sampling_counters(self.engine)}

    def arm_engine_error(self, message: str) -> None:
        """Fault injection (tests): the engine's next step raises inside vLLM."""
        self.engine.collective_rpc("arm_engine_error", args=(message,))

    def restart(self) -> None:
        """After an error inside the engine: stop it and end this process, so that Ray restarts the
        actor (counted against rollout.max_restarts) with a fresh engine. The call never returns."""
        try:
            self.shutdown()
        finally:
            os._exit(1)

    def shutdown(self) -> None:
        self.vc.shutdown(self.engine)
