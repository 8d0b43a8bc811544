"""What every weight transport is: a setup both sides share, the learner half, the engine half, and the
few facts the driver schedules it by."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, ClassVar, Iterable, Iterator

import torch

from protocol.weight_sync import TensorMeta

# One bucket's tensors on the learner side: their metas and full (gathered) values.
Buckets = Iterable[tuple[list[TensorMeta], list[torch.Tensor]]]


@dataclass
class SyncSetup:
    """Everything a transport may need to open, the same for the learner and every engine worker.

    Plain values only: it crosses Ray and vLLM's collective_rpc (`as_dict` / `from_dict`), which in the
    multiprocess engine is msgpack (tuples arrive as lists; TensorMeta normalises its shape again).
    """

    buckets: list[list[tuple]]  # manifest rows (name, dtype, shape, offset), bucket by bucket, in export order
    total_bytes: int  # size of the flat layout (every tensor at its manifest offset)
    timeout_s: float  # bound on every wait of a sync (sync.timeout_s)
    device: str = "cpu"  # cluster.device
    location: str = ""  # a node-local path (shm: the /dev/shm segment)
    host: str = ""  # rendezvous of learner rank 0 (transports with needs_rendezvous)
    port: int = 0
    world_size: int = 0  # 1 learner rank + every engine worker (broadcast)
    rank_names: list[str] = field(default_factory=list)  # names of the ranks above, for errors

    def metas(self) -> list[list[TensorMeta]]:
        return [[TensorMeta(*row) for row in bucket] for bucket in self.buckets]

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "SyncSetup":
        return cls(**values)


class Transport:
    """One way of moving weights. Subclasses live one per module in protocol/transports/ and register
    themselves; an instance serves one side: a learner rank (`open_sender` / `send`) or one vLLM worker
    (`open_receiver` / `receive` / `finish`).

    The driver (cluster/loop/sync.py) schedules every transport by the class attributes below alone.
    """

    name: ClassVar[str]
    devices: ClassVar[tuple[str, ...]] = ("cpu", "gpu")  # cluster.device values it runs on
    placement: ClassVar[str] = "any"  # "any", "colocated" (engine and learner rank share a GPU) or "disaggregated"
    streams: ClassVar[bool] = False  # the loads run while the learner exports: submitted together
    collective: ClassVar[bool] = False  # export and loads are one collective: every receiver must be at its load first
    keeps_last_export: ClassVar[bool] = False  # a restarted engine can load the last export without the learner
    needs_rendezvous: ClassVar[bool] = False  # opening needs host/port/world_size (learner rank 0 listens)
    every_rank_exports: ClassVar[bool] = False  # every learner rank sends (one buffer per GPU), not only rank 0
    # vLLM's own weight-transfer backend that loads on the engine side (its `weight_transfer_config`), or None:
    # such a transport's engine half runs vLLM's worker engine (rollout/vllm_compat/extension.py), not our reload
    native_backend: ClassVar[str | None] = None

    def __init__(self, setup: SyncSetup) -> None:
        self.setup = setup

    @classmethod
    def refusal(cls, device: str, colocated: bool) -> str | None:
        """Why this transport cannot run on `device` with this placement (None: it can)."""
        if device not in cls.devices:
            return f"sync.transport={cls.name} runs on {' or '.join(cls.devices)}, not cluster.device={device}"
        if cls.placement == "colocated" and not colocated:
            return (f"sync.transport={cls.name} needs every engine on the GPUs of learner ranks: set cluster.colocate=true "
                    "(or use sync.transport=auto)")
        if cls.placement == "disaggregated" and colocated:
            return f"sync.transport={cls.name} cannot run with cluster.colocate=true (use sync.transport=auto)"
        return None

    @classmethod
    def scratch_location(cls) -> str:
        """A node-local path the transport keeps its buffer at (SyncSetup.location), or ""."""
        return ""

    @classmethod
    def driver_open(cls, setup: SyncSetup) -> None:
        """On the driver, before the first sync (e.g. clean up what dead drivers left)."""

    @classmethod
    def driver_close(cls, setup: SyncSetup) -> None:
        """On the driver, when the run ends."""

    @classmethod
    def merge_payloads(cls, payloads: list[Any]) -> Any:
        """The learner ranks' `send` results -> the one payload every engine's `receive` gets."""
        return payloads[0] if payloads else None

    # ---- learner side ---------------------------------------------------------------------------
    def open_sender(self, rank: int, device: torch.device) -> None:
        """On every exporting learner rank, once (blocking rendezvous allowed, bounded by timeout_s)."""

    def send(self, buckets: Buckets, version: int) -> Any:
        """Move one full weight set; returns what the engines need to receive it (or None)."""
        raise NotImplementedError

    # ---- engine side ----------------------------------------------------------------------------
    def open_receiver(self, rank: int, device: torch.device) -> None:
        """In every vLLM worker, once; `rank` is the worker's rank in the transport's world (1..N)."""

    def receive(self, version: int, payload: Any) -> Iterator[tuple[str, torch.Tensor]]:
        """Wait until the first bytes of `version` are there, then return the (name, tensor) iterator that
        vLLM's reload consumes. Anything that fails before this returns leaves the engine untouched."""
        raise NotImplementedError

    def finish(self, version: int) -> Any:
        """After the reload consumed everything: checks and synchronisation; returns a small report."""
        return None

    def close(self) -> None:
        """Release what the transport holds (buffers, groups)."""
