"""Streaming over the shared-memory transport: receivers load bucket i while the learner writes bucket i+1.

Segment layout (one /dev/shm file, full size, created once per layout and reused every sync):

    [ data: every tensor at its manifest offset ][ pad to 64 B ][ stamps: one int64 per bucket ]

Stamp protocol for version v (v >= 1; a fresh file holds 0 everywhere):
- the writer stores -v in bucket i's stamp, copies the bucket's tensors, then stores v;
- a reader waits until the stamp equals v; a stamp that shows a newer version (w > v, or -w while
  it is being written) means the learner already overwrote the bucket: an error, never torn weights;
  after loading, the reader checks every stamp still equals v (a seqlock-style re-check).

Why the writer never waits for readers: the buffer holds the full weights, so the learner finishes its
export even if an engine is still generating and loads later (its load is queued on its Ray actor).
The driver must not start version v+1 before every engine loaded v (the sync mode waits for both);
the stamps make a violation loud instead of silent.

Memory ordering: the tensor copies are plain stores (possibly from OpenMP threads that join before
copy_ returns) followed, in program order, by an aligned 8-byte stamp store through numpy. x86-64
is TSO: stores become visible to other cores in program order and the OpenMP join orders the worker
threads' stores before the stamp, so a reader that sees stamp == v sees the bucket's bytes. On a
weakly ordered CPU (aarch64) this would need a release fence before the stamp store and an acquire
after the load, which Python cannot express: StreamSegment refuses to run on anything but x86-64.
"""
from __future__ import annotations

import os
import platform
import time
from typing import Iterator

import numpy as np
import torch

from protocol.weight_sync import ShmBuffer, TensorMeta, flat_view

ORDERING_SAFE = platform.machine().lower() in ("x86_64", "amd64")


class StreamError(RuntimeError):
    """A bucket was not published in time, or was overwritten by a newer version while loading."""


def segment_layout(data_bytes: int, num_buckets: int) -> tuple[int, int]:
    """(offset of the stamps, total file size) for a manifest of `data_bytes` split in `num_buckets`."""
    stamps_at = (data_bytes + 63) // 64 * 64
    return stamps_at, stamps_at + 8 * num_buckets


class StreamSegment:
    """A mapped segment plus the per-bucket stamps; the writer and every reader build the same one.

    Views of every tensor are built once per mapping, not per sync: slicing and re-viewing every
    tensor is Python work that small models would otherwise pay on both sides at every sync.
    """

    def __init__(self, path: str, buckets: list[list[TensorMeta]], data_bytes: int, create: bool) -> None:
        if not ORDERING_SAFE:
            raise RuntimeError(f"sync.transport=shm streams with plain stores, which is only ordered on x86-64 "
                               f"(this host: {platform.machine()}); use sync.transport=broadcast")
        stamps_at, size = segment_layout(data_bytes, len(buckets))
        if create:
            _create_atomically(path, size)
        self.shm = ShmBuffer(path, size, create=False)
        self.path, self.num_buckets, self.key = path, len(buckets), layout_key(buckets)
        raw = self.shm.tensor
        self.stamps: np.ndarray = raw[stamps_at: size].view(torch.int64).numpy()
        self.views = [[(m.name, flat_view(raw, m)) for m in bucket] for bucket in buckets]

    def matches(self, path: str, buckets: list[list[TensorMeta]]) -> bool:
        """Reusable for this sync: same file (same inode) and the same bucket layout."""
        return self.key == layout_key(buckets) and self.shm.still_valid(path, self.shm.tensor.numel())

    # ---- writer ----------------------------------------------------------------------------------
    def publish(self, index: int, version: int, values: list[torch.Tensor]) -> None:
        """Copy one bucket (casting to the rollout dtype inside the copy), then stamp it ready."""
        self.stamps[index] = -version
        for (_, view), value in zip(self.views[index], values):
            view.copy_(value.detach().reshape(view.shape))
        self.stamps[index] = version

    # ---- reader ----------------------------------------------------------------------------------
    def wait(self, index: int, version: int, deadline: float, timeout_s: float) -> None:
        """Return once bucket `index` holds `version`; spin briefly, then back off to short sleeps
        (a spinning reader would steal the core the learner is writing from)."""
        pause = 0.0
        while True:
            stamp = int(self.stamps[index])
            if stamp == version:
                return
            if stamp > version or stamp < -version:
                raise StreamError(f"{self.path}: bucket {index}/{self.num_buckets} was overwritten by version "
                                  f"{abs(stamp)} while version {version} was being loaded (the learner ran ahead)")
            if time.monotonic() > deadline:
                state = "being written" if stamp < 0 else f"last published version {stamp}"
                raise StreamError(f"{self.path}: bucket {index}/{self.num_buckets} of weight version {version} was not "
                                  f"published within {timeout_s:g}s ({state})")
            time.sleep(pause)
            pause = min(1e-3, pause * 2 + 2e-5)

    def stream(self, version: int, deadline: float, timeout_s: float) -> Iterator[tuple[str, torch.Tensor]]:
        """(name, view) pairs in manifest order, each bucket only once its stamp says it is ready.

        Records `trace`: per bucket, (monotonic time it was ready to the reader, time the consumer asked
        for the next item, i.e. had taken all of its tensors). CLOCK_MONOTONIC is system-wide on Linux,
        so these compare with the writer's clock (tests use that to prove the overlap).
        """
        self.trace: list[tuple[float, float]] = []
        for index, views in enumerate(self.views):
            self.wait(index, version, deadline, timeout_s)
            ready = time.monotonic()
            yield from views
            self.trace.append((ready, time.monotonic()))

    def check_unchanged(self, version: int) -> None:
        """After loading: every bucket must still hold `version`, or the engine may hold torn weights."""
        bad = [i for i in range(self.num_buckets) if int(self.stamps[i]) != version]
        if bad:
            raise StreamError(f"{self.path}: buckets {bad} changed from version {version} to "
                              f"{[int(self.stamps[i]) for i in bad]} during the load; sync again")


def layout_key(buckets: list[list[TensorMeta]]) -> int:
    return hash(tuple(tuple(bucket) for bucket in buckets))


def _create_atomically(path: str, size: int) -> None:
    """A reader polling for the file sees it only once it has its full size (rename is atomic)."""
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "wb") as f:
        f.truncate(size)
    os.replace(tmp, path)


def wait_for_segment(path: str, size: int, deadline: float, timeout_s: float) -> None:
    """A reader may start before the learner's first export has created the file."""
    while not (os.path.exists(path) and os.path.getsize(path) >= size):
        if time.monotonic() > deadline:
            raise StreamError(f"weight segment {path} ({size} bytes) did not appear within {timeout_s:g}s")
        time.sleep(1e-3)
