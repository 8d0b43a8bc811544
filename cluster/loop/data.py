"""Prompts for training and evaluation: an embedded task (tasks/) or any JSONL of problem/answer."""
from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from cluster.config import Config
from protocol.batch import Prompt
from tasks import TASKS

QWEN_BOXED = ("<|im_start|>system\nPlease reason step by step, and put your final answer within \\boxed{{}}."
              "<|im_end|>\n<|im_start|>user\n{problem}<|im_end|>\n<|im_start|>assistant\n")
PLAIN = "Question: {problem}\nAnswer: Let's think step by step."
# data.kind=code: plain opens the code block for the model; qwen_boxed asks the chat model for one.
CODE_PLAIN = "{problem}\n```python\n"
QWEN_CODE = ("<|im_start|>system\nWrite a Python solution in one ```python code block.<|im_end|>\n"
             "<|im_start|>user\n{problem}<|im_end|>\n<|im_start|>assistant\n")
CODE_SPEC_FIELDS = ("entry_point", "tests", "setup", "io")  # what of a code row reaches the reward (its tests)
EMBEDDED_TRAIN_POOL = 20_000  # training problems drawn from an embedded task (data.train_size keeps fewer)
EMBEDDED_EVAL_SEED = 12345


@dataclass(frozen=True)
class Problem:
    prompt: str
    answer: str
    line: int | None = None  # line in the JSONL file it came from, for error messages


class DataError(ValueError):
    pass


