"""Fault injection with real actors: a rollout worker killed mid-batch, reward actors that hang or die."""
from __future__ import annotations

import time

import ray
import torch

from cluster.loop.generation import StreamedBatch, generate_and_score, scored_samples
from cluster.handles.groups import RewardPool
from protocol.batch import Prompt, Sample, TrainBatch


def _prompts(trainer, count: int) -> list[Prompt]:
    return trainer.train_data.batch(7, count)


def _engine_matches_learner(trainer, worker: int) -> float:
    """Largest |engine - learner| logprob gap on one held-out prompt + a fixed response."""
    prompt = trainer.eval_prompts[0].token_ids
    response = trainer.rollouts.generate([Prompt(0, prompt, "0")], 1, 1.0, seed=3)[0].response_ids
    engine = ray.get(trainer.rollouts.actors[worker].sequence_logprobs.remote([prompt + response]))[0]
    learner = trainer.learners.logprobs(TrainBatch([prompt], [response], [], [0.0], []))[0]
    return float((torch.tensor(engine[-len(response):]) - torch.tensor(learner)).abs().max())


def test_rollout_worker_killed_mid_batch_is_restarted_resynced_and_reissued(trainer):
    if trainer.sync.version == 0:  # make the restart matter: the new engine starts from the base weights
        trainer.step(0)
    # 64 prompts x 4 samples: the engine runs them in waves of max_num_seqs (16 sequences), ~16 engine
    # waves. The kill is sent when the first wave's prompts arrive, so it lands mid-batch even when a busy
    # machine delays it by a second (the batch takes ~1 s): a kill sent before the first chunk raced a
    # 0.2 s batch and could land after it, leaving a silently restarted engine to the next tests.
    prompts, n = _prompts(trainer, 64), 4
    reference = generate_and_score(trainer.rollouts, trainer.rewards, prompts, n, 1.0, seed=99)
    chunk_sizes: list[int] = []  # samples per streamed chunk, in arrival order (the dead stream's first)

    def kill_at_first_chunk(worker: int, chunk) -> None:
        if not chunk_sizes:
            ray.kill(trainer.rollouts.actors[0], no_restart=False)
        chunk_sizes.append(len(chunk.samples))

    started = time.monotonic()
    batch = StreamedBatch(trainer.rollouts, trainer.rewards, prompts, n, 1.0, seed=99, resync=trainer.sync.resync,
                          on_chunk=kill_at_first_chunk)
    rollout = batch.result()
    print(f"kill + restart + re-issue took {time.monotonic() - started:.1f}s")

    assert rollout.restarts == 1
    # The kill landed mid-batch: some prompts were unfinished and issued again; the chunks that arrived
    # before the death hold exactly the other prompts' samples.
    assert 0 < rollout.reissued < len(prompts)
    prefix_sums = [sum(chunk_sizes[:i]) for i in range(len(chunk_sizes) + 1)]
    assert n * (len(prompts) - rollout.reissued) in prefix_sums and prefix_sums[-1] == n * len(prompts)
    # Nothing lost, nothing duplicated: every prompt exactly n completions.
    per_prompt = {p.index: sum(s.prompt_index == p.index for s in rollout.samples) for p in prompts}
    assert set(per_prompt.values()) == {n} and len(rollout.samples) == n * len(prompts)
    # The restarted engine was re-synced: it serves the current policy version, and its logprobs are
    # the learner's (the base weights it restarted with would be far off).
    assert {s.policy_version for s in rollout.samples} == {trainer.sync.version}
    assert ray.get(trainer.rollouts.actors[0].policy_version.remote()) == trainer.sync.version
    assert _engine_matches_learner(trainer, 0) < 1e-4
    # Same seeds and weights: the re-issued prompts give the same completions as without the kill.
    assert [s.response_ids for s in rollout.samples] == [s.response_ids for s in reference.samples]


def _kill_idle_and_wait_for_restart(actor) -> None:
    """ray.kill an idle rollout worker and return once Ray's restarted instance answers (at version 0)."""
    ray.kill(actor, no_restart=False)
    deadline = time.monotonic() + 120
    while True:
        try:
            if ray.get(actor.policy_version.remote(), timeout=5) == 0:
                return
        except (ray.exceptions.RayActorError, ray.exceptions.ActorUnavailableError, ray.exceptions.GetTimeoutError):
            pass
        assert time.monotonic() < deadline, "the worker was not restarted"
        time.sleep(0.5)


