"""CPU seconds by role of a run whose driver is this process (a private local Ray: its gcs, raylet and
every actor descend from the driver), read from /proc through psutil between steps.

A process's role is the first of its own title and its ancestors' titles that names one (Ray titles an
actor's process "ray::<Class>"; vLLM's engine processes and DeepSpeed's helpers are the actor's
children); the driver is this process; everything else (Ray's gcs, raylet, agents and idle workers) is
"ray". CPU = user + system time. A process that exits between two snapshots loses what it used since the
last one (it is no longer readable), so take snapshots at the step boundaries of a run that keeps its
actors (the benchmark's case)."""
from __future__ import annotations

import os
from typing import Any

ROLES = {"ray::RolloutWorker": "rollout", "ray::LearnerWorker": "learner", "ray::CriticWorker": "critic",
         "ray::RewardWorker": "reward"}
ORDER = ("driver", "rollout", "learner", "critic", "reward", "ray")


def _role_of_title(title: str) -> str | None:
    return next((role for prefix, role in ROLES.items() if title.startswith(prefix)), None)


class RoleCPU:
    """Cumulative CPU seconds of each role of the process tree under `root` (default: this process)."""

    def __init__(self, root: int | None = None) -> None:
        self.root = os.getpid() if root is None else root
        self.seen: dict[int, tuple[str, float]] = {}  # pid -> (role, its CPU seconds when last read)

    def snapshot(self) -> dict[str, float]:
        """Every role's CPU seconds so far (processes gone since the last snapshot keep their last value)."""
        import psutil

        try:
            procs = [psutil.Process(self.root), *psutil.Process(self.root).children(recursive=True)]
        except psutil.NoSuchProcess:
            procs = []
        info: dict[int, tuple[int, str, float]] = {}  # pid -> (parent pid, title, CPU seconds)
        for proc in procs:
            try:
                t = proc.cpu_times()
                info[proc.pid] = (proc.ppid(), " ".join(proc.cmdline()).strip(), t.user + t.system)
            except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
                continue
        for pid, (_, _, cpu) in info.items():
            known = self.seen.get(pid, ("", 0.0))[0]  # an actor's role sticks (its process may retitle later)
            self.seen[pid] = (known if known in ROLES.values() else self._role(pid, info), cpu)
        totals = dict.fromkeys(ORDER, 0.0)
        for role, cpu in self.seen.values():
            totals[role] += cpu
        return totals

    def _role(self, pid: int, info: dict[int, tuple[int, str, float]]) -> str:
        """The role of `pid`: its own title's, else its nearest titled ancestor's below the driver."""
        if pid == self.root:
            return "driver"
        chain = []
        while pid in info and pid != self.root:
            parent, title, _ = info[pid]
            if role := _role_of_title(title):
                return role
            chain.append(title)
            pid = parent
        # No actor above it: a process of Ray's own (gcs, raylet, agents, idle workers) or one the driver
        # started itself (e.g. a tokenizer's helper), judged by the title of its ancestor below the driver.
        return "ray" if chain and _is_ray_system(chain[-1]) else "driver"


def _is_ray_system(title: str) -> bool:
    """Processes the driver's ray.init starts (gcs_server, raylet, log monitor, agents) and their workers."""
    return any(word in title for word in ("gcs_server", "raylet", "ray/_private", "ray::", "dashboard"))


def step_deltas(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    return {role: after[role] - before[role] for role in ORDER}


def idle_share(cpu_by_role: dict[str, Any], step_s: float, cores: int) -> float:
    """The share of the machine's core-seconds in the step that the run did not use."""
    return max(0.0, 1.0 - sum(cpu_by_role.values()) / (step_s * cores)) if step_s > 0 else 0.0