def _read_rows(path: str, parse: Callable[[dict[str, Any]], tuple[str, str] | None], what: str) -> list[Problem]:
    """Problems from a JSONL file; `parse` turns a row into (prompt, answer), or None (or raises
    ValueError/TypeError/AttributeError) for a bad row. Bad rows are a DataError naming their lines."""
    rows, bad = [], []
    for number, line in enumerate(Path(path).read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            parsed = parse(json.loads(line))
        except (ValueError, TypeError, AttributeError):
            parsed = None
        if parsed is None:
            bad.append(number)
            continue
        rows.append(Problem(parsed[0], parsed[1], number))
    if bad:
        shown = ", ".join(map(str, bad[:10])) + (" ..." if len(bad) > 10 else "")
        raise DataError(f"{path}: {len(bad)} rows {what} (lines {shown})")
    return rows


def read_jsonl(path: str, template: str) -> list[Problem]:
    def parse(row: dict[str, Any]) -> tuple[str, str] | None:
        problem, answer = str(row.get("problem") or "").strip(), str(row.get("answer") or "").strip()
        if not problem or not answer:
            return None
        return (QWEN_BOXED if template == "qwen_boxed" else PLAIN).format(problem=problem), answer

    return _read_rows(path, parse, "lack a non-empty 'problem' or 'answer'")


def read_code_jsonl(path: str, template: str) -> list[Problem]:
    """Code problems: rows with a `prompt` and tests, either `entry_point` + `tests` (assert statements or a
    `check(candidate)` source, optional `setup`) or `io` ([{input, output}]); other fields (canonical_solution,
    source, licence) stay in the file. The answer a sample is scored against is the test spec as JSON."""
    from reward.code import parse_spec

    def parse(row: dict[str, Any]) -> tuple[str, str] | None:
        spec = json.dumps({k: row[k] for k in CODE_SPEC_FIELDS if k in row})
        parse_spec(spec)
        prompt = str(row.get("prompt") or "").strip()
        return ((QWEN_CODE if template == "qwen_boxed" else CODE_PLAIN).format(problem=prompt), spec) if prompt else None

    return _read_rows(path, parse, "are not code problems (a prompt, and entry_point + tests or io)")


def load_problems(cfg: Config) -> tuple[list[Problem], list[Problem]]:
    """(train, held-out eval) problems."""
    d = cfg.data
    if d.kind in TASKS:
        train, held = embedded_problems(cfg)
        return [Problem(p.prompt, p.answer) for p in train], [Problem(p.prompt, p.answer) for p in held]
    read = read_code_jsonl if d.kind == "code" else read_jsonl
    train = read(d.train_path, d.template)
    held = read(d.eval_path, d.template) if d.eval_path else []
    return train[: d.train_size], held[: d.eval_size]


def embedded_problems(cfg: Config) -> tuple[list[Any], list[Any]]:
    """The embedded task's own (train, held-out) problems, which know their worked solution and their
    rephrased wording: what `load_problems` serves, and the distillation teacher's pool (cluster/compare.py)."""
    d, task = cfg.data, TASKS[cfg.data.kind]
    return (task.sample_problems(d.train_size or EMBEDDED_TRAIN_POOL, seed=cfg.train.seed, held_out=False),
            task.sample_problems(d.eval_size, seed=EMBEDDED_EVAL_SEED, held_out=True))


def worked_predicate(cfg: Config) -> Callable[[str], bool] | None:
    """How a response counts as worked out on this run's embedded task (None for file data)."""
    return TASKS[cfg.data.kind].is_worked if cfg.data.kind in TASKS else None


def _too_long(what: str, long: list[Problem], total: int, limit: int, longest: int) -> str:
    lines = [p.line for p in long if p.line is not None]
    where = f" (lines {', '.join(map(str, lines[:10]))}{' ...' if len(lines) > 10 else ''})" if lines else ""
    return (f"{len(long)} of {total} {what} prompts{where} are longer than {limit} tokens "
            f"(rollout.max_model_len - rollout.max_new_tokens; the longest has {longest}): raise "
            f"rollout.max_model_len, lower rollout.max_new_tokens, or set data.drop_long_prompts=true "
            f"to train without them")


def check_data(cfg: Config, model_dir: str | None) -> None:
    """Refuse bad data before anything starts (DataError naming rows and options): rows without a
    problem or answer, and (when `model_dir` has the tokenizer) prompts that do not fit the context,
    unless data.drop_long_prompts is set (then the run drops them and prints the count)."""
    train, held = load_problems(cfg)
    if model_dir is None or cfg.data.drop_long_prompts:
        return
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    limit = cfg.rollout.max_model_len - cfg.rollout.max_new_tokens
    PromptSource(train, tokenizer, limit, cfg.train.seed)
    PromptSource(held, tokenizer, limit, cfg.train.seed, what="held-out")


class PromptSource:
    """Deterministic prompt order: a fresh seeded shuffle every epoch; step k takes a fixed slice."""

    def __init__(self, problems: list[Problem], tokenizer: Any, max_prompt_tokens: int, seed: int,
                 drop_long: bool = False, what: str = "training") -> None:
        """Prompts longer than `max_prompt_tokens` leave no room to generate: a DataError, or with
        `drop_long` (data.drop_long_prompts) they are left out and their count printed."""
        ids = [tokenizer(p.prompt, add_special_tokens=False)["input_ids"] for p in problems]
        long = [i for i, p in enumerate(ids) if len(p) > max_prompt_tokens]
        if long and not drop_long:
            raise DataError(_too_long(what, [problems[i] for i in long], len(problems), max_prompt_tokens,
                                      max(len(ids[i]) for i in long)))
        if long:
            print(f"data.drop_long_prompts: dropped {len(long)} of {len(problems)} {what} prompts longer than "
                  f"{max_prompt_tokens} tokens")
        keep = sorted(set(range(len(problems))) - set(long))
        if problems and not keep:
            raise DataError(f"every {what} prompt is longer than {max_prompt_tokens} tokens: nothing left to use")
        self.problems, self.ids = [problems[i] for i in keep], [ids[i] for i in keep]
        self.seed = seed
        self._orders: dict[int, list[int]] = {}

    def _order(self, epoch: int) -> list[int]:
        if epoch not in self._orders:
            order = list(range(len(self.problems)))
            random.Random(self.seed * 100_003 + epoch).shuffle(order)
            self._orders[epoch] = order
        return self._orders[epoch]

    def batch(self, step: int, size: int) -> list[Prompt]:
        prompts = []
        for position in range(step * size, (step + 1) * size):
            epoch, offset = divmod(position, len(self.problems))
            i = self._order(epoch)[offset]
            prompts.append(Prompt(index=len(prompts), token_ids=self.ids[i], answer=self.problems[i].answer,
                                  text=self.problems[i].prompt))
        return prompts

    def all(self) -> list[Prompt]:
        return [Prompt(index=i, token_ids=ids, answer=p.answer, text=p.prompt)
                for i, (ids, p) in enumerate(zip(self.ids, self.problems))]
