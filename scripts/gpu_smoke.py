"""GPU smoke test: does the GPU path work on this machine, in minutes? Run through scripts/gpu_smoke.sh.

Reduced mode (torch + DeepSpeed only: no vLLM, no Ray), with the project's own learner code
(learner.worker.LearnerWorker) in spawned processes:
  1. a ~1B random Qwen2 built locally; 3 ZeRO-3 bf16 policy steps (loss and grad norm finite, grad
     norm > 0, the responses' mean logprob moves: the weights changed);
  2. weights to a stand-in receiver process (what a rollout worker does, without vLLM: the engine
     side of the same protocol/transports/ modules) over the broadcast group (NCCL: needs a second
     GPU for the receiver; gloo with --device cpu) and over CUDA IPC on the learner's GPU; the
     receiver fingerprints what arrived, which must equal the learner's weights bit for bit; sync times;
  3. peak memory of Qwen2.5-7B-shaped models of 1 and 2 layers (one ZeRO-3 bf16 step of 2048 tokens),
     the per-layer increment and its linear extrapolation to 28 layers on one rank.
Full mode (scripts/gpu_smoke_full.py; needs vLLM and Ray as well): the reduced checks, then the
colocated path (vLLM engine on the learner's GPU, weights over IPC) for 3 GRPO steps with the
engine-vs-learner logprob check, and the disaggregated broadcast path where two GPUs exist.

`--device cpu` runs the reduced mode's Python on CPU (gloo, small shapes, no IPC): the script is
known to work up to the GPU-only calls (tests/test_gpu_smoke.py). Writes <out>/report.json; exit 1
when a check fails.
"""
from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import platform
import resource
import sys
import time
import traceback
from dataclasses import replace
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from cluster.config import load_config  # noqa: E402
from cluster.loop.specs import learner_spec  # noqa: E402  (no Ray: the driver's own spec builder)
from learner.worker import LearnerSpec, LearnerWorker  # noqa: E402
from protocol.batch import TrainBatch  # noqa: E402
from protocol import transports as weight_transports  # noqa: E402
from protocol.endpoints import free_port  # noqa: E402
from protocol.weight_sync import DTYPES, TensorMeta, build_manifest  # noqa: E402

# ~0.9B parameters with a 32k vocabulary; Qwen2.5-7B's layer shapes (its config.json); CPU: tiny, same code.
SHAPES = {
    "1b": {"hidden_size": 2048, "intermediate_size": 5632, "num_hidden_layers": 20, "num_attention_heads": 16,
           "num_key_value_heads": 8, "vocab_size": 32000},
    "7b_layer": {"hidden_size": 3584, "intermediate_size": 18944, "num_attention_heads": 28, "num_key_value_heads": 4,
                 "vocab_size": 152064},
    "cpu": {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
            "num_key_value_heads": 2, "vocab_size": 512},
    "cpu_layer": {"hidden_size": 128, "intermediate_size": 256, "num_attention_heads": 4, "num_key_value_heads": 2,
                  "vocab_size": 1024},
}
TIMEOUT_S = 300.0


def build_model(out: Path, shape: dict[str, int], layers: int | None = None, device: str = "cpu") -> tuple[str, int]:
    """A random bf16 Qwen2 of `shape` saved in Hugging Face format; returns (path, parameters)."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    shape = {**shape, **({"num_hidden_layers": layers} if layers else {})}
    config = Qwen2Config(**shape, head_dim=shape["hidden_size"] // shape["num_attention_heads"],
                         max_position_embeddings=4096, tie_word_embeddings=False, bos_token_id=0, eos_token_id=0,
                         pad_token_id=0, torch_dtype="bfloat16")
    torch.manual_seed(0)
    with torch.device(device):
        model = Qwen2ForCausalLM(config).to(torch.bfloat16)
    model.save_pretrained(out)
    params = sum(p.numel() for p in model.parameters())
    del model
    if device == "cuda":
        torch.cuda.empty_cache()  # the learner processes need the GPU memory this process used
    return str(out), params


def peak_memory_gib() -> float:
    """This process's peak: CUDA allocations on a GPU, resident set size on CPU."""
    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux


def fingerprint(tensor: torch.Tensor) -> tuple[int, int]:
    """Two exact integer sums over the tensor's bytes (plain and position-weighted), in slices: equal
    fingerprints on both sides of a transport mean the bytes arrived (bar a deliberate collision)."""
    words = tensor.detach().contiguous().view(-1).view(torch.uint8)
    plain = weighted = 0
    for start in range(0, words.numel(), 1 << 24):
        chunk = words[start: start + (1 << 24)].to(torch.int64)
        weight = torch.arange(start, start + chunk.numel(), device=chunk.device, dtype=torch.int64) % 1021 + 1
        plain += int(chunk.sum())
        weighted += int((chunk * weight).sum())
    return plain, weighted


