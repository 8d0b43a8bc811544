"""CLI: python -m cluster.compare --config configs/tiny.yaml [--methods rl,sft,rft] [--out DIR] [section.key=value ...]

RL against supervised alternatives on the embedded task, from the same base model, through the same
learner code path (LearnerGroup.train; loss="sft" for the supervised ones):
  rl   GRPO on the answer reward: the main command's step (cluster.loop.trainer.Trainer.step).
  sft  distillation: supervised fine-tuning on worked solutions from a perfect teacher, the task's own
       generator (tasks/*: Problem.worked), one per training problem.
  rft  rejection-sampling fine-tuning (STaR / RFT): sample like RL, keep the distinct responses the
       reward code marks correct, fine-tune on them.
Matched cost: every method takes train.steps optimizer steps with the same learner settings and a budget
of prompts_per_step x samples_per_prompt sequences per step (RL and RFT sample exactly that many; SFT
reads that many teacher solutions). What each step really cost is measured, and the accuracies are
reported against it: response tokens the learner trained on, and training wall seconds (generation,
scoring, training and weight sync; evaluations excluded).

Each method evaluates the held-out problems every train.eval_every steps (as the main command) and, at
the start and end, the same held-out questions worded differently (`Problem.rephrased`, never trained
on): how much of a tuned model's skill survives outside the wording it was tuned on.
Writes <out>/<method>/ (metrics.jsonl, ...), <out>/compare.png, <out>/compare.md and <out>/results.json.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any, Callable

from cluster.config import Config, ConfigError, load_config
from cluster.infra.metrics import save_figure
from cluster.loop.trainer import RunPlan, Trainer
from protocol.batch import TrainBatch
from protocol.markdown import table_lines

METHODS = ("rl", "sft", "rft")  # the keys of STEP_SOURCES
LABELS = {"rl": "RL (GRPO, answer reward)", "sft": "SFT distillation (teacher's worked solutions)",
          "rft": "rejection-sampling FT (own correct samples)"}


class StepSource:
    """How one method makes a step's update (registered in STEP_SOURCES by `step_source`): `prepare` once
    the trainer is set up, then each call returns the step's metrics and the response tokens it trained on."""

    def prepare(self, trainer: Trainer) -> None:
        self.trainer = trainer

    def __call__(self, step: int) -> tuple[dict[str, float], float]:
        raise NotImplementedError


STEP_SOURCES: dict[str, type[StepSource]] = {}


def step_source(method: str) -> Callable[[type[StepSource]], type[StepSource]]:
    def register(cls: type[StepSource]) -> type[StepSource]:
        STEP_SOURCES[method] = cls
        return cls
    return register


@step_source("rl")
class RLStep(StepSource):
    """The main command's step (Trainer.step); its tokens: the batch's mean response length x its size."""

    def __call__(self, step: int) -> tuple[dict[str, float], float]:
        t = self.trainer
        metrics = t.step(step)
        return metrics, metrics["train/response_len"] * t.cfg.train.prompts_per_step * t.cfg.rollout.samples_per_prompt


class SupervisedStep(StepSource):
    """A supervised step (LearnerGroup.train with loss="sft") on `batch(step)`, then the weight sync; no
    step when the batch is empty."""

    def batch(self, step: int) -> tuple[TrainBatch, dict[str, float]]:
        raise NotImplementedError

    def __call__(self, step: int) -> tuple[dict[str, float], float]:
        t = self.trainer
        batch, metrics = self.batch(step)
        tokens = float(sum(map(sum, batch.loss_mask)))
        if len(batch):
            metrics.update({f"train/{k}": v for k, v in t.learners.train(batch, loss="sft").items()})
            metrics.update(t.sync.sync())
        return metrics, tokens


@step_source("sft")
class TeacherStep(SupervisedStep):
    """The teacher's solutions of the step's prompts_per_step x samples_per_prompt training problems."""

    def prepare(self, trainer: Trainer) -> None:
        from cluster.loop.data import embedded_problems

        super().prepare(trainer)
        train, _ = embedded_problems(trainer.cfg)  # the very problems the trainer's prompt sources serve
        self.teacher = {p.prompt: p.worked() for p in train}

    def batch(self, step: int) -> tuple[TrainBatch, dict[str, float]]:
        from cluster.toy.base_model import sft_batch
        from cluster.toy.tiny_model import EOS

        t = self.trainer
        prompts = t.train_data.batch(step, t.cfg.train.prompts_per_step * t.cfg.rollout.samples_per_prompt)
        pairs = [(p.text, self.teacher[p.text]) for p in prompts]
        return sft_batch(pairs, t.tokenizer, t.tokenizer.convert_tokens_to_ids(EOS)), {}


