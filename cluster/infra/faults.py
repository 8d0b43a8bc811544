"""Fault injection for tests: `REASONRL_FAULT` arms named faults at given steps of the driver.

Format: `name:step[,step...]`, several faults separated by `;`, e.g.
`REASONRL_FAULT="checkpoint_write_fail:2,3;driver_kill:4"`. Read at every check, so a test in the
same process can set it with monkeypatch. Faults (each one line at its point in the driver):

- `checkpoint_write_fail:<k>`: the save of step_<k> fails with a real ENOSPC from the kernel (a write
  to /dev/full) after every learner rank wrote its DeepSpeed partition into `step_<k>.partial/` and
  before the driver's own files, the rename and the `latest` pointer: a disk that fills mid-save.
- `driver_kill:<k>`: the driver SIGKILLs itself after step <k>'s metrics and samples are logged and
  before its checkpoint: a crash between steps (no cleanup, no atexit).
- `learner_kill:<k>`: the driver `ray.kill`s the last learner rank just before step <k> starts: a
  rank lost to the OOM killer or a crashed node.
- `rollout_engine_error:<k>`: rollout[0]'s engine raises RuntimeError inside vLLM at its first model
  step of step <k>'s batch (an error inside the engine, not an actor death); the re-issue after its
  restart runs clean. `rollout_engine_error_repeat:<k>`: the re-issued prompts fail again.
- `rollout_kill:<k>`: the driver kills rollout[0] just before step <k> starts, as a crash would (Ray
  restarts it while `rollout.max_restarts` allows).
- `learner_hang:<k>`: just before step <k> starts, the last learner rank gets a call that sleeps for an
  hour (queued ahead of the step's calls): a rank stuck in a kernel or on a dead NFS mount, while the
  others wait for it in a collective until `learner.collective_timeout_s`.

Nothing here runs unless the variable is set; production runs never set it.
"""
from __future__ import annotations

import os
import signal
from typing import Any

ENV = "REASONRL_FAULT"
FAULTS = ("checkpoint_write_fail", "driver_kill", "learner_kill", "rollout_engine_error", "rollout_engine_error_repeat",
          "rollout_kill", "learner_hang")


def armed(name: str, step: int) -> bool:
    """Whether fault `name` is set for `step` in REASONRL_FAULT (a bad spec raises, naming it)."""
    for item in filter(None, (part.strip() for part in os.environ.get(ENV, "").split(";"))):
        fault, _, steps = item.partition(":")
        if fault not in FAULTS or not steps:
            raise ValueError(f"{ENV}={os.environ[ENV]!r}: expected name:step[,step] with name in {FAULTS}")
        if fault == name and step in {int(s) for s in steps.split(",")}:
            return True
    return False


def disk_full(step: int) -> None:
    """The checkpoint_write_fail point: raises OSError(ENOSPC) from a real write when armed."""
    if armed("checkpoint_write_fail", step):
        with open("/dev/full", "w") as f:
            f.write("x")
            f.flush()  # the kernel answers ENOSPC here


def driver_kill(step: int) -> None:
    """The driver_kill point: the process dies at once, as under `kill -9` or the OOM killer."""
    if armed("driver_kill", step):
        os.kill(os.getpid(), signal.SIGKILL)


def learner_kill(step: int, learners: Any) -> None:
    """The learner_kill point: kills the last rank of `learners` (a LearnerGroup) when armed."""
    if armed("learner_kill", step):
        learners.kill_actor(-1)


def learner_hang(step: int, learners: Any) -> None:
    """The learner_hang point: the last rank of `learners` sleeps for an hour when armed (not awaited)."""
    if armed("learner_hang", step):
        learners.hang_actor(-1, 3600)


def engine_error(step: int | None, worker: int, rollouts: Any, reissue: bool) -> None:
    """The rollout_engine_error point, before a batch's prompts are issued to rollout[worker] of `rollouts`
    (a RolloutGroup)."""
    if step is None or worker != 0:
        return
    if (armed("rollout_engine_error", step) and not reissue) or armed("rollout_engine_error_repeat", step):
        rollouts.arm_engine_error(worker, f"injected engine error (REASONRL_FAULT, step {step})")


def rollout_kill(step: int, rollouts: Any) -> None:
    """The rollout_kill point: kills rollout[0] of `rollouts` (a RolloutGroup) when armed; Ray restarts
    it if its restarts are not used up."""
    if armed("rollout_kill", step):
        rollouts.kill_actor(0, restart=True)
