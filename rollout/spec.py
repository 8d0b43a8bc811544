"""The settings of one rollout engine, passed whole from the driver to the actor and on to vLLM.

No field has a default: every value comes from the config (cluster/config.py), through
`cluster.loop.specs.engine_spec`; tests/test_specs.py fails when a default appears here. No vLLM import:
cluster/planning/memory_model.py plans the KV cache from the same object (rollout/kv_cache.py `cpu_kv_plan`).
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class EngineSpec:
    model_path: str
    device: str  # "cpu" or "gpu"
    dtype: str
    max_model_len: int
    kv_cache_gib: float | None  # CPU: None sizes the cache for `sequences` (rollout/kv_cache.py)
    max_num_seqs: int | None  # None: CPU, what the cache holds without preemption; GPU, vLLM's default
    sequences: int  # sequences of one batch on this engine (prompts x samples)
    max_num_batched_tokens: int | None  # None: vLLM's default
    threads: int  # CPU, in-process engine: torch threads of the model (the worker's reserved CPUs)
    gpu_memory_utilization: float
    tensor_parallel_size: int
    multiprocess: bool
    seed: int
    ray_bundles: tuple[int, ...]  # GPU, TP > 1: the placement-group bundle of each TP rank
    gpus_per_rank: float  # GPU share each TP rank takes of its bundle (< 1 when colocated)
    sleep_mode: bool  # colocated (cluster.colocate): started for vLLM's sleep mode, sleeps while the learner trains
    sleep_level: int  # how deep it sleeps: 1 or 2 (see vllm_compat.sleep)
    enforce_eager: bool | None  # None: on CPU, off on GPU (vllm_compat.engine_kwargs)
    weight_transfer_backend: str | None  # vLLM's own weight-transfer engine (sync.transport nccl, nccl_sparse)