class SmokeLearner(LearnerWorker):
    """The project's learner rank, plus what the smoke test reads from it."""

    def fingerprints(self, buckets: list[list[tuple]], dtype: str) -> dict[str, tuple[int, int]] | None:
        """Every weight as the transports send it (gathered, cast to `dtype`); rank 0 answers."""
        out = {}
        for metas, values in self._bucket_values([[TensorMeta(*m) for m in bucket] for bucket in buckets]):
            out.update({m.name: fingerprint(v.to(DTYPES[dtype])) for m, v in zip(metas, values)})
        return out if self.rank == 0 else None

    def peak_memory(self) -> float:
        return peak_memory_gib()


class StandInReceiver:
    """Stands in for a rollout engine on the receiving side of a transport: it opens the engine side of
    the same transport module (protocol/transports/) that every vLLM worker opens, and fingerprints
    what arrives instead of reloading it into vLLM."""

    def __init__(self, device: str) -> None:
        self.device = torch.device("cuda", 0) if device == "gpu" else torch.device("cpu")
        self.transport: weight_transports.Transport | None = None

    def open(self, name: str, setup: dict[str, Any], rank: int) -> None:
        self.transport = weight_transports.get(name)(weight_transports.SyncSetup.from_dict(setup))
        self.transport.open_receiver(rank, self.device)

    def receive(self, version: int, payload: Any) -> tuple[float, dict[str, tuple[int, int]]]:
        start = time.perf_counter()
        out = {name: fingerprint(t) for name, t in self.transport.receive(version, payload)}
        self.transport.finish(version)
        return time.perf_counter() - start, out

    def peak_memory(self) -> float:
        return peak_memory_gib()


def _serve(conn: Any, cls: type, args: tuple) -> None:
    try:
        obj = cls(*args)
        conn.send(("ok", None))
    except Exception:  # noqa: BLE001  (reported to the parent, which names the process)
        conn.send(("error", traceback.format_exc()))
        return
    while (message := conn.recv()) is not None:
        method, margs = message
        try:
            conn.send(("ok", getattr(obj, method)(*margs)))
        except Exception:  # noqa: BLE001
            conn.send(("error", traceback.format_exc()))


class Hosted:
    """An object living in its own spawned process (like a Ray actor, without Ray); `env` is applied
    to that process only (e.g. which GPU it sees)."""

    def __init__(self, name: str, cls: type, args: tuple, env: dict[str, str]) -> None:
        ctx = mp.get_context("spawn")
        self.name, (self.conn, child) = name, ctx.Pipe()
        saved = {k: os.environ.get(k) for k in env}
        os.environ.update(env)
        try:
            self.proc = ctx.Process(target=_serve, args=(child, cls, args), daemon=True)
            self.proc.start()
        finally:
            for k, v in saved.items():
                os.environ.pop(k) if v is None else os.environ.__setitem__(k, v)
        self.result()

    def submit(self, method: str, *args: Any) -> "Hosted":
        self.conn.send((method, args))
        return self

    def result(self, timeout_s: float = TIMEOUT_S) -> Any:
        if not self.conn.poll(timeout_s):
            raise TimeoutError(f"{self.name} did not answer within {timeout_s:g}s")
        status, value = self.conn.recv()
        if status == "error":
            raise RuntimeError(f"{self.name} failed:\n{value}")
        return value

    def call(self, method: str, *args: Any) -> Any:
        return self.submit(method, *args).result()

    def close(self) -> None:
        try:
            self.conn.send(None)
        except OSError:
            pass
        self.proc.join(10)
        if self.proc.is_alive():
            self.proc.kill()


def call_all(hosts: list[Hosted], method: str, *args: Any) -> list[Any]:
    """Every host at once (ZeRO collectives need every rank), then every result."""
    return [h.result() for h in [h.submit(method, *args) for h in hosts]]


def random_batch(vocab: int, n: int, prompt: int, response: int) -> TrainBatch:
    g = torch.Generator().manual_seed(1)
    ids = lambda k: torch.randint(1, vocab, (k,), generator=g).tolist()  # noqa: E731
    responses = [ids(response) for _ in range(n)]
    advantages = torch.randn(n, generator=g).tolist()
    return TrainBatch([ids(prompt) for _ in range(n)], responses, [], advantages, [[1.0] * response for _ in range(n)])


def start_learners(spec: LearnerSpec, world: int, device: str) -> list[Hosted]:
    env = lambda r: {"CUDA_VISIBLE_DEVICES": str(r)} if device == "gpu" else {"DS_ACCELERATOR": "cpu"}  # noqa: E731
    ranks = [Hosted(f"learner[{r}]", SmokeLearner, (r, world, spec), env(r)) for r in range(world)]
    call_all(ranks, "setup", "127.0.0.1", free_port())
    return ranks


