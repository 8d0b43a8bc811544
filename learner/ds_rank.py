"""One DeepSpeed ZeRO rank of a trained group: the policy's LearnerWorker (learner/worker.py) and the
critic's CriticWorker (learner/critic.py). The driver runs `world_size` of these as Ray actors and calls
every method on all ranks at once (ZeRO collectives need every rank, in the same order).

The update of one batch (`_optimise`): PPO epochs x mini-batches (learner/batching.py), each
mini-batch exactly one optimizer step. The accumulation boundary is set by hand before every
backward (`set_gradient_accumulation_boundary`) and the engine is built with one accumulation step
and never resized, so DeepSpeed's own micro-step counter (global, across calls) never decides where
a step falls, whatever the batch sizes before (tests/test_optimizer_steps.py checks this against plain
torch for ZeRO 1, 2 and 3).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Callable

import torch

from learner import core_algos as algos
from learner.batching import PaddedBatch, mini_batches, pad, rank_micro_batches
from protocol.batch import TrainBatch
from protocol.endpoints import free_port, node_ip, pin_gloo_interface
from protocol.rng import rng_state, set_rng_state
from protocol.weight_sync import DTYPES

LossFn = Callable[[PaddedBatch], tuple[torch.Tensor, dict[str, torch.Tensor]]]
# Statistics also reported as their maximum over tokens, under this name.
MAX_STATS = {"ratio_mean": "ratio_max", "is_weight": "is_weight_max", "rollout_logprob_diff_mean": "rollout_logprob_diff_max"}


@dataclass
class RankSpec:
    """What every rank of a DeepSpeed group needs. No defaults on purpose: cluster/loop/specs.py builds each
    spec from the config sections (`spec_from`), so a value has one source of truth, the config."""

    model_path: str
    device: str  # "cpu" (gloo) or "gpu" (nccl)
    dtype: str
    zero_stage: int
    lr: float
    weight_decay: float
    grad_clip: float
    micro_batch_size: int
    max_tokens_per_micro_batch: int | None  # token-budget micro-batches (learner/batching.py rank_micro_batches)
    gradient_checkpointing: bool
    ppo_epochs: int
    ppo_mini_batches: int
    seed: int
    grad_accum_dtype: str  # "float32" or "model": what micro-batch gradients are summed in (_ds_config)
    collective_timeout_s: float  # the process group's timeout: one collective, a checkpoint barrier
    cpus_per_rank: float  # CPU: the rank's torch threads (the whole CPUs it reserves, at least 1)


def _skip_shm_comm_op() -> None:
    """DeepSpeed JIT-compiles a shared-memory all-reduce (~80 s on 2 cores) at every init on CPU.
    It only serves inference all-reduce, which training never calls."""
    import sys

    import deepspeed.comm  # noqa: F401  (loads deepspeed.comm.torch)

    sys.modules["deepspeed.comm.torch"].build_shm_op = lambda: None


class DeepSpeedRank:
    spec: RankSpec

    def __init__(self, rank: int, world_size: int, spec: RankSpec) -> None:
        self.rank, self.world_size, self.spec = rank, world_size, spec
        self.engine: Any = None
        self.pad_id = 0

    # ---- setup -------------------------------------------------------------------------------
    def address(self) -> tuple[str, int]:
        """A rendezvous address on this rank's node: Ray's node IP and a port free on every interface."""
        return node_ip(), free_port()

    def setup(self, master_addr: str, master_port: int) -> int:
        """Join the process group and build the DeepSpeed engine; returns the parameter count."""
        os.environ.update(RANK=str(self.rank), WORLD_SIZE=str(self.world_size), LOCAL_RANK="0",
                          MASTER_ADDR=master_addr, MASTER_PORT=str(master_port))
        if self.spec.device == "cpu":
            os.environ["DS_ACCELERATOR"] = "cpu"
            torch.set_num_threads(max(1, int(self.spec.cpus_per_rank)))
        import deepspeed
        from datetime import timedelta

        if self.spec.device == "cpu":
            _skip_shm_comm_op()
            pin_gloo_interface()
        deepspeed.init_distributed(dist_backend="gloo" if self.spec.device == "cpu" else "nccl",
                                   timeout=timedelta(seconds=self.spec.collective_timeout_s))
        torch.manual_seed(self.spec.seed)
        model = self._build_model(DTYPES[self.spec.dtype])
        optimizer = torch.optim.AdamW(model.parameters(), lr=self.spec.lr, weight_decay=self.spec.weight_decay)
        self.engine, *_ = deepspeed.initialize(model=model, optimizer=optimizer, config=self._ds_config())
        self._after_setup()
        return sum(p.ds_numel if hasattr(p, "ds_numel") else p.numel() for p in model.parameters())

    def _build_model(self, dtype: torch.dtype) -> torch.nn.Module:
        raise NotImplementedError

    def _checkpointing(self, model: Any) -> None:
        """Activation checkpointing of a transformers model's layers when the spec asks for it: each
        layer keeps only its input and recomputes the rest during backward (non-reentrant, which is
        what DeepSpeed ZeRO-3 expects)."""
        if self.spec.gradient_checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})

    def _after_setup(self) -> None:
        """Hook for what a role loads once the engine exists (the policy's reference model)."""

    def _frozen_engine(self, model: torch.nn.Module) -> Any:
        """A DeepSpeed ZeRO-3 engine without optimizer around a frozen model: each rank keeps 1/world_size
        of its parameters, and every forward gathers them layer by layer (all ranks must run it)."""
        import deepspeed

        config = {key: value for key, value in self._ds_config().items() if key != "gradient_clipping"}
        engine, *_ = deepspeed.initialize(model=model, config={**config, "zero_optimization": {"stage": 3}})
        return engine

    def _max_over_ranks(self, value: int) -> int:
        """The largest `value` of all ranks (every rank must call it)."""
        import torch.distributed as dist

        tensor = torch.tensor([value], dtype=torch.long, device=self.device)
        dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
        return int(tensor.item())

    @property
    def device(self) -> torch.device:
        return self.engine.device if self.engine is not None else torch.device("cpu")

    def _ds_config(self) -> dict[str, Any]:
        """The engine's DeepSpeed config. bf16 with grad_accum_dtype "float32" sets DeepSpeed's
        data_types.grad_accum_dtype=fp32, which 0.19.8 honours per stage: ZeRO-1 becomes its BF16_Optimizer
        (fp32 gradients of the full model, runtime/bf16_optimizer.py), ZeRO-2 sums the partitions in fp32
        (stage_1_and_2.py), ZeRO-3 allocates its persistent gradient partition in fp32 (stage3.py); without
        ZeRO it refuses the mix (engine.py, "unsupported mix"), which the config rejects first. Each
        micro-batch's gradient is still computed in bf16, and at ZeRO 2/3 reduced in bf16 (once per
        micro-batch, over the ranks); only the running sum is fp32. ZeRO-1 reduces the fp32 sum once per
        step, in DeepSpeed's communication_data_type: fp32 here, or the sum would be rounded to bf16."""
        micro = self.spec.micro_batch_size
        bf16 = self.spec.dtype == "bfloat16"
        fp32_sums = {"data_types": {"grad_accum_dtype": "fp32"},
                     **({"communication_data_type": "fp32"} if self.spec.zero_stage == 1 else {})}
        return {
            # One accumulation step, never resized: the boundary is set by hand (module docstring).
            "train_batch_size": micro * self.world_size,
            "train_micro_batch_size_per_gpu": micro,
            "gradient_accumulation_steps": 1,
            "gradient_clipping": self.spec.grad_clip,
            "zero_optimization": {"stage": self.spec.zero_stage},
            "zero_allow_untested_optimizer": True,
            "bf16": {"enabled": bf16},
            **(fp32_sums if bf16 and self.spec.grad_accum_dtype == "float32" else {}),
            "steps_per_print": 10**9,
            "wall_clock_breakdown": False,
        }

    # ---- the update --------------------------------------------------------------------------
    def _pad(self, batch: TrainBatch, indices: list[int]) -> PaddedBatch:
        """The micro-batch `indices` of `batch`, padded. An empty one becomes a one-token, fully masked
        placeholder carrying the same fields: the forward still runs, because under ZeRO-3 every
        forward gathers weights collectively and all ranks must run the same number of them."""
        if indices:
            return pad(batch.select(indices), self.pad_id, self.device)
        one = [[self.pad_id]]
        per_token = {name: [[0.0]] if getattr(batch, name) else []
                     for name in ("old_logprobs", "behaviour_logprobs", "ref_logprobs", "values", "returns")}
        return pad(TrainBatch(one, one, advantages=[0.0], loss_mask=[[0.0]], **per_token), self.pad_id, self.device)

    def _micro_batches(self, batch: TrainBatch) -> Callable[[list[int]], list[list[int]]]:
        """This rank's micro-batches of a mini-batch of `batch` (learner/batching.py rank_micro_batches):
        by sample count, or by the spec's token budget with the samples sorted by length."""
        s = self.spec
        lengths = ([len(p) + len(r) for p, r in zip(batch.prompt_ids, batch.response_ids)]
                   if s.max_tokens_per_micro_batch else None)
        return lambda indices: rank_micro_batches(indices, self.rank, self.world_size, s.micro_batch_size, lengths,
                                                  s.max_tokens_per_micro_batch)

    def _optimise(self, batch: TrainBatch, seed: int | None, loss_fn: LossFn, mode: str, max_len: int = 0,
                  epochs: int | None = None, count: int | None = None) -> dict[str, float]:
        """`epochs` x `count` mini-batches (default: the spec's ppo_epochs and ppo_mini_batches), each one
        optimizer step on this rank's share of it.

        Every token gets its weight in the mini-batch's aggregate (`algos.aggregation_weights`, from
        the mini-batch's global token and sequence counts, which every rank computes from the batch it
        received). DeepSpeed averages the ranks' gradients, so each micro-batch's weighted sum is
        scaled by the world size: the gradient is then exactly the mini-batch aggregate's.
        Returns per-rank sums: masked token sums of each statistic, "tokens", "<stat>_max" maxima,
        "loss" (this rank's share of the mini-batch aggregates, summed over the mini-batches),
        "mini_batches", "grad_norm" (summed over the steps) and "optimizer_steps" (counted by the engine).
        """
        s = self.spec
        sums: dict[str, float] = {"tokens": 0.0, "loss": 0.0, "grad_norm": 0.0}
        start = self.engine.global_steps
        plan = mini_batches(len(batch), epochs or s.ppo_epochs, count or s.ppo_mini_batches, seed)
        micro_batches = self._micro_batches(batch)
        self.engine.train()
        for epoch in plan:
            for indices in epoch:
                total_tokens, num_sequences = algos.batch_normalisers(batch.select(indices).loss_mask)
                micros = micro_batches(indices)
                for i, micro in enumerate(micros):
                    self.engine.set_gradient_accumulation_boundary(i == len(micros) - 1)
                    pb = self._pad(batch, micro)
                    per_token, stats = loss_fn(pb)
                    weights = algos.aggregation_weights(pb.mask, mode, num_sequences, total_tokens, max_len)
                    objective = (per_token * weights).sum()
                    self.engine.backward(objective * self.world_size)
                    self._accumulate(sums, stats, pb.mask, float(objective.detach()))
                self._optimizer_step()
                sums["grad_norm"] += float(self.engine.get_global_grad_norm() or 0.0)
        sums["mini_batches"] = float(sum(len(epoch) for epoch in plan))
        sums["optimizer_steps"] = float(self.engine.global_steps - start)
        return sums

    def _optimizer_step(self) -> None:
        """The accumulated gradients become one optimizer step (tests read the gradients here first)."""
        self.engine.step()

    @staticmethod
    def _accumulate(sums: dict[str, float], stats: dict[str, torch.Tensor], mask: torch.Tensor, loss: float) -> None:
        for key, value in stats.items():
            sums[key] = sums.get(key, 0.0) + float(algos.masked_sum(value.detach(), mask))
            if key in MAX_STATS and mask.sum() > 0:
                name, peak = MAX_STATS[key], float(value.detach()[mask > 0].max())
                sums[name] = max(sums.get(name, peak), peak)
        sums["tokens"] += float(mask.sum())
        sums["loss"] += loss

    @torch.no_grad()
    def _score(self, batch: TrainBatch, seed: int | None,
               per_token: Callable[[PaddedBatch], torch.Tensor]) -> list[tuple[int, list[float]]]:
        """(sample index, response-token values) of this rank's samples, computed in the first epoch's
        micro-batches of `_optimise` with the same `seed`: the same padding and the same forwards as the
        first mini-batch's training forward, so that values such as the old log-probs are bitwise what
        training sees before its first step. Every rank must call it (ZeRO-3 gathers in each forward)."""
        out: list[tuple[int, list[float]]] = []
        plan = mini_batches(len(batch), 1, self.spec.ppo_mini_batches, seed)
        micro_batches = self._micro_batches(batch)
        for indices in plan[0] if plan else []:
            for micro in micro_batches(indices):
                pb = self._pad(batch, micro)
                out += list(zip(micro, pb.response_values(per_token(pb))))
        return out

    # ---- checkpoints -------------------------------------------------------------------------
    def save_checkpoint(self, path: str) -> dict[str, Any]:
        """DeepSpeed state (weights, ZeRO optimizer partitions, step counters) into `path`/deepspeed,
        plus this rank's RNG states. Every rank must call it: each writes its own partition.

        Returns what this rank sees in `path` afterwards ({"node": ip, "files": {relative path: bytes}}),
        so the driver can check that every partition landed where it can read it (a run directory
        that is not shared between nodes). DeepSpeed's save ends with a barrier, so its files are
        complete when listed; other ranks' RNG files may still be in writing and are left out."""
        self.engine.save_checkpoint(path, tag="deepspeed", save_latest=False)
        torch.save(rng_state(), os.path.join(path, f"rng_rank{self.rank}.pt"))
        others = {f"rng_rank{r}.pt" for r in range(self.world_size) if r != self.rank}
        files = {os.path.relpath(os.path.join(root, name), path): os.path.getsize(os.path.join(root, name))
                 for root, _, names in os.walk(path) for name in names if name not in others}
        return {"node": node_ip(), "files": files}

    def check_run_dir(self, token_file: str, token: str) -> str | None:
        """None when this rank reads `token` from `token_file` (the driver's, in the run directory);
        otherwise what it sees instead, naming its node."""
        try:
            with open(token_file) as f:
                seen = f.read().strip()
        except OSError as err:
            seen = f"nothing ({type(err).__name__})"
        return None if seen == token else f"rank {self.rank} on node {node_ip()} reads {seen!r} in {token_file}"

    def load_checkpoint(self, path: str) -> None:
        """Restore what `save_checkpoint` wrote (all ranks, same world size and ZeRO stage)."""
        loaded, _ = self.engine.load_checkpoint(path, tag="deepspeed", load_optimizer_states=True,
                                                load_lr_scheduler_states=True)
        if loaded is None:
            raise FileNotFoundError(f"no DeepSpeed checkpoint in {path}/deepspeed")
        set_rng_state(torch.load(os.path.join(path, f"rng_rank{self.rank}.pt"), weights_only=False))

