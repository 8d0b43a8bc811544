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
    ("algorithm.advantage=ppo", "algorithm.advantage"), ("algorithm.dual_clip=1.0", "algorithm.dual_clip"),
    ("algorithm.loss_agg=sum", "algorithm.loss_agg"), ("algorithm.kl_estimator=k4", "algorithm.kl_estimator"),
])
def test_bad_config_names_the_field(override, field):
    with pytest.raises(ConfigError) as err:
        load_config(str(ROOT / "configs/tiny.yaml"), [override])
    assert field in str(err.value)


def test_malformed_override_is_refused():
    with pytest.raises(ConfigError, match="section.key=value"):
        load_config(None, ["learner.lr"])


def test_every_shipped_config_validates():
    import yaml

    from cluster.sweep import SweepSpec, grid, point_overrides

    files = sorted((ROOT / "configs").glob("*.yaml"))
    assert files
    for path in files:
        tree = yaml.safe_load(path.read_text())
        if "axes" in tree:  # a sweep file: every point must be a valid config
            spec = SweepSpec.model_validate(tree)
            for point in grid(spec):
                load_config(str(ROOT / spec.base), point_overrides(spec, point))
        else:
            load_config(str(path))


def test_cli_refuses_bad_config_before_starting_anything(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "cluster.train", "--config", "configs/tiny.yaml",
                           "learner.zero_stag=2", "--run-dir", str(tmp_path / "r")],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "learner.zero_stag" in proc.stderr and "unknown key" in proc.stderr
    assert not (tmp_path / "r").exists()  # nothing was started or written


def test_algorithm_names_match_the_learner_registries():
    from typing import get_args

    from cluster.config import AlgorithmConfig
    from learner import core_algos as algos

    fields = AlgorithmConfig.model_fields
    assert set(get_args(fields["advantage"].annotation)) == set(algos.ADVANTAGE_ESTIMATORS)
    assert set(get_args(fields["loss_agg"].annotation)) == set(algos.AGG_MODES)
    assert set(get_args(fields["kl_estimator"].annotation)) == set(algos.KL_ESTIMATORS)


def test_algorithm_defaults_keep_plain_grpo():
    a = load_config(None).algorithm
    assert (a.advantage, a.loss_agg, a.dual_clip, a.entropy_coef, a.kl_coef, a.kl_estimator, a.kl_in_reward,
            a.mask_truncated) == ("grpo", "token_mean", None, 0.0, 0.0, "k3", False, False)
    assert (a.ppo_epochs, a.ppo_mini_batches, a.tis, a.tis_cap) == (1, 1, "token", 2.0)
    assert (a.overlong_buffer, a.dynamic_sampling) == (0, False)  # DAPO's shaping and dynamic sampling: opt-in


def test_rloo_needs_two_samples_per_prompt():
    with pytest.raises(ConfigError, match="rloo"):
        load_config(None, ["algorithm.advantage=rloo", "rollout.samples_per_prompt=1"])


@pytest.mark.parametrize("config, gpus", [("simplerl_zero_v0_ppo_qwen7b.yaml", 32), ("simplerl_zoo_grpo_qwen7b.yaml", 16),
                                          ("simplerl_zero_v0_ppo_qwen7b_1node.yaml", 8),
                                          ("simplerl_zoo_grpo_qwen7b_1node.yaml", 8)])
