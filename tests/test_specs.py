"""One source of truth for every config field that travels to an actor (pure Python, no Ray).

The actor specs (LearnerSpec, CriticSpec, EngineSpec, RewardSpec) are built by `cluster.loop.specs.spec_from`:
each field is the same-named field of one config section, or an explicitly derived value; the reward actor
takes its RewardSpec whole. These tests fail when a spec, the reward actor or a function
on the engine's path to vLLM grows a default of its own, when a spec field and a config field drift apart, or
when a config field of an actor's section reaches no actor at all.
"""
from __future__ import annotations

import dataclasses
import inspect
from pathlib import Path
from types import ModuleType

import pytest

from cluster.config import CodeRewardConfig, RewardConfig, RolloutConfig, load_config
from cluster.loop.specs import critic_spec, engine_spec, learner_spec, reward_spec, spec_from
from learner.critic import CriticSpec
from learner.worker import LearnerSpec
from reward.spec import RewardSpec
from reward.worker import RewardWorker
from rollout.spec import EngineSpec

ROOT = Path(__file__).resolve().parent.parent
# A config far from the defaults, so that a value taken from the wrong place shows.
OVERRIDES = ["learner.lr=3e-5", "learner.zero_stage=1", "learner.weight_decay=0.05", "learner.grad_clip=0.7",
             "learner.micro_batch_size=5", "learner.max_tokens_per_micro_batch=300",
             "learner.gradient_checkpointing=true", "learner.logprob_chunk_tokens=77",
             "critic.max_tokens_per_micro_batch=250", "algorithm.ppo_epochs=3", "algorithm.ppo_mini_batches=4",
             "algorithm.clip_low=0.1", "algorithm.clip_high=0.28", "algorithm.dual_clip=3.0",
             "algorithm.loss_agg=seq_mean_token_sum_norm", "algorithm.entropy_coef=0.002", "algorithm.kl_coef=0.03",
             "algorithm.kl_estimator=k2", "algorithm.kl_in_reward=true", "algorithm.tis=sequence",
             "algorithm.tis_cap=3.0", "critic.lr=7e-4", "critic.zero_stage=3", "critic.weight_decay=0.2",
             "critic.grad_clip=0.3", "critic.micro_batch_size=3", "critic.value_clip=0.4",
             "rollout.max_model_len=200", "rollout.kv_cache_gib=0.5", "rollout.gpu_memory_utilization=0.3",
             "rollout.tensor_parallel_size=2", "rollout.multiprocess_engine=true", "rollout.max_new_tokens=40",
             "model.dtype=bfloat16", "train.seed=9", "rollout.temperature=0.6", "sync.timeout_s=77",
             "learner.collective_timeout_s=78", "critic.collective_timeout_s=79", "learner.grad_accum_dtype=model",
             "cluster.device=gpu", "reward.timeout_s=3.5", "reward.grace_s=12",
             "reward.custom_fn=tests.rewards_fixture:even_length", "reward.shaping=simplerl",
             "reward.extract=boxed_or_phrase", "reward.code.parallel=3",
             "algorithm.advantage=gae"]
# Fields of an actor's config section that stay with the driver (placement, the loop), by design.
DRIVER_ONLY = {
    "learner": {"num_ranks", "resources", "call_timeout_s"},
    "critic": {"num_ranks", "resources", "gamma", "lam", "warmup_steps", "call_timeout_s"},
    "algorithm": {"advantage", "mask_truncated", "overlong_buffer", "overlong_penalty", "dynamic_sampling",
                  "dynamic_sampling_max_rounds"},
    "rollout": {"num_workers", "samples_per_prompt", "temperature", "top_p", "max_new_tokens", "cpus_per_worker",
                "resources", "max_restarts", "timeout_s", "multiprocess_engine"},
    "reward": {"num_workers", "cpus_per_worker", "resources"},
}


@pytest.fixture(scope="module")
def cfg():
    return load_config(str(ROOT / "configs" / "tiny.yaml"), OVERRIDES)


def _built(cfg):
    return {"learner": (learner_spec(cfg, "/m"), ("learner", "algorithm")),
            "critic": (critic_spec(cfg, "/m"), ("critic",)),
            "rollout": (engine_spec(cfg, "/m"), ("rollout",)),
            "reward": (reward_spec(cfg), ("reward",))}


@pytest.mark.parametrize("spec_cls", [LearnerSpec, CriticSpec, EngineSpec, RewardSpec])
def test_actor_specs_have_no_defaults_of_their_own(spec_cls):
    with_default = [f.name for f in dataclasses.fields(spec_cls)
                    if f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING]
    assert with_default == []


def test_the_reward_actor_takes_its_settings_whole():
    """RewardWorker's one parameter is the RewardSpec (no setting passed beside it, none with a default), and
    every RewardSpec field is a `reward` field (spec_from refuses one that is not)."""
    # Ray's tracing hook adds `_ray_trace_ctx` to the class's methods in place once any test made it an actor.
    params = [p for p in inspect.signature(RewardWorker).parameters.values() if p.name != "_ray_trace_ctx"]
    assert [(p.name, p.annotation, p.default) for p in params] == [("spec", "RewardSpec", inspect.Parameter.empty)]
    assert {f.name for f in dataclasses.fields(RewardSpec)} <= set(RewardConfig.model_fields)


