"""scripts/gpu_smoke.sh on CPU: its torch-only mode (scripts/gpu_smoke_torch.py) with the heavy
packages made unimportable, and its reduced mode (`--device cpu`): the project's learner ranks (DeepSpeed
ZeRO-3 bf16 on gloo, in spawned processes) take 3 steps, their weights reach a stand-in receiver
process over the gloo broadcast group bit for bit, and the 7B-shaped memory runs (scaled down) report.
Everything but the GPU-only calls (NCCL, CUDA IPC, CUDA memory) is the code the GPU run executes."""
from __future__ import annotations

import json
import os
import subprocess
import time

import torch

from tests.conftest import ROOT


def test_fingerprint_sees_a_changed_or_moved_byte():
    from scripts.gpu_smoke import fingerprint

    t = torch.arange(1000, dtype=torch.int16).to(torch.bfloat16)
    flipped, swapped = t.clone(), t.clone()
    flipped.view(torch.uint8)[7] ^= 1
    raw = swapped.view(torch.uint8)
    raw[10], raw[500] = int(raw[500]), int(raw[10])
    assert fingerprint(t) == fingerprint(t.clone())
    assert fingerprint(flipped) != fingerprint(t) and fingerprint(swapped) != fingerprint(t)


def test_reduced_mode_on_cpu(tmp_path):
    proc = subprocess.run(["bash", "scripts/gpu_smoke.sh", "--device", "cpu", "--out", str(tmp_path)], cwd=ROOT,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "gpu smoke (reduced, cpu): all checks passed" in proc.stdout
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["checks"] == {"learner_steps_finite": True, "learner_grad_nonzero": True,
                                "learner_weights_moved": True, "broadcast_exact": True}
    steps = report["learner"]["steps"]
    assert len(steps) == 3 and report["learner"]["ranks"] == 2 and steps[0]["grad_norm"] != steps[2]["grad_norm"]
    assert report["sync"]["broadcast"]["backend"] == "gloo" and report["sync"]["bytes"] > 0
    assert report["sync"]["ipc"] == {"skipped": "CUDA IPC needs a GPU"}
    runs = report["layers_7b_shaped"]["runs"]
    assert [r["layers"] for r in runs] == [1, 2] and runs[1]["parameters"] > runs[0]["parameters"]


# Modules the torch-only mode must run without (a sitecustomize makes importing them fail, in every process).
BLOCKED = ("deepspeed", "pydantic", "hjson", "vllm", "transformers", "ray", "yaml", "cluster.config")
BLOCKER = """import sys
class _Blocked:
    def find_spec(self, name, path=None, target=None):
        if name in BLOCKED or name.split(".")[0] in BLOCKED:
            raise ImportError(f"{name} is not installed (blocked by the test)")
BLOCKED = set(%r)
sys.meta_path.insert(0, _Blocked())
"""


def _torch_mode(tmp_path, *args, env=None):
    site = tmp_path / "site"
    site.mkdir(exist_ok=True)
    (site / "sitecustomize.py").write_text(BLOCKER % (BLOCKED,))
    env = {**os.environ, "PYTHONPATH": str(site), **(env or {})}
    return subprocess.run(["bash", "scripts/gpu_smoke.sh", "--mode", "torch", "--device", "cpu", "--out",
                           str(tmp_path / "out"), *args], cwd=ROOT, capture_output=True, text=True, timeout=600, env=env)


def test_torch_mode_runs_its_cpu_fallback_without_deepspeed_pydantic_vllm_or_transformers(tmp_path):
    """Every phase in its own process, with DeepSpeed, pydantic, hjson, vLLM, transformers, Ray, PyYAML
    and the config schema unimportable: the CPU fallbacks run (accumulation, gloo broadcast, the layer
    mirror's saved bytes against cluster/planning/memory_model.py's formula, the chunked head), the GPU-only phases say
    why they skipped, and report.json holds every phase."""
    proc = _torch_mode(tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "gpu smoke (torch, cpu): all checks passed" in proc.stdout
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    phases = report["phases"]
    assert list(phases) == ["accumulation", "broadcast", "ipc", "layer_memory", "logprob_head", "adamw_step"]
    error = phases["accumulation"]["relative_error"]
    assert error["fp32"] < 1e-5 < 1e-3 < error["bf16"]
    assert phases["broadcast"]["backend"] == "gloo" and all(r["exact"] for r in phases["broadcast"]["ranks"])
    assert phases["ipc"]["skipped"] == "CUDA IPC needs a GPU" and "skipped" in phases["adamw_step"]
    layer = phases["layer_memory"]
    assert layer["layer"].startswith("torch mirror") and 0.75 < layer["ratio"] < 1.25
    assert set(phases["logprob_head"]["runs"]) == {"grad", "None"}
    assert report["checks"] == {"fp32_sum_exact": True, "bf16_sum_drifts": True, "broadcast_ran": True,
                                "broadcast_exact": True, "layer_activations_within_25pct": True}


def test_torch_mode_a_phase_past_its_timeout_is_ended_and_the_report_keeps_the_others(tmp_path):
    """The ipc phase hangs (REASONRL_SMOKE_HANG): it is killed at --phase-timeout-s, named in the report
    and the exit code, and the phases before and after it have their figures in report.json."""
    start = time.monotonic()
    proc = _torch_mode(tmp_path, "--phases", "accumulation,ipc,adamw_step", "--phase-timeout-s", "30",
                       env={"REASONRL_SMOKE_HANG": "ipc"})
    assert proc.returncode == 1 and "FAILED: ipc_ran" in proc.stdout, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert time.monotonic() - start < 240  # the hung phase ends at its 30 s timeout
    phases = json.loads((tmp_path / "out" / "report.json").read_text())["phases"]
    assert phases["ipc"]["error"] == "timeout: no result within 30 s"
    assert "relative_error" in phases["accumulation"] and "skipped" in phases["adamw_step"]
