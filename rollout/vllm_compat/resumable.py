"""Interruptible generation on vLLM's multiprocess engine (the engine core in its own process: vLLM's GPU
default, `rollout.multiprocess_engine` on CPU), by abort and continue.

The in-process path (streaming.py) loads weights between two engine steps and reads each request's token
count from the scheduler. Neither holds here: the engine core steps on its own in another process, so there
is no "between two steps" on the client side, and its scheduler cannot be read. vLLM's own answer,
`AsyncLLM.pause_generation(mode="keep")` / `resume_generation`, exists only on the asyncio engine (the sync
`LLM` that RolloutWorker drives, and every other call on it, has no pause), and which outputs reached the
client before the pause is left to timing there (vllm/v1/engine/async_llm.py `pause_generation`: "Small
sleep to help ensure that final outputs ... are returned"), so a token's version would be a guess. So the
requests go in through `LLMEngine.add_request` streaming deltas (each step's tokens reach the client), and
at a sync, with `LLMEngine`'s public calls only:

1. every unfinished generation request is aborted (`LLMEngine.abort_request`): the tokens and log-probs the
   client has received are kept, whatever the core made after them is dropped (vLLM's output processor
   ignores outputs of an aborted request); the client's count is the truth, with no race;
2. the weights are loaded (`collective_rpc`, queued behind the aborts in the core's input queue) and the
   prefix cache is reset, so nothing computed under the old weights is reused;
3. each interrupted completion is resubmitted as a request of its own: prompt + its tokens so far, the
   remaining `max_tokens`, n=1. The engine prefills that context under the new weights, as vLLM's keep-mode
   pause with `clear_cache=True` recomputes it.

A new-version token is then drawn from the new policy given the whole context, exactly as on the in-process
path. What differs: the random stream of a continuation (its seed is derived from the completion's seed and
its token count, so a run repeats given where the syncs land) and the tokens the core made after the
client's last output (discarded). Without a sync this is plain streaming generation: the requests
(n > 1 kept as one request, vLLM's children and seeds) and their tokens, log-probs and texts are those of
`LLM.generate`. The interrupted requests' continuations go to the back of vLLM's queue (first come, first
served), behind requests that never ran; a sync aborts and resubmits those too, in their order, so that
the queue keeps its order.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

_REQUEST_IDS = itertools.count()

Segments = list[tuple[int, int]]  # (index of the first response token generated with a version, that version)


@dataclass
class Completion:
    """What RolloutWorker._samples reads of a vLLM CompletionOutput (the completion's requests' deltas joined)."""

    index: int
    token_ids: list[int]
    logprobs: list[dict[int, Any]]
    text: str
    finish_reason: str | None


@dataclass
class PromptOutput:
    """A prompt's completions (RequestOutput.outputs), in sample order."""

    outputs: list[Any]


@dataclass(eq=False)
class Stream:
    """One completion (sample `index` of prompt `prompt`) across the requests that generated it, as the
    client received it: its requests stream deltas (RequestOutputKind.DELTA, so a step costs the same at
    token 10 as at token 10000), kept here."""

    prompt: int
    index: int
    temperature: float
    top_p: float
    max_tokens: int
    seed: int | None  # this completion's own seed (vLLM's child seed for n > 1: parent seed + index)
    tokens: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    pieces: list[str] = field(default_factory=list)  # vLLM's text deltas
    switches: Segments = field(default_factory=list)
    finish_reason: str | None = None
    cut: bool = False  # interrupted after some of its tokens: its text is decoded whole (see `completion`)

    def receive(self, delta: Any, sampled_logprobs: Callable[[list[int], Any], list[float]]) -> None:
        ids = list(delta.token_ids)
        self.tokens += ids
        self.logprobs += sampled_logprobs(ids, delta.logprobs) if ids else []
        self.pieces.append(delta.text)
        self.finish_reason = delta.finish_reason

    def interrupt(self, version: int) -> None:
        """Its request was aborted and weights `version` loaded: it goes on from what the client received."""
        self.switches.append((len(self.tokens), version))
        self.cut = self.cut or bool(self.tokens)

    def continuation_seed(self) -> int | None:
        """A continuation's seed: its own random stream (the completion's seed would replay the draws that
        made its first tokens), fixed by where it was interrupted."""
        if self.seed is None or not self.tokens:
            return self.seed
        return (self.seed * 1_000_003 + len(self.tokens)) % 2**31

    def completion(self, decode: Callable[[list[int]], str]) -> Completion:
        """The completion as RolloutWorker._samples reads it. A text cut by an interruption is decoded from
        the whole response: the cut may fall inside a multi-byte character, whose bytes vLLM's incremental
        detokenizer holds back and the aborted request never emits."""
        from vllm.logprobs import Logprob

        return Completion(self.index, self.tokens, [{tok: Logprob(lp)} for tok, lp in zip(self.tokens, self.logprobs)],
                          decode(self.tokens) if self.cut else "".join(self.pieces), self.finish_reason)


