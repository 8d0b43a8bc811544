"""Where actors run: connecting to Ray, checking resources, and placing the three actor groups.

CPU mode puts every actor on the local node with fractional CPU shares. GPU mode reserves one
placement group: a bundle per rollout engine ({GPU: tensor_parallel_size}) and one per learner rank
({GPU: 1}), so rollout and learner never share a GPU (disaggregated), and fails fast, naming
what is missing, when the cluster cannot hold it.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ray
from ray.util.placement_group import PlacementGroup, placement_group
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from cluster.config import Config

REPO_ROOT = str(Path(__file__).resolve().parent.parent)


class PlacementError(RuntimeError):
    pass


def connect(cfg: Config) -> str:
    """Attach to cluster.address or RAY_ADDRESS when given, else start a private local Ray."""
    if ray.is_initialized():
        return "existing"
    env = {"env_vars": {"PYTHONPATH": os.pathsep.join(filter(None, [REPO_ROOT, os.environ.get("PYTHONPATH")])),
                        **quiet_env()}}
    address = cfg.cluster.address or os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, runtime_env=None if os.environ.get("RAY_JOB_ID") else env, log_to_driver=True)
        return address
    need = required_resources(cfg)["CPU"]
    ray.init(address="local", num_cpus=max(int(need + 0.999), os.cpu_count() or 1), include_dashboard=False,
             runtime_env=env, log_to_driver=True)
    return "local"


def quiet_env() -> dict[str, str]:
    """Actor environment that keeps the driver's progress readable; any variable the user set wins."""
    defaults = {"TOKENIZERS_PARALLELISM": "false", "VLLM_LOGGING_LEVEL": "WARNING", "TRANSFORMERS_VERBOSITY": "error",
                "HF_HUB_DISABLE_PROGRESS_BARS": "1", "PYTHONWARNINGS": "ignore::FutureWarning,ignore::DeprecationWarning"}
    return {k: os.environ.get(k, v) for k, v in defaults.items()}


def required_resources(cfg: Config) -> dict[str, float]:
    r, l = cfg.rollout, cfg.learner
    need = {"CPU": r.num_workers * r.cpus_per_worker + l.num_ranks * l.cpus_per_rank + cfg.reward.num_workers * 0.25}
    if cfg.cluster.device == "gpu":
        need["GPU"] = r.num_workers * r.tensor_parallel_size + l.num_ranks
    return need


def check_resources(cfg: Config) -> None:
    have = ray.cluster_resources()
    missing = {k: (v, have.get(k, 0.0)) for k, v in required_resources(cfg).items() if have.get(k, 0.0) < v}
    if missing:
        text = ", ".join(f"{k}: need {need:g}, cluster has {got:g}" for k, (need, got) in missing.items())
        raise PlacementError(f"the cluster cannot hold this run ({text}); lower rollout.num_workers, "
                             f"learner.num_ranks or rollout.tensor_parallel_size, or add nodes")


@dataclass
class Placement:
    group: PlacementGroup | None
    rollout_bundles: list[int]
    learner_bundles: list[int]

    def options(self, role: str, index: int, cpus: float) -> dict[str, Any]:
        if self.group is None:
            return {"num_cpus": cpus}
        bundle = (self.rollout_bundles if role == "rollout" else self.learner_bundles)[index]
        gpus = self.group.bundle_specs[bundle].get("GPU", 0)
        strategy = PlacementGroupSchedulingStrategy(self.group, placement_group_bundle_index=bundle)
        return {"num_cpus": cpus, "num_gpus": gpus, "scheduling_strategy": strategy}

    def describe(self) -> str:
        if self.group is None:
            return "CPU mode: all actors on the local node"
        table = ray.util.placement_group_table(self.group)
        nodes = table.get("bundles_to_node_id", {})
        rows = [f"rollout[{i}] -> bundle {b} node {str(nodes.get(b, '?'))[:8]}" for i, b in enumerate(self.rollout_bundles)]
        rows += [f"learner[{i}] -> bundle {b} node {str(nodes.get(b, '?'))[:8]}" for i, b in enumerate(self.learner_bundles)]
        return "\n".join(rows)


def place(cfg: Config, timeout_s: float = 60.0) -> Placement:
    check_resources(cfg)
    if cfg.cluster.device == "cpu":
        return Placement(None, list(range(cfg.rollout.num_workers)), list(range(cfg.learner.num_ranks)))
    r, l = cfg.rollout, cfg.learner
    bundles = [{"GPU": float(r.tensor_parallel_size), "CPU": r.cpus_per_worker} for _ in range(r.num_workers)]
    bundles += [{"GPU": 1.0, "CPU": l.cpus_per_rank} for _ in range(l.num_ranks)]
    group = placement_group(bundles, strategy="PACK")
    if not group.wait(timeout_seconds=timeout_s):
        ray.util.remove_placement_group(group)
        raise PlacementError(f"could not reserve {bundles} within {timeout_s:.0f}s; free: {ray.available_resources()}")
    return Placement(group, list(range(r.num_workers)), list(range(r.num_workers, r.num_workers + l.num_ranks)))
