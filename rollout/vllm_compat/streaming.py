"""Generation driven step by step (streaming), and what happens between two engine steps: weight loads
(partial rollouts: the requests in flight continue under the new weights) and side scorings."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Iterator

import torch

from rollout.vllm_compat.engine import prompt_token_logprobs, sampling_params, token_prompts
from rollout.vllm_compat.resumable import Segments, resumable_stream


def stream_generate(engine: Any, prompt_ids: list[list[int]], params: list[Any],
                    swap: Callable[[Callable[[], None] | None], int | None] | None = None,
                    side: Callable[[], list[SideScoring]] | None = None) -> Iterator[list[tuple[int, Any, list[Segments]]]]:
    """Generate like `LLM.generate`, but yield after every engine step the requests that finished in it,
    as (position in `prompt_ids`, RequestOutput, the version switches of each completion). The same
    requests, batched the same way, with the same per-request seeds give the same completions as
    `LLM.generate`. An engine whose core runs in another process (multiprocess: vLLM's GPU default) is
    driven by resumable.py's loop, which continues interrupted requests by abort and resubmission.

    `swap` (partial rollouts): called between engine steps; it loads newer weights if a sync is waiting
    and returns their version (None: nothing waited); given a callable, it calls it first when it loads.
    The requests in flight then continue under the new weights: each records how many tokens it had
    produced (its switches: [(first token index, version)], empty when the weights never changed under
    it), and their KV cache is dropped so that the next step recomputes prompt and output tokens under the
    new weights (`recompute_running`).

    `side` (partial rollouts): called between engine steps too; sequences it returns are scored (prompt
    log-probs, as `LLM.generate` with prompt_logprobs would) by the same engine loop, beside the requests in
    flight, and handed to their `done` instead of being yielded (the parity check after a sync)."""
    side_requests = SideRequests(engine)
    if not in_process(engine):
        yield from resumable_stream(engine, prompt_ids, params, swap, side, side_requests)
        return
    request_ids = engine.enqueue(token_prompts(prompt_ids), params, use_tqdm=False)
    # enqueue returns vLLM's internal ids ("<ours>-<8 random chars>"); outputs carry ours.
    position = {rid.rsplit("-", 1)[0]: i for i, rid in enumerate(request_ids)}
    position.update({rid: i for i, rid in enumerate(request_ids)})
    internal = {rid.rsplit("-", 1)[0]: rid for rid in request_ids}

    def scheduler_id(output: Any) -> str:  # an output's request as the scheduler names it
        return internal.get(output.request_id, output.request_id)

    switches: dict[str, Segments] = {}  # scheduler request id (a child of n > 1) -> its switches
    core = engine.llm_engine
    while core.has_unfinished_requests():
        version = swap(None) if swap is not None else None
        if version is not None:
            for rid, produced in output_token_counts(engine).items():
                switches.setdefault(rid, []).append((produced, version))
        side_requests.enqueue(side() if side is not None else [])
        outputs = [out for out in core.step() if out.finished]
        outputs = [out for out in outputs if not side_requests.take(out)]
        finished = [(position[out.request_id], out) for out in outputs if out.request_id in position]
        if finished:
            yield [(i, out, [switches.pop(_child_id(scheduler_id(out), c.index, len(out.outputs)), [])
                             for c in out.outputs]) for i, out in finished]


@dataclass
class SideScoring:
    """Sequences to score inside a running generation (stream_generate's `side`); `done` gets, per
    sequence, the log-probs of its tokens 1..end."""

    token_ids: list[list[int]]
    done: Callable[[list[list[float]]], None]


class SideRequests:
    """Side scorings enqueued into a running generation, their log-probs collected as they finish."""

    def __init__(self, engine: Any) -> None:
        self.engine = engine
        self.scoring: dict[str, tuple[SideScoring, int]] = {}  # side requests (outputs' ids) -> (job, position in it)
        self.scored: dict[int, dict[int, list[float]]] = {}  # id(job) -> position -> log-probs

    def enqueue(self, jobs: list[SideScoring]) -> None:
        for job in jobs:
            ids = self.engine.enqueue(token_prompts(job.token_ids),
                                      sampling_params(1, 1.0, 1.0, 1, 0, prompt_logprobs=True), use_tqdm=False)
            self.scoring.update({rid.rsplit("-", 1)[0]: (job, j) for j, rid in enumerate(ids)})
            self.scored[id(job)] = {}

    def take(self, out: Any) -> bool:
        """Whether `out` (a finished output) is a side request's; the job is done once all of its are."""
        if out.request_id not in self.scoring:
            return False
        job, j = self.scoring.pop(out.request_id)
        self.scored[id(job)][j] = prompt_token_logprobs(out)
        if len(self.scored[id(job)]) == len(job.token_ids):
            by_position = self.scored.pop(id(job))
            job.done([by_position[k] for k in range(len(job.token_ids))])
        return True


def in_process(engine: Any) -> bool:
    """Whether the engine core runs in this process (VLLM_ENABLE_V1_MULTIPROCESSING=0: vLLM's InprocClient),
    so that its scheduler can be read between steps."""
    from vllm.v1.engine.core_client import InprocClient

    return isinstance(engine.llm_engine.engine_core, InprocClient)


def _child_id(request_id: str, index: int, n: int) -> str:
    """The scheduler's id of completion `index` of a request (vllm/v1/engine/parallel_sampling.py: n > 1
    fans out into children "<index>_<parent id>")."""
    return request_id if n == 1 else f"{index}_{request_id}"


def output_token_counts(engine: Any) -> dict[str, int]:
    """Tokens each unfinished request (the scheduler's ids) has produced so far. In-process engine only:
    the multiprocess engine's scheduler lives in another process (resumable.py counts on the client side)."""
    inner = getattr(engine.llm_engine.engine_core, "engine_core", None)
    if inner is None:
        raise RuntimeError("partial rollouts need vLLM's in-process engine core (the scheduler's request state)")
    return {rid: request.num_output_tokens for rid, request in inner.scheduler.requests.items()}


def engine_threads() -> int:
    """The calling thread's OpenMP team size (call it on the thread that built the engine)."""
    return torch.get_num_threads()


def join_engine_threads(count: int) -> None:
    """Let this thread (the rollout actor's "sync" thread) run the CPU engine: OpenMP's team size is per
    thread, and vLLM's CPU attention checks that the one that built a step's metadata runs it ("Check
    failed: input->metadata->thread_num == thread_num (2 vs. 1)" otherwise, measured). vLLM's CPU worker
    replaces `torch.set_num_threads` with a no-op after binding its threads, so torch's own setter is called."""
    if torch.get_num_threads() != count:
        torch._C._set_num_threads(count)


def recompute_running(engine: Any) -> None:
    """Drop the KV cache of every running request: vLLM's scheduler preempts them (back to its waiting
    queue, their tokens kept) and the next step recomputes prompt + output under the current weights. It
    is what AsyncLLM.pause_generation(mode="keep", clear_cache=True) does in vLLM's own weight-update path."""
    engine.reset_prefix_cache(reset_running_requests=True)


def load_weights(engine: Any, method: str, *args: Any, in_flight: bool = False) -> list[Any]:
    """Run one of WeightSyncExtension's loaders in every worker, then drop the stale prefix cache
    (`in_flight`: between the steps of a generation, also the KV cache of its running requests, see
    `recompute_running`). Returns each worker's result."""
    results = engine.collective_rpc(method, args=args)
    if in_flight:
        recompute_running(engine)
    else:
        reset_prefix_cache(engine)
    return results


def reset_prefix_cache(engine: Any) -> None:
    engine.reset_prefix_cache()