def test_a_worker_restarted_between_batches_is_resynced_before_it_generates(trainer):
    """rollout[0] dies while idle, between batches (real ray.kill; Ray restarts it with the base model's
    weights before the next batch reaches it): the restarted engine refuses to generate (EngineRestarted)
    until the driver re-syncs it, and the batch re-issues its prompts. Without that, it would serve the
    base weights under policy version 0 and the step would drop or mis-train on them."""
    if trainer.sync.version == 0:
        trainer.step(0)
    prompts, n = _prompts(trainer, 16), 4
    reference = generate_and_score(trainer.rollouts, trainer.rewards, prompts, n, 1.0, seed=97)
    _kill_idle_and_wait_for_restart(trainer.rollouts.actors[0])
    rollout = generate_and_score(trainer.rollouts, trainer.rewards, prompts, n, 1.0, seed=97, resync=trainer.sync.resync)

    assert rollout.restarts == 1 and rollout.reissued == len(prompts)
    assert len(rollout.restart_causes) == 1
    assert rollout.restart_causes[0].startswith("rollout[0] was restarted by Ray with the base model's weights: "
                                                "EngineRestarted: "), rollout.restart_causes
    assert {s.policy_version for s in rollout.samples} == {trainer.sync.version}
    assert [s.response_ids for s in rollout.samples] == [s.response_ids for s in reference.samples]
    assert _engine_matches_learner(trainer, 0) < 1e-4


def test_a_worker_restarted_before_a_weight_sync_is_reloaded_by_it(trainer):
    """rollout[0] dies while idle (e.g. while the learner trains) and Ray restarts it before the step's weight
    sync reaches it: the restarted engine has no transport open and says so (EngineRestarted); the sync
    lets the export finish, reloads it from the kept buffer (sync/recovered) and bumps the version."""
    if trainer.sync.version == 0:
        trainer.step(0)
    _kill_idle_and_wait_for_restart(trainer.rollouts.actors[0])
    before = trainer.sync.version
    metrics = trainer.sync.sync()
    assert metrics["sync/recovered"] == 1 and metrics["policy_version"] == before + 1
    assert ray.get(trainer.rollouts.actors[0].policy_version.remote()) == before + 1
    assert _engine_matches_learner(trainer, 0) < 1e-4


def test_a_worker_restarted_before_the_first_sync_is_reloaded_by_it(trainer):
    """Found by the random kill of tests/test_async.py: rollout[0] dies before a sync's first version;
    its batch re-syncs it by confirming the base weights (nothing exported yet), which opens no transport
    in the new instance; the first sync must then reload it from the kept buffer (sync/recovered), not
    fail with 'no weight transport open'. A fresh WeightSync on the session's actors is at version 0."""
    from cluster.loop.sync import WeightSync

    if trainer.sync.version == 0:  # the session's own sync must have a version to restore below
        trainer.step(0)
    sync = WeightSync(trainer.cfg, trainer.learners, trainer.rollouts)
    try:
        _kill_idle_and_wait_for_restart(trainer.rollouts.actors[0])
        rollout = generate_and_score(trainer.rollouts, trainer.rewards, _prompts(trainer, 4), 2, 1.0, seed=5,
                                     resync=sync.resync)
        assert rollout.restarts == 1 and {s.policy_version for s in rollout.samples} == {0}
        metrics = sync.sync()
    finally:
        sync.close()
    assert metrics["sync/recovered"] == 1 and metrics["policy_version"] == 1
    assert ray.get(trainer.rollouts.actors[0].policy_version.remote()) == 1
    assert _engine_matches_learner(trainer, 0) < 1e-4
    trainer.sync.resync(0)  # back to the session sync's transport and version, for the tests after this one
    assert ray.get(trainer.rollouts.actors[0].policy_version.remote()) == trainer.sync.version


def _fake_samples(answers: list[str]) -> list[Sample]:
    return [Sample(prompt_index=i, prompt_ids=[1], response_ids=[2, 3], response_logprobs=[0.0, 0.0],
                   text="x" * (i + 2), finish_reason="stop", policy_version=0) for i in range(len(answers))]


def _pool(trainer, **reward) -> RewardPool:
    cfg = trainer.cfg.model_copy(update={"reward": trainer.cfg.reward.model_copy(update=reward)})
    return RewardPool(cfg)


