"""A DeepSpeed ZeRO rank. The driver runs `world_size` of these as Ray actors and calls every
method on all ranks at once (ZeRO collectives need every rank, in the same order).
"""
from __future__ import annotations

import math
import os
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any, Iterator

import torch

from learner import core_algos as algos
from learner.batching import PaddedBatch, pad, split
from protocol.batch import TrainBatch
from protocol.endpoints import free_port, node_ip, pin_gloo_interface
from protocol.rng import rng_state, set_rng_state
from protocol.shm_stream import StreamSegment
from protocol.weight_sync import (DTYPES, FlatBuffer, TensorMeta, broadcast_bucket, ipc_handle,
                                  open_broadcast_group)


@dataclass
class LearnerSpec:
    model_path: str
    device: str = "cpu"  # "cpu" (gloo) or "gpu" (nccl)
    dtype: str = "float32"
    zero_stage: int = 2
    lr: float = 2e-4
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    micro_batch_size: int = 32
    clip_low: float = 0.2
    clip_high: float = 0.2
    dual_clip: float | None = None
    loss_agg: str = "token_mean"  # a mode of learner/aggregation.py (SFT always uses token_mean)
    max_response_len: int = 0  # fixed normaliser of loss_agg="seq_mean_token_sum_norm"
    entropy_coef: float = 0.0
    kl_coef: float = 0.0  # > 0 loads a frozen reference model
    kl_estimator: str = "k3"
    kl_in_reward: bool = False  # the driver penalises rewards (ref_logprobs); no KL loss term here
    tis_cap: float | None = 2.0  # truncated importance sampling cap, for batches with behaviour logprobs
    seed: int = 0
    timeout_s: float = 600.0


def _skip_shm_comm_op() -> None:
    """DeepSpeed JIT-compiles a shared-memory all-reduce (~80 s on 2 cores) at every init on CPU.
    It only serves inference all-reduce, which training never calls."""
    import sys

    import deepspeed.comm  # noqa: F401  (loads deepspeed.comm.torch)

    sys.modules["deepspeed.comm.torch"].build_shm_op = lambda: None