@step_source("rft")
class RejectionStep(SupervisedStep):
    """The step's samples (as RL's) that the reward code marks correct, each distinct one once."""

    def batch(self, step: int) -> tuple[TrainBatch, dict[str, float]]:
        _, rollout = self.trainer.pipeline.take(step)
        # distinct correct responses of each prompt, trained on as sampled (their own token ids, EOS included)
        kept = list({(s.prompt_index, tuple(s.response_ids)): s for s in rollout.samples if s.correct}.values())
        batch = TrainBatch.from_samples(kept)
        return batch, {"train/accuracy": sum(s.correct for s in rollout.samples) / max(len(rollout.samples), 1),
                       "rft/kept": float(len(kept))}


class MethodRun:
    """One method as a plan for the one training loop (`Trainer.run`, cluster/loop/trainer.py): its step source,
    metered (`compare/train_tokens` and `compare/train_s`, cumulative, so that accuracy can be read
    against cost), the rephrased held-out evaluation at the start and the end, the comparison's figures as
    the result; no checkpoints."""

    def __init__(self, method: str) -> None:
        self.method, self.source = method, STEP_SOURCES[method]()
        self.tokens, self.seconds = 0.0, 0.0
        self.rephrased_rows: list[dict[str, float]] = []

    def plan(self) -> RunPlan:
        return RunPlan(label=self.method, prepare=self.prepare, step=self.step, evaluations=(self.evaluate_rephrased,),
                       finish=self.figures, checkpointed=False)

    def prepare(self, trainer: Trainer) -> None:
        from cluster.loop.data import Problem, PromptSource, embedded_problems

        self.trainer, cfg = trainer, trainer.cfg
        self.source.prepare(trainer)
        _, held = embedded_problems(cfg)
        limit = cfg.rollout.max_model_len - cfg.rollout.max_new_tokens
        self.rephrased = PromptSource([Problem(p.rephrased, p.answer) for p in held], trainer.tokenizer, limit,
                                      cfg.train.seed, what="rephrased held-out").all()

    def step(self, step: int) -> dict[str, float]:
        start = time.perf_counter()
        metrics, tokens = self.source(step)
        self.tokens += tokens
        self.seconds += time.perf_counter() - start
        return {**metrics, "compare/train_tokens": self.tokens, "compare/train_s": self.seconds}

    def evaluate_rephrased(self, step: int) -> dict[str, float]:
        from cluster.loop.heldout import EVAL_SEED, held_out_metrics

        t = self.trainer
        metrics = held_out_metrics(t.rollouts, t.rewards, self.rephrased, t.cfg.train.eval_samples,
                                   t.cfg.rollout.temperature, seed=EVAL_SEED, resync=t.sync.resync,
                                   worked=t.worked, prefix="rephrased")
        t.log.log(step, metrics)
        self.rephrased_rows.append(metrics)
        return metrics

    def figures(self, first: dict[str, float], last: dict[str, float]) -> dict[str, Any]:
        """The comparison's figures of the run: cost, and the held-out figures at the start and the end."""
        rephrased_first, rephrased_last = self.rephrased_rows[0], self.rephrased_rows[-1]
        return {"method": self.method, "steps": self.trainer.cfg.train.steps, "train_tokens": self.tokens,
                "train_seconds": self.seconds, **{f"{k}_start": first[f"eval/{k}"] for k in FIGURES},
                **{f"{k}_end": last[f"eval/{k}"] for k in FIGURES},
                "rephrased_accuracy_start": rephrased_first["rephrased/accuracy"],
                "rephrased_accuracy_end": rephrased_last["rephrased/accuracy"]}


FIGURES = ("accuracy", "greedy_accuracy", "worked_frac", "response_len")


def curve(run_dir: Path) -> list[tuple[float, float, float]]:
    """(train tokens, train seconds, held-out accuracy) at each evaluation of a method's run."""
    from cluster.infra.metrics import read_metrics

    tokens, seconds, out = 0.0, 0.0, []
    for row in read_metrics(run_dir):
        tokens, seconds = row.get("compare/train_tokens", tokens), row.get("compare/train_s", seconds)
        if "eval/accuracy" in row:
            out.append((tokens, seconds, row["eval/accuracy"]))
    return out


