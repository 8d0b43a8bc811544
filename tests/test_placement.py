"""Placement on a fake multi-node Ray cluster (Ray's own multi-raylet test cluster, with custom
resources and fake GPUs): rollout and learner land where the config says, and impossible requests
fail fast naming what is missing."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

from cluster.config import load_config
from cluster.infra.placement_group import PlacementError, check_resources, required_resources

ROOT = Path(__file__).resolve().parent.parent
GPU_SPLIT = ["cluster.device=gpu", "rollout.num_workers=2", "rollout.resources={rollout_node: 1}",
             "learner.num_ranks=2", "learner.resources={learner_node: 1}", "reward.num_workers=1",
             "cluster.placement_timeout_s=20"]


def probe() -> None:
    """Run in a subprocess: two fake nodes, place the groups, report where each probe actor ran."""
    import ray
    from ray.cluster_utils import Cluster

    from cluster.infra.placement_group import place

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 4, "num_gpus": 2, "resources": {"rollout_node": 4}})
    learner_node = cluster.add_node(num_cpus=4, num_gpus=2, resources={"learner_node": 4})
    ray.init(address=cluster.address)

    @ray.remote
    class Probe:
        def where(self) -> tuple[str, list]:
            return ray.get_runtime_context().get_node_id(), [str(g) for g in ray.get_gpu_ids()]

    placement = place(load_config(str(ROOT / "configs/tiny.yaml"), GPU_SPLIT))
    out = {"head": cluster.head_node.node_id, "learner_node": learner_node.node_id, "describe": placement.describe()}
    for role, count in (("rollout", 2), ("learner", 2), ("reward", 1)):
        actors = [Probe.options(**placement.options(role, i)).remote() for i in range(count)]
        out[role] = ray.get([a.where.remote() for a in actors], timeout=60)
    try:
        place(load_config(str(ROOT / "configs/tiny.yaml"), GPU_SPLIT + ["learner.num_ranks=8"]))
    except PlacementError as err:
        out["error"] = str(err)
    print("PROBE " + json.dumps(out))
    ray.shutdown()
    cluster.shutdown()


def test_roles_land_on_the_nodes_the_config_names():
    proc = subprocess.run([sys.executable, "-c", "from tests.test_placement import probe; probe()"], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    line = next((l for l in proc.stdout.splitlines() if l.startswith("PROBE ")), None)
    assert line, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = json.loads(line[len("PROBE "):])
    assert all(node == out["head"] for node, _ in out["rollout"]), out
    assert all(node == out["learner_node"] for node, _ in out["learner"]), out
    gpus = [g for _, ids in out["rollout"] + out["learner"] for g in ids]
    assert len(gpus) == 4 and len(set((n, g) for n, ids in out["rollout"] + out["learner"] for g in ids)) == 4
    assert out["reward"][0][1] == []  # reward actors take no GPU
    assert "GPU: need 10, cluster has 4" in out["error"]
    assert "rollout[1]" in out["describe"] and "learner[0]" in out["describe"]


def test_required_resources_and_missing_message():
    cfg = load_config(str(ROOT / "configs/tiny.yaml"), GPU_SPLIT + ["rollout.tensor_parallel_size=2"])
    need = required_resources(cfg)
    # every GPU bundle of an engine carries the role's resources: 2 engines x 2 TP ranks
    assert need["GPU"] == 2 * 2 + 2 and need["rollout_node"] == 2 * 2 and need["learner_node"] == 2
    with pytest.raises(PlacementError, match="GPU: need 6, cluster has 4.*learner_node: need 2, cluster has 0"):
        check_resources(cfg, have={"CPU": 64, "GPU": 4, "rollout_node": 2})
    check_resources(cfg, have={"CPU": 64, "GPU": 8, "rollout_node": 4, "learner_node": 2})
