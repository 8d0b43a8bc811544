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
import threading
import time
import uuid
from dataclasses import replace
from pathlib import Path
from typing import Any

import ray

from cluster.config import Config
from cluster import groups
from cluster.groups import ActorFailure, LearnerGroup, RolloutGroup
from protocol.weight_sync import DTYPES, WeightManifest, build_manifest


class WeightSyncError(ActorFailure):
    """A part of a weight sync failed; `worker` and `lost` as in ActorFailure."""


def choose_transport(cfg: Config) -> str:
    """auto: shared memory on a single CPU node, a broadcast group (NCCL) on GPUs."""
    transport = cfg.sync.transport
    if transport == "ipc" and cfg.cluster.device != "gpu":
        raise ValueError("sync.transport=ipc needs cluster.device=gpu (CUDA IPC between colocated processes)")
    if transport != "auto":
        return transport
    return "shm" if cfg.cluster.device == "cpu" else "broadcast"


def wait_named(named: list[tuple[str, ray.ObjectRef]], timeout_s: float, what: str) -> list[Any]:
    """groups.wait_named raising WeightSyncError: every failure of a worker's part names the worker."""
    return groups.wait_named(named, timeout_s, what, error=WeightSyncError)


def _seconds(values: list[Any]) -> float:
    """The longest of the workers' self-reported durations (a worker that reports none counts 0)."""
    return max((float(v) for v in values if v is not None), default=0.0)


def remove_orphaned_segments(directory: str = "/dev/shm") -> list[str]:
    """Delete weight segments left by drivers that no longer run (a SIGKILLed driver cannot remove its
    own, and each holds a whole model in RAM-backed /dev/shm). The driver's pid is in the name."""
    removed = []
    for path in Path(directory).glob("reasonrl-*-*.weights"):
        pid = path.name.split("-")[1]
        if pid.isdigit() and not _alive(int(pid)):
            path.unlink(missing_ok=True)
            removed.append(str(path))
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


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
        if self.transport == "shm":
            remove_orphaned_segments()
        self.version = 0
        self.ipc_handle: bytes | None = None  # the learner's buffer handle (transport ipc), kept for re-syncs
        # Syncs run on the driver's main thread, re-syncs of restarted workers on generation threads.
        self.lock = threading.Lock()
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
        self.ipc_handle = handle
        exported = time.perf_counter() - start
        loaded = wait_named(self._rollout_refs("load_weights_ipc", manifest, handle), self.deadline_s, what)
        return exported, _seconds(loaded)

    def sync(self) -> dict[str, float]:
        """Push the learner's current weights to every rollout worker; bumps the policy version on success.

        A rollout worker that dies during the sync is waited for (Ray restarts it) and loaded from the
        buffer the learner just wrote (shm, ipc); the sync then succeeds and says so in `sync/recovered`.

        Metrics: sync/total_s is the driver's wall time; sync/export_s the learner's export (rank 0's,
        as timed in the learner) and sync/load_s the slowest engine's load (timed in the engine). With
        streaming they overlap, so export_s + load_s exceeds total_s by the overlap.
        """
        manifest = self.manifest(self.version + 1)
        start = time.perf_counter()
        recovered = 0
        with self.lock:
            try:
                exported, loaded = self._move(manifest)
            except WeightSyncError as error:
                if not (error.lost and (error.worker or "").startswith("rollout[")):
                    raise
                exported, loaded, recovered = 0.0, 0.0, self._recover(manifest, error)
            self.version = manifest.version
        total = time.perf_counter() - start
        return {"sync/export_s": exported, "sync/load_s": loaded, "sync/total_s": total,
                "sync/bytes": float(manifest.total_bytes), "policy_version": float(self.version),
                "sync/recovered": float(recovered)}

    def _recover(self, manifest: WeightManifest, error: WeightSyncError) -> int:
        """After a receiver died mid-sync: wait for the learner's export to finish, then load every
        worker that does not hold `manifest.version` (restarted ones) from the buffer. Returns how many."""
        if self.transport == "broadcast":
            raise WeightSyncError(f"{error} (a restarted receiver cannot rejoin a broadcast group yet; "
                                  "use sync.transport=shm or ipc)", error.worker) from error
        ray.get(self.learners.actors[0].address.remote(), timeout=self.deadline_s)  # queued behind the export
        stale = []
        for i in range(len(self.rollouts.actors)):
            self.rollouts.wait_alive(i)
            if ray.get(self.rollouts.actors[i].policy_version.remote(), timeout=self.deadline_s) != manifest.version:
                stale.append(i)
        for i in stale:
            self._load_from_buffer(i, manifest)
        print(f"weight sync v{manifest.version}: {error.worker} died during the sync; reloaded {len(stale)} restarted worker(s)")
        return len(stale)

    def _load_from_buffer(self, index: int, manifest: WeightManifest) -> None:
        """Load the weights the learner last exported into rollout[index] without the learner (which may be
        training): shm and ipc keep a whole weight set in a buffer until the next sync."""
        actor = self.rollouts.actors[index]
        if self.transport == "shm":
            ref = actor.load_weights_shm.remote(manifest, self.bucket_bytes, self.timeout_s)
        elif self.transport == "ipc" and self.ipc_handle is not None:
            ref = actor.load_weights_ipc.remote(manifest, self.ipc_handle)
        else:
            raise WeightSyncError(f"rollout[{index}] restarted: its weights cannot be restored with "
                                  f"sync.transport={self.transport}; use shm or ipc", f"rollout[{index}]")
        wait_named([(f"rollout[{index}]", ref)], self.deadline_s, f"re-sync of restarted rollout[{index}]")

    def resync(self, index: int) -> None:
        """Put the current policy version into rollout[index] (restarted with the base model's weights)."""
        with self.lock:
            if self.version == 0:  # nothing exported yet: the base model is the current policy
                return
            self._load_from_buffer(index, self.manifest(self.version))

    def close(self) -> None:
        if os.path.exists(self.location):
            os.remove(self.location)
