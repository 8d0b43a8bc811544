"""The rollout actor's body: one vLLM engine that generates samples and takes new weights in place."""
from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass
from typing import Any, Iterator

from protocol.batch import GeneratedChunk, Prompt, Sample
from protocol.weight_sync import WeightManifest
from rollout.kv_cache import KVPlan, kv_bytes_per_token, plan_kv_cache, read_model_config


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


@dataclass
class EngineSpec:
    model_path: str
    device: str = "cpu"
    dtype: str = "float32"
    max_model_len: int = 256
    kv_cache_gib: float | None = None  # CPU: None sizes the cache for `sequences` (rollout/kv_cache.py)
    max_num_seqs: int | None = None  # None: CPU, what the cache holds without preemption; GPU, vLLM's default
    sequences: int = 256  # sequences of one batch on this engine (prompts x samples)
    max_num_batched_tokens: int | None = None  # None: vLLM's default
    threads: int = 1  # CPU, in-process engine: torch threads of the model (the worker's reserved CPUs)
    gpu_memory_utilization: float = 0.5
    tensor_parallel_size: int = 1
    multiprocess: bool = False
    seed: int = 0
    ray_bundles: tuple[int, ...] = ()  # GPU, TP > 1: the placement-group bundle of each TP rank
    gpus_per_rank: float = 1.0  # GPU share each TP rank takes of its bundle (< 1 when colocated)
    sleep_mode: bool = False  # colocated (cluster.colocate): started for vLLM's sleep mode, sleeps while the learner trains
    sleep_level: int = 1  # how deep it sleeps: 1 or 2 (see vllm_compat.sleep)
    enforce_eager: bool | None = None  # None: on CPU, off on GPU (vllm_compat.engine_kwargs)
    weight_transfer_backend: str | None = None  # vLLM's own weight-transfer engine (sync.transport nccl, nccl_sparse)


@dataclass
class PendingLoad:
    """A weight load that waits for the generating thread's next pause between engine steps."""

    key: str
    version: int
    payload: Any
    done: bool = False
    seconds: float = 0.0
    error: BaseException | None = None


@dataclass(eq=False)
class PendingScore:
    """Sequences to score between engine steps of the generation in progress (the parity check)."""

    token_ids: list[list[int]]
    done: bool = False
    logprobs: list[list[float]] | None = None


