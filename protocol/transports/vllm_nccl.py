"""``nccl`` and ``nccl_sparse``: vLLM's own NCCL weight-transfer engines (vllm/distributed/weight_transfer/),
adapted to this registry. The GPU default for disaggregated placements (``nccl``).

vLLM ships both halves: a trainer engine (the learner's rank 0 opens the group as rank 0 and sends) and
a worker engine inside every vLLM worker (`LLM(weight_transfer_config=...)`, then the worker's
`init_weight_transfer_engine` / `start_weight_update` / `update_weights` / `finish_weight_update`).
vLLM's trainer engine expects to drive the worker side itself through a client; here the driver
(cluster/loop/sync.py) schedules both sides, as for every transport, so the trainer engine gets a client
whose calls do nothing (`DriverScheduled`) and the engine side builds the same requests from the
shared SyncSetup (rollout/vllm_compat/extension.py makes the worker calls). Both sides take their wire
parameters (packed, buffer size) from one function here, so they cannot disagree.

- ``nccl``: vLLM's dense engine: every weight, packed into buffers of the largest bucket's size
  (`sync.bucket_mb`) and broadcast from learner rank 0; vLLM's layerwise reload loads them.
- ``nccl_sparse``: vLLM's sparse engine: only the entries that changed since the last send, as
  (flat index, value) patches in checkpoint coordinates. The learner keeps the last weights it sent
  (one extra copy in the rollout dtype); the first send of a group is the full set (every index), so
  an engine that joins a rebuilt group ends up identical to the others. vLLM's sparse request needs
  each tensor's entry count before the receive: rank 0 broadcasts the counts first (one int64 per
  tensor, our own small step over vLLM's communicator).

Neither keeps an export: a restarted engine is taken back by rebuilding the group (cluster/loop/sync.py).
"""
from __future__ import annotations

from typing import Any, Callable, ClassVar, Iterator

import torch

from protocol.transports import register
from protocol.transports.base import Buckets, Transport
from protocol.weight_sync import DTYPES, TensorMeta

PACKED_NUM_BUFFERS = 2  # vLLM's default double buffering


class DriverScheduled:
    """vLLM's `VLLMWeightSyncClient` for a trainer engine whose engine side the driver runs: the driver
    opens, loads and closes the engines itself (cluster/loop/sync.py), so none of these calls do anything."""

    def init_weight_transfer_engine(self, init_info: dict[str, Any]) -> None:
        pass

    def start_weight_update(self) -> None:
        pass

    def update_weights(self, update_info: Any) -> None:
        pass

    def finish_weight_update(self, weight_version: str | None = None) -> None:
        pass


class BucketSource:
    """The learner's buckets as vLLM's `WeightSource`: metadata from the manifest (rollout dtype), values
    cast to it on the sending device in manifest order. Built per send (the buckets are one pass).

    Every value is a tensor of its own: vLLM's packer keeps the tensors of a chunk until it concatenates
    them, and a chunk can span buckets, whose ZeRO-3 gather ends when the next bucket starts."""

    def __init__(self, metas: list[TensorMeta], buckets: Buckets | None, device: torch.device) -> None:
        self.metas, self.buckets, self.device = metas, buckets, device

    def metadata(self) -> list[Any]:
        from vllm.distributed.weight_transfer.base import ParamMeta

        return [ParamMeta(m.name, DTYPES[m.dtype], tuple(m.shape)) for m in self.metas]

    def __iter__(self) -> Iterator[tuple[str, torch.Tensor]]:
        for metas, values in self.buckets or ():
            for meta, value in zip(metas, values):
                out = value.detach().to(device=self.device, dtype=DTYPES[meta.dtype]).reshape(meta.shape)
                yield meta.name, out.clone() if out.data_ptr() == value.data_ptr() else out


