"""The policy's DeepSpeed ZeRO rank (learner/ds_rank.py has the group mechanics: setup, the mini-batch
update, checkpoints). The driver runs `world_size` of these as Ray actors and calls every method on
all ranks at once.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import functools
import time
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any, Callable, Iterator

import torch

from learner import core_algos as algos
from learner.batching import PaddedBatch
from learner.ds_rank import DeepSpeedRank, RankSpec
from learner.policy_model import PolicyModel, logprob_temperature
from protocol import transports
from protocol.batch import TrainBatch
from protocol.weight_sync import TensorMeta


@dataclass
class LearnerSpec(RankSpec):
    """The policy rank's settings; every field comes from the config (cluster/loop/specs.py `spec_from`)."""

    clip_low: float
    clip_high: float
    dual_clip: float | None
    loss_agg: str  # a mode of learner/aggregation.py (SFT always uses token_mean)
    max_response_len: int  # fixed normaliser of loss_agg="seq_mean_token_sum_norm"
    entropy_coef: float
    kl_coef: float  # > 0 loads a frozen reference model
    kl_estimator: str
    kl_in_reward: bool  # the driver penalises rewards (ref_logprobs); no KL loss term here
    tis: str  # importance correction against the rollout engine's log-probs: "off", "token", "sequence"
    tis_cap: float | None
    logprob_chunk_tokens: int  # response positions whose full-vocabulary logits exist at once (policy_model.py)
    temperature: float  # rollout.temperature: every RL log-prob (old, new, reference, entropy) is at it


