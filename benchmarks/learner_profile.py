"""Where the learner's time goes, on the batch of the last `benchmarks/scale.py` run: the plain PyTorch loop
of scale.py's main table in variants (threads split as our ranks split them, the other dtype, other
micro-batch sizes, no reference forward, sorted, our token budget), one at a time, each in a fresh process.

    .venv/bin/python benchmarks/scale.py --learner-profile --write-docs

--write-docs writes the result file docs/scale/learner_profile.json and renders docs/benchmarks.md's
"Beyond the toy: learner profile" from it (tests/test_doc_figures.py re-renders it from the file).
"""
from __future__ import annotations

import json
import os
import pickle
import time
from pathlib import Path
from typing import Any

from benchmarks.scale_baselines import WORK, padded_tokens, run_children, sorted_by_length

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "docs" / "scale" / "learner_profile.json"
TITLE = "## Beyond the toy: learner profile"
COMMAND = ".venv/bin/python benchmarks/scale.py --learner-profile --write-docs"


def measure() -> dict[str, Any]:
    """Time each variant on WORK/torch.pkl (the last scale.py run's batch); padding of each micro-batch plan."""
    base = {**pickle.loads((WORK / "torch.pkl").read_bytes()), "steps": 1}
    base.pop("parts", None)  # the main run's last plain job was the like-for-like one: start from the plain loop
    batch, micro, threads = base["batch"], base["micro_batch_size"], base["threads"]
    other = "float32" if base["dtype"] == "bfloat16" else "bfloat16"
    budget = base.get("budget")
    variants = {
        "base": [base],
        "ranks": [{**base, "threads": 1, "batch": batch.select(list(range(r, len(batch), threads)))}
                  for r in range(threads)],
        "dtype": [{**base, "dtype": other}],
        "half": [{**base, "micro_batch_size": max(1, micro // 2)}],
        "double": [{**base, "micro_batch_size": micro * 2}],
        "no_ref": [{**base, "kl_coef": 0.0}],
        "sorted": [{**base, "batch": sorted_by_length(batch)}],
    }
    if budget:
        variants["budget"] = [{**base, "max_tokens": budget}]
    timings = {}
    for key, payloads in variants.items():
        results = run_children(payloads)
        timings[key] = {"seconds": max(r["seconds"] for r in results), "rss_gib": sum(r["rss"] for r in results) / 2**30}
        print(key, timings[key], flush=True)
    micros = (max(1, micro // 2), micro, micro * 2)
    main = json.loads((WORK / "result.json").read_text())["ours"] if (WORK / "result.json").is_file() else None
    return {
        "sequences": len(batch), "real_tokens": sum(len(p) + len(r) for p, r in zip(batch.prompt_ids, batch.response_ids)),
        "dtype": base["dtype"], "other_dtype": other, "threads": threads, "micro_batch_size": micro, "budget": budget,
        "timings": timings,
        "padded": {"by_count": {str(m): padded_tokens(batch, 1, m) for m in micros},
                   "sorted": padded_tokens(sorted_by_length(batch), 1, micro),
                   "budget_one_rank": padded_tokens(batch, 1, micro, budget) if budget else None,
                   "ours": padded_tokens(batch, threads, micro, budget)},
        "main_train_s": main["train_s"] if main else None,
        "cores": os.cpu_count(), "load_end": os.getloadavg()[0],
        "measured": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }


def section(doc: dict[str, Any]) -> str:
    t = {key: v["seconds"] for key, v in doc["timings"].items()}
    micro, real, threads, budget = doc["micro_batch_size"], doc["real_tokens"], doc["threads"], doc["budget"]
    dtype, other, padded = doc["dtype"], doc["other_dtype"], doc["padded"]
    names = {
        "base": f"1 process x {threads} threads, {dtype}, micro-batch {micro} in batch order (the main table's baseline)",
        "ranks": f"{threads} processes x 1 thread, each its shard (our ranks' layout, without DeepSpeed)",
        "dtype": f"{other} weights and activations", "half": f"micro-batch {max(1, micro // 2)}",
        "double": f"micro-batch {micro * 2}", "no_ref": "no reference forward (kl_coef 0)",
        "sorted": "sequences sorted by length before the micro-batch split (less padding)",
        "budget": f"micro-batches by our token budget ({budget} padded tokens, sorted by length)",
    }
    rows = ["| plain PyTorch variant (same batch, one optimizer step) | seconds | tokens/s | peak RSS GiB |", "|---|---|---|---|"]
    rows += [f"| {names[key]} | {t[key]:.1f} | {real / t[key]:,.0f} | {v['rss_gib']:.2f} |" for key, v in doc["timings"].items()]
    waste = {m: n / real - 1 for m, n in padded["by_count"].items()}
    ordered, ours = padded["sorted"] / real - 1, padded["ours"] / real - 1
    findings = [
        f"- The reference model's forward (KL loss) is {1 - t['no_ref'] / t['base']:.0%} of the step.",
        f"- {other}: {t['base'] / t['dtype']:.2f}x the speed of {dtype}.",
        f"- Threads: {threads} processes x 1 thread take {t['ranks'] / t['base']:.2f}x the time of 1 process x {threads} threads.",
        f"- Padding: the plain loop's micro-batches of {micro} in batch order compute {waste[str(micro)]:.0%} more tokens "
        f"than the real ones; sorted by length first {ordered:.0%} (step {t['sorted'] / t['base']:.2f}x)"
        + (f"; by our token budget {padded['budget_one_rank'] / real - 1:.0%} (step {t['budget'] / t['base']:.2f}x)."
           if budget else "."),
        f"- Micro-batch {max(1, micro // 2)} / {micro * 2}: {t['half'] / t['base']:.2f}x / {t['double'] / t['base']:.2f}x "
        "the time; larger micro-batches pad more and hold more activations.",
    ]
    if doc["main_train_s"]:
        like, what = ("budget", "the plain loop with our token-budget micro-batches") if budget else \
            ("ranks", "the same layout without DeepSpeed")
        findings.append(f"- Our learner's step in the main run took {doc['main_train_s']:.1f} s: "
                        f"{doc['main_train_s'] / t[like]:.2f}x {what} (the rest: ZeRO's gradient reduce over gloo after "
                        "every micro-batch, its bucket copies, the optimizer on the partition).")
    ranks = f"token budget {budget}, sorted by length" if budget else f"each its interleaved shard, micro-batch {micro}"
    return "\n".join([
        TITLE, "",
        f"The batch of the last `benchmarks/scale.py` run ({doc['sequences']} sequences, {real:,} tokens), trained by the "
        "plain PyTorch loop of the main table in variants, one at a time, each in a fresh process.", "",
        *rows, "", *findings, "",
        "Padding waste (padded tokens computed / real tokens - 1): "
        + ", ".join(f"micro-batch {m}: {w:.0%}" for m, w in waste.items())
        + f"; sorted by length, micro-batch {micro}: {ordered:.0%}; our {threads} ranks ({ranks}): {ours:.0%}.", "",
        f"Machine: {doc['cores']} cores; load average (1 min) at the end {doc['load_end']:.1f} (shared machine); measured "
        f"{doc['measured']}. Result file: docs/scale/learner_profile.json.", "",
        "```", COMMAND, "```",
    ]) + "\n"
