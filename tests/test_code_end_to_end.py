"""Code RL end to end on the session trainer (tests/conftest.py): real vLLM generation on the shipped code
problems (data/code_sample.jsonl), real reward actors (Ray) that score through the judge subprocess and
the sandbox (reward/code.py), the DeepSpeed update and the weight sync. The tiny model writes no working
code (learning is not the point on CPU); the canonical and mutated solutions of the sample go through the
same pool to show the rewards it hands out are the right ones."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from cluster.config import CodeRewardConfig, load_config
from cluster.loop.data import PromptSource, read_code_jsonl
from cluster.handles.groups import RewardPool
from cluster.loop.pipeline import RolloutPipeline
from protocol.batch import Sample
from reward.sandbox import probe

SAMPLE = Path(__file__).resolve().parent.parent / "data" / "code_sample.jsonl"
pytestmark = pytest.mark.skipif(probe("bwrap") is not None and probe("unshare") is not None,
                                reason="no sandbox here (tests/test_sandbox_hostile.py fails for that)")


def test_code_config_declares_data_and_reward_together():
    cfg = load_config(None, ["data.kind=code", f"data.train_path={SAMPLE}", "reward.kind=code",
                             "reward.code.mode=all_pass", "reward.code.parallel=2"])
    assert cfg.reward.code.mode == "all_pass" and cfg.reward.code.parallel == 2
    with pytest.raises(ValueError, match="go together"):
        load_config(None, ["reward.kind=code"])


def test_code_rl_step_and_reference_solutions_through_the_pool(trainer):
    cfg = trainer.cfg
    code_cfg = cfg.model_copy(update={
        "data": cfg.data.model_copy(update={"kind": "code", "train_path": str(SAMPLE)}),
        "reward": cfg.reward.model_copy(update={"kind": "code", "custom_fn": None,
                                                "code": CodeRewardConfig(mode="all_pass", parallel=2)}),
        "train": cfg.train.model_copy(update={"steps": 1000})})
    problems = read_code_jsonl(str(SAMPLE), code_cfg.data.template)
    source = PromptSource(problems, trainer.tokenizer, cfg.rollout.max_model_len - cfg.rollout.max_new_tokens,
                          cfg.train.seed, drop_long=True)
    pool = RewardPool(code_cfg)
    version = trainer.sync.version
    trainer.cfg, trainer.rewards = code_cfg, pool
    trainer.pipeline = RolloutPipeline(code_cfg, trainer.rollouts, pool, source, trainer.sync.resync)
    try:
        metrics = trainer.step(40)
        rows = [json.loads(line) for line in SAMPLE.read_text().splitlines()]
        texts = [r["canonical_solution"] + "```" for r in rows] + [r["mutated_solution"] + "```" for r in rows]
        samples = [Sample(i, [1], [1], [0.0], t, "stop", 0) for i, t in enumerate(texts)]
        answers = {i: problems[i % len(rows)].answer for i in range(len(texts))}
        verdicts, counts = pool.collect(pool.submit(samples, answers))
    finally:
        trainer.pipeline.close()
        pool.kill()
    assert trainer.sync.version == version + 1  # generated, scored, updated and synced
    n = cfg.train.prompts_per_step * cfg.rollout.samples_per_prompt
    assert 0.0 <= metrics["reward/mean"] <= 1.0
    # The tiny model's text is no program: every sample that failed to load is an error of the sandbox run.
    assert 1 <= metrics["reward/errors"] <= n
    assert [v.reward for v in verdicts] == [1.0] * len(rows) + [0.0] * len(rows)
    assert counts["errors"] == 0 and counts["timeouts"] == 0


def test_bad_code_rows_are_named(tmp_path):
    from cluster.loop.data import DataError

    good = SAMPLE.read_text().splitlines()[0]
    bad = [json.dumps({"prompt": "p", "entry_point": "not an identifier", "tests": ["assert 1"]}),
           json.dumps({"prompt": "", "io": [{"input": "", "output": ""}]}), json.dumps({"prompt": "p", "io": []}), "{"]
    path = tmp_path / "code.jsonl"
    path.write_text("\n".join([good, *bad]) + "\n")
    with pytest.raises(DataError, match=r"4 rows are not code problems .*lines 2, 3, 4, 5"):
        read_code_jsonl(str(path), "plain")
