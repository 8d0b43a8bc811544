"""The base of the driver-side actor group handles (cluster/handles/groups.py, cluster/handles/rollout_group.py), and the
waiting they share: a failure names the actor (`learner[1]`), formatted in one place (`actor_name`).

Outside the group modules nothing reaches an actor handle: every remote call is a named method of its
group's class (tests/test_group_handles.py checks it on the source)."""
from __future__ import annotations

import re
import time
from typing import Any, Callable, TypeVar

import ray

from protocol.batch import TrainBatch

T = TypeVar("T")


def get_within(refs: Any, timeout_s: float, what: str) -> Any:
    try:
        return ray.get(refs, timeout=timeout_s)
    except ray.exceptions.GetTimeoutError:
        raise TimeoutError(f"{what} did not finish within {timeout_s:.0f}s") from None


class ActorFailure(RuntimeError):
    """An actor died, failed or did not answer in time; the message names it, e.g. `learner[1]`.
    `worker`: that name (None for a deadline); `lost`: the actor died (it may be restarting)."""

    def __init__(self, message: str, worker: str | None = None, lost: bool = False) -> None:
        super().__init__(message)
        self.worker, self.lost = worker, lost


def actor_error_text(error: Exception) -> str:
    """'ExceptionClass: last line of its message', of the remote cause when Ray wrapped it; a kill by
    Ray's memory monitor as such, with the memory figures Ray gives (oom_text)."""
    cause = getattr(error, "cause", None) or error
    if (oom := oom_text(str(cause))) is not None:
        return oom
    return f"{type(cause).__name__}: {str(cause).strip().splitlines()[-1] if str(cause).strip() else ''}"


def oom_text(message: str) -> str | None:
    """One line from Ray's OOM-kill message (ray.exceptions.OutOfMemoryError, or an actor death whose
    detail carries it): the node's memory against Ray's threshold and what the killed worker used.
    None when the message is not one."""
    if "running low on memory" not in message:
        return None
    node = re.search(r"was ([\d.]+GB) used / ([\d.]+GB) limit", message)
    threshold = re.search(r"threshold of \d+B \(([\d.]+)% of", message)
    killed = re.search(r"Selected to kill: .*?task name=([^,]+),.*?pid=(\d+), actual memory used=([\d.]+GB)", message, re.S)
    parts = ["killed by Ray's memory monitor (OOM)"]
    if killed:
        parts.append(f"{killed.group(1)} (pid {killed.group(2)}) used {killed.group(3)}")
    if node:
        parts.append(f"the node had {node.group(1)} used of {node.group(2)}"
                     + (f", above Ray's kill threshold of {threshold.group(1)}%" if threshold else ""))
    return "; ".join(parts) + " (python -m cluster.memory --config ... predicts each process; RAY_memory_usage_threshold)"


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else text


def wait_named(named: list[tuple[str, ray.ObjectRef]], timeout_s: float, what: str,
               error: type[ActorFailure] = ActorFailure, name_task_errors: bool = True,
               grace_s: float = 10.0) -> list[Any]:
    """Results of every actor's part; the first failure, or the deadline, raises `error` naming the
    actor(s). `name_task_errors=False` lets an exception raised by the method itself through as Ray
    gives it (an instance of the remote exception's class, so `except OSError` still works), unless
    other actors are still running `grace_s` after it: a rank that hangs leaves the others failing in a
    collective (gloo's timeout), so then the error names both. Deaths and timeouts are always named."""
    pending = {ref: name for name, ref in named}
    deadline = time.monotonic() + timeout_s
    while pending:
        ready, _ = ray.wait(list(pending), num_returns=1, timeout=max(0.0, deadline - time.monotonic()))
        if not ready:
            raise error(f"{what}: {', '.join(pending.values())} did not finish within {timeout_s:g}s")
        name = pending.pop(ready[0])
        try:
            ray.get(ready[0])
        except ray.exceptions.RayError as err:
            if isinstance(err, ray.exceptions.RayTaskError) and not name_task_errors:
                ray.wait(list(pending), num_returns=len(pending), timeout=min(grace_s, max(0.0, deadline - time.monotonic())))
                stuck = [n for ref, n in pending.items() if not ray.wait([ref], timeout=0)[0]]
                if not stuck:
                    raise
                raise error(f"{what}: {', '.join(stuck)} did not finish, and {name} failed meanwhile "
                            f"({actor_error_text(err)}): {' and '.join(stuck)} hangs, or waits for {name} in a collective",
                            stuck[0]) from err
            lost = isinstance(err, (ray.exceptions.RayActorError, ray.exceptions.ActorUnavailableError,
                                    ray.exceptions.OutOfMemoryError))
            raise error(f"{what}: {name} failed: {actor_error_text(err)}", name, lost) from err
    return ray.get([ref for _, ref in named])


def shared_batches(args: tuple[Any, ...]) -> tuple[Any, ...]:
    """`args` with each TrainBatch put into Ray's object store once, as a reference: every rank of the
    call reads the same serialised copy (Ray resolves a top-level reference argument), instead of Ray
    pickling the batch into each rank's call (hundreds of MB per copy at 7B batch sizes)."""
    return tuple(ray.put(a) if isinstance(a, TrainBatch) else a for a in args)


def merge_indexed(per_rank: list[list[tuple[int, T]]], size: int) -> list[T]:
    """The ranks' (sample index, value) pairs as one list in batch order; every index exactly once."""
    out: list[Any] = [None] * size
    for index, value in (pair for part in per_rank for pair in part):
        out[index] = value
    missing = [i for i, v in enumerate(out) if v is None]
    if missing:
        raise RuntimeError(f"no rank returned samples {missing[:5]}")
    return out


# One actor's call in flight, under the name its failure reports (`rollout[0]`).
Named = tuple[str, ray.ObjectRef]


def actor_name(role: str, index: int) -> str:
    """How errors, logs and the placement table name actor `index` of `role`: `learner[1]`, `rollout[0]`."""
    return f"{role}[{index}]"


class ActorGroup:
    """Ray actors of one role, named `role[i]`. Subclasses set `role` and `actors` and give every remote
    call its own method, so a call site names what it runs (no method-name strings outside this module)."""

    role: str
    actors: list[Any]

    @property
    def size(self) -> int:
        return len(self.actors)

    def actor_name(self, index: int) -> str:
        return actor_name(self.role, index)

    def is_member_name(self, name: str | None) -> bool:
        """Whether `name` (an ActorFailure's `worker`) names one of this group's actors (`actor_name`'s form)."""
        role, bracket, _ = (name or "").partition("[")
        return role == self.role and bracket == "["

    def _each(self, submit: Callable[[Any], ray.ObjectRef], indices: list[int] | None = None) -> list[Named]:
        """`submit(actor)` for each actor (or those at `indices`), named; not awaited."""
        chosen = range(len(self.actors)) if indices is None else indices
        return [(self.actor_name(i), submit(self.actors[i])) for i in chosen]

    def kill_actor(self, index: int, restart: bool = False) -> None:
        """ray.kill the actor at `index` (-1: the last); `restart`: Ray may restart it (its max_restarts)."""
        ray.kill(self.actors[index], no_restart=not restart)

    def hang_actor(self, index: int, seconds: float) -> None:
        """Make the actor at `index` run a sleep of `seconds` (not awaited): it answers nothing else meanwhile."""
        self.actors[index].__ray_call__.remote(lambda worker: time.sleep(seconds))

    def kill(self) -> None:
        for a in self.actors:
            ray.kill(a)
