"""Run-directory outputs: per-step metrics (JSONL + TensorBoard), sample completions, plots."""
from __future__ import annotations

import json
import re
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

from protocol.batch import ScoredSample


# Words of reflection / self-verification (the "aha moment" of R1-Zero-style training): pausing,
# re-checking, verifying, re-deriving. Counted per response, as a fraction of a step's responses.
REFLECTION = re.compile(
    r"\b(wait|hold on|hmm|let(?:'s| me| us) (?:re-?)?(?:check|verify|re-?examine|reconsider|recompute|recalculate)"
    r"|double[- ]check\w*|verif(?:y|ied|ies|ying|ication)|re-?examin\w*|re-?evaluat\w*|re-?calculat\w*"
    r"|re-?comput\w*|re-?deriv\w*|reconsider\w*|on second thought|sanity check|check (?:again|our|my|the) (?:work|answer)"
    r"|another (?:way|approach)|alternatively)\b", re.IGNORECASE)


def mean(xs: list[float]) -> float:
    """The mean of `xs`, 0.0 for none."""
    return sum(xs) / max(len(xs), 1)


def boxed_rate(counts: dict[str, float], responses: int) -> float:
    """The share of `responses` in which the grader's own extraction found a brace-matched \\boxed{} or
    \\fbox{} (`counts`: the reward pool's, cluster.handles.groups.RewardPool.collect)."""
    return 1.0 - counts["unboxed"] / max(responses, 1)


def reflects(text: str) -> bool:
    """Whether a response shows reflection or self-verification (see REFLECTION)."""
    return REFLECTION.search(text) is not None


