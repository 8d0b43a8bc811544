"""``ipc``: CUDA IPC between processes on one GPU (cluster.colocate: every engine worker shares its GPU with a
learner rank).

Every learner rank writes the full weight set (ZeRO-3 gathers it on every rank anyway) into one reused
flat buffer on its own GPU and returns the buffer's CUDA IPC handle, keyed by the GPU's UUID; each
engine worker maps the handle of its own GPU and reloads from views of that buffer: no bytes cross a
link. The buffer is kept until the next sync (a restarted engine can reload from it), at the cost of
one extra weight copy per GPU. Handles travel as bytes: tensors cannot travel through vLLM's
multiprocess collective_rpc.
"""
from __future__ import annotations

import pickle
from typing import Any, Iterator

import torch

from protocol.transports import register
from protocol.transports.base import Buckets, Transport
from protocol.weight_sync import FlatBuffer


@register
class CudaIpc(Transport):
    name = "ipc"
    devices = ("gpu",)
    placement = "colocated"
    keeps_last_export = True
    every_rank_exports = True

    buffer: FlatBuffer | None = None
    handle: bytes = b""
    mapped_key: bytes = b""

    @classmethod
    def merge_payloads(cls, payloads: list[Any]) -> dict[str, bytes]:
        merged: dict[str, bytes] = {}
        for payload in payloads:
            merged.update(payload or {})
        return merged

    # ---- learner rank ---------------------------------------------------------------------------
    def open_sender(self, rank: int, device: torch.device) -> None:
        self.device = device

    def send(self, buckets: Buckets, version: int) -> dict[str, bytes]:
        if self.buffer is None or self.buffer.tensor.numel() < self.setup.total_bytes:
            self.buffer = FlatBuffer(torch.empty(self.setup.total_bytes, dtype=torch.uint8, device=self.device))
            self.handle = ipc_handle(self.buffer)
        for metas, values in buckets:
            for meta, value in zip(metas, values):
                self.buffer.write(meta, value)  # casts to the rollout dtype inside the copy
        torch.cuda.synchronize(self.device)  # engines read from other processes
        return {device_uuid(self.device): self.handle}

    # ---- engine worker --------------------------------------------------------------------------
    def open_receiver(self, rank: int, device: torch.device) -> None:
        self.device = device

    def receive(self, version: int, payload: dict[str, bytes]) -> Iterator[tuple[str, torch.Tensor]]:
        uuid = device_uuid(self.device)
        handle = payload.get(uuid)
        if handle is None:
            raise RuntimeError(f"ipc transport: no learner rank exported on this engine worker's GPU {uuid} "
                               f"(learner GPUs: {sorted(payload)}); ipc needs cluster.colocate=true")
        if self.mapped_key != handle:  # the learner reuses one buffer: map its handle once
            self.buffer = open_ipc_handle(handle, self.device)
            self.mapped_key = handle
        metas = [m for bucket in self.setup.metas() for m in bucket]
        return self.buffer.read(metas)

    def finish(self, version: int) -> None:
        torch.cuda.synchronize(self.device)  # the learner may overwrite the buffer once this returns

    def close(self) -> None:
        self.buffer = None


def device_uuid(device: torch.device) -> str:
    return str(torch.cuda.get_device_properties(device).uuid)


def ipc_handle(buffer: FlatBuffer) -> bytes:
    """Pickled CUDA IPC handle of a GPU buffer (bytes: safe through any RPC, unlike tensors)."""
    from torch.multiprocessing.reductions import reduce_tensor

    rebuild, args = reduce_tensor(buffer.tensor)
    return pickle.dumps((rebuild, args))


def open_ipc_handle(handle: bytes, device: torch.device) -> FlatBuffer:
    """Map a learner rank's GPU buffer into this process (only a process on the same GPU can)."""
    rebuild, args = pickle.loads(handle)  # noqa: S301  (our own learner's handle, never model output)
    args = list(args)
    args[6] = device.index  # reduce_tensor's device slot: the index as this process numbers its GPUs
    return FlatBuffer(rebuild(*args))
