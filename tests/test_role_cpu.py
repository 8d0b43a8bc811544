"""benchmarks/role_cpu.py with real processes (no Ray): CPU burnt by a process titled like a Ray actor,
and by its child, counts for the actor's role; a process titled like Ray's raylet counts as "ray"; an
untitled child of the driver counts as the driver's."""
from __future__ import annotations

import subprocess
import time
from pathlib import Path

from benchmarks.role_cpu import RoleCPU, idle_share

BURN = "end=$((SECONDS+2)); while [ $SECONDS -lt $end ]; do :; done; sleep 30; :"


def _titled(title: str, script: Path) -> subprocess.Popen:
    """bash running `script` with its process titled `title` (its argv[0], what /proc/<pid>/cmdline shows)."""
    return subprocess.Popen(["bash", "-c", f"exec -a '{title}' bash {script}"])


def test_cpu_is_counted_for_the_role_of_the_nearest_titled_ancestor(tmp_path):
    burn, parent = tmp_path / "burn.sh", tmp_path / "parent.sh"
    burn.write_text(BURN + "\n")
    parent.write_text(f"bash {burn} & wait\n")
    procs = [_titled("ray::RewardWorker", parent),  # an actor whose child burns the CPU
             _titled("/venv/ray/core/src/ray/raylet/raylet --node", burn),
             subprocess.Popen(["bash", str(burn)])]
    try:
        roles = RoleCPU()
        before = roles.snapshot()
        time.sleep(3.5)
        after = roles.snapshot()
    finally:
        for p in procs:
            p.kill()
            p.wait()
    used = {k: after[k] - before[k] for k in after}
    # Three bash loops of 2 s on 2 cores, started before the first snapshot: each role got about 1-2 s.
    assert used["reward"] > 0.5 and used["ray"] > 0.5 and used["driver"] > 0.5, used
    assert used["learner"] == used["rollout"] == 0.0, used
    assert idle_share(used, 3.5, 2) < 1.0
    assert idle_share({"driver": 7.0}, 3.5, 2) == 0.0
