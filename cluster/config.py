"""The one configuration schema. YAML files in configs/ plus `section.key=value` overrides.

Unknown keys and bad values are errors that name the field, raised before anything starts. The sections'
models (their fields, defaults and bounds) are in cluster/config_sections.py; `Config` below assembles
them and checks what spans sections. Import every section from here.
"""
from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError, model_validator

from cluster.config_sections import (DEEPSPEED_GROUPS, MODEL_PRESETS, AlgorithmConfig, ClusterConfig,
                                     CodeRewardConfig, CriticConfig, DataConfig, DeepSpeedGroupConfig,
                                     LearnerConfig, LoggingConfig, ModelConfig, RewardConfig, RolloutConfig,
                                     RunConfig, Strict, SyncConfig, TinyModelConfig, TrainConfig,
                                     WarmupConfig)
from cluster.planning.dtype import auto_dtype

__all__ = ["AlgorithmConfig", "auto_transport", "chosen_transport", "ClusterConfig", "CodeRewardConfig", "Config", "ConfigError",
           "CriticConfig", "DataConfig", "DeepSpeedGroupConfig", "dump_config", "LearnerConfig", "load_config",
           "LoggingConfig", "MODEL_PRESETS", "ModelConfig", "parse_overrides", "RewardConfig", "RolloutConfig",
           "RunConfig", "Strict", "SyncConfig", "TinyModelConfig", "TrainConfig", "WarmupConfig"]


class Config(Strict):
    run: RunConfig = RunConfig()
    cluster: ClusterConfig = ClusterConfig()
    model: ModelConfig = ModelConfig()
    data: DataConfig = DataConfig()
    rollout: RolloutConfig = RolloutConfig()
    learner: LearnerConfig = LearnerConfig()
    algorithm: AlgorithmConfig = AlgorithmConfig()
    critic: CriticConfig = CriticConfig()
    reward: RewardConfig = RewardConfig()
    sync: SyncConfig = SyncConfig()
    train: TrainConfig = TrainConfig()
    logging: LoggingConfig = LoggingConfig()

    @model_validator(mode="after")
    def _fits(self) -> "Config":
        if self.model.dtype == "auto":
            self.model.dtype, why = auto_dtype(self.cluster.device)
            self.model._dtype_note = f"model.dtype=auto -> {self.model.dtype}: {why}"
        if self.rollout.max_new_tokens >= self.rollout.max_model_len:
            raise ValueError("rollout.max_new_tokens must be smaller than rollout.max_model_len")
        if (self.data.kind == "code") != (self.reward.kind == "code"):
            raise ValueError("data.kind=code and reward.kind=code go together (code problems carry tests, not answers)")
        if self.algorithm.overlong_buffer >= self.rollout.max_new_tokens:
            raise ValueError(f"algorithm.overlong_buffer={self.algorithm.overlong_buffer} must be smaller than "
                             f"rollout.max_new_tokens={self.rollout.max_new_tokens}")
        if self.algorithm.advantage == "rloo" and self.rollout.samples_per_prompt < 2:
            raise ValueError("algorithm.advantage=rloo needs rollout.samples_per_prompt >= 2")
        for name in DEEPSPEED_GROUPS:
            budget = getattr(self, name).max_tokens_per_micro_batch
            if isinstance(budget, int) and budget < self.rollout.max_model_len:
                raise ValueError(f"{name}.max_tokens_per_micro_batch={budget} is below rollout.max_model_len="
                                 f"{self.rollout.max_model_len}: a full-length sequence would not fit one micro-batch")
        for name in DEEPSPEED_GROUPS:
            group = getattr(self, name)
            if self.model.dtype == "bfloat16" and group.zero_stage == 0 and group.grad_accum_dtype == "float32":
                chosen = f" ({self.model._dtype_note})" if getattr(self.model, "_dtype_note", None) else ""
                raise ValueError(f"{name}.zero_stage=0 with model.dtype=bfloat16{chosen} cannot accumulate gradients in fp32 "
                                 f"(DeepSpeed 0.19.8 refuses that mix without ZeRO): use {name}.zero_stage>=1, or "
                                 f"{name}.grad_accum_dtype=model to accept bf16 sums")
        if self.cluster.colocate:
            _check_colocation(self)
        if self.train.partial_rollouts:
            _check_partial_rollouts(self)
        if self.sync.transport != "auto" or self.cluster.colocate:
            _check_transport(self)
        return self


def _check_colocation(cfg: "Config") -> None:
    """cluster.colocate puts every engine worker on the GPU of one learner rank; vLLM sleeps while the
    learner trains, so generation and training take turns."""
    r, engine_gpus = cfg.rollout, cfg.rollout.num_workers * cfg.rollout.tensor_parallel_size
    if cfg.cluster.device != "gpu":
        raise ValueError("cluster.colocate needs cluster.device=gpu (engines share GPUs with learner ranks)")
    if engine_gpus != cfg.learner.num_ranks:
        raise ValueError(f"cluster.colocate: rollout.num_workers x rollout.tensor_parallel_size ({r.num_workers} x "
                         f"{r.tensor_parallel_size} = {engine_gpus}) must equal learner.num_ranks "
                         f"({cfg.learner.num_ranks}): one engine worker and one learner rank per GPU")
    if cfg.train.max_staleness > 0:
        raise ValueError("cluster.colocate needs train.max_staleness=0: the engines sleep while the learner trains")


