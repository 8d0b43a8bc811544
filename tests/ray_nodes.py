"""Real Ray nodes for tests, started with the `ray` CLI on ports of their own and stopped by PID
(never a bare `ray stop`, which would stop every Ray on the machine)."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("", 0))
        return s.getsockname()[1]


def ray_env(**extra: str) -> dict[str, str]:
    """Environment for the CLI, the nodes and the drivers: token auth on, no inherited RAY_ADDRESS."""
    env = {**os.environ, "RAY_AUTH_MODE": "token", "PATH": f"{BIN}:{os.environ['PATH']}", **extra}
    env.pop("RAY_ADDRESS", None)
    return env


def start_node(env: dict[str, str], *args: str, wrap: list[str] | None = None,
               worker_ports: tuple[int, int] = (24000, 24400)) -> subprocess.Popen:
    """`ray start --block ...` in its own session (its process group is stopped as one), with every
    port it would otherwise take from Ray's fixed defaults chosen free. `wrap`: a command whose last
    argument is a shell script prefix, to which `exec <the ray command>` is appended (e.g.
    `["unshare", "--mount", "sh", "-c", "mount ... && "]`)."""
    cmd = [str(BIN / "ray"), "start", "--block", f"--dashboard-agent-listen-port={free_port()}",
           f"--metrics-export-port={free_port()}", f"--runtime-env-agent-port={free_port()}",
           f"--dashboard-agent-grpc-port={free_port()}", f"--min-worker-port={worker_ports[0]}",
           f"--max-worker-port={worker_ports[1]}", *args]
    if wrap:
        cmd = [*wrap[:-1], wrap[-1] + "exec " + " ".join(f"'{c}'" for c in cmd)]
    return subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)


def wait_for(check, timeout_s: float, what: str, nodes: list[subprocess.Popen]) -> None:
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        if check():
            return
        if any(n.poll() is not None for n in nodes):
            break
        time.sleep(2)
    stop(*nodes)
    raise RuntimeError(f"{what} did not come up within {timeout_s:.0f} s")


def alive_nodes(env: dict[str, str], address: str) -> int:
    """Alive nodes of the cluster at `address`, asked from a separate driver (0 if it cannot attach)."""
    code = f"import ray; ray.init(address='{address}', logging_level='ERROR'); print(sum(n['Alive'] for n in ray.nodes()))"
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    return int(proc.stdout.strip().splitlines()[-1]) if proc.returncode == 0 and proc.stdout.strip() else 0


def stop(*nodes: subprocess.Popen, grace_s: float = 3.0) -> None:
    """SIGTERM each node's process group, SIGKILL what is left after `grace_s` (worker nodes first).
    The `ray start --block` process and everything it starts share its process group, so the SIGKILL
    leaves nothing behind; a graceful stop would take ~33 s per node here (measured), only to tidy up
    a cluster the test throws away."""
    for node in reversed(nodes):
        try:
            os.killpg(node.pid, signal.SIGTERM)
        except ProcessLookupError:
            continue
    deadline = time.monotonic() + grace_s
    for node in reversed(nodes):
        try:
            node.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            pass
        try:
            os.killpg(node.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        node.wait()
