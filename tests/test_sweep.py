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


def test_plot_draws_each_axis_with_one_line_per_other_value_and_its_ideal():
    from cluster.sweep import figure

    rows = [{"train.prompts_per_step": p, "learner.num_ranks": n, "samples_per_s": 10.0 * n + p, "step_s": p / (10.0 * n + p),
             "resource_units": 1 + n} for p in (8, 16) for n in (1, 2)]
    fig = figure(rows, ["train.prompts_per_step", "learner.num_ranks"])
    top_ranks = fig.axes[1]  # throughput vs learner.num_ranks (column 2, top row)
    assert top_ranks.get_xlabel() == "learner.num_ranks"
    lines = {line.get_label(): (list(line.get_xdata()), list(line.get_ydata())) for line in top_ranks.get_lines()}
    assert lines["prompts_per_step=8"] == ([1, 2], [18.0, 28.0])
    assert lines["prompts_per_step=16"] == ([1, 2], [26.0, 36.0])
    # ideal: throughput scales with resource units 2 -> 3 from the first point of the line
    assert lines["prompts_per_step=8: ideal"][1] == [18.0, 27.0]
    step_vs_batch = {line.get_label(): list(line.get_ydata()) for line in fig.axes[2].get_lines()}
    # ideal step time grows with samples per step at fixed resources: 8 -> 16 prompts doubles it
    assert step_vs_batch["num_ranks=1: ideal"] == [8 / 18.0, 2 * 8 / 18.0]
