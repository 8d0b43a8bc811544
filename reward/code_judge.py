"""The judge process: runs each program's tests against its sandbox and says how many passed.

    python -m reward.code_judge < job.json   (one JSON object; one JSON line per item comes back)

Started by the reward actor (reward/code.py) as a subprocess, so that nothing of a program runs in the
actor. The judge holds the tests and the expected outputs, and the program never sees them:

- call tests (`tests`: assert statements, or a source defining `check(candidate)`): the test code runs
  HERE, with the entry point bound to a proxy that sends the arguments into the sandbox and gets the
  return value back as plain data (reward/sandbox_runner.encode). The comparison happens here, on
  builtin values only. A test passes when its code completes AND it called the program at least once.
- io tests (`io`: input/output pairs): the program runs as a script in the sandbox with the input as
  stdin; its exit status must be 0 and its stdout must equal the expected output (trailing whitespace
  of lines and trailing blank lines aside).

A test that overruns `test_timeout_s`, or a sandbox that dies (a limit hit, os._exit, a killed runner),
fails that test; the sandbox is killed with everything in it and a fresh one serves the next test. A
program that does not load (syntax error, exception, exit at import, missing entry point) fails all.
"""
from __future__ import annotations

import builtins
import json
import os
import selectors
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from typing import Any, Callable

from reward.sandbox import Limits, Sandbox
from reward.sandbox_runner import Unencodable, decode, encode


STARTUP_S = 20.0  # a sandbox's own start-up (namespaces, mounts, interpreter), not charged to the program


class SandboxEvent(Exception):
    """The sandbox stopped answering: `kind` is Timeout, Crashed, OutputLimit or BadReply."""

    def __init__(self, kind: str, detail: str = "") -> None:
        super().__init__(f"{kind}: {detail}" if detail else kind)
        self.kind = kind


class CandidateFailed(Exception):
    """The program answered, but not with a value (it raised, or returned an unencodable object)."""


@dataclass
class Outcome:
    passed: int
    total: int
    timed_out: bool = False
    event: str | None = None  # "Kind: detail" of the first abnormal thing that happened


class Session:
    """One sandboxed runner with the program loaded; requests and replies with a deadline."""

    def __init__(self, backend: str, limits: Limits, job: dict[str, Any], load_timeout: float) -> None:
        """Start a sandbox (its start-up may take up to STARTUP_S on a loaded machine), then load the
        program within `load_timeout` of the sandbox being ready."""
        self.box, self.limits, self.buffer = Sandbox(backend, limits), limits, b""
        self.load_reply: dict[str, Any] = {}
        try:
            self._read_line(time.monotonic() + STARTUP_S)  # the runner's "ready": confinement done
            self.load_reply = self.request(job, time.monotonic() + load_timeout)
        except SandboxEvent:
            self.close()
            raise

    def request(self, message: dict[str, Any], deadline: float) -> dict[str, Any]:
        try:
            self.box.proc.stdin.write((json.dumps(message) + "\n").encode())  # type: ignore[union-attr]
            self.box.proc.stdin.flush()  # type: ignore[union-attr]
        except (BrokenPipeError, OSError):
            raise SandboxEvent("Crashed", "the sandbox closed its input") from None
        line = self._read_line(deadline)
        try:
            reply = json.loads(line)
        except (ValueError, RecursionError):
            raise SandboxEvent("BadReply", "not JSON") from None
        if not isinstance(reply, dict):
            raise SandboxEvent("BadReply", "not an object")
        return reply

    def _read_line(self, deadline: float) -> bytes:
        fd = self.box.proc.stdout.fileno()  # type: ignore[union-attr]
        with selectors.DefaultSelector() as selector:
            selector.register(fd, selectors.EVENT_READ)
            while b"\n" not in self.buffer:
                if len(self.buffer) > self.limits.output_bytes:
                    raise SandboxEvent("OutputLimit", f"a reply over {self.limits.output_bytes} bytes")
                left = deadline - time.monotonic()
                if left <= 0 or not selector.select(left):
                    raise SandboxEvent("Timeout")
                chunk = os.read(fd, 1 << 16)
                if not chunk:
                    status = self.box.proc.poll()
                    raise SandboxEvent("Crashed", f"exit status {status}" if status is not None else "closed its output")
                self.buffer += chunk
        line, _, self.buffer = self.buffer.partition(b"\n")
        return line

    def close(self, graceful: bool = False) -> None:
        self.box.kill(graceful)


def normalize_output(text: str) -> str:
    return "\n".join(line.rstrip() for line in text.strip("\n").split("\n")).rstrip()


