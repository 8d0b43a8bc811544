"""Shared, expensive fixtures: one private Ray cluster and one small trainer per test session."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


EMBEDDED_DEFAULT_TEST = "test_grpo_with_the_grader_makes_the_embedded_default_work_sums_out"
_prebuild: dict[str, object] = {}


def _idle_priority() -> None:
    """SCHED_IDLE: this process and all it starts run only on CPU that nothing else of the machine wants
    (the lowest niceness where a kernel refuses it)."""
    try:
        os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
    except (AttributeError, OSError):
        os.nice(19)


def pytest_collection_modifyitems(session: pytest.Session, config: pytest.Config, items: list[pytest.Item]) -> None:
    """When the embedded-default learning test is selected, it runs last, and the base model it needs
    (configs/tiny.yaml's: ~6.5 min of both cores to build, cached afterwards) is built from the start of
    the session in a background process at idle CPU priority: on the CPU the other tests leave unused
    (about 40% of the machine over a whole run here, measured with /proc/stat), instead of after them."""
    chosen = [item for item in items if item.name == EMBEDDED_DEFAULT_TEST]
    if not chosen:
        return
    items[:] = [item for item in items if item.name != EMBEDDED_DEFAULT_TEST] + chosen
    log = ROOT / ".cache" / "prebuild_base_model.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("w") as out:
        _prebuild["log"] = log
        _prebuild["proc"] = subprocess.Popen(
            [sys.executable, str(ROOT / "tests" / "prebuild_base_model.py"), str(ROOT / "configs" / "tiny.yaml")],
            cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, preexec_fn=_idle_priority, start_new_session=True,
            env={k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"})


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """A background build still running when the session ends is stopped (a later build starts over)."""
    proc = _prebuild.get("proc")
    if isinstance(proc, subprocess.Popen) and proc.poll() is None:
        os.killpg(proc.pid, 9)
        proc.wait()


@pytest.fixture
def embedded_default_base_model() -> None:
    """Waits for the background build of configs/tiny.yaml's base model, when the session started one."""
    proc = _prebuild.get("proc")
    if isinstance(proc, subprocess.Popen):
        code = proc.wait()
        assert code == 0, Path(str(_prebuild["log"])).read_text()[-4000:]


def small_overrides(tmp: Path) -> list[str]:
    """A config small enough for CI: a 2-layer model, 4 prompts x 4 samples, 5 warm-up steps. It pins what
    configs/tiny.yaml chooses per machine or for 64-token answers: fp32 (exact learner/engine comparisons),
    micro-batches of 4 samples (several per step), no overlong penalty (it would start at 8 of 24 tokens)."""
    return [
        "model.dtype=float32", "learner.max_tokens_per_micro_batch=null", "algorithm.overlong_buffer=0",
        f"model.cache_dir={tmp / 'models'}", "model.tiny.hidden_size=64", "model.tiny.intermediate_size=128",
        "model.tiny.num_layers=2", "model.tiny.num_heads=2", "model.tiny.num_kv_heads=1",
        "model.warmup.steps=5", "model.warmup.batch_size=16",
        "rollout.samples_per_prompt=4", "rollout.max_new_tokens=24", "rollout.max_model_len=128",
        "learner.zero_stage=3", "learner.micro_batch_size=4", "learner.lr=1e-3", "algorithm.kl_coef=0.01",
        "train.steps=1", "train.prompts_per_step=4", "train.eval_every=0", "train.eval_samples=1",
        "data.eval_size=8", "reward.num_workers=2", "reward.custom_fn=tests.rewards_fixture:even_length",
    ]


@pytest.fixture(scope="session")
def ray_session():
    """One private Ray for the whole session with room (logical CPUs) for the session trainer's
    actors AND a test's own trainers (tests/test_resume.py): otherwise the later actors never schedule."""
    import ray

    from cluster.infra.placement_group import REPO_ROOT, quiet_env

    if not ray.is_initialized():
        ray.init(address="local", num_cpus=8, include_dashboard=False, log_to_driver=True,
                 runtime_env={"env_vars": {"PYTHONPATH": REPO_ROOT, **quiet_env()}})
    yield
    ray.shutdown()


@pytest.fixture(scope="session")
def session_trainer(tmp_path_factory: pytest.TempPathFactory, ray_session):
    from cluster.config import load_config
    from cluster.loop.trainer import Trainer

    tmp = tmp_path_factory.mktemp("run")
    # Fault tests kill or fail the session's rollout[0] several times (tests/test_fault_recovery.py):
    # a budget of restarts that the whole session cannot use up.
    cfg = load_config(str(ROOT / "configs" / "tiny.yaml"), small_overrides(tmp) + ["rollout.max_restarts=10"])
    t = Trainer(cfg, tmp / "run")
    t.setup()
    yield t
    t.close()


# What a test may swap on the session trainer; restored after every test, so tests do not depend on order.
# Weights and the policy version move forward with every step a test takes: tests compare them relatively.
SWAPPABLE = ("cfg", "pipeline", "sync", "rewards", "grader", "parity")


def restore_in_place(model, saved) -> None:
    """Put `saved`'s values back into `model` field by field, keeping every (sub)model object, so parts
    that hold a section of the config (the pipeline, the rollout group) see the restored values too."""
    from pydantic import BaseModel

    for name in type(model).model_fields:
        value, old = getattr(model, name), getattr(saved, name)
        if isinstance(value, BaseModel) and type(value) is type(old):
            restore_in_place(value, old)
        elif value != old:
            setattr(model, name, old)


@pytest.fixture
def trainer(session_trainer):
    """The session trainer; after the test its config (in place) and swappable parts are restored."""
    t = session_trainer
    saved = {name: getattr(t, name) for name in SWAPPABLE}
    cfg, snapshot = t.cfg, t.cfg.model_copy(deep=True)
    rollout_cfg, rollout_snapshot = t.rollouts.cfg, t.rollouts.cfg.model_copy(deep=True)
    yield t
    for name, value in saved.items():
        setattr(t, name, value)
    restore_in_place(cfg, snapshot)
    t.rollouts.cfg = rollout_cfg
    restore_in_place(rollout_cfg, rollout_snapshot)
