"""cluster/cost_model.py: the step-time formulas against hand-computed values, calibration recovering the
constants that generated a sweep, and the CLI on the committed sweep measurements."""
from __future__ import annotations

import re

import pytest

from cluster.cost_model import Hardware, Workload, calibrate, main, predict
from tests.conftest import ROOT


def test_predict_matches_the_formulas_by_hand():
    w = Workload(params=1e9, prompts=10, samples_per_prompt=4, prompt_tokens=100, response_tokens=400,
                 weight_bytes=2e9, reference_model=True)
    hw = Hardware(decode_tokens_per_s=1000, train_flops=1e14, link_bytes_per_s=1e10, reload_bytes_per_s=4e9)
    p = predict(w, hw, rollout_units=2, learner_units=4)
    assert p["generate_s"] == pytest.approx(40 * 400 / (2 * 1000))  # 8 s
    assert p["train_s"] == pytest.approx(6 * 1e9 * 500 * 40 * 4 / 3 / (4 * 1e14))  # 0.4 s, x4/3 for the reference
    assert p["sync_s"] == pytest.approx(2e9 / 1e10 + 2e9 / 4e9)  # 0.7 s
    assert p["step_s"] == pytest.approx(8 + 0.4 + 0.7)


def test_calibration_recovers_the_constants_of_a_generated_sweep():
    truth = Hardware(decode_tokens_per_s=1500, train_flops=2e9, link_bytes_per_s=5e8, reload_bytes_per_s=5e8)
    w = Workload(params=3e6, prompts=0, samples_per_prompt=8, prompt_tokens=14, response_tokens=26, weight_bytes=1.2e7)
    rows = []
    for prompts, ranks in [(8, 1), (8, 2), (32, 1), (32, 2)]:
        w.prompts = prompts
        p = predict(w, truth, 1, ranks)
        samples = prompts * 8
        rows.append({"train.prompts_per_step": str(prompts), "resource_units": str(1 + ranks),
                     "step_s": str(p["step_s"]), "wait_rollout_s": str(p["generate_s"]), "train_s": str(p["train_s"]),
                     "sync_s": str(p["sync_s"]), "gen_tokens_per_s": str(samples * 26 / p["step_s"])})
    hw = calibrate(rows, w.params, w.prompt_tokens, w.response_tokens, 8, 1, w.weight_bytes)
    assert hw.decode_tokens_per_s == pytest.approx(1500)
    assert hw.train_flops == pytest.approx(2e9)
    assert hw.link_bytes_per_s == pytest.approx(5e8) and hw.reload_bytes_per_s == pytest.approx(5e8)


def test_cli_fits_the_committed_sweep_and_predicts_the_7b_preset(capsys):
    assert main(["--sweep", str(ROOT / "docs" / "sweep" / "sweep.csv"), "--preset", "qwen7b-h100"]) == 0
    out = capsys.readouterr().out
    pairs = [(float(m), float(p)) for m, p in re.findall(r"measured ([\d.]+)s predicted ([\d.]+)s", out)]
    assert len(pairs) == 6  # every sweep point
    for measured, predicted in pairs:  # the model's shape fits the measured CPU points within 35%
        assert abs(predicted - measured) / measured < 0.35, (measured, predicted)
    splits = re.findall(r"qwen7b-h100: (\d+) rollout GPUs \+ (\d+) learner GPUs -> generate_s ([\d.]+)", out)
    assert [(int(r), int(l)) for r, l, _ in splits] == [(4, 4), (8, 8), (12, 4), (16, 16)]
    generate = {int(r): float(g) for r, _, g in splits}
    assert generate[8] == pytest.approx(generate[4] / 2, rel=0.01)  # generation time halves with twice the engines
