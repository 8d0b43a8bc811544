"""Long answers: DAPO's overlong shaping, dynamic sampling, the staleness assertion and the parity
figure. Pure Python on hand-made samples (no Ray, no vLLM); the runs on the real stack are in
test_dynamic_run.py and test_weight_sync.py."""
from __future__ import annotations

from dataclasses import fields

import pytest

from cluster.config import ConfigError, load_config
from cluster.loop.data import Problem
from cluster.loop.dynamic import fill_batch, informative, overlong_metrics, overlong_shaping
from cluster.loop.generation import ScoredBatch, scored_samples
from cluster.loop.parity import max_gaps
from cluster.loop.pipeline import StalenessError, check_staleness
from protocol.batch import Prompt, Sample, ScoredSample
from reward.scoring import Verdict
from reward.shaping import overlong_penalty


def _generated(prompt: int, length: int = 1, version: int = 0) -> Sample:
    return Sample(prompt_index=prompt, prompt_ids=[1], response_ids=[2] * length, response_logprobs=[0.0] * length,
                  text="", finish_reason="stop", policy_version=version)


def _sample(prompt: int, reward: float = 0.0, length: int = 1, version: int = 0) -> ScoredSample:
    return ScoredSample.of(_generated(prompt, length, version), reward=reward, correct=reward > 0)


@pytest.mark.parametrize("length, expected", [(0, 0.0), (80, 0.0), (84, -0.2), (90, -0.5), (100, -1.0)])
def test_overlong_penalty_is_linear_over_the_last_buffer_tokens(length, expected):
    # max_new_tokens 100, buffer 20: free up to 80 tokens, -factor (1.0) at the cap.
    assert overlong_penalty(length, 100, 20, 1.0) == pytest.approx(expected)
    assert overlong_penalty(length, 100, 20, 0.5) == pytest.approx(expected / 2)
    assert overlong_penalty(length, 100, 0, 1.0) == 0.0


def test_overlong_shaping_adds_to_the_reward_and_is_counted():
    cfg = load_config(None, ["rollout.max_new_tokens=40", "algorithm.overlong_buffer=10",
                             "algorithm.overlong_penalty=2.0"])
    verdicts = [Verdict(1.0, True, True), Verdict(1.0, True, True), Verdict(0.0, False, True)]
    generated = [_generated(0, length=30), _generated(0, length=35), _generated(0, length=40)]
    samples = scored_samples(generated, verdicts, overlong_shaping(cfg))
    assert [s.reward for s in samples] == pytest.approx([1.0, 0.0, -2.0])
    assert [s.correct for s in samples] == [True, True, False]  # shaping changes the reward only
    metrics = overlong_metrics(samples, cfg)
    assert metrics["reward/overlong_penalty_mean"] == pytest.approx(-1.0)
    assert metrics["reward/overlong_frac"] == pytest.approx(2 / 3)
    off = load_config(None, ["rollout.max_new_tokens=40"])
    assert overlong_shaping(off) is None
    untouched = scored_samples([_generated(0, length=40)], [Verdict(1.0, True, True)], overlong_shaping(off))
    assert untouched[0].reward == 1.0 and overlong_metrics(untouched, off) == {}


def test_scored_samples_keep_every_generated_field_and_take_their_own_verdict():
    """The driver's one writer of reward and correctness: verdicts pair with samples by position (the
    pool returns them in submission order), the generated fields are copied whole, and a verdict
    missing for a sample is an error, not a silent reward of 0."""
    generated = [Sample(prompt_index=i, prompt_ids=[1, i], response_ids=[2] * (i + 1),
                        response_logprobs=[-0.5] * (i + 1), text=f"answer {i}",
                        finish_reason="length" if i == 2 else "stop", policy_version=7 + i) for i in range(3)]
    verdicts = [Verdict(0.0, False, True), Verdict(1.0, True, True), Verdict(0.25, False, False)]
    scored = scored_samples(generated, verdicts)
    assert [(s.reward, s.correct) for s in scored] == [(0.0, False), (1.0, True), (0.25, False)]
    assert [{f.name: getattr(s, f.name) for f in fields(Sample)} for s in scored] == [vars(g) for g in generated]
    assert [s.truncated for s in scored] == [False, False, True]
    with pytest.raises(ValueError):
        scored_samples(generated, verdicts[:2])


def test_overlong_buffer_must_leave_room_below_the_cap():
    with pytest.raises(ConfigError, match="algorithm.overlong_buffer=48 must be smaller than rollout.max_new_tokens=48"):
        load_config(None, ["algorithm.overlong_buffer=48"])


def _scored(prompts: list[Prompt], rewards_of: dict[str, list[float]]) -> ScoredBatch:
    """Each prompt's group gets the rewards listed under its text (two samples per prompt)."""
    samples = [_sample(p.index, r) for p in prompts for r in rewards_of[p.text]]
    return ScoredBatch(samples, {"timeouts": 0.0}, [1.0], 1.0)


