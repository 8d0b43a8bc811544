"""Driver side of the weight sync: pick a transport, open it on both sides, move the weights after each step.

Choosing a transport (`sync.transport`; one module per transport in protocol/transports/):
- ``auto``: ``ipc`` with cluster.colocate, ``shm`` on a CPU cluster (one node), ``nccl`` on GPUs.
- ``shm``: learner rank 0 and every engine on one node (they share /dev/shm). Streamed: the export and
  the loads start together; each bucket is stamped with the version once written and engines load it
  meanwhile (protocol/shm_stream.py). x86-64 hosts only (store ordering).
- ``nccl`` / ``nccl_sparse``: disaggregated GPUs, through vLLM's own weight-transfer engines (dense; or only
  the entries changed since the last send). The default for GPUs.
- ``broadcast``: disaggregated placements, our own group: GPUs use NCCL, CPU gloo.
- ``ipc``: cluster.colocate only (each engine worker on a learner rank's GPU); no bytes cross a link:
  each engine worker reads its GPU's learner buffer in place. Costs one extra weight copy per GPU.

The driver schedules every transport from the facts it declares (protocol/transports/base.py): whether
its loads stream beside the export, whether export and loads are one collective, whether an engine that
restarts can reload the last export without the learner.

Deadlines: every part is bounded by `sync.timeout_s`, counted from when that part can start. An engine
runs its calls in order, so its load queues behind generation already submitted to it
(train.max_staleness > 0); its deadline starts when the engine reaches the load (a marker call
submitted just before the load returns then). Until then the wait follows generation's own progress
rule: the engine must finish a prompt at least every `rollout.timeout_s`. With train.partial_rollouts
the load does not queue: it is called on the engine's "sync" thread (rollout_group.SYNC_THREAD) and the
generation in progress takes it between two engine steps (RolloutWorker.load_weights_in_flight), so
its deadline starts at once. A collective transport starts the learner's export only once every engine
is at its load. A worker that fails, or is still running at its deadline, is named in a WeightSyncError. A failed sync may leave a receiver half-loaded.

A restarted engine (Ray restarts a dead rollout worker with the base model's weights) is taken back on every
transport. Transports that keep the last export (shm, ipc) reload it from there. Group transports (broadcast,
nccl, nccl_sparse) cannot: the dead instance was a member of their group. Between syncs (`resync`), a
group of two (learner rank 0 and the restarted engine's workers) carries the learner's weights to it and
closes; the full group is rebuilt with every current member before the next sync. During a sync, the
driver lets every part of the broken collective end (bounded by the deadlines), rebuilds the group and
moves the same version again (every member reloads it).

Colocated engines sleep while the learner trains (RolloutGroup.sleep); a load wakes the engine's
weights, loads, then wakes its KV cache, so an engine never generates with the weights it slept with.
"""
from __future__ import annotations

import threading
import time
import uuid
from dataclasses import dataclass, replace
from typing import Any

import ray

from cluster.handles import actor_group
from cluster.handles.actor_group import ActorFailure, Named
from cluster.config import Config, chosen_transport
from cluster.handles.groups import LearnerGroup
from cluster.handles.rollout_group import RolloutGroup
from protocol import transports
from protocol.weight_sync import DTYPES, WeightManifest, build_manifest
from rollout.worker import EngineRestarted


class WeightSyncError(ActorFailure):
    """A part of a weight sync failed; `worker` and `lost` as in ActorFailure."""




def wait_named(named: list[Named], timeout_s: float, what: str) -> list[Any]:
    """actor_group.wait_named raising WeightSyncError: every failure of a worker's part names the worker."""
    return actor_group.wait_named(named, timeout_s, what, error=WeightSyncError)


@dataclass(eq=False)
class Part:
    """One actor's call in a sync. An engine's call waits behind `marker` (its queue) before its
    deadline starts; `started` is when it could start running."""

    name: str
    ref: ray.ObjectRef
    marker: ray.ObjectRef | None = None
    index: int = -1  # rollout index (for the progress rule)
    submitted: float = 0.0
    started: float | None = None


