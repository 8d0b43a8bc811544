"""Weights & Biases logging beside TensorBoard (`logging.wandb: true`), with the same metric names.

Each driver process is one W&B run: a resumed training run starts a new W&B run in the same group (the
run directory's name), logging from the resumed step on, so no step is ever logged twice in one W&B run.
Offline mode (`logging.wandb_mode: offline`) writes under `<run dir>/wandb/`; `wandb sync` uploads it later.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from cluster.config import Config


class WandbError(RuntimeError):
    pass


def _has_api_key() -> bool:
    netrc = Path(os.environ.get("NETRC", Path.home() / ".netrc"))
    return bool(os.environ.get("WANDB_API_KEY")) or (netrc.is_file() and "api.wandb.ai" in netrc.read_text())


def check_wandb(cfg: Config) -> None:
    """Refuse, before anything starts, a W&B config that cannot log: no wandb package, or online mode
    without an API key (W&B would otherwise retry for minutes)."""
    if not cfg.logging.wandb:
        return
    try:
        import wandb  # noqa: F401
    except ImportError:
        raise WandbError("logging.wandb: the wandb package is not installed (pip install wandb)") from None
    if cfg.logging.wandb_mode == "online" and not _has_api_key():
        raise WandbError("logging.wandb: no W&B API key (set WANDB_API_KEY or run `wandb login`), "
                         "or set logging.wandb_mode=offline to write the run locally and `wandb sync` it later")


class WandbSink:
    """One W&B run; `log` takes the same (step, metrics) rows as metrics.jsonl and TensorBoard."""

    def __init__(self, cfg: Config, run_dir: Path, first_step: int = 0) -> None:
        import wandb

        check_wandb(cfg)
        w = cfg.logging
        name = w.wandb_run_name or run_dir.name
        self.run: Any = wandb.init(
            project=w.wandb_project, entity=w.wandb_entity, group=run_dir.name, mode=w.wandb_mode,
            name=name if first_step == 0 else f"{name}-resumed@{first_step}", dir=str(run_dir),
            config=cfg.model_dump(mode="json"), reinit="create_new",
        )

    def log(self, step: int, metrics: dict[str, float]) -> None:
        self.run.log(dict(metrics), step=step)

    def close(self) -> None:
        self.run.finish()
