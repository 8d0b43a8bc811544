"""Exact, atomic checkpoints of a run and the checks that make a resume safe.

Layout: `<run>/checkpoints/step_<k>/` holds the learners' DeepSpeed state (`deepspeed/`: weights,
ZeRO optimizer partitions, scheduler, step counters), one RNG file per learner rank, the driver's
RNG state, the config that produced it and `trainer_state.json` (step, policy version, byte sizes
of metrics.jsonl and samples.jsonl at save time). The prompt order needs nothing more: PromptSource
is a pure function of (train.seed, step), and vLLM sampling is seeded from (train.seed, step, prompt).

A save writes `step_<k>.partial/`, renames it to `step_<k>/` (atomic) and then replaces the
`latest` pointer file (temp file + os.replace). A crash mid-save leaves a `.partial` directory that
is never read, so the previous checkpoint stays the one that resumes.
"""
from __future__ import annotations

import json
import os
import pickle
import re
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import yaml

from cluster.config import Config, dump_config
from learner.worker import rng_state, set_rng_state

CHECKPOINTS = "checkpoints"
STATE_FILE = "trainer_state.json"
_STEP_DIR = re.compile(r"^step_(\d+)$")

# Settings that may differ between a run and its resume because they do not change what is trained
# (only how long, how often it is evaluated or saved, and where things are written).
RESUME_MAY_CHANGE = ("train.steps", "train.save_every", "train.keep_checkpoints", "train.eval_every",
                     "train.samples_to_save", "train.benchmark_every", "train.benchmarks", "train.benchmark_dir",
                     "train.benchmark_limit", "run.name", "run.output_dir", "cluster.address", "sync.timeout_s")


class ResumeError(RuntimeError):
    """A run cannot be resumed as asked; the message says why and what to change."""


@dataclass
class TrainerState:
    step: int  # policy steps completed
    policy_version: int  # version the rollout engines serve after this step's sync
    metrics_bytes: int  # size of metrics.jsonl when the checkpoint was taken
    samples_bytes: int  # size of samples.jsonl when the checkpoint was taken
    model_path: str  # the base model: architecture, tokenizer and the KL reference


def _flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        out.update(_flatten(value, name + ".") if isinstance(value, dict) else {name: value})
    return out


def config_changes(saved: dict[str, Any], cfg: Config) -> list[str]:
    """Fields (dotted) whose value differs from the saved config and that change training."""
    old, new = _flatten(saved), _flatten(cfg.model_dump(mode="json"))
    return [f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in sorted(set(old) | set(new))
            if old.get(k) != new.get(k) and k not in RESUME_MAY_CHANGE]


def step_of(path: Path) -> int:
    match = _STEP_DIR.match(path.name)
    if match is None:
        raise ValueError(f"not a checkpoint directory: {path}")
    return int(match.group(1))


class Checkpoints:
    """The checkpoints of one run directory."""

    def __init__(self, run_dir: Path, keep: int) -> None:
        self.root = run_dir / CHECKPOINTS
        self.keep = keep

    def complete(self) -> list[Path]:
        """Finished checkpoints, oldest first (a `.partial` directory never counts)."""
        if not self.root.is_dir():
            return []
        found = [p for p in self.root.iterdir() if _STEP_DIR.match(p.name) and (p / STATE_FILE).is_file()]
        return sorted(found, key=step_of)

    def latest(self) -> Path | None:
        """The `latest` pointer when it names a finished checkpoint, else the newest finished one."""
        pointer = self.root / "latest"
        if pointer.is_file():
            named = self.root / pointer.read_text().strip()
            if _STEP_DIR.match(named.name) and (named / STATE_FILE).is_file():
                return named
        done = self.complete()
        return done[-1] if done else None

    def save(self, step: int, learners: Any, state: TrainerState, cfg: Config) -> Path:
        """Write step_<step> atomically; all learner ranks write their DeepSpeed partitions."""
        final = self.root / f"step_{step}"
        staging = self.root / f"step_{step}.partial"
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
        learners.call("save_checkpoint", str(staging))
        dump_config(cfg, staging / "config.yaml")
        (staging / "driver_rng.pkl").write_bytes(pickle.dumps(rng_state()))
        _write_durably(staging / STATE_FILE, json.dumps(asdict(state), indent=2))
        shutil.rmtree(final, ignore_errors=True)  # a re-save of the same step (e.g. after a resume)
        staging.rename(final)
        _write_durably(self.root / "latest.tmp", final.name)
        os.replace(self.root / "latest.tmp", self.root / "latest")
        self._prune()
        return final

    def _prune(self) -> None:
        for old in self.complete()[: -self.keep]:
            shutil.rmtree(old, ignore_errors=True)

    def clean_partial(self) -> None:
        """Remove what an interrupted save left behind."""
        if self.root.is_dir():
            for p in self.root.glob("step_*.partial"):
                shutil.rmtree(p, ignore_errors=True)


def read_state(path: Path) -> TrainerState:
    return TrainerState(**json.loads((path / STATE_FILE).read_text()))


def check_resume(path: Path, cfg: Config) -> TrainerState:
    """The checkpoint's state, after refusing configs that would train differently from it."""
    state = read_state(path)
    saved = yaml.safe_load((path / "config.yaml").read_text())
    changes = config_changes(saved, cfg)
    if changes:
        raise ResumeError(f"cannot resume from {path}: the config differs in fields that change training:\n  "
                          + "\n  ".join(changes) + "\n(only these may change on resume: "
                          + ", ".join(RESUME_MAY_CHANGE) + ")")
    if state.step >= cfg.train.steps:
        raise ResumeError(f"{path} has already trained {state.step} steps and train.steps={cfg.train.steps}: "
                          f"nothing to do; set train.steps higher to continue training")
    return state


def restore(path: Path, learners: Any) -> TrainerState:
    """Load the learners' DeepSpeed state and the driver's RNG; returns the saved trainer state."""
    learners.call("load_checkpoint", str(path))
    set_rng_state(pickle.loads((path / "driver_rng.pkl").read_bytes()))
    return read_state(path)


def truncate_to(path: Path, size: int) -> None:
    """Drop whatever was appended to `path` after a checkpoint (rows of steps that will be redone)."""
    if path.exists() and path.stat().st_size > size:
        os.truncate(path, size)


def _write_durably(path: Path, text: str) -> None:
    with open(path, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
