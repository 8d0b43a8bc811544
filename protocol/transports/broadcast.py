"""``broadcast``: a private torch.distributed group between learner rank 0 and every engine worker (NCCL on
GPUs, gloo on CPU); rank 0 broadcasts each bucket as one flat tensor.

Any placement where every rank has its own device (NCCL refuses two ranks on one GPU, so not with
cluster.colocate). A collective: every engine worker must be inside its load before rank 0 starts.
Nothing is kept to reload from: the driver takes a restarted engine back by rebuilding the group
(cluster/loop/sync.py). On GPUs vLLM's own engine (``nccl``, vllm_nccl.py) is the default; this one stays for
CPU (gloo) and as the fallback that needs no `weight_transfer_config` in the engines.
"""
from __future__ import annotations

from datetime import timedelta
from typing import Any, Iterator

import torch

from protocol.endpoints import gloo_device
from protocol.transports import register
from protocol.transports.base import Buckets, Transport
from protocol.weight_sync import DTYPES, TensorMeta


@register
class Broadcast(Transport):
    name = "broadcast"
    placement = "disaggregated"
    streams = True
    collective = True
    needs_rendezvous = True

    group: Any = None

    def _open(self, rank: int, device: torch.device) -> None:
        s = self.setup
        backend = "nccl" if s.device == "gpu" else "gloo"
        self.device = device
        self.group = open_broadcast_group(s.host, s.port, rank, s.world_size, backend, s.timeout_s, s.rank_names)

    def open_sender(self, rank: int, device: torch.device) -> None:
        self._open(0, device)

    def open_receiver(self, rank: int, device: torch.device) -> None:
        self._open(rank, device)

    def send(self, buckets: Buckets, version: int) -> None:
        for metas, values in buckets:
            broadcast_bucket(self.group, metas, self.device, self.setup.timeout_s, values)

    def receive(self, version: int, payload: Any) -> Iterator[tuple[str, torch.Tensor]]:
        for bucket in self.setup.metas():
            yield from broadcast_bucket(self.group, bucket, self.device, self.setup.timeout_s)

    def close(self) -> None:
        self.group = None


def open_broadcast_group(host: str, port: int, rank: int, world_size: int, backend: str, timeout_s: float,
                         rank_names: list[str] | None = None) -> torch.distributed.ProcessGroup:
    """A private process group (own TCPStore) beside any default group DeepSpeed or vLLM created.

    Rank 0 is the learner's rank 0; ranks 1..N are engine workers. Each rank announces itself in the
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
