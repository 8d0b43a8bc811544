"""Code rewards (`reward.kind: code`): a response's program is run against the problem's tests in a
sandbox (reward/sandbox.py), by a judge subprocess (reward/code_judge.py); never in the reward actor.

The gold "answer" of a code problem is its test spec as JSON (cluster/loop/data.py writes it):
    {"entry_point": "add", "tests": ["assert add(1, 2) == 3", ...], "setup": "import math"}
    {"io": [{"input": "1 2\\n", "output": "3\\n"}, ...]}

Reward: the fraction of tests passed (`mode: pass_fraction`) or 1 only when all pass (`all_pass`).
`Verdict.boxed` says a fenced code block was found; `Verdict.error` names the first abnormal event of
the run (`sandbox: Timeout`, `sandbox: Crashed: ...`, `sandbox: LoadError: SyntaxError`, ...), which the
reward pool counts in `reward/errors` and prints once per kind; an overrun also sets `timed_out`.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

from reward.sandbox import Limits, resolve
from reward.scoring import Verdict

MODES = ("pass_fraction", "all_pass")
MAX_PROGRAM_CHARS = 64_000
FENCE = re.compile(r"```[ \t]*(?:python3?|py)?[ \t]*\n(.*?)```", re.DOTALL | re.IGNORECASE)
REPO_ROOT = str(Path(__file__).resolve().parent.parent)


def extract_program(response: str) -> tuple[str, bool]:
    """(program, found a fence): the last complete ```python block; else, when the prompt opened the
    fence, the text before the first closing ```; else the whole response."""
    blocks = FENCE.findall(response)
    if blocks:
        return blocks[-1], True
    if "```" in response:
        return response.split("```", 1)[0], True
    return response, False


def parse_spec(answer: str) -> dict[str, Any]:
    """The test spec of a problem (see the module docstring); ValueError when it is not one."""
    spec = json.loads(answer)
    if not isinstance(spec, dict):
        raise ValueError("a code test spec is a JSON object")
    if "io" in spec:
        pairs = spec["io"]
        if not pairs or not all(isinstance(p, dict) and isinstance(p.get("input"), str)
                                and isinstance(p.get("output"), str) for p in pairs):
            raise ValueError("io: a non-empty list of {input, output} strings")
    else:
        tests = spec.get("tests")
        if not isinstance(spec.get("entry_point"), str) or not spec["entry_point"].isidentifier():
            raise ValueError("entry_point: a function name")
        if not tests or not all(isinstance(t, str) for t in tests):
            raise ValueError("tests: a non-empty list of test sources")
        if not isinstance(spec.get("setup", ""), str):
            raise ValueError("setup: a source string")
    return spec


class CodeScorer:
    """Scores (response, test spec) pairs by running the programs in sandboxes; the reward actor's
    engine for reward.kind=code. Fields are those of `reward.code` (cluster/config.py), whose defaults are
    the only ones (tests/test_specs.py); `batch_budget_s`: `time_budget` of the reward section."""

    def __init__(self, *, mode: str, isolation: str, test_timeout_s: float, cpu_s: int, memory_mb: int,
                 processes: int, open_files: int, output_bytes: int, parallel: int, batch_budget_s: float) -> None:
        if mode not in MODES:
            raise ValueError(f"unknown reward.code.mode {mode!r}; expected one of {MODES}")
        self.backend = resolve(isolation)  # SandboxUnavailable names what is missing
        self.mode, self.test_timeout_s, self.parallel, self.budget_s = mode, test_timeout_s, parallel, batch_budget_s
        self.limits = Limits(cpu_s=cpu_s, memory_mb=memory_mb, processes=processes, open_files=open_files,
                             output_bytes=output_bytes)

    def score(self, pairs: list[tuple[str, str]]) -> list[Verdict]:
        """One verdict per pair; identical pairs are run once. Items the judge has not finished when the
        batch budget runs out count as timeouts."""
        unique = list(dict.fromkeys(pairs))
        verdicts: dict[tuple[str, str], Verdict] = {}
        items, keys, found = [], [], {}
        for pair in unique:
            program, fenced = extract_program(pair[0])
            found[pair] = fenced
            try:
                spec = parse_spec(pair[1])
            except (ValueError, TypeError) as e:
                verdicts[pair] = Verdict(0.0, False, fenced, error=f"code spec: ValueError: {e}"[:300])
                continue
            if len(program) > MAX_PROGRAM_CHARS:
                verdicts[pair] = Verdict(0.0, False, fenced, error="sandbox: ProgramTooLong")
                continue
            items.append([program, spec])
            keys.append(pair)
        for index, line in self._judge(items).items():
            pair = keys[index]
            verdicts[pair] = self._verdict(line, found[pair])
        for pair in keys:
            verdicts.setdefault(pair, Verdict(0.0, False, found[pair], timed_out=True, error="sandbox: BatchTimeout"))
        return [verdicts[p] for p in pairs]

    def _verdict(self, line: dict[str, Any], fenced: bool) -> Verdict:
        passed, total = int(line["passed"]), max(int(line["total"]), 1)
        all_passed = passed == total
        reward = passed / total if self.mode == "pass_fraction" else float(all_passed)
        error = f"sandbox: {line['event']}"[:300] if line.get("event") else None
        return Verdict(reward, all_passed, fenced, timed_out=bool(line.get("timed_out")), error=error)

    def _judge(self, items: list[list[Any]]) -> dict[int, dict[str, Any]]:
        """Run the judge subprocess over `items`; {item index: its outcome line} for those it finished."""
        if not items:
            return {}
        job = {"backend": self.backend, "limits": self.limits.__dict__, "test_timeout_s": self.test_timeout_s,
               "parallel": self.parallel, "items": items}
        env = {**os.environ, "PYTHONPATH": REPO_ROOT}
        proc = subprocess.Popen([sys.executable, "-m", "reward.code_judge"], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, cwd=REPO_ROOT,
                                start_new_session=True)
        try:
            out, err = proc.communicate(json.dumps(job).encode(), timeout=self.budget_s)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, 9)  # the judge and every sandbox it started (they die with their parent)
            out, err = proc.communicate()
        results = {}
        for raw in out.decode("utf-8", "replace").splitlines():
            try:
                line = json.loads(raw)
                results[int(line["i"])] = line
            except (ValueError, KeyError, TypeError):
                continue
        if proc.returncode and not results:
            raise RuntimeError(f"the code judge failed: {err.decode('utf-8', 'replace')[-300:]}")
        return results


def time_budget(timeout_s: float, grace_s: float) -> float:
    """The judge's time for one batch: 5 s inside the pool's shortest deadline for a job, 2 x reward.timeout_s
    + reward.grace_s (one answer queued; the deadline grows with the answers queued: cluster/handles/groups.py)."""
    return max(1.0, 2 * timeout_s + grace_s - 5.0)
