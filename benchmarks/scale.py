"""Beyond the toy: the configs/cpu_scale.yaml workload (a random 104M Qwen2, 256-token answers) against
its limits, side by side in one run on the same machine:

- generation: tokens/s of one batch inside our rollout actor (the training path: a Ray actor streaming
  finished prompts to the reward pool) vs a bare `LLM.generate` in a plain process with the same
  engine arguments (`RolloutWorker.engine_args`), the same prompts, seeds and sampling parameters and
  the same thread binding (VLLM_CPU_OMP_THREADS_BIND), run after the trainer is closed;
- learner: tokens/s of one train step of our DeepSpeed ranks (the reference forward when kl_coef > 0, then
  the update; the PPO old log-probs, which the plain loop has no counterpart for, are computed before)
  vs a plain PyTorch loop (forward, the same loss functions, backward, one AdamW step; the reference
  forward too) on the same token batch and dtype, with as many threads as our ranks use together, twice:
  as a plain loop cuts it (micro-batches of micro_batch_size in batch order), and like for like (exactly
  the micro-batches our ranks compute, one after another), which separates the gain of our micro-batching
  (less padding) from the cost of our machinery (Ray, DeepSpeed ZeRO, the chunked head);
- weight sync: our end-to-end sync vs vLLM's own reload of the same weights from memory (inside the engine);
- peak memory (VmHWM) of every role's process, and the learner's against cluster/planning/memory_model.py's prediction.

    .venv/bin/python benchmarks/scale.py [--write-docs] [section.key=value ...]

--write-docs writes the result file docs/scale/results.json (the measurements, the config and the machine)
and the "Beyond the toy (cpu_scale)" section of docs/benchmarks.md rendered from it alone (`section`);
tests/test_doc_figures.py checks the two agree.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.doc_sections import publish  # noqa: E402
from benchmarks.scale_baselines import WORK, our_micro_batches, padded_tokens, peak_rss, run_child  # noqa: E402
from protocol.rng import prompt_seed  # noqa: E402

RESULTS = ROOT / "docs" / "scale" / "results.json"
GOAL = 0.9
TRAIN_STEPS = 2  # learner steps timed on each side (the best counts: the first one also allocates Adam's state)


def engine_arguments(worker: Any) -> dict[str, Any]:
    import torch

    return {"kwargs": dict(worker.engine_args), "threads": torch.get_num_threads()}


def vllm_reload_seconds(worker: Any, reps: int) -> float:
    """vLLM's own in-place reload of the engine's checkpoint weights from memory (the floor of any sync).
    Leaves the engine on the checkpoint's weights: the caller re-syncs."""
    from safetensors.torch import load_file

    from protocol.weight_sync import DTYPES

    dtype = DTYPES[worker.spec.dtype]
    for i, file in enumerate(sorted(Path(worker.spec.model_path).glob("*.safetensors"))):
        for j, (name, tensor) in enumerate(load_file(str(file)).items()):
            worker.engine.collective_rpc("stash_weight", args=(name, tensor.to(dtype), i == 0 and j == 0))
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        worker.vc.load_weights(worker.engine, "reload_stashed", True)
        times.append(time.perf_counter() - start)
    return min(times)