class ProgramJudge:
    """Runs one program's tests (see the module docstring)."""

    def __init__(self, source: str, spec: dict[str, Any], backend: str, limits: Limits, test_timeout_s: float) -> None:
        self.source, self.spec, self.backend, self.limits, self.timeout = source, spec, backend, limits, test_timeout_s
        self.mode = "io" if "io" in spec else "call"
        self.tests: list[Any] = spec["io"] if self.mode == "io" else spec["tests"]
        self.outcome = Outcome(0, len(self.tests))
        self.session: Session | None = None
        self.loaded_once = False

    def note(self, kind: str, detail: str = "") -> None:
        self.outcome.timed_out |= kind == "Timeout"
        if self.outcome.event is None:
            self.outcome.event = f"{kind}: {detail}" if detail else kind

    def _session(self) -> Session | None:
        """The live session, or a fresh one; None when the program does not load (all tests fail)."""
        if self.session is not None:
            return self.session
        job = {"mode": self.mode, "source": self.source, "entry_point": self.spec.get("entry_point", "")}
        try:
            session = Session(self.backend, self.limits, job, self.timeout)
        except SandboxEvent as e:
            self.note(e.kind if self.loaded_once or e.kind != "Crashed" else "LoadCrashed", str(e).partition(": ")[2])
            return None
        if "loaded" not in session.load_reply:
            session.close()
            self.note("LoadError", str(session.load_reply.get("load_error", "no load reply"))[:80])
            return None
        self.loaded_once, self.session = True, session
        return session

    def _drop_session(self, graceful: bool = False) -> None:
        if self.session is not None:
            self.session.close(graceful)
            self.session = None

    def run(self) -> Outcome:
        try:
            for test in self.tests:
                session = self._session()
                if session is None:
                    if not self.loaded_once:
                        break  # it never loads: every test fails, without a fresh sandbox per test
                    continue
                deadline = time.monotonic() + self.timeout
                try:
                    passed = self._io_test(session, test, deadline) if self.mode == "io" else self._call_test(session, test, deadline)
                except SandboxEvent as e:
                    self.note(e.kind, str(e).partition(": ")[2])
                    self._drop_session()
                    passed = False
                self.outcome.passed += passed
            self._drop_session(graceful=True)
        finally:
            self._drop_session()
        return self.outcome

    def _io_test(self, session: Session, test: dict[str, str], deadline: float) -> bool:
        reply = session.request({"stdin": test["input"]}, deadline)
        if reply.get("output_limit"):
            raise SandboxEvent("OutputLimit", "stdout over the limit")
        stdout, status = reply.get("stdout"), reply.get("exit")
        return isinstance(stdout, str) and status == 0 and normalize_output(stdout) == normalize_output(test["output"])

    def _call_test(self, session: Session, test: str, deadline: float) -> bool:
        calls = [0]

        def candidate(*args: Any) -> Any:
            calls[0] += 1
            try:
                message = {"args": encode(list(args))}
            except Unencodable:
                raise CandidateFailed("the test passes an argument that cannot be sent") from None
            reply = session.request(message, deadline)
            if "value" in reply:
                try:
                    return decode(reply["value"])
                except (ValueError, TypeError, RecursionError):
                    raise CandidateFailed("undecodable value") from None
            raise CandidateFailed(str(reply.get("raised") or reply.get("unencodable") or "no value"))

        namespace: dict[str, Any] = {"__builtins__": builtins, "__name__": "tests"}
        try:
            exec(self.spec.get("setup", ""), namespace)  # noqa: S102 - the dataset's test code, not the program's
            namespace[self.spec["entry_point"]] = candidate
            exec(test, namespace)  # noqa: S102
            check: Callable[..., Any] | None = namespace.get("check")
            if callable(check):
                check(candidate)
        except SandboxEvent:
            raise
        except Exception:  # noqa: BLE001 - a failed assert, a raised call, a type error in the comparison
            return False
        return calls[0] > 0  # a test that never ran the program proves nothing


def judge_items(job: dict[str, Any], emit: Callable[[dict[str, Any]], None]) -> None:
    limits = Limits(**job["limits"])

    def one(index: int) -> None:
        source, spec = job["items"][index]
        try:
            outcome = ProgramJudge(source, spec, job["backend"], limits, job["test_timeout_s"]).run()
        except Exception as e:  # noqa: BLE001 - a judge bug fails this item, not the batch
            outcome = Outcome(0, 1, event=f"JudgeError: {type(e).__name__}: {e}"[:200])
        emit({"i": index, **asdict(outcome)})

    with ThreadPoolExecutor(max(1, job.get("parallel", 1))) as pool:
        list(pool.map(one, range(len(job["items"]))))


def main() -> None:
    job = json.loads(sys.stdin.buffer.read())
    out, lock = sys.stdout, threading.Lock()

    def emit(line: dict[str, Any]) -> None:
        with lock:
            out.write(json.dumps(line) + "\n")
            out.flush()

    judge_items(job, emit)


if __name__ == "__main__":
    main()
