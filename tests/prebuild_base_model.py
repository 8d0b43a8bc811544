"""Build (or find cached) the base model of a config, as the trainer would, then exit: what
tests/conftest.py runs in the background at the lowest CPU priority for configs/tiny.yaml, whose base
model takes ~6.5 min of both cores to build and is needed only by the embedded-default learning test.

Usage: python tests/prebuild_base_model.py CONFIG [OVERRIDE ...]"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def main(argv: list[str]) -> None:
    import ray

    from cluster.config import load_config
    from cluster.infra.placement_group import connect, place
    from cluster.toy.base_model import resolve_model

    cfg = load_config(argv[0], argv[1:])
    connect(cfg)
    placement = place(cfg)
    try:
        print(resolve_model(cfg, placement), flush=True)
    finally:
        placement.release()
        ray.shutdown()


if __name__ == "__main__":
    main(sys.argv[1:])
