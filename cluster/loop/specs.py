"""Actor specs from the config: every value an actor gets has one source, the config (cluster/config.py).

No Ray here: scripts that run the learner without Ray (scripts/gpu_smoke.py's reduced mode) build their
specs the same way as the driver (cluster/handles/groups.py, cluster/handles/rollout_group.py).
"""
from __future__ import annotations

import dataclasses
from typing import Any, TypeVar

from pydantic import BaseModel

from cluster.config import Config, chosen_transport
from cluster.config_sections import DEEPSPEED_GROUPS
from cluster.planning.memory_model import engine_sequences
from learner.critic import CriticSpec
from learner.worker import LearnerSpec
from reward.spec import RewardSpec
from rollout.spec import EngineSpec

T = TypeVar("T")


def spec_from(spec_cls: type[T], *sections: BaseModel, **derived: Any) -> T:
    """An actor spec (a dataclass) filled from config sections: each field takes the same-named field
    of the one section that has it, or a `derived` value (a field no section names, or one computed
    from several). A field found nowhere, or in two places, is an error: every value an actor gets has
    one source, the config (tests/test_specs.py checks every spec against it)."""
    values: dict[str, Any] = {}
    for f in dataclasses.fields(spec_cls):  # type: ignore[arg-type]
        found = [sec for sec in sections if f.name in type(sec).model_fields]
        if len(found) + (f.name in derived) != 1:
            where = [type(sec).__name__ for sec in found] + (["derived"] if f.name in derived else [])
            raise TypeError(f"{spec_cls.__name__}.{f.name}: needs exactly one source, found {where or 'none'}")
        values[f.name] = derived[f.name] if f.name in derived else getattr(found[0], f.name)
    unused = set(derived) - set(values)
    if unused:
        raise TypeError(f"{spec_cls.__name__} has no field(s) {sorted(unused)}")
    return spec_cls(**values)


def planned_budgets(cfg: Config) -> None:
    """Refuses a config whose `auto` token budgets were not planned yet (cluster/planning/token_budget.py)."""
    for name in DEEPSPEED_GROUPS:
        if getattr(cfg, name).max_tokens_per_micro_batch == "auto":
            raise ValueError(f"{name}.max_tokens_per_micro_batch=auto reached the ranks unplanned: resolve it with "
                             "cluster.planning.token_budget.resolve_token_budget (cluster.train and Trainer do)")


def learner_spec(cfg: Config, model_path: str) -> LearnerSpec:
    planned_budgets(cfg)
    return spec_from(LearnerSpec, cfg.learner, cfg.algorithm, model_path=model_path, device=cfg.cluster.device,
                     dtype=cfg.model.dtype, max_response_len=cfg.rollout.max_new_tokens, seed=cfg.train.seed,
                     temperature=cfg.rollout.temperature)


def critic_spec(cfg: Config, model_path: str) -> CriticSpec:
    a = cfg.algorithm
    planned_budgets(cfg)
    return spec_from(CriticSpec, cfg.critic, model_path=model_path, device=cfg.cluster.device, dtype=cfg.model.dtype,
                     ppo_epochs=a.ppo_epochs, ppo_mini_batches=a.ppo_mini_batches, seed=cfg.train.seed)


def engine_spec(cfg: Config, model_path: str) -> EngineSpec:
    return spec_from(EngineSpec, cfg.rollout, model_path=model_path, device=cfg.cluster.device, dtype=cfg.model.dtype,
                     multiprocess=cfg.rollout.multiprocess_engine, seed=cfg.train.seed,
                     sequences=engine_sequences(cfg), threads=max(1, int(cfg.rollout.cpus_per_worker)),
                     sleep_mode=cfg.cluster.colocate, ray_bundles=(), gpus_per_rank=1.0,  # per engine: RolloutGroup
                     weight_transfer_backend=native_backend(cfg))


def reward_spec(cfg: Config) -> RewardSpec:
    return spec_from(RewardSpec, cfg.reward)


def native_backend(cfg: Config) -> str | None:
    """vLLM's weight-transfer engine the rollout engines must be built with for the run's transport."""
    from protocol import transports

    return transports.get(chosen_transport(cfg)).native_backend
