"""Where actors run: connecting to Ray, checking resources, and placing the actor groups in one Ray placement
group (`python -m cluster.placement` prints the plan).

One placement group holds every actor's bundle (`plan`: one {GPU: 1} bundle per GPU, never more,
because vLLM's Ray executor refuses a bundle of several GPUs): rollout engines, learner ranks, reward
actors (CPU) and, with algorithm.advantage=gae, critic ranks, each plus the role's custom Ray resources
from the config (e.g. {"rollout_node": 1} to pin a role to tagged nodes). Disaggregated (default),
engines, learner and critic ranks own separate GPUs; with cluster.colocate each learner rank's GPU
bundle also holds one engine worker (critic ranks keep their own GPUs). The driver fails fast, naming
what is missing, when the cluster cannot hold the group, and prints the placement it got.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ray
from ray.util.placement_group import PlacementGroup, placement_group, remove_placement_group
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from cluster.infra import lifeline
from cluster.handles.actor_group import actor_name
from cluster.config import Config

REPO_ROOT = str(Path(__file__).resolve().parents[2])
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

    Every worker of the run gets the driver's lifeline (cluster/infra/lifeline.py: it exits when this
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
    need = required_resources(cfg).get("CPU", 0.0)
    # A private Ray's own processes (gcs, raylet, per-node agents) inherit the driver's environment:
    # named as this driver's too, the next driver's sweep removes any that outlive it.
    os.environ.update(guard["env_vars"])
    started = ray.init(address="local", num_cpus=max(int(need + 0.999), os.cpu_count() or 1),
                       include_dashboard=False, runtime_env=env, log_to_driver=True)
    lifeline.mark_session(started.address_info["session_dir"])
    return "local"


# GPU shares of a colocated bundle: the engine worker and the learner rank each take half in Ray's
# accounting (what they really use is the engine's gpu_memory_utilization and the learner's rest).
COLOCATED_ENGINE_SHARE = 0.5
COLOCATED_LEARNER_SHARE = 0.5


@dataclass(frozen=True)
class Slot:
    """Where one actor runs: its bundle and what it takes of it. A GPU engine with TP > 1 holds no GPU
    itself: vLLM's Ray executor puts TP rank i into bundle `engine_bundles[i]`, taking `gpus_per_rank`."""

    bundle: int
    num_cpus: float
    num_gpus: float
    engine_bundles: tuple[int, ...] = ()
    gpus_per_rank: float = 1.0


@dataclass
class Plan:
    """Every bundle of the run's placement group and every actor's slot in it, computed from the config
    alone (no Ray): what `place` reserves, and what `python -m cluster.placement` prints."""

    bundles: list[dict[str, float]]
    slots: dict[str, list[Slot]]

    def describe(self, nodes: dict[int, str] | None = None) -> str:
        rows = []
        for role, slots in self.slots.items():
            for i, slot in enumerate(slots):
                where = [slot.bundle] if not slot.engine_bundles else list(slot.engine_bundles)
                share = (f"GPU {slot.num_gpus:g}" if not slot.engine_bundles else
                         f"TP ranks {slot.gpus_per_rank:g} GPU each in bundles {list(slot.engine_bundles)}")
                node = f" on node {nodes.get(where[0], '?')}" if nodes is not None else ""
                rows.append(f"  {actor_name(role, i)} bundle {slot.bundle} {self.bundles[slot.bundle]}: CPU {slot.num_cpus:g}, "
                            f"{share}{node}")
        shared = [b for b in range(len(self.bundles)) if self._gpu_users(b) > 1]
        if shared:
            rows.append(f"  colocated: bundles {shared} each hold one engine worker and one learner rank")
        return "placement:\n" + "\n".join(rows)

    def _gpu_users(self, bundle: int) -> int:
        return sum(1 for slots in self.slots.values() for s in slots
                   if (s.bundle == bundle and s.num_gpus > 0) or bundle in s.engine_bundles)


def _merged(*resources: dict[str, float]) -> dict[str, float]:
    out: dict[str, float] = {}
    for res in resources:
        for key, value in res.items():
            out[key] = out.get(key, 0.0) + value
    return out


