"""GPU smoke test, torch-only mode: what a one-GPU machine with nothing but CUDA torch and python3 can tell
about the GPU path in under 4 minutes. Run through `bash scripts/gpu_smoke.sh --mode torch` (chosen by
itself when DeepSpeed, transformers or pydantic do not import).

Imports torch, the standard library and pure modules of ours only (protocol/ transports, the learner's
chunked log-prob head, cluster/planning/memory_terms.py): no DeepSpeed, pydantic, hjson, vLLM or config schema.
Each phase runs in its own spawned process group under its own timeout (--phase-timeout-s, < the
10-minute command limit) and <out>/report.json is rewritten after every phase, so a phase that hangs
or kills its process still leaves the others' figures.

Phases (`--device cpu` runs the CPU fallback of each where one exists, small shapes; tests/test_gpu_smoke.py):
  accumulation    128 micro-batch gradients summed in bf16 and in fp32 against an fp64 sum (relative error)
  broadcast       the weight sync's broadcast group and bucket broadcast (protocol/transports/broadcast.py):
                  NCCL learner -> receiver on a second GPU, bit-exact; one GPU: a one-rank NCCL group (the
                  group, the options, the collective on a 512 MiB bucket; no bytes move); CPU: gloo, 2 ranks
  ipc             the ipc transport (protocol/transports/ipc.py): a 7B-sized bf16 weight set (7.6e9 values)
                  written by one process, read through CUDA IPC by another on the same GPU, bit-exact; then a
                  second version through the same mapping (GPU only)
  layer_memory    one Qwen2.5-7B-shaped decoder layer (transformers' Qwen2DecoderLayer when it imports, else
                  a torch mirror of it): bytes autograd saves per token against cluster/planning/memory_model.py's formula
  logprob_head    learner/policy_model.py's chunked head over 2048 response positions (chunks of 1024, vocab
                  152064): transient peak of forward + backward against the formula's logits chunk (GPU)
  adamw_step      torch AdamW on a 7B/8-rank fp32 partition: the step's temporaries against 4 bytes/value (GPU)
"""
from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import platform
import signal
import sys
import time
import traceback
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from cluster.planning.memory_terms import layer_activation_values, logits_chunk_bytes  # noqa: E402
from protocol.endpoints import free_port  # noqa: E402

QWEN7B = {"hidden": 3584, "intermediate": 18944, "heads": 28, "kv_heads": 4, "vocab": 152064, "params": 7_615_616_512}
PHASE_TIMEOUT_S = 150.0
HANG_ENV = "REASONRL_SMOKE_HANG"  # tests: the named phase sleeps instead of running (its timeout must end it)
GIB = 2**30


# ---- helpers run inside phases ---------------------------------------------------------------------
def device_of(args: dict[str, Any]) -> torch.device:
    return torch.device("cuda", 0) if args["device"] == "gpu" else torch.device("cpu")


def pattern(seed: int, numel: int, device: torch.device) -> torch.Tensor:
    """A reproducible bf16 tensor of random bit patterns (NaNs included: compared as int16)."""
    gen = torch.Generator(device=device).manual_seed(seed)
    return torch.randint(-2**15, 2**15, (numel,), generator=gen, device=device, dtype=torch.int32).to(
        torch.int16).view(torch.bfloat16)


