"""The rollout actor's body: one vLLM engine that generates samples and takes new weights in place."""
from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import Any, Iterator

from protocol.batch import GeneratedChunk, Prompt, Sample
from protocol.weight_sync import WeightManifest
from rollout.kv_cache import KVPlan, kv_bytes_per_token, plan_kv_cache, read_model_config


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


def cpu_kv_plan(spec: EngineSpec) -> KVPlan:
    """The CPU engine's KV cache and concurrency, from the batch and this node's available memory."""
    import psutil

    per_token = kv_bytes_per_token(read_model_config(spec.model_path), spec.dtype)
    return plan_kv_cache(per_token, spec.max_model_len, spec.sequences, psutil.virtual_memory().available,
                         spec.kv_cache_gib, spec.max_num_seqs)


class RolloutWorker:
    def __init__(self, spec: EngineSpec) -> None:
        from rollout import vllm_compat

        self.kv_plan: KVPlan | None = None
        max_num_seqs = spec.max_num_seqs
        if spec.device == "cpu":
            vllm_compat.set_cpu_engine_env(spec.multiprocess)
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
                max_num_seqs, spec.max_num_batched_tokens)
        self.engine_args = vllm_compat.engine_kwargs(*args)  # what LLM(...) got (benchmarks compare with it)
        self.engine = vllm_compat.make_engine(*args)
        self.version = 0
        self.stream_trace: list[list[tuple[float, float]]] = []  # last shm load, per engine worker

    def _params(self, prompts: list[Prompt], n: int, temperature: float, top_p: float, max_tokens: int,
                seed: int | None) -> list[Any]:
        # One seed per prompt: a shared seed would draw the same random numbers for every prompt and
        # correlate their samples (measured: identical format choices across a whole batch). It also
        # makes a prompt's completions independent of which worker or batch generates it.
        return [self.vc.sampling_params(n, temperature, top_p, max_tokens,
                                        None if seed is None else (seed * 1_000_003 + p.index) % 2**31)
                for p in prompts]

    def _samples(self, prompt: Prompt, output: Any) -> list[Sample]:
        samples = []
        for completion in output.outputs:
            ids = list(completion.token_ids)
            samples.append(Sample(
                prompt_index=prompt.index, prompt_ids=list(prompt.token_ids), response_ids=ids,
                response_logprobs=self.vc.sampled_logprobs(ids, completion.logprobs),
                text=completion.text, finish_reason=str(completion.finish_reason), policy_version=self.version,
            ))
        return samples

    def generate(self, prompts: list[Prompt], n: int, temperature: float, top_p: float, max_tokens: int,
                 seed: int | None = None) -> list[Sample]:
        """n completions per prompt, with token ids, sampling logprobs and the policy version."""
        params = self._params(prompts, n, temperature, top_p, max_tokens, seed)
        outputs = self.engine.generate(self.vc.token_prompts([p.token_ids for p in prompts]), params, use_tqdm=False)
        return [s for prompt, out in zip(prompts, outputs) for s in self._samples(prompt, out)]

    def generate_stream(self, prompts: list[Prompt], n: int, temperature: float, top_p: float, max_tokens: int,
                        seed: int | None = None) -> Iterator[GeneratedChunk]:
        """Like `generate`, but a Ray streaming generator: yields each engine step's finished prompts,
        so the driver can score them while the rest are still generating, and knows which prompts
        are unfinished if this worker dies."""
        params = self._params(prompts, n, temperature, top_p, max_tokens, seed)
        start = time.perf_counter()
        for finished in self.vc.stream_generate(self.engine, [p.token_ids for p in prompts], params):
            samples = [s for i, out in sorted(finished, key=lambda f: f[0]) for s in self._samples(prompts[i], out)]
            now = time.perf_counter()
            yield GeneratedChunk(samples, now - start)
            start = time.perf_counter()

    def sequence_logprobs(self, token_ids: list[list[int]]) -> list[list[float]]:
        """Logprobs of tokens 1..end of each sequence under the engine's current weights."""
        params = self.vc.sampling_params(1, 1.0, 1.0, 1, 0, prompt_logprobs=True)
        outputs = self.engine.generate(self.vc.token_prompts(token_ids), params, use_tqdm=False)
        return [self.vc.prompt_token_logprobs(o) for o in outputs]

    def load_weights_shm(self, manifest: WeightManifest, bucket_bytes: int, timeout_s: float) -> float:
        """Load a full weight set from the shared segment named in the manifest, bucket by bucket as the
        learner publishes them (it may still be writing); returns seconds. Keeps each engine worker's
        per-bucket (ready, consumed) times in `stream_trace`."""
        start = time.perf_counter()
        self.stream_trace = self.vc.load_weights(self.engine, "load_from_shm", manifest.location, manifest.version,
                                                 manifest.bucket_rows(bucket_bytes), manifest.total_bytes, timeout_s)
        self.version = manifest.version
        return time.perf_counter() - start

    def load_weights_ipc(self, manifest: WeightManifest, handle: bytes) -> float:
        """Colocated GPU: map learner rank 0's buffer through its CUDA IPC handle and load from it."""
        start = time.perf_counter()
        self.vc.load_weights(self.engine, "load_from_ipc", handle, manifest.rows())
        self.version = manifest.version
        return time.perf_counter() - start

    def open_weight_group(self, host: str, port: int, rank_offset: int, world_size: int, timeout_s: float) -> None:
        backend = "gloo" if self.spec.device == "cpu" else "nccl"
        self.engine.collective_rpc("open_weight_group", args=(host, port, rank_offset, world_size, backend, timeout_s))

    def load_weights_broadcast(self, manifest: WeightManifest, bucket_bytes: int) -> float:
        start = time.perf_counter()
        self.vc.load_weights(self.engine, "load_from_broadcast", manifest.bucket_rows(bucket_bytes))
        self.version = manifest.version
        return time.perf_counter() - start

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
