"""A learner rank that hangs while the others wait for it inside a collective is named (real DeepSpeed
ranks on gloo in Ray actors; the hang is a call that keeps rank 1 busy, queued before the update)."""
from __future__ import annotations

import time

import pytest

from tests.test_weight_sync import Unplaced, _with


def test_a_rank_that_hangs_while_the_others_wait_in_a_collective_is_named(trainer):
    """learner.collective_timeout_s=3 is the gloo timeout of the ranks' process group: rank 0 enters the
    gradient all-reduce, waits 3 s for rank 1 and fails; the driver names learner[1], which is still
    running, instead of passing on rank 0's bare gloo error, before its own deadline for the call
    (learner.call_timeout_s=30)."""
    from cluster.handles.groups import ActorFailure, LearnerGroup
    from protocol.batch import TrainBatch

    learners = LearnerGroup(_with(trainer.cfg, learner={"collective_timeout_s": 3, "call_timeout_s": 30},
                                  algorithm={"kl_coef": 0.0}), trainer.model_path,
                            Unplaced())
    try:
        learners.actors[1].__ray_call__.remote(lambda worker: time.sleep(120))  # rank 1 is stuck from now on
        batch = TrainBatch([[1, 2, 3], [4, 5]], [[6, 7], [8]], [[-1.0, -1.0], [-1.0]], [1.0, -1.0], [[1.0, 1.0], [1.0]])
        start = time.monotonic()
        with pytest.raises(ActorFailure, match=r"^learner\.train_step: learner\[1\] did not finish, and "
                                               r"learner\[0\] failed meanwhile \(.*\): learner\[1\] hangs") as err:
            learners.train(batch)
        assert err.value.worker == "learner[1]"
        assert time.monotonic() - start < 30  # before the group's own deadline (learner.call_timeout_s)
    finally:
        learners.kill()