def compare_figure(out: Path, methods: list[str]) -> Any:
    """Held-out accuracy of each method's run under <out> against tokens trained on (left) and training
    wall seconds (right): the points of `curve`."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.2))
    for method in methods:
        points = curve(out / method)
        for ax, i in zip(axes, (0, 1)):
            ax.plot([p[i] for p in points], [p[2] for p in points], marker="o", label=LABELS[method])
    for ax, xlabel in zip(axes, ("response tokens trained on", "training wall seconds (evaluation excluded)")):
        ax.set_xlabel(xlabel)
        ax.set_ylabel("held-out accuracy (sampled, T=1)")
        ax.set_ylim(-0.02, 1.02)
        ax.legend()
    fig.tight_layout()
    return fig


def plot(out: Path, methods: list[str]) -> Path:
    """<out>/compare.png: see compare_figure."""
    return save_figure(compare_figure(out, methods), out / "compare.png")


def table(results: list[dict[str, Any]]) -> str:
    head = ["method", "steps", "tokens trained on", "train wall s", "held-out acc. (T=1)", "greedy acc.",
            "worked share", "mean response tokens", "rephrased held-out acc."]
    rows = []
    for r in results:
        span = lambda k, f="{:.3f}": f"{f.format(r[k + '_start'])} -> {f.format(r[k + '_end'])}"  # noqa: E731
        rows.append([LABELS[r["method"]], str(r["steps"]), f"{r['train_tokens']:,.0f}", f"{r['train_seconds']:.0f}",
                     span("accuracy"), span("greedy_accuracy"), span("worked_frac", "{:.2f}"),
                     span("response_len", "{:.1f}"), span("rephrased_accuracy")])
    return "\n".join(table_lines(head, rows, padded_rule=False))


def compare(cfg: Config, out: Path, methods: list[str]) -> list[dict[str, Any]]:
    """Run each method from the same (cached) base model; write compare.png, compare.md, results.json."""
    out.mkdir(parents=True, exist_ok=True)
    started, results = time.perf_counter(), []
    for method in methods:
        trainer = Trainer(cfg, out / method)
        try:
            results.append(trainer.run(MethodRun(method).plan()))
        finally:
            trainer.close()
        print(json.dumps(results[-1]), flush=True)
    (out / "results.json").write_text(json.dumps({"config": cfg.model_dump(mode="json"), "results": results,
                                                 "wall_seconds": time.perf_counter() - started}, indent=2))
    (out / "compare.md").write_text(table(results) + "\n")
    plot(out, methods)
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m cluster.compare", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", help="YAML file in configs/")
    parser.add_argument("--methods", default=",".join(METHODS), help=f"comma-separated, of {', '.join(METHODS)}")
    parser.add_argument("--out", help="output directory (default: <run.output_dir>/compare-<time>)")
    parser.add_argument("overrides", nargs="*", help="section.key=value, e.g. train.steps=20")
    args = parser.parse_args(argv)
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    if unknown := sorted(set(methods) - set(METHODS)):
        parser.error(f"--methods: unknown {', '.join(unknown)} (choose from {', '.join(METHODS)})")
    from cluster.infra.paths import Resolver, SharedPathError
    from cluster.train import attach
    from tasks import TASKS

    try:
        cfg = load_config(args.config, args.overrides)
        if cfg.data.kind not in TASKS:
            raise ConfigError(f"data.kind={cfg.data.kind}: the comparison needs an embedded task ({', '.join(TASKS)}), "
                              f"whose generator is the distillation teacher")
        if cfg.train.max_staleness:
            raise ConfigError("train.max_staleness must be 0 for the comparison (every method trains on-policy data)")
        resolver = Resolver(cfg, attach(cfg))  # relative paths resolve as for cluster.train (cluster/infra/paths.py)
        cfg, _ = resolver.config(cfg, None)
        out = resolver.run_dir(args.out) or Path(cfg.run.output_dir) / f"compare-{time.strftime('%Y%m%d-%H%M%S')}"
    except (ConfigError, SharedPathError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    results = compare(cfg, out, methods)
    print(table(results))
    print(f"results: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
