"""The baselines of benchmarks/scale.py, each run in a fresh plain process (no Ray, nothing of ours running):
a bare vLLM `LLM.generate` and a plain PyTorch training loop on the same inputs as our actors got.

    python benchmarks/scale_baselines.py vllm|torch <payload.pkl>    (benchmarks/scale.py runs this)
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

WORK = Path(os.environ.get("BENCH_DIR", "/tmp/reasonrl-bench-scale"))


def peak_rss(worker: Any) -> float:
    """VmHWM of the calling process (run inside an actor via __ray_call__), in bytes."""
    status = Path("/proc/self/status").read_text()
    return float(status.split("VmHWM:")[1].split()[0]) * 1024


def run_child(mode: str, payload: dict[str, Any], env: dict[str, str]) -> dict[str, Any]:
    """A baseline in a fresh plain process: `python benchmarks/scale_baselines.py <mode> <payload file>`."""
    import pickle

    WORK.mkdir(parents=True, exist_ok=True)
    path = WORK / f"{mode}.pkl"
    path.write_bytes(pickle.dumps(payload))
    proc = subprocess.run([sys.executable, __file__, mode, str(path)], cwd=ROOT, env={**os.environ, **env},
                          capture_output=True, text=True, timeout=1800)
    if proc.returncode != 0:
        raise RuntimeError(f"{mode} baseline failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def child_vllm(payload: dict[str, Any]) -> dict[str, Any]:
    """Bare LLM.generate with the actor's engine arguments, prompts and sampling parameters."""
    from rollout import vllm_compat as vc

    vc.set_cpu_engine_env(payload["multiprocess"], payload["engine_args"]["tensor_parallel_size"])
    os.environ["OMP_NUM_THREADS"] = str(payload["threads"])  # vLLM then keeps torch's thread count
    import torch
    from vllm import LLM

    torch.set_num_threads(payload["threads"])
    llm = LLM(**payload["engine_args"])
    prompts, r = payload["prompts"], payload["rollout"]
    params = [vc.sampling_params(r["n"], r["temperature"], r["top_p"], r["max_tokens"], seed) for seed in payload["seeds"]]
    llm.generate(vc.token_prompts(prompts[:1]), params[:1], use_tqdm=False)  # warm, as the actor was
    start = time.perf_counter()
    outputs = llm.generate(vc.token_prompts(prompts), params, use_tqdm=False)
    seconds = time.perf_counter() - start
    responses = [list(c.token_ids) for o in outputs for c in o.outputs]
    return {"tokens": sum(map(len, responses)), "seconds": seconds, "responses": responses, "rss": peak_rss(None)}


def child_torch(payload: dict[str, Any]) -> dict[str, Any]:
    """Plain PyTorch: forward, the learner's loss functions, backward, one AdamW step, same batch; the best
    of payload["steps"] such steps."""
    import torch
    from transformers import AutoModelForCausalLM

    from learner import core_algos as algos
    from learner.batching import pad, rank_micro_batches
    from protocol.weight_sync import DTYPES

    torch.set_num_threads(payload["threads"])
    torch.manual_seed(0)
    dtype = DTYPES[payload["dtype"]]
    model = AutoModelForCausalLM.from_pretrained(payload["model_path"], dtype=dtype)
    ref = AutoModelForCausalLM.from_pretrained(payload["model_path"], dtype=dtype).eval() if payload["kl_coef"] else None
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5)
    batch, micro = payload["batch"], payload["micro_batch_size"]
    lengths = [len(p) + len(r) for p, r in zip(batch.prompt_ids, batch.response_ids)]
    # given micro-batches ("parts": our ranks' own, like for like), or by count in batch order (a plain
    # loop), or by our token budget ("max_tokens": sorted, packed)
    parts = payload.get("parts") or rank_micro_batches(list(range(len(batch))), 0, 1, micro, lengths,
                                                       payload.get("max_tokens"))
    pad_id = int(model.config.pad_token_id or model.config.eos_token_id or 0)
    model.train()

    def step() -> float:
        start = time.perf_counter()
        for part in parts:
            pb = pad(batch.select(part), pad_id, torch.device("cpu"))
            logits = model(input_ids=pb.input_ids, attention_mask=pb.attention_mask).logits[:, :-1]
            logprobs = algos.token_logprobs(logits, pb.targets)
            entropy = algos.entropy_from_logits(logits if payload["entropy_coef"] > 0 else logits.detach())
            kl = None
            if ref is not None:
                with torch.no_grad():
                    ref_logits = ref(input_ids=pb.input_ids, attention_mask=pb.attention_mask).logits[:, :-1]
                kl = algos.kl_estimator("k3")(logprobs, algos.token_logprobs(ref_logits, pb.targets))
            per_token, _ = algos.policy_loss(logprobs, pb.old_logprobs, pb.advantages, clip_low=0.2, clip_high=0.2,
                                             kl=kl, kl_coef=payload["kl_coef"], entropy=entropy,
                                             entropy_coef=payload["entropy_coef"])
            ((per_token * pb.mask).sum() / max(float(pb.mask.sum()), 1.0)).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad()
        return time.perf_counter() - start

    return {"seconds": min(step() for _ in range(payload.get("steps", 1))), "rss": peak_rss(None)}


