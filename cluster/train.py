"""CLI: python -m cluster.train --config configs/<name>.yaml [section.key=value ...]

Runs locally (a private Ray), against a `ray start` cluster (cluster.address or RAY_ADDRESS), and
unchanged under `ray job submit --working-dir . -- python -m cluster.train ...`.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from cluster.config import ConfigError, load_config


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m cluster.train", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", help="YAML file in configs/")
    parser.add_argument("--run-dir", help="output directory (default: <run.output_dir>/<run.name>-<time>)")
    parser.add_argument("overrides", nargs="*", help="section.key=value, e.g. learner.lr=1e-6")
    args = parser.parse_args(argv)
    try:
        cfg = load_config(args.config, args.overrides)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    run_dir = Path(args.run_dir or Path(cfg.run.output_dir) / f"{cfg.run.name}-{time.strftime('%Y%m%d-%H%M%S')}")
    from cluster.trainer import Trainer

    trainer = Trainer(cfg, run_dir)
    try:
        summary = trainer.run()
    finally:
        trainer.close()
    print(json.dumps(summary, indent=2))
    print(f"run directory: {run_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
