"""Driver side of the weight sync: pick a transport, build the manifest once, move weights each step."""
from __future__ import annotations

import os
import time
import uuid

import ray

from cluster.config import Config
from cluster.groups import LearnerGroup, RolloutGroup, _get
from protocol.weight_sync import DTYPES, WeightManifest, build_manifest


def choose_transport(cfg: Config) -> str:
    """auto: shared memory on a single CPU node, a broadcast group (NCCL) on GPUs."""
    if cfg.sync.transport != "auto":
        return cfg.sync.transport
    return "shm" if cfg.cluster.device == "cpu" else "broadcast"


class WeightSync:
    def __init__(self, cfg: Config, learners: LearnerGroup, rollouts: RolloutGroup) -> None:
        self.cfg, self.learners, self.rollouts = cfg, learners, rollouts
        self.transport = choose_transport(cfg)
        self.bucket_bytes = int(cfg.sync.bucket_mb * 2**20)
        self.timeout_s = cfg.sync.timeout_s
        self.layout = learners.call("weight_layout")[0]
        self.location = f"/dev/shm/reasonrl-{os.getpid()}-{uuid.uuid4().hex[:8]}.weights"
        self.version = 0
        probe = self.manifest(0)
        _get([a.check_weight_names.remote(probe) for a in rollouts.actors], self.timeout_s, "weight name check")
        if self.transport == "broadcast":
            self._open_groups()

    def manifest(self, version: int) -> WeightManifest:
        return build_manifest(self.layout, DTYPES[self.cfg.model.dtype], version, self.transport, self.location)

    def _open_groups(self) -> None:
        host, port = ray.get(self.learners.actors[0].address.remote())
        tp = self.cfg.rollout.tensor_parallel_size
        world = 1 + len(self.rollouts.actors) * tp
        refs = [a.open_weight_group.remote(host, port, world, self.timeout_s) for a in self.learners.actors]
        refs += [a.open_weight_group.remote(host, port, 1 + i * tp, world, self.timeout_s)
                 for i, a in enumerate(self.rollouts.actors)]
        _get(refs, self.timeout_s, "opening the weight-sync group")

    def sync(self) -> dict[str, float]:
        """Push the learner's current weights to every rollout worker; bumps the policy version."""
        self.version += 1
        manifest = self.manifest(self.version)
        buckets = [[(m.name, m.dtype, m.shape, m.offset) for m in b] for b in manifest.buckets(self.bucket_bytes)]
        start = time.perf_counter()
        if self.transport == "shm":
            self.learners.call("export_to_shm", manifest.location, manifest.total_bytes, buckets)
            exported = time.perf_counter()
            refs = [a.load_weights_shm.remote(manifest) for a in self.rollouts.actors]
        else:
            exported = start
            refs = [a.export_broadcast.remote(buckets) for a in self.learners.actors]
            refs += [a.load_weights_broadcast.remote(manifest, self.bucket_bytes) for a in self.rollouts.actors]
        _get(refs, self.timeout_s, f"weight sync v{self.version} ({self.transport})")
        end = time.perf_counter()
        return {"sync/export_s": exported - start, "sync/load_s": end - exported, "sync/total_s": end - start,
                "sync/bytes": float(manifest.total_bytes), "policy_version": float(self.version)}

    def close(self) -> None:
        if os.path.exists(self.location):
            os.remove(self.location)
