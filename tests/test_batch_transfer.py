"""The step's batch reaches the learner ranks through Ray's object store, serialised once per call
whatever the number of ranks: the session trainer's 2 real learner ranks, with ray.put watched (the real
ray.put still does the work)."""
from __future__ import annotations

import ray

from cluster.handles import groups
from protocol.batch import TrainBatch


def test_a_call_serialises_the_batch_once_for_all_ranks(trainer, monkeypatch):
    puts: list[object] = []
    real_put = ray.put

    def watched_put(value, *args, **kwargs):
        puts.append(value)
        return real_put(value, *args, **kwargs)

    monkeypatch.setattr(groups.ray, "put", watched_put)
    samples = trainer.rollouts.generate(trainer.train_data.batch(4, 2), 2, 1.0, seed=4)
    batch = TrainBatch([s.prompt_ids for s in samples], [s.response_ids for s in samples], [],
                       [0.0] * len(samples), [])
    assert len(trainer.learners.actors) == 2
    scored = trainer.learners.logprobs(batch)
    assert [len(x) for x in scored] == [len(s.response_ids) for s in samples]  # each rank scored its share
    assert [p for p in puts if isinstance(p, TrainBatch)] == [batch]  # one copy, not one per rank
