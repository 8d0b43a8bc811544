"""Hostile programs against the code reward (reward/code.py, reward/sandbox.py): each is contained.

Real sandboxes only (bubblewrap and/or unshare, whichever works here; each backend that works is tested),
real judge subprocesses, no mocks. Each case checks the reward, what the host looks like afterwards (files,
processes of sandbox uids, a sibling process), and that an honest program scored in the same batch still
gets its reward. Network cases only try loopback, a public IP literal and a DNS lookup from INSIDE a
fresh network namespace: no packet can leave it (it has no route). Nothing here runs without isolation.
"""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from reward.code import CodeScorer
from reward.sandbox import UID_RANGE, SandboxUnavailable, interpreter, probe, resolve
from tests.reward_helpers import code_scorer

ROOT = Path(__file__).resolve().parent.parent
WORKING = [b for b in ("bwrap", "unshare") if probe(b) is None]
HONEST = ("```python\ndef add(a, b):\n    return a + b\n```", json.dumps(
    {"entry_point": "add", "tests": ["assert add(1, 2) == 3", "assert add(2, 2) == 4"]}))


def test_a_sandbox_works_on_this_machine():
    """CI installs bubblewrap (scripts/setup.sh); as root, unshare works too. Without either, code rewards refuse."""
    assert WORKING, f"no sandbox: bwrap: {probe('bwrap')}; unshare: {probe('unshare')}"


def test_refusal_names_what_is_missing(monkeypatch, tmp_path):
    """With neither tool on PATH, `auto` refuses and says how to opt in; `none` must be asked for by name."""
    monkeypatch.setenv("PATH", "/nonexistent")
    probe.cache_clear()
    try:
        with pytest.raises(SandboxUnavailable, match="bwrap is not installed.*reward.code.isolation=none"):
            resolve("auto")
        assert resolve("none") == "none"
        from cluster.config import load_config
        from cluster.train import bad_input

        cfg = load_config(None, ["data.kind=code", f"data.train_path={ROOT / 'data' / 'code_sample.jsonl'}",
                                 "reward.kind=code", f"model.cache_dir={tmp_path}"])
        assert "code rewards need a sandbox" in bad_input(cfg)  # cluster.train refuses before starting anything
    finally:
        monkeypatch.undo()
        probe.cache_clear()