def cpu_kv_plan(spec: EngineSpec) -> KVPlan:
    """The CPU engine's KV cache and concurrency, from the batch and this node's available memory.
    TP > 1: the cache of one TP rank (vLLM's kv_cache_memory_bytes is per worker), which holds its share
    of the KV heads, as cluster/memory.py counts it on GPUs."""
    import psutil

    per_token = -(-kv_bytes_per_token(read_model_config(spec.model_path), spec.dtype) // spec.tensor_parallel_size)
    return plan_kv_cache(per_token, spec.max_model_len, spec.sequences, psutil.virtual_memory().available,
                         spec.kv_cache_gib, spec.max_num_seqs)


class RolloutWorker:
    def __init__(self, spec: EngineSpec) -> None:
        from rollout import vllm_compat

        self.kv_plan: KVPlan | None = None
        max_num_seqs = spec.max_num_seqs
        if spec.device == "cpu":
            vllm_compat.set_cpu_engine_env(spec.multiprocess, spec.tensor_parallel_size)
            if not spec.multiprocess:  # Ray set OMP_NUM_THREADS=1 here; vLLM then keeps torch's count
                import torch

                torch.set_num_threads(spec.threads)
            self.kv_plan = cpu_kv_plan(spec)
            print(f"rollout engine: {self.kv_plan.how}")
            max_num_seqs = self.kv_plan.max_num_seqs
        self.vc = vllm_compat
        self.spec = spec
        args = (spec.model_path, spec.dtype, spec.max_model_len, spec.seed, spec.device,
                self.kv_plan and self.kv_plan.cache_bytes, spec.gpu_memory_utilization, spec.tensor_parallel_size,
                max_num_seqs, spec.max_num_batched_tokens, spec.sleep_mode, spec.enforce_eager,
                spec.weight_transfer_backend)
        self.engine_args = vllm_compat.engine_kwargs(*args)  # what LLM(...) got (benchmarks compare with it)
        self.engine = vllm_compat.make_engine(*args, ray_bundles=spec.ray_bundles, gpus_per_rank=spec.gpus_per_rank)
        self.threads = vllm_compat.engine_threads()  # a thread other than this one joins them to run the engine
        self.version = 0
        self.asleep = False  # set by sleep(); only a weight load wakes the engine again
        # Restarted by Ray: the driver must load the current weights (or confirm the base model's) first.
        self.needs_weights = self.restarted = _restarted_by_ray()
        self.open_transports: set[str] = set()  # weight syncs (keys) opened in this instance
        self.last_load: list[Any] = []  # the transport's report of the last load, per engine worker (shm: bucket times)
        # Partial rollouts: a load that arrives (on the actor's "sync" thread) while a generation runs is
        # handed to the generating thread, which loads it between two engine steps (load_weights_in_flight).
        self.turn = threading.Condition()
        self.generating = False
        self.pending: PendingLoad | None = None
        self.scoring: list[PendingScore] = []  # parity checks waiting for the generating thread

    def _params(self, prompts: list[Prompt], n: int, temperature: float, top_p: float, max_tokens: int,
                seed: int | None) -> list[Any]:
        # One seed per prompt: a shared seed would draw the same random numbers for every prompt and
        # correlate their samples (measured: identical format choices across a whole batch). It also
        # makes a prompt's completions independent of which worker or batch generates it.
        return [self.vc.sampling_params(n, temperature, top_p, max_tokens,
                                        None if seed is None else (seed * 1_000_003 + p.index) % 2**31)
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
        flight continue under the new weights and their samples record each token's version."""
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

    def _load_pending(self) -> int | None:
        """On the generating thread, between engine steps: the load waiting in `pending`, if any (its
        version; None: nothing waited)."""
        with self.turn:
            ticket, self.pending = self.pending, None
            if ticket is None:
                return None
            try:
                ticket.seconds = self._load(ticket.key, ticket.version, ticket.payload, in_flight=True)
            except BaseException as error:  # the waiting sync reports it; the generation stops with it too
                ticket.error = error
                raise
            finally:
                ticket.done = True
                self.turn.notify_all()
            return ticket.version

    def _pending_scores(self) -> list[Any]:
        """On the generating thread, between engine steps: the scorings waiting, handed to the engine loop."""
        with self.turn:
            tickets, self.scoring = self.scoring, []
        return [self.vc.SideScoring(t.token_ids, lambda logprobs, t=t: self._scored(t, logprobs)) for t in tickets]

    def _scored(self, ticket: PendingScore, logprobs: list[list[float]]) -> None:
        with self.turn:
            ticket.logprobs, ticket.done = logprobs, True
            self.turn.notify_all()

    def parity_logprobs_in_flight(self, token_ids: list[list[int]]) -> list[list[float]]:
        """Partial rollouts: `parity_logprobs` without waiting for the generation in progress (on the actor's
        "sync" thread, as load_weights_in_flight): the generating thread scores the sequences beside its own
        requests, under the weights it holds (the sync's, loaded before this call came)."""
        with self.turn:
            if self.generating:
                ticket = PendingScore(token_ids)
                self.scoring.append(ticket)
                while self.generating and not ticket.done:
                    self.turn.wait()
                if ticket.done and ticket.logprobs is not None:
                    return ticket.logprobs
                if ticket in self.scoring:
                    self.scoring.remove(ticket)
            self.vc.join_engine_threads(self.threads)
            return self.parity_logprobs(token_ids)

    def load_weights_in_flight(self, key: str, version: int, payload: Any = None) -> float:
        """Partial rollouts: `load_weights` without waiting for the generation in progress to drain. Called
        on the actor's own "sync" concurrency group (a second thread), so it runs while `generate_stream`
        does: the generating thread loads between two engine steps and the requests continue; with no
        generation running, the load happens here (holding the engine's turn, so none starts meanwhile)."""
        with self.turn:
            if self.generating:
                ticket = self.pending = PendingLoad(key, version, payload)
                while self.generating and not ticket.done:
                    self.turn.wait()
                if ticket.done:
                    if ticket.error is not None:
                        raise RuntimeError(f"weight load v{version} between engine steps failed: {ticket.error}") \
                            from ticket.error
                    return ticket.seconds
                self.pending = None  # the generation ended first: load here
            self.vc.join_engine_threads(self.threads)
            return self._load(key, version, payload)

    def sequence_logprobs(self, token_ids: list[list[int]]) -> list[list[float]]:
        """Logprobs of tokens 1..end of each sequence under the engine's current weights (holding the turn,
        as `generate`)."""
        with self.turn:
            self._check_awake()
            params = self.vc.sampling_params(1, 1.0, 1.0, 1, 0, prompt_logprobs=True)
            outputs = self.engine.generate(self.vc.token_prompts(token_ids), params, use_tqdm=False)
            return [self.vc.prompt_token_logprobs(o) for o in outputs]

    def parity_logprobs(self, token_ids: list[list[int]]) -> list[list[float]]:
        """`sequence_logprobs` for the parity check after a sync (cluster/parity.py), leaving the prefix
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
