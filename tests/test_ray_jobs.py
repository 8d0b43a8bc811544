"""The three ways users run ReasonRL against a real Ray head started by the test (own ports, own
temp dir, stopped by PID — never a bare `ray stop`): README's `ray job submit` command, which must
leave its run and the base-model cache where the user finds them and reuse the cache in the next job;
one that must fail and is reported FAILED with the reason; and a driver attached through RAY_ADDRESS.
The head's environment names the shared directory (REASONRL_SHARED_DIR, as an operator would set
it), so that the jobs' relative paths land in the test's temporary directory rather than ~/reasonrl."""
import json
import re
import subprocess
import sys
import tempfile
import shutil
from pathlib import Path

import pytest

from tests import ray_nodes
from tests.conftest import small_overrides

ROOT = Path(__file__).resolve().parent.parent
BIN = ray_nodes.BIN


@pytest.fixture(scope="module")
def head():
    temp = tempfile.mkdtemp(prefix="rrhead", dir="/tmp")  # short: Ray's unix socket paths are length-limited
    shared = Path(temp) / "shared"
    env = ray_nodes.ray_env(REASONRL_SHARED_DIR=str(shared))
    gcs, dash = ray_nodes.free_port(), ray_nodes.free_port()
    proc = ray_nodes.start_node(env, "--head", f"--port={gcs}", "--dashboard-host=127.0.0.1", f"--dashboard-port={dash}",
                                f"--ray-client-server-port={ray_nodes.free_port()}", f"--temp-dir={temp}/t",
                                "--num-cpus=4", "--include-dashboard=true")
    env.pop("REASONRL_SHARED_DIR")  # the jobs get it from the head, not from the submitting shell
    env["RAY_API_SERVER_ADDRESS"] = f"http://127.0.0.1:{dash}"
    ray_nodes.wait_for(lambda: subprocess.run([str(BIN / "ray"), "job", "list"], env=env, capture_output=True).returncode == 0,
                       120, "the Ray head", [proc])
    yield {"env": env, "gcs": f"127.0.0.1:{gcs}", "shared": shared}
    ray_nodes.stop(proc)
    shutil.rmtree(temp, ignore_errors=True)


def _train_args(tmp: Path, run: Path, *extra: str) -> list[str]:
    overrides = [o for o in small_overrides(tmp) if not o.startswith("train.steps")] + ["train.steps=2", *extra]
    return ["python", "-m", "cluster.train", "--config", "configs/tiny.yaml", "--run-dir", str(run), *overrides]


def _submit(head: dict, args: list[str]) -> subprocess.CompletedProcess:
    cmd = [str(BIN / "ray"), "job", "submit", "--working-dir", str(ROOT), "--", *args]
    return subprocess.run(cmd, env=head["env"], cwd=ROOT, capture_output=True, text=True, timeout=900)


def _status(head: dict, output: str) -> str:
    job_id = next(w.strip("'") for line in output.splitlines() if "Job '" in line for w in line.split() if w.startswith("'raysubmit"))
    proc = subprocess.run([str(BIN / "ray"), "job", "status", job_id], env=head["env"], capture_output=True, text=True)
    return proc.stdout + proc.stderr  # e.g. "Job 'raysubmit_...' succeeded" / "... failed"


def test_readme_job_command_keeps_its_run_and_reuses_the_cache(head):
    """README's command as written (`--config configs/tiny.yaml`, no path given), twice; only
    overrides that shrink the model and the run are added (no path among them)."""
    size = [o for o in small_overrides(Path("/unused")) if not o.startswith(("model.cache_dir", "train.steps"))]
    args = ["python", "-m", "cluster.train", "--config", "configs/tiny.yaml", *size, "train.steps=1"]
    first, second = _submit(head, args), _submit(head, args)
    for proc in (first, second):
        assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
        assert "succeeded" in _status(head, proc.stdout + proc.stderr).lower()
    runs = sorted((head["shared"] / "runs").glob("tiny-*"))
    assert len(runs) == 2 and all(json.loads((r / "summary.json").read_text())["steps"] == 1 for r in runs)
    assert f"run directory: {runs[0]}" in first.stdout and f"run directory: {runs[1]}" in second.stdout
    cache = head["shared"] / ".cache" / "base_models"
    assert re.search(rf"base model: built in \d+s -> {cache}/tiny-", first.stdout)
    assert f"base model: cached at {cache}/tiny-" in second.stdout  # the second job did not rebuild it
    assert not re.search(r"base model: built", second.stdout)


def test_job_with_bad_config_is_reported_failed_with_reason(head, tmp_path):
    proc = _submit(head, _train_args(tmp_path, tmp_path / "bad", "learner.zero_stage=7"))
    assert proc.returncode != 0
    assert "learner.zero_stage" in proc.stdout + proc.stderr  # the reason reaches the user's terminal
    status = _status(head, proc.stdout + proc.stderr).lower()
    assert "failed" in status and "succeeded" not in status


def test_driver_attaches_to_running_cluster(head, tmp_path):
    env = {**head["env"], "RAY_ADDRESS": head["gcs"]}
    run = tmp_path / "attached"
    args = _train_args(tmp_path, run, "train.steps=1")
    proc = subprocess.run([sys.executable, *args[1:]], env=env, cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert f"ray: {head['gcs']}" in proc.stdout  # it joined the head rather than starting a private Ray
    assert json.loads((run / "summary.json").read_text())["steps"] == 1