def layout(total: int, pieces: int) -> list[tuple[str, str, list[int], int]]:
    """Manifest rows (name, dtype, shape, byte offset) of `total` bf16 values in `pieces` tensors."""
    size, rows = -(-total // pieces), []
    for i in range(pieces):
        numel = min(size, total - i * size)
        rows.append((f"w{i}", "bfloat16", [numel], 2 * i * size))
    return rows


def same_bits(got: torch.Tensor, want: torch.Tensor) -> bool:
    return torch.equal(got.view(torch.int16), want.view(torch.int16))


def peak_delta(run: Callable[[], Any]) -> tuple[float, float]:
    """(peak bytes above what was allocated before `run`, bytes still allocated after it): CUDA only."""
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    run()
    torch.cuda.synchronize()
    return float(torch.cuda.max_memory_allocated() - base), float(torch.cuda.memory_allocated() - base)


# ---- phases -----------------------------------------------------------------------------------------
def phase_accumulation(args: dict[str, Any]) -> dict[str, Any]:
    """Micro-batch gradients (a shared signal plus noise, computed in bf16) summed as DeepSpeed's
    grad_accum_dtype=bf16 does and as fp32 does, against their exact sum in fp64."""
    device, steps, numel = device_of(args), 128, 1 << 20
    gen = torch.Generator(device=device).manual_seed(0)
    signal_part = torch.randn(numel, generator=gen, device=device)
    acc16 = torch.zeros(numel, dtype=torch.bfloat16, device=device)
    acc32 = torch.zeros(numel, dtype=torch.float32, device=device)
    exact = torch.zeros(numel, dtype=torch.float64, device=device)
    for _ in range(steps):
        grad = (0.3 * signal_part + torch.randn(numel, generator=gen, device=device)).to(torch.bfloat16)
        acc16 += grad
        acc32 += grad.float()
        exact += grad.double()
    error = {name: float((acc.double() - exact).norm() / exact.norm()) for name, acc in (("bf16", acc16), ("fp32", acc32))}
    return {"micro_batches": steps, "values": numel, "relative_error": error,
            "checks": {"fp32_sum_exact": error["fp32"] < 1e-5, "bf16_sum_drifts": error["bf16"] > 100 * error["fp32"]}}


def _broadcast_rank(rank: int, world: int, port: int, device_name: str, numel: int, conn: Any) -> None:
    try:
        conn.send(_broadcast(rank, world, port, device_name, numel))
    except Exception:  # noqa: BLE001  (the phase reports it)
        conn.send({"rank": rank, "error": traceback.format_exc()})


def _broadcast(rank: int, world: int, port: int, device_name: str, numel: int) -> dict[str, Any]:
    """One rank of the weight sync's broadcast group; rank 0 sends the patterns, the others check them."""
    from protocol.transports.broadcast import broadcast_bucket, open_broadcast_group
    from protocol.weight_sync import TensorMeta

    device = torch.device("cuda", rank) if device_name == "gpu" else torch.device("cpu")
    backend = "nccl" if device_name == "gpu" else "gloo"
    start = time.perf_counter()
    group = open_broadcast_group("127.0.0.1", port, rank, world, backend, 60.0, ["learner[0]", "receiver"])
    opened = time.perf_counter() - start
    metas = [TensorMeta(*row) for row in layout(numel, 4)]
    want = [pattern(i + 1, m.shape[0], device) for i, m in enumerate(metas)]
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    got = broadcast_bucket(group, metas, device, 60.0, want if rank == 0 else None)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - start
    return {"rank": rank, "open_s": opened, "broadcast_s": seconds,
            "exact": all(same_bits(t, w) for (_, t), w in zip(got, want))}


def phase_broadcast(args: dict[str, Any]) -> dict[str, Any]:
    gpus = torch.cuda.device_count() if args["device"] == "gpu" else 0
    world = 1 if gpus == 1 else 2
    numel = (512 * 2**20 // 2) if args["device"] == "gpu" else (1 << 20)  # one 512 MiB bucket (the configs' bucket_mb)
    ctx, port = mp.get_context("spawn"), free_port()
    pipes = [ctx.Pipe() for _ in range(world)]
    procs = [ctx.Process(target=_broadcast_rank, args=(r, world, port, args["device"], numel, pipes[r][1]), daemon=True)
             for r in range(world)]
    for p in procs:
        p.start()
    ranks = [pipe[0].recv() if pipe[0].poll(120) else {"rank": r, "error": "no answer in 120 s"}
             for r, pipe in enumerate(pipes)]
    for p in procs:
        p.join(10)
    out: dict[str, Any] = {"backend": "nccl" if args["device"] == "gpu" else "gloo", "world_size": world,
                           "bucket_bytes": 2 * numel, "ranks": ranks}
    if world == 1:
        out["receiver"] = "needs a second GPU (NCCL refuses two ranks on one GPU): group and collective only"
    else:
        out["gbit_s"] = 2 * numel * 8 / 1e9 / max(ranks[1].get("broadcast_s", 0.0), 1e-9)
    out["checks"] = {"broadcast_ran": all("error" not in r for r in ranks),
                     **({"broadcast_exact": all(r.get("exact") for r in ranks)} if world > 1 else {})}
    return out


def _ipc_receiver(setup: dict[str, Any], conn: Any) -> None:
    """The engine side of the ipc transport, as inside a vLLM worker: map the handle, read every tensor."""
    from protocol import transports

    transport = transports.get("ipc")(transports.SyncSetup.from_dict(setup))
    transport.open_receiver(1, torch.device("cuda", 0))
    while (message := conn.recv()) is not None:
        version, payload = message
        start = time.perf_counter()
        exact = all(same_bits(view, pattern(version * 1000 + i, view.numel(), view.device))
                    for i, (_, view) in enumerate(transport.receive(version, payload)))
        transport.finish(version)
        conn.send({"version": version, "exact": exact, "seconds": time.perf_counter() - start,
                   "mapping": id(transport.buffer)})


def phase_ipc(args: dict[str, Any]) -> dict[str, Any]:
    if args["device"] != "gpu":
        return {"skipped": "CUDA IPC needs a GPU"}
    from protocol import transports

    rows = layout(QWEN7B["params"], 64)
    setup = transports.SyncSetup([rows], 2 * QWEN7B["params"], 60.0, device="gpu")
    sender = transports.get("ipc")(setup)
    device = torch.device("cuda", 0)
    sender.open_sender(0, device)
    ctx = mp.get_context("spawn")
    mine, theirs = ctx.Pipe()
    receiver = ctx.Process(target=_ipc_receiver, args=(setup.as_dict(), theirs), daemon=True)
    receiver.start()
    versions, handles = [], []
    try:
        for version in (1, 2):
            metas = setup.metas()[0]
            start = time.perf_counter()
            values = (pattern(version * 1000 + i, m.shape[0], device) for i, m in enumerate(metas))  # one at a time
            payload = sender.send([(metas, values)], version)
            written = time.perf_counter() - start
            handles.append(payload)
            mine.send((version, payload))
            if not mine.poll(120):
                raise TimeoutError(f"the ipc receiver did not answer version {version} within 120 s")
            versions.append({**mine.recv(), "write_s": written})
    finally:
        if receiver.is_alive():
            mine.send(None)
        receiver.join(10)
    return {"bytes": setup.total_bytes, "versions": versions,
            "checks": {"ipc_exact": all(v["exact"] for v in versions),
                       "ipc_same_mapping": handles[0] == handles[1] and versions[0]["mapping"] == versions[1]["mapping"]}}


def layer_module(shape: dict[str, int], dtype: torch.dtype, device: torch.device) -> tuple[torch.nn.Module, str]:
    """A Qwen2 decoder layer of `shape`: transformers' own when it imports, else scripts/smoke_layer.py's mirror."""
    try:
        from transformers import Qwen2Config
        from transformers.models.qwen2.modeling_qwen2 import Qwen2DecoderLayer

        config = Qwen2Config(hidden_size=shape["hidden"], intermediate_size=shape["intermediate"],
                             num_attention_heads=shape["heads"], num_key_value_heads=shape["kv_heads"],
                             attn_implementation="sdpa")
        return Qwen2DecoderLayer(config, 0).to(device, dtype), "transformers Qwen2DecoderLayer (sdpa)"
    except ImportError:
        from scripts.smoke_layer import MirrorLayer

        return MirrorLayer(**{k: shape[k] for k in ("hidden", "intermediate", "heads", "kv_heads")}).to(device, dtype), \
            "torch mirror of Qwen2DecoderLayer (transformers not installed)"


def phase_layer_memory(args: dict[str, Any]) -> dict[str, Any]:
    from scripts.smoke_layer import rotary, saved_bytes

    device = device_of(args)
    shape, tokens = QWEN7B, 2048 if device.type == "cuda" else 64
    layer, kind = layer_module(shape, torch.bfloat16, device)
    hidden = torch.randn(1, tokens, shape["hidden"], device=device, dtype=torch.bfloat16, requires_grad=True)
    cos, sin = rotary(tokens, shape["hidden"] // shape["heads"], device, torch.bfloat16)
    params = {p.data_ptr() for p in layer.parameters()}
    saved, out = saved_bytes(lambda: layer(hidden, position_embeddings=(cos, sin)), exclude=params)
    kv = shape["kv_heads"] * shape["hidden"] // shape["heads"]
    predicted = layer_activation_values(shape["hidden"], kv, shape["intermediate"]) * 2 * tokens
    result = {"layer": kind, "tokens": tokens, "saved_bytes": saved, "predicted_bytes": predicted,
              "ratio": saved / predicted}
    if device.type == "cuda":
        peak, _ = peak_delta(lambda: (out[0] if isinstance(out, tuple) else out).float().sum().backward())
        result["backward_peak_bytes"] = peak
    result["checks"] = {"layer_activations_within_25pct": abs(saved / predicted - 1) < 0.25}
    return result


def phase_logprob_head(args: dict[str, Any]) -> dict[str, Any]:
    from learner.policy_model import PolicyModel
    from scripts.smoke_layer import FixedBody

    device = device_of(args)
    gpu = device.type == "cuda"
    vocab, hidden, positions, chunk = (QWEN7B["vocab"], QWEN7B["hidden"], 2048, 1024) if gpu else (4096, 64, 64, 32)
    lm = torch.nn.Module()
    lm.model, lm.lm_head = FixedBody(positions, hidden), torch.nn.Linear(hidden, vocab, bias=False)
    policy = PolicyModel(lm.to(device, torch.bfloat16), chunk)
    rows = torch.zeros(positions, dtype=torch.long, device=device)
    cols = torch.arange(positions, device=device)
    targets = torch.randint(0, vocab, (positions,), device=device)
    out: dict[str, Any] = {"positions": positions, "chunk_tokens": chunk, "vocab": vocab, "runs": {}}
    for entropy in ("grad", None):
        def run() -> None:
            logprobs, ent = policy(rows[None], None, rows, cols, targets, entropy)
            (logprobs.sum() + (ent.sum() if ent is not None else 0)).backward()

        predicted = logits_chunk_bytes(chunk, vocab, 2, entropy == "grad")
        if gpu:
            peak, held = peak_delta(run)
            out["runs"][str(entropy)] = {"transient_bytes": peak - held, "predicted_bytes": predicted,
                                         "ratio": (peak - held) / predicted}
        else:
            run()
            out["runs"][str(entropy)] = {"transient_bytes": None, "predicted_bytes": predicted}
        policy.zero_grad(set_to_none=True)
    if gpu:
        # Beside the formula's chunk, each chunk's backward materialises the head's full weight gradient
        # (vocab x hidden, bf16) before adding it up: cluster/planning/memory_model.py does not count that one.
        head_grad = vocab * hidden * 2
        for r in out["runs"].values():
            r["ratio_with_head_grad"] = r["transient_bytes"] / (r["predicted_bytes"] + head_grad)
        out["head_weight_grad_bytes"] = head_grad
        out["checks"] = {"head_transient_within_formula_and_head_grad":
                         all(r["ratio_with_head_grad"] <= 1.1 for r in out["runs"].values())}
    return out


def phase_adamw_step(args: dict[str, Any]) -> dict[str, Any]:
    if args["device"] != "gpu":
        return {"skipped": "measured with CUDA's allocator statistics only"}
    numel = QWEN7B["params"] // 8  # one of 8 ZeRO-3 ranks' fp32 partition
    param = torch.nn.Parameter(torch.zeros(numel, device="cuda"))
    param.grad = torch.full_like(param, 1e-3)
    optimizer = torch.optim.AdamW([param], lr=1e-6, weight_decay=0.01)
    optimizer.step()  # allocates m and v
    peak, held = peak_delta(optimizer.step)
    return {"values": numel, "transient_bytes": peak - held, "predicted_bytes": 4 * numel,
            "ratio": (peak - held) / (4 * numel),
            "checks": {"adamw_temporaries_within_formula": (peak - held) <= 1.05 * 4 * numel}}


PHASES: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {
    "accumulation": phase_accumulation, "broadcast": phase_broadcast, "ipc": phase_ipc,
    "layer_memory": phase_layer_memory, "logprob_head": phase_logprob_head, "adamw_step": phase_adamw_step}


# ---- runner -----------------------------------------------------------------------------------------
def _phase_child(name: str, args: dict[str, Any], conn: Any) -> None:
    os.setpgid(0, 0)  # its own process group: a timeout ends the phase's helpers too
    if os.environ.get(HANG_ENV) == name:  # tests: this phase never answers
        time.sleep(3600)
    try:
        conn.send(("ok", PHASES[name](args)))
    except BaseException:  # noqa: BLE001  (reported in the phase's entry)
        conn.send(("error", traceback.format_exc()))


def run_phase(name: str, args: dict[str, Any], timeout_s: float) -> dict[str, Any]:
    """`name` in a spawned process of its own, killed with its helpers after `timeout_s`."""
    ctx = mp.get_context("spawn")
    mine, theirs = ctx.Pipe()
    proc = ctx.Process(target=_phase_child, args=(name, args, theirs))
    start = time.perf_counter()
    proc.start()
    try:
        if mine.poll(timeout_s):
            status, value = mine.recv()
            result = value if status == "ok" else {"error": value}
        else:
            result = {"error": f"timeout: no result within {timeout_s:g} s"}
    except EOFError:
        result = {"error": f"the phase's process died (exit code {proc.exitcode})"}
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):  # gone, or not yet its own group leader
            proc.kill()
        proc.join(5)
    result["seconds"] = time.perf_counter() - start
    if "error" in result:
        result.setdefault("checks", {})[f"{name}_ran"] = False
    return result


def write_report(path: Path, report: dict[str, Any]) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(report, indent=2, default=str))
    os.replace(tmp, path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mode", choices=["torch"], default="torch")
    parser.add_argument("--device", choices=["gpu", "cpu"], default="gpu")
    parser.add_argument("--out", default="smoke")
    parser.add_argument("--phases", default=",".join(PHASES), help="comma-separated, in this order")
    parser.add_argument("--skip", default="", help="comma-separated phases not to run")
    parser.add_argument("--phase-timeout-s", type=float, default=PHASE_TIMEOUT_S)
    args = parser.parse_args(argv)
    if args.device == "gpu" and not torch.cuda.is_available():
        parser.error("no CUDA device: use --device cpu for the CPU fallback")
    if not 0 < args.phase_timeout_s < 600:
        parser.error("--phase-timeout-s must stay under the 10-minute command limit")
    names = [n for n in args.phases.split(",") if n and n not in args.skip.split(",")]
    unknown = [n for n in names if n not in PHASES]
    if unknown:
        parser.error(f"unknown phase(s) {unknown}: {list(PHASES)}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    report: dict[str, Any] = {"mode": "torch", "device": args.device, "host": platform.node(), "torch": torch.__version__,
                              "cuda": torch.version.cuda, "python": platform.python_version(),
                              "gpus": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
                              if args.device == "gpu" else [], "phases": {}, "checks": {}}
    start = time.perf_counter()
    for name in names:
        result = run_phase(name, {"device": args.device}, args.phase_timeout_s)
        report["phases"][name] = result
        report["checks"].update(result.get("checks", {}))
        report["wall_seconds"] = time.perf_counter() - start
        write_report(out / "report.json", report)
        print(f"{name}: {json.dumps(result, default=str)[:400]}", flush=True)
    failed = [name for name, ok in report["checks"].items() if not ok]
    print(f"gpu smoke (torch, {args.device}): " + (f"FAILED: {', '.join(failed)}" if failed else "all checks passed"))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
