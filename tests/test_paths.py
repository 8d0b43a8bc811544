"""Where a run's files go (cluster/infra/paths.py) and the checkpoint visibility check, without Ray: the
rule for local runs, one-node and multi-node clusters, and the refusal that names the fields. The
same rule against real Ray clusters: tests/test_multinode.py and tests/test_ray_jobs.py."""
from __future__ import annotations

from pathlib import Path

import pytest

from cluster.infra.checkpoint import CheckpointError, check_visible
from cluster.config import ConfigError, load_config
from cluster.infra.paths import Resolver, SharedPathError

RELATIVE = ["model.cache_dir=.cache/m", "run.output_dir=out"]


def test_local_run_resolves_against_the_current_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    resolver = Resolver(load_config(None, RELATIVE), nodes=None)
    cfg, run = resolver.config(load_config(None, RELATIVE + ["run.name=x"]), resolver.run_dir(None))
    assert cfg.model.cache_dir == str(tmp_path / ".cache/m") and cfg.run.output_dir == str(tmp_path / "out")
    assert run.parent == tmp_path / "out" and run.name.startswith("x-")
    assert resolver.run_dir("r") == tmp_path / "r"


def test_one_node_cluster_defaults_to_home_reasonrl(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("REASONRL_SHARED_DIR", raising=False)
    monkeypatch.chdir("/")  # a Ray job's driver starts in Ray's temporary copy: never the base
    resolver = Resolver(load_config(None, RELATIVE), nodes=1)
    cfg, run = resolver.config(load_config(None, RELATIVE), None)
    assert cfg.model.cache_dir == str(tmp_path / "reasonrl/.cache/m")
    assert run.parent == tmp_path / "reasonrl/out"


def test_environment_and_config_name_the_shared_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("REASONRL_SHARED_DIR", str(tmp_path / "env"))
    cfg = load_config(None, RELATIVE + ["model.path=models/q"])
    assert Resolver(cfg, nodes=3).config(cfg, None)[0].model.path == str(tmp_path / "env/models/q")
    cfg = load_config(None, RELATIVE + [f"cluster.shared_dir={tmp_path / 'cfg'}"])
    resolver = Resolver(cfg, nodes=3)
    assert resolver.config(cfg, None)[0].run.output_dir == str(tmp_path / "cfg/out")
    assert resolver.run_dir("/abs/run") == Path("/abs/run")


def test_multi_node_cluster_refuses_relative_paths_naming_them(tmp_path, monkeypatch):
    monkeypatch.delenv("REASONRL_SHARED_DIR", raising=False)
    cfg = load_config(None, ["model.cache_dir=.cache/m", f"run.output_dir={tmp_path}"])
    resolver = Resolver(cfg, nodes=2)
    with pytest.raises(SharedPathError, match=r"^model.cache_dir \('.cache/m'\): relative, and this Ray cluster has 2 "):
        resolver.config(cfg, None)
    with pytest.raises(SharedPathError, match=r"--run-dir \('runs/a'\)"):
        resolver.run_dir("runs/a")
    absolute = load_config(None, [f"model.cache_dir={tmp_path}/m", f"run.output_dir={tmp_path}"])
    assert resolver.config(absolute, resolver.run_dir(str(tmp_path / "r")))[1] == tmp_path / "r"


def test_shared_dir_must_be_absolute():
    with pytest.raises(ConfigError, match="cluster.shared_dir must be an absolute path"):
        load_config(None, ["cluster.shared_dir=relative/dir"])


def test_checkpoint_files_the_driver_cannot_see_are_named(tmp_path):
    staging = tmp_path / "step_3.partial"
    (staging / "deepspeed").mkdir(parents=True)
    (staging / "deepspeed" / "a.pt").write_bytes(b"12345")
    seen = {"node": "10.0.0.1", "files": {"deepspeed/a.pt": 5}}
    check_visible(staging, [("learner[0]", seen)])  # everything there: no error
    elsewhere = {"node": "10.0.0.2", "files": {"deepspeed/a.pt": 5, "deepspeed/b.pt": 7, "rng_rank1.pt": 3}}
    with pytest.raises(CheckpointError, match=r"^checkpoint step_3: .*learner\[1\] on node 10.0.0.2 wrote "
                                              r"deepspeed/b.pt, rng_rank1.pt\. The run directory must be"):
        check_visible(staging, [("learner[0]", seen), ("learner[1]", elsewhere)])
    with pytest.raises(CheckpointError, match=r"learner\[0\] on node 10.0.0.1 wrote deepspeed/a.pt"):
        check_visible(staging, [("learner[0]", {"node": "10.0.0.1", "files": {"deepspeed/a.pt": 6}})])  # size differs


def test_resume_compares_model_paths_as_absolute_paths(tmp_path, monkeypatch):
    """A run saved with a relative model.cache_dir (before the driver resolved paths) still resumes
    from the same directory; another directory is still a change."""
    from cluster.infra.checkpoint import config_changes

    monkeypatch.chdir(tmp_path)
    saved = load_config(None, ["model.cache_dir=.cache/m"]).model_dump(mode="json")
    assert config_changes(saved, load_config(None, [f"model.cache_dir={tmp_path}/.cache/m"])) == []
    assert config_changes(saved, load_config(None, [f"model.cache_dir={tmp_path}/other"])) == [
        f"model.cache_dir: '.cache/m' -> '{tmp_path}/other'"]
