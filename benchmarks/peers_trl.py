"""The TRL side of benchmarks/peers.py: TRL's GRPOTrainer in one plain process on CPU (HF `generate`), on the
prompts, model, reward and settings that benchmarks/peers.py hands it, then the held-out evaluation.

    PYTHONPATH=.cache/bench-site:. .venv/bin/python benchmarks/peers_trl.py <payload.json> <result.json>

Only this process sees TRL and its dependencies (requirements/bench.txt, installed with --no-deps --target
outside the locked venv); ReasonRL's own processes never do.
"""
from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def vm_hwm() -> float:
    """Peak resident memory of this process (VmHWM), bytes."""
    return float(Path("/proc/self/status").read_text().split("VmHWM:")[1].split()[0]) * 1024


def bf16_autocast(fn: Callable[..., Any]) -> Callable[..., Any]:
    """`fn` under CPU bf16 autocast: generation computes in bf16 like our bf16 engine, weights stay fp32."""
    import torch

    def wrapped(*args: Any, **kwargs: Any) -> Any:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return fn(*args, **kwargs)
    return wrapped


def heldout(model: Any, tokenizer: Any, problems: list[dict[str, str]], samples: int, max_new_tokens: int,
            temperature: float, eos_ids: list[int], batch_prompts: int = 256) -> dict[str, float]:
    """Sampled (`samples` per prompt at `temperature`) and greedy accuracy on the held-out problems, scored
    by our grader (reward.score) on the decoded responses, as cluster/loop/heldout.py does with vLLM."""
    import torch

    from reward import score

    tokenizer.padding_side = "left"
    model.eval()
    sampled, greedy, tokens = [], [], 0
    for lo in range(0, len(problems), batch_prompts):
        part = problems[lo: lo + batch_prompts]
        enc = tokenizer([p["prompt"] for p in part], return_tensors="pt", padding=True, add_special_tokens=False)
        for n, do_sample, out in ((samples, True, sampled), (1, False, greedy)):
            with torch.no_grad():
                ids = model.generate(**enc, do_sample=do_sample, temperature=temperature if do_sample else None,
                                     top_p=1.0 if do_sample else None, top_k=0 if do_sample else None,
                                     num_return_sequences=n, max_new_tokens=max_new_tokens, eos_token_id=eos_ids,
                                     pad_token_id=tokenizer.pad_token_id)
            responses = ids[:, enc["input_ids"].shape[1]:]
            for i, row in enumerate(responses):
                ended = [j for j, t in enumerate(row.tolist()) if t in eos_ids]
                row = row[: ended[0] + 1] if ended else row
                tokens += len(row) if do_sample else 0
                text = tokenizer.decode(row, skip_special_tokens=True)
                out.append(score(text, part[i // n]["answer"]))
    mean = lambda xs: sum(xs) / max(len(xs), 1)  # noqa: E731
    return {"accuracy": mean(sampled), "greedy_accuracy": mean(greedy), "samples": len(sampled),
            "response_len": tokens / max(len(sampled), 1)}


def main(payload_path: str, result_path: str) -> None:
    import torch
    import transformers
    from datasets import Dataset
    from datasets.table import InMemoryTable
    from transformers import AutoTokenizer, TrainerCallback

    import trl
    from reward import score
    from reward.shaping import overlong_penalty
    from trl import GRPOConfig, GRPOTrainer

    payload = json.loads(Path(payload_path).read_text())
    if os.environ.get("OMP_NUM_THREADS"):  # benchmarks/peers.py --trl-threads
        torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
    torch.manual_seed(payload["seed"])
    steps: list[dict[str, float]] = []
    current: dict[str, float] = {}

    overlong = payload["overlong"]

    def reward_fn(completions: list[str], answer: list[str], completion_ids: list[list[int]], **_: Any) -> list[float]:
        """Our grader on the last boxed answer (reward.score), as our reward actors pay it (binary shaping),
        plus our overlong penalty where the config sets one (reward/shaping.py, as cluster/loop/dynamic.py adds it)."""
        rewards = [score(c, a) + overlong_penalty(len(ids), overlong["max_new_tokens"], overlong["buffer"], overlong["factor"])
                   for c, a, ids in zip(completions, answer, completion_ids)]
        current["tokens"] = current.get("tokens", 0) + sum(len(ids) for ids in completion_ids)
        current["samples"] = current.get("samples", 0) + len(rewards)
        current["reward_sum"] = current.get("reward_sum", 0.0) + sum(rewards)
        return rewards

    class StepTimes(TrainerCallback):
        def on_step_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            current.clear()
            current["start"], current["cpu_start"] = time.perf_counter(), time.process_time()
            current["generate_s"] = 0.0

        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            steps.append({"step_s": time.perf_counter() - current["start"], "generate_s": current["generate_s"],
                          "cpu_s": time.process_time() - current["cpu_start"],
                          "tokens": current.get("tokens", 0), "samples": current.get("samples", 0),
                          "reward_mean": current.get("reward_sum", 0.0) / max(current.get("samples", 0), 1),
                          "loadavg_1m": os.getloadavg()[0]})

    # The fingerprint is given: datasets cannot hash an in-memory table here (its dill pickling of pyarrow's
    # MonthDayNano type fails under the venv's dill 0.4.1), and nothing is cached anyway.
    table = InMemoryTable.from_pydict({"prompt": [p["prompt"] for p in payload["train"]],
                                       "answer": [p["answer"] for p in payload["train"]]})
    train = Dataset(table, fingerprint="reasonrl-peers-train")
    config = GRPOConfig(output_dir=payload["work_dir"], **payload["trl_args"])
    tokenizer = AutoTokenizer.from_pretrained(payload["model_path"])
    trainer = GRPOTrainer(model=payload["model_path"], reward_funcs=[reward_fn], args=config, train_dataset=train,
                          processing_class=tokenizer, callbacks=[StepTimes()])
    model = trainer.model
    plain_generate = bf16_autocast(model.generate) if payload["bf16"] else model.generate

    def timed_generate(*args: Any, **kwargs: Any) -> Any:
        start = time.perf_counter()
        try:
            return plain_generate(*args, **kwargs)
        finally:
            current["generate_s"] = current.get("generate_s", 0.0) + time.perf_counter() - start

    model.generate = timed_generate
    loaded_rss = vm_hwm()
    start = time.perf_counter()
    trainer.train()
    train_wall = time.perf_counter() - start
    train_rss = vm_hwm()
    model.generate = plain_generate
    eval_start = time.perf_counter()
    held = heldout(model, tokenizer, payload["heldout"], payload["eval_samples"], payload["trl_args"]["max_completion_length"],
                   payload["trl_args"]["temperature"], list(trainer.eos_token_ids))
    result = {"steps": steps, "train_wall_s": train_wall, "heldout": held, "eval_s": time.perf_counter() - eval_start,
              "peak_rss_bytes_after_load": loaded_rss, "peak_rss_bytes_train": train_rss, "peak_rss_bytes": vm_hwm(),
              "torch_threads": torch.get_num_threads(),
              "versions": {"trl": trl.__version__, "transformers": transformers.__version__,
                           "torch": torch.__version__, "accelerate": __import__("accelerate").__version__,
                           "datasets": __import__("datasets").__version__}}
    Path(result_path).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main(*sys.argv[1:3])
