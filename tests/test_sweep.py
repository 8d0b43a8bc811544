"""The sweep's own logic: grid expansion, per-point summaries from metrics rows, efficiency."""
import json

from cluster.config import load_config
from cluster.sweep import SweepSpec, add_efficiency, grid, point_overrides, summarize, write_tables


def test_grid_is_the_full_product_and_overrides_are_valid():
    spec = SweepSpec(base="configs/tiny.yaml", overrides=["train.steps=2"],
                     axes={"train.prompts_per_step": [8, 16], "learner.num_ranks": [1, 2], "rollout.resources": [{"a": 1}]})
    points = grid(spec)
    assert len(points) == 4 and {"train.prompts_per_step": 16, "learner.num_ranks": 1, "rollout.resources": {"a": 1}} in points
    cfg = load_config(spec.base, point_overrides(spec, points[-1]))
    assert cfg.train.steps == 2 and cfg.learner.num_ranks == 2 and cfg.rollout.resources == {"a": 1}


def _fake_run(path, step_times):
    path.mkdir()
    rows = [{"step": i + 1, "reward/mean": 0.5, "time/wait_rollout_s": g, "time/generate_s": g, "time/advantages_s": 0.0,
             "time/train_s": t, "time/sync_s": 0.1, "perf/gen_tokens_per_s": 1000.0 / g}
            for i, (g, t) in enumerate(step_times)]
    (path / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in rows))


def test_summary_skips_warmup_and_efficiency_is_relative(tmp_path):
    small = load_config("configs/tiny.yaml", ["train.prompts_per_step=8", "learner.num_ranks=1"])
    big = load_config("configs/tiny.yaml", ["train.prompts_per_step=8", "learner.num_ranks=2"])
    _fake_run(tmp_path / "a", [(9.0, 9.0), (1.0, 0.9), (1.0, 0.9), (1.0, 0.9)])
    _fake_run(tmp_path / "b", [(9.0, 9.0), (1.0, 0.4), (1.0, 0.4)])
    a, b = summarize(small, tmp_path / "a"), summarize(big, tmp_path / "b")
    assert abs(a["step_s"] - 2.0) < 1e-9 and abs(a["samples_per_s"] - 64 / 2.0) < 1e-9  # warm-up step ignored
    assert abs(a["gen_tokens_per_s"] - 1000 / 2.0) < 1e-9
    rows = [{"learner.num_ranks": 1, **a}, {"learner.num_ranks": 2, **b}]
    add_efficiency(rows)
    assert rows[0]["efficiency"] == 1.0
    assert abs(rows[1]["speedup"] - 2.0 / 1.5) < 1e-9
    assert abs(rows[1]["efficiency"] - (2.0 / 1.5) / (3 / 2)) < 1e-9  # 2 units -> 3 units (1 rollout + ranks)
    write_tables(rows, tmp_path)
    assert (tmp_path / "sweep.csv").read_text().count("\n") == 3 and "efficiency" in (tmp_path / "sweep.md").read_text()
