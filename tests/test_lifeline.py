"""Workers do not outlive their driver (cluster/infra/lifeline.py), with real processes and signals, no Ray:
the watchdog a worker starts ends it and its children when the driver dies, and the next driver's
sweep kills processes that name a dead driver and spares the others. The same guard inside a real
run whose driver is SIGKILLed: tests/test_faults.py."""
from __future__ import annotations

import os
import subprocess
import sys
import time

from cluster.infra import lifeline
from tests.conftest import ROOT

WORKER = """
import subprocess, sys, time
from cluster.infra.lifeline import watch_driver
child = subprocess.Popen(["sleep", "600"])
print(child.pid, flush=True)
assert watch_driver() is not None
time.sleep(600)
"""


def _gone(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"  # a zombie has exited
    except OSError:
        return True


def _wait_gone(pids: list[int], timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if all(_gone(p) for p in pids):
            return True
        time.sleep(0.1)
    return False


def test_driver_key_names_a_live_process_only():
    driver = subprocess.Popen(["sleep", "600"])
    try:
        key = lifeline.driver_key(driver.pid)
        assert lifeline.driver_alive(key) is True
        head, _, start = key.rpartition(":")
        assert lifeline.driver_alive(f"{head}:{int(start) + 1}") is False  # same pid, other process: a reused pid
        assert lifeline.driver_alive("other-boot:1:" + key.split(":", 2)[2]) is None  # another host: cannot tell
    finally:
        driver.kill()
        driver.wait()
    assert lifeline.driver_alive(key) is False


def test_worker_and_its_children_exit_when_the_driver_dies():
    driver = subprocess.Popen(["sleep", "600"])
    env = {**os.environ, lifeline.DRIVER_ENV: lifeline.driver_key(driver.pid), "PYTHONPATH": str(ROOT)}
    worker = subprocess.Popen([sys.executable, "-c", WORKER], env=env, stdout=subprocess.PIPE, text=True)
    try:
        child = int(worker.stdout.readline())
        time.sleep(1.5)
        assert worker.poll() is None and not _gone(child)  # the driver lives: the worker stays
        driver.kill()
        driver.wait()
        start = time.monotonic()
        assert worker.wait(timeout=10) == 1
        assert _wait_gone([child], 5), "the worker's child outlived it"
        assert time.monotonic() - start < 5
    finally:
        for p in (driver, worker):
            p.kill()


def test_next_driver_sweeps_processes_of_dead_drivers_only():
    dead = subprocess.Popen(["sleep", "600"])
    dead_key = lifeline.driver_key(dead.pid)
    dead.kill()
    dead.wait()
    live_driver = subprocess.Popen(["sleep", "600"])
    orphan = subprocess.Popen(["sleep", "600"], env={**os.environ, lifeline.DRIVER_ENV: dead_key})
    kept = subprocess.Popen(["sleep", "600"], env={**os.environ, lifeline.DRIVER_ENV: lifeline.driver_key(live_driver.pid)})
    try:
        assert orphan.pid in lifeline.sweep_orphans()
        assert orphan.wait(timeout=5) == -9
        assert kept.poll() is None and live_driver.poll() is None
    finally:
        for p in (live_driver, orphan, kept):
            p.kill()
            p.wait()


def test_sweep_finds_a_retitled_process_by_the_session_directory_it_logs_to(tmp_path):
    """Ray's agents overwrite parts of their /proc environment when they retitle themselves: a Ray process
    (titled "ray::...") with no driver key in its environment, holding a log open in a session directory
    that names a dead driver, is swept; one whose session directory names a live driver stays, and so does
    a process that is not Ray's (a `tail -f` of the dead run's log)."""
    dead = subprocess.Popen(["sleep", "600"])
    dead_key = lifeline.driver_key(dead.pid)
    dead.kill()
    dead.wait()
    live_driver = subprocess.Popen(["sleep", "600"])
    env = {k: v for k, v in os.environ.items() if k != lifeline.DRIVER_ENV}
    procs = {"live_driver": live_driver}
    try:
        for name, key in (("session_dead", dead_key), ("session_live", lifeline.driver_key(live_driver.pid))):
            (tmp_path / name / "logs").mkdir(parents=True)
            (tmp_path / name / lifeline.SESSION_FILE).write_text(key)
            with open(tmp_path / name / "logs" / "agent.log", "w") as log:
                procs[name] = subprocess.Popen(["bash", "-c", "exec -a ray::DashboardAgent sleep 600"], env=env, stdout=log)
                if name == "session_dead":
                    procs["tail"] = subprocess.Popen(["sleep", "600"], env=env, stdout=log)
        time.sleep(0.5)  # the exec has happened
        swept = lifeline.sweep_orphans()
        assert procs["session_dead"].pid in swept, swept
        assert not {procs[n].pid for n in ("session_live", "tail", "live_driver")} & set(swept)
        assert procs["session_dead"].wait(timeout=5) == -9
        assert all(procs[n].poll() is None for n in ("session_live", "tail", "live_driver"))
    finally:
        for p in procs.values():
            p.kill()
            p.wait()
