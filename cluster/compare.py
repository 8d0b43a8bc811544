"""CLI: python -m cluster.compare --config configs/tiny.yaml [--methods rl,sft,rft] [--out DIR] [section.key=value ...]

RL against supervised alternatives on the embedded task, from the same base model, through the same
learner code path (LearnerGroup.train; loss="sft" for the supervised ones):
  rl   GRPO on the answer reward: the main command's step (cluster.trainer.Trainer.step).
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
from typing import Any

from cluster.config import Config, ConfigError, load_config
from cluster.metrics import save_figure
from cluster.trainer import Trainer
from protocol.batch import TrainBatch
from protocol.markdown import table_lines

METHODS = ("rl", "sft", "rft")
LABELS = {"rl": "RL (GRPO, answer reward)", "sft": "SFT distillation (teacher's worked solutions)",
          "rft": "rejection-sampling FT (own correct samples)"}


class MethodRun(Trainer):
    """A Trainer whose step is one of METHODS; it logs `compare/train_tokens` and `compare/train_s`
    (cumulative) so that accuracy can be read against cost."""

    def __init__(self, method: str, cfg: Config, run_dir: Path) -> None:
        super().__init__(cfg, run_dir)
        self.method, self.tokens, self.seconds = method, 0.0, 0.0

    def setup(self) -> None:
        from cluster.data import Problem, PromptSource, embedded_problems

        super().setup()
        cfg = self.cfg
        train, held = embedded_problems(cfg)  # the very problems the trainer's prompt sources serve
        self.teacher = {p.prompt: p.worked() for p in train}
        limit = cfg.rollout.max_model_len - cfg.rollout.max_new_tokens
        self.rephrased = PromptSource([Problem(p.rephrased, p.answer) for p in held], self.tokenizer, limit,
                                      cfg.train.seed, what="rephrased held-out").all()

    def step(self, step: int) -> dict[str, float]:
        start = time.perf_counter()
        if self.method == "rl":
            metrics = super().step(step)
            tokens = metrics["train/response_len"] * self.cfg.train.prompts_per_step * self.cfg.rollout.samples_per_prompt
        else:
            batch, metrics = self._sft_batch(step)
            tokens = float(sum(map(sum, batch.loss_mask)))
            if len(batch):
                metrics.update({f"train/{k}": v for k, v in self.learners.train(batch, loss="sft").items()})
                metrics.update(self.sync.sync())
        self.tokens += tokens
        self.seconds += time.perf_counter() - start
        return {**metrics, "compare/train_tokens": self.tokens, "compare/train_s": self.seconds}

    def _sft_batch(self, step: int) -> tuple[TrainBatch, dict[str, float]]:
        """sft: the teacher's solutions of the step's prompts_per_step x samples_per_prompt training problems;
        rft: the step's samples (as RL's) that the reward code marks correct, each distinct one once."""
        from cluster.base_model import sft_batch
        from cluster.tiny_model import EOS

        cfg = self.cfg
        if self.method == "sft":
            prompts = self.train_data.batch(step, cfg.train.prompts_per_step * cfg.rollout.samples_per_prompt)
            pairs = [(p.text, self.teacher[p.text]) for p in prompts]
            return sft_batch(pairs, self.tokenizer, self.tokenizer.convert_tokens_to_ids(EOS)), {}
        _, rollout = self.pipeline.take(step)
        # distinct correct responses of each prompt, trained on as sampled (their own token ids, EOS included)
        kept = list({(s.prompt_index, tuple(s.response_ids)): s for s in rollout.samples if s.correct}.values())
        batch = TrainBatch.from_samples(kept)
        return batch, {"train/accuracy": sum(s.correct for s in rollout.samples) / max(len(rollout.samples), 1),
                       "rft/kept": float(len(kept))}

    def evaluate_rephrased(self, step: int) -> dict[str, float]:
        from cluster.heldout import EVAL_SEED, held_out_metrics

        metrics = held_out_metrics(self.rollouts, self.rewards, self.rephrased, self.cfg.train.eval_samples,
                                   self.cfg.rollout.temperature, seed=EVAL_SEED, resync=self.sync.resync,
                                   worked=self.worked, prefix="rephrased")
        self.log.log(step, metrics)
        return metrics

    def run_method(self) -> dict[str, Any]:
        """train.steps steps with the usual evaluation cadence; the figures of the comparison."""
        from tqdm import tqdm

        cfg = self.cfg
        self.setup()
        first, rephrased_first = self.evaluate(0), self.evaluate_rephrased(0)
        last = first
        for step in tqdm(range(cfg.train.steps), desc=self.method, unit="step"):
            self.log.log(step + 1, self.step(step))
            if self._every(cfg.train.eval_every, step + 1) or step + 1 == cfg.train.steps:
                last = self.evaluate(step + 1)
        rephrased_last = self.evaluate_rephrased(cfg.train.steps)
        return {"method": self.method, "steps": cfg.train.steps, "train_tokens": self.tokens,
                "train_seconds": self.seconds, **{f"{k}_start": first[f"eval/{k}"] for k in FIGURES},
                **{f"{k}_end": last[f"eval/{k}"] for k in FIGURES},
                "rephrased_accuracy_start": rephrased_first["rephrased/accuracy"],
                "rephrased_accuracy_end": rephrased_last["rephrased/accuracy"]}


FIGURES = ("accuracy", "greedy_accuracy", "worked_frac", "response_len")


def curve(run_dir: Path) -> list[tuple[float, float, float]]:
    """(train tokens, train seconds, held-out accuracy) at each evaluation of a method's run."""
    from cluster.metrics import read_metrics

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
        run = MethodRun(method, cfg, out / method)
        try:
            results.append(run.run_method())
        finally:
            run.close()
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
    from cluster.paths import Resolver, SharedPathError
    from cluster.train import attach
    from tasks import TASKS

    try:
        cfg = load_config(args.config, args.overrides)
        if cfg.data.kind not in TASKS:
            raise ConfigError(f"data.kind={cfg.data.kind}: the comparison needs an embedded task ({', '.join(TASKS)}), "
                              f"whose generator is the distillation teacher")
        if cfg.train.max_staleness:
            raise ConfigError("train.max_staleness must be 0 for the comparison (every method trains on-policy data)")
        resolver = Resolver(cfg, attach(cfg))  # relative paths resolve as for cluster.train (cluster/paths.py)
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
