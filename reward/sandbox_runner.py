"""What runs INSIDE the sandbox (stdlib only; its source is handed to the sandbox's interpreter with -c).

It finishes the confinement (for the unshare backend: a private root of read-only binds and a small
tmpfs, then chroot), sets the resource limits, drops to an unprivileged uid, and then serves the judge
over its stdin/stdout: it loads the program and answers requests ("call the entry point with these
arguments", "run the program on this stdin") with plain data. It never sees a test or an expected
output, and it holds no verdict: everything in here, this loop included, is at the program's mercy,
and the judge (reward/code_judge.py) trusts nothing it says beyond "this is the value I computed".

The value encoding (`encode` / `decode`) is shared with the judge: exact builtin types only (an object
of a user-defined class, an int subclass with its own __eq__, ... is refused), so a program cannot
hand back an object that "equals" anything.
"""
from __future__ import annotations

import json
import os
import sys
from typing import Any

CONTAINERS = {"l": list, "t": tuple, "s": set, "f": frozenset}
MAX_DEPTH = 50


class Unencodable(TypeError):
    pass


def encode(value: Any, depth: int = 0) -> Any:
    """A JSON-able tree of `value`: None/bool/int/float/str as themselves, containers tagged."""
    if depth > MAX_DEPTH:
        raise Unencodable("nested too deep")
    kind = type(value)
    if value is None or kind in (bool, int, float, str):
        return value
    for tag, container in CONTAINERS.items():
        if kind is container:
            items = sorted(value, key=repr) if container in (set, frozenset) else value
            return {tag: [encode(v, depth + 1) for v in items]}
    if kind is dict:
        return {"d": [[encode(k, depth + 1), encode(v, depth + 1)] for k, v in value.items()]}
    if kind is bytes:
        return {"b": value.hex()}
    raise Unencodable(kind.__name__)


def decode(tree: Any, depth: int = 0) -> Any:
    """The inverse of `encode`; anything else raises ValueError (the judge treats it as a wrong value)."""
    if depth > MAX_DEPTH:
        raise ValueError("nested too deep")
    if tree is None or type(tree) in (bool, int, float, str):
        return tree
    if type(tree) is not dict or len(tree) != 1:
        raise ValueError("not an encoded value")
    (tag, body), = tree.items()
    if tag == "b" and type(body) is str:
        return bytes.fromhex(body)
    if type(body) is not list:
        raise ValueError("not an encoded value")
    if tag == "d":
        return {decode(k, depth + 1): decode(v, depth + 1) for k, v in (_pair(p) for p in body)}
    if tag in CONTAINERS:
        return CONTAINERS[tag](decode(v, depth + 1) for v in body)
    raise ValueError(f"unknown tag {tag!r}")


def _pair(item: Any) -> tuple[Any, Any]:
    if type(item) is not list or len(item) != 2:
        raise ValueError("not a key/value pair")
    return item[0], item[1]


# ---- confinement (runs before the program is read) ----

def _libc() -> Any:
    import ctypes

    return ctypes.CDLL(None, use_errno=True)


def _mount(libc: Any, source: str | None, target: str, fstype: str | None, flags: int, data: str | None = None) -> None:
    enc = (lambda s: s.encode() if s is not None else None)
    if libc.mount(enc(source), enc(target), enc(fstype), flags, enc(data)) != 0:
        import ctypes

        raise OSError(ctypes.get_errno(), f"mount {source} on {target}")


