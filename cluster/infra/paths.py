"""Where a run's files go, and the checks that every node sees them.

One rule for every way a run starts (README "Where files go", docs/cluster.md):
- The driver resolves `model.path`, `model.cache_dir`, `run.output_dir` and `--run-dir` once, and
  actors only ever receive absolute paths.
- A local run (private Ray) resolves relative paths against the current directory.
- A run against a Ray cluster (RAY_ADDRESS, `cluster.address`, or `ray job submit`, whose driver
  starts inside Ray's temporary copy of the working dir) resolves them under the shared directory:
  `cluster.shared_dir`, else $REASONRL_SHARED_DIR (for a Ray job: in the head's environment), else
  `~/reasonrl` — the last only while the cluster has one node. On a cluster with more nodes and no
  shared directory given, a relative path is refused before anything starts, naming the fields.
- Before training, every node of the placement reads the driver's token in the run directory (and
  in the base-model cache), and every learner rank does so itself; a node or rank that does not is
  named. Checkpoints are checked file by file (cluster/infra/checkpoint.py: check_visible).
"""
from __future__ import annotations

import os
import time
import uuid
from pathlib import Path
from typing import Any

from cluster.config import Config

SHARED_ENV = "REASONRL_SHARED_DIR"
DEFAULT_SHARED = "~/reasonrl"
TOKEN_FILE = ".reasonrl-run"
FIELDS = ("model.path", "model.cache_dir", "run.output_dir")


class SharedPathError(RuntimeError):
    """A path the run needs is not the same on every node; the message names the field or node."""


def against_cluster(cfg: Config) -> bool:
    """Whether the driver attaches to a Ray cluster (an address, or running as a Ray job)."""
    return bool(cfg.cluster.address or os.environ.get("RAY_ADDRESS") or os.environ.get("RAY_JOB_CONFIG_JSON_ENV_VAR"))


def alive_nodes() -> int:
    import ray

    return sum(1 for n in ray.nodes() if n.get("Alive"))


def _field(cfg: Config, dotted: str) -> str | None:
    section, name = dotted.split(".")
    return getattr(getattr(cfg, section), name)


def _relative(value: str | None) -> bool:
    return bool(value) and not Path(value).expanduser().is_absolute()


class Resolver:
    """Turns the run's relative paths into absolute ones by the rule above. `nodes`: the alive nodes
    of the cluster the driver attached to, or None for a local run."""

    def __init__(self, cfg: Config, nodes: int | None) -> None:
        self.nodes = nodes
        chosen = cfg.cluster.shared_dir or os.environ.get(SHARED_ENV)
        if nodes is None:
            self.base, self.why = Path.cwd(), "the current directory (local run)"
        elif chosen:
            self.base = Path(chosen).expanduser()
            self.why = "cluster.shared_dir" if cfg.cluster.shared_dir else f"${SHARED_ENV}"
            if not self.base.is_absolute():
                raise SharedPathError(f"{self.why}: {chosen!r} is not an absolute path")
        else:
            self.base, self.why = Path(DEFAULT_SHARED).expanduser(), f"{DEFAULT_SHARED} (one-node cluster)"
        self.explicit = nodes is None or bool(chosen)

    def refuse(self, named: dict[str, str | None]) -> None:
        """On a multi-node cluster without a shared directory given, relative paths stop the run."""
        bad = {k: v for k, v in named.items() if _relative(v)}
        if bad and not self.explicit and (self.nodes or 0) > 1:
            listed = ", ".join(f"{k} ({v!r})" for k, v in bad.items())
            raise SharedPathError(
                f"{listed}: relative, and this Ray cluster has {self.nodes} nodes, where a relative path means a "
                f"different directory on each. Give absolute paths on a file system every node mounts, or set "
                f"cluster.shared_dir=<that directory> (or {SHARED_ENV}) to resolve them there")

    def path(self, value: str) -> Path:
        p = Path(value).expanduser()
        return p if p.is_absolute() else self.base / p

    def run_dir(self, value: str | None) -> Path | None:
        """--run-dir, resolved (None when not given)."""
        self.refuse({"--run-dir": value})
        return None if value is None else self.path(value)

    def config(self, cfg: Config, run_dir: Path | None) -> tuple[Config, Path]:
        """`cfg` with absolute model and output paths, and the run directory (the default one when
        `run_dir` is None: <run.output_dir>/<run.name>-<time>)."""
        self.refuse({f: _field(cfg, f) for f in FIELDS})
        model = {k: str(self.path(v)) for k in ("path", "cache_dir") if (v := getattr(cfg.model, k))}
        run = {"output_dir": str(self.path(cfg.run.output_dir))}
        cfg = cfg.model_copy(update={"model": cfg.model.model_copy(update=model),
                                     "run": cfg.run.model_copy(update=run)})
        if run_dir is None:
            run_dir = Path(cfg.run.output_dir) / f"{cfg.run.name}-{time.strftime('%Y%m%d-%H%M%S')}"
        return cfg, run_dir


