"""scripts/setup.sh on an ordinary machine: it refuses a Python other than 3.11 by name, finds PyTorch's
CPU index when pip cannot see the locked CPU torch (a real pip with no index), and its stack check loads
vLLM's compiled kernels. Real bash, pip and vLLM; the only stand-in is a fake `python` reporting 3.12."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_setup_refuses_a_python_other_than_3_11_by_name(tmp_path):
    fake = tmp_path / "python3.12"
    fake.write_text("#!/bin/sh\necho 3.12\n")
    fake.chmod(0o755)
    out = subprocess.run(["bash", "scripts/setup.sh"], cwd=ROOT, env={**os.environ, "PYTHON": str(fake)},
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 1
    assert "needs Python 3.11" in out.stderr and "is Python 3.12" in out.stderr


def test_a_pip_that_cannot_see_the_cpu_torch_is_pointed_at_pytorchs_cpu_index():
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_")}
    env.update(PIP_CONFIG_FILE=os.devnull, PIP_NO_INDEX="1")  # a pip that knows no wheel at all
    out = subprocess.run([sys.executable, "scripts/stack_check.py", "torch-index"], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "https://download.pytorch.org/whl/cpu"


def test_the_stack_check_loads_vllms_compiled_kernels():
    out = subprocess.run([sys.executable, "scripts/stack_check.py", "imports"], cwd=ROOT,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
