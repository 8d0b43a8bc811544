"""Interruptible generation (train.partial_rollouts) on the rollout worker: a weight load or a parity
scoring that arrives on the actor's second ("sync") thread while a generation runs is handed to the
generating thread, which does it between two engine steps; the requests in flight then continue under the
new weights, and their samples record each token's policy version (RolloutWorker._samples). On an engine
core in its own process (multiprocess, every GPU engine) "between two engine steps" is between two of the
client's steps: the requests in flight are aborted before the load and continued after it
(rollout/vllm_compat/resumable.py).

The engine is only ever driven by one thread at a time: `turn` (a condition) is held by `generate`,
`sequence_logprobs` and a load, and a generation in progress marks itself `generating` so that the sync
thread queues its work instead of touching the engine.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any, Callable


@dataclass
class PendingLoad:
    """A weight load that waits for the generating thread's next pause between engine steps."""

    key: str
    version: int
    payload: Any
    done: bool = False
    seconds: float = 0.0
    error: BaseException | None = None


@dataclass(eq=False)
class PendingScore:
    """Sequences to score between engine steps of the generation in progress (the parity check)."""

    token_ids: list[list[int]]
    done: bool = False
    logprobs: list[list[float]] | None = None


class InFlightWork:
    """The RolloutWorker's side of partial rollouts (a mixin: it uses the worker's `vc`, `_load` and
    `parity_logprobs`)."""

    vc: Any

    def _init_in_flight(self) -> None:
        self.turn = threading.Condition()
        self.generating = False
        self.pending: PendingLoad | None = None
        self.scoring: list[PendingScore] = []  # parity checks waiting for the generating thread

    def _load(self, key: str, version: int, payload: Any, in_flight: bool = False) -> float:
        raise NotImplementedError

    def parity_logprobs(self, token_ids: list[list[int]]) -> list[list[float]]:
        raise NotImplementedError

    def _load_pending(self, before: Callable[[], None] | None = None) -> int | None:
        """On the generating thread, between engine steps: the load waiting in `pending`, if any (its
        version; None: nothing waited). `before`: called first when there is a load (the multiprocess
        engine's loop aborts the requests in flight there, rollout/vllm_compat/resumable.py)."""
        with self.turn:
            ticket, self.pending = self.pending, None
            if ticket is None:
                return None
            try:
                if before is not None:
                    before()
                ticket.seconds = self._load(ticket.key, ticket.version, ticket.payload, in_flight=True)
            except BaseException as error:  # the waiting sync reports it; the generation stops with it too
                ticket.error = error
                raise
            finally:
                ticket.done = True
                self.turn.notify_all()
            return ticket.version

    def _pending_scores(self) -> list[Any]:
        """On the generating thread, between engine steps: the scorings waiting, handed to the engine loop."""
        with self.turn:
            tickets, self.scoring = self.scoring, []
        return [self.vc.SideScoring(t.token_ids, lambda logprobs, t=t: self._scored(t, logprobs)) for t in tickets]

    def _scored(self, ticket: PendingScore, logprobs: list[list[float]]) -> None:
        with self.turn:
            ticket.logprobs, ticket.done = logprobs, True
            self.turn.notify_all()

    def parity_logprobs_in_flight(self, token_ids: list[list[int]]) -> list[list[float]]:
        """Partial rollouts: `parity_logprobs` without waiting for the generation in progress (on the actor's
        "sync" thread, as load_weights_in_flight): the generating thread scores the sequences beside its own
        requests, under the weights it holds (the sync's, loaded before this call came)."""
        with self.turn:
            if self.generating:
                ticket = PendingScore(token_ids)
                self.scoring.append(ticket)
                while self.generating and not ticket.done:
                    self.turn.wait()
                if ticket.done and ticket.logprobs is not None:
                    return ticket.logprobs
                if ticket in self.scoring:
                    self.scoring.remove(ticket)
            return self.parity_logprobs(token_ids)  # joins the engine's threads (RolloutWorker._check_awake)

    def load_weights_in_flight(self, key: str, version: int, payload: Any = None) -> float:
        """Partial rollouts: `load_weights` without waiting for the generation in progress to drain. Called
        on the actor's own "sync" concurrency group (a second thread), so it runs while `generate_stream`
        does: the generating thread loads between two engine steps and the requests continue; with no
        generation running, the load happens here (holding the engine's turn, so none starts meanwhile)."""
        with self.turn:
            if self.generating:
                ticket = self.pending = PendingLoad(key, version, payload)
                while self.generating and not ticket.done:
                    self.turn.wait()
                if ticket.done:
                    if ticket.error is not None:
                        raise RuntimeError(f"weight load v{version} between engine steps failed: {ticket.error}") \
                            from ticket.error
                    return ticket.seconds
                self.pending = None  # the generation ended first: load here
            return self._load(key, version, payload)  # joins the engine's threads