class Source:
    """What dynamic sampling reads of a PromptSource: its problems and their token ids."""

    def __init__(self, count: int) -> None:
        self.problems = [Problem(f"q{i}", "0") for i in range(count)]
        self.ids = [[1, i] for i in range(count)]


def _first(count: int) -> list[Prompt]:
    return [Prompt(i, [0], "0", text=f"first{i}") for i in range(count)]


def test_dynamic_sampling_drops_uniform_groups_and_generates_until_the_batch_is_full():
    """4 prompts per step, 2 samples each. Round 1: 1 informative group of 4; round 2 is sized by the
    deficit over the share kept (3 / (1/4) -> capped at 4 prompts), 2 of them informative; round 3 asks
    ceil(1 / (3/8)) = 3 prompts, 2 informative: one more than needed, counted as surplus, never trained."""
    cfg = load_config(None, ["train.prompts_per_step=4", "rollout.samples_per_prompt=2", "train.steps=10",
                             "algorithm.dynamic_sampling=true", "algorithm.dynamic_sampling_max_rounds=5"])
    rewards: dict[str, list[float]] = {}
    first_prompts = _first(4)
    for i, p in enumerate(first_prompts):
        rewards[p.text] = [0.0, 1.0] if i == 0 else [1.0, 1.0]
    asked: list[list[Prompt]] = []

    def generate(prompts: list[Prompt]) -> ScoredBatch:
        asked.append(prompts)
        for p in prompts:
            rewards[p.text] = [0.0, 1.0] if p.index % 2 == 0 else [0.0, 0.0]
        return _scored(prompts, rewards)

    prompts, batch = fill_batch(cfg, 3, first_prompts, _scored(first_prompts, rewards), generate, Source(50))
    assert [len(a) for a in asked] == [4, 3]
    indices = [p.index for p in prompts]
    assert len(set(indices)) == len(indices) == 11, "a batch's prompt indices must stay unique"
    assert len({p.text for p in asked[0]}) == 4, "one round's prompts are distinct"
    again, _ = fill_batch(cfg, 3, first_prompts, _scored(first_prompts, rewards), generate, Source(50))
    assert [p.text for p in again] == [p.text for p in prompts], "the extra prompts are a function of seed and step"
    other, _ = fill_batch(cfg, 4, first_prompts, _scored(first_prompts, rewards), generate, Source(50))
    assert [p.text for p in other] != [p.text for p in prompts]
    groups = [batch.samples[i: i + 2] for i in range(0, len(batch.samples), 2)]
    assert len(groups) == 4 and all(informative(g) for g in groups)
    m = batch.metrics
    assert (m["dynamic/rounds"], m["dynamic/generated_groups"], m["dynamic/kept_groups"]) == (3, 11, 4)
    assert (m["dynamic/dropped_groups"], m["dynamic/surplus_groups"], m["dynamic/filled_groups"]) == (6, 1, 0)
    assert batch.engine_s == [3.0] and batch.counts["timeouts"] == 0.0


def test_dynamic_sampling_stops_at_the_round_bound_and_fills_with_dropped_groups():
    cfg = load_config(None, ["train.prompts_per_step=3", "rollout.samples_per_prompt=2",
                             "algorithm.dynamic_sampling=true", "algorithm.dynamic_sampling_max_rounds=2"])
    first = _first(3)
    rewards = {p.text: [1.0, 1.0] for p in first}
    rewards[first[1].text] = [1.0, 0.0]

    def generate(prompts: list[Prompt]) -> ScoredBatch:
        rewards.update({p.text: [0.0, 0.0] for p in prompts})
        return _scored(prompts, rewards)

    _, batch = fill_batch(cfg, 0, first, _scored(first, rewards), generate, Source(50))
    m = batch.metrics
    assert m["dynamic/rounds"] == 2 and m["dynamic/kept_groups"] == 1 and m["dynamic/filled_groups"] == 2
    assert len(batch.samples) == 6, "a short batch is filled to its size"
    assert informative(batch.samples[:2]) and not informative(batch.samples[2:4])


def test_check_staleness_names_the_oldest_sample():
    samples = [_sample(0, version=5), _sample(1, version=3), _sample(2, version=2)]
    check_staleness(samples, learner_version=5, max_staleness=3)
    with pytest.raises(StalenessError, match=r"1 samples .*max_staleness=2 .*v5.*prompt 2, is from v2"):
        check_staleness(samples, learner_version=5, max_staleness=2)


def test_parity_gap_is_the_largest_over_engines_and_tokens():
    learner = [[-1.0, -2.0], [-0.5]]
    engines = [[[-1.0, -2.0], [-0.5]], [[-1.0, -2.25], [-0.4]]]
    assert max_gaps(engines, learner) == pytest.approx([0.0, 0.25])
    with pytest.raises(ValueError, match="1 engine log-probs for 2 tokens"):
        max_gaps([[[-1.0], [-0.5]]], learner)
