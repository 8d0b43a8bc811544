"""reward.custom_fn is refused before anything starts when it cannot run, and the per-answer time limit
nests (a user function that calls the grader keeps its own limit). Real grader, real RewardWorker
(called in this process, no Ray: the SIGALRM limit works in the main thread, as in an actor)."""
from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from reward.custom import CustomFnError, load_custom_fn
from reward.scoring import CheckTimeout, time_limit
from tests.reward_helpers import reward_worker

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("spec, message", [
    ("nosuch_module_xyz:score", "module 'nosuch_module_xyz' cannot be imported: ModuleNotFoundError"),
    ("tests.rewards_fixture:no_such_function", "has no attribute 'no_such_function'"),
    ("tests.rewards_fixture:NOT_A_FUNCTION", "'NOT_A_FUNCTION' is a int, not a function"),
    ("tests.rewards_fixture:two_args_required_three", "cannot be called as two_args_required_three(response, answer)"),
])
def test_an_unusable_custom_fn_is_refused_with_its_cause(spec, message):
    with pytest.raises(CustomFnError, match="reward.custom_fn=" + spec.replace(".", r"\.")) as err:
        load_custom_fn(spec)
    assert message in str(err.value)


def test_a_usable_custom_fn_loads():
    assert load_custom_fn("tests.rewards_fixture:even_length")("ab", "") == 1.0


def test_the_cli_refuses_an_unimportable_custom_fn_before_anything_starts(tmp_path):
    out = subprocess.run([sys.executable, "-m", "cluster.train", "--config", "configs/tiny.yaml", "--run-dir",
                          str(tmp_path / "run"), "reward.custom_fn=nosuch_module_xyz:score"],
                         cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 2, out.stderr[-2000:]
    assert "reward.custom_fn=nosuch_module_xyz:score: module 'nosuch_module_xyz' cannot be imported" in out.stderr
    assert not (tmp_path / "run").exists()


def test_leaving_an_inner_time_limit_keeps_the_outer_one():
    started = time.monotonic()
    with pytest.raises(CheckTimeout):
        with time_limit(0.3):
            with time_limit(5.0):
                pass
            time.sleep(3)
    assert time.monotonic() - started < 1.5


def test_an_outer_limit_that_expires_inside_a_swallowing_inner_scope_still_stops_the_outer():
    started = time.monotonic()
    with pytest.raises(CheckTimeout):
        with time_limit(0.3):
            try:
                with time_limit(5.0):
                    time.sleep(3)  # the outer deadline passes in here
            except CheckTimeout:
                pass  # swallowed by the inner code, as the grader does
            time.sleep(3)
    assert time.monotonic() - started < 1.5


def test_a_custom_fn_that_calls_the_grader_is_still_bounded_by_its_own_limit():
    worker = reward_worker("reward.timeout_s=0.5", "reward.custom_fn=tests.rewards_fixture:grade_then_sleep")
    started = time.monotonic()
    [verdict] = worker.score([(r"so \boxed{4}", "4")])
    assert verdict.timed_out and verdict.reward == 0.0
    assert time.monotonic() - started < 2.0
