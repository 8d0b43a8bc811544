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

from tqdm import tqdm

from cluster import arithmetic
from cluster.config import Config
from cluster.groups import LearnerGroup
from cluster.placement import Placement
from cluster.tiny_model import EOS, build_random_model
from protocol.batch import TrainBatch

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "merges.txt")


def cache_key(cfg: Config) -> str:
    # The preset only names a shape: the fields decide the model (and keep the key of older caches).
    shape = {"tiny": cfg.model.tiny.model_dump(exclude={"preset"}), "warmup": cfg.model.warmup.model_dump(), "seed": cfg.train.seed,
             "version": 1}
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


def sft_batches(cfg: Config, tokenizer: object, eos_id: int) -> list[TrainBatch]:
    w = cfg.model.warmup
    pairs = arithmetic.sft_texts(w.steps * w.batch_size, seed=cfg.train.seed, boxed_fraction=w.boxed_fraction)
    batches = []
    for lo in range(0, len(pairs), w.batch_size):
        prompts, responses = [], []
        for prompt, response in pairs[lo: lo + w.batch_size]:
            prompts.append(tokenizer(prompt, add_special_tokens=False)["input_ids"])
            responses.append(tokenizer(response, add_special_tokens=False)["input_ids"] + [eos_id])
        batches.append(TrainBatch(prompts, responses, [], [0.0] * len(prompts), [[1.0] * len(r) for r in responses]))
    return batches


def build_base_model(cfg: Config, placement: Placement, out: Path) -> Path:
    from transformers import AutoTokenizer

    start = time.perf_counter()
    staging = out.with_name(out.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    random_dir = build_random_model(cfg.model.tiny, arithmetic.tokenizer_corpus(), staging / "random", cfg.train.seed)
    if cfg.model.warmup.steps == 0:  # the random model is the base model (no learner needed)
        return _publish(random_dir, out, start)
    tokenizer = AutoTokenizer.from_pretrained(random_dir)
    batches = sft_batches(cfg, tokenizer, tokenizer.convert_tokens_to_ids(EOS))
    learners = LearnerGroup(cfg, str(random_dir), placement, kl_coef=0.0, lr=cfg.model.warmup.lr)
    try:
        bar = tqdm(batches, desc="base model: supervised warm-up", unit="step")
        for batch in bar:
            bar.set_postfix(loss=f"{learners.train(batch, loss='sft')['loss']:.3f}")
        learners.call("save_hf", str(staging / "model"))
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