class WeightSync:
    def __init__(self, cfg: Config, learners: LearnerGroup, rollouts: RolloutGroup) -> None:
        self.cfg, self.learners, self.rollouts = cfg, learners, rollouts
        self.transport = chosen_transport(cfg)
        self.kind = transports.get(self.transport)
        self.key = uuid.uuid4().hex[:8]  # this sync's transport on the actors (tests run several side by side)
        self.bucket_bytes = int(cfg.sync.bucket_mb * 2**20)
        self.timeout_s = cfg.sync.timeout_s
        # The driver waits a little longer than the collectives, so a worker's own timeout error
        # (which names the missing peer) arrives before the driver's generic one.
        self.deadline_s = self.timeout_s * 1.25 + 2.0
        self.layout = learners.weight_layout()
        self._manifest = build_manifest(self.layout, DTYPES[cfg.model.dtype], 0, self.transport,
                                        self.kind.scratch_location())
        self.setup = transports.SyncSetup(buckets=self._manifest.bucket_rows(self.bucket_bytes),
                                          total_bytes=self._manifest.total_bytes, timeout_s=self.timeout_s,
                                          device=cfg.cluster.device, location=self._manifest.location)
        self.version = 0
        self.partial = cfg.train.partial_rollouts  # loads land between engine steps (no wait for the drain)
        self.payload: Any = None  # what the last export handed the engines (ipc: handles), kept for re-syncs
        self._exporting: list[Part] = []  # the learner ranks' parts of the sync in flight
        self._in_flight: list[Part] = []  # every part of the move in flight (waited for before a group is rebuilt)
        # A group transport that keeps no export (broadcast, nccl) takes a restarted engine back by rebuilding
        # its group with every current member before the next sync (`rebuild`).
        self.rejoins_by_rebuild = self.kind.needs_rendezvous and not self.kind.keeps_last_export
        self.members_changed = False  # a member restarted since the group was opened: rebuild before the next sync
        self.synced_steps = 0  # learner optimizer steps of the weights of the last sync (see _readmit)
        # Syncs run on the driver's main thread, re-syncs of restarted workers on generation threads.
        self.lock = threading.Lock()
        self.check(self.manifest(0))
        self.kind.driver_open(self.setup)
        self.open()

    @property
    def location(self) -> str:
        return self.setup.location

    def manifest(self, version: int) -> WeightManifest:
        """The layout never changes between syncs: built once, only the version is replaced."""
        return replace(self._manifest, version=version)

    def _group_setup(self, indices: list[int]) -> transports.SyncSetup:
        """The setup of a rendezvous group of learner rank 0 and the engine workers of rollout[i] for i in
        `indices`, in that order (rank 1.. ), at a fresh address of learner rank 0."""
        host, port = self.learners.rendezvous_address(self.deadline_s)
        tp = self.rollouts.cfg.tensor_parallel_size
        names = [self.learners.actor_name(0)] + [self.rollouts.actor_name(i) + (f" tp rank {j}" if tp > 1 else "")
                                                 for i in indices for j in range(tp)]
        return replace(self.setup, host=host, port=port, world_size=len(names), rank_names=names)

    def _rank_offset(self, index: int) -> int:
        return 1 + index * self.rollouts.cfg.tensor_parallel_size  # the group's own engines

    def check(self, manifest: WeightManifest) -> None:
        """Every engine validates names and shapes before the first load (a failed load breaks it)."""
        wait_named(self.rollouts.submit_check_weight_names(manifest), self.deadline_s, "weight name/shape check")

    def open(self) -> None:
        """Open the transport on every learner rank and engine; a rendezvous transport forms its group now
        (learner rank 0 plus every engine worker; one that does not join is named)."""
        if self.kind.needs_rendezvous:
            self.setup = self._group_setup(list(range(self.rollouts.size)))
        setup = self.setup.as_dict()
        refs = self.learners.submit_open_weight_transport(self.key, self.transport, setup)
        refs += [self.rollouts.submit_open_weight_transport(i, self.key, self.transport, setup, self._rank_offset(i))
                 for i in range(self.rollouts.size)]
        wait_named(refs, self.deadline_s, f"opening the weight transport ({self.transport})")

    # ---- one sync ------------------------------------------------------------------------------
    def _markers(self, indices: list[int]) -> list[Part]:
        """A cheap call per engine, queued behind whatever it runs now: it returns when the engine
        reaches the load submitted right after it. Partial rollouts: no queue to wait for (the load runs
        on the engine's "sync" thread, and the generation in progress takes it between two steps)."""
        now, parts = time.monotonic(), []
        for i in indices:
            if self.partial:
                parts.append(Part(self.rollouts.actor_name(i), None, index=i, submitted=now, started=now))  # type: ignore[arg-type]
                continue
            ref = self.rollouts.submit_policy_version(i)
            parts.append(Part(self.rollouts.actor_name(i), ref, marker=ref, index=i, submitted=now))
        return parts

    def _loads(self, markers: list[Part], version: int, payload: Any, key: str) -> list[Part]:
        load = self.rollouts.submit_load_weights_in_flight if self.partial else self.rollouts.submit_load_weights
        return [replace(m, ref=load(m.index, key, version, payload), started=m.started if self.partial else None)
                for m in markers]

    def _export(self, version: int, key: str) -> list[Part]:
        now = time.monotonic()
        return [Part(name, ref, submitted=now, started=now) for name, ref in self.learners.submit_export_weights(key, version)]

    def _move(self, version: int, key: str | None = None, indices: list[int] | None = None) -> tuple[float, float]:
        """Run the transport; returns (export seconds, load seconds), each measured where it ran.

        Streaming transports: the learner's export and the engines' loads run together (engines load
        bucket i while the learner writes bucket i+1); a collective one first waits for every engine to
        reach its load. Otherwise (ipc): export, then the loads with what the export returned.
        """
        key = key or self.key
        what = f"weight sync v{version} ({self.transport})"
        markers = self._markers(list(range(self.rollouts.size)) if indices is None else indices)
        self._in_flight = list(markers)
        if self.kind.collective and not self.partial:
            self._wait(markers, what)  # every engine is at its load (whose deadline then starts at once)
        if self.kind.streams:
            self._exporting = self._export(version, key)
            loads = self._loads(markers, version, None, key)
            self._in_flight = self._exporting + loads
            results = self._wait(self._exporting + loads, what)
            exported, loaded = results[:len(self._exporting)], results[len(self._exporting):]
        else:
            self._exporting = self._in_flight = self._export(version, key)
            exported = self._wait(self._exporting, what)
            self.payload = self.kind.merge_payloads([payload for _, payload in exported])
            self._in_flight = self._loads(markers, version, self.payload, key)
            loaded = self._wait(self._in_flight, what)
        return max(s for s, _ in exported), max(loaded, default=0.0)

    def _wait(self, parts: list[Part], what: str) -> list[Any]:
        """Every part's result, in order. A part's deadline (deadline_s) runs from `started`; an engine's
        part waits for its marker first, bounded by the progress rule (see the module docstring)."""
        progress_s = self.cfg.rollout.timeout_s
        results: dict[int, Any] = {}
        pending = {id(p): p for p in parts}
        while pending:
            now = time.monotonic()
            waiting = [p for p in pending.values() if p.started is None]
            for p in waiting:  # queued behind generation
                if p.marker is None:
                    p.started = now
                elif now - max(p.submitted, self.rollouts.progress[p.index]) > progress_s:
                    raise WeightSyncError(f"{what}: {p.name} did not reach its load: the generation queued ahead of it "
                                          f"finished no prompt within rollout.timeout_s={progress_s:g}s", p.name)
            late = [p.name for p in pending.values() if p.started is not None and now > p.started + self.deadline_s]
            if late:
                raise WeightSyncError(f"{what}: {', '.join(late)} did not finish within {self.deadline_s:g}s")
            watch = {(p.marker if p.started is None else p.ref): p for p in pending.values()}
            ready, _ = ray.wait(list(watch), num_returns=1, timeout=1.0)
            for ref in ready:
                p = watch[ref]
                result = wait_named([(p.name, ref)], self.deadline_s, what)[0]  # ready: raises its error, named
                if p.started is None:  # the marker: the engine reached the call behind it
                    p.started = time.monotonic()
                else:
                    results[id(p)] = result
                    del pending[id(p)]
        return [results[id(p)] for p in parts]

    def sync(self) -> dict[str, float]:
        """Push the learner's current weights to every rollout worker; bumps the policy version on success.

        A rollout worker that dies during the sync, or died before it (Ray restarted it while idle), is
        waited for and loaded from the buffer the learner just wrote (transports that keep it: shm, ipc),
        or, with a group transport, the group is rebuilt and the version moved again; the sync then
        succeeds and says so in `sync/recovered` (`sync/group_rebuilt`: this sync opened a new group).

        Metrics: sync/total_s is the driver's wall time; sync/export_s the learner's export (the slowest
        rank, as timed in the learner) and sync/load_s the slowest engine's load (timed in the engine,
        wake-up included). With streaming they overlap, so export_s + load_s exceeds total_s by the overlap.
        """
        version = self.version + 1
        start = time.perf_counter()
        recovered = 0
        with self.lock:
            rebuilt = self.members_changed
            if rebuilt:
                self.rebuild()
            try:
                exported, loaded = self._move(version)
            except WeightSyncError as error:
                # Died during the sync, or before it (idle, restarted by Ray with no transport open).
                gone = error.lost or isinstance(error.__cause__, EngineRestarted)
                gone = gone and self.rollouts.is_member_name(error.worker)
                if self.rejoins_by_rebuild and (gone or self._member_restarted(error)):
                    exported, loaded, recovered = self._retry_in_new_group(version, error)
                    rebuilt = True
                elif gone:
                    exported, loaded, recovered = 0.0, 0.0, self._recover(version, error)
                else:
                    raise
            self.version = version
            if self.rejoins_by_rebuild:
                self.synced_steps = self.learners.last_export_steps(self.deadline_s)
        total = time.perf_counter() - start
        return {"sync/export_s": exported, "sync/load_s": loaded, "sync/total_s": total,
                "sync/bytes": float(self._manifest.total_bytes), "policy_version": float(self.version),
                "sync/recovered": float(recovered), "sync/group_rebuilt": float(rebuilt)}

    def _recover(self, version: int, error: WeightSyncError) -> int:
        """After a receiver died mid-sync: let the learner's export finish, then load every worker that does
        not hold `version` (restarted ones) from the kept buffer. Returns how many."""
        if not self.kind.keeps_last_export:
            raise WeightSyncError(f"{error} (a restarted receiver cannot rejoin a {self.transport} group; "
                                  f"use a transport that keeps the last export, e.g. shm or ipc)", error.worker) from error
        exported = wait_named([(p.name, p.ref) for p in self._exporting], self.deadline_s, f"weight sync v{version} export")
        self.payload = self.kind.merge_payloads([payload for _, payload in exported])
        stale = []
        for i in range(self.rollouts.size):
            self.rollouts.wait_alive(i)
            if self.rollouts.policy_version(i, self.deadline_s) != version:
                stale.append(i)
        for i in stale:
            self._load_from_buffer(i, version)
        print(f"weight sync v{version}: {error.worker} died before or during the sync ({error}); reloaded "
              f"{len(stale)} restarted worker(s)")
        return len(stale)

    def _load_from_buffer(self, index: int, version: int) -> None:
        """Load the weights the learner last exported into rollout[index] (restarted: a fresh engine) without
        the learner, which may be training: open the transport on it, then load."""
        name = self.rollouts.actor_name(index)
        if not self.kind.keeps_last_export:
            raise WeightSyncError(f"{name} restarted: its weights cannot be restored with sync.transport={self.transport} "
                                  "(nothing is kept to reload from); use shm or ipc", name)
        refs = [self.rollouts.submit_open_weight_transport(index, self.key, self.transport, self.setup.as_dict(),
                                                           self._rank_offset(index)),
                (name, self.rollouts.submit_load_weights(index, self.key, version, self.payload))]
        wait_named(refs, self.deadline_s, f"re-sync of restarted {name}")

    def resync(self, index: int) -> None:
        """Put the current policy version into rollout[index] (restarted with the base model's weights)."""
        with self.lock:
            if self.rejoins_by_rebuild:
                self.members_changed = True  # its old instance was a member: the group is broken for every sync
            if self.version == 0:  # nothing exported yet: the base model is the current policy
                wait_named([self.rollouts.submit_adopt_base_weights(index)], self.deadline_s,
                           f"re-sync of restarted {self.rollouts.actor_name(index)}")
                return
            if self.rejoins_by_rebuild:
                self._readmit(index)
            else:
                self._load_from_buffer(index, self.version)

    # ---- group transports: taking a restarted engine back ------------------------------------------
    def _settle(self, error: WeightSyncError) -> None:
        """Wait (bounded) until every part of the failed move has ended. A part still running is stuck in the
        broken collective: its actor would run nothing else (no close, no new group), so the sync stops and
        names it. gloo and torch's NCCL groups time out within sync.timeout_s; vLLM's NCCL communicator
        (nccl, nccl_sparse) has no timeout, so there a death inside the collective ends here."""
        refs = {p.ref: p.name for p in self._in_flight}
        _, stuck = ray.wait(list(refs), num_returns=len(refs), timeout=self.deadline_s)
        if stuck:
            names = ", ".join(sorted({refs[r] for r in stuck}))
            raise WeightSyncError(f"{error}; then {names} still inside the broken {self.transport} collective "
                                  f"{self.deadline_s:g}s later: the group cannot be rebuilt around them",
                                  error.worker) from error

    def rebuild(self) -> None:
        """Close the group on every actor (best effort: the dead member's old instance is gone), then open a
        new one, at a new address, with every current member (restarted ones waited for)."""
        self._wait_all_alive()
        refs = self.learners.submit_close_weight_transport(self.key) + self.rollouts.submit_close_weight_transport(self.key)
        ray.wait(refs, num_returns=len(refs), timeout=self.deadline_s)
        self.key = uuid.uuid4().hex[:8]
        self.open()
        self.members_changed = False
        print(f"weight sync ({self.transport}): group rebuilt with all {self.rollouts.size} rollout workers", flush=True)

    def _retry_in_new_group(self, version: int, error: WeightSyncError) -> tuple[float, float, int]:
        """A member died during the collective, or before it (restarted, not in the group): every member may
        be half-loaded. Let the old parts end, rebuild the group with every current member and move `version`
        again (the learner still holds it). Returns (export s, load s, restarted workers reloaded)."""
        self._settle(error)
        restarted = self._restarted()
        self.rebuild()
        exported, loaded = self._move(version)
        print(f"weight sync v{version}: the collective broke ({error.worker} failed first); moved the weights again "
              f"in a rebuilt group ({restarted} restarted worker(s) reloaded)", flush=True)
        return exported, loaded, restarted

    def _member_restarted(self, error: WeightSyncError) -> bool:
        """Whether a broken collective's cause is a rollout worker that died: the first error to arrive may be
        a peer's (the learner's `Connection closed by peer`), not the dead member's own."""
        self._settle(error)
        return self._restarted() > 0

    def _wait_all_alive(self) -> None:
        for i in range(self.rollouts.size):
            self.rollouts.wait_alive(i)

    def _restarted(self) -> int:
        """Rollout workers that Ray restarted and that loaded nothing since (restarting ones waited for)."""
        self._wait_all_alive()
        return sum(self.rollouts.awaiting_weights(self.deadline_s))

    def _readmit(self, index: int) -> None:
        """Load the current weights into restarted rollout[index] between syncs, without stopping the others:
        a group of two (learner rank 0 and its engine workers) carries the learner's weights, then closes; the
        full group is rebuilt before the next sync (`members_changed`). The learner may have trained since the
        last sync (train.max_staleness > 0): the engine is then labelled with the version that sync will give."""
        name, key = self.rollouts.actor_name(index), f"{self.key}-readmit-{index}"
        setup = self._group_setup([index]).as_dict()
        # The learner may be training (asynchronous rollouts): the group's deadlines start once it is idle.
        wait_named(self.learners.submit_last_export_steps(), self.cfg.rollout.timeout_s, f"re-admission of {name}")
        refs = self.learners.submit_open_weight_transport(key, self.transport, setup)
        refs.append(self.rollouts.submit_open_weight_transport(index, key, self.transport, setup, 1))
        try:
            wait_named(refs, self.deadline_s, f"re-admission group of restarted {name}")
            self._move(self.version, key, [index])
            steps = self.learners.last_export_steps(self.deadline_s)
            if steps != self.synced_steps:
                self.rollouts.set_policy_version(index, self.version + 1, self.deadline_s)
        finally:
            close = self.learners.submit_close_weight_transport(key) + self.rollouts.submit_close_weight_transport(key, [index])
            ray.wait(close, num_returns=len(close), timeout=self.deadline_s)
        print(f"{name} restarted: loaded the learner's weights through a group of its own; the sync group is "
              "rebuilt before the next sync", flush=True)

    def close(self) -> None:
        """Release the transport's buffers on every actor (best effort: some may be gone), then the driver's."""
        refs = self.learners.submit_close_weight_transport(self.key) + self.rollouts.submit_close_weight_transport(self.key)
        ray.wait(refs, num_returns=len(refs), timeout=10)
        self.kind.driver_close(self.setup)