def write_token(directory: Path, name: str = TOKEN_FILE) -> tuple[Path, str]:
    """A fresh random token in `directory`/name, for other processes to prove they see the directory."""
    directory.mkdir(parents=True, exist_ok=True)
    token = uuid.uuid4().hex
    path = directory / name
    path.write_text(token)
    return path, token


def _probe(tokens: dict[str, str], model_dir: str | None) -> list[str]:
    """Runs on one node: what it does not see of the driver's files."""
    problems = []
    for path, token in tokens.items():
        try:
            seen = Path(path).read_text().strip()
        except OSError as err:
            seen = f"nothing ({type(err).__name__})"
        if seen != token:
            problems.append(f"reads {seen!r} in {path}")
    if model_dir and not (Path(model_dir) / "config.json").is_file():
        problems.append(f"has no model.path {model_dir}/config.json")
    return problems


def check_nodes(cfg: Config, placement: Any, token_file: Path, token: str) -> None:
    """Every node that holds a bundle of the run, other than the driver's, reads the run directory's
    token and one the driver writes into the base-model cache for the check, and sees model.path;
    else SharedPathError naming the nodes. A run placed entirely on the driver's node writes nothing."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    here = ray.get_runtime_context().get_node_id()
    nodes = set(ray.util.placement_group_table(placement.group).get("bundles_to_node_id", {}).values()) - {here}
    if not nodes:
        return
    ips = {n["NodeID"]: n["NodeManagerAddress"] for n in ray.nodes()}
    tokens = {token_file: token}
    if not cfg.model.path:
        probe, probe_token = write_token(Path(cfg.model.cache_dir), f".reasonrl-probe-{uuid.uuid4().hex[:8]}")
        tokens[probe] = probe_token
    probe_task = ray.remote(num_cpus=0)(_probe)
    try:
        refs = {node: probe_task.options(scheduling_strategy=NodeAffinitySchedulingStrategy(node, soft=False))
                .remote({str(p): t for p, t in tokens.items()}, cfg.model.path) for node in sorted(nodes)}
        results = ray.get(list(refs.values()), timeout=cfg.cluster.placement_timeout_s)
    except ray.exceptions.GetTimeoutError:
        raise SharedPathError(f"the file check on nodes {', '.join(ips.get(n, n) for n in sorted(nodes))} did not "
                              f"finish within cluster.placement_timeout_s={cfg.cluster.placement_timeout_s:g}s") from None
    finally:
        for path in list(tokens)[1:]:
            path.unlink(missing_ok=True)
    problems = [f"node {ips.get(node, node)} {p}" for node, found in zip(refs, results) for p in found]
    if problems:
        raise SharedPathError("the run's files are not shared with every node: " + "; ".join(problems)
                              + ". Put the run directory, the model cache and model.path on a file system every "
                              "node mounts at the same path (cluster.shared_dir)")


def check_learners(learners: Any, token_file: Path, token: str) -> None:
    """Every learner rank reads the run directory's token from its own process before training."""
    problems = [p for p in learners.check_run_dir(str(token_file), token) if p]
    if problems:
        raise SharedPathError("learner ranks do not see the run directory: " + "; ".join(problems)
                              + ". It must be on a file system the driver and every learner node share")
