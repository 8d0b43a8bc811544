"""The weight-sync protocol: how named tensors travel from the learner to the rollout workers.

The learner streams its full weights as *buckets* (lists of named tensors up to `bucket_bytes`), laid
out back to back in one flat manifest (`build_manifest`). A transport (protocol/transports/: shm,
broadcast, ipc, nccl, one module each) moves the buckets; the receiver turns what arrived back into an
iterator of (name, tensor) that vLLM's in-place reload consumes. One call per sync per worker (a
broadcast: one collective per bucket), never one call per parameter.

Everything here is plain data or plain torch: manifests travel as rows of (name, dtype, shape,
offset), because vLLM's multiprocess engine msgpack-encodes collective_rpc arguments (tuples arrive
as lists, tensors cannot travel at all).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
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

    def __post_init__(self) -> None:
        # Rows travel as plain values: vLLM's multiprocess engine msgpack-encodes collective_rpc
        # arguments, so a shape arrives as a list; a tuple keeps the meta hashable and comparable.
        object.__setattr__(self, "shape", tuple(int(d) for d in self.shape))
        object.__setattr__(self, "offset", int(self.offset))

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
    location: str = ""  # the transport's node-local buffer (Transport.scratch_location): shm's file path, else ""

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
