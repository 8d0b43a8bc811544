"""Scaling sweep: python -m cluster.sweep configs/<sweep>.yaml [--out DIR]

A sweep file names a base config, overrides for every point, and axes (config keys with lists of
values); the full grid runs point by point as ordinary `cluster.train` runs — each a separate
process, so each point gets a fresh Ray (or attaches to RAY_ADDRESS, like any run). Every point is
validated before the first one starts. Results: sweep.csv, sweep.md and PNG plots of throughput,
per-phase step time and scaling efficiency against the smallest point.
"""
from __future__ import annotations

import argparse
import csv
import itertools
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field

from cluster.config import Config, ConfigError, load_config
from cluster.infra.metrics import read_metrics, save_figure
from protocol.markdown import table_lines

PHASES = ("wait_rollout", "logprobs", "advantages", "train", "sync")


class SweepSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    base: str
    out: str = "docs/sweep"  # tables and plots (small: safe to commit)
    runs_dir: str = "runs/sweep"  # the points' run directories (models, logs: not for committing)
    overrides: list[str] = []
    axes: dict[str, list[Any]] = Field(min_length=1)


def grid(spec: SweepSpec) -> list[dict[str, Any]]:
    keys = list(spec.axes)
    return [dict(zip(keys, values)) for values in itertools.product(*(spec.axes[k] for k in keys))]


def point_overrides(spec: SweepSpec, point: dict[str, Any]) -> list[str]:
    return spec.overrides + [f"{k}={yaml.safe_dump(v, default_flow_style=True).strip().removesuffix('...').strip()}"
                             for k, v in point.items()]


def resource_units(cfg: Config) -> float:
    """Accelerator-like units a point uses: one per rollout engine GPU/CPU worker and per learner rank."""
    return cfg.rollout.num_workers * cfg.rollout.tensor_parallel_size + cfg.learner.num_ranks


def summarize(cfg: Config, run_dir: Path) -> dict[str, float]:
    """Median per-step costs, skipping the first step (engine and optimizer warm-up)."""
    rows = [r for r in read_metrics(run_dir) if "reward/mean" in r]
    rows = rows[1:] if len(rows) > 1 else rows
    if not rows:
        raise RuntimeError(f"{run_dir}: no training steps recorded")
    med = lambda key: statistics.median(r.get(key, 0.0) for r in rows)  # noqa: E731
    phases = {p: med(f"time/{p}_s") for p in PHASES}
    step_s = sum(phases.values())
    tokens = statistics.median(r["perf/gen_tokens_per_s"] * r["time/generate_s"] for r in rows)
    samples = cfg.train.prompts_per_step * cfg.rollout.samples_per_prompt
    return {"step_s": step_s, "samples_per_s": samples / step_s, "gen_tokens_per_s": tokens / step_s,
            "resource_units": resource_units(cfg), **{f"{p}_s": v for p, v in phases.items()}}


def add_efficiency(rows: list[dict[str, Any]]) -> None:
    """Speed-up in samples/s over the smallest point, and that speed-up per resource unit added."""
    base = min(rows, key=lambda r: (r["resource_units"], r["samples_per_s"]))
    for r in rows:
        r["speedup"] = r["samples_per_s"] / base["samples_per_s"]
        r["efficiency"] = r["speedup"] / (r["resource_units"] / base["resource_units"])


