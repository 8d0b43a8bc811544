"""Where actors run: connecting to Ray, checking resources, and placing the actor groups.

One placement group holds a bundle per rollout engine ({GPU: tensor_parallel_size} on GPUs), per
learner rank ({GPU: 1}), per reward actor (CPU) and, with algorithm.advantage=gae, per critic rank
({GPU: 1}), each plus the role's custom Ray resources from the config (e.g. {"rollout_node": 1} to
pin a role to tagged nodes). Rollout, learner and critic never share a GPU (disaggregated). The
driver fails fast, naming what is missing, when the cluster cannot hold the group, and prints the
placement it got.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ray
from ray.util.placement_group import PlacementGroup, placement_group, remove_placement_group
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from cluster import lifeline
from cluster.config import Config

REPO_ROOT = str(Path(__file__).resolve().parent.parent)
ROLES = ("rollout", "learner", "reward", "critic")


class PlacementError(RuntimeError):
    pass


def quiet_env() -> dict[str, str]:
    """Actor environment that keeps the driver's progress readable; any variable the user set wins."""
    defaults = {"TOKENIZERS_PARALLELISM": "false", "VLLM_LOGGING_LEVEL": "WARNING", "TRANSFORMERS_VERBOSITY": "error",
                "HF_HUB_DISABLE_PROGRESS_BARS": "1", "PYTHONWARNINGS": "ignore::FutureWarning,ignore::DeprecationWarning"}
    return {k: os.environ.get(k, v) for k, v in defaults.items()}


def connect(cfg: Config) -> str:
    """Attach to cluster.address or RAY_ADDRESS when given, else start a private local Ray.

    Every worker of the run gets the driver's lifeline (cluster/lifeline.py: it exits when this
    process is gone); workers that dead drivers left on this node are killed first."""
    if ray.is_initialized():
        return "existing"
    if orphans := lifeline.sweep_orphans():
        print(f"killed {len(orphans)} process(es) left by dead ReasonRL drivers on this node: {orphans}")
    guard = {"env_vars": lifeline.runtime_env_vars(), "worker_process_setup_hook": lifeline.HOOK}
    env = {"env_vars": {"PYTHONPATH": os.pathsep.join(filter(None, [REPO_ROOT, os.environ.get("PYTHONPATH")])),
                        **quiet_env(), **guard["env_vars"]}, "worker_process_setup_hook": lifeline.HOOK}
    address = cfg.cluster.address or os.environ.get("RAY_ADDRESS")
    if address:  # under `ray job submit` the job's working_dir already ships the code (Ray merges the two)
        ray.init(address=address, runtime_env=guard if os.environ.get("RAY_JOB_ID") else env, log_to_driver=True)
        return address
    need = sum(b.get("CPU", 0.0) for role in ROLES for b in role_bundles(cfg, role))
    # A private Ray's own processes (gcs, raylet, per-node agents) inherit the driver's environment:
    # named as this driver's too, the next driver's sweep removes any that outlive it.
    os.environ.update(guard["env_vars"])
    ray.init(address="local", num_cpus=max(int(need + 0.999), os.cpu_count() or 1), include_dashboard=False,
             runtime_env=env, log_to_driver=True)
    return "local"


def role_bundles(cfg: Config, role: str) -> list[dict[str, float]]:
    """The resource bundle of every actor of one role, as the config asks for them."""
    gpu = cfg.cluster.device == "gpu"
    if role == "rollout":
        r = cfg.rollout
        one = {"CPU": r.cpus_per_worker, **({"GPU": float(r.tensor_parallel_size)} if gpu else {}), **r.resources}
        return [dict(one) for _ in range(r.num_workers)]
    if role == "learner":
        l = cfg.learner
        one = {"CPU": l.cpus_per_rank, **({"GPU": 1.0} if gpu else {}), **l.resources}
        return [dict(one) for _ in range(l.num_ranks)]
    if role == "critic":  # only PPO with a value model has one
        c = cfg.critic
        one = {"CPU": c.cpus_per_rank, **({"GPU": 1.0} if gpu else {}), **c.resources}
        return [dict(one) for _ in range(c.num_ranks)] if cfg.algorithm.advantage == "gae" else []
    w = cfg.reward
    return [{"CPU": w.cpus_per_worker, **w.resources} for _ in range(w.num_workers)]


def required_resources(cfg: Config) -> dict[str, float]:
    total: dict[str, float] = {}
    for role in ROLES:
        for bundle in role_bundles(cfg, role):
            for key, value in bundle.items():
                total[key] = total.get(key, 0.0) + value
    return total


def check_resources(cfg: Config, have: dict[str, float] | None = None) -> None:
    have = ray.cluster_resources() if have is None else have
    missing = {k: (v, have.get(k, 0.0)) for k, v in required_resources(cfg).items() if have.get(k, 0.0) + 1e-9 < v}
    if missing:
        text = ", ".join(f"{k}: need {need:g}, cluster has {got:g}" for k, (need, got) in sorted(missing.items()))
        raise PlacementError(f"the cluster cannot hold this run ({text}); lower rollout.num_workers, "
                             f"rollout.tensor_parallel_size, learner.num_ranks, critic.num_ranks or reward.num_workers, "
                             f"or add nodes")


@dataclass
class Placement:
    group: PlacementGroup
    indices: dict[str, list[int]]  # role -> bundle index of each actor
    bundles: list[dict[str, float]]

    def options(self, role: str, index: int) -> dict[str, Any]:
        """Ray actor options that put actor `index` of `role` into its reserved bundle."""
        bundle_index = self.indices[role][index]
        bundle = self.bundles[bundle_index]
        strategy = PlacementGroupSchedulingStrategy(self.group, placement_group_bundle_index=bundle_index)
        return {"num_cpus": bundle.get("CPU", 0.0), "num_gpus": bundle.get("GPU", 0.0), "scheduling_strategy": strategy}

    def nodes(self) -> dict[str, list[str]]:
        """role -> node IP of each actor's bundle."""
        by_bundle = ray.util.placement_group_table(self.group).get("bundles_to_node_id", {})
        ips = {n["NodeID"]: n["NodeManagerAddress"] for n in ray.nodes()}
        return {role: [ips.get(by_bundle.get(i, ""), "?") for i in idx] for role, idx in self.indices.items()}

    def describe(self) -> str:
        rows = []
        for role, ips in self.nodes().items():
            for i, ip in enumerate(ips):
                rows.append(f"  {role}[{i}] {self.bundles[self.indices[role][i]]} on node {ip}")
        return "placement:\n" + "\n".join(rows)

    def release(self) -> None:
        remove_placement_group(self.group)


def place(cfg: Config) -> Placement:
    """Reserve every actor's bundle at once (gang scheduling), or fail naming what is missing."""
    check_resources(cfg)
    bundles, indices = [], {}
    for role in ROLES:
        role_list = role_bundles(cfg, role)
        indices[role] = list(range(len(bundles), len(bundles) + len(role_list)))
        bundles += role_list
    group = placement_group(bundles, strategy=cfg.cluster.placement_strategy)
    if not group.wait(timeout_seconds=cfg.cluster.placement_timeout_s):
        remove_placement_group(group)
        raise PlacementError(f"could not reserve {len(bundles)} bundles {bundles} with strategy "
                             f"{cfg.cluster.placement_strategy} within {cfg.cluster.placement_timeout_s:.0f}s; "
                             f"free now: {ray.available_resources()}")
    return Placement(group, indices, bundles)
