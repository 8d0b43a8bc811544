"""CLI: `python -m cluster.placement --config <yaml> [overrides]` prints the placement a config asks for
(cluster/infra/placement_group.py plans it)."""
from __future__ import annotations

from cluster.infra.placement_group import plan, required_resources


def main(argv: list[str] | None = None) -> int:
    """`python -m cluster.placement --config <yaml> [overrides]`: print the placement the config asks for
    (bundles, each actor's share), without Ray or GPUs."""
    import argparse
    import sys

    from cluster.config import ConfigError, load_config

    parser = argparse.ArgumentParser(prog="python -m cluster.placement", description=main.__doc__)
    parser.add_argument("--config")
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args(argv)
    try:
        cfg = load_config(args.config, args.overrides)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    layout = plan(cfg)
    need = ", ".join(f"{k}: {v:g}" for k, v in sorted(required_resources(cfg).items()))
    print(f"{len(layout.bundles)} bundles ({need}), strategy {cfg.cluster.placement_strategy}")
    print(layout.describe())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
