"""A run's Ray workers never outlive its driver.

When the driver dies without cleaning up (SIGKILL, the OOM killer), Ray normally takes its actors
down: a private Ray's gcs_server and raylet die with the driver, and a cluster's GCS ends the job.
Measured here, some actors still ran more than 20 s later (docs/reliability.md). Two guards:

- Each Ray worker of a run starts a watchdog thread (Ray's `worker_process_setup_hook`, set by
  `cluster.infra.placement_group.connect`): when the driver's process is gone it kills the worker's own child
  processes (vLLM's engine core and workers) and exits at once. The driver is named by its pid and
  process start time (a reused pid is not the driver), and only watched from a process on the same
  kernel and in the same pid namespace (a container elsewhere could not see it: there the guard
  stays off and Ray's own job cleanup applies).
- The next driver started on the node kills what the guard could not reach (a worker stuck with
  the GIL held): processes of the same user whose environment names a dead driver (`sweep_orphans`).
  Ray's per-node agents retitle themselves (setproctitle), which can overwrite any part of the
  environment block /proc shows, in an order that changes from run to run: a private Ray's session
  directory therefore names its driver too (`mark_session`), and a Ray process holding a file open
  in a session directory of a dead driver is swept as well.

The same hook exports the node IP (protocol.endpoints) for processes the workers start.
"""
from __future__ import annotations

import os
import signal
import sys
import threading
import time
from pathlib import Path

from protocol.endpoints import NODE_IP_ENV

DRIVER_ENV = "REASONRL_DRIVER"  # "<boot id>:<pid namespace>:<pid>:<start time>" of the run's driver
SESSION_FILE = "reasonrl_driver"  # in a private Ray's session directory: the same key
HOOK = "cluster.infra.lifeline.worker_setup"
POLL_S = 1.0


def _host() -> str | None:
    """This kernel and pid namespace: pids only mean the same process where these match."""
    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
        return f"{boot}:{os.stat('/proc/self/ns/pid').st_ino}"
    except OSError:  # not Linux: no guard, Ray's own cleanup applies
        return None


def _start_time(pid: int) -> str | None:
    """The process's start time in clock ticks since boot (field 22 of /proc/<pid>/stat), None if gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]


def driver_key(pid: int | None = None) -> str | None:
    """The key that names this process (or `pid`) as a run's driver; None where there is no /proc."""
    pid = os.getpid() if pid is None else pid
    host, start = _host(), _start_time(pid)
    return None if host is None or start is None else f"{host}:{pid}:{start}"


def driver_alive(key: str) -> bool | None:
    """Whether the driver named by `key` still runs; None when this process cannot tell (another
    kernel or pid namespace, or a malformed key)."""
    head, _, start = key.rpartition(":")
    host, _, pid = head.rpartition(":")
    if not pid.isdigit() or host != _host():
        return None
    return _start_time(int(pid)) == start


def runtime_env_vars() -> dict[str, str]:
    """Environment that names this process as the driver to every worker of the run."""
    key = driver_key()
    return {DRIVER_ENV: key} if key else {}


def worker_setup() -> None:
    """Ray's worker_process_setup_hook for every worker of a run (module path: HOOK)."""
    import ray

    if not os.environ.get(NODE_IP_ENV):
        os.environ[NODE_IP_ENV] = ray.util.get_node_ip_address()
    watch_driver()


def watch_driver() -> threading.Thread | None:
    """Start the watchdog for the driver named in DRIVER_ENV, when this process can watch it."""
    key = os.environ.get(DRIVER_ENV)
    if not key or driver_alive(key) is None:  # a driver already gone: the thread ends this process at once
        return None
    thread = threading.Thread(target=_watch, args=(key,), name="reasonrl-driver-watchdog", daemon=True)
    thread.start()
    return thread


def _watch(key: str, period_s: float = POLL_S) -> None:
    while driver_alive(key):
        time.sleep(period_s)
    print(f"reasonrl: the driver ({key.split(':')[-2]}) is gone; this worker and its children exit",
          file=sys.stderr, flush=True)
    exit_with_children()


def exit_with_children() -> None:
    """SIGKILL every descendant of this process, then leave at once (no cleanup that could hang)."""
    import psutil

    for child in psutil.Process().children(recursive=True):
        try:
            child.kill()
        except psutil.Error:
            pass
    os._exit(1)


def mark_session(session_dir: str | Path) -> None:
    """Name this process as the driver of the private Ray whose session directory this is."""
    if key := driver_key():
        (Path(session_dir) / SESSION_FILE).write_text(key)


def _session_key(fd_dir: Path) -> str | None:
    """The driver key of a marked Ray session directory the process holds a file open in (its logs)."""
    for fd in fd_dir.iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        session, sep, _ = target.partition("/logs/")
        if sep and Path(session).name.startswith("session_"):
            try:
                return (Path(session) / SESSION_FILE).read_text().strip()
            except OSError:
                continue
    return None


def _is_ray_process(entry: Path) -> bool:
    """Ray's own processes and its workers: titled "ray::..." or run from Ray's package (raylet, gcs_server,
    its Python services), not a program that merely names a session path (a `tail -f` of its logs)."""
    cmdline = (entry / "cmdline").read_bytes()
    argv0 = cmdline.split(b"\0")[0]
    return argv0.startswith(b"ray::") or b"/ray/" in argv0 or b"/ray/_private/" in cmdline


def _process_key(entry: Path) -> str | None:
    needle = f"{DRIVER_ENV}=".encode()
    env = (entry / "environ").read_bytes().split(b"\0")
    key = next((v[len(needle):].decode(errors="replace") for v in env if v.startswith(needle)), None)
    return key or (_session_key(entry / "fd") if _is_ray_process(entry) else None)


def sweep_orphans(proc: str = "/proc") -> list[int]:
    """SIGKILL this user's processes that belong to a driver on this host that is gone (their
    environment or their private Ray's session directory names it). Returns their pids. Processes
    of other users, and of drivers this process cannot judge, stay."""
    killed = []
    for entry in Path(proc).iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            if entry.stat().st_uid != os.getuid():
                continue
            key = _process_key(entry)
        except OSError:  # exited meanwhile, or not readable
            continue
        if key and driver_alive(key) is False:
            try:
                os.kill(int(entry.name), signal.SIGKILL)
                killed.append(int(entry.name))
            except OSError:
                pass
    return killed
