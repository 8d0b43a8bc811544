"""Exact, atomic checkpoints of a run and the checks that make a resume safe.

Layout: `<run>/checkpoints/step_<k>/` holds the learners' DeepSpeed state (`deepspeed/`: weights,
ZeRO optimizer partitions, scheduler, step counters), one RNG file per learner rank, the critic's
(algorithm.advantage=gae) in `critic/` the same way, the driver's
RNG state, the config that produced it and `trainer_state.json` (step, policy version, byte sizes
of metrics.jsonl and samples.jsonl at save time). The prompt order needs nothing more: PromptSource
is a pure function of (train.seed, step), and vLLM sampling is seeded from (train.seed, step, prompt).

A save writes `step_<k>.partial/`, renames it to `step_<k>/` (atomic) and then replaces the
`latest` pointer file (temp file + os.replace). A crash mid-save leaves a `.partial` directory that
is never read, so the previous checkpoint stays the one that resumes. A save that fails with an
OSError (disk full, quota, I/O error) removes what it wrote before re-raising, leaving the previous
checkpoint and the `latest` pointer as they were.
"""
from __future__ import annotations

import json
import os
import pickle
import re
import shutil
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import yaml

from cluster.infra import faults
from cluster.config import Config, dump_config
from cluster.infra.metrics import MetricsLog
from protocol.rng import rng_state, set_rng_state

CHECKPOINTS = "checkpoints"
STATE_FILE = "trainer_state.json"
_STEP_DIR = re.compile(r"^step_(\d+)$")

# Settings that may differ between a run and its resume because they do not change what is trained
# (only how long, how often it is evaluated or saved, and where things are written).
RESUME_MAY_CHANGE = ("train.steps", "train.save_every", "train.keep_checkpoints", "train.max_checkpoint_failures",
                     "train.eval_every", "train.samples_to_save", "train.benchmark_every", "train.benchmarks", "train.benchmark_dir",
                     "train.benchmark_limit", "run.name", "run.output_dir", "cluster.address", "cluster.shared_dir", "sync.timeout_s",
                     "learner.collective_timeout_s", "learner.call_timeout_s", "critic.collective_timeout_s",
                     # how a mini-batch is cut changes the update by float rounding only (`auto` plans from memory)
                     "learner.max_tokens_per_micro_batch", "critic.max_tokens_per_micro_batch",
                     "critic.call_timeout_s", "sync.parity_samples",
                       "sync.parity_max_abs", "sync.parity_action")


class ResumeError(RuntimeError):
    """A run cannot be resumed as asked; the message says why and what to change."""


class CheckpointError(RuntimeError):
    """train.max_checkpoint_failures saves in a row failed: the run stops rather than train unsaved."""


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
    """Fields (dotted) whose value differs from the saved config and that change training. Model paths
    are compared as absolute paths: runs saved before the driver made them absolute (cluster/infra/paths.py)
    hold them relative to the directory the run started in, taken to be the current one."""
    old, new = _flatten(saved), _flatten(cfg.model_dump(mode="json"))
    for key in ("model.path", "model.cache_dir"):
        if old.get(key) and new.get(key) and os.path.abspath(old[key]) == os.path.abspath(new[key]):
            old[key] = new[key]
    return [f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in sorted(set(old) | set(new))
            if old.get(k) != new.get(k) and k not in RESUME_MAY_CHANGE]


def step_of(path: Path) -> int:
    match = _STEP_DIR.match(path.name)
    if match is None:
        raise ValueError(f"not a checkpoint directory: {path}")
    return int(match.group(1))


