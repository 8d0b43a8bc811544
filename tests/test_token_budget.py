"""`auto` in the config: `model.dtype` (cluster/planning/dtype.py) and `<group>.max_tokens_per_micro_batch`
(cluster/planning/token_budget.py).

- The dtype detection from given CPU flag sets and cpuinfo files, and what `auto` becomes on this machine.
- The token budget the plan picks, with the host's or the GPU's memory given as numbers: the step's share
  when it fits, else the largest budget that fits; `python -m cluster.memory` prints the choice.
- Real DeepSpeed (ZeRO-2, 2 gloo ranks in spawned processes, `LearnerWorker` around a random 2-layer Qwen2
  from transformers, specs built by cluster/loop/specs.py from a loaded config): one GRPO step with the
  `auto` budget (2048 tokens: each rank's 16 samples sorted by length and packed into 2-3 micro-batches)
  against fixed micro-batches of 4 samples in batch order: the same loss, gradient norm and weights up to float rounding; and one step with
  `model.dtype: auto`, which on a CPU with bf16 units trains bf16 weights with fp32 master weights.
"""
from __future__ import annotations

import dataclasses
import os
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import pytest
import torch

from cluster.config import Config, load_config
from cluster.planning.dtype import auto_dtype, cpu_flags
from cluster.planning.host_memory import demand, host_budget, with_token_budget
from cluster.planning.memory_model import GIB, predict
from cluster.planning.token_budget import CPU_MICRO_BATCH_TOKENS, resolve_token_budget, step_share_tokens
from tests.conftest import ROOT

TINY = str(ROOT / "configs" / "tiny.yaml")
# configs/tiny.yaml chooses `auto` for both; each test here sets the one it is about on top of fixed ones.
FIXED = ["model.dtype=float32", "learner.max_tokens_per_micro_batch=null"]
SAMPLES, VOCAB, LR = 32, 96, 1e-3


# ---- model.dtype: auto ---------------------------------------------------------------------------------
@pytest.mark.parametrize("flags, want", [
    ({"fpu", "avx2", "avx512f", "avx512_bf16"}, "bfloat16"),  # Cooper Lake / Zen 4 and later
    ({"avx512f", "amx_tile", "amx_bf16"}, "bfloat16"),  # Sapphire Rapids AMX
    ({"fp", "asimd", "bf16"}, "bfloat16"),  # aarch64 Features (Neoverse V1/N2)
    ({"fpu", "avx2", "avx512f", "avx512_vnni"}, "float32"),  # Cascade Lake: AVX-512 without bf16
    (set(), "float32"),
])
def test_auto_dtype_follows_the_cpu_flags(flags, want):
    dtype, why = auto_dtype("cpu", frozenset(flags))
    assert dtype == want
    assert ("bf16 units" in why) == (want == "bfloat16")


def test_auto_dtype_is_bf16_on_gpus_whatever_the_host_cpu():
    assert auto_dtype("gpu", frozenset())[0] == "bfloat16"


def test_cpu_flags_read_x86_and_aarch64_cpuinfo(tmp_path: Path):
    x86, arm = tmp_path / "x86", tmp_path / "arm"
    x86.write_text("processor\t: 0\nvendor_id\t: GenuineIntel\nflags\t\t: fpu sse2 avx512f avx512_bf16\n\n"
                   "processor\t: 1\nflags\t\t: fpu\n")
    arm.write_text("processor\t: 0\nBogoMIPS\t: 50.00\nFeatures\t: fp asimd sve bf16 i8mm\n")
    assert cpu_flags(x86) == {"fpu", "sse2", "avx512f", "avx512_bf16"}
    assert auto_dtype("cpu", cpu_flags(arm))[0] == "bfloat16"
    assert cpu_flags(tmp_path / "missing") is None


def test_auto_dtype_resolves_when_the_config_loads(tmp_path: Path):
    """On this machine (its /proc/cpuinfo): the loaded config holds the concrete dtype, and says why."""
    flags = cpu_flags()
    want = "bfloat16" if flags and flags & {"avx512_bf16", "amx_bf16", "bf16"} else "float32"
    cfg = load_config(TINY, [*FIXED, "model.dtype=auto"])
    assert cfg.model.dtype == want and cfg.model.dtype_note.startswith(f"model.dtype=auto -> {want}")
    assert load_config(TINY, [*FIXED, "model.dtype=auto", "cluster.device=gpu"]).model.dtype == "bfloat16"
    assert load_config(None).model.dtype == "float32" and load_config(None).model.dtype_note is None  # schema default
    assert load_config(TINY).model.dtype == want  # configs/tiny.yaml asks for auto


# ---- max_tokens_per_micro_batch: auto ------------------------------------------------------------------
def _auto(*overrides: str) -> Config:
    return load_config(TINY, [*FIXED, "learner.max_tokens_per_micro_batch=auto", *overrides])