def resumable_stream(engine: Any, prompt_ids: list[list[int]], params: list[Any],
                     swap: Callable[[Callable[[], None]], int | None] | None = None,
                     side: Callable[[], list[Any]] | None = None,
                     side_requests: Any = None) -> Iterator[list[tuple[int, Any, list[Segments]]]]:
    """streaming.stream_generate for an engine whose core runs in another process (see the module
    docstring). `swap(before)`: loads waiting weights, calling `before` first (here: abort the requests in
    flight), and returns their version (None: nothing waited). `side_requests`: streaming.SideRequests."""
    from vllm.sampling_params import RequestOutputKind

    from rollout.vllm_compat.engine import token_prompts

    core = engine.llm_engine
    streams = [[Stream(i, j, p.temperature, p.top_p, p.max_tokens, None if p.seed is None else p.seed + j)
                for j in range(p.n)] for i, p in enumerate(params)]
    owner: dict[str, list[Stream]] = {}  # live request (outputs' id) -> its completions, by child index
    internal: dict[str, str] = {}  # live request (outputs' id) -> the engine's own id (a parent's when n > 1)

    def submit(prompts: list[list[int]], request_params: list[Any], owners: list[list[Stream]]) -> None:
        # LLMEngine.add_request, not LLM.enqueue: LLM makes every request FINAL_ONLY (vllm/entrypoints/common/
        # offline.py `_add_request`), and an interrupted request's tokens are then never seen. DELTA: each
        # output holds the tokens of its step only (CUMULATIVE would copy the whole text every step).
        for prompt, request_params_one, owned in zip(token_prompts(prompts), request_params, owners):
            request_id = f"resumable-{next(_REQUEST_IDS)}"  # outputs carry it; LLM's own ids are plain numbers
            request_params_one.output_kind = RequestOutputKind.DELTA
            internal[request_id] = core.add_request(request_id, prompt, request_params_one)
            owner[request_id] = owned

    submit(prompt_ids, params, streams)
    unfinished = [len(s) for s in streams]
    interrupted: list[Stream] = []

    def abort_in_flight() -> None:
        live = [rid for rid, owned in owner.items() if any(s.finish_reason is None for s in owned)]
        # By the engine's own id: aborting a parent (n > 1) that way aborts its children and drops the parent's
        # record too (vllm/v1/engine/output_processor.py abort_requests); by the outputs' id only the children go
        # and the parent's record stays behind, one per n > 1 request at every sync.
        core.abort_request([internal.pop(rid) for rid in live], internal=True)
        interrupted.extend(s for rid in live for s in owner.pop(rid) if s.finish_reason is None)

    try:
        yield from _steps(core, engine, streams, owner, internal, unfinished, interrupted, submit, abort_in_flight,
                          prompt_ids, swap, side, side_requests)
    finally:  # a consumer that stops early (an error, a cancelled call) leaves no request of its own running
        if owner:
            core.abort_request([internal[rid] for rid in owner if rid in internal], internal=True)


def _steps(core: Any, engine: Any, streams: list[list[Stream]], owner: dict[str, list[Stream]],
           internal: dict[str, str], unfinished: list[int], interrupted: list[Stream], submit: Callable[..., None],
           abort_in_flight: Callable[[], None], prompt_ids: list[list[int]],
           swap: Callable[[Callable[[], None]], int | None] | None, side: Callable[[], list[Any]] | None,
           side_requests: Any) -> Iterator[list[tuple[int, Any, list[Segments]]]]:
    """The engine loop of resumable_stream: step, hand back finished prompts, resubmit after a sync."""
    from rollout.vllm_compat.engine import sampled_logprobs, sampling_params

    while core.has_unfinished_requests():
        version = swap(abort_in_flight) if swap is not None else None
        if version is not None:
            for stream in interrupted:
                stream.interrupt(version)
            submit([prompt_ids[s.prompt] + s.tokens for s in interrupted],
                   [sampling_params(1, s.temperature, s.top_p, s.max_tokens - len(s.tokens), s.continuation_seed())
                    for s in interrupted], [[s] for s in interrupted])
            interrupted.clear()
        side_requests.enqueue(side() if side is not None else [])
        finished = []
        for out in core.step():
            if side_requests.take(out) or out.request_id not in owner:
                continue
            for delta in out.outputs:
                stream = owner[out.request_id][delta.index]
                stream.receive(delta, sampled_logprobs)
                if stream.finish_reason is not None:
                    unfinished[stream.prompt] -= 1
                    if not unfinished[stream.prompt]:
                        finished.append(stream.prompt)
            if out.finished:
                owner.pop(out.request_id)
                internal.pop(out.request_id, None)
        if finished:
            decode = lambda ids: engine.get_tokenizer().decode(ids, skip_special_tokens=True)  # noqa: E731
            yield [(i, PromptOutput([s.completion(decode) for s in streams[i]]), [s.switches for s in streams[i]])
                   for i in finished]