def learner_steps(ranks: list[Hosted], batch: TrainBatch, steps: int) -> list[dict[str, float]]:
    """`steps` on-policy GRPO-style steps on a fixed batch, as the trainer runs them: the learner's own
    old log-probs (in the micro-batches the step trains on), then the update (one optimizer step).
    `mean_logprob` (of the batch's responses before each step) moves when the steps change the weights."""
    out = []
    for step in range(steps):
        per_rank = call_all(ranks, "old_logprobs", batch, step)
        scored = dict(pair for rank in per_rank for pair in rank)  # sample index -> log-probs
        batch.old_logprobs = [scored[i] for i in range(len(batch))]
        tokens = [lp for row in batch.old_logprobs for lp in row]
        start = time.perf_counter()
        sums = call_all(ranks, "train_step", batch, step)
        out.append({"loss": sum(s["loss"] for s in sums), "grad_norm": sums[0]["grad_norm"],
                    "optimizer_steps": sums[0]["optimizer_steps"], "mean_logprob": sum(tokens) / len(tokens),
                    "seconds": time.perf_counter() - start})
    return out


def transports(ranks: list[Hosted], device: str, gpus: int, report: dict[str, Any]) -> None:
    """Weights from learner rank 0 to stand-in receivers over each transport this machine has."""
    layout = ranks[0].call("weight_layout")
    manifest = build_manifest(layout, torch.bfloat16, 1, "broadcast")
    buckets = manifest.bucket_rows(256 * 2**20)
    expected = call_all(ranks, "fingerprints", buckets, "bfloat16")[0]
    sync: dict[str, Any] = {"bytes": manifest.total_bytes}
    report["sync"], peaks = sync, report["peak_memory_gib"]
    setup = weight_transports.SyncSetup(buckets, manifest.total_bytes, TIMEOUT_S, device=device)
    if device == "cpu" or gpus >= 2:  # NCCL refuses two ranks on one GPU: the receiver takes GPU 1
        receiver = Hosted("broadcast receiver", StandInReceiver, (device,),
                          {"CUDA_VISIBLE_DEVICES": "1"} if device == "gpu" else {})
        try:
            backend = "gloo" if device == "cpu" else "nccl"
            group = replace(setup, host="127.0.0.1", port=free_port(), world_size=2, rank_names=["learner[0]", "receiver"])
            receiver.submit("open", "broadcast", group.as_dict(), 1)
            call_all(ranks, "open_weight_transport", "smoke", "broadcast", group.as_dict())
            receiver.result()
            start = time.perf_counter()
            receiver.submit("receive", 1, None)
            call_all(ranks, "export_weights", "smoke", 1)
            seconds, got = receiver.result()
            sync["broadcast"] = {"backend": backend, "seconds": time.perf_counter() - start, "receiver_seconds": seconds,
                                 "gbit_s": manifest.total_bytes * 8 / 1e9 / max(seconds, 1e-9), "exact": got == expected}
            peaks["broadcast_receiver"] = receiver.call("peak_memory")
        finally:
            receiver.close()
    else:
        sync["broadcast"] = {"skipped": "NCCL needs a second GPU for the receiver"}
    if device != "gpu":
        sync["ipc"] = {"skipped": "CUDA IPC needs a GPU"}
        return
    receiver = Hosted("ipc receiver", StandInReceiver, (device,), {"CUDA_VISIBLE_DEVICES": "0"})  # the learner's GPU
    try:
        call_all(ranks, "open_weight_transport", "smoke", "ipc", setup.as_dict())
        receiver.call("open", "ipc", setup.as_dict(), 1)
        start = time.perf_counter()
        payload = weight_transports.get("ipc").merge_payloads([p for _, p in call_all(ranks, "export_weights", "smoke", 1)])
        exported = time.perf_counter() - start
        seconds, got = receiver.call("receive", 1, payload)
        sync["ipc"] = {"export_seconds": exported, "receiver_seconds": seconds, "exact": got == expected}
        peaks["ipc_receiver"] = receiver.call("peak_memory")
    finally:
        receiver.close()