def test_hung_reward_actor_is_replaced_and_its_items_time_out(trainer):
    pool = _pool(trainer, custom_fn="tests.rewards_fixture:hang_on_marker", timeout_s=0.5, grace_s=8.0)
    try:
        answers = ["1", "hang", "2", "3"]
        samples = _fake_samples(answers)
        ray.get([a.ping.remote() for a in pool.actors])  # started: the deadline measures the hang only
        started = time.monotonic()
        verdicts, counts = pool.collect(pool.submit(samples, dict(enumerate(answers))))
        elapsed = time.monotonic() - started
        assert elapsed < 2 * 0.5 + 8.0 + 5.0, elapsed  # the step never hangs
        scored = scored_samples(samples, verdicts)
        hung = [s for s in scored if s.prompt_index == 1]
        assert counts["restarts"] == 1 and counts["timeouts"] == 2  # the hung item and its job-mate
        assert all(s.reward == 0.0 for s in hung)
        healthy = [s for s in scored if s.prompt_index in (2, 3)]
        assert all(s.reward == float(len(s.text) % 2 == 0) for s in healthy)
        # The replacement works.
        again = _fake_samples(["4", "5"])
        verdicts, counts = pool.collect(pool.submit(again, {0: "4", 1: "5"}))
        assert counts["restarts"] == 0
        assert [v.reward for v in verdicts] == [1.0, 0.0]
    finally:
        pool.kill()


def test_dead_reward_actor_is_replaced_and_its_items_scored_again(trainer):
    pool = _pool(trainer, custom_fn="tests.rewards_fixture:even_length")
    try:
        samples = _fake_samples(["1", "2", "3", "4"])
        ray.get([a.ping.remote() for a in pool.actors])
        ray.kill(pool.actors[0])  # dies with no verdict given (killing mid-job would race a 1 ms job)
        for _ in range(100):  # ray.kill returns before the actor is gone: wait until a call really fails
            try:
                ray.get(pool.actors[0].ping.remote(), timeout=5)
            except (ray.exceptions.RayActorError, ray.exceptions.GetTimeoutError):
                break
            time.sleep(0.05)
        verdicts, counts = pool.collect(pool.submit(samples, {i: str(i + 1) for i in range(4)}))
        assert counts["restarts"] == 1 and counts["timeouts"] == 0
        assert [v.reward for v in verdicts] == [float(len(s.text) % 2 == 0) for s in samples]
    finally:
        pool.kill()


def test_a_worker_that_finishes_nothing_in_time_is_named(trainer):
    """A stuck (or far too slow) rollout worker: the wait ends at rollout.timeout_s with its name."""
    from cluster.loop.generation import GenerationError

    saved = trainer.rollouts.cfg
    trainer.rollouts.cfg = saved.model_copy(update={"timeout_s": 0.01})
    try:
        batch = StreamedBatch(trainer.rollouts, trainer.rewards, _prompts(trainer, 16), 4, 1.0, seed=5)
        started = time.monotonic()
        try:
            batch.result()
            raise AssertionError("no GenerationError")
        except GenerationError as error:
            assert "rollout[0] (16 prompts left)" in str(error) and "rollout.timeout_s=0.01" in str(error)
        assert time.monotonic() - started < 5.0
    finally:
        trainer.rollouts.cfg = saved
        for stream in batch.streams:  # let the worker finish, so later tests find it idle
            for ref in stream:
                ray.get(ref)


def test_an_error_inside_the_engine_is_handled_like_a_death(trainer):
    """The engine raises inside vLLM's model step (a RayTaskError; the actor itself lives): the worker
    is restarted, re-synced and its prompts re-issued; the cause is named; completions are unchanged."""
    if trainer.sync.version == 0:
        trainer.step(0)
    prompts, n = _prompts(trainer, 16), 4
    reference = generate_and_score(trainer.rollouts, trainer.rewards, prompts, n, 1.0, seed=98)
    ray.get(trainer.rollouts.actors[0].arm_engine_error.remote("injected for the test"))
    rollout = generate_and_score(trainer.rollouts, trainer.rewards, prompts, n, 1.0, seed=98, resync=trainer.sync.resync)

    assert rollout.restarts == 1
    assert rollout.restart_causes == ["rollout[0] failed inside its engine: RuntimeError: injected for the test"]
    assert [s.response_ids for s in rollout.samples] == [s.response_ids for s in reference.samples]
    assert {s.policy_version for s in rollout.samples} == {trainer.sync.version}
    assert _engine_matches_learner(trainer, 0) < 1e-4  # a fresh engine, loaded with the current weights
