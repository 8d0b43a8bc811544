import subprocess
import sys
from pathlib import Path

import pytest

from cluster.config import ConfigError, load_config

ROOT = Path(__file__).resolve().parent.parent


def test_overrides_apply_and_parse_types():
    cfg = load_config(str(ROOT / "configs/tiny.yaml"), ["learner.lr=1e-6", "train.steps=3", "cluster.address=null"])
    assert cfg.learner.lr == 1e-6 and cfg.train.steps == 3 and cfg.cluster.address is None


@pytest.mark.parametrize("override, field", [
    ("learnr.lr=1", "learnr"), ("learner.lrr=1", "learner.lrr"), ("learner.lr=-1", "learner.lr"),
    ("learner.zero_stage=5", "learner.zero_stage"), ("rollout.temperature=hot", "rollout.temperature"),
    ("data.train_path=/no/such.jsonl", "data.train_path"),
])
def test_bad_config_names_the_field(override, field):
    with pytest.raises(ConfigError) as err:
        load_config(str(ROOT / "configs/tiny.yaml"), [override])
    assert field in str(err.value)


def test_malformed_override_is_refused():
    with pytest.raises(ConfigError, match="section.key=value"):
        load_config(None, ["learner.lr"])


def test_every_shipped_config_validates():
    files = sorted((ROOT / "configs").glob("*.yaml"))
    assert files
    for path in files:
        load_config(str(path))


def test_cli_refuses_bad_config_before_starting_anything(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "cluster.train", "--config", "configs/tiny.yaml",
                           "learner.zero_stag=2", "--run-dir", str(tmp_path / "r")],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "learner.zero_stag" in proc.stderr and "unknown key" in proc.stderr
    assert not (tmp_path / "r").exists()  # nothing was started or written
