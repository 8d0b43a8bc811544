"""The three ways users run ReasonRL against a real Ray head started by the test (own ports, own
temp dir, stopped by PID — never a bare `ray stop`): `ray job submit` that succeeds, one that must
fail and is reported FAILED with the reason, and a driver attached through RAY_ADDRESS."""
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from tests.conftest import small_overrides

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def head():
    temp = tempfile.mkdtemp(prefix="rrhead", dir="/tmp")  # short: Ray's unix socket paths are length-limited
    gcs, dash = _free_port(), _free_port()
    env = {**os.environ, "RAY_AUTH_MODE": "token", "PATH": f"{BIN}:{os.environ['PATH']}"}
    env.pop("RAY_ADDRESS", None)
    cmd = [str(BIN / "ray"), "start", "--head", "--block", f"--port={gcs}", "--dashboard-host=127.0.0.1",
           f"--dashboard-port={dash}", f"--ray-client-server-port={_free_port()}", f"--temp-dir={temp}",
           f"--dashboard-agent-listen-port={_free_port()}", "--min-worker-port=24000", "--max-worker-port=24400",
           "--num-cpus=4", "--include-dashboard=true"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    env["RAY_API_SERVER_ADDRESS"] = f"http://127.0.0.1:{dash}"
    deadline = time.time() + 120
    while time.time() < deadline:
        ok = subprocess.run([str(BIN / "ray"), "job", "list"], env=env, capture_output=True, text=True)
        if ok.returncode == 0:
            break
        time.sleep(2)
    else:
        os.killpg(proc.pid, signal.SIGTERM)
        pytest.fail("the Ray head did not come up within 120 s")
    yield {"env": env, "gcs": f"127.0.0.1:{gcs}"}
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
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


def test_job_submit_runs_training(head, tmp_path):
    run = tmp_path / "run"
    proc = _submit(head, _train_args(tmp_path, run))
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    assert "succeeded" in _status(head, proc.stdout + proc.stderr).lower()
    summary = json.loads((run / "summary.json").read_text())
    assert summary["steps"] == 2 and summary["policy_version"] == 2
    assert (run / "final_model" / "config.json").is_file()


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