def layer_memory(spec: LearnerSpec, device: str, work: Path, report: dict[str, Any]) -> None:
    """Peak memory of one ZeRO-3 bf16 step on 7B-shaped models of 1 and 2 layers (one rank each)."""
    shape = SHAPES["7b_layer" if device == "gpu" else "cpu_layer"]
    tokens = 2048 if device == "gpu" else 128
    peaks = []
    for layers in (1, 2):
        path, params = build_model(work / f"layers{layers}", shape, layers, "cuda" if device == "gpu" else "cpu")
        ranks = start_learners(replace(spec, model_path=path, micro_batch_size=1), 1, device)
        try:
            learner_steps(ranks, random_batch(shape["vocab_size"], 1, tokens // 4, tokens - tokens // 4), 1)
            peaks.append({"layers": layers, "parameters": params, "peak_gib": ranks[0].call("peak_memory")})
        finally:
            for r in ranks:
                r.close()
    per_layer = peaks[1]["peak_gib"] - peaks[0]["peak_gib"]
    report["layers_7b_shaped"] = {"shape": shape, "tokens": tokens, "runs": peaks, "per_layer_gib": per_layer,
                                  "extrapolated_28_layers_gib": peaks[0]["peak_gib"] + 27 * per_layer}


def smoke_spec(model_path: str, device: str) -> LearnerSpec:
    """The learner ranks' spec, built from the project's config as a run builds it (defaults elsewhere)."""
    cfg = load_config(None, [f"cluster.device={device}", "model.dtype=bfloat16", "learner.zero_stage=3",
                             "learner.lr=1e-4", "learner.micro_batch_size=4", f"learner.collective_timeout_s={TIMEOUT_S:g}"])
    return learner_spec(cfg, model_path)


def reduced(args: argparse.Namespace, report: dict[str, Any]) -> dict[str, bool]:
    device, work = args.device, Path(args.out) / "work"
    gpus = torch.cuda.device_count() if device == "gpu" else 0
    t = time.perf_counter()
    path, params = build_model(work / "model", SHAPES["1b" if device == "gpu" else "cpu"], device="cuda" if device == "gpu" else "cpu")
    report["model"] = {"path": path, "parameters": params, "build_seconds": time.perf_counter() - t}
    spec = smoke_spec(path, device)
    world = 1 if device == "gpu" else 2
    ranks = start_learners(spec, world, device)
    try:
        vocab = SHAPES["1b" if device == "gpu" else "cpu"]["vocab_size"]
        size = (8, 64, 448) if device == "gpu" else (4, 8, 24)
        report["learner"] = {"ranks": world, "zero_stage": 3, "dtype": "bfloat16", "batch": size,
                             "steps": learner_steps(ranks, random_batch(vocab, *size), 3)}
        report["peak_memory_gib"] = {"learner": max(call_all(ranks, "peak_memory"))}
        transports(ranks, device, gpus, report)
    finally:
        for r in ranks:
            r.close()
    if not args.skip_layers:
        layer_memory(spec, device, work, report)
    steps, sync = report["learner"]["steps"], report["sync"]
    return {"learner_steps_finite": all(torch.isfinite(torch.tensor([s["loss"], s["grad_norm"]])).all() for s in steps),
            "learner_grad_nonzero": all(s["grad_norm"] > 0 for s in steps),
            "learner_weights_moved": steps[0]["mean_logprob"] != steps[-1]["mean_logprob"],
            **{f"{name}_exact": sync[name]["exact"] for name in ("broadcast", "ipc") if "exact" in sync[name]}}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mode", choices=["auto", "full", "reduced"], default="auto",
                        help="auto: full when vLLM and Ray import, else reduced")
    parser.add_argument("--device", choices=["gpu", "cpu"], default="gpu", help="cpu: the dry path (reduced only)")
    parser.add_argument("--out", default="smoke", help="directory for report.json and the built models")
    parser.add_argument("--skip-layers", action="store_true", help="skip the 7B-shaped layer memory runs")
    args = parser.parse_args()
    if args.device == "gpu" and not torch.cuda.is_available():
        parser.error("no CUDA device: use --device cpu for the dry path")
    mode = args.mode
    if mode == "auto":
        import importlib.util

        mode = "full" if args.device == "gpu" and all(importlib.util.find_spec(m) for m in ("vllm", "ray")) else "reduced"
    if mode == "full" and args.device == "cpu":
        parser.error("the full mode needs GPUs")
    import deepspeed

    report: dict[str, Any] = {"mode": mode, "device": args.device, "host": platform.node(), "torch": torch.__version__,
                              "deepspeed": deepspeed.__version__, "cuda": torch.version.cuda,
                              "gpus": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
                              if args.device == "gpu" else []}
    Path(args.out).mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    checks = reduced(args, report)
    if mode == "full":
        from scripts.gpu_smoke_full import full  # noqa: PLC0415  (vLLM and Ray only here)

        checks.update(full(args, report, SHAPES["1b"]))
    report["checks"], report["wall_seconds"] = checks, time.perf_counter() - start
    (Path(args.out) / "report.json").write_text(json.dumps(report, indent=2, default=str))
    print(json.dumps({"checks": checks, "sync": report["sync"], "peak_memory_gib": report["peak_memory_gib"],
                      "wall_seconds": report["wall_seconds"]}, indent=2, default=str))
    failed = [name for name, ok in checks.items() if not ok]
    print(f"gpu smoke ({mode}, {args.device}): " + (f"FAILED: {', '.join(failed)}" if failed else "all checks passed"))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
