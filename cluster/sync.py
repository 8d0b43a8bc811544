"""Driver side of the weight sync: pick a transport, build the manifest once, move weights each step.

Choosing a transport (`sync.transport`):
- ``auto``: ``shm`` on a CPU cluster (one node), ``broadcast`` (NCCL) on GPUs.
- ``shm``: CPU, learner rank 0 and every rollout worker on one node (they share /dev/shm). Streamed:
  the export and the loads start together; each bucket is stamped with the version once written and
  engines load it meanwhile (protocol/shm_stream.py). x86-64 hosts only (store ordering).
- ``broadcast``: any placement; GPUs use NCCL, CPU gloo. The default for disaggregated GPUs.
- ``ipc``: GPUs only, and only when learner rank 0 and every rollout worker share one physical GPU
  (colocated, e.g. fractional GPU bundles). No bytes move at all: the engine reads learner rank 0's
  buffer in place. Costs one extra weight copy in GPU memory. A receiver on another GPU fails at the
  first sync with an error naming it.

Every part of a sync is bounded by `sync.timeout_s`; the first worker that fails, or the workers
still running at the deadline, are named in a WeightSyncError. A failed sync leaves the group
unusable (a receiver may be half-loaded): restart the rollout engines.
"""
from __future__ import annotations

import os
import time
import uuid
from dataclasses import replace
from typing import Any

import ray

from cluster.config import Config
from cluster.groups import LearnerGroup, RolloutGroup
from protocol.weight_sync import DTYPES, WeightManifest, build_manifest


class WeightSyncError(RuntimeError):
    pass


def choose_transport(cfg: Config) -> str:
    """auto: shared memory on a single CPU node, a broadcast group (NCCL) on GPUs."""
    transport = cfg.sync.transport
    if transport == "ipc" and cfg.cluster.device != "gpu":
        raise ValueError("sync.transport=ipc needs cluster.device=gpu (CUDA IPC between colocated processes)")
    if transport != "auto":
        return transport
    return "shm" if cfg.cluster.device == "cpu" else "broadcast"


def _cause(error: Exception) -> str:
    cause = getattr(error, "cause", None) or error
    return f"{type(cause).__name__}: {str(cause).strip().splitlines()[-1] if str(cause).strip() else ''}"


def wait_named(named: list[tuple[str, ray.ObjectRef]], timeout_s: float, what: str) -> list[Any]:
    """Results of every worker's part; the first failure, or the deadline, raises naming the worker(s)."""
    pending = {ref: name for name, ref in named}
    deadline = time.monotonic() + timeout_s
    while pending:
        ready, _ = ray.wait(list(pending), num_returns=1, timeout=max(0.0, deadline - time.monotonic()))
        if not ready:
            raise WeightSyncError(f"{what}: {', '.join(pending.values())} did not finish within {timeout_s:g}s")
        name = pending.pop(ready[0])
        try:
            ray.get(ready[0])
        except ray.exceptions.RayError as error:
            raise WeightSyncError(f"{what}: {name} failed: {_cause(error)}") from error
    return ray.get([ref for _, ref in named])


def _seconds(values: list[Any]) -> float:
    """The longest of the workers' self-reported durations (a worker that reports none counts 0)."""
    return max((float(v) for v in values if v is not None), default=0.0)


