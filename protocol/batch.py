"""Batch types passed between the driver, the rollout workers, the reward pool and the learner."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TypeVar

T = TypeVar("T")


@dataclass
class Prompt:
    """One problem as the driver hands it to rollout workers."""

    index: int  # position in the dataset; identifies the group of samples
    token_ids: list[int]
    answer: str  # gold answer, used by the reward only
    text: str = ""


@dataclass
class Sample:
    """One generated completion with everything the learner needs to train on it."""

    prompt_index: int
    prompt_ids: list[int]
    response_ids: list[int]
    response_logprobs: list[float]  # sampling logprob of each response token
    text: str
    finish_reason: str  # "stop" or "length"
    policy_version: int  # version of the weights that generated it
    reward: float = 0.0
    correct: bool = False
    advantage: float = 0.0

    @property
    def truncated(self) -> bool:
        return self.finish_reason == "length"


@dataclass
class GeneratedChunk:
    """The prompts whose completions finished in one engine step, streamed from a rollout worker."""

    samples: list[Sample]  # all n completions of each finished prompt
    engine_s: float  # seconds the engine worked since the previous chunk (its busy time)


def overlong_loss_mask(response_lens: list[int], finish_reasons: list[str], mask_truncated: bool) -> list[list[float]]:
    """Per-token loss masks; with `mask_truncated`, responses cut off at the length limit
    (finish_reason "length") get an all-zero mask.

    A truncated response never reached an answer, so its reward says little about its tokens
    (DAPO's overlong filtering). It still counts in its group's advantage baseline; it only stops
    contributing to the loss, and it does not count as a token or a sequence in the normalisers.
    """
    keep = [not (mask_truncated and reason == "length") for reason in finish_reasons]
    return [[float(k)] * n for n, k in zip(response_lens, keep, strict=True)]


def unshard(per_rank: list[list[T]]) -> list[T]:
    """Inverse of `TrainBatch.shard`: rank r's k-th item is item r + k * world_size of the batch."""
    out: list[T] = [None] * sum(len(part) for part in per_rank)  # type: ignore[list-item]
    for rank, part in enumerate(per_rank):
        out[rank::len(per_rank)] = part
    return out


@dataclass
class TrainBatch:
    """The learner's input for one policy step: flat lists, one entry per sample."""

    prompt_ids: list[list[int]]
    response_ids: list[list[int]]
    old_logprobs: list[list[float]]
    advantages: list[float]
    loss_mask: list[list[float]] = field(default_factory=list)
    # Off-policy training (train.max_staleness > 0): the rollout engine's sampling logprobs, used for
    # importance weights; the learner then takes the PPO ratio against its own forward, not old_logprobs.
    behaviour_logprobs: list[list[float]] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.response_ids)

    @classmethod
    def from_samples(cls, samples: list[Sample], mask_truncated: bool = False) -> "TrainBatch":
        """`mask_truncated`: overlong handling, see `overlong_loss_mask`."""
        return cls(
            prompt_ids=[s.prompt_ids for s in samples],
            response_ids=[s.response_ids for s in samples],
            old_logprobs=[s.response_logprobs for s in samples],
            advantages=[s.advantage for s in samples],
            loss_mask=overlong_loss_mask([len(s.response_ids) for s in samples],
                                         [s.finish_reason for s in samples], mask_truncated),
        )

    def shard(self, rank: int, world_size: int) -> "TrainBatch":
        """Every world_size-th sample starting at rank: an even split for data-parallel ranks."""
        pick = lambda xs: xs[rank::world_size]  # noqa: E731
        return TrainBatch(
            pick(self.prompt_ids), pick(self.response_ids), pick(self.old_logprobs),
            pick(self.advantages), pick(self.loss_mask), pick(self.behaviour_logprobs),
        )
