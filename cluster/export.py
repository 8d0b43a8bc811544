"""CLI: python -m cluster.export --checkpoint <run>/checkpoints/step_<k> (or a run dir) --out <dir>

Writes a Hugging Face model directory (weights, config, tokenizer) from a training checkpoint,
loadable by transformers and vLLM. It runs offline, without Ray or a process group: DeepSpeed's
zero_to_fp32 merges the ZeRO partitions of every rank into one fp32 state dict, which is then cast
to the run's model.dtype (for bf16 runs this equals the bf16 weights the learner trains with).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from cluster.infra.hf_export import export


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m cluster.export", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True, help="checkpoints/step_<k> directory, or a run directory")
    parser.add_argument("--out", required=True, help="output Hugging Face model directory")
    args = parser.parse_args(argv)
    try:
        out = export(Path(args.checkpoint), Path(args.out))
    except (FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"exported {args.checkpoint} -> {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
