"""Code-reward throughput: sandboxed judge (reward/code.py) per backend vs plain subprocesses.

    .venv/bin/python benchmarks/sandbox.py [--repeat 4] [--write-docs]

One execution = one program run against all of its problem's tests. Workloads:
  - canonical: the canonical solutions of data/code_sample.jsonl (14 problems: 11 call, 3 io), `--repeat` times;
  - hostile: a mix of hostile programs (fork bomb, infinite loop, sleep, memory bomb, huge stdout, exit
    before the tests, network connect, busy threads), each against a 3-test problem, `--repeat` times.
Rows:
  - plain subprocess: `python -c program+tests` per execution (call tests: exit status 0 of the program
    with its asserts appended; io: each input through a fresh process), a wall timeout per test, no
    isolation and no limits: what a custom_fn without a sandbox would do (hostile programs run on the host,
    so the hostile mix is never run this way);
  - judge, isolation=none: our judge and runner with rlimits only (the harness cost without isolation);
  - judge, isolation=bwrap / unshare: the real sandbox.
The judge runs one sandbox at a time (reward.code.parallel=1). Per core: executions per CPU second of the
benchmark and everything it started (a cgroup v1 cpuacct group when writable, which also counts sandbox
processes killed and reaped elsewhere), which holds on a shared machine; and executions per wall second.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.doc_sections import replace_section  # noqa: E402
from cluster.config import CodeRewardConfig  # noqa: E402
from reward.code import CodeScorer  # noqa: E402
from reward.sandbox import interpreter, probe  # noqa: E402

SAMPLE = ROOT / "data" / "code_sample.jsonl"
RESULTS = ROOT / "docs" / "sandbox" / "results.json"
TEST_TIMEOUT_S = 1.0
HOSTILE = {
    "fork bomb": "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass",
    "infinite loop": "def f(x):\n    while True:\n        pass",
    "sleep": "import time\ndef f(x):\n    time.sleep(60)",
    "memory bomb": "def f(x):\n    return len(bytearray(8 << 30))",
    "huge stdout": "def f(x):\n    print('x' * (64 << 20))\n    return x",
    "exit first": "import os\nos._exit(0)",
    "network": "import socket\ndef f(x):\n    socket.create_connection(('1.1.1.1', 53), timeout=2)\n    return x",
    "busy threads": "import threading\nfor _ in range(8):\n    threading.Thread(target=lambda: [0 for _ in iter(int, 1)], daemon=True).start()\n"
                    "def f(x):\n    return x + 1",
}
HOSTILE_SPEC = json.dumps({"entry_point": "f", "tests": ["assert f(1) == 2", "assert f(2) == 3", "assert f(5) == 6"]})


def canonical_pairs(repeat: int) -> list[tuple[str, str]]:
    from cluster.loop.data import read_code_jsonl

    rows = [json.loads(line) for line in SAMPLE.read_text().splitlines()]
    specs = [p.answer for p in read_code_jsonl(str(SAMPLE), "plain")]
    # a distinct comment per copy: the scorer runs identical pairs once
    return [(f"```python\n# copy {k}\n{r['canonical_solution']}```", s) for k in range(repeat) for r, s in zip(rows, specs)]


def hostile_pairs(repeat: int) -> list[tuple[str, str]]:
    return [(f"```python\n# copy {k}\n{p}\n```", HOSTILE_SPEC) for k in range(repeat) for p in HOSTILE.values()]


CPUACCT = Path("/sys/fs/cgroup/cpuacct")
GROUP = CPUACCT / f"reasonrl-sandbox-bench-{os.getpid()}"


def enter_cpu_group() -> str:
    """Put this process (and so every descendant, orphaned sandbox processes included) in a cgroup of
    its own when cgroup v1 cpuacct is writable; otherwise fall back to waited-for children's rusage,
    which misses processes that were killed and reaped by init."""
    try:
        GROUP.mkdir()
        (GROUP / "cgroup.procs").write_text(str(os.getpid()))
        return "cgroup v1 cpuacct (this process and all its descendants)"
    except OSError:
        return "rusage of waited-for children (undercounts killed sandboxes)"


def leave_cpu_group() -> None:
    if GROUP.exists():
        (CPUACCT / "cgroup.procs").write_text(str(os.getpid()))
        time.sleep(0.5)
        GROUP.rmdir()


def children_cpu() -> float:
    if GROUP.exists():
        return int((GROUP / "cpuacct.usage").read_text()) / 1e9
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def plain_subprocess(pairs: list[tuple[str, str]]) -> tuple[float, int]:
    """(reward sum, executions) of the unisolated baseline."""
    from reward.code import extract_program

    exe, total = interpreter()[0], 0.0
    for response, answer in pairs:
        program, spec = extract_program(response)[0], json.loads(answer)
        if "io" in spec:
            ok = 0
            for case in spec["io"]:
                try:
                    r = subprocess.run([exe, "-c", program], input=case["input"].encode(), capture_output=True,
                                       timeout=TEST_TIMEOUT_S)
                    ok += r.returncode == 0 and r.stdout.decode().strip() == case["output"].strip()
                except subprocess.TimeoutExpired:
                    pass
            total += ok / len(spec["io"])
            continue
        tests = "\n".join(spec["tests"]) + f"\nif 'check' in dir():\n    check({spec['entry_point']})\n"
        source = program + "\n" + spec.get("setup", "") + "\n" + tests
        try:
            r = subprocess.run([exe, "-c", source], capture_output=True, timeout=TEST_TIMEOUT_S * len(spec["tests"]))
            total += r.returncode == 0
        except subprocess.TimeoutExpired:
            pass
    return total, len(pairs)


def measure(name: str, run) -> dict[str, float | str]:
    cpu, start = children_cpu(), time.perf_counter()
    reward, executions = run()
    wall, used = time.perf_counter() - start, children_cpu() - cpu
    row = {"name": name, "executions": executions, "wall_s": round(wall, 3), "cpu_s": round(used, 3),
           "per_wall_s": round(executions / wall, 2), "per_cpu_s": round(executions / max(used, 1e-9), 2),
           "reward_sum": round(reward, 3)}
    print(json.dumps(row), flush=True)
    return row


def judged(backend: str, pairs: list[tuple[str, str]]):
    code = CodeRewardConfig(isolation=backend, test_timeout_s=TEST_TIMEOUT_S, parallel=1)  # the rest: reward.code's defaults
    scorer = CodeScorer(**code.model_dump(), batch_budget_s=3600)
    return lambda: (sum(v.reward for v in scorer.score(pairs)), len(pairs))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=4)
    parser.add_argument("--write-docs", action="store_true")
    args = parser.parse_args()
    canonical, hostile = canonical_pairs(args.repeat), hostile_pairs(args.repeat)
    backends = [b for b in ("bwrap", "unshare") if probe(b) is None]
    cpu_method = enter_cpu_group()
    try:
        rows = run_rows(canonical, hostile, backends)
    finally:
        leave_cpu_group()
    result = {"date": time.strftime("%Y-%m-%d"), "test_timeout_s": TEST_TIMEOUT_S, "repeat": args.repeat,
              "cpu_measured_by": cpu_method, "cores": os.cpu_count(), "hostile": list(HOSTILE), "rows": rows}
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=1) + "\n")
    if args.write_docs:
        replace_section(section(result))


def run_rows(canonical: list[tuple[str, str]], hostile: list[tuple[str, str]], backends: list[str]) -> list[dict]:
    rows = [measure("canonical / plain subprocess", lambda: plain_subprocess(canonical)),
            measure("canonical / judge, isolation=none", judged("none", canonical))]
    rows += [measure(f"canonical / judge, isolation={b}", judged(b, canonical)) for b in backends]
    rows += [measure(f"hostile mix / judge, isolation={b}", judged(b, hostile)) for b in backends]
    return rows


def costs(result: dict, base: dict) -> str:
    """'isolation=x: +N ms CPU, +M ms wall' for each sandboxed canonical row, relative to `base`."""
    out = []
    for r in result["rows"]:
        if r["name"].startswith("canonical / judge") and r is not base:
            cpu = 1000 * (r["cpu_s"] / r["executions"] - base["cpu_s"] / base["executions"])
            wall = 1000 * (r["wall_s"] / r["executions"] - base["wall_s"] / base["executions"])
            out.append(f"{r['name'].split(', ')[1]}: {cpu:+.0f} ms CPU, {wall:+.0f} ms wall")
    return "; ".join(out)


def section(result: dict) -> str:
    lines = ["## Code sandbox throughput", "",
             f"Measured {result['date']} by `benchmarks/sandbox.py --repeat {result['repeat']} --write-docs` "
             f"(result file: docs/sandbox/results.json) on the 2-core development machine, shared with other work "
             f"(wall figures vary with load; CPU seconds: {result['cpu_measured_by']}, the benchmark's own driver included). One execution = one "
             f"program against all its tests; per-test timeout {result['test_timeout_s']} s; one sandbox at a time. "
             f"Canonical = the 14 canonical solutions of data/code_sample.jsonl; hostile mix = "
             f"{', '.join(result['hostile'])}, each against 3 tests (never run without isolation).", "",
             "| workload / runner | executions | wall s | CPU s | CPU ms / execution | executions / wall s | executions / CPU s | reward sum |",
             "|---|---|---|---|---|---|---|---|"]
    for r in result["rows"]:
        per = 1000 * float(r["cpu_s"]) / int(r["executions"])
        lines.append(f"| {r['name']} | {r['executions']} | {r['wall_s']} | {r['cpu_s']} | {per:.0f} | {r['per_wall_s']} | "
                     f"{r['per_cpu_s']} | {r['reward_sum']} |")
    by_name = {r["name"]: r for r in result["rows"]}
    lines += ["", "Per execution on the canonical programs, against the plain subprocess: " + costs(result, by_name["canonical / plain subprocess"])
              + ". Against our judge without isolation (the cost of isolation alone): "
              + costs(result, by_name["canonical / judge, isolation=none"]) + ". The plain subprocess starts a full "
              "interpreter (site included) per program and per io input; the judge's runner starts one with -I -S per "
              "program and forks per io input, hence its lower CPU. The hostile mix is dominated by its timeouts (3 tests x "
              f"{result['test_timeout_s']} s for the loops and sleeps) and by the CPU the busy programs burn until "
              "the wall limit kills them; every hostile item was contained (tests/test_sandbox_hostile.py)."]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