def test_auto_budget_with_memory_to_spare_is_the_step_share_capped_on_cpu():
    big_host = (64 * GIB, 60 * GIB)
    cfg = _auto()
    share = 32 * 8 // 2 * 256  # 32 prompts x 8 samples over 2 ranks, at max_model_len
    assert step_share_tokens(cfg, cfg.learner) == share
    planned, note = resolve_token_budget(cfg, *big_host)
    assert planned.learner.max_tokens_per_micro_batch == CPU_MICRO_BATCH_TOKENS < share
    assert f"auto -> {CPU_MICRO_BATCH_TOKENS} (on CPU at most" in note
    assert cfg.learner.max_tokens_per_micro_batch == "auto"  # the given config is left as it was
    # a full-length sequence longer than the CPU ceiling still fits one micro-batch
    assert resolve_token_budget(_auto("rollout.max_model_len=3000"), *big_host)[0].learner.max_tokens_per_micro_batch == 3000
    # a step smaller than the ceiling: its share
    small = _auto("train.prompts_per_step=2", "rollout.samples_per_prompt=4")
    assert resolve_token_budget(small, *big_host)[0].learner.max_tokens_per_micro_batch == 2 * 4 // 2 * 256
    # GPU: no speed ceiling, the share (of a mini-batch)
    for minis, want in ((1, share), (4, share // 4)):
        gpu = _auto("cluster.device=gpu", "cluster.gpu_memory_gib=80", f"algorithm.ppo_mini_batches={minis}")
        assert resolve_token_budget(gpu)[0].learner.max_tokens_per_micro_batch == want
    # the critic shares the schema and the planning
    gae = _auto("algorithm.advantage=gae", "critic.max_tokens_per_micro_batch=auto")
    planned = resolve_token_budget(gae, *big_host)[0]
    assert planned.critic.max_tokens_per_micro_batch == planned.learner.max_tokens_per_micro_batch == CPU_MICRO_BATCH_TOKENS


def test_auto_budget_on_a_small_host_is_the_largest_that_fits():
    cfg = _auto("model.tiny.preset=qwen2-100m")
    total, available = 16 * GIB, 14 * GIB
    planned, note = resolve_token_budget(cfg, total, available)
    tokens, budget = planned.learner.max_tokens_per_micro_batch, host_budget(total, available)
    assert cfg.rollout.max_model_len < tokens < CPU_MICRO_BATCH_TOKENS
    assert demand(planned, available)[0] <= budget
    assert demand(with_token_budget(cfg, {"learner": tokens + 128, "critic": tokens + 128}), available)[0] > budget
    assert "the largest that this host's memory plan" in note


def test_auto_budget_on_gpu_fits_the_gpu_memory():
    cfg = load_config(TINY, [*FIXED, "learner.max_tokens_per_micro_batch=auto", "model.tiny.preset=qwen2-100m",
                             "cluster.device=gpu", "cluster.gpu_memory_gib=8"])
    planned, _ = resolve_token_budget(cfg)
    tokens = planned.learner.max_tokens_per_micro_batch
    assert cfg.rollout.max_model_len <= tokens < step_share_tokens(cfg, cfg.learner)
    learner = predict(planned)[0]
    assert learner.total <= learner.budget
    bigger = predict(with_token_budget(cfg, {"learner": tokens + 128, "critic": tokens + 128}))[0]
    assert bigger.total > bigger.budget


def test_memory_cli_prints_the_planned_budget(capsys):
    from cluster.memory import main

    assert main(["--config", TINY, "learner.max_tokens_per_micro_batch=auto", "model.dtype=auto"]) == 0
    out = capsys.readouterr().out
    planned = resolve_token_budget(load_config(TINY, [*FIXED, "learner.max_tokens_per_micro_batch=auto"]))[0]
    tokens = planned.learner.max_tokens_per_micro_batch
    assert f"learner.max_tokens_per_micro_batch=auto -> {tokens}" in out
    assert f"{tokens} tokens/micro-batch" in out and "model.dtype=auto -> " in out


def test_the_train_command_plans_auto_and_says_what_it_chose(capsys):
    from cluster.train import planned

    cfg = planned(_auto("model.dtype=auto"))
    tokens, out = cfg.learner.max_tokens_per_micro_batch, capsys.readouterr().out
    assert isinstance(tokens, int) and f"learner.max_tokens_per_micro_batch=auto -> {tokens}" in out
    assert f"model.dtype=auto -> {cfg.model.dtype}" in out


def test_an_auto_budget_that_cannot_be_planned_here_is_a_config_error(tmp_path: Path):
    from cluster.config import ConfigError
    from cluster.train import planned

    with pytest.raises(ConfigError, match="cannot be planned on this machine"):
        planned(_auto(f"model.path={tmp_path / 'elsewhere'}"))  # no config.json here: no architecture to plan with


def test_an_unplanned_auto_budget_never_reaches_the_ranks():
    from cluster.loop.specs import learner_spec

    with pytest.raises(ValueError, match="unplanned"):
        learner_spec(load_config(TINY, [*FIXED, "learner.max_tokens_per_micro_batch=auto"]), "/m")


# ---- one real DeepSpeed step -------------------------------------------------------------------------------
def _model(path: Path) -> str:
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0)
    config = Qwen2Config(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256, pad_token_id=0)
    Qwen2ForCausalLM(config).save_pretrained(path)
    return str(path)


def _batch() -> Any:
    """GRPO-like samples of very different lengths, in an order that mixes them."""
    from protocol.batch import TrainBatch

    gen = torch.Generator().manual_seed(7)
    rand = lambda lo, hi: int(torch.randint(lo, hi, (1,), generator=gen))  # noqa: E731
    prompts = [torch.randint(1, VOCAB, (rand(3, 12),), generator=gen).tolist() for _ in range(SAMPLES)]
    responses = [torch.randint(1, VOCAB, (rand(1, 230),), generator=gen).tolist() for _ in range(SAMPLES)]
    advantages = torch.randn(SAMPLES, generator=gen).tolist()
    return TrainBatch(prompts, responses, [], advantages, [[1.0] * len(r) for r in responses])


def _specs(model_path: str) -> dict[str, Any]:
    from cluster.loop.specs import learner_spec

    base = ["train.prompts_per_step=4", "rollout.samples_per_prompt=8", f"learner.lr={LR}", "learner.grad_clip=1e6",
            "learner.micro_batch_size=4"]
    fixed = learner_spec(load_config(TINY, [*FIXED, *base]), model_path)
    auto = learner_spec(resolve_token_budget(load_config(TINY, [*FIXED, *base, "learner.max_tokens_per_micro_batch=auto"]),
                                             64 * GIB, 60 * GIB)[0], model_path)
    bf16 = learner_spec(load_config(TINY, [*FIXED, *base, "model.dtype=auto"]), model_path)
    return {"fixed": fixed, "auto": auto, "dtype_auto": bf16}


def _rank(rank: int, port: int, specs: dict[str, Any]) -> dict[str, Any]:
    """In a fresh process: one train_step of each spec on this rank; rank 0 returns what it saw."""
    os.environ["DS_ACCELERATOR"] = "cpu"
    from learner.worker import LearnerWorker

    out: dict[str, Any] = {}
    batch = _batch()
    for name, spec in specs.items():
        worker = LearnerWorker(rank, 2, spec)
        worker.setup("127.0.0.1", port)
        module = worker.engine.module
        before = {n: p.detach().float().clone() for n, p in module.named_parameters()}
        micros = worker._micro_batches(batch)(list(range(SAMPLES)))
        metrics = worker.train_step(batch, seed=None)
        after = {n: p.detach().float().clone() for n, p in module.named_parameters()}
        master = getattr(worker.engine.optimizer, "single_partition_of_fp32_groups", [None])[0]
        out[name] = {"metrics": metrics, "before": before, "after": after, "micro_batches": len(micros),
                     "param_dtype": str(next(module.parameters()).dtype),
                     "master_dtype": None if master is None else str(master.dtype)}
    return out


@pytest.fixture(scope="module")
def steps(tmp_path_factory) -> tuple[dict[str, Any], dict[str, Any]]:
    from protocol.endpoints import free_port

    specs = _specs(_model(tmp_path_factory.mktemp("qwen2")))
    with ProcessPoolExecutor(2, mp_context=get_context("spawn")) as pool:
        port = free_port()
        ranks = [pool.submit(_rank, r, port, specs) for r in range(2)]
        results = [f.result(timeout=600) for f in ranks]
    return results[0], results[1]


def test_auto_budget_trains_the_same_weights_as_fixed_micro_batches(steps):
    rank0, rank1 = steps
    fixed, auto = rank0["fixed"], rank0["auto"]
    # 16 samples per rank: 4 x 4 in batch order, or sorted by length and packed within auto's 2048 tokens
    assert fixed["micro_batches"] == 4 and 1 < auto["micro_batches"] < 4
    assert auto["metrics"]["loss"] + rank1["auto"]["metrics"]["loss"] == pytest.approx(
        fixed["metrics"]["loss"] + rank1["fixed"]["metrics"]["loss"], rel=1e-5, abs=1e-7)
    assert auto["metrics"]["grad_norm"] == pytest.approx(fixed["metrics"]["grad_norm"], rel=1e-5)
    for name, start in fixed["before"].items():
        assert torch.equal(start, auto["before"][name])
        moved = (fixed["after"][name] - start).abs().max()
        assert moved > 0.5 * LR  # Adam's first step moves every weight with a gradient by about lr
        assert torch.allclose(auto["after"][name], fixed["after"][name], rtol=0, atol=1e-3 * LR), name


def test_auto_dtype_step_trains_bf16_weights_with_fp32_master_weights(steps):
    rank0, _ = steps
    got = rank0["dtype_auto"]
    want = auto_dtype("cpu")[0]
    assert got["param_dtype"] == str(getattr(torch, want))
    if want == "bfloat16":
        assert got["master_dtype"] == "torch.float32"  # DeepSpeed ZeRO-2's fp32 partition the optimizer steps
    assert all(torch.isfinite(t).all() for t in got["after"].values())
    assert sum(float((got["after"][n] - got["before"][n]).abs().sum()) for n in got["before"]) > 0
    assert got["metrics"]["grad_norm"] == pytest.approx(rank0["fixed"]["metrics"]["grad_norm"], rel=0.05)
