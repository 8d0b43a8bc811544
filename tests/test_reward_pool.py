"""The reward pool never dies of one item: real Ray reward actors running a custom function that
raises on some inputs (tests/rewards_fixture.py), and the grader's actors importing no sympy."""
from __future__ import annotations

import sys
import time

import pytest
import ray

from cluster.loop.generation import StreamedBatch
from cluster.handles.groups import ActorFailure, RewardPool
from protocol.batch import Sample


def _samples(answers: list[str]) -> list[Sample]:
    return [Sample(prompt_index=i, prompt_ids=[1], response_ids=[2, 3], response_logprobs=[0.0, 0.0],
                   text="x" * (i + 2), finish_reason="stop", policy_version=0) for i in range(len(answers))]


def _pool(trainer, **reward) -> RewardPool:
    return RewardPool(trainer.cfg.model_copy(update={"reward": trainer.cfg.reward.model_copy(update=reward)}))


def test_items_that_raise_score_zero_are_counted_and_logged_once_per_kind(trainer, capfd):
    pool = _pool(trainer, custom_fn="tests.rewards_fixture:raise_on_marker", timeout_s=0.5, num_workers=2)
    try:
        answers = ["1", "bad", "2", "zero", "bad", "slow", "3", "bad"]
        samples = _samples(answers)
        ray.get([a.ping.remote() for a in pool.actors])
        started = time.monotonic()
        verdicts, counts = pool.collect(pool.submit(samples, dict(enumerate(answers))))
        assert time.monotonic() - started < 5.0  # the slow item was stopped by its time limit
        assert counts["errors"] == 4 and counts["timeouts"] == 1 and counts["restarts"] == 0
        for sample, answer, verdict in zip(samples, answers, verdicts, strict=True):
            expected = float(len(sample.text) % 2 == 0) if answer.isdigit() else 0.0
            assert verdict.reward == expected, (answer, verdict.reward)
        err = capfd.readouterr().err
        assert err.count("ValueError: cannot score") == 1 and err.count("ZeroDivisionError") == 1, err
        assert "reward.custom_fn tests.rewards_fixture:raise_on_marker" in err
        # The actors live on and a later batch's errors of a kind already seen are counted, not printed.
        again = _samples(["bad", "4"])
        verdicts, counts = pool.collect(pool.submit(again, {0: "bad", 1: "4"}))
        assert counts["errors"] == 1
        assert [v.reward for v in verdicts] == [0.0, 0.0] and "ValueError" not in capfd.readouterr().err
    finally:
        pool.kill()


def test_a_reward_actor_that_fails_to_start_ends_the_batch_with_its_cause(trainer):
    """reward.custom_fn unimportable inside the actors (the CLI refuses it earlier; this is the pool's own
    guard): collect raises ActorFailure naming the actor and the import error, with no replacement loop
    and no answer counted as a timeout."""
    pool = _pool(trainer, custom_fn="nosuch_module_xyz:score", num_workers=2)
    try:
        with pytest.raises(ActorFailure) as err:
            pool.collect(pool.submit(_samples(["1", "2"]), {0: "1", 1: "2"}))
        assert "reward[0] failed to start" in str(err.value)
        assert "module 'nosuch_module_xyz' cannot be imported: ModuleNotFoundError" in str(err.value)
        assert pool.restarts == 0
    finally:
        pool.kill()


def test_the_deadline_grows_with_the_answers_queued_on_an_actor(trainer):
    """8 answers of 0.3 s each (within the 0.5 s limit) on one actor take ~2.4 s, more than a fixed
    2 x timeout_s + grace_s (2 s): no healthy actor is killed, every answer is scored."""
    pool = _pool(trainer, custom_fn="tests.rewards_fixture:slow_even_length", timeout_s=0.5, grace_s=1.0,
                 num_workers=1)
    try:
        answers = [str(i) for i in range(8)]
        samples = _samples(answers)
        ray.get([a.ping.remote() for a in pool.actors])
        started = time.monotonic()
        verdicts, counts = pool.collect(pool.submit(samples, dict(enumerate(answers))))
        assert time.monotonic() - started > 2.0  # the fixed deadline would have passed
        assert counts["restarts"] == 0 and counts["timeouts"] == 0
        assert [v.reward for v in verdicts] == [float(len(s.text) % 2 == 0) for s in samples]
    finally:
        pool.kill()


def test_a_generation_batch_completes_when_the_custom_reward_raises(trainer):
    """Live rollout workers (vLLM) + a reward pool whose custom function raises on every response of
    odd length: the batch completes with every sample scored, and the step's metrics count the errors."""
    pool = _pool(trainer, custom_fn="tests.rewards_fixture:raise_on_odd_length")
    try:
        prompts = trainer.train_data.batch(11, 8)
        rollout = StreamedBatch(trainer.rollouts, pool, prompts, 4, 1.0, seed=21).result()
        assert len(rollout.samples) == 32
        odd = [s for s in rollout.samples if len(s.text) % 2]
        assert 0 < len(odd) < 32, "the sampled lengths should include both parities"
        assert rollout.counts["errors"] == len(odd)
        assert all(s.reward == (0.0 if len(s.text) % 2 else 1.0) for s in rollout.samples)
        assert trainer._sample_metrics(rollout.samples, rollout)["reward/errors"] == len(odd)
    finally:
        pool.kill()


def test_grader_actors_take_reward_extract_and_do_not_import_sympy(trainer):
    pool = _pool(trainer, custom_fn=None, num_workers=1, extract="boxed_or_phrase")
    try:
        golds = ["\\frac{1}{2}", "2\\sqrt{3}", "(1, 2)", "x^2+1", "15"]
        samples = _samples(golds)
        texts = ["\\boxed{0.5}", "\\boxed{\\sqrt{12}}", "\\boxed{(1,2)}", "\\boxed{1+x^2}",
                 "The final answer is $15$. I hope it is correct."]  # an answer phrase: 0 under the default
        for sample, text in zip(samples, texts):
            sample.text = text
        verdicts, _ = pool.collect(pool.submit(samples, dict(enumerate(golds))))
        assert [v.reward for v in verdicts] == [1.0] * 5
        loaded = ray.get(pool.actors[0].__ray_call__.remote(lambda worker: sorted(m for m in sys.modules if m.startswith("sympy"))))
        assert loaded == [], loaded[:5]
    finally:
        pool.kill()