def settings_with_defaults(modules: list[ModuleType], settings: set[str]) -> list[str]:
    """'module.function(name=...)' for every function or method defined in `modules` that declares a
    default for a parameter named like one of `settings`."""
    found = []
    for module in modules:
        for owner_name, owner in vars(module).items():
            if getattr(owner, "__module__", None) != module.__name__:
                continue
            members = vars(owner).items() if inspect.isclass(owner) else [("", owner)]
            for name, fn in members:
                if not inspect.isfunction(fn):
                    continue
                for p in inspect.signature(fn).parameters.values():
                    if p.name in settings and p.default is not inspect.Parameter.empty:
                        where = f"{owner_name}.{name}" if name else owner_name
                        found.append(f"{module.__name__}.{where}({p.name}=...)")
    return found


# Per-call values that share a name with an engine setting: the sampling seed of one generation call
# (train.seed and the step, from the driver) is not EngineSpec.seed.
PER_CALL = {"seed"}


def test_no_function_on_the_engine_or_reward_path_declares_a_default_for_a_setting():
    """The engine's and the reward actor's settings have one set of defaults, the config's: nothing from
    EngineSpec down to LLM(...) (rollout/), nor the reward actor and its code scorer, declares one of its own."""
    from reward import code
    from reward import spec as reward_spec_module
    from reward import worker as reward_worker
    from rollout import kv_cache, spec, worker
    from rollout.vllm_compat import engine

    settings = ({f.name for f in dataclasses.fields(EngineSpec)} | set(RolloutConfig.model_fields) | {"spec"}
                | set(RewardConfig.model_fields) | set(CodeRewardConfig.model_fields)) - PER_CALL
    assert settings_with_defaults([kv_cache, spec, worker, engine, reward_spec_module, reward_worker, code],
                                  settings) == []


def test_the_default_check_catches_a_default(tmp_path):
    """The check itself: a function and a method with a default for a setting are reported."""
    module = ModuleType("fake_engine")
    exec("def make(max_model_len=256, other=1): pass\n"
         "class Worker:\n    def __init__(self, timeout_s=2.0): pass\n", module.__dict__)
    assert settings_with_defaults([module], {"max_model_len", "timeout_s"}) == [
        "fake_engine.make(max_model_len=...)", "fake_engine.Worker.__init__(timeout_s=...)"]


def test_every_spec_field_equals_its_config_field(cfg):
    for role, (spec, sections) in _built(cfg).items():
        for f in dataclasses.fields(spec):
            owners = [s for s in sections if f.name in type(getattr(cfg, s)).model_fields]
            if owners:
                assert getattr(spec, f.name) == getattr(getattr(cfg, owners[0]), f.name), (role, f.name)
    learner, critic, engine, reward = (spec for spec, _ in _built(cfg).values())
    # The derived fields, each from the one place it lives in the config.
    assert (learner.max_response_len, learner.seed, learner.dtype, learner.device, learner.temperature) == \
        (40, 9, "bfloat16", "gpu", 0.6)
    assert (critic.ppo_epochs, critic.ppo_mini_batches, critic.seed, critic.lr) == (3, 4, 9, 7e-4)
    # Each group's own collective timeout, not the weight sync's (sync.timeout_s=77).
    assert (learner.collective_timeout_s, critic.collective_timeout_s) == (78.0, 79.0)
    assert (learner.grad_accum_dtype, critic.grad_accum_dtype) == ("model", "float32")
    assert (engine.multiprocess, engine.seed, engine.dtype) == (True, 9, "bfloat16")
    assert (reward.timeout_s, reward.grace_s, reward.code.parallel) == (3.5, 12.0, 3)


def test_every_field_of_an_actor_section_reaches_an_actor_or_is_driver_only(cfg):
    reached = {role: {f.name for f in dataclasses.fields(spec)} for role, (spec, _) in _built(cfg).items()}
    reached["algorithm"] = reached["learner"]
    for section, driver in DRIVER_ONLY.items():
        fields = set(type(getattr(cfg, section)).model_fields)
        assert fields - reached[section] == driver, section


def test_spec_from_refuses_a_field_with_no_source_or_two():
    @dataclasses.dataclass
    class Spec:
        lr: float
        seed: int

    c = load_config(None)
    assert spec_from(Spec, c.learner, seed=3) == Spec(lr=c.learner.lr, seed=3)
    with pytest.raises(TypeError, match=r"Spec\.seed: needs exactly one source, found none"):
        spec_from(Spec, c.learner)
    with pytest.raises(TypeError, match=r"Spec\.lr: needs exactly one source, found \['LearnerConfig', 'CriticConfig'\]"):
        spec_from(Spec, c.learner, c.critic, seed=1)
    with pytest.raises(TypeError, match="no field"):
        spec_from(Spec, c.learner, seed=1, colour="red")
