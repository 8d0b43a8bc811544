"""The weight-sync protocol: how named tensors travel from learner rank 0 to the rollout workers.

The learner streams its full weights as *buckets* (lists of named tensors up to `bucket_bytes`).
A transport moves the buckets; the receiver turns what arrived back into an iterator of
(name, tensor) that vLLM's in-place reload consumes. One call per bucket (shm: one call per sync),
never one call per parameter.

Transports:
- ``shm``: one pre-allocated file in /dev/shm, reused across steps (CPU, one node). The learner
  writes every bucket at its offset and stamps it ready; each rollout worker maps the same file and
  reads views of each bucket as soon as it is stamped (streaming: protocol/shm_stream.py).
- ``broadcast``: a torch.distributed group (gloo on CPU, NCCL on GPU) between learner rank 0 and
  every rollout rank; rank 0 broadcasts each bucket as one flat tensor.
- ``ipc``: colocated GPUs only. Like ``shm``, but the reused flat buffer lives in learner rank 0's
  GPU memory and travels as a pickled CUDA IPC handle (bytes, never tensors: vLLM's multiprocess
  engine cannot carry tensors in collective_rpc arguments). Costs one extra weight copy on the GPU.

Every wait is bounded by ``timeout_s`` (the config's sync.timeout_s): a missing or failed peer
raises an error instead of hanging.
"""
from __future__ import annotations

import os
import pickle
from dataclasses import dataclass
from datetime import timedelta
from typing import Iterable, Iterator

import torch

from protocol.endpoints import gloo_device

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

    def rows(self) -> list[tuple]:
        """The tensors as plain tuples (name, dtype, shape, offset): what RPC arguments carry."""
        return [(m.name, m.dtype, m.shape, m.offset) for m in self.tensors]

    def bucket_rows(self, bucket_bytes: int) -> list[list[tuple]]:
        return [[(m.name, m.dtype, m.shape, m.offset) for m in b] for b in self.buckets(bucket_bytes)]

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


def flat_view(buffer: torch.Tensor, meta: TensorMeta) -> torch.Tensor:
    raw = buffer[meta.offset: meta.offset + meta.nbytes]
    return raw.view(DTYPES[meta.dtype]).view(meta.shape)


def check_manifest(metas: Iterable[TensorMeta], known_names: set[str],
                   checkpoint_shapes: dict[str, tuple[int, ...]]) -> None:
    """Refuse a manifest before anything is loaded: a failed in-place reload leaves the engine broken.

    `known_names`: names the receiver accepts (after its own fused-name mapping);
    `checkpoint_shapes`: full shapes of the checkpoint the receiver was started from (its live
    parameters can be packed or padded, so they are no reference).
    """
    for meta in metas:
        if meta.name not in known_names:
            raise ValueError(f"weight '{meta.name}' is not a parameter of the rollout model")
        expected = checkpoint_shapes.get(meta.name)
        if expected is not None and tuple(expected) != tuple(meta.shape):
            raise ValueError(f"weight '{meta.name}' has shape {tuple(meta.shape)}, the rollout model expects {tuple(expected)}")


class FlatBuffer:
    """One flat uint8 tensor holding a whole manifest: the learner writes, receivers read views."""

    def __init__(self, tensor: torch.Tensor) -> None:
        self.tensor = tensor

    def write(self, meta: TensorMeta, value: torch.Tensor) -> None:
        """copy_ casts on the fly: no temporary in the rollout dtype, one pass over the bytes."""
        flat_view(self.tensor, meta).copy_(value.detach().reshape(meta.shape))

    def read(self, metas: Iterable[TensorMeta]) -> Iterator[tuple[str, torch.Tensor]]:
        for meta in metas:
            yield meta.name, flat_view(self.tensor, meta)


class ShmBuffer(FlatBuffer):
    """A /dev/shm file mapped as one uint8 tensor; created once, reused across steps."""

    def __init__(self, path: str, nbytes: int, create: bool) -> None:
        if create:
            with open(path, "wb") as f:
                f.truncate(nbytes)
        elif os.path.getsize(path) < nbytes:
            raise RuntimeError(f"weight buffer {path} holds {os.path.getsize(path)} bytes, manifest needs {nbytes}")
        self.path = path
        self.inode = os.stat(path).st_ino
        super().__init__(torch.from_file(path, shared=True, size=nbytes, dtype=torch.uint8))

    def still_valid(self, path: str, nbytes: int) -> bool:
        """A cached mapping stays usable while it is the same file and large enough."""
        return (self.path == path and self.tensor.numel() >= nbytes and os.path.exists(path)
                and os.stat(path).st_ino == self.inode)


