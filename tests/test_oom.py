"""A worker killed by Ray's memory monitor is reported as such: a real kill (a private Ray in a child
process with RAY_memory_usage_threshold far below this machine's usage, an actor that allocates), and the
text the driver prints for it (cluster.handles.actor_group.actor_error_text) names the OOM kill and the memory figures."""
from __future__ import annotations

import os
import subprocess
import sys

from cluster.handles.actor_group import oom_text
from tests.conftest import ROOT

SCRIPT = """
import time, ray
from cluster.handles.actor_group import actor_error_text
ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False)

@ray.remote
class Hog:
    def fill(self):
        self.block = bytearray(200 * 2**20)
        for i in range(0, len(self.block), 4096):
            self.block[i] = 1
        time.sleep(60)

try:
    ray.get(Hog.remote().fill.remote(), timeout=90)
    print("RESULT no kill")
except Exception as err:
    print("RESULT " + type(err).__name__ + " | " + actor_error_text(err))
"""


def test_an_actor_killed_by_rays_memory_monitor_is_named_as_an_oom_kill():
    env = {**os.environ, "RAY_memory_usage_threshold": "0.01", "RAY_memory_monitor_refresh_ms": "100",
           "PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, "-c", SCRIPT], cwd=ROOT, env=env, capture_output=True, text=True, timeout=240)
    result = next((line for line in out.stdout.splitlines() if line.startswith("RESULT ")), out.stdout[-2000:] + out.stderr[-2000:])
    assert "killed by Ray's memory monitor (OOM)" in result, result
    assert "Hog" in result and "used of" in result and "above Ray's kill threshold of 1.0%" in result, result


def test_other_errors_are_not_read_as_oom():
    assert oom_text("ActorDiedError: The actor died unexpectedly before finishing this task.") is None
