"""The weight-sync protocol: how named tensors travel from learner rank 0 to the rollout workers.

The learner streams its full weights as *buckets* (lists of named tensors up to `bucket_bytes`).
A transport moves the buckets; the receiver turns what arrived back into an iterator of
(name, tensor) that vLLM's in-place reload consumes. One call per bucket (shm: one call per sync),
never one call per parameter.

Transports:
- ``shm``: one pre-allocated file in /dev/shm, reused across steps (CPU, one node). The learner
  writes every bucket at its offset; each rollout worker maps the same file and reads views.
- ``broadcast``: a torch.distributed group (gloo on CPU, NCCL on GPU) between learner rank 0 and
  every rollout rank; rank 0 broadcasts each bucket as one flat tensor.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta
from typing import Iterable, Iterator

import torch

DTYPES: dict[str, torch.dtype] = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


@dataclass(frozen=True)
class TensorMeta:
    name: str
    dtype: str
    shape: tuple[int, ...]
    offset: int  # byte offset inside the flat buffer

    @property
    def nbytes(self) -> int:
        numel = 1
        for d in self.shape:
            numel *= d
        return numel * DTYPES[self.dtype].itemsize


@dataclass(frozen=True)
class WeightManifest:
    """Describes one full set of weights: where each tensor lives in the flat buffer."""

    version: int
    tensors: tuple[TensorMeta, ...]
    transport: str
    location: str = ""  # shm: file path; broadcast: "host:port"

    @property
    def total_bytes(self) -> int:
        return max((t.offset + t.nbytes for t in self.tensors), default=0)

    def buckets(self, bucket_bytes: int) -> list[list[TensorMeta]]:
        """Split tensors, in order, into consecutive buckets of at most bucket_bytes (one tensor may exceed it)."""
        out: list[list[TensorMeta]] = [[]]
        size = 0
        for meta in self.tensors:
            if out[-1] and size + meta.nbytes > bucket_bytes:
                out.append([])
                size = 0
            out[-1].append(meta)
            size += meta.nbytes
        return [b for b in out if b]


def build_manifest(named_shapes: Iterable[tuple[str, tuple[int, ...]]], dtype: torch.dtype,
                   version: int, transport: str, location: str = "") -> WeightManifest:
    """Lay tensors out back to back, each 64-byte aligned, in the learner's parameter order."""
    metas, offset = [], 0
    for name, shape in named_shapes:
        meta = TensorMeta(name, dtype_name(dtype), tuple(shape), offset)
        metas.append(meta)
        offset += (meta.nbytes + 63) // 64 * 64
    return WeightManifest(version, tuple(metas), transport, location)


def _flat_view(buffer: torch.Tensor, meta: TensorMeta) -> torch.Tensor:
    raw = buffer[meta.offset: meta.offset + meta.nbytes]
    return raw.view(DTYPES[meta.dtype]).view(meta.shape)


class ShmBuffer:
    """A /dev/shm file mapped as one uint8 tensor; created once, reused across steps."""

    def __init__(self, path: str, nbytes: int, create: bool) -> None:
        if create:
            with open(path, "wb") as f:
                f.truncate(nbytes)
        elif os.path.getsize(path) < nbytes:
            raise RuntimeError(f"weight buffer {path} holds {os.path.getsize(path)} bytes, manifest needs {nbytes}")
        self.path = path
        self.tensor = torch.from_file(path, shared=True, size=nbytes, dtype=torch.uint8)

    def write(self, meta: TensorMeta, value: torch.Tensor) -> None:
        _flat_view(self.tensor, meta).copy_(value.detach().reshape(meta.shape))

    def read(self, metas: Iterable[TensorMeta]) -> Iterator[tuple[str, torch.Tensor]]:
        for meta in metas:
            yield meta.name, _flat_view(self.tensor, meta)


def open_broadcast_group(host: str, port: int, rank: int, world_size: int, backend: str,
                         timeout_s: float) -> torch.distributed.ProcessGroup:
    """A private process group (own TCPStore) beside any default group DeepSpeed created.

    Rank 0 is the learner's rank 0; ranks 1..N are rollout ranks.
    """
    import torch.distributed as dist

    store = dist.TCPStore(host, port, world_size, is_master=(rank == 0), timeout=timedelta(seconds=timeout_s),
                          wait_for_workers=False)
    if backend == "gloo":
        opts = dist.ProcessGroupGloo._Options()
        opts._timeout = timedelta(seconds=timeout_s)
        opts._devices = [dist.ProcessGroupGloo.create_default_device()]
        return dist.ProcessGroupGloo(store, rank, world_size, opts)
    opts = dist.ProcessGroupNCCL.Options()
    opts._timeout = timedelta(seconds=timeout_s)
    return dist.ProcessGroupNCCL(store, rank, world_size, opts)


def broadcast_bucket(group: torch.distributed.ProcessGroup, bucket: list[TensorMeta],
                     device: torch.device, values: list[torch.Tensor] | None = None) -> list[tuple[str, torch.Tensor]]:
    """Rank 0 passes `values`; every rank gets the bucket's (name, tensor) pairs back. One collective per bucket."""
    nbytes = sum(m.nbytes for m in bucket)
    if values is not None:
        flat = torch.cat([v.detach().reshape(-1).view(torch.uint8) for v in values]).to(device)
    else:
        flat = torch.empty(nbytes, dtype=torch.uint8, device=device)
    group.broadcast(flat, 0).wait()
    out, offset = [], 0
    for meta in bucket:
        out.append((meta.name, flat[offset: offset + meta.nbytes].view(DTYPES[meta.dtype]).view(meta.shape)))
        offset += meta.nbytes
    return out