def _device_uuid(device: torch.device) -> str:
    return str(torch.cuda.get_device_properties(device).uuid)


def ipc_handle(buffer: FlatBuffer) -> bytes:
    """Pickled CUDA IPC handle of a GPU buffer (bytes: safe through any RPC, unlike tensors)."""
    from torch.multiprocessing.reductions import reduce_tensor

    rebuild, args = reduce_tensor(buffer.tensor)
    return pickle.dumps((rebuild, args, _device_uuid(buffer.tensor.device)))


def open_ipc_handle(handle: bytes, device: torch.device) -> FlatBuffer:
    """Map the learner's GPU buffer into this process; only the same physical GPU can do that."""
    rebuild, args, uuid = pickle.loads(handle)
    if uuid != _device_uuid(device):
        raise RuntimeError(f"ipc transport: learner buffer is on GPU {uuid}, this rollout worker is on "
                           f"{_device_uuid(device)}; ipc needs colocation on one GPU, use sync.transport=broadcast")
    args = list(args)
    args[6] = device.index  # reduce_tensor's device slot: the index as this process numbers its GPUs
    return FlatBuffer(rebuild(*args))


def open_broadcast_group(host: str, port: int, rank: int, world_size: int, backend: str, timeout_s: float,
                         rank_names: list[str] | None = None) -> torch.distributed.ProcessGroup:
    """A private process group (own TCPStore) beside any default group DeepSpeed created.

    Rank 0 is the learner's rank 0; ranks 1..N are rollout ranks. Each rank announces itself in the
    store first, so rank 0 can name the ranks that never joined (`rank_names[r]`) on timeout.
    """
    import torch.distributed as dist

    timeout = timedelta(seconds=timeout_s)
    store = dist.TCPStore(host, port, world_size, is_master=(rank == 0), timeout=timeout, wait_for_workers=False)
    store.set(f"joined/{rank}", "1")
    if rank == 0:
        _wait_for_ranks(store, world_size, timeout_s, rank_names)
    if backend == "gloo":
        opts = dist.ProcessGroupGloo._Options()
        opts._timeout = timeout
        opts._devices = [gloo_device()]  # bound to the node IP, not the hostname's address
        return dist.ProcessGroupGloo(store, rank, world_size, opts)
    opts = dist.ProcessGroupNCCL.Options()
    opts._timeout = timeout
    return dist.ProcessGroupNCCL(store, rank, world_size, opts)


def _wait_for_ranks(store: torch.distributed.Store, world_size: int, timeout_s: float,
                    rank_names: list[str] | None) -> None:
    keys = [f"joined/{r}" for r in range(1, world_size)]
    try:
        store.wait(keys, timedelta(seconds=timeout_s))
    except Exception:  # noqa: BLE001  (the store raises a backend-specific timeout error)
        missing = [r for r, k in zip(range(1, world_size), keys) if not store.check([k])]
        names = [rank_names[r] if rank_names and r < len(rank_names) else f"rank {r}" for r in missing]
        raise TimeoutError(f"weight-sync group: {', '.join(names)} did not join within {timeout_s:g}s") from None


def broadcast_bucket(group: torch.distributed.ProcessGroup, bucket: list[TensorMeta], device: torch.device,
                     timeout_s: float, values: list[torch.Tensor] | None = None) -> list[tuple[str, torch.Tensor]]:
    """Rank 0 passes `values`; every rank gets the bucket's (name, tensor) pairs back. One collective per bucket.

    Values are cast straight into the flat buffer (no concatenated temporary); the wait is bounded.
    """
    flat = torch.empty(sum(m.nbytes for m in bucket), dtype=torch.uint8, device=device)
    out, offset = [], 0
    for meta in bucket:
        out.append((meta.name, flat[offset: offset + meta.nbytes].view(DTYPES[meta.dtype]).view(meta.shape)))
        offset += meta.nbytes
    if values is not None:
        for (_, view), value in zip(out, values):
            view.copy_(value.detach().reshape(view.shape))
    group.broadcast(flat, 0).wait(timedelta(seconds=timeout_s))
    return out
