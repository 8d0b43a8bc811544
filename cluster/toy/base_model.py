"""The embedded base model: a tiny Qwen2 built locally, warmed up by supervised fine-tuning that
runs through the learner's own DeepSpeed path (so SFT is a real capability, not a side script).
Built on first use and cached under model.cache_dir, keyed by everything that shapes it.
"""
from __future__ import annotations

import hashlib
import json
import shutil
import time
from pathlib import Path
from typing import Any

from tqdm import tqdm

from cluster.config import Config
from cluster.handles.groups import LearnerGroup
from cluster.infra.placement_group import Placement
from cluster.toy.tiny_model import EOS, build_random_model
from protocol.batch import TrainBatch
from tasks import task_for

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "merges.txt")


def cache_key(cfg: Config) -> str:
    # The preset only names a shape: the fields decide the model.
    task = task_for(cfg.data.kind)
    shape = {"tiny": cfg.model.tiny.model_dump(exclude={"preset"}), "warmup": cfg.model.warmup.model_dump(),
             "seed": cfg.train.seed, "task": task.__name__, "task_version": task.VERSION, "version": 2}
    return hashlib.sha256(json.dumps(shape, sort_keys=True).encode()).hexdigest()[:12]


def tiny_model_dir(cfg: Config) -> Path:
    """Where the tiny base model of this config is cached (it may not be built yet)."""
    return Path(cfg.model.cache_dir) / f"tiny-{cache_key(cfg)}"


def resolve_model(cfg: Config, placement: Placement) -> str:
    """The model directory the run starts from: model.path, or the cached tiny base model."""
    if cfg.model.path:
        if not (Path(cfg.model.path) / "config.json").is_file():
            raise FileNotFoundError(f"model.path: no Hugging Face model (config.json) in {cfg.model.path}")
        return cfg.model.path
    out = tiny_model_dir(cfg)
    if (out / "config.json").is_file():
        print(f"base model: cached at {out}")
        return str(out)
    return str(build_base_model(cfg, placement, out))


def warmup_pairs(cfg: Config) -> list[tuple[str, str]]:
    """The warm-up's (prompt, response) pairs in training order: the skill stage, then the habit stage
    (the last `habit_steps` steps, which set how often the base model works a sum out)."""
    w, task = cfg.model.warmup, task_for(cfg.data.kind)
    habit = min(w.habit_steps, w.steps)
    kinds = {"self_check_fraction": w.self_check_fraction, "rephrased_fraction": w.rephrased_fraction}
    skill = task.warmup_pairs((w.steps - habit) * w.batch_size, 1000 + cfg.train.seed,
                              worked_fraction=w.skill_worked_fraction, recheck_fraction=w.skill_recheck_fraction, **kinds)
    return skill + task.warmup_pairs(habit * w.batch_size, 2000 + cfg.train.seed, worked_fraction=w.worked_fraction,
                                     recheck_fraction=w.recheck_fraction, **kinds)


def sft_batch(pairs: list[tuple[str, str]], tokenizer: Any, eos_id: int) -> TrainBatch:
    """(prompt, response) texts as a supervised batch: every response token (and EOS) in the loss."""
    prompts = [tokenizer(p, add_special_tokens=False)["input_ids"] for p, _ in pairs]
    responses = [tokenizer(r, add_special_tokens=False)["input_ids"] + [eos_id] for _, r in pairs]
    return TrainBatch(prompts, responses, [], [0.0] * len(prompts), [[1.0] * len(r) for r in responses])


def fixed_build(cfg: Config) -> Config:
    """The base model is one artifact per cache_key (its shape, warm-up and seed): it is built in fp32 with
    micro-batches of learner.micro_batch_size samples whatever dtype and token budget the run trains with,
    so a bf16 run (model.dtype auto on a CPU with bf16 units) and an fp32 one start from the same model."""
    return cfg.model_copy(update={"model": cfg.model.model_copy(update={"dtype": "float32"}),
                                  "learner": cfg.learner.model_copy(update={"max_tokens_per_micro_batch": None})})


def build_base_model(cfg: Config, placement: Placement, out: Path, pairs: list[tuple[str, str]] | None = None,
                     corpus: list[str] | None = None) -> Path:
    """Train the tokenizer on `corpus`, make a random tiny model, fine-tune it on the (prompt, response)
    `pairs` in model.warmup.batch_size batches, and move it to `out`. Defaults: the embedded task's
    corpus and warm-up (`warmup_pairs`)."""
    from transformers import AutoTokenizer

    start = time.perf_counter()
    staging = out.with_name(out.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    corpus = corpus if corpus is not None else task_for(cfg.data.kind).tokenizer_corpus()
    random_dir = build_random_model(cfg.model.tiny, corpus, staging / "random", cfg.train.seed)
    if cfg.model.warmup.steps == 0 and pairs is None:  # the random model is the base model (no learner needed)
        return _publish(random_dir, out, start)
    tokenizer = AutoTokenizer.from_pretrained(random_dir)
    pairs = pairs if pairs is not None else warmup_pairs(cfg)
    size, eos_id = cfg.model.warmup.batch_size, tokenizer.convert_tokens_to_ids(EOS)
    learners = LearnerGroup(fixed_build(cfg), str(random_dir), placement, kl_coef=0.0, lr=cfg.model.warmup.lr)
    try:
        bar = tqdm(range(0, len(pairs), size), desc="base model: supervised warm-up", unit="step")
        for lo in bar:
            loss = learners.train(sft_batch(pairs[lo: lo + size], tokenizer, eos_id), loss="sft")["loss"]
            bar.set_postfix(loss=f"{loss:.3f}")
        learners.save_hf(str(staging / "model"))
    finally:
        learners.kill()
    for name in TOKENIZER_FILES:
        shutil.copy(random_dir / name, staging / "model" / name)
    return _publish(staging / "model", out, start)


def _publish(model_dir: Path, out: Path, start: float) -> Path:
    """Move the finished model into the cache (atomic: a crash mid-build never leaves a half model)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(out, ignore_errors=True)
    model_dir.rename(out)
    shutil.rmtree(out.with_name(out.name + ".partial"), ignore_errors=True)
    print(f"base model: built in {time.perf_counter() - start:.0f}s -> {out}")
    return out
