"""A step-time model for planning clusters, calibrated from a sweep's measured per-phase costs.

Synchronous step time = generation + training + weight sync (reward scoring overlaps generation):
  t_gen   = samples * response_tokens / (rollout_units * decode_tokens_per_s_per_unit)
  t_train = 6 * params * (prompt + response tokens) * samples / (learner_units * train_flops_per_unit)
            (forward + backward; x 4/3 more with a reference-model forward for the KL loss)
  t_sync  = weight_bytes / link_bytes_per_s + weight_bytes / reload_bytes_per_s
Assumptions (documented in docs/cluster.md): decode throughput per unit is flat in batch size
beyond the calibrated point (true once the engine is compute-bound); learner throughput scales
linearly in data-parallel ranks (no communication term: ZeRO overlaps it at these sizes); the sync
is one broadcast from learner rank 0, so it does not shrink with more rollout workers.

    python -m cluster.cost_model --sweep docs/sweep/sweep.csv           # calibrate, print fit
    python -m cluster.cost_model --preset qwen7b-h100                   # predict the 7B reproduction
"""
from __future__ import annotations

import argparse
import csv
import statistics
from dataclasses import asdict, dataclass


@dataclass
class Hardware:
    decode_tokens_per_s: float  # per rollout unit (GPU or CPU worker)
    train_flops: float  # achieved FLOP/s per learner unit
    link_bytes_per_s: float  # learner rank 0 -> rollout workers
    reload_bytes_per_s: float  # engine-side weight load


@dataclass
class Workload:
    params: float
    prompts: int
    samples_per_prompt: int
    prompt_tokens: float
    response_tokens: float
    weight_bytes: float
    reference_model: bool = False


def predict(w: Workload, hw: Hardware, rollout_units: float, learner_units: float) -> dict[str, float]:
    samples = w.prompts * w.samples_per_prompt
    t_gen = samples * w.response_tokens / (rollout_units * hw.decode_tokens_per_s)
    flops = 6 * w.params * (w.prompt_tokens + w.response_tokens) * samples * (4 / 3 if w.reference_model else 1)
    t_train = flops / (learner_units * hw.train_flops)
    t_sync = w.weight_bytes / hw.link_bytes_per_s + w.weight_bytes / hw.reload_bytes_per_s
    return {"generate_s": t_gen, "train_s": t_train, "sync_s": t_sync, "step_s": t_gen + t_train + t_sync}


def calibrate(rows: list[dict[str, str]], params: float, prompt_tokens: float, response_tokens: float,
              samples_per_prompt: int, rollout_units: float, weight_bytes: float) -> Hardware:
    """Per-unit constants from a sweep CSV (columns of cluster.sweep), medians over its points."""
    decode, train = [], []
    for r in rows:
        samples = float(r["train.prompts_per_step"]) * samples_per_prompt
        generate_s = float(r.get("wait_rollout_s") or r["generate_and_score_s"])  # the latter: sweeps before async mode
        decode.append(float(r["gen_tokens_per_s"]) * float(r["step_s"]) / generate_s / rollout_units)
        learner_units = float(r["resource_units"]) - rollout_units
        train.append(6 * params * (prompt_tokens + response_tokens) * samples / float(r["train_s"]) / learner_units)
    sync = statistics.median(float(r["sync_s"]) for r in rows)
    return Hardware(statistics.median(decode), statistics.median(train), weight_bytes / max(sync / 2, 1e-9),
                    weight_bytes / max(sync / 2, 1e-9))


# Public figures, not measured here: H100 SXM bf16 dense peak 989 TFLOP/s, assumed 35% MFU in
# ZeRO-3 training; vLLM 7B decode at large batch assumed 2,500 tokens/s per GPU for long responses;
# NVLink/NCCL broadcast ~100 GB/s effective inside a node; in-place reload ~10 GB/s.
PRESETS = {
    "qwen7b-h100": (
        Workload(params=7.6e9, prompts=128, samples_per_prompt=8, prompt_tokens=200, response_tokens=1200,
                 weight_bytes=7.6e9 * 2, reference_model=True),
        Hardware(decode_tokens_per_s=2500, train_flops=989e12 * 0.35, link_bytes_per_s=100e9, reload_bytes_per_s=10e9),
        [(4, 4), (8, 8), (12, 4), (16, 16)],
    ),
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m cluster.cost_model", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sweep", help="sweep.csv to calibrate from (the tiny CPU model)")
    parser.add_argument("--preset", choices=sorted(PRESETS), help="predict a named workload on named hardware")
    args = parser.parse_args(argv)
    if args.sweep:
        with open(args.sweep) as f:
            rows = list(csv.DictReader(f))
        tiny = Workload(params=3.3e6, prompts=0, samples_per_prompt=8, prompt_tokens=14, response_tokens=26,
                        weight_bytes=13.2e6)
        hw = calibrate(rows, tiny.params, tiny.prompt_tokens, tiny.response_tokens, 8, 1, tiny.weight_bytes)
        print("calibrated (per unit):", {k: f"{v:.3g}" for k, v in asdict(hw).items()})
        for r in rows:
            units = float(r["resource_units"])
            tiny.prompts = int(r["train.prompts_per_step"])
            got = predict(tiny, hw, 1, units - 1)["step_s"]
            print(f"  point {r['train.prompts_per_step']:>3} prompts, {units:g} units: measured "
                  f"{float(r['step_s']):.2f}s predicted {got:.2f}s")
    if args.preset:
        workload, hw, splits = PRESETS[args.preset]
        for rollout, learner in splits:
            p = predict(workload, hw, rollout, learner)
            print(f"{args.preset}: {rollout} rollout GPUs + {learner} learner GPUs -> " +
                  ", ".join(f"{k} {v:.1f}" for k, v in p.items()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