def write_tables(rows: list[dict[str, Any]], out: Path) -> None:
    keys = list(rows[0])
    with (out / "sweep.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=keys)
        writer.writeheader()
        writer.writerows(rows)
    fmt = lambda v: f"{v:.3g}" if isinstance(v, float) else str(v)  # noqa: E731
    lines = table_lines(keys, [[fmt(r[k]) for k in keys] for r in rows], padded_rule=False)
    (out / "sweep.md").write_text("\n".join(lines) + "\n")


def _lines(rows: list[dict[str, Any]], axis: str, axes: list[str]) -> dict[str, list[dict[str, Any]]]:
    """The points of each line of a plot against `axis`: one line per value of the other axes, sorted by x."""
    others = [a for a in axes if a != axis]
    lines: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        label = ", ".join(f"{a.split('.')[-1]}={r[a]}" for a in others) or "all"
        lines.setdefault(label, []).append(r)
    return {label: sorted(points, key=lambda r: r[axis]) for label, points in lines.items()}


def ideal(points: list[dict[str, Any]]) -> tuple[list[float], list[float]]:
    """Linear scaling from a line's first point: throughput grows with the resource units; step time
    grows with the samples per step and shrinks with the resource units."""
    first = points[0]
    samples = lambda r: r["samples_per_s"] * r["step_s"]  # noqa: E731
    throughput = [first["samples_per_s"] * r["resource_units"] / first["resource_units"] for r in points]
    step = [first["step_s"] * samples(r) / samples(first) * first["resource_units"] / r["resource_units"] for r in points]
    return throughput, step


def figure(rows: list[dict[str, Any]], axes: list[str]) -> Any:
    """Per axis, throughput (top) and step time (bottom) against the axis' values: one line per value of
    the other axes, each with its ideal linear scaling dashed (see `ideal`). Returns the matplotlib Figure."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, grid_axes = plt.subplots(2, len(axes), figsize=(6 * len(axes), 8), squeeze=False)
    for column, axis in enumerate(axes):
        top, bottom = grid_axes[0][column], grid_axes[1][column]
        for (label, points), color in zip(_lines(rows, axis, axes).items(), plt.rcParams["axes.prop_cycle"].by_key()["color"] * 9):
            x = [r[axis] for r in points]
            throughput, step = ideal(points)
            top.plot(x, [r["samples_per_s"] for r in points], "o-", color=color, label=label)
            top.plot(x, throughput, "--", color=color, alpha=0.6, label=f"{label}: ideal")
            bottom.plot(x, [r["step_s"] for r in points], "o-", color=color, label=label)
            bottom.plot(x, step, "--", color=color, alpha=0.6, label=f"{label}: ideal")
        values = sorted({r[axis] for r in rows})
        for ax, ylabel in ((top, "samples / s"), (bottom, "seconds per step (median)")):
            ax.set_xticks(values)
            ax.set_xlabel(axis)
            ax.set_ylabel(ylabel)
            ax.set_ylim(bottom=0)
            ax.grid(alpha=0.3)
            ax.legend(fontsize=8)
        top.set_title(f"throughput vs {axis}")
        bottom.set_title(f"step time vs {axis}")
    fig.tight_layout()
    return fig


def plot(rows: list[dict[str, Any]], axes: list[str], out: Path) -> Path:
    """`figure` saved as out/sweep.png."""
    return save_figure(figure(rows, axes), out / "sweep.png")


def read_table(path: Path) -> list[dict[str, Any]]:
    """sweep.csv back as rows, numbers as numbers."""
    def number(text: str) -> Any:
        for kind in (int, float):
            try:
                return kind(text)
            except ValueError:
                pass
        return text

    with path.open(newline="") as f:
        return [{k: number(v) for k, v in row.items()} for row in csv.DictReader(f)]


def run_point(spec: SweepSpec, overrides: list[str], run_dir: Path) -> None:
    cmd = [sys.executable, "-m", "cluster.train", "--config", spec.base, "--run-dir", str(run_dir), *overrides]
    print("sweep: " + " ".join(cmd[1:]), flush=True)
    with (run_dir.parent / f"{run_dir.name}.log").open("w") as log:
        proc = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT)
    if proc.returncode:
        raise RuntimeError(f"sweep point {run_dir.name} failed (exit {proc.returncode}); see {run_dir}.log")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m cluster.sweep", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("sweep", help="sweep YAML file")
    parser.add_argument("--out", help="output directory (default: the file's `out`)")
    parser.add_argument("--replot", action="store_true", help="redraw sweep.png from the out directory's sweep.csv")
    args = parser.parse_args(argv)
    try:
        spec = SweepSpec.model_validate(yaml.safe_load(Path(args.sweep).read_text()))
        points = grid(spec)
        configs = [load_config(spec.base, point_overrides(spec, p)) for p in points]  # all valid before any runs
    except (ConfigError, ValueError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    out, runs = Path(args.out or spec.out), Path(spec.runs_dir)
    if args.replot:
        print(plot(read_table(out / "sweep.csv"), list(spec.axes), out))
        return 0
    out.mkdir(parents=True, exist_ok=True)
    runs.mkdir(parents=True, exist_ok=True)
    rows = []
    for i, (point, cfg) in enumerate(zip(points, configs)):
        run_dir = runs / f"point{i:02d}"
        run_point(spec, point_overrides(spec, point), run_dir)
        rows.append({**point, **summarize(cfg, run_dir)})
        print(f"sweep: point {i + 1}/{len(points)} {point}: {rows[-1]['samples_per_s']:.1f} samples/s", flush=True)
    add_efficiency(rows)
    write_tables(rows, out)
    plot(rows, list(spec.axes), out)
    print((out / "sweep.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
