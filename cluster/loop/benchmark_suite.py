"""The benchmarks (MATH500, GSM8K, AIME24, ...) scored on live rollout workers and reward actors: the library
of `python -m cluster.evaluate` (whose help describes the metrics and files) and of the trainer's
`train.benchmarks` every `train.benchmark_every` steps."""
from __future__ import annotations

from dataclasses import dataclass, field
from math import comb
from pathlib import Path
from typing import Any

from cluster.loop.heldout import score_prompts
from cluster.infra.placement_group import REPO_ROOT
from protocol.batch import Prompt
from protocol.markdown import table_lines

BENCHMARKS = {"math500": "math500_test.jsonl", "gsm8k": "gsm8k_test.jsonl", "aime24": "aime24_test.jsonl",
              "amc23": "amc23_test.jsonl", "minerva": "minerva_math_test.jsonl",
              "olympiadbench": "olympiadbench_test.jsonl"}
SHIPPED_DIR = Path(REPO_ROOT) / "data"
DEFAULT_DATA_DIR = Path(REPO_ROOT).parent / "shared" / "data"


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from n samples of which c are correct: 1 - C(n-c, k) / C(n, k)."""
    if k > n:
        raise ValueError(f"pass@{k} needs at least {k} samples per problem, got {n}")
    return 1.0 if n - c < k else 1.0 - comb(n - c, k) / comb(n, k)


def benchmark_file(name: str, data_dir: Path | None) -> Path:
    """Where a benchmark's JSONL lives: --data-dir first, then the repository's data/."""
    names = [BENCHMARKS[name]] if name in BENCHMARKS else [f"{name}.jsonl", f"{name}_test.jsonl"]
    dirs = [d for d in (data_dir or (DEFAULT_DATA_DIR if DEFAULT_DATA_DIR.is_dir() else None), SHIPPED_DIR) if d]
    for folder in dirs:
        for file in names:
            if (folder / file).is_file():
                return folder / file
    raise FileNotFoundError(f"benchmark '{name}': none of {names} in {[str(d) for d in dirs]} "
                            f"(evaluation-only sets are not shipped: pass --data-dir)")


@dataclass
class BenchmarkResult:
    name: str
    problems: int  # evaluated
    skipped: int  # prompts longer than the model's context (rollout.max_model_len - max_new_tokens)
    greedy_pass1: float
    samples: int = 0  # n sampled completions per problem
    avg_at_n: float | None = None
    pass_at: dict[int, float] = field(default_factory=dict)
    mean_response_len: float = 0.0
    completions: list[dict[str, Any]] = field(default_factory=list, repr=False)  # greedy, for reading


def load_prompts(path: Path, template: str, tokenizer: Any, max_prompt_tokens: int,
                 limit: int | None) -> tuple[list[Prompt], int]:
    """Tokenised prompts of a benchmark file, and how many were too long for the context."""
    from cluster.loop.data import read_jsonl

    prompts, skipped = [], 0
    for problem in read_jsonl(str(path), template)[:limit]:
        ids = tokenizer(problem.prompt, add_special_tokens=False)["input_ids"]
        if len(ids) > max_prompt_tokens:
            skipped += 1
            continue
        prompts.append(Prompt(index=len(prompts), token_ids=ids, answer=problem.answer, text=problem.prompt))
    return prompts, skipped


def run_benchmark(name: str, prompts: list[Prompt], skipped: int, rollouts: Any, rewards: Any, samples: int,
                  temperature: float, ks: list[int], seed: int) -> BenchmarkResult:
    greedy, _ = score_prompts(rollouts, rewards, prompts, 1, 0.0, seed)
    result = BenchmarkResult(name, len(prompts), skipped, _mean([s.correct for s in greedy]),
                             mean_response_len=_mean([len(s.response_ids) for s in greedy]),
                             completions=[{"problem": p.index, "answer": p.answer, "response": s.text,
                                           "correct": s.correct} for p, s in zip(prompts, greedy)])
    if samples > 0:
        sampled, _ = score_prompts(rollouts, rewards, prompts, samples, temperature, seed)
        correct = [sum(s.correct for s in sampled if s.prompt_index == p.index) for p in prompts]
        result.samples, result.avg_at_n = samples, _mean([s.correct for s in sampled])
        result.pass_at = {k: _mean([pass_at_k(samples, c, k) for c in correct]) for k in ks if k <= samples}
    return result


def run_benchmarks(names: list[str], rollouts: Any, rewards: Any, tokenizer: Any, template: str,
                   max_prompt_tokens: int, data_dir: Path | None = None, samples: int = 0,
                   temperature: float = 1.0, ks: list[int] | None = None, limit: int | None = None,
                   seed: int = 1234) -> list[BenchmarkResult]:
    out = []
    for name in names:
        prompts, skipped = load_prompts(benchmark_file(name, data_dir), template, tokenizer, max_prompt_tokens, limit)
        out.append(run_benchmark(name, prompts, skipped, rollouts, rewards, samples, temperature, ks or [1], seed))
    return out


def markdown_table(results: list[BenchmarkResult]) -> str:
    ks = sorted({k for r in results for k in r.pass_at})
    head = ["benchmark", "problems", "skipped", "greedy pass@1", "avg@n"] + [f"pass@{k}" for k in ks]
    fmt = lambda x: "-" if x is None else f"{100 * x:.1f}"  # noqa: E731
    rows = [[r.name, str(r.problems), str(r.skipped), fmt(r.greedy_pass1),
             fmt(r.avg_at_n) + (f" (n={r.samples})" if r.samples else "")] + [fmt(r.pass_at.get(k)) for k in ks]
            for r in results]
    return "\n".join(table_lines(head, rows)) + "\n"


def metrics_of(results: list[BenchmarkResult]) -> dict[str, float]:
    """Flat metrics for the training log (bench/<name>/...)."""
    out: dict[str, float] = {}
    for r in results:
        out[f"bench/{r.name}/greedy_pass1"] = r.greedy_pass1
        if r.avg_at_n is not None:
            out[f"bench/{r.name}/avg@{r.samples}"] = r.avg_at_n
        out.update({f"bench/{r.name}/pass@{k}": v for k, v in r.pass_at.items()})
    return out


def _mean(xs: list[float]) -> float:
    return sum(xs) / max(len(xs), 1)
