"""CLI: `python -m cluster.memory --config <yaml> [section.key=value ...]` prints the memory predicted per
learner rank and rollout engine; the model and its formulas (the help text) are cluster/planning/memory_model.py.
What `auto` resolves to (model.dtype, <group>.max_tokens_per_micro_batch: cluster/planning/token_budget.py,
on CPU from this machine's memory now) is printed first, and the prediction is for that."""
from __future__ import annotations

import argparse
import sys

from cluster.planning import memory_model
from cluster.config import ConfigError, load_config
from cluster.planning.memory_model import does_not_fit, predict, report
from cluster.planning.token_budget import resolve_token_budget
from rollout.kv_cache import KVCacheError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m cluster.memory", description=memory_model.__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, help="YAML file in configs/")
    parser.add_argument("overrides", nargs="*", help="section.key=value")
    args = parser.parse_args(argv)
    try:
        cfg, chosen = resolve_token_budget(load_config(args.config, args.overrides))
        roles = predict(cfg)
    except (ConfigError, FileNotFoundError, KVCacheError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    for note in (cfg.model.dtype_note, chosen):
        if note:
            print(note)
    print(report(cfg, roles))
    return 0 if does_not_fit(cfg) is None else 1


if __name__ == "__main__":
    sys.exit(main())