def padded_tokens(batch: Any, ranks: int, micro: int, max_tokens: int | None = None, mini_batches: int = 1) -> int:
    """Tokens the forwards really compute: each rank's micro-batches (learner/batching.py, as our ranks cut
    them: by count, or by token budget) padded to their longest, over the unshuffled mini-batches."""
    from learner.batching import mini_batches as plan, padded_tokens as padded, rank_micro_batches

    lengths = [len(p) + len(r) for p, r in zip(batch.prompt_ids, batch.response_ids)]
    return sum(padded(lengths, rank_micro_batches(indices, rank, ranks, micro, lengths, max_tokens))
               for indices in plan(len(batch), 1, mini_batches, None)[0] for rank in range(ranks))


def our_micro_batches(batch: Any, ranks: int, micro: int, max_tokens: int | None, mini_batches: int,
                      seed: int | None) -> list[list[int]]:
    """Every non-empty micro-batch our ranks compute in the first epoch of `batch` (learner/batching.py,
    as DeepSpeedRank lays it out with this seed), all ranks' one after another."""
    from learner.batching import mini_batches as plan, rank_micro_batches

    lengths = [len(p) + len(r) for p, r in zip(batch.prompt_ids, batch.response_ids)]
    return [m for indices in plan(len(batch), 1, mini_batches, seed)[0] for rank in range(ranks)
            for m in rank_micro_batches(indices, rank, ranks, micro, lengths, max_tokens) if m]


def sorted_by_length(batch: Any) -> Any:
    """The same samples, longest first: consecutive micro-batches then hold similar lengths."""
    from protocol.batch import TrainBatch

    order = sorted(range(len(batch)), key=lambda i: -(len(batch.prompt_ids[i]) + len(batch.response_ids[i])))
    pick = lambda xs: [xs[i] for i in order] if xs else xs  # noqa: E731
    return TrainBatch(pick(batch.prompt_ids), pick(batch.response_ids), pick(batch.old_logprobs),
                      pick(batch.advantages), pick(batch.loss_mask), pick(batch.behaviour_logprobs))


def run_children(payloads: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Plain-PyTorch children at the same time (one per simulated rank); each result as run_child's."""
    import pickle

    WORK.mkdir(parents=True, exist_ok=True)
    procs = []
    for i, payload in enumerate(payloads):
        path = WORK / f"torch-{i}.pkl"
        path.write_bytes(pickle.dumps(payload))
        procs.append(subprocess.Popen([sys.executable, __file__, "torch", str(path)], cwd=ROOT,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    results = []
    for proc in procs:
        out, err = proc.communicate(timeout=1800)
        if proc.returncode != 0:
            raise RuntimeError(f"torch baseline failed:\n{err[-3000:]}")
        results.append(json.loads(out.strip().splitlines()[-1]))
    return results


def main(mode: str, path: str) -> None:
    import pickle

    payload = pickle.loads(Path(path).read_bytes())
    result = child_vllm(payload) if mode == "vllm" else child_torch(payload)
    print(json.dumps(result))



if __name__ == "__main__":
    main(*sys.argv[1:3])