def measure_training_path(cfg: Any, reps: int) -> dict[str, Any]:
    """Our actors, as `cluster.train` builds them: one batch generated + scored, one train step, syncs."""
    import ray

    from cluster.planning import memory_model
    from cluster.loop.generation import generate_and_score
    from cluster.loop.trainer import Trainer
    from cluster.infra.metrics import PhaseTimer

    trainer = Trainer(cfg, WORK / "run")
    out: dict[str, Any] = {}
    try:
        trainer.setup()
        r = cfg.rollout
        prompts = trainer.train_data.batch(0, cfg.train.prompts_per_step)
        generate_and_score(trainer.rollouts, trainer.rewards, prompts[:1], 1, 1.0, seed=1)  # warm the engine
        rollout = generate_and_score(trainer.rollouts, trainer.rewards, prompts, r.samples_per_prompt, r.temperature,
                                     seed=cfg.train.seed, resync=None)
        tokens = sum(len(s.response_ids) for s in rollout.samples)
        out["gen_tokens"], out["gen_wall_s"], out["gen_engine_s"] = tokens, rollout.wall_s, sum(rollout.engine_s)
        out["answers"] = len(rollout.samples)
        out["samples"] = [(s.prompt_index, s.prompt_ids, s.response_ids) for s in rollout.samples]
        seed = cfg.train.seed
        batch, _ = trainer.update.build(rollout.samples, seed, PhaseTimer())  # old + reference log-probs, advantages
        out["batch"] = batch
        out["train_tokens"] = sum(len(p) + len(q) for p, q in zip(batch.prompt_ids, batch.response_ids))

        def learner_step() -> None:  # what the plain loop does: the reference forward and the update
            if cfg.algorithm.kl_coef > 0:
                batch.ref_logprobs = trainer.learners.ref_logprobs(batch, seed)
            trainer.learners.train(batch, seed)

        out["train_s"] = min(_timed(learner_step) for _ in range(TRAIN_STEPS))
        out["sync_s"] = min(_timed(trainer.sync.sync) for _ in range(reps))
        actor = trainer.rollouts.actors[0]
        out["rss"] = {  # before the reload reference below, which stashes a copy of the weights in the engine
            "learner": max(ray.get([a.__ray_call__.remote(peak_rss) for a in trainer.learners.actors])),
            "rollout": ray.get(actor.__ray_call__.remote(peak_rss)),
            "reward": max(ray.get([a.__ray_call__.remote(peak_rss) for a in trainer.rewards.actors])),
            "driver": peak_rss(None),
        }
        out["engine_args"] = ray.get(actor.__ray_call__.remote(engine_arguments))
        out["reload_s"] = ray.get(actor.__ray_call__.remote(vllm_reload_seconds, reps))
        trainer.sync.resync(0)
        out["predicted"] = {role.role: role.total for role in memory_model.predict(cfg)}
        out["params"] = trainer.learners.num_params
    finally:
        trainer.close()
    return out


def _timed(fn: Any) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def measure(cfg: Any, reps: int) -> dict[str, Any]:
    ours = measure_training_path(cfg, reps)
    r, l = cfg.rollout, cfg.learner
    by_prompt: dict[int, list[int]] = {}
    for index, prompt_ids, _ in ours["samples"]:
        by_prompt.setdefault(index, prompt_ids)
    indices = sorted(by_prompt)
    # the seeds RolloutWorker._params gives each prompt (worker 0, the batch seed)
    seeds = [prompt_seed(cfg.train.seed, i) for i in indices]
    env = {"TOKENIZERS_PARALLELISM": "false"}
    job = {"engine_args": ours["engine_args"]["kwargs"], "multiprocess": r.multiprocess_engine,
           "prompts": [by_prompt[i] for i in indices], "seeds": seeds, "threads": ours["engine_args"]["threads"],
           "rollout": {"n": r.samples_per_prompt, "temperature": r.temperature, "top_p": r.top_p,
                       "max_tokens": r.max_new_tokens}}
    bare = run_child("vllm", job, env)
    cores = os.cpu_count() or 1
    bare_all = run_child("vllm", {**job, "threads": cores}, env) if cores != job["threads"] else bare
    ours_responses = [resp for _, _, resp in ours["samples"]]
    torch_job = {"model_path": ours["engine_args"]["kwargs"]["model"], "dtype": cfg.model.dtype,
                 "threads": l.num_ranks, "batch": ours["batch"], "micro_batch_size": l.micro_batch_size,
                 "kl_coef": cfg.algorithm.kl_coef, "entropy_coef": cfg.algorithm.entropy_coef,
                 "steps": TRAIN_STEPS, "budget": l.max_tokens_per_micro_batch}
    plain = run_child("torch", torch_job, {})
    ours_parts = our_micro_batches(ours["batch"], l.num_ranks, l.micro_batch_size, l.max_tokens_per_micro_batch,
                                   cfg.algorithm.ppo_mini_batches, cfg.train.seed)
    plain_same = run_child("torch", {**torch_job, "parts": ours_parts}, {})
    return {"ours": {k: v for k, v in ours.items() if k not in ("samples", "batch")}, "bare": bare, "plain": plain,
            "plain_same": plain_same,
            "bare_all_cores": bare_all, "same_completions": bare["responses"] == ours_responses,
            "padding_waste": padded_tokens(ours["batch"], l.num_ranks, l.micro_batch_size, l.max_tokens_per_micro_batch,
                                           cfg.algorithm.ppo_mini_batches) / ours["train_tokens"] - 1,
            "padding_waste_plain": padded_tokens(ours["batch"], 1, l.micro_batch_size) / ours["train_tokens"] - 1}


