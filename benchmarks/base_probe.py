"""How a base model answers held-out problems of the embedded task, by kind of answer: direct, worked from
the start, or checking itself (`cluster.infra.metrics.REFLECTION`), with each kind's share and accuracy.
Sampled at T=1 with Hugging Face generate (no Ray, vLLM or grader actors: the grader's own extraction
reads the last box). Used to see whether a behaviour can pay before RL runs (docs/benchmarks.md
"Self-correction").

    .venv/bin/python benchmarks/base_probe.py --config configs/tiny.yaml [--problems 60] [--samples 8]
    .venv/bin/python benchmarks/base_probe.py --model <HF dir> --label NAME

Results are appended to docs/learning/base_probe.jsonl.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
RESULTS = ROOT / "docs" / "learning" / "base_probe.jsonl"


def probe(model_dir: str, problems: int, samples: int, seed: int = 0) -> dict[str, dict[str, float]]:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from cluster.infra.metrics import reflects
    from reward.extract import last_boxed
    from tasks import column_addition as task

    torch.manual_seed(seed)
    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    counts = {kind: [0, 0] for kind in ("direct", "worked", "self-check")}
    for p in task.sample_problems(problems, seed=12345, held_out=True):
        ids = tok(p.prompt, return_tensors="pt", add_special_tokens=False).input_ids.repeat(samples, 1)
        with torch.no_grad():
            out = model.generate(ids, max_new_tokens=96, do_sample=True, temperature=1.0, top_k=0,
                                 eos_token_id=tok.eos_token_id, pad_token_id=tok.eos_token_id)
        for row in out:
            text = tok.decode(row[ids.shape[1]:], skip_special_tokens=True)
            kind = "self-check" if reflects(text) else "worked" if task.is_worked(text) else "direct"
            counts[kind][0] += 1
            counts[kind][1] += last_boxed(text) == p.answer
    total = problems * samples
    return {kind: {"share": n / total, "accuracy": (ok / n if n else None), "responses": n}
            for kind, (n, ok) in counts.items()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", help="probe this config's cached tiny base model (built by a run of it)")
    parser.add_argument("--model", help="or a Hugging Face model directory")
    parser.add_argument("--label", default=None)
    parser.add_argument("--problems", type=int, default=60)
    parser.add_argument("--samples", type=int, default=8)
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()
    if args.config:
        from cluster.config import load_config
        from cluster.toy.base_model import tiny_model_dir

        model_dir = str(tiny_model_dir(load_config(args.config, args.overrides)))
    elif args.model:
        model_dir = args.model
    else:
        parser.error("give --config or --model")
    if not (Path(model_dir) / "config.json").is_file():
        print(f"no model in {model_dir}: run the config once to build it", file=sys.stderr)
        return 2
    row = {"label": args.label or args.config or model_dir, "model": model_dir, "problems": args.problems,
           "samples": args.samples, "kinds": probe(model_dir, args.problems, args.samples)}
    print(json.dumps(row))
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    with RESULTS.open("a") as f:
        f.write(json.dumps(row) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
