"""The learner's train phase on the default shape, side by side in one run: micro-batches of
learner.micro_batch_size=64 samples (configs/tiny.yaml) against `learner.max_tokens_per_micro_batch: auto`
(cluster/planning/token_budget.py: each rank's share sorted by length, packed within the planned budget),
and fp32 against bf16 (`model.dtype: auto` on a CPU with bf16 units); plus two fixed budgets around auto's:
a rank's whole share (32768 tokens, one micro-batch: what the memory plan alone would allow) and 512.

The workload: configs/tiny.yaml's step, 32 prompts x 8 answers of at most 64 tokens on 2 DeepSpeed ZeRO-2
ranks (gloo, one torch thread each, as the run gives them), one GRPO optimizer step per batch; the model
is the default's shape with random weights (timing does not depend on the weights), and the samples are
the embedded task's own warm-up pairs (prompt and answer texts in the base model's habit mix of direct and
worked answers, answers cut at 64 tokens) with random advantages. Both ranks run in spawned processes that
hold one engine per variant; every round trains each variant once, in a rotated order, between barriers,
so the machine's load falls on all variants alike. The first round (Adam's state allocated) is dropped;
each figure is a median over the other rounds, and each ratio the median of the per-round ratios.

    .venv/bin/python benchmarks/micro_batching.py [--rounds N] [--write-docs]

--write-docs writes docs/micro_batching/results.json and the "Learner micro-batching and dtype" section of
docs/benchmarks.md, rendered from the result file alone (`section`).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.doc_sections import publish, replace_section  # noqa: E402

RESULTS = ROOT / "docs" / "micro_batching" / "results.json"
CONFIG = "configs/tiny.yaml"
TITLE = "## Learner micro-batching and dtype (default shape)"
VARIANTS: dict[str, list[str]] = {  # name -> overrides of configs/tiny.yaml; the first is the baseline
    "64 samples, fp32": [],
    "auto tokens, fp32": ["learner.max_tokens_per_micro_batch=auto"],
    "32768 tokens (the whole share), fp32": ["learner.max_tokens_per_micro_batch=32768"],
    "512 tokens, fp32": ["learner.max_tokens_per_micro_batch=512"],
    "64 samples, auto dtype": ["model.dtype=auto"],
    "auto tokens, auto dtype": ["learner.max_tokens_per_micro_batch=auto", "model.dtype=auto"],
}


def workload(cfg: Any, tokenizer: Any, seed: int = 0) -> Any:
    """The step's batch: prompts_per_step x samples_per_prompt warm-up pairs of the task, answers cut at
    max_new_tokens (EOS included), random advantages."""
    import random

    from cluster.toy.base_model import warmup_pairs
    from protocol.batch import TrainBatch

    size, cap = cfg.train.prompts_per_step * cfg.rollout.samples_per_prompt, cfg.rollout.max_new_tokens
    pairs = warmup_pairs(cfg)[-size:]  # the habit stage: the base model's mix of direct and worked answers
    eos = tokenizer.eos_token_id
    prompts = [tokenizer(p, add_special_tokens=False)["input_ids"] for p, _ in pairs]
    answers = [(tokenizer(a, add_special_tokens=False)["input_ids"] + [eos])[:cap] for _, a in pairs]
    rng = random.Random(seed)
    return TrainBatch(prompts, answers, [], [rng.gauss(0, 1) for _ in pairs], [[1.0] * len(a) for a in answers])


def _rank(rank: int, port: int, specs: dict[str, Any], batch: Any, rounds: int) -> dict[str, list[float]]:
    """One rank in a fresh process: an engine per variant, then `rounds` rounds of one train step each."""
    os.environ["DS_ACCELERATOR"] = "cpu"
    import torch.distributed as dist

    from learner.worker import LearnerWorker

    workers = {}
    for name, spec in specs.items():
        workers[name] = LearnerWorker(rank, 2, spec)
        workers[name].setup("127.0.0.1", port)
    seconds: dict[str, list[float]] = {name: [] for name in specs}
    names = list(specs)
    for r in range(rounds):
        for name in names[r % len(names):] + names[: r % len(names)]:
            dist.barrier()
            start = time.perf_counter()
            workers[name].train_step(batch, seed=r)
            dist.barrier()
            seconds[name].append(time.perf_counter() - start)
    return seconds


def measure(rounds: int) -> dict[str, Any]:
    from transformers import AutoTokenizer

    from cluster.config import load_config
    from cluster.loop.specs import learner_spec
    from cluster.planning.token_budget import resolve_token_budget
    from cluster.toy.tiny_model import build_random_model
    from learner.batching import padded_tokens, rank_micro_batches
    from protocol.endpoints import free_port
    from tasks import task_for

    base = load_config(str(ROOT / CONFIG))
    model_dir = Path(tempfile.mkdtemp(prefix="micro-batching-")) / "model"
    build_random_model(base.model.tiny, task_for(base.data.kind).tokenizer_corpus(), model_dir, base.train.seed)
    batch = workload(base, AutoTokenizer.from_pretrained(model_dir))
    lengths = [len(p) + len(a) for p, a in zip(batch.prompt_ids, batch.response_ids)]
    specs, layout, notes = {}, {}, {}
    for name, overrides in VARIANTS.items():
        cfg, chosen = resolve_token_budget(load_config(str(ROOT / CONFIG), overrides))
        specs[name] = learner_spec(cfg, str(model_dir))
        s = specs[name]
        plans = [rank_micro_batches(list(range(len(batch))), r, 2, s.micro_batch_size, lengths,
                                    s.max_tokens_per_micro_batch) for r in range(2)]
        layout[name] = {"dtype": s.dtype, "max_tokens_per_micro_batch": s.max_tokens_per_micro_batch,
                        "micro_batches_per_rank": len(plans[0]),
                        "padded_tokens": sum(padded_tokens(lengths, p) for p in plans)}
        notes[name] = [n for n in (cfg.model.dtype_note, chosen) if n]
    load_before = os.getloadavg()
    start = time.perf_counter()
    with ProcessPoolExecutor(2, mp_context=get_context("spawn")) as pool:
        port = free_port()
        futures = [pool.submit(_rank, r, port, specs, batch, rounds) for r in range(2)]
        seconds = [f.result(timeout=3600) for f in futures][0]
    baseline = next(iter(VARIANTS))
    kept = {name: times[1:] for name, times in seconds.items()}
    return {
        "config": CONFIG, "variants": VARIANTS, "rounds": rounds, "seconds": seconds, "layout": layout, "notes": notes,
        "median_s": {name: statistics.median(t) for name, t in kept.items()},
        "ratio_to_baseline": {name: statistics.median(b / t for b, t in zip(kept[baseline], kept[name]))
                              for name in kept},
        "samples": len(batch), "response_tokens": sum(map(len, batch.response_ids)), "tokens": sum(lengths),
        "max_length": max(lengths), "load_average": {"before": load_before, "after": os.getloadavg()},
        "wall_s": time.perf_counter() - start,
        "machine": {"cpu": _cpu_model(), "cores": os.cpu_count(), "python": platform.python_version()},
        "command": ".venv/bin/python benchmarks/micro_batching.py" + (f" --rounds {rounds}" if rounds != 8 else ""),
    }


def _cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor()


def ratios(result: dict[str, Any], base: str, name: str) -> list[float]:
    """Per counted round: the time of `base` over the time of `name` (above 1: `name` is faster)."""
    return [b / t for b, t in zip(result["seconds"][base][1:], result["seconds"][name][1:])]


def section(result: dict[str, Any]) -> str:
    """The docs/benchmarks.md section, from the result file alone."""
    base = next(iter(result["variants"]))
    load = result["load_average"]
    rows = ["| variant | micro-batches per rank | padded tokens (both ranks) | train step (median s) | speed vs "
            f"{base} (median, range over rounds) |", "|---|---|---|---|---|"]
    for name, layout in result["layout"].items():
        budget, spread = layout["max_tokens_per_micro_batch"], ratios(result, base, name)
        rows.append(f"| {name} ({layout['dtype']}" + (f", budget {budget}" if budget else "") + f") | "
                    f"{layout['micro_batches_per_rank']} | {layout['padded_tokens']} | {result['median_s'][name]:.2f} | "
                    f"{statistics.median(spread):.2f}x ({min(spread):.2f}-{max(spread):.2f}) |")
    pairs = [(fp32, fp32.replace("fp32", "auto dtype")) for fp32 in result["layout"]
             if fp32.endswith("fp32") and fp32.replace("fp32", "auto dtype") in result["layout"]]
    dtype_line = "; ".join(f"{fp32.removesuffix(', fp32')}: {statistics.median(ratios(result, fp32, bf16)):.2f}x"
                           for fp32, bf16 in pairs)
    notes = sorted({n for ns in result["notes"].values() for n in ns})
    return "\n".join([
        TITLE, "",
        f"`{result['command']}` (written by `--write-docs` from `docs/micro_batching/results.json`). The learner's "
        f"train step alone, on `{result['config']}`'s shape: {result['samples']} samples ({result['tokens']} tokens, "
        f"{result['response_tokens']} of them answer tokens, the longest sample {result['max_length']}), 2 ZeRO-2 "
        f"ranks with one thread each, one optimizer step; every variant once per round in a rotated order, "
        f"{result['rounds'] - 1} rounds counted (the first dropped), medians; ratios are medians of per-round ratios "
        f"(above 1: faster). Machine: {result['machine']['cpu']}, {result['machine']['cores']} cores shared with "
        f"other work: load average {load['before'][0]:.1f} before, {load['after'][0]:.1f} after (1 min), so the "
        f"seconds are noisy and only the ratios side by side mean much.", "",
        *rows, "",
        f"bf16 (`model.dtype: auto` here) against fp32, same micro-batching, per-round ratios: {dtype_line}.", "",
        "What `auto` chose here: " + "; ".join(notes) + ".",
    ])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--write-docs", action="store_true")
    parser.add_argument("--render", action="store_true", help="only re-render the section from the result file")
    args = parser.parse_args(argv)
    if args.render:
        replace_section(section(json.loads(RESULTS.read_text())))
        return 0
    result = measure(args.rounds)
    text = section(result)
    print(json.dumps({k: result[k] for k in ("median_s", "ratio_to_baseline", "layout", "load_average")}, indent=1))
    print(text)
    if args.write_docs:
        publish(RESULTS, result, text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