def plan(cfg: Config) -> Plan:
    """Bundles and slots for the config. Layouts:

    - CPU: a bundle per engine ({CPU}; TP ranks are the engine's own processes), per learner rank, per
      reward actor.
    - GPU, disaggregated: an engine with TP = 1 holds {CPU, GPU: 1}; with TP > 1 it gets one {GPU: 1}
      bundle per rank (the first also holds its CPUs) and vLLM's Ray executor places the ranks there
      (vLLM refuses a bundle of more than one GPU). Each learner rank: {CPU, GPU: 1}.
    - GPU, colocated: one {GPU: 1} bundle per learner rank; learner rank g takes half of bundle g and
      engine worker g (engine g // tp, TP rank g % tp) the other half.
    - Critic ranks (algorithm.advantage=gae): {CPU, GPU: 1} each, never shared.
    Each bundle also carries the custom resources of every role placed in it (`<role>.resources`).
    """
    r, l, c, w = cfg.rollout, cfg.learner, cfg.critic, cfg.reward
    gpu, tp = cfg.cluster.device == "gpu", r.tensor_parallel_size
    bundles: list[dict[str, float]] = []
    slots: dict[str, list[Slot]] = {role: [] for role in ROLES}

    def add(bundle: dict[str, float]) -> int:
        bundles.append({k: v for k, v in bundle.items() if v})
        return len(bundles) - 1

    if gpu and cfg.cluster.colocate:
        for g in range(l.num_ranks):
            first_rank = g % tp == 0
            index = add(_merged({"CPU": l.cpus_per_rank + (r.cpus_per_worker if first_rank else 0.0), "GPU": 1.0},
                                l.resources, r.resources))
            slots["learner"].append(Slot(index, l.cpus_per_rank, COLOCATED_LEARNER_SHARE))
            if first_rank:
                engine = tuple(range(index, index + tp)) if tp > 1 else ()
                slots["rollout"].append(Slot(index, r.cpus_per_worker, 0.0 if tp > 1 else COLOCATED_ENGINE_SHARE,
                                             engine, COLOCATED_ENGINE_SHARE))
    else:
        for _ in range(r.num_workers):
            if gpu and tp > 1:
                first = add(_merged({"CPU": r.cpus_per_worker, "GPU": 1.0}, r.resources))
                for _ in range(tp - 1):
                    add(_merged({"GPU": 1.0}, r.resources))
                slots["rollout"].append(Slot(first, r.cpus_per_worker, 0.0, tuple(range(first, first + tp)), 1.0))
            else:
                index = add(_merged({"CPU": r.cpus_per_worker, "GPU": 1.0 if gpu else 0.0}, r.resources))
                slots["rollout"].append(Slot(index, r.cpus_per_worker, 1.0 if gpu else 0.0))
        for _ in range(l.num_ranks):
            index = add(_merged({"CPU": l.cpus_per_rank, "GPU": 1.0 if gpu else 0.0}, l.resources))
            slots["learner"].append(Slot(index, l.cpus_per_rank, 1.0 if gpu else 0.0))
    if cfg.algorithm.advantage == "gae":  # only PPO with a value model has a critic
        for _ in range(c.num_ranks):
            index = add(_merged({"CPU": c.cpus_per_rank, "GPU": 1.0 if gpu else 0.0}, c.resources))
            slots["critic"].append(Slot(index, c.cpus_per_rank, 1.0 if gpu else 0.0))
    for _ in range(w.num_workers):
        slots["reward"].append(Slot(add(_merged({"CPU": w.cpus_per_worker}, w.resources)), w.cpus_per_worker, 0.0))
    return Plan(bundles, slots)


def required_resources(cfg: Config) -> dict[str, float]:
    return _merged(*plan(cfg).bundles)


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
    plan: Plan

    @property
    def bundles(self) -> list[dict[str, float]]:
        return self.plan.bundles

    def options(self, role: str, index: int) -> dict[str, Any]:
        """Ray actor options that put actor `index` of `role` into its reserved bundle."""
        slot = self.plan.slots[role][index]
        strategy = PlacementGroupSchedulingStrategy(self.group, placement_group_bundle_index=slot.bundle)
        return {"num_cpus": slot.num_cpus, "num_gpus": slot.num_gpus, "scheduling_strategy": strategy}

    def engine_ranks(self, index: int) -> tuple[tuple[int, ...], float]:
        """(bundle of each TP rank, GPU share per rank) of rollout engine `index`; () when the engine's
        actor holds its device itself (CPU, or TP = 1)."""
        slot = self.plan.slots["rollout"][index]
        return slot.engine_bundles, slot.gpus_per_rank

    def nodes(self) -> dict[int, str]:
        """bundle index -> node IP."""
        by_bundle = ray.util.placement_group_table(self.group).get("bundles_to_node_id", {})
        ips = {n["NodeID"]: n["NodeManagerAddress"] for n in ray.nodes()}
        return {int(i): ips.get(node, "?") for i, node in by_bundle.items()}

    def describe(self) -> str:
        nodes = self.nodes()
        text = self.plan.describe(nodes)
        for i, slot in enumerate(self.plan.slots["rollout"]):
            if len({nodes.get(b) for b in slot.engine_bundles}) > 1:
                text += (f"\n  warning: {actor_name('rollout', i)}'s TP ranks are on different nodes ({sorted({nodes.get(b, '?') for b in slot.engine_bundles})}): "
                         "tensor parallelism across nodes is slow; use cluster.placement_strategy=STRICT_PACK or fewer GPUs per engine")
        return text

    def release(self) -> None:
        remove_placement_group(self.group)


def place(cfg: Config) -> Placement:
    """Reserve every actor's bundle at once (gang scheduling), or fail naming what is missing."""
    check_resources(cfg)
    layout = plan(cfg)
    group = placement_group(layout.bundles, strategy=cfg.cluster.placement_strategy)
    if not group.wait(timeout_seconds=cfg.cluster.placement_timeout_s):
        remove_placement_group(group)
        raise PlacementError(f"could not reserve {len(layout.bundles)} bundles {layout.bundles} with strategy "
                             f"{cfg.cluster.placement_strategy} within {cfg.cluster.placement_timeout_s:.0f}s; "
                             f"free now: {ray.available_resources()}")
    return Placement(group, layout)