class PhaseTimer:
    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    @contextmanager
    def __call__(self, phase: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[f"time/{phase}_s"] = self.seconds.get(f"time/{phase}_s", 0.0) + time.perf_counter() - start


class MetricsLog:
    def __init__(self, run_dir: Path, purge_step: int | None = None, sinks: list[Any] | None = None) -> None:
        """`purge_step`: on resume, TensorBoard drops the events logged at that step and later.
        `sinks`: more destinations of every row, each with `log(step, metrics)` and `close()` (W&B)."""
        self.run_dir = run_dir
        self.sinks = sinks or []
        self.path = run_dir / "metrics.jsonl"
        self.samples_path = run_dir / "samples.jsonl"
        try:
            from torch.utils.tensorboard import SummaryWriter

            self.tb: Any = SummaryWriter(str(run_dir / "tensorboard"), purge_step=purge_step)
        except ImportError:  # tensorboard is optional at run time
            self.tb = None

    def log(self, step: int, metrics: dict[str, Any]) -> None:
        with self.path.open("a") as f:
            f.write(json.dumps({"step": step, **metrics}) + "\n")
        if self.tb is not None:
            for key, value in metrics.items():
                if isinstance(value, (int, float)):  # texts (e.g. rollout/restart_causes) stay in the JSONL
                    self.tb.add_scalar(key, value, step)
            self.tb.flush()
        for sink in self.sinks:
            sink.log(step, metrics)

    def samples(self, step: int, samples: list[ScoredSample], answers: dict[int, str], keep: int,
                worked: Callable[[str], bool] | None = None) -> None:
        """The first `keep` samples of a step; `worked`: the embedded task's test for a worked-out answer."""
        with self.samples_path.open("a") as f:
            for s in samples[:keep]:
                f.write(json.dumps({"step": step, "answer": answers[s.prompt_index], "response": s.text,
                                    "reward": s.reward, "finish_reason": s.finish_reason,
                                    "response_len": len(s.response_ids), "reflection": reflects(s.text),
                                    **({"worked": worked(s.text)} if worked else {}),
                                    "policy_version": s.policy_version}) + "\n")

    def sizes(self) -> tuple[int, int]:
        """Bytes written so far to metrics.jsonl and samples.jsonl (a checkpoint records them)."""
        return tuple(p.stat().st_size if p.exists() else 0 for p in (self.path, self.samples_path))  # type: ignore[return-value]

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()
        for sink in self.sinks:
            sink.close()
        self.sinks = []


def read_metrics(run_dir: Path) -> list[dict[str, float]]:
    path = run_dir / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


def run_figure(rows: list[dict[str, float]]) -> Any:
    """reward and accuracy per step (left), held-out accuracy (right)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    train = [r for r in rows if "reward/mean" in r]
    evals = [r for r in rows if "eval/accuracy" in r]
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    left.plot([r["step"] for r in train], [r["reward/mean"] for r in train], label="train reward (mean)")
    left.plot([r["step"] for r in train], [r["train/accuracy"] for r in train], label="train accuracy", alpha=0.7)
    left.plot([r["step"] for r in train], [r["train/boxed_rate"] for r in train], label="boxed rate", alpha=0.5)
    left.set_xlabel("step")
    left.set_ylim(-0.02, 1.02)
    left.legend()
    left.set_title("training batches")
    for key, label in (("eval/accuracy", "sampled (T=1) accuracy"), ("eval/greedy_accuracy", "greedy accuracy")):
        right.plot([r["step"] for r in evals], [r[key] for r in evals], marker="o", label=label)
    right.set_xlabel("step")
    right.set_ylim(-0.02, 1.02)
    right.legend()
    right.set_title("held-out evaluation")
    fig.tight_layout()
    return fig


def save_figure(fig: Any, path: Path) -> Path:
    """`fig` written to `path` (PNG, 100 dpi) and closed."""
    import matplotlib.pyplot as plt

    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def plot_run(run_dir: Path) -> Path:
    """reward_accuracy.png: see run_figure."""
    return save_figure(run_figure(read_metrics(run_dir)), run_dir / "reward_accuracy.png")


EMERGENCE_PANELS = (
    ("held-out accuracy", (("eval/accuracy", "sampled (T=1)"), ("eval/greedy_accuracy", "greedy"),
                           ("eval/boxed_rate", "boxed rate"))),
    ("response length (tokens)", (("eval/response_len", "held-out mean"),)),
    ("how it answers (share of responses)", (("eval/worked_frac", "worked out"),
                                             ("eval/reflection_frac", "self-check / reflection"))),
    ("held-out accuracy by self-check", (("eval/accuracy_self_checked", "responses that check themselves"),
                                         ("eval/accuracy_not_self_checked", "responses that do not"))),
)


def emergence_figure(rows: list[dict[str, float]]) -> Any:
    """Per held-out evaluation: accuracy, response length, the shares of worked and self-checking
    responses, and accuracy split by whether a response checks itself (thin lines: the same per training
    batch, `train/...`, where logged)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    evals = [r for r in rows if "eval/accuracy" in r]
    train = [r for r in rows if "reward/mean" in r]
    fig, axes = plt.subplots(1, len(EMERGENCE_PANELS), figsize=(21, 4))
    for ax, (title, series) in zip(axes, EMERGENCE_PANELS):
        for key, label in series:
            if any(key in r for r in evals):
                line, = ax.plot([r["step"] for r in evals], [r.get(key, float("nan")) for r in evals], marker="o",
                                label=label)
                per_step = key.replace("eval/", "train/")
                if any(per_step in r for r in train):
                    ax.plot([r["step"] for r in train], [r.get(per_step, float("nan")) for r in train],
                            color=line.get_color(), alpha=0.3, linewidth=1)
        ax.set_xlabel("step")
        ax.set_title(title)
        if ax.get_legend_handles_labels()[0]:
            ax.legend()
        if "length" not in title:
            ax.set_ylim(-0.02, 1.02)
    fig.tight_layout()
    return fig


def plot_emergence(run_dir: Path) -> Path:
    """emergence.png: see emergence_figure."""
    return save_figure(emergence_figure(read_metrics(run_dir)), run_dir / "emergence.png")