class Checkpoints:
    """The checkpoints of one run directory."""

    def __init__(self, run_dir: Path, keep: int, max_failures: int = 3) -> None:
        self.root = run_dir / CHECKPOINTS
        self.keep = keep
        self.max_failures = max_failures
        self.failures = 0  # failed saves in this process
        self.in_a_row = 0  # consecutive failed saves, reset by a successful one

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

    def save(self, step: int, learners: Any, state: TrainerState, cfg: Config, critic: Any = None) -> Path:
        """Write step_<step> atomically; all learner (and critic) ranks write their DeepSpeed partitions."""
        final = self.root / f"step_{step}"
        staging = self.root / f"step_{step}.partial"
        shutil.rmtree(staging, ignore_errors=True)
        try:
            staging.mkdir(parents=True)
            check_visible(staging, learners.save_checkpoint(str(staging)))
            if critic is not None:
                (staging / "critic").mkdir()
                check_visible(staging / "critic", critic.save_checkpoint(str(staging / "critic")))
            faults.disk_full(step)
            dump_config(cfg, staging / "config.yaml")
            (staging / "driver_rng.pkl").write_bytes(pickle.dumps(rng_state()))
            _write_durably(staging / STATE_FILE, json.dumps(asdict(state), indent=2))
            shutil.rmtree(final, ignore_errors=True)  # a re-save of the same step (e.g. after a resume)
            staging.rename(final)
            _write_durably(self.root / "latest.tmp", final.name)
            os.replace(self.root / "latest.tmp", self.root / "latest")
        except (OSError, CheckpointError):
            self._discard(final)
            raise
        self._prune()
        return final

    def save_or_report(self, step: int, learners: Any, state: TrainerState, cfg: Config,
                       log: MetricsLog, critic: Any = None) -> Path | None:
        """save(), but a failed write (OSError: disk full, quota, I/O error) does not end the run: it
        is reported on stderr and as `checkpoint/failures` in metrics.jsonl, the previous checkpoint
        stays the one that resumes, and the next save retries. CheckpointError after `max_failures`
        failures in a row. A learner that died is not a write failure and is not caught here."""
        try:
            path = self.save(step, learners, state, cfg, critic)
        except OSError as err:
            self.failures += 1
            self.in_a_row += 1
            log.log(step, {"checkpoint/failures": float(self.failures), "checkpoint/failures_in_a_row": float(self.in_a_row)})
            message = (f"checkpoint step_{step} failed ({self.in_a_row} in a row, limit "
                       f"train.max_checkpoint_failures={self.max_failures}): {type(err).__name__}: {err}; "
                       f"a resume would start from {self.latest() or 'scratch'}")
            if self.in_a_row >= self.max_failures:
                raise CheckpointError(f"{message}. Stopping: free space in {self.root} and resume") from err
            print(f"warning: {message}; training goes on and the next save retries", file=sys.stderr)
            return None
        self.in_a_row = 0
        return path

    def _discard(self, final: Path) -> None:
        """After a failed save: drop its partial files, and the step directory too unless `latest`
        names it, so the checkpoint that resumes stays the previous one (frees the space it took)."""
        shutil.rmtree(final.with_name(final.name + ".partial"), ignore_errors=True)
        (self.root / "latest.tmp").unlink(missing_ok=True)
        pointer = self.root / "latest"
        if not (pointer.is_file() and pointer.read_text().strip() == final.name):
            shutil.rmtree(final, ignore_errors=True)

    def _prune(self) -> None:
        for old in self.complete()[: -self.keep]:
            shutil.rmtree(old, ignore_errors=True)

    def clean_partial(self) -> None:
        """Remove what an interrupted save left behind."""
        if self.root.is_dir():
            for p in self.root.glob("step_*.partial"):
                shutil.rmtree(p, ignore_errors=True)


def check_visible(staging: Path, views: list[tuple[str, dict[str, Any]]]) -> None:
    """Every file a learner rank saw in the checkpoint after its save must be visible to the driver,
    with the same size: otherwise partitions landed on a node-local disk and the checkpoint would be
    marked complete without them. `views`: each rank's name and {"node", "files"} (RankGroup.save_checkpoint)."""
    problems = []
    for name, view in views:
        missing = sorted(name for name, size in view["files"].items()
                         if not (staging / name).is_file() or (staging / name).stat().st_size != size)
        if missing:
            shown = ", ".join(missing[:4]) + (f" and {len(missing) - 4} more" if len(missing) > 4 else "")
            problems.append(f"{name} on node {view['node']} wrote {shown}")
    if problems:
        raise CheckpointError(f"checkpoint {staging.name.removesuffix('.partial')}: files the driver cannot see in {staging}: "
                              + "; ".join(problems) + ". The run directory must be on a file system that "
                              "the driver and every learner node share (see cluster.shared_dir)")


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


def restore(path: Path, learners: Any, critic: Any = None) -> TrainerState:
    """Load the learners' (and critic's) DeepSpeed state and the driver's RNG; returns the saved trainer state."""
    learners.load_checkpoint(str(path))
    if critic is not None:
        critic.load_checkpoint(str(path / "critic"))
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