def section(result: dict[str, Any]) -> str:
    """The "Beyond the toy (cpu_scale)" section of docs/benchmarks.md, from the result file alone."""
    from cluster.config import load_config

    cfg = load_config(str(ROOT / result["config"]), result["overrides"])
    m, cores = result["measure"], result["cores"]
    o, bare, plain = m["ours"], m["bare"], m["plain"]
    gen_ours, gen_bare = o["gen_tokens"] / o["gen_wall_s"], bare["tokens"] / bare["seconds"]
    engine_ours = o["gen_tokens"] / max(o["gen_engine_s"], 1e-9)
    train_ours, train_plain = o["train_tokens"] / o["train_s"], o["train_tokens"] / plain["seconds"]
    train_same = o["train_tokens"] / m["plain_same"]["seconds"]
    learner_role = next(k for k in o["predicted"] if k.startswith("learner"))
    predicted, measured = o["predicted"][learner_role], o["rss"]["learner"]
    gib = 2**30
    r, l = cfg.rollout, cfg.learner
    threads = o["engine_args"]["threads"]
    micro_batching = (f"micro-batches within {l.max_tokens_per_micro_batch} padded tokens, sorted by length"
                      if l.max_tokens_per_micro_batch else f"micro-batches of {l.micro_batch_size}")
    rows = [
        ("generation tokens/s (one batch)", f"{gen_ours:,.0f} (engine busy: {engine_ours:,.0f})",
         f"{gen_bare:,.0f} (bare LLM.generate, {threads} thread{'s' * (threads > 1)})", gen_ours / gen_bare, f">= {GOAL}"),
        ("learner training tokens/s (one step)", f"{train_ours:,.0f}", f"{train_plain:,.0f} (plain PyTorch, "
         f"{l.num_ranks} threads, micro-batches of {l.micro_batch_size} in batch order)", train_ours / train_plain,
         f">= {GOAL}"),
        ("learner, like for like", f"{train_ours:,.0f}", f"{train_same:,.0f} (plain PyTorch, {l.num_ranks} threads, "
         "our ranks' micro-batches)", train_ours / train_same, f">= {GOAL}"),
        ("weight sync (s)", f"{o['sync_s']:.3f}", f"{o['reload_s']:.3f} (vLLM reload from memory)",
         o["sync_s"] / o["reload_s"], "<= 1.5"),
        ("learner peak RSS (GiB) vs prediction", f"{measured / gib:.2f} measured",
         f"{predicted / gib:.2f} (cluster.memory)", predicted / measured, "0.7-1.3"),
    ]
    table = ["| measure | ours | limit / reference | ratio | goal |", "|---|---|---|---|---|"]
    table += [f"| {a} | {b} | {c} | {ratio:.2f} | {goal} |" for a, b, c, ratio, goal in rows]
    rss = ", ".join(f"{role} {v / gib:.2f} GiB" for role, v in o["rss"].items())
    rollout_role = next(k for k in o["predicted"] if k.startswith("rollout"))
    rss += f" (cluster.memory predicts the rollout engine at {o['predicted'][rollout_role] / gib:.2f} GiB)"
    return "\n".join([
        "## Beyond the toy (cpu_scale)",
        "",
        f"`configs/cpu_scale.yaml`: a random {o['params'] / 1e6:.0f}M-parameter Qwen2 ({cfg.model.dtype}), "
        f"{cfg.train.prompts_per_step} prompts x {r.samples_per_prompt} samples, up to {r.max_new_tokens} new tokens, "
        f"{l.num_ranks} DeepSpeed ZeRO-{l.zero_stage} ranks ({micro_batching}, gradient checkpointing "
        f"{'on' if l.gradient_checkpointing else 'off'}), "
        f"kl_coef {cfg.algorithm.kl_coef:g}. One run, side by side: our actors as `cluster.train` builds them, then "
        "each baseline in a plain process on the same machine with nothing else of ours running.",
        "",
        *table,
        "",
        f"- generation: {o['gen_tokens']:,} tokens; ours is timed at the driver from submission to the last "
        "verdict (streaming and scoring included); bare is `LLM.generate` with the actor's own engine arguments, "
        f"prompts, seeds, sampling parameters and torch threads (same completions: {m['same_completions']}); "
        f"the same bare run with all {cores} cores: "
        f"{m['bare_all_cores']['tokens'] / m['bare_all_cores']['seconds']:,.0f} tokens/s. Mean answer "
        f"{o['gen_tokens'] / o['answers']:.0f} tokens (a random model stops at its EOS token now and then).",
        f"- learner: {o['train_tokens']:,} tokens (prompt + response) per optimizer step, best of {TRAIN_STEPS} "
        "steps on each side (ours: the reference forward and the update, as the plain loop; the PPO old log-probs "
        "are computed before, untimed); padding waste (padded tokens computed beyond the real ones): ours "
        f"{m['padding_waste']:.0%} ({micro_batching}), the plain loop {m['padding_waste_plain']:.0%} (micro-batches of "
        f"{l.micro_batch_size} in batch order). The first learner row is what a user gains over a plain loop, and "
        "it comes mostly from computing less padding; the like-for-like row runs the plain loop on exactly our "
        "ranks' micro-batches (the same padding), so it prices our machinery (Ray, DeepSpeed ZeRO's gradient reduce "
        "and partitioned optimizer; our head runs on response positions only, in chunks recomputed in backward, the "
        "plain loop's on every position). Where the time goes: next section.",
        f"- peak RSS (VmHWM) per process: {rss}; bare vLLM process {bare['rss'] / gib:.2f} GiB, plain PyTorch "
        f"{plain['rss'] / gib:.2f} GiB.",
        "",
        f"Machine: {result['machine']}, {cores} cores; load average (1 min) at the end {result['load_end']:.1f} "
        f"(shared machine); measured {result['measured']}. Benchmark wall time {result['wall_s']:.0f} s. "
        "Result file: docs/scale/results.json.",
        "",
        "```",
        result["command"],
        "```",
    ]) + "\n"


