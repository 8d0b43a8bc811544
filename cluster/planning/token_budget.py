"""`<group>.max_tokens_per_micro_batch: auto` (learner, critic): a token budget per micro-batch planned from
the memory prediction, resolved to a number before the ranks start.

- The ceiling: a rank's share of one mini-batch at full length, ceil(prompts_per_step x samples_per_prompt
  / ppo_mini_batches / num_ranks) x rollout.max_model_len tokens (a larger budget holds nothing more); on
  CPU also CPU_MICRO_BATCH_TOKENS (or max_model_len when that is larger). On CPU the largest micro-batch is
  not the fastest: on the default shape the learner step with each rank's whole share in one micro-batch
  was no faster than with micro_batch_size=64 (0.97x; 0.75x and 0.81x in two shorter runs), while sorted
  budgets of 512 and 2048 tokens ran about 2x (docs/benchmarks.md, "Learner micro-batching and dtype");
  configs/cpu_scale.yaml's hand-tuned 2560 and its plain-torch profile (micro-batch 16 slower than 8 and
  4) agree.
- The floor: rollout.max_model_len (a sequence is never split).
- Between them, the largest budget (to 64 tokens) whose predicted memory fits: on CPU the whole run's
  processes on this host against what Ray's memory monitor allows (cluster/planning/host_memory.py, the
  machine's memory read now); on GPU every learner and critic rank against cluster.gpu_memory_gib
  (cluster/planning/memory_model.py). When even the floor does not fit, the floor is returned and the
  usual checks refuse the run, naming what to change.

A budget packs each rank's share of a mini-batch, sorted longest first, into micro-batches whose padded
size stays within it (learner/batching.py rank_micro_batches): similar lengths together, little padding.
The update is the same as with micro_batch_size (the loss weights come from the mini-batch's global
counts, learner/aggregation.py), up to float rounding.
"""
from __future__ import annotations

import math
from typing import Callable

from cluster.config import Config, DeepSpeedGroupConfig
from cluster.config_sections import DEEPSPEED_GROUPS
from cluster.planning.host_memory import demand, host_budget, largest_fitting, with_token_budget
from cluster.planning.memory_model import GIB, predict

GROUPS = DEEPSPEED_GROUPS
# CPU: the most padded tokens per micro-batch `auto` plans (see the module docstring for the measurements).
CPU_MICRO_BATCH_TOKENS = 2048


def auto_groups(cfg: Config) -> list[str]:
    """The groups (learner, critic) whose max_tokens_per_micro_batch is `auto`."""
    return [name for name in GROUPS if getattr(cfg, name).max_tokens_per_micro_batch == "auto"]


def step_share_tokens(cfg: Config, group: DeepSpeedGroupConfig) -> int:
    """A rank's share of one mini-batch at full length: the most tokens one micro-batch could be given."""
    samples = cfg.train.prompts_per_step * cfg.rollout.samples_per_prompt
    per_rank = math.ceil(math.ceil(samples / cfg.algorithm.ppo_mini_batches) / group.num_ranks)
    return per_rank * cfg.rollout.max_model_len


def ceiling(cfg: Config, group: DeepSpeedGroupConfig) -> tuple[int, str]:
    """The most tokens `auto` gives one micro-batch of `group` whatever the memory, and why."""
    share = step_share_tokens(cfg, group)
    speed = max(cfg.rollout.max_model_len, CPU_MICRO_BATCH_TOKENS)
    if cfg.cluster.device == "cpu" and speed < share:
        return speed, (f"on CPU at most {speed} tokens, where smaller sorted micro-batches train faster "
                       f"(cluster/planning/token_budget.py CPU_MICRO_BATCH_TOKENS)")
    return share, f"a rank's whole share of a mini-batch at full length, {share} tokens"


def resolve_with(cfg: Config, fits: Callable[[Config], bool], plan: str) -> tuple[Config, str | None]:
    """`cfg` with every `auto` budget replaced by the largest one that `fits` (one token count for all auto
    groups, each capped at its own `ceiling`), and a line saying what was chosen; (cfg, None) without auto."""
    names = auto_groups(cfg)
    if not names:
        return cfg, None
    limits = {name: ceiling(cfg, getattr(cfg, name)) for name in names}
    caps = {name: cap for name, (cap, _) in limits.items()}

    def budgets(tokens: int) -> dict[str, int]:
        return {name: min(tokens, cap) for name, cap in caps.items()}

    tokens = largest_fitting(cfg.rollout.max_model_len, max(caps.values()), lambda t: fits(with_token_budget(cfg, budgets(t))))
    chosen = budgets(tokens)
    lines = []
    for name, budget in chosen.items():
        why = (f"{limits[name][1]}; {plan} allows it" if budget == caps[name] else
               f"the largest that {plan} allows, below the ceiling: {limits[name][1]}")
        lines.append(f"{name}.max_tokens_per_micro_batch=auto -> {budget} ({why})")
    return with_token_budget(cfg, chosen), "; ".join(lines)


def gpu_fits(cfg: Config) -> bool:
    """Every learner and critic rank (and a GPU shared with an engine) within its GPU budget."""
    return all(role.total <= role.budget for role in predict(cfg) if role.budget is not None and not role.fills_budget)


def resolve_token_budget(cfg: Config, total: int | None = None, available: int | None = None) -> tuple[Config, str | None]:
    """`auto` budgets resolved by the plan of cfg's device. CPU: this host's memory (`total`, `available`
    bytes; None: read now) for every process of the run; GPU: cluster.gpu_memory_gib per rank."""
    if not auto_groups(cfg):
        return cfg, None
    if cfg.cluster.device == "gpu":
        return resolve_with(cfg, gpu_fits, f"cluster.gpu_memory_gib={cfg.cluster.gpu_memory_gib:g} per rank")
    if total is None or available is None:
        import psutil

        memory = psutil.virtual_memory()
        total, available = memory.total, memory.available
    budget = host_budget(total, available)
    return resolve_with(cfg, lambda c: demand(c, available)[0] <= budget,
                        f"this host's memory plan ({budget / GIB:.1f} GiB for the run)")
