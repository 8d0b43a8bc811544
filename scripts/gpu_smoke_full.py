"""The GPU smoke test's full mode (scripts/gpu_smoke.py runs it after the reduced checks): the real
stack — Ray, vLLM, DeepSpeed — through cluster.loop.trainer.Trainer on a ~1B random Qwen2 with a local
BPE tokenizer, on this machine's GPUs.

- colocated: one vLLM engine and learner rank 0 share GPU 0 (`cluster.colocate=true`,
  `sync.transport=ipc`); 3 GRPO steps (each ends with a weight sync into the engine), then the
  engine's logprobs of a sampled sequence against the learner's (bf16 kernels differ: 0.1 nats max);
- disaggregated, where two GPUs exist: engine on one GPU, learner on the other, weights through vLLM's
  own NCCL weight-transfer engine (`sync.transport=nccl`, the GPU default); one step and the same
  logprob check.

The colocated run uses `cluster.colocate` (docs/cluster.md, "Colocation"): the engine sleeps while the
learner trains and each sync wakes it.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import torch

LOGPROB_TOLERANCE = 0.1  # nats, max over a sequence (bf16: vLLM's kernels vs the learner's forward)


def tokenized_model(out: Path, shape: dict[str, int]) -> str:
    """A random bf16 Qwen2 of the 1B shape whose vocabulary is a BPE trained on the embedded task."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from cluster.toy.tiny_model import EOS, save_tokenizer, train_tokenizer
    from tasks import column_addition

    if (out / "config.json").is_file():
        return str(out)
    out.mkdir(parents=True, exist_ok=True)
    tok = train_tokenizer(column_addition.tokenizer_corpus(), 4096)
    save_tokenizer(tok, out, 4096)
    eos = tok.token_to_id(EOS)
    layer_shape = {k: v for k, v in shape.items() if k != "vocab_size"}
    config = Qwen2Config(**layer_shape, vocab_size=tok.get_vocab_size(), head_dim=shape["hidden_size"] // shape["num_attention_heads"],
                         max_position_embeddings=4096, tie_word_embeddings=False, bos_token_id=eos, eos_token_id=eos,
                         pad_token_id=eos, torch_dtype="bfloat16")
    torch.manual_seed(0)
    with torch.device("cuda"):
        Qwen2ForCausalLM(config).to(torch.bfloat16).save_pretrained(out)
    torch.cuda.empty_cache()  # the engine and learner processes need the GPU memory this process used
    return str(out)


def _logprob_gap(trainer: Any) -> float:
    """Max |engine - learner| logprob over the response of one freshly sampled sequence."""
    from protocol.batch import Prompt, TrainBatch

    prompt = trainer.eval_prompts[0].token_ids
    response = trainer.rollouts.generate([Prompt(0, prompt, "0")], 1, 1.0, seed=5)[0].response_ids
    engine = trainer.rollouts.sequence_logprobs([prompt + response])[0][0][len(prompt) - 1:]
    learner = trainer.learners.logprobs(TrainBatch([prompt], [response], [], [0.0], []))[0]
    return float((torch.tensor(engine) - torch.tensor(learner)).abs().max())


def gpu_used_gib() -> list[float]:
    """Memory in use on each GPU, whoever holds it (the engines and learners are other processes)."""
    import pynvml  # nvidia-ml-py, in requirements/gpu.lock

    pynvml.nvmlInit()
    try:
        return [pynvml.nvmlDeviceGetMemoryInfo(pynvml.nvmlDeviceGetHandleByIndex(i)).used / 2**30
                for i in range(pynvml.nvmlDeviceGetCount())]
    finally:
        pynvml.nvmlShutdown()


def _run(name: str, overrides: list[str], steps: int, work: Path) -> dict[str, Any]:
    from cluster.config import load_config
    from cluster.loop.trainer import Trainer

    out: dict[str, Any] = {"overrides": overrides}
    try:
        cfg = load_config(None, overrides)
    except Exception as err:  # noqa: BLE001  (e.g. a field not in this version's config)
        return {**out, "error": f"{type(err).__name__}: {err}"}
    trainer = Trainer(cfg, work / name)
    try:
        start = time.perf_counter()
        trainer.setup()
        out["setup_seconds"] = time.perf_counter() - start
        samples = [gpu_used_gib()]
        rows = []
        for step in range(steps):
            rows.append(trainer.step(step))
            samples.append(gpu_used_gib())
        out["steps"] = [{k: r[k] for k in ("reward/mean", "train/loss", "train/grad_norm", "time/step_s",
                                             "sync/total_s", "sync/export_s", "sync/load_s", "sync/bytes") if k in r}
                        for r in rows]
        out["policy_version"] = trainer.sync.version
        out["logprob_max_abs_diff"] = _logprob_gap(trainer)
        out["gpu_used_gib_max"] = [max(column) for column in zip(*samples)]  # sampled after setup and each step
    except Exception as err:  # noqa: BLE001  (the report says what failed; the checks fail)
        out["error"] = f"{type(err).__name__}: {err}"
    finally:
        trainer.close()
    return out


def full(args: argparse.Namespace, report: dict[str, Any], shape: dict[str, int]) -> dict[str, bool]:
    """Both runs; returns their checks. `shape`: the reduced mode's ~1B shape (its vocabulary is replaced)."""
    work = Path(args.out) / "work"
    gpus = torch.cuda.device_count()
    model = tokenized_model(work / "model-tokenized", shape)
    common = [f"model.path={model}", "model.dtype=bfloat16", "cluster.device=gpu", "learner.num_ranks=1",
              "learner.zero_stage=3", "learner.lr=1e-5", "learner.micro_batch_size=8", "rollout.num_workers=1",
              "rollout.samples_per_prompt=4", "rollout.max_new_tokens=128", "rollout.max_model_len=512",
              "rollout.gpu_memory_utilization=0.3", "train.prompts_per_step=8", "train.eval_samples=1",
              "data.eval_size=8", "reward.num_workers=2", f"run.output_dir={work}"]
    runs = {"colocated": _run("colocated", common + ["cluster.colocate=true", "sync.transport=ipc"], 3, work)}
    if gpus >= 2:
        runs["disaggregated"] = _run("disaggregated", common + ["sync.transport=nccl"], 1, work)
    else:
        runs["disaggregated"] = {"skipped": "one GPU: the disaggregated NCCL path needs a second one"}
    report["full"] = runs
    (Path(args.out) / "full.json").write_text(json.dumps(runs, indent=2, default=str))
    checks = {}
    for name, run in runs.items():
        if "skipped" not in run:
            checks[f"{name}_ran"] = "error" not in run and run.get("policy_version") == len(run.get("steps", []))
            checks[f"{name}_logprobs_match"] = run.get("logprob_max_abs_diff", float("inf")) < LOGPROB_TOLERANCE
    return checks
