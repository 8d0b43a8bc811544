"""Weights & Biases logging (`logging.wandb`), with the real wandb package in offline mode: the rows the
trainer logs are read back from the run file wandb writes (no W&B server is involved)."""
from __future__ import annotations

import json
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cluster.config import load_config
from tests.conftest import ROOT


def read_offline_run(run_dir: Path, wait_s: float = 30.0) -> tuple[dict[str, str], list[dict[str, float]]]:
    """(run facts, history rows) of the one offline W&B run under `run_dir`/wandb, once its exit record is
    written (wandb's service process may still be flushing after `finish()` returns). The .wandb file is a
    LevelDB-style log (32 KiB blocks; records with a 7-byte header: crc, length, type full/first/middle/last)
    of wandb's protobuf Records."""
    from google.protobuf.message import DecodeError

    deadline = time.monotonic() + wait_s
    while True:
        try:
            facts, history, finished = _parse_offline_run(run_dir)
        except DecodeError:  # a record caught half-written by the service process: read again
            if time.monotonic() > deadline:
                raise
            finished = False
        else:
            if finished or time.monotonic() > deadline:
                return facts, history
        time.sleep(0.2)


def _parse_offline_run(run_dir: Path) -> tuple[dict[str, str], list[dict[str, float]], bool]:
    from wandb.proto import wandb_internal_pb2 as pb

    (path,) = run_dir.glob("wandb/offline-run-*/run-*.wandb")
    raw, pos, block, records, partial = path.read_bytes(), 7, 32768, [], b""
    while pos + 7 <= len(raw):
        if block - pos % block < 7:
            pos += block - pos % block
            continue
        _, length, kind = struct.unpack("<IHB", raw[pos: pos + 7])
        if pos + 7 + length > len(raw):  # the writer has not finished this record yet
            break
        data, pos = raw[pos + 7: pos + 7 + length], pos + 7 + length
        if kind == 1:
            records.append(data)
        elif kind in (2, 3):
            partial = (partial if kind == 3 else b"") + data
        elif kind == 4:
            records.append(partial + data)
    facts, history, finished = {}, [], False
    for data in records:
        record = pb.Record()
        record.ParseFromString(data)
        finished |= record.WhichOneof("record_type") == "exit"
        if record.WhichOneof("record_type") == "run":
            facts = {"project": record.run.project, "group": record.run.run_group, "name": record.run.display_name}
        elif record.WhichOneof("record_type") == "history":
            row = {item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in record.history.item}
            history.append({k: v for k, v in row.items() if not k.startswith("_") or k == "_step"})
    return facts, history, finished


@pytest.fixture
def offline_cfg(tmp_path: Path):
    return load_config(str(ROOT / "configs" / "tiny.yaml"),
                       ["logging.wandb=true", "logging.wandb_mode=offline", "logging.wandb_project=reasonrl-test",
                        f"model.cache_dir={tmp_path / 'models'}"])


def test_trainer_rows_reach_wandb_with_the_same_names(offline_cfg, tmp_path: Path):
    from cluster.loop.trainer import Trainer

    run_dir = tmp_path / "run-a"
    trainer = Trainer(offline_cfg, run_dir)  # builds the metrics log (no Ray until setup())
    rows = [(1, {"reward/mean": 0.25, "train/kl": 0.5}), (2, {"reward/mean": 0.75, "eval/accuracy": 0.125})]
    for step, metrics in rows:
        trainer.log.log(step, metrics)
    trainer.close()
    facts, history = read_offline_run(run_dir)
    assert facts == {"project": "reasonrl-test", "group": "run-a", "name": "run-a"}
    assert history == [{**metrics, "_step": step} for step, metrics in rows]
    jsonl = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [{k: v for k, v in r.items() if k != "step"} for r in jsonl] == [m for _, m in rows]


def test_online_without_an_api_key_is_refused_before_anything_starts(tmp_path: Path):
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "NETRC": str(tmp_path / "none")}
    proc = subprocess.run([sys.executable, "-m", "cluster.train", "--config", "configs/tiny.yaml",
                           "--run-dir", str(tmp_path / "run"), "logging.wandb=true",
                           f"model.cache_dir={tmp_path / 'models'}"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert "logging.wandb: no W&B API key" in proc.stderr and "logging.wandb_mode=offline" in proc.stderr
    assert not (tmp_path / "run").exists()
