"""Host memory planned before a local CPU run starts: every process the run will start, as cluster.planning.memory_model
predicts it, against what Ray's memory monitor lets the node use.

Ray kills a worker once the node's used memory passes RAY_memory_usage_threshold (0.95 of the total by
default), whoever used it; what this run may add is that line minus what is in use before it starts.
When the learner's micro-batches are counted in sequences (learner.micro_batch_size) and the prediction
does not fit, the run takes the largest token budget per micro-batch (learner.max_tokens_per_micro_batch,
critic too) that fits, and says so; the update is the same (the loss aggregates are exact over any
micro-batching: tests/test_learner_step.py). A config that does not fit even so is refused, naming the
fields that would make it fit.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Callable

from cluster.config import Config, chosen_transport
from cluster.planning.memory_model import DTYPE_BYTES, GIB, architecture, predict

# Measured roughly here (RSS of each process in a running default job): a reward actor with the grader
# imported, the driver (tokenizer, data, Ray client), and Ray's own processes (GCS, raylet, agents).
CPU_REWARD_RUNTIME = int(0.25 * GIB)
CPU_DRIVER_RUNTIME = int(0.8 * GIB)
CPU_RAY_RUNTIME = int(0.5 * GIB)
# The plan fills at most this share of what Ray lets the run add: the per-process figures count tensors,
# while Ray's monitor sees resident memory (the allocator's slack, Ray's object store, the page cache of
# the model files come on top). Planned to exactly the line, a 135M-shaped run was killed by Ray's
# memory monitor at a weight sync.
PLAN_SHARE = 0.85


@dataclass
class HostPlan:
    cfg: Config  # the config to run: the given one, or with a token budget per micro-batch
    demand: float  # predicted bytes of every process of the run
    budget: float  # bytes the run may add before Ray's memory monitor kills
    note: str | None = None  # what was changed, for the user
    problem: str | None = None  # why it cannot run here (then cfg is the given one)


def ray_threshold() -> float:
    return float(os.environ.get("RAY_memory_usage_threshold", "0.95"))


def host_budget(total: int, available: int) -> float:
    """Bytes the run may plan for: PLAN_SHARE of Ray's kill line (threshold x total) minus what is used
    already."""
    return PLAN_SHARE * (ray_threshold() * total - (total - available))


def demand(cfg: Config, available: int) -> tuple[float, list[str]]:
    """Predicted bytes of the whole run on this host, and one line per kind of process."""
    roles = {role.role.split(" (")[0]: role.total for role in predict(cfg, available)}
    r = cfg.rollout
    parts = [(f"{cfg.learner.num_ranks} learner rank(s)", cfg.learner.num_ranks * roles["learner rank"]),
             (f"{r.num_workers} rollout engine(s) x TP {r.tensor_parallel_size}",
              r.num_workers * r.tensor_parallel_size * roles["rollout engine"]),
             (f"{cfg.reward.num_workers} reward actor(s)", cfg.reward.num_workers * CPU_REWARD_RUNTIME),
             ("driver and Ray", CPU_DRIVER_RUNTIME + CPU_RAY_RUNTIME)]
    if chosen_transport(cfg) == "shm":
        # The shm transport keeps the whole model in the rollout dtype in /dev/shm (memory, not disk) all
        # run long: restarted engines reload from it (protocol/transports/shm.py).
        parts.append(("weight buffer (/dev/shm)", architecture(cfg).params * DTYPE_BYTES[cfg.model.dtype]))
    if "critic rank" in roles:
        parts.insert(1, (f"{cfg.critic.num_ranks} critic rank(s)", cfg.critic.num_ranks * roles["critic rank"]))
    return sum(b for _, b in parts), [f"{name}: {b / GIB:.1f} GiB" for name, b in parts]


def with_token_budget(cfg: Config, tokens: dict[str, int]) -> Config:
    """`cfg` with these groups' (learner, critic) max_tokens_per_micro_batch set."""
    return cfg.model_copy(update={name: getattr(cfg, name).model_copy(update={"max_tokens_per_micro_batch": budget})
                                  for name, budget in tokens.items()})


def largest_fitting(lo: int, hi: int, fits: Callable[[int], bool], resolution: int = 64) -> int:
    """The largest token budget in [lo, hi] that `fits` (memory grows with the budget), to `resolution`
    tokens; `hi` itself when it fits, `lo` when nothing does (the caller's checks refuse it then)."""
    if fits(hi):
        return hi
    if not fits(lo):
        return lo
    while hi - lo > resolution:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if fits(mid) else (lo, mid)
    return lo


def plan_host_memory(cfg: Config, total: int, available: int) -> HostPlan:
    """The run as configured when it fits (an `auto` token budget resolved first: cluster/planning/token_budget.py);
    else, with count-based micro-batches, the largest token budget per micro-batch (at least one sequence of
    rollout.max_model_len) that fits; else a refusal."""
    from cluster.planning.token_budget import resolve_token_budget  # it plans with this module's demand

    cfg, chosen = resolve_token_budget(cfg, total, available)  # `auto` budgets: the largest that fits
    budget = host_budget(total, available)
    need, lines = demand(cfg, available)
    if need <= budget:
        return HostPlan(cfg, need, budget, note=chosen and f"memory: {chosen} (predicted {need / GIB:.1f} GiB)")
    head = (f"predicted host memory {need / GIB:.1f} GiB ({'; '.join(lines)}) exceeds the {budget / GIB:.1f} GiB "
            f"this run plans for ({PLAN_SHARE:g} of what it may add before Ray's memory monitor kills a worker: "
            f"RAY_memory_usage_threshold={ray_threshold():g} of {total / GIB:.1f} GiB, "
            f"{(total - available) / GIB:.1f} GiB in use already)")
    counted = cfg.learner.max_tokens_per_micro_batch is None and (
        cfg.algorithm.advantage != "gae" or cfg.critic.max_tokens_per_micro_batch is None)
    lo, hi = cfg.rollout.max_model_len, cfg.learner.micro_batch_size * cfg.rollout.max_model_len

    def fits(tokens: int) -> bool:
        return demand(with_token_budget(cfg, {"learner": tokens, "critic": tokens}), available)[0] <= budget

    if counted and fits(lo):
        lo = largest_fitting(lo, hi, fits)
        planned = with_token_budget(cfg, {"learner": lo, "critic": lo})
        need = demand(planned, available)[0]
        return HostPlan(planned, need, budget, note=(
            f"memory: {head}; micro-batches are cut by tokens instead: learner.max_tokens_per_micro_batch={lo} "
            f"(predicted {need / GIB:.1f} GiB)"))
    return HostPlan(cfg, need, budget, problem=(
        f"{head}. Lower it with learner.gradient_checkpointing=true, a smaller learner.max_tokens_per_micro_batch "
        f"(>= rollout.max_model_len), fewer learner.num_ranks or rollout.num_workers, a smaller rollout.kv_cache_gib "
        f"or rollout.max_model_len, or model.dtype=bfloat16; python -m cluster.memory --config ... shows each term"))