def sandbox_processes() -> list[int]:
    """Host pids whose uid is one of the sandbox uids (each sandbox runs as its own unprivileged uid)."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and UID_RANGE[0] <= entry.stat().st_uid < UID_RANGE[1]:
                found.append(int(entry.name))
        except OSError:
            continue
    return found


@pytest.fixture(params=WORKING)
def scorer(request):
    return code_scorer(isolation=request.param, test_timeout_s=1.0, parallel=2, processes=16, memory_mb=256,
                       output_bytes=1 << 16, batch_budget_s=60)


def run(scorer: CodeScorer, program: str, spec: dict, seconds: float = 30.0):
    """Score the hostile program next to an honest one; the honest one must still score 1; no sandbox
    process may outlive the batch; the whole batch stays within `seconds`."""
    start = time.monotonic()
    hostile, honest = scorer.score([(f"```python\n{program}\n```", json.dumps(spec)), HONEST])
    elapsed = time.monotonic() - start
    assert honest.reward == 1.0, honest
    assert elapsed < seconds, f"took {elapsed:.1f}s"
    for _ in range(50):
        if not sandbox_processes():
            break
        time.sleep(0.1)
    assert sandbox_processes() == [], "a sandboxed process outlived its batch"
    return hostile


def call_spec(test: str, entry: str = "f") -> dict:
    return {"entry_point": entry, "tests": [test]}


def test_fork_bomb(scorer):
    v = run(scorer, "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass\n"
                    "def f():\n    return 1\n", call_spec("assert f() == 1"))
    assert v.reward == 0.0 and v.error is not None


def test_memory_bomb_is_a_memory_error_inside(scorer):
    """The address-space limit turns the allocation into a MemoryError that the program sees."""
    v = run(scorer, "def f():\n    try:\n        x = bytearray(4 << 30)\n        return 'allocated'\n"
                    "    except MemoryError:\n        return 'refused'\n", call_spec("assert f() == 'refused'"))
    assert v.reward == 1.0, v


def test_infinite_loop_and_sleep_time_out(scorer):
    for body in ("while True:\n        pass", "import time\n    time.sleep(100)"):
        v = run(scorer, f"def f():\n    {body}\n", {"entry_point": "f", "tests": ["assert f() == 1"] * 3})
        assert v.reward == 0.0 and v.timed_out and v.error.startswith("sandbox: Timeout")


def test_busy_threads_and_processes_are_killed_with_the_sandbox(scorer):
    program = ("import os, threading\n"
               "for _ in range(4):\n    threading.Thread(target=lambda: [0 for _ in iter(int, 1)], daemon=True).start()\n"
               "for _ in range(3):\n    if os.fork() == 0:\n        while True:\n            pass\n"
               "def f(x):\n    return x * 2\n")
    v = run(scorer, program, call_spec("assert f(21) == 42"))
    assert v.reward in (0.0, 1.0)  # honest either way; `run` checks that nothing survived the batch


def test_network_is_unreachable_and_fails_fast(scorer):
    host = socket.socket()
    host.bind(("127.0.0.1", 0))
    host.listen(1)
    host.settimeout(0.5)
    port = host.getsockname()[1]
    program = ("import socket, time\n"
               "def f(port):\n    out = []\n"
               "    for addr in [('127.0.0.1', port), ('1.1.1.1', 53), ('8.8.8.8', 443)]:\n"
               "        t = time.time()\n"
               "        try:\n            socket.create_connection(addr, timeout=3).close()\n            out.append('open')\n"
               "        except OSError:\n            out.append('blocked' if time.time() - t < 0.5 else 'slow')\n"
               "    try:\n        socket.getaddrinfo('example.com', 80)\n        out.append('resolved')\n"
               "    except OSError:\n        out.append('blocked')\n"
               "    return out\n")
    v = run(scorer, program, call_spec(f"assert f({port}) == ['blocked'] * 4"))
    with pytest.raises(socket.timeout):
        host.accept()  # nothing reached the host's listener
    host.close()
    assert v.reward == 1.0, v


def test_host_files_are_neither_readable_nor_writable(scorer, tmp_path):
    secret = tmp_path / "secret.txt"
    secret.write_text("top secret")
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me")
    before = sorted(os.listdir("/tmp"))
    targets = [str(secret), "/etc/shadow", "/etc/passwd", str(Path.home() / ".bashrc"), str(ROOT / "README.md"),
               "/proc/1/environ"]
    program = ("import os, shutil\n"
               "def f(targets, victim, tmpdir, root):\n    seen = []\n"
               "    for t in targets:\n        try:\n            seen.append(open(t).read(20))\n        except OSError:\n            pass\n"
               "    for d in [os.path.expanduser('~'), root, tmpdir, '/root', '/home']:\n"
               "        try:\n            seen.extend(os.listdir(d))\n        except OSError:\n            pass\n"
               "    for action in [lambda: os.remove(victim), lambda: shutil.rmtree(tmpdir),\n"
               "                   lambda: open(tmpdir + '/owned', 'w').write('x'), lambda: open('/usr/owned', 'w'),\n"
               "                   lambda: open('/etc/owned', 'w')]:\n"
               "        try:\n            action()\n            seen.append('wrote')\n        except OSError:\n            pass\n"
               "    open('/tmp/private-scratch', 'w').write('only in the sandbox')\n"
               "    return seen\n")
    allowed = set(Path(interpreter()[1]).parts)  # the interpreter's own path, bound read-only, may show in /root
    v = run(scorer, program, call_spec(f"assert set(f({targets!r}, {str(victim)!r}, {str(tmp_path)!r}, "
                                       f"{str(ROOT)!r})) <= {allowed!r}"))
    assert v.reward == 1.0, v
    assert victim.read_text() == "keep me" and secret.read_text() == "top secret"
    assert sorted(os.listdir(tmp_path)) == ["secret.txt", "victim.txt"]
    assert not Path("/usr/owned").exists() and not Path("/etc/owned").exists()
    assert "private-scratch" not in set(os.listdir("/tmp")) - set(before)


def test_killing_the_parent_and_siblings_and_signals(scorer):
    sibling = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        program = ("import os, signal\n"
                   f"for pid in [os.getppid(), 1, {sibling.pid}, {os.getpid()}, -1]:\n"
                   "    try:\n        os.kill(pid, signal.SIGKILL)\n    except OSError:\n        pass\n"
                   "def f():\n    return 1\n")
        v = run(scorer, program, call_spec("assert f() == 1"))
        assert sibling.poll() is None, "a host process was killed from inside the sandbox"
        assert v.reward in (0.0, 1.0)
        stopped = run(scorer, "import os, signal\ndef f():\n    os.kill(os.getpid(), signal.SIGSTOP)\n    return 1\n",
                      call_spec("assert f() == 1"))
        # bwrap: the program stops and its test times out; unshare: the runner is the namespace's init,
        # which ignores signals sent from inside, so the call returns. Either way `run` saw it contained.
        assert (stopped.reward == 0.0 and stopped.timed_out) or (stopped.reward == 1.0 and stopped.error is None)
    finally:
        sibling.kill()
        sibling.wait()


def test_huge_stdout(scorer):
    v = run(scorer, "def f():\n    print('x' * (50 << 20))\n    return 1\n", call_spec("assert f() == 1"))
    assert v.reward == 1.0  # call mode: the program's stdout goes nowhere
    io = run(scorer, "while True:\n    print('y' * 65536)\n", {"io": [{"input": "", "output": "y"}]})
    assert io.reward == 0.0 and io.error.startswith("sandbox: OutputLimit")


def test_vacuous_passes_score_zero(scorer):
    for program in ("import os\nos._exit(0)", "import sys\nsys.exit(0)", "raise SystemExit",
                    "def g():\n    return 1\n"):  # exits before any test, or no entry point
        v = run(scorer, program, call_spec("assert f() == 1"))
        assert v.reward == 0.0 and v.error is not None, (program, v)
    v = run(scorer, "def f():\n    import os\n    os._exit(0)\n", call_spec("assert f() == 1"))
    assert v.reward == 0.0 and v.error.startswith("sandbox: Crashed")


def test_harness_cannot_be_fooled(scorer):
    """Patched builtins, always-equal objects, int subclasses, printed success markers, fake replies written
    to every descriptor: the comparison happens in the judge, on plain values it decoded."""
    fakes = ("import builtins, os\n"
             "builtins.AssertionError = type('NoError', (Exception,), {})\n"
             "print('PASSED', 'OK', 'All tests passed')\n"
             "for fd in range(3, 64):\n    try:\n        os.write(fd, b'{\"value\": true}\\n{\"value\": 1}\\n')\n"
             "    except OSError:\n        pass\n")
    programs = [
        fakes + "def f():\n    return 0\n",
        "class Eq:\n    def __eq__(self, other):\n        return True\ndef f():\n    return Eq()\n",
        "class I(int):\n    def __eq__(self, other):\n        return True\ndef f():\n    return I(0)\n",
        "def f():\n    import sys\n    sys.modules['builtins'].__dict__['assert'] = None\n    return 0\n",
    ]
    for program in programs:
        v = run(scorer, program, call_spec("assert f() == 12345"))
        assert v.reward == 0.0, (program, v)


def test_tests_and_other_samples_are_out_of_reach(scorer):
    """The expected value is a token the program could only learn by reading the tests (or another
    sample's): it searches /proc, /tmp, its descriptors and the repository and finds nothing."""
    program = ("import os, re\n"
               "def f():\n    found = []\n"
               "    paths = ['/proc/%s/%s' % (p, n) for p in os.listdir('/proc') if p.isdigit() for n in ('cmdline', 'environ')]\n"
               "    paths += ['/proc/self/fd/%s' % fd for fd in range(64)]\n"
               "    for d in ['/tmp', " + repr(str(ROOT / "reward")) + ", " + repr(str(ROOT / "data")) + "]:\n"
               "        try:\n            paths += [os.path.join(d, n) for n in os.listdir(d)]\n        except OSError:\n            pass\n"
               "    for p in paths:\n        try:\n            with open(p, 'rb') as fh:\n                found += re.findall(rb'tok-[0-9a-f]{8}', fh.read(1 << 16))\n"
               "        except OSError:\n            pass\n"
               "    return found[0].decode() if found else 'nothing'\n")
    spec = call_spec("assert f() == 'tok-" + os.urandom(4).hex() + "'")
    other = json.dumps(call_spec("assert f() == 'tok-" + os.urandom(4).hex() + "'"))
    hostile, neighbour = scorer.score([(f"```python\n{program}\n```", json.dumps(spec)), (f"```python\n{program}\n```", other)])
    assert hostile.reward == 0.0 and neighbour.reward == 0.0


def test_canonical_solutions_pass_and_mutants_fail(scorer):
    from cluster.loop.data import read_code_jsonl

    rows = [json.loads(line) for line in (ROOT / "data" / "code_sample.jsonl").read_text().splitlines()]
    specs = [p.answer for p in read_code_jsonl(str(ROOT / "data" / "code_sample.jsonl"), "plain")]
    canonical = scorer.score([(f"```python\n{r['canonical_solution']}```", s) for r, s in zip(rows, specs)])
    assert [v.reward for v in canonical] == [1.0] * len(rows)
    all_pass = code_scorer(mode="all_pass", isolation=scorer.backend, parallel=2, batch_budget_s=40.0)
    mutants = all_pass.score([(f"```python\n{r['mutated_solution']}```", s) for r, s in zip(rows, specs)])
    assert [v.reward for v in mutants] == [0.0] * len(rows)
    fractions = scorer.score([(f"```python\n{r['mutated_solution']}```", s) for r, s in zip(rows, specs)])
    assert all(v.reward < 1.0 for v in fractions) and any(0 < v.reward < 1 for v in fractions)


def test_public_mbpp_sample_converts_and_its_solutions_pass(scorer, tmp_path):
    """Ten MBPP problems (google-research/google-research@2251e8c67a7fe7d6348714967ee101080b28e956,
    mbpp/mbpp.jsonl, tasks 2-4, 7-12, 17; CC-BY-4.0): the converter reproduces data/mbpp_sample.jsonl and
    the authors' solutions pass their tests in the sandbox."""
    from cluster.code_sets import main
    from cluster.loop.data import read_code_jsonl

    out = tmp_path / "mbpp.jsonl"
    main(["mbpp", str(ROOT / "tests" / "data" / "mbpp_raw_sample.jsonl"), str(out),
          "--commit", "2251e8c67a7fe7d6348714967ee101080b28e956"])
    assert out.read_text() == (ROOT / "data" / "mbpp_sample.jsonl").read_text()
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    specs = [p.answer for p in read_code_jsonl(str(out), "plain")]
    verdicts = scorer.score([(f"```python\n{r['canonical_solution']}\n```", s) for r, s in zip(rows, specs)])
    assert [v.reward for v in verdicts] == [1.0] * 10
    assert [v.reward for v in scorer.score([("```python\ndef similar_elements(a, b):\n    return ()\n```", specs[0])])] == [0.0]