class LearnerWorker:
    def __init__(self, rank: int, world_size: int, spec: LearnerSpec) -> None:
        self.rank, self.world_size, self.spec = rank, world_size, spec
        self.engine: Any = None
        self.ref_model: Any = None
        self.weight_group: Any = None
        self.shm: StreamSegment | None = None
        self.ipc: FlatBuffer | None = None  # colocated GPU export buffer (sync.transport=ipc)
        self._params: dict[str, torch.nn.Parameter] | None = None  # name -> parameter, built at the first export

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
            torch.set_num_threads(1)
        import deepspeed
        from datetime import timedelta
        from transformers import AutoModelForCausalLM

        if self.spec.device == "cpu":
            _skip_shm_comm_op()
            pin_gloo_interface()
        deepspeed.init_distributed(dist_backend="gloo" if self.spec.device == "cpu" else "nccl",
                                   timeout=timedelta(seconds=self.spec.timeout_s))
        torch.manual_seed(self.spec.seed)
        dtype = DTYPES[self.spec.dtype]
        model = AutoModelForCausalLM.from_pretrained(self.spec.model_path, dtype=dtype)
        optimizer = torch.optim.AdamW(model.parameters(), lr=self.spec.lr, weight_decay=self.spec.weight_decay)
        self.engine, *_ = deepspeed.initialize(model=model, optimizer=optimizer, config=self._ds_config(1))
        if self.spec.kl_coef > 0:
            self.ref_model = AutoModelForCausalLM.from_pretrained(self.spec.model_path, dtype=dtype).eval()
            self.ref_model.requires_grad_(False).to(self.device)
        self.pad_id = int(model.config.pad_token_id or model.config.eos_token_id or 0)
        return sum(p.ds_numel if hasattr(p, "ds_numel") else p.numel() for p in model.parameters())

    @property
    def device(self) -> torch.device:
        return self.engine.device if self.engine is not None else torch.device("cpu")

    def _ds_config(self, grad_accum: int) -> dict[str, Any]:
        micro = self.spec.micro_batch_size
        return {
            "train_batch_size": micro * grad_accum * self.world_size,
            "train_micro_batch_size_per_gpu": micro,
            "gradient_accumulation_steps": grad_accum,
            "gradient_clipping": self.spec.grad_clip,
            "zero_optimization": {"stage": self.spec.zero_stage},
            "zero_allow_untested_optimizer": True,
            "bf16": {"enabled": self.spec.dtype == "bfloat16"},
            "steps_per_print": 10**9,
            "wall_clock_breakdown": False,
        }

    # ---- training ----------------------------------------------------------------------------
    def _forward(self, model: Any, pb: PaddedBatch) -> torch.Tensor:
        return model(input_ids=pb.input_ids, attention_mask=pb.attention_mask).logits[:, :-1]

    def train_step(self, batch: TrainBatch, total_tokens: int, num_sequences: int,
                   loss: str = "policy") -> dict[str, float]:
        """One optimizer step on this rank's shard of `batch`.

        Every token gets its weight in the aggregate over the whole global batch
        (`algos.aggregation_weights`, from the global `total_tokens` and `num_sequences`). Each
        micro-batch's weighted sum is scaled by world * steps so that, after DeepSpeed divides by
        the accumulation steps and averages over ranks, the gradient is exactly the aggregate's.
        Returns per-rank sums: masked token sums of each statistic, "tokens", and "loss" (this
        rank's share of the aggregate, so the ranks' values add up to the global loss).
        """
        shard = batch.shard(self.rank, self.world_size)
        steps = max(1, math.ceil(len(batch) / self.world_size / self.spec.micro_batch_size))
        self.engine.set_train_batch_size(self.spec.micro_batch_size * steps * self.world_size)
        mode = "token_mean" if loss == "sft" else self.spec.loss_agg
        sums: dict[str, float] = {}
        self.engine.train()
        for micro in split(shard, steps):
            if len(micro) == 0:  # keep the same number of collective calls as the other ranks
                micro = TrainBatch([[self.pad_id]], [[self.pad_id]], [[0.0]], [0.0], [[0.0]],
                                   [[0.0]] if batch.behaviour_logprobs else [])
            pb = pad(micro, self.pad_id, self.device)
            per_token, stats = self._loss(loss, self._forward(self.engine, pb), pb)
            weights = algos.aggregation_weights(pb.mask, mode, num_sequences, total_tokens, self.spec.max_response_len)
            objective = (per_token * weights).sum()
            self.engine.backward(objective * self.world_size * steps)
            self.engine.step()
            self._accumulate(sums, stats, pb.mask, float(objective.detach()))
        sums["grad_norm"] = float(self.engine.get_global_grad_norm() or 0.0)
        return sums

    @staticmethod
    def _accumulate(sums: dict[str, float], stats: dict[str, torch.Tensor], mask: torch.Tensor, loss: float) -> None:
        for key, value in stats.items():
            sums[key] = sums.get(key, 0.0) + float(algos.masked_sum(value.detach(), mask))
        sums["tokens"] = sums.get("tokens", 0.0) + float(mask.sum())
        sums["loss"] = sums.get("loss", 0.0) + loss

    def _loss(self, kind: str, logits: torch.Tensor, pb: PaddedBatch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        logprobs = algos.token_logprobs(logits, pb.targets)
        bonus = kind == "policy" and self.spec.entropy_coef > 0  # only then does entropy need gradients
        entropy = algos.entropy_from_logits(logits if bonus else logits.detach())
        if kind == "sft":
            return algos.sft_loss(logprobs, pb.mask), {"entropy": entropy}
        kl = None
        if self.ref_model is not None and not self.spec.kl_in_reward:
            with torch.no_grad():
                ref = algos.token_logprobs(self._forward(self.ref_model, pb), pb.targets)
            kl = algos.kl_estimator(self.spec.kl_estimator)(logprobs, ref)
        s = self.spec
        old, weights = pb.old_logprobs, None
        if pb.behaviour_logprobs is not None:
            # Off-policy batch: one optimizer step per batch, so the proximal ("old") policy of the PPO
            # ratio is exactly this forward's, before the step; TIS corrects for the older sampler.
            old = logprobs.detach()
            weights, capped = algos.truncated_importance_weights(old, pb.behaviour_logprobs, s.tis_cap)
        per_token, stats = algos.policy_loss(logprobs, old, pb.advantages, clip_low=s.clip_low,
                                             clip_high=s.clip_high, dual_clip=s.dual_clip, kl=kl, kl_coef=s.kl_coef,
                                             entropy=entropy, entropy_coef=s.entropy_coef, is_weights=weights)
        stats["entropy"] = entropy
        if weights is not None:
            stats.update(algos.importance_weight_stats(old, pb.behaviour_logprobs, capped))
        return per_token, stats

    @torch.no_grad()
    def _response_logprobs(self, model: Any, batch: TrainBatch, parts: int | None = None) -> list[list[float]]:
        """Response-token logprobs under `model`, in `parts` micro-batches (default: as many as needed).

        An empty micro-batch still runs a one-token forward: under ZeRO-3 every forward gathers the
        weights collectively, so all ranks must run the same number of them."""
        out: list[list[float]] = []
        for part in split(batch, parts or max(1, math.ceil(len(batch) / self.spec.micro_batch_size))):
            pb = pad(part if len(part) else TrainBatch([[self.pad_id]], [[self.pad_id]], [], [0.0], []),
                     self.pad_id, self.device)
            values = pb.response_values(algos.token_logprobs(self._forward(model, pb), pb.targets))
            out += values if len(part) else []
        return out

    def logprobs(self, batch: TrainBatch) -> list[list[float]]:
        """Response-token logprobs of this rank's shard of `batch` under the current weights (all ranks
        must call it; `protocol.batch.unshard` puts the ranks' results back in batch order)."""
        self.engine.eval()
        parts = max(1, math.ceil(len(batch) / self.world_size / self.spec.micro_batch_size))
        return self._response_logprobs(self.engine, batch.shard(self.rank, self.world_size), parts)

    def ref_logprobs(self, batch: TrainBatch) -> list[list[float]]:
        """Reference-model logprobs of this rank's shard of `batch` (for the KL-in-reward penalty).

        The reference model is a plain per-rank copy (no ZeRO), so each rank scores only its shard.
        """
        if self.ref_model is None:
            raise RuntimeError("no reference model: it is loaded only when kl_coef > 0")
        return self._response_logprobs(self.ref_model, batch.shard(self.rank, self.world_size))

    # ---- weights out -------------------------------------------------------------------------
    def weight_layout(self) -> list[tuple[str, tuple[int, ...]]]:
        """Names and full shapes, in the order every export streams them."""
        return [(n, tuple(p.ds_shape) if hasattr(p, "ds_shape") else tuple(p.shape))
                for n, p in self.engine.module.named_parameters()]

    def _gathered(self, names: list[str]):
        """Full tensors for `names` on every rank (ZeRO-3 gathers; other stages hold them already)."""
        if self._params is None:  # built once: a dict per bucket was a per-sync cost
            self._params = dict(self.engine.module.named_parameters())
        chosen = [self._params[n] for n in names]
        if self.spec.zero_stage == 3:
            import deepspeed

            return deepspeed.zero.GatheredParameters(chosen, modifier_rank=None), chosen
        return nullcontext(), chosen

    def _bucket_values(self, buckets: list[list[tuple]]) -> Iterator[tuple[list[TensorMeta], list[torch.Tensor]]]:
        """Gather bucket by bucket on every rank (ZeRO-3 needs all, in order); yields only on rank 0.
        Every rank must exhaust the iterator."""
        for bucket in buckets:
            metas = [TensorMeta(*m) for m in bucket]
            context, tensors = self._gathered([m.name for m in metas])
            with context:
                if self.rank == 0:
                    yield metas, [t.data for t in tensors]

    def _export_into(self, buffer: FlatBuffer | None, buckets: list[list[tuple]]) -> None:
        for metas, values in self._bucket_values(buckets):
            for meta, value in zip(metas, values):
                buffer.write(meta, value)  # casts to the rollout dtype inside the copy

    def export_to_shm(self, path: str, version: int, nbytes: int, buckets: list[list[tuple]]) -> float:
        """Write the weights bucket by bucket into the shared segment and stamp each bucket ready, so
        engines load bucket i while this writes bucket i+1. Every rank gathers (ZeRO-3, same order);
        only rank 0 writes. Never waits for a reader. Returns seconds."""
        import time

        start = time.perf_counter()
        if self.rank == 0:
            metas = [[TensorMeta(*m) for m in bucket] for bucket in buckets]
            if self.shm is None or not self.shm.matches(path, metas):
                self.shm = StreamSegment(path, metas, nbytes, create=True)
        for index, (_, values) in enumerate(self._bucket_values(buckets)):
            self.shm.publish(index, version, values)  # casts to the rollout dtype inside the copy
        return time.perf_counter() - start

    def export_ipc(self, nbytes: int, buckets: list[list[tuple]]) -> bytes | None:
        """Colocated GPU: write into one reused GPU buffer; rank 0 returns its CUDA IPC handle."""
        if self.rank == 0 and (self.ipc is None or self.ipc.tensor.numel() < nbytes):
            self.ipc = FlatBuffer(torch.empty(nbytes, dtype=torch.uint8, device=self.device))
            self.ipc_handle = ipc_handle(self.ipc)
        self._export_into(self.ipc, buckets)
        if self.rank != 0:
            return None
        torch.cuda.synchronize(self.device)  # receivers read on other streams/processes
        return self.ipc_handle

    def open_weight_group(self, host: str, port: int, world_size: int, timeout_s: float,
                          rank_names: list[str] | None = None) -> None:
        if self.rank == 0:
            backend = "gloo" if self.spec.device == "cpu" else "nccl"
            self.weight_group = open_broadcast_group(host, port, 0, world_size, backend, timeout_s, rank_names)
        self.weight_timeout_s = timeout_s

    def export_broadcast(self, buckets: list[list[tuple]]) -> None:
        """Broadcast each bucket from rank 0 to every rollout rank (one bounded collective per bucket)."""
        for metas, values in self._bucket_values(buckets):
            broadcast_bucket(self.weight_group, metas, self.device, self.weight_timeout_s, values)

    def save_hf(self, path: str) -> None:
        """Write a Hugging Face model directory (loadable by transformers and vLLM) from rank 0."""
        layout = self.weight_layout()
        names = [n for n, _ in layout]
        context, tensors = self._gathered(names)
        with context:
            if self.rank == 0:
                state = {n: t.data.detach().clone().cpu() for n, t in zip(names, tensors)}
                self.engine.module.save_pretrained(path, state_dict=state)

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
        return None if seen == token else f"learner[{self.rank}] on node {node_ip()} reads {seen!r} in {token_file}"

    def load_checkpoint(self, path: str) -> None:
        """Restore what `save_checkpoint` wrote (all ranks, same world size and ZeRO stage)."""
        loaded, _ = self.engine.load_checkpoint(path, tag="deepspeed", load_optimizer_states=True,
                                                load_lr_scheduler_states=True)
        if loaded is None:
            raise FileNotFoundError(f"no DeepSpeed checkpoint in {path}/deepspeed")
        set_rng_state(torch.load(os.path.join(path, f"rng_rank{self.rank}.pt"), weights_only=False))

