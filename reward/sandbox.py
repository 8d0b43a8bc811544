"""Isolation for running model-written programs: which tool confines them and the command that does it.

Backends (`reward.code.isolation`):
- "bwrap": bubblewrap (Flatpak's sandbox). New pid, net, ipc, uts (and cgroup) namespaces; a root made of
  read-only binds of the interpreter and the system libraries (/usr), a fresh /proc, a minimal /dev and a
  size-capped private tmpfs /tmp; nothing of the host writable, no home directory, no /etc; it dies with
  its parent.
- "unshare": util-linux unshare(1) for the same namespaces, and the runner itself builds the same root
  (tmpfs + read-only binds, chroot) with mount(2): for machines without bwrap (root needed).
- "none": a plain subprocess with the resource limits only: NO isolation. Only when asked for by name.
- "auto": bwrap if it works here, else unshare if it works here, else refuse (SandboxUnavailable says
  what is missing and how to opt in to "none").

Inside any backend the runner (reward/sandbox_runner.py) sets rlimits (CPU seconds, address space,
processes, open files, file size, no core) and, when started as root, switches to an unprivileged uid of
its own (so the process limit holds and nothing root-owned is writable) with no_new_privs set.
"""
from __future__ import annotations

import functools
import os
import random
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

BACKENDS = ("auto", "bwrap", "unshare", "none")
RUNNER_SOURCE = (Path(__file__).with_name("sandbox_runner.py")).read_text()
UID_RANGE = (200_000, 1_200_000)  # a random unprivileged uid per sandbox: its own process count
DEV_NODES = ("/dev/null", "/dev/zero", "/dev/urandom", "/dev/random")


class SandboxUnavailable(RuntimeError):
    """No isolation works on this machine for the requested backend."""


@dataclass(frozen=True)
class Limits:
    cpu_s: int = 10  # CPU seconds per process (all its threads together)
    memory_mb: int = 512  # address space per process
    processes: int = 16  # processes and threads of the sandbox's uid
    open_files: int = 64
    file_bytes: int = 16 << 20  # largest file the program may write (in its private /tmp)
    output_bytes: int = 1 << 20  # largest reply/stdout the judge reads back
    tmp_bytes: int = 32 << 20  # size of the private /tmp

    def as_runner_dict(self) -> dict[str, int]:
        return {"cpu_s": self.cpu_s, "memory_bytes": self.memory_mb << 20, "processes": self.processes,
                "open_files": self.open_files, "file_bytes": self.file_bytes, "output_bytes": self.output_bytes}


def interpreter() -> tuple[str, str]:
    """(the real interpreter binary, its installation prefix) of this Python: what the sandbox runs."""
    exe = os.path.realpath(getattr(sys, "_base_executable", None) or sys.executable)
    return exe, os.path.realpath(sys.base_prefix)


def read_only_paths() -> list[str]:
    """What the program may read: the system's /usr and the interpreter's prefix (stdlib, libpython)."""
    _, prefix = interpreter()
    paths = ["/usr"]
    if not prefix.startswith("/usr/"):
        paths.append(prefix)
    return paths


def _symlinks() -> dict[str, str]:
    """/bin, /lib, /lib64, /sbin as the host has them (merged-/usr systems: symlinks into /usr)."""
    out = {}
    for name in ("/bin", "/lib", "/lib64", "/lib32", "/sbin"):
        if os.path.islink(name):
            out[name] = os.readlink(name)
    return out


def _real_dirs() -> list[str]:
    """/lib and friends when they are real directories (not merged into /usr): bound read-only too."""
    return [p for p in ("/bin", "/lib", "/lib64") if os.path.isdir(p) and not os.path.islink(p)]


def bwrap_command(limits: Limits) -> list[str]:
    cmd = ["bwrap", "--unshare-pid", "--unshare-net", "--unshare-ipc", "--unshare-uts", "--unshare-cgroup-try",
           "--die-with-parent", "--new-session", "--clearenv", "--proc", "/proc", "--dev", "/dev",
           "--size", str(limits.tmp_bytes), "--perms", "1777", "--tmpfs", "/tmp", "--chdir", "/tmp", "--setenv", "PATH", "/usr/bin:/bin"]
    if os.geteuid() != 0:  # unprivileged: bwrap needs a user namespace (the runner keeps the caller's uid)
        cmd += ["--unshare-user", "--cap-drop", "ALL"]
    for path in read_only_paths() + _real_dirs():
        for parent in reversed(Path(path).parents[:-1]):  # traversable by the runner's uid (bwrap copies 0700)
            cmd += ["--perms", "0755", "--dir", str(parent)]
        cmd += ["--ro-bind", path, path]
    for link, target in _symlinks().items():
        cmd += ["--symlink", target, link]
    cmd += ["--remount-ro", "/"]
    return cmd


