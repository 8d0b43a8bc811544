"""benchmarks/role_cpu.py with real processes (no Ray): CPU burnt by a process titled like a Ray actor,
and by its child, counts for the actor's role; a process titled like Ray's raylet counts as "ray"; an
untitled child of the driver counts as the driver's."""
from __future__ import annotations

import subprocess
import time

from benchmarks.role_cpu import RoleCPU, idle_share

BURN = "end=$((SECONDS+2)); while [ $SECONDS -lt $end ]; do :; done; sleep 30; :"


def test_cpu_is_counted_for_the_role_of_the_nearest_titled_ancestor(tmp_path):
    """The tree is rooted at a stand-in driver (a bash that starts the three cases and waits), so the test
    session's own Ray actors, also titled "ray::...", are outside it."""
    burn, parent = tmp_path / "burn.sh", tmp_path / "parent.sh"
    burn.write_text(BURN + "\n")
    parent.write_text(f"bash {burn} & wait\n")
    driver = tmp_path / "driver.sh"
    driver.write_text(f"(exec -a ray::RewardWorker bash {parent}) &\n"  # an actor whose child burns the CPU
                      f"(exec -a '/venv/ray/core/src/ray/raylet/raylet --node' bash {burn}) &\n"
                      f"bash {burn} &\nwait\n")  # a child of the driver with no role
    root = subprocess.Popen(["bash", str(driver)])
    try:
        time.sleep(0.3)  # the three have started
        roles = RoleCPU(root.pid)
        before = roles.snapshot()
        time.sleep(3.5)
        after = roles.snapshot()
    finally:
        import psutil

        for proc in psutil.Process(root.pid).children(recursive=True) + [psutil.Process(root.pid)]:
            proc.kill()
        root.wait()
    used = {k: after[k] - before[k] for k in after}
    # Three bash loops of 2 s on 2 cores: each role got about 1-2 s of CPU.
    assert used["reward"] > 0.5 and used["ray"] > 0.5 and used["driver"] > 0.5, used
    assert used["learner"] == used["rollout"] == 0.0, used
    assert idle_share(used, 3.5, 2) < 1.0
    assert idle_share({"driver": 7.0}, 3.5, 2) == 0.0
