"""Batch types passed between the driver, the rollout workers, the reward pool and the learner."""
from __future__ import annotations

from dataclasses import dataclass, field, fields


@dataclass
class Prompt:
    """One problem as the driver hands it to rollout workers."""

    index: int  # position in the dataset; identifies the group of samples
    token_ids: list[int]
    answer: str  # gold answer, used by the reward only
    text: str = ""


@dataclass
class Sample:
    """One generated completion as the rollout worker made it (its only writer): tokens, sampling
    log-probs, how it ended, the policy version. Scoring makes a `ScoredSample` of it."""

    prompt_index: int
    prompt_ids: list[int]
    response_ids: list[int]
    response_logprobs: list[float]  # sampling logprob of each response token
    text: str
    finish_reason: str  # "stop" or "length"
    policy_version: int  # version of the weights that generated it (partial rollouts: its oldest token's)
    # Partial rollouts (train.partial_rollouts): the policy version of each response token, when a weight
    # sync came while it generated; empty: every token is of `policy_version`.
    token_versions: list[int] = field(default_factory=list)

    def versions(self) -> list[int]:
        """The policy version of each response token."""
        return self.token_versions or [self.policy_version] * len(self.response_ids)

    @property
    def truncated(self) -> bool:
        return self.finish_reason == "length"


@dataclass(kw_only=True)  # after Sample's defaulted fields
class ScoredSample(Sample):
    """A Sample with its reward, made once by the driver from the reward pool's verdict
    (cluster.loop.generation.scored_samples) and never changed after. The advantages are not here: they
    live in the TrainBatch that computes them (cluster.loop.update.PolicyUpdate.build)."""

    reward: float  # the verdict's reward, plus the overlong shaping when configured (cluster.loop.dynamic)
    correct: bool

    @classmethod
    def of(cls, sample: Sample, reward: float, correct: bool) -> "ScoredSample":
        """`sample`'s generated fields with this reward and correctness."""
        return cls(**{f.name: getattr(sample, f.name) for f in fields(Sample)}, reward=reward, correct=correct)


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


@dataclass
class TrainBatch:
    """The learner's (and critic's) input for one policy step: flat lists, one entry per sample, every
    per-token list as long as the sample's response. The driver builds it once per step, before the
    update (cluster/loop/update.py), so the learner ranks only read it.
    """

    prompt_ids: list[list[int]]
    response_ids: list[list[int]]
    # The PPO "old" policy: the learner's own log-probs, computed once before the first update in the
    # same micro-batching as training (LearnerWorker.old_logprobs). Never the rollout engine's. Empty when
    # the update is one optimizer step: the training forward's own log-probs are the old ones then.
    old_logprobs: list[list[float]]
    # One float per sample (outcome estimators: every response token gets it) or one list per sample
    # with a float per response token (GAE); written by cluster.loop.update.PolicyUpdate.build. Empty: zeros
    # (learner.batching.pad), as in the SFT batches that have none.
    advantages: list[float] | list[list[float]]
    loss_mask: list[list[float]] = field(default_factory=list)
    # The rollout engine's sampling log-probs (pi_behaviour), in sync and async modes alike: only for
    # the train/inference mismatch metric and importance correction (algorithm.tis).
    behaviour_logprobs: list[list[float]] = field(default_factory=list)
    ref_logprobs: list[list[float]] = field(default_factory=list)  # reference model, when algorithm.kl_coef > 0
    values: list[list[float]] = field(default_factory=list)  # critic values before the update (value clipping)
    returns: list[list[float]] = field(default_factory=list)  # critic targets (GAE)

    def __len__(self) -> int:
        return len(self.response_ids)

    @classmethod
    def from_samples(cls, samples: list[Sample], mask_truncated: bool = False) -> "TrainBatch":
        """Tokens, the engine's sampling log-probs as `behaviour_logprobs` and the loss mask
        (`mask_truncated`: overlong handling, see `overlong_loss_mask`). The learner's old log-probs,
        reference log-probs, values, advantages and returns are filled in by the driver."""
        return cls(
            prompt_ids=[s.prompt_ids for s in samples],
            response_ids=[s.response_ids for s in samples],
            old_logprobs=[],
            advantages=[],
            loss_mask=overlong_loss_mask([len(s.response_ids) for s in samples],
                                         [s.finish_reason for s in samples], mask_truncated),
            behaviour_logprobs=[s.response_logprobs for s in samples],
        )

    def select(self, indices: list[int]) -> "TrainBatch":
        """The samples at `indices`, in that order (a field left empty stays empty)."""
        def pick(xs: list) -> list:
            return [xs[i] for i in indices] if xs else []

        return TrainBatch(**{f.name: pick(getattr(self, f.name)) for f in fields(self)})