def without_responses(result: dict[str, Any]) -> dict[str, Any]:
    """The measurements without the bare runs' token ids (compared already: `same_completions`)."""
    return {k: ({**v, "responses": None} if isinstance(v, dict) and "responses" in v else v) for k, v in result.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=str(ROOT / "configs" / "cpu_scale.yaml"))
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--write-docs", action="store_true")
    parser.add_argument("--learner-profile", action="store_true",
                        help="profile the plain learner loop on the last main run's batch (no Ray)")
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args(argv)
    if args.learner_profile:
        from benchmarks import learner_profile

        document = learner_profile.measure()
        text = learner_profile.section(document)
        print(text)
        if args.write_docs:
            publish(learner_profile.RESULTS, document, text)
        return 0
    from cluster.config import load_config

    cfg = load_config(args.config, args.overrides)
    start = time.perf_counter()
    result = measure(cfg, args.reps)
    command = ".venv/bin/python benchmarks/scale.py" + (" --write-docs" if args.write_docs else "") + \
        "".join(f" {o}" for o in args.overrides)
    WORK.mkdir(parents=True, exist_ok=True)
    (WORK / "result.json").write_text(json.dumps(result, indent=1, default=str))
    config = Path(args.config).resolve()
    document = {"config": str(config.relative_to(ROOT)) if config.is_relative_to(ROOT) else str(config),
                "overrides": args.overrides, "command": command, "wall_s": time.perf_counter() - start,
                "machine": platform.machine(), "cores": os.cpu_count(), "load_end": os.getloadavg()[0],
                "measured": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                "measure": json.loads(json.dumps(without_responses(result), default=str))}  # as the file reads back
    text = section(document)
    print(text)
    if args.write_docs:
        publish(RESULTS, document, text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