def _check_partial_rollouts(cfg: "Config") -> None:
    """train.partial_rollouts: a sync lands inside a generation, so generation must run ahead of the learner
    (max_staleness >= 1). Every engine mode takes it: the in-process engine loads between two engine steps
    (rollout/vllm_compat/streaming.py), an engine core in its own process (rollout.multiprocess_engine, and
    every GPU engine) aborts the requests in flight and continues them (rollout/vllm_compat/resumable.py).
    Colocated engines are refused by cluster.colocate's own check (they need max_staleness=0). On a GPU the
    path is written but refused until it has run there: vLLM's GPU defaults (the V2 model runner, async
    scheduling, TP over the Ray executor) may still hold a forward in flight when the load arrives, and the
    parity scoring beside the generation is not aborted across a load (docs/cluster.md, GPU table)."""
    if cfg.cluster.device == "gpu":
        raise ValueError("train.partial_rollouts has not run on a GPU yet and is refused there: vLLM's GPU engine may "
                         "still run a forward when the weights load (docs/cluster.md lists what has run on a GPU)")
    if cfg.train.max_staleness < 1:
        raise ValueError("train.partial_rollouts needs train.max_staleness >= 1: with 0 every batch is generated "
                         "after the sync, so no request is ever in flight at one")


def _check_transport(cfg: "Config") -> None:
    """sync.transport names a registered transport that can run where the config places things."""
    from protocol import transports

    name = chosen_transport(cfg)
    if name not in transports.names():
        raise ValueError(f"sync.transport: unknown transport {name!r} (auto, {', '.join(transports.names())})")
    problem = transports.get(name).refusal(cfg.cluster.device, cfg.cluster.colocate)
    if problem:
        raise ValueError(problem)


def chosen_transport(cfg: "Config") -> str:
    """The transport `sync.transport` names (auto: see auto_transport); the config validated it."""
    name = cfg.sync.transport
    return auto_transport(cfg.cluster.device, cfg.cluster.colocate) if name == "auto" else name


def auto_transport(device: str, colocate: bool) -> str:
    """sync.transport=auto: CUDA IPC when colocated, shared memory on a CPU node, vLLM's NCCL engine on GPUs."""
    if colocate:
        return "ipc"
    return "shm" if device == "cpu" else "nccl"


class ConfigError(ValueError):
    """A config problem, with the offending field named in the message."""


def _set_dotted(tree: dict[str, Any], dotted: str, value: Any) -> None:
    node = tree
    *parents, leaf = dotted.split(".")
    for key in parents:
        child = node.setdefault(key, {})
        if not isinstance(child, dict):
            raise ConfigError(f"override '{dotted}': '{key}' is a value, not a section")
        node = child
    node[leaf] = value


def parse_overrides(overrides: list[str]) -> dict[str, Any]:
    tree: dict[str, Any] = {}
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"override '{item}' is not of the form section.key=value")
        _set_dotted(tree, key.strip(), yaml.safe_load(raw) if raw.strip() else None)
    return tree


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in extra.items():
        out[key] = _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def _valid_keys(loc: tuple[Any, ...]) -> list[str]:
    """The field names of the section that `loc` (a pydantic error location) points into."""
    model: Any = Config
    for key in loc[:-1]:
        field = model.model_fields.get(str(key)) if isinstance(model, type) and issubclass(model, BaseModel) else None
        if field is None:
            return []
        model = field.annotation
    return list(model.model_fields) if isinstance(model, type) and issubclass(model, BaseModel) else []


def _unknown_key(loc: tuple[Any, ...]) -> str:
    """'unknown key', with the closest valid name of its section when one is close."""
    close = difflib.get_close_matches(str(loc[-1]), _valid_keys(loc), n=1, cutoff=0.6)
    return "unknown key" + (f" (did you mean {'.'.join(map(str, (*loc[:-1], close[0])))}?)" if close else "")


def _describe(err: ValidationError) -> str:
    lines = []
    for e in err.errors():
        field = ".".join(str(p) for p in e["loc"]) or "(config)"
        msg = _unknown_key(e["loc"]) if e["type"] == "extra_forbidden" else e["msg"].removeprefix("Value error, ")
        # A whole-config check names its fields in the message; echoing the whole tree would bury it.
        shown = e["type"] != "extra_forbidden" and bool(e["loc"])
        lines.append(f"  {field}: {msg}" + (f" (got {e['input']!r})" if shown else ""))
    return "invalid config:\n" + "\n".join(lines)


def _read_tree(path: str, seen: tuple[str, ...] = ()) -> dict[str, Any]:
    """A YAML file's sections. `extends: <file>` (relative to this file) starts from that file's sections,
    which this file's own values replace field by field (configs/*_1node.yaml extend the published presets)."""
    if not Path(path).is_file():
        raise ConfigError(f"config file not found: {path}")
    tree = yaml.safe_load(Path(path).read_text()) or {}
    if not isinstance(tree, dict):
        raise ConfigError(f"{path}: top level must be a mapping of sections")
    base = tree.pop("extends", None)
    if base is None:
        return tree
    base_path = str(Path(path).parent / str(base))
    if Path(base_path).resolve() in {Path(p).resolve() for p in (*seen, path)}:
        raise ConfigError(f"{path}: extends {base} in a cycle")
    return _merge(_read_tree(base_path, (*seen, path)), tree)


def load_config(path: str | None = None, overrides: list[str] | None = None) -> Config:
    """Read a YAML file (optional), apply overrides, validate. Raises ConfigError naming the field."""
    tree: dict[str, Any] = _read_tree(path) if path else {}
    tree = _merge(tree, parse_overrides(overrides or []))
    try:
        return Config.model_validate(tree)
    except ValidationError as err:
        raise ConfigError(_describe(err)) from None


def dump_config(cfg: Config, path: Path) -> None:
    path.write_text(yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False))
