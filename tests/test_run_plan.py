"""The one training loop (`cluster.loop.trainer.Trainer.run`) runs a `RunPlan`'s pieces: its step, its extra
evaluations at step 0 and after the last step, its finish, and no checkpoint, benchmark or step-0 line when the
plan does not checkpoint (as `cluster.compare` runs each method). No Ray: the trainer is built without
`setup()`, and its held-out evaluation is replaced by one that logs a fixed row (this tests the loop's order
and what it writes, not generation; the real loop runs in tests/test_resume.py, the real compare steps in
tests/test_compare.py)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from cluster.config import load_config
from cluster.loop.trainer import RunPlan, Trainer
from tests.conftest import ROOT, small_overrides


def _refuse(what: str):
    def call(*args, **kwargs):
        raise AssertionError(f"{what} ran in a plan that does not checkpoint")
    return call


@pytest.mark.parametrize("steps, eval_every", [(3, 2), (4, 2), (2, 0)])
def test_a_plan_composes_the_loop_without_checkpoints(tmp_path: Path, capsys, steps: int, eval_every: int):
    cfg = load_config(str(ROOT / "configs" / "tiny.yaml"), small_overrides(tmp_path) + [
        f"train.steps={steps}", f"train.eval_every={eval_every}", "train.save_every=1", "train.benchmark_every=1"])
    trainer = Trainer(cfg, tmp_path / "run")  # no Ray until setup(), which this test skips
    trainer.setup = lambda: None  # type: ignore[method-assign]
    trainer.learners = trainer.rollouts = None  # the faults touch them only when REASONRL_FAULT is set

    def evaluate(step: int) -> dict[str, float]:
        trainer.log.log(step, {"eval/accuracy": step / 10})
        return {"eval/accuracy": step / 10}

    trainer.evaluate = evaluate  # type: ignore[method-assign]
    trainer.save_checkpoint = _refuse("save_checkpoint")  # type: ignore[method-assign]
    trainer.benchmark = _refuse("benchmark")  # type: ignore[method-assign]
    prepared = []
    plan = RunPlan(label="sft", prepare=prepared.append, step=lambda step: {"train/loss": float(step)},
                   evaluations=(lambda step: trainer.log.log(step, {"extra/accuracy": 1.0}) or {},),
                   finish=lambda first, last: {"first": first, "last": last}, checkpointed=False)
    try:
        result = trainer.run(plan)
    finally:
        trainer.close()
    rows = [json.loads(line) for line in (trainer.run_dir / "metrics.jsonl").read_text().splitlines()]
    expected = [{"step": 0, "eval/accuracy": 0.0}, {"step": 0, "extra/accuracy": 1.0}]
    for step in range(1, steps + 1):
        expected.append({"step": step, "train/loss": float(step - 1)})
        if (eval_every and step % eval_every == 0) or step == steps:
            expected.append({"step": step, "eval/accuracy": step / 10})
    expected.append({"step": steps, "extra/accuracy": 1.0})
    assert rows == expected
    assert prepared == [trainer]
    assert result == {"first": {"eval/accuracy": 0.0}, "last": {"eval/accuracy": steps / 10}}
    assert not list(trainer.checkpoints.root.glob("step_*")) and "step 0:" not in capsys.readouterr().out
