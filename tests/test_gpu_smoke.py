"""scripts/gpu_smoke.sh's reduced mode on CPU (`--device cpu`): the project's learner ranks (DeepSpeed
ZeRO-3 bf16 on gloo, in spawned processes) take 3 steps, their weights reach a stand-in receiver
process over the gloo broadcast group bit for bit, and the 7B-shaped memory runs (scaled down) report.
Everything but the GPU-only calls (NCCL, CUDA IPC, CUDA memory) is the code the GPU run executes."""
from __future__ import annotations

import json
import subprocess

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