def unshare_command() -> list[str]:
    """Namespaces by unshare(1); the runner builds the root (reward/sandbox_runner.build_root)."""
    return ["unshare", "--mount", "--net", "--pid", "--ipc", "--uts", "--fork", "--kill-child", "--mount-proc"]


def runner_settings(backend: str, limits: Limits, root_dir: str | None) -> dict[str, Any]:
    plan = None
    if backend == "unshare":
        plan = {"root": root_dir, "binds": read_only_paths() + _real_dirs() + list(DEV_NODES),
                "symlinks": _symlinks(), "tmp_bytes": limits.tmp_bytes}
    uid = None if backend == "none" else random.randrange(*UID_RANGE)  # none: the caller's uid, as asked
    return {"limits": limits.as_runner_dict(), "uid": uid, "plan": plan}


class Sandbox:
    """One confined runner process; `proc.stdin`/`proc.stdout` are its request/reply channel.

    Killing it (`kill`) ends everything the program started: the process group is killed, and with it
    the pid namespace's first process, which takes every process in the namespace with it."""

    def __init__(self, backend: str, limits: Limits) -> None:
        exe, _ = interpreter()
        self.root_dir = tempfile.mkdtemp(prefix="sandbox-root-") if backend == "unshare" else None
        settings = runner_settings(backend, limits, self.root_dir)
        import json

        inner = [exe, "-I", "-S", "-B", "-c", RUNNER_SOURCE, json.dumps(settings)]
        prefix = {"bwrap": bwrap_command(limits) + ["--"], "unshare": unshare_command(), "none": []}[backend]
        env = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"}
        self.proc = subprocess.Popen(prefix + inner, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.DEVNULL, start_new_session=True, env=env,
                                     cwd=self.root_dir or tempfile.gettempdir())

    def kill(self, graceful: bool = False) -> None:
        """End the sandbox. `graceful`: close its input first and give the runner 0.5 s to exit on its own
        (so its process tree is reaped and its CPU time accounted); then kill whatever is left."""
        if graceful:
            try:
                self.proc.stdin.close()  # type: ignore[union-attr]
                self.proc.wait(timeout=0.5)
            except (OSError, subprocess.TimeoutExpired):
                pass
        try:
            os.killpg(self.proc.pid, 9)
        except ProcessLookupError:
            pass
        self.proc.wait()
        for stream in (self.proc.stdin, self.proc.stdout):
            try:
                stream.close()  # type: ignore[union-attr]
            except OSError:
                pass
        if self.root_dir:
            shutil.rmtree(self.root_dir, ignore_errors=True)


@functools.lru_cache(maxsize=None)
def probe(backend: str) -> str | None:
    """None when `backend` confines a program on this machine, else what is missing (cached per process)."""
    if backend == "none":
        return None
    tool = {"bwrap": "bwrap", "unshare": "unshare"}[backend]
    if shutil.which(tool) is None:
        hint = " (apt-get install bubblewrap; scripts/setup.sh does it when run as root)" if tool == "bwrap" else ""
        return f"{tool} is not installed{hint}"
    if backend == "unshare" and os.geteuid() != 0:
        return "the unshare backend builds its mounts as root; this process is not root (install bubblewrap)"
    box = Sandbox(backend, Limits())
    try:
        out, _ = box.proc.communicate(b'{"mode": "call", "source": "def f(): return 1", "entry_point": "f"}\n', timeout=20)
    except subprocess.TimeoutExpired:
        out = b""
    finally:
        box.kill()
    if b'"loaded"' not in out:  # the runner says "ready" once confined, then "loaded"
        return (f"{tool} could not start a sandbox here (user, pid, net or mount namespaces refused: "
                f"in a container, allow them, e.g. docker --security-opt seccomp=unconfined --cap-add SYS_ADMIN)")
    return None


def resolve(requested: str) -> str:
    """The backend to use for `reward.code.isolation`; raises SandboxUnavailable saying what is missing."""
    if requested not in BACKENDS:
        raise ValueError(f"unknown isolation {requested!r}; expected one of {BACKENDS}")
    if requested != "auto":
        problem = probe(requested)
        if problem:
            raise SandboxUnavailable(f"reward.code.isolation={requested}: {problem}")
        return requested
    problems = {name: probe(name) for name in ("bwrap", "unshare")}
    for name, problem in problems.items():
        if problem is None:
            return name
    reasons = "; ".join(f"{name}: {problem}" for name, problem in problems.items())
    raise SandboxUnavailable(
        f"code rewards need a sandbox and none works on this machine ({reasons}). Install bubblewrap, or "
        f"run model programs WITHOUT isolation by setting reward.code.isolation=none (only for trusted tests)")