def forward_logprobs(model: Any, pb: PaddedBatch, temperature: float, entropy: str | None = None
                     ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The one forward of the policy (a PolicyModel, or the DeepSpeed engine around one): log-probs of the
    target tokens under softmax(logits / `temperature`), [B, L-1], and the next-token entropy of that
    distribution when asked ("detached", or "grad" for the entropy bonus; None: not computed). Both are
    computed at the response positions only, in chunks (learner/policy_model.py), and hold 0 elsewhere;
    the losses weigh only response tokens."""
    rows, cols = pb.response_index()
    logprobs, ent = model(input_ids=pb.input_ids, attention_mask=pb.attention_mask, rows=rows, cols=cols,
                          targets=pb.targets[rows, cols], entropy=entropy, temperature=temperature)
    return pb.scatter(rows, cols, logprobs), None if ent is None else pb.scatter(rows, cols, ent)


class LearnerWorker(DeepSpeedRank):
    spec: LearnerSpec

    def __init__(self, rank: int, world_size: int, spec: LearnerSpec) -> None:
        super().__init__(rank, world_size, spec)
        self.ref_model: Any = None
        self.transports: dict[str, transports.Transport] = {}  # the learner side of each open weight sync, by key
        self._params: dict[str, torch.nn.Parameter] | None = None  # name -> parameter, built at the first export
        self.temperature = logprob_temperature(spec.temperature)
        self.single_update = spec.ppo_epochs * spec.ppo_mini_batches == 1
        self.old_from_forward = False  # this train_step takes the old log-probs from its own forward

    def _build_model(self, dtype: torch.dtype) -> torch.nn.Module:
        from transformers import AutoModelForCausalLM

        lm = AutoModelForCausalLM.from_pretrained(self.spec.model_path, dtype=dtype)
        self.pad_id = int(lm.config.pad_token_id or lm.config.eos_token_id or 0)
        self._checkpointing(lm)
        return PolicyModel(lm, self.spec.logprob_chunk_tokens)

    def _after_setup(self) -> None:
        """Under ZeRO-3 the head's chunk count is agreed over the ranks. With kl_coef > 0, the frozen
        reference model: under ZeRO-3 an inference engine of its own (its parameters partitioned over
        the ranks like the policy's, gathered layer by layer in each forward, OpenRLHF's layout with
        --colocate_actor_ref), otherwise a plain copy per rank (ZeRO 0-2 hold the full policy anyway)."""
        if self.spec.zero_stage == 3:
            self.engine.module.same_chunk_count = self._max_over_ranks
        if self.spec.kl_coef > 0:
            from transformers import AutoModelForCausalLM

            from protocol.weight_sync import DTYPES

            lm = AutoModelForCausalLM.from_pretrained(self.spec.model_path, dtype=DTYPES[self.spec.dtype])
            ref = PolicyModel(lm, self.spec.logprob_chunk_tokens).requires_grad_(False).eval()
            if self.spec.zero_stage == 3:
                self.ref_model = self._frozen_engine(ref)
                ref.same_chunk_count = self._max_over_ranks
            else:
                self.ref_model = ref.to(self.device)

    # ---- training ----------------------------------------------------------------------------
    def train_step(self, batch: TrainBatch, seed: int | None = None, loss: str = "policy") -> dict[str, float]:
        """The update on `batch`: algorithm.ppo_epochs x ppo_mini_batches optimizer steps, the sample
        order of each epoch shuffled from `seed` (the driver derives it from train.seed and the step).
        The policy loss needs `batch.old_logprobs` (from `old_logprobs` with the same seed) and, with a
        KL loss term, `batch.ref_logprobs`. `loss="sft"`: the supervised warm-up, one step per batch,
        token-mean NLL. Returns per-rank sums (see DeepSpeedRank._optimise)."""
        try:
            return self._train_step(batch, seed, loss)
        finally:
            if self.spec.device == "cpu":
                release_freed_memory()

    def _train_step(self, batch: TrainBatch, seed: int | None, loss: str) -> dict[str, float]:
        if loss == "sft":
            return self._optimise(batch, seed, self._sft_loss, "token_mean", epochs=1, count=1)
        self.old_from_forward = not batch.old_logprobs
        if len(batch) and self.old_from_forward and not self.single_update:
            raise ValueError("train_step: the batch has no old_logprobs (needed with more than one optimizer step "
                             "per batch); compute them with old_logprobs() first")
        if len(batch) and not self.old_from_forward and len(batch.old_logprobs) != len(batch):
            raise ValueError(f"train_step: {len(batch.old_logprobs)} old_logprobs for {len(batch)} samples")
        return self._optimise(batch, seed, self._policy_loss, self.spec.loss_agg, self.spec.max_response_len)

    def _sft_loss(self, pb: PaddedBatch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        logprobs, entropy = forward_logprobs(self.engine, pb, 1.0, entropy="detached")  # plain NLL
        return algos.sft_loss(logprobs, pb.mask), {"entropy": entropy}

    def _policy_loss(self, pb: PaddedBatch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        s = self.spec
        logprobs, entropy = forward_logprobs(self.engine, pb, self.temperature,
                                             entropy="grad" if s.entropy_coef > 0 else "detached")
        kl = None
        if s.kl_coef > 0 and not s.kl_in_reward:
            if pb.ref_logprobs is None:
                raise ValueError("train_step: kl_coef > 0 needs batch.ref_logprobs (ref_logprobs() first)")
            kl = algos.kl_estimator(s.kl_estimator)(logprobs, pb.ref_logprobs)
        # One optimizer step per batch: the old policy is the current one, so the training forward's own
        # log-probs (detached) are the old log-probs, bit for bit what a separate pass would compute in the
        # same micro-batches (DeepSpeedRank._score) -- that pass is skipped (cluster/loop/update.py).
        old = logprobs.detach() if self.old_from_forward else pb.old_logprobs
        weights = capped = None
        if s.tis != "off" and pb.behaviour_logprobs is not None:
            weights, capped = algos.truncated_importance_weights(old, pb.behaviour_logprobs, s.tis_cap, s.tis)
        per_token, stats = algos.policy_loss(logprobs, old, pb.advantages, clip_low=s.clip_low,
                                             clip_high=s.clip_high, dual_clip=s.dual_clip, kl=kl, kl_coef=s.kl_coef,
                                             entropy=entropy, entropy_coef=s.entropy_coef, is_weights=weights)
        stats["entropy"], stats["ratio_mean"] = entropy, stats.pop("ratio")
        if pb.behaviour_logprobs is not None:  # the train/inference mismatch, |log pi_old - log pi_rollout|
            stats["rollout_logprob_diff_mean"] = (old - pb.behaviour_logprobs).abs()
        if weights is not None:
            stats.update(algos.importance_weight_stats(old, pb.behaviour_logprobs, capped, s.tis))
        return per_token, stats

    def old_logprobs(self, batch: TrainBatch, seed: int | None = None) -> list[tuple[int, list[float]]]:
        """(sample index, log-probs) of this rank's samples under the current weights, before any update,
        in the micro-batches the first mini-batch of `train_step(batch, seed)` trains on."""
        self.engine.eval()
        return self._score(batch, seed, lambda pb: forward_logprobs(self.engine, pb, self.temperature)[0])

    def ref_logprobs(self, batch: TrainBatch, seed: int | None = None) -> list[tuple[int, list[float]]]:
        """(sample index, reference-model log-probs) of this rank's samples (the KL term or penalty).
        The reference model is loaded only when kl_coef > 0 (sharded under ZeRO-3: `_after_setup`)."""
        if self.ref_model is None:
            raise RuntimeError("no reference model: it is loaded only when kl_coef > 0")
        return self._score(batch, seed, lambda pb: forward_logprobs(self.ref_model, pb, self.temperature)[0])

    def logprobs(self, batch: TrainBatch, temperature: float | None = None) -> list[tuple[int, list[float]]]:
        """(sample index, response log-probs) of this rank's samples under the current weights, at
        `temperature` (None: the rollout's), in the learner's micro-batches; all ranks must call it
        (cluster/handles/groups.py merges them)."""
        self.engine.eval()
        t = self.temperature if temperature is None else logprob_temperature(temperature)
        return self._score(batch, None, lambda pb: forward_logprobs(self.engine, pb, t)[0])

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

    def _bucket_values(self, buckets: list[list[TensorMeta]]) -> Iterator[tuple[list[TensorMeta], list[torch.Tensor]]]:
        """Gather bucket by bucket (ZeRO-3: every rank, in the same order, or all hang) and yield each
        bucket's metas and full values. Every rank must exhaust the iterator."""
        for metas in buckets:
            context, tensors = self._gathered([m.name for m in metas])
            with context:
                yield metas, [t.data for t in tensors]

    def open_weight_transport(self, key: str, name: str, setup: dict[str, Any]) -> None:
        """The learner side of transport `name` (protocol/transports/) for the weight sync `key`; opened on
        every rank that sends. Several syncs (keys) can be open at once, each with its own buffers."""
        transport = transports.get(name)(transports.SyncSetup.from_dict(setup))
        if self.rank == 0 or transport.every_rank_exports:
            transport.open_sender(self.rank, self.device)
        self.close_weight_transport(key)
        self.transports[key] = transport

    def close_weight_transport(self, key: str) -> None:
        old = self.transports.pop(key, None)
        if old is not None:
            old.close()

    def export_weights(self, key: str, version: int) -> tuple[float, Any]:
        """Send weight `version` through sync `key`'s transport. Every rank must call it (ZeRO-3 gathers);
        rank 0 (every rank, for transports that say so) sends. Returns (seconds, this rank's payload)."""
        if key not in self.transports:
            raise RuntimeError(f"export_weights: no weight transport open for sync {key!r}")
        transport = self.transports[key]
        self.exported_steps = int(self.engine.global_steps)  # which weights went out (see last_export_steps)
        start = time.perf_counter()
        buckets = self._bucket_values(transport.setup.metas())
        payload = None
        if self.rank == 0 or transport.every_rank_exports:
            payload = transport.send(buckets, version)
        for _ in buckets:  # the rest of the gathers, on ranks that do not send
            pass
        return time.perf_counter() - start, payload

    def last_export_steps(self) -> int:
        """Optimizer steps the weights of the last export had taken: tells the driver whether an export made
        between syncs (a restarted engine taken back into a group) carried the synced weights or newer ones."""
        return getattr(self, "exported_steps", 0)

    def save_hf(self, path: str) -> None:
        """Write a Hugging Face model directory (loadable by transformers and vLLM) from rank 0."""
        layout = self.weight_layout()
        names = [n for n, _ in layout]
        context, tensors = self._gathered(names)
        with context:
            if self.rank == 0:
                state = {n: t.data.detach().clone().cpu() for n, t in zip(names, tensors)}
                self.engine.module.lm.save_pretrained(path, state_dict=state)


@functools.cache
def _malloc_trim() -> Callable[[int], int] | None:
    libc = ctypes.util.find_library("c")
    return getattr(ctypes.CDLL(libc), "malloc_trim", None) if libc else None


def release_freed_memory() -> None:
    """Hand what the allocator still holds of the step's freed memory back to the OS (glibc's malloc_trim,
    a few ms). On a CPU node the learner shares the host with the engines, and Ray's memory monitor counts
    resident memory, not live tensors."""
    trim = _malloc_trim()
    if trim is not None:
        trim(0)
