"""Bad input is refused before anything starts (no Ray, no run directory), naming the problem:
dataset rows without problem/answer, prompts too long for the context, a missing model or data
file, mistyped keys (with the closest valid name), resources a local Ray cannot have."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from cluster.config import ConfigError, load_config

ROOT = Path(__file__).resolve().parent.parent
TINY = ["model.tiny.hidden_size=64", "model.tiny.intermediate_size=128", "model.tiny.num_layers=2",
        "model.tiny.num_heads=2", "model.tiny.num_kv_heads=1"]


def _jsonl(path: Path, rows: list[object]) -> Path:
    path.write_text("\n".join(r if isinstance(r, str) else json.dumps(r) for r in rows) + "\n")
    return path


def _cli(tmp: Path, *overrides: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "cluster.train", "--config", "configs/tiny.yaml",
                           "--run-dir", str(tmp / "run"), *overrides],
                          cwd=ROOT, capture_output=True, text=True, timeout=180)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    """A random tiny model with its tokenizer (no warm-up): enough for model.path and prompt lengths."""
    from cluster.toy.tiny_model import build_random_model
    from tasks import column_addition

    tiny = load_config(None, TINY).model.tiny
    return build_random_model(tiny, column_addition.tokenizer_corpus(), tmp_path_factory.mktemp("model"), 0)


def test_rows_without_problem_or_answer_are_listed_by_line(tmp_path):
    from cluster.loop.data import DataError, load_problems

    good = {"problem": "1+1", "answer": "2"}
    rows = [good, {"problem": "2+2"}, good, {"problem": "", "answer": "3"}, "not json", good,
            {"problem": "3+3", "answer": " "}] + [{"answer": "1"}] * 12
    cfg = load_config(None, ["data.kind=jsonl", f"data.train_path={_jsonl(tmp_path / 'd.jsonl', rows)}"])
    with pytest.raises(DataError) as err:
        load_problems(cfg)
    assert "16 rows lack a non-empty 'problem' or 'answer'" in str(err.value)
    assert "(lines 2, 4, 5, 7, 8, 9, 10, 11, 12, 13 ...)" in str(err.value)


def test_cli_refuses_bad_rows_before_starting_anything(tmp_path):
    data = _jsonl(tmp_path / "d.jsonl", [{"problem": "1+1", "answer": "2"}, {"problem": "2+2", "answer": ""}])
    proc = _cli(tmp_path, "data.kind=jsonl", f"data.train_path={data}")
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "1 rows lack a non-empty 'problem' or 'answer' (lines 2)" in proc.stderr
    assert not (tmp_path / "run").exists() and "ray:" not in proc.stdout


def test_cli_refuses_prompts_longer_than_the_context(tmp_path, model_dir):
    short, long = {"problem": "1+1", "answer": "2"}, {"problem": "1+2+3+4+5+6+7+8+9 " * 20, "answer": "45"}
    data = _jsonl(tmp_path / "d.jsonl", [short, long, short, long])
    proc = _cli(tmp_path, *TINY, f"model.path={model_dir}", "data.kind=jsonl", f"data.train_path={data}",
                f"data.eval_path={data}", "rollout.max_model_len=128", "rollout.max_new_tokens=64")
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "2 of 4 training prompts (lines 2, 4) are longer than 64 tokens" in proc.stderr
    assert "data.drop_long_prompts=true" in proc.stderr
    assert not (tmp_path / "run").exists() and "ray:" not in proc.stdout


def test_drop_long_prompts_drops_them_and_says_how_many(model_dir, capsys):
    from transformers import AutoTokenizer

    from cluster.loop.data import DataError, Problem, PromptSource

    tok = AutoTokenizer.from_pretrained(model_dir)
    problems = [Problem("1+1=", "2"), Problem("1+2+3 " * 50, "6", line=2), Problem("2+2=", "4")]
    with pytest.raises(DataError, match=r"1 of 3 training prompts \(lines 2\) are longer than 16 tokens"):
        PromptSource(problems, tok, 16, seed=0)
    source = PromptSource(problems, tok, 16, seed=0, drop_long=True)
    assert [p.answer for p in source.all()] == ["2", "4"]
    assert "dropped 1 of 3 training prompts longer than 16 tokens" in capsys.readouterr().out
    assert len(source.batch(1, 2)) == 2  # epochs wrap over what is left
    with pytest.raises(DataError, match="every training prompt is longer"):
        PromptSource(problems[1:2], tok, 16, seed=0, drop_long=True)


def test_cli_refuses_a_missing_model_directory(tmp_path):
    proc = _cli(tmp_path, f"model.path={tmp_path / 'nope'}")
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert f"model.path: no Hugging Face model (config.json) in {tmp_path / 'nope'}" in proc.stderr
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("field", ["train_path", "eval_path"])
def test_cli_refuses_a_missing_data_file(tmp_path, field):
    data = _jsonl(tmp_path / "d.jsonl", [{"problem": "1+1", "answer": "2"}])
    paths = {"train_path": data, "eval_path": data, field: tmp_path / "missing.jsonl"}
    proc = _cli(tmp_path, "data.kind=jsonl", *(f"data.{k}={v}" for k, v in paths.items()))
    assert proc.returncode == 2
    assert f"data.{field}: file not found: {tmp_path / 'missing.jsonl'}" in proc.stderr
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("override, message", [
    ("learner.zero_stag=2", "learner.zero_stag: unknown key (did you mean learner.zero_stage?)"),
    ("lerner.lr=1", "lerner: unknown key (did you mean learner?)"),
    ("model.tiny.hiden_size=64", "model.tiny.hiden_size: unknown key (did you mean model.tiny.hidden_size?)"),
    ("train.max_checkpoint_failure=1", "unknown key (did you mean train.max_checkpoint_failures?)"),
])
def test_unknown_key_suggests_the_closest_valid_name(override, message):
    with pytest.raises(ConfigError) as err:
        load_config(str(ROOT / "configs/tiny.yaml"), [override])
    assert message in str(err.value)


def test_unknown_key_without_a_close_name_gets_no_guess():
    with pytest.raises(ConfigError) as err:
        load_config(None, ["learner.qqqq=1"])
    assert str(err.value).endswith("learner.qqqq: unknown key")


def test_cli_refuses_resources_a_local_ray_cannot_have(tmp_path):
    proc = _cli(tmp_path, "rollout.resources={rollout_node: 1}")
    assert proc.returncode == 3, proc.stderr[-2000:]
    assert "asks for the Ray resources rollout_node" in proc.stderr
    assert not (tmp_path / "run").exists()


def test_missing_config_file_is_named(tmp_path):
    with pytest.raises(ConfigError, match=f"config file not found: {tmp_path / 'nope.yaml'}"):
        load_config(str(tmp_path / "nope.yaml"))


def test_a_context_longer_than_the_models_positions_is_refused_before_anything_starts(tmp_path):
    """vLLM would refuse it only at engine start, after the base model was built."""
    proc = _cli(tmp_path, "rollout.max_model_len=512", *TINY)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "rollout.max_model_len=512 exceeds model.tiny.max_position_embeddings=256" in proc.stderr
    assert not (tmp_path / "run").exists()