class WeightSync:
    def __init__(self, cfg: Config, learners: LearnerGroup, rollouts: RolloutGroup) -> None:
        self.cfg, self.learners, self.rollouts = cfg, learners, rollouts
        self.transport = choose_transport(cfg)
        self.bucket_bytes = int(cfg.sync.bucket_mb * 2**20)
        self.timeout_s = cfg.sync.timeout_s
        # The driver waits a little longer than the collectives, so a worker's own timeout error
        # (which names the missing peer) arrives before the driver's generic one.
        self.deadline_s = self.timeout_s * 1.25 + 2.0
        self.layout = learners.call("weight_layout")[0]
        self.location = f"/dev/shm/reasonrl-{os.getpid()}-{uuid.uuid4().hex[:8]}.weights"
        self.version = 0
        self._layout_manifest: WeightManifest | None = None
        self._buckets: list[list[tuple]] = []
        self.check(self.manifest(0))
        if self.transport == "broadcast":
            self.open_groups()

    def manifest(self, version: int) -> WeightManifest:
        """The layout never changes between syncs: built once, only the version is replaced."""
        if self._layout_manifest is None:
            self._layout_manifest = build_manifest(self.layout, DTYPES[self.cfg.model.dtype], 0, self.transport,
                                                   self.location)
            self._buckets = self._layout_manifest.bucket_rows(self.bucket_bytes)
        return replace(self._layout_manifest, version=version)

    def _learner_refs(self, method: str, *args: Any) -> list[tuple[str, ray.ObjectRef]]:
        return [(f"learner[{i}]", getattr(a, method).remote(*args)) for i, a in enumerate(self.learners.actors)]

    def _rollout_refs(self, method: str, *args: Any) -> list[tuple[str, ray.ObjectRef]]:
        return [(f"rollout[{i}]", getattr(a, method).remote(*args)) for i, a in enumerate(self.rollouts.actors)]

    def check(self, manifest: WeightManifest) -> None:
        """Every engine validates names and shapes before the first load (a failed load breaks it)."""
        wait_named(self._rollout_refs("check_weight_names", manifest), self.deadline_s, "weight name/shape check")

    def open_groups(self) -> None:
        """Form the broadcast group: learner rank 0 plus every rollout rank; a rank that does not join is named."""
        host, port = ray.get(self.learners.actors[0].address.remote())
        tp = self.cfg.rollout.tensor_parallel_size
        world = 1 + len(self.rollouts.actors) * tp
        names = ["learner[0]"] + [f"rollout[{i}]" + (f" tp rank {j}" if tp > 1 else "")
                                  for i in range(len(self.rollouts.actors)) for j in range(tp)]
        refs = self._learner_refs("open_weight_group", host, port, world, self.timeout_s, names)
        refs += [(f"rollout[{i}]", a.open_weight_group.remote(host, port, 1 + i * tp, world, self.timeout_s))
                 for i, a in enumerate(self.rollouts.actors)]
        wait_named(refs, self.deadline_s, "opening the weight-sync group")

    def _move(self, manifest: WeightManifest) -> tuple[float, float]:
        """Run the transport; returns (export seconds, load seconds), each measured where it ran.

        shm and broadcast: the learner's export and the engines' loads are submitted together and
        overlap (engines load bucket i while the learner writes bucket i+1). ipc: export, then loads.
        """
        what = f"weight sync v{manifest.version} ({self.transport})"
        buckets = self._buckets
        if self.transport in ("shm", "broadcast"):
            if self.transport == "shm":
                export = self._learner_refs("export_to_shm", manifest.location, manifest.version,
                                            manifest.total_bytes, buckets)
                loads = self._rollout_refs("load_weights_shm", manifest, self.bucket_bytes, self.timeout_s)
            else:
                export = self._learner_refs("export_broadcast", buckets)
                loads = self._rollout_refs("load_weights_broadcast", manifest, self.bucket_bytes)
            results = wait_named(export + loads, self.deadline_s, what)
            return _seconds(results[:len(export)]), _seconds(results[len(export):])
        start = time.perf_counter()
        handle = wait_named(self._learner_refs("export_ipc", manifest.total_bytes, buckets), self.deadline_s, what)[0]
        exported = time.perf_counter() - start
        loaded = wait_named(self._rollout_refs("load_weights_ipc", manifest, handle), self.deadline_s, what)
        return exported, _seconds(loaded)

    def sync(self) -> dict[str, float]:
        """Push the learner's current weights to every rollout worker; bumps the policy version on success.

        Metrics: sync/total_s is the driver's wall time; sync/export_s the learner's export (rank 0's,
        as timed in the learner) and sync/load_s the slowest engine's load (timed in the engine). With
        streaming they overlap, so export_s + load_s exceeds total_s by the overlap.
        """
        manifest = self.manifest(self.version + 1)
        start = time.perf_counter()
        exported, loaded = self._move(manifest)
        total = time.perf_counter() - start
        self.version = manifest.version
        return {"sync/export_s": exported, "sync/load_s": loaded, "sync/total_s": total,
                "sync/bytes": float(manifest.total_bytes), "policy_version": float(self.version)}

    def close(self) -> None:
        if os.path.exists(self.location):
            os.remove(self.location)