def test_gpu_config_stops_before_starting_anything_on_a_cpu_machine(tmp_path, config, gpus):
    """The SimpleRL configs validate here and stop at the preflight, naming the GPU gap (v0: 16 engines +
    8 learner + 8 critic ranks; Zoo: 4 engines x TP 2 + 8 learner ranks)."""
    import torch

    if torch.cuda.device_count() >= gpus:
        pytest.skip("this machine has the GPUs")
    proc = subprocess.run([sys.executable, "-m", "cluster.train", "--config", f"configs/{config}",
                           "--run-dir", str(tmp_path / "r")], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 3, proc.stderr
    assert f"this config needs {gpus} GPUs" in proc.stderr and f"the cluster has {torch.cuda.device_count()}" in proc.stderr
    assert not (tmp_path / "r").exists()


def test_simplerl_configs_cite_a_source_for_every_value():
    """Every value line of the two SimpleRL configs carries a comment (its source, or why it is ours)."""
    for name in ("simplerl_zero_v0_ppo_qwen7b.yaml", "simplerl_zoo_grpo_qwen7b.yaml",
                 "simplerl_zero_v0_ppo_qwen7b_1node.yaml", "simplerl_zoo_grpo_qwen7b_1node.yaml"):
        lines = (ROOT / "configs" / name).read_text().splitlines()
        values = [line for line in lines if ":" in line and not line.lstrip().startswith("#")
                  and not line.rstrip().endswith(":")]
        uncited = [line for line in values if "#" not in line and line.split(":")[0].strip() not in UNCITED_OK]
        assert not uncited, (name, uncited)


# Our own settings with no counterpart in the launchers (names, output places, CPU bookkeeping, our sync).
UNCITED_OK = {"name", "output_dir", "device", "kind", "eval_path", "eval_size", "cpus_per_worker", "cpus_per_rank",
              "num_workers", "bucket_mb", "timeout_s", "eval_samples", "samples_to_save", "keep_checkpoints",
              "benchmarks", "seed", "transport"}


def test_resume_config_check_allows_only_fields_that_do_not_change_training():
    from cluster.infra.checkpoint import config_changes

    saved = load_config(str(ROOT / "configs/tiny.yaml")).model_dump(mode="json")
    same = load_config(str(ROOT / "configs/tiny.yaml"), ["train.steps=80", "train.eval_every=5", "train.save_every=3"])
    assert config_changes(saved, same) == []
    changed = load_config(str(ROOT / "configs/tiny.yaml"), ["learner.lr=1e-6", "data.train_size=10", "train.seed=1"])
    assert [c.split(":")[0] for c in config_changes(saved, changed)] == ["data.train_size", "learner.lr", "train.seed"]


def test_train_size_limits_the_training_problems():
    from cluster.loop.data import load_problems

    train, held = load_problems(load_config(None, ["data.train_size=6", "data.eval_size=3"]))
    assert len(train) == 6 and len(held) == 3


def test_session_trainer_config_is_restored_in_place_after_a_test():
    """tests/conftest.py's restore: a nested field changed in place (as a test might) gets its value back,
    and every section object keeps its identity (the pipeline and rollout group hold sections)."""
    from tests.conftest import restore_in_place

    cfg = load_config(str(ROOT / "configs" / "tiny.yaml"))
    snapshot, algorithm = cfg.model_copy(deep=True), cfg.algorithm
    cfg.algorithm.kl_in_reward = True
    cfg.train.steps = 3
    restore_in_place(cfg, snapshot)
    assert cfg.algorithm is algorithm and cfg.algorithm.kl_in_reward is False and cfg.train.steps == snapshot.train.steps


def test_a_config_extends_another_field_by_field(tmp_path):
    (tmp_path / "base.yaml").write_text("run: {name: base}\nlearner: {lr: 0.001, num_ranks: 3}\n")
    (tmp_path / "child.yaml").write_text("extends: base.yaml\nlearner: {num_ranks: 1}\n")
    cfg = load_config(str(tmp_path / "child.yaml"), ["run.output_dir=elsewhere"])
    assert (cfg.run.name, cfg.learner.lr, cfg.learner.num_ranks, cfg.run.output_dir) == ("base", 0.001, 1, "elsewhere")
    (tmp_path / "base.yaml").write_text("extends: child.yaml\n")
    with pytest.raises(ConfigError, match="extends child.yaml in a cycle"):
        load_config(str(tmp_path / "child.yaml"))
    (tmp_path / "child.yaml").write_text("extends: missing.yaml\n")
    with pytest.raises(ConfigError, match="config file not found: .*missing.yaml"):
        load_config(str(tmp_path / "child.yaml"))