@register
class VllmNccl(Transport):
    name = "nccl"
    devices = ("gpu",)
    placement = "disaggregated"
    streams = True
    collective = True
    needs_rendezvous = True
    native_backend = "nccl"
    trainer_info: ClassVar[str] = "nccl_engine.NCCLTrainerInitInfo"

    engine: Any = None  # vLLM's trainer engine (learner rank 0)

    def metas(self) -> list[TensorMeta]:
        return [m for bucket in self.setup.metas() for m in bucket]

    def wire(self) -> dict[str, Any]:
        """Must-agree wire parameters, the same on both sides: packed buffers of the largest bucket."""
        largest = max((sum(m.nbytes for m in bucket) for bucket in self.setup.metas()), default=1)
        return {"packed": True, "packed_buffer_size_bytes": largest, "packed_num_buffers": PACKED_NUM_BUFFERS}

    def trainer_init_info(self, rank: int) -> Any:
        import importlib

        module, cls = self.trainer_info.split(".")
        info_cls = getattr(importlib.import_module(f"vllm.distributed.weight_transfer.{module}"), cls)
        wire = self.wire() if "packed" in info_cls.__dataclass_fields__ else {}
        s = self.setup
        return info_cls(master_address=s.host, master_port=s.port, world_size=s.world_size, rank=rank, **wire)

    # ---- learner rank 0 -------------------------------------------------------------------------
    def open_sender(self, rank: int, device: torch.device) -> None:
        """vLLM's trainer engine through its factory; opening waits for every engine worker to join."""
        from vllm.distributed.weight_transfer import WeightTransferTrainerFactory

        self.device = device
        source = BucketSource(self.metas(), None, device) if self.native_backend == "nccl" else None
        self.engine = WeightTransferTrainerFactory.trainer_init(self.trainer_init_info(rank), client=DriverScheduled(),
                                                                source=source)

    def send(self, buckets: Buckets, version: int) -> None:
        self.engine.source = BucketSource(self.metas(), buckets, self.device)
        self.engine.send_weights()

    # ---- engine side (rollout/vllm_compat/extension.py calls these inside each vLLM worker) ------
    def native_init_info(self, rank_offset: int) -> dict[str, Any]:
        """The worker's `init_weight_transfer_engine` request; vLLM adds the worker's TP rank itself."""
        from vllm.distributed.weight_transfer.nccl_common import NCCLWeightTransferInitInfo, worker_init_payload

        s = self.setup
        wire = self.wire() if self.native_backend == "nccl" else {}
        return worker_init_payload(NCCLWeightTransferInitInfo(master_address=s.host, master_port=s.port,
                                                              rank_offset=rank_offset, world_size=s.world_size, **wire))

    def native_update_info(self, receive_counts: Callable[[int], list[int]]) -> dict[str, Any] | None:
        """The worker's `update_weights` request for one sync (None: nothing to load)."""
        metas = self.metas()
        return {"names": [m.name for m in metas], "dtype_names": [m.dtype for m in metas],
                "shapes": [list(m.shape) for m in metas]}

    def receive(self, version: int, payload: Any) -> Iterator[tuple[str, torch.Tensor]]:
        raise RuntimeError(f"sync.transport={self.name} loads through vLLM's own weight-transfer engine, not a reload")

    def close(self) -> None:
        if self.engine is not None:
            self.engine.shutdown()
            self.engine = None


@register
class VllmSparseNccl(VllmNccl):
    name = "nccl_sparse"
    native_backend = "sparse_nccl"
    trainer_info = "sparse_nccl_engine.SparseNCCLTrainerInitInfo"

    last: dict[str, torch.Tensor] | None = None  # what this group's engines hold (learner rank 0)

    def send(self, buckets: Buckets, version: int) -> None:
        from vllm.distributed.weight_transfer.sparse_nccl_engine import SparseWeightPatch

        patches, counts, sent = [], [], {}
        for name, value in BucketSource(self.metas(), buckets, self.device):
            indices, values = changed_entries(None if self.last is None else self.last[name], value)
            counts.append(indices.numel())
            sent[name] = value
            if indices.numel():
                patches.append(SparseWeightPatch(name, indices, values, tuple(value.shape)))
        group = self.engine.model_update_group  # vLLM's PyNcclCommunicator
        group.broadcast(torch.tensor(counts, dtype=torch.int64, device=group.device), src=0)
        self.engine.send_weights(patches)  # nothing changed: no patch, no call (the engines skip too)
        self.last = sent

    def native_update_info(self, receive_counts: Callable[[int], list[int]]) -> dict[str, Any] | None:
        metas = self.metas()
        counts = receive_counts(len(metas))
        chosen = [(m, c) for m, c in zip(metas, counts) if c > 0]
        if not chosen:
            return None
        return {"names": [m.name for m, _ in chosen], "dtype_names": [m.dtype for m, _ in chosen],
                "shapes": [list(m.shape) for m, _ in chosen], "num_updates_list": [c for _, c in chosen]}

    def close(self) -> None:
        super().close()
        self.last = None


def changed_entries(previous: torch.Tensor | None, current: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(int32 flat indices, values) of `current` where it differs from `previous` (None: every entry):
    what vLLM's sparse engine loads. Compared bit for bit in the rollout dtype (NaN != NaN is sent)."""
    flat = current.reshape(-1)
    if flat.numel() >= 2**31:
        raise ValueError(f"a tensor of {flat.numel()} entries is beyond vLLM's int32 sparse indices")
    if previous is None:
        indices = torch.arange(flat.numel(), dtype=torch.int32, device=flat.device)
    else:
        indices = torch.nonzero(flat != previous.reshape(-1)).reshape(-1).to(torch.int32)
    return indices, flat[indices.long()]