def build_root(plan: dict[str, Any]) -> None:
    """unshare backend: a tmpfs root with read-only binds of `plan["binds"]`, symlinks, /proc, a few
    /dev nodes and a size-capped /tmp, then chroot into it (we are root in fresh mount and pid namespaces)."""
    MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC, MS_REMOUNT, MS_BIND, MS_REC, MS_PRIVATE = 1, 2, 4, 8, 32, 4096, 16384, 1 << 18
    libc, root = _libc(), plan["root"]
    _mount(libc, None, "/", None, MS_REC | MS_PRIVATE)
    _mount(libc, "tmpfs", root, "tmpfs", MS_NOSUID | MS_NODEV, "size=1m,mode=755")
    for path in plan["binds"]:
        target = root + path
        if os.path.isdir(path):
            os.makedirs(target, exist_ok=True)
        else:
            os.makedirs(os.path.dirname(target), exist_ok=True)
            open(target, "w").close()
        _mount(libc, path, target, None, MS_BIND | MS_REC)
        ro = 0 if path.startswith("/dev/") else MS_RDONLY
        _mount(libc, None, target, None, MS_REMOUNT | MS_BIND | MS_NOSUID | ro | (0 if ro == 0 else MS_NODEV))
    for link, target in plan["symlinks"].items():
        os.symlink(target, root + link)
    os.makedirs(root + "/proc")
    _mount(libc, "proc", root + "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)
    os.makedirs(root + "/tmp")
    _mount(libc, "tmpfs", root + "/tmp", "tmpfs", MS_NOSUID | MS_NODEV, f"size={plan['tmp_bytes']},mode=1777")
    _mount(libc, None, root, None, MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID | MS_NODEV)
    os.chroot(root)
    os.chdir("/tmp")


def confine(settings: dict[str, Any]) -> None:
    """Limits, then (when we are root) an unprivileged uid of our own, then no way back up."""
    import resource

    if settings.get("plan"):
        build_root(settings["plan"])
    limits = settings["limits"]
    for name, value in (("RLIMIT_CPU", limits["cpu_s"]), ("RLIMIT_AS", limits["memory_bytes"]),
                        ("RLIMIT_NPROC", limits["processes"]), ("RLIMIT_NOFILE", limits["open_files"]),
                        ("RLIMIT_FSIZE", limits["file_bytes"]), ("RLIMIT_CORE", 0)):
        resource.setrlimit(getattr(resource, name), (value, value))
    libc = _libc()  # loaded before the uid changes (the interpreter's files may be root-only on the host)
    if os.getuid() == 0 and settings["uid"] is not None:
        uid = settings["uid"]
        os.setgroups([])
        os.setgid(uid)
        os.setuid(uid)
    libc.prctl(38, 1, 0, 0, 0)  # PR_SET_NO_NEW_PRIVS: setuid binaries stay unprivileged
    os.environ.clear()
    os.environ.update({"PATH": "/usr/bin:/bin", "HOME": "/tmp", "LANG": "C.UTF-8"})


# ---- serving the judge ----

class Channel:
    """Newline-delimited JSON over two private file descriptors (the program gets /dev/null as 0, 1, 2)."""

    def __init__(self) -> None:
        self.inp = os.fdopen(os.dup(0), "rb")
        self.out = os.dup(1)
        null = os.open("/dev/null", os.O_RDWR)
        for fd in (0, 1, 2):
            os.dup2(null, fd)
        os.close(null)

    def read(self) -> Any:
        line = self.inp.readline()
        if not line:
            raise SystemExit(0)
        return json.loads(line)

    def write(self, message: dict[str, Any]) -> None:
        data = (json.dumps(message) + "\n").encode()
        while data:
            data = data[os.write(self.out, data):]


def run_io(code: Any, stdin: str, channel: Channel, max_output: int) -> dict[str, Any]:
    """Run the program as a script in a fresh forked child with `stdin`; its stdout comes back (capped)."""
    with open("/tmp/.stdin", "w") as f:
        f.write(stdin)
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(read_end)
        os.close(channel.out)
        channel.inp.close()
        os.dup2(os.open("/tmp/.stdin", os.O_RDONLY), 0)
        os.dup2(write_end, 1)
        status = 0
        try:
            exec(code, {"__name__": "__main__"})  # noqa: S102 - the program, inside the sandbox
        except SystemExit as e:
            status = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
        except BaseException:  # noqa: BLE001
            status = 1
        try:
            sys.stdout.flush()
        except BaseException:  # noqa: BLE001
            status = status or 1
        os._exit(status)
    os.close(write_end)
    chunks, size = [], 0
    while size <= max_output:
        chunk = os.read(read_end, 65536)
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
    if size > max_output:
        os.kill(pid, 9)
    os.close(read_end)
    _, status = os.waitpid(pid, 0)
    if size > max_output:
        return {"output_limit": True}
    exit_code = os.waitstatus_to_exitcode(status)
    return {"stdout": b"".join(chunks).decode("utf-8", "replace"), "exit": exit_code}


def serve(settings: dict[str, Any]) -> None:
    channel = Channel()
    channel.write({"ready": True})  # confined: the judge's clock for the program starts now
    job = channel.read()
    try:
        code = compile(job["source"], "<program>", "exec")
        namespace: dict[str, Any] = {"__name__": "solution"}
        if job["mode"] == "call":
            sys.setrecursionlimit(10_000)
            exec(code, namespace)  # noqa: S102 - the program, inside the sandbox
            if not callable(namespace.get(job["entry_point"])):
                channel.write({"load_error": "MissingEntryPoint"})
                return
    except BaseException as e:  # noqa: BLE001 - SyntaxError, SystemExit, anything the program raises
        channel.write({"load_error": type(e).__name__})
        return
    channel.write({"loaded": True})
    while True:
        request = channel.read()
        if job["mode"] == "io":
            channel.write(run_io(code, request["stdin"], channel, settings["limits"]["output_bytes"]))
            continue
        try:
            args = decode(request["args"])
            result = namespace[job["entry_point"]](*args)
            reply = {"value": encode(result)}
        except Unencodable as e:
            reply = {"unencodable": str(e)}
        except BaseException as e:  # noqa: BLE001
            reply = {"raised": type(e).__name__}
        channel.write(reply)


if __name__ == "__main__":
    config = json.loads(sys.argv[1])
    confine(config)
    serve(config)
