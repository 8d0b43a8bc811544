"""Every measured figure quoted in README.md and docs/ equals the committed result file it comes from.

Two kinds of checks, each a table:
- SECTIONS: a doc section (or table file) that a benchmark script renders from its result files under
  docs/ must be exactly what that renderer writes from the committed files today (the README's main-run
  block, docs/benchmarks.md's sections of benchmarks/reward.py, sandbox.py, peers.py, pipeline.py and
  learning.py, docs/compare/compare.md and docs/sweep/sweep.md);
- FIGURES: a figure quoted in prose (README.md, docs/cluster.md, docs/reliability.md, docs/benchmarks.md),
  found by the words around it, must be the value its result file gives, formatted as the doc prints it
  (the 7B memory figures are predictions: what `cluster.planning.memory_model.predict` computes from the config today).
Every docs/benchmarks.md section is either rendered (SECTIONS) or named in UNBACKED with the command whose
rerun would back it (weight sync, cpu_scale and the learner profile are rendered from
docs/weight_sync/results.json, docs/scale/results.json and docs/scale/learner_profile.json while those
files are committed, and fall back to UNBACKED without them).
A figure edited by hand, or a result file replaced without rewriting the doc, fails here; the perturbation
cases change one figure of a doc in memory and show that the same check then reports it. Nothing here
runs a benchmark: the renderers only read the committed files.
"""
from __future__ import annotations

import json
import re
import statistics
import tempfile
from pathlib import Path
from typing import Callable

import pytest

from benchmarks import (dynamic_section, learner_profile, learning, learning_sections, micro_batching, pipeline, reward, sandbox, scale,
                        weight_sync)
from benchmarks.reflect_section import REFLECT_CONFIG, reflect_section
from benchmarks.doc_sections import section_of
from benchmarks.main_run import README, load, readme_block, render
from benchmarks.peers_report import section as peers_section

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
BENCHMARKS = DOCS / "benchmarks.md"
CLUSTER = DOCS / "cluster.md"


def _json(path: Path) -> dict:
    return json.loads(path.read_text())


def _dynamic(what: str, dynamic: int) -> str:
    """A mean over the seeds of docs/benchmarks.md's dynamic-sampling table (benchmarks/dynamic_section.py)."""
    found = dynamic_section.pairs(learning_sections.all_rows(learning.RUNS))
    if what == "end":
        return f"{statistics.mean(pair[dynamic]['eval_accuracy_end'] for pair in found):.3f}"
    if what == "tokens":
        return f"{statistics.mean(d['evals'][-1]['generated_tokens'] / p['evals'][-1]['generated_tokens'] for p, d in found):.2f}"
    return f"{statistics.mean(dynamic_section.accuracy_at(d, p['evals'][-1]['generated_tokens']) for p, d in found):.3f}"


def _pipe(staleness: int) -> dict:
    rows = _json(DOCS / "pipeline" / "timing-shared-cores.json")["rows"]
    return next(r for r in rows if r["max_staleness"] == staleness)


def _compare_table() -> str:
    from cluster.compare import table

    return table(_json(DOCS / "compare" / "results.json")["results"])


def _sweep_table() -> str:
    from cluster.sweep import read_table, write_tables

    with tempfile.TemporaryDirectory() as out:
        write_tables(read_table(DOCS / "sweep" / "sweep.csv"), Path(out))
        return (Path(out) / "sweep.md").read_text()


def _benchmarks_section(title: str) -> Callable[[str], str]:
    return lambda doc: section_of(doc, title)


def _whole(doc: str) -> str:
    return doc.rstrip("\n")


# name: (doc file, the part of it the renderer writes, the renderer reading the committed result files)
SECTIONS: dict[str, tuple[Path, Callable[[str], str], Callable[[], str]]] = {
    "README main run <- docs/main_run/": (README, readme_block, lambda: render(*load())),
    "Reward verification <- docs/reward/*.json": (
        BENCHMARKS, _benchmarks_section("## Reward verification"), lambda: reward.section(*reward.committed())),
    "Async pipelining <- docs/pipeline/*.json": (
        BENCHMARKS, _benchmarks_section("## Async pipelining"), pipeline.section),
    "Learning over seeds <- docs/learning/runs.jsonl": (
        BENCHMARKS, _benchmarks_section("## Learning over seeds (the default run)"),
        lambda: learning.seeds_section(learning.recorded())),
    "RL vs SFT vs RFT <- docs/compare/": (
        BENCHMARKS, _benchmarks_section("## RL vs SFT distillation vs rejection-sampling fine-tuning"),
        learning.compare_section),
    "Code sandbox throughput <- docs/sandbox/results.json": (
        BENCHMARKS, _benchmarks_section("## Code sandbox throughput"),
        lambda: sandbox.section(_json(DOCS / "sandbox" / "results.json"))),
    "Against a peer <- docs/peers/results.json": (
        BENCHMARKS, _benchmarks_section("## Against a peer: TRL's GRPOTrainer"),
        lambda: peers_section(_json(DOCS / "peers" / "results.json"))),
    "Learner micro-batching and dtype <- docs/micro_batching/results.json": (
        BENCHMARKS, _benchmarks_section(micro_batching.TITLE),
        lambda: micro_batching.section(_json(micro_batching.RESULTS))),
    "Self-correction <- docs/learning/reflect_designs.jsonl, base_probe.jsonl": (
        BENCHMARKS, _benchmarks_section("## Self-correction (configs/tiny_reflect.yaml)"),
        lambda: reflect_section(learning.recorded(learning.runs_file(REFLECT_CONFIG)), learning.recorded())),
    "Update rule <- docs/learning/runs.jsonl": (
        BENCHMARKS, _benchmarks_section(learning_sections.UPDATE_TITLE),
        lambda: learning_sections.update_rule_section(learning_sections.all_rows(learning.RUNS))),
    "The end-of-sequence token <- docs/learning/runs.jsonl": (
        BENCHMARKS, _benchmarks_section(learning_sections.EOS_TITLE),
        lambda: learning_sections.eos_section(learning_sections.all_rows(learning.RUNS), learning.recorded())),
    "Dynamic sampling <- docs/learning/runs.jsonl": (
        BENCHMARKS, _benchmarks_section(dynamic_section.TITLE),
        lambda: dynamic_section.section(learning_sections.all_rows(learning.RUNS))),
    "docs/compare/compare.md <- docs/compare/results.json": (DOCS / "compare" / "compare.md", _whole, _compare_table),
    "docs/sweep/sweep.md <- docs/sweep/sweep.csv": (DOCS / "sweep" / "sweep.md", _whole, _sweep_table),
}


# benchmarks.md sections with no committed result file yet: title -> (the command whose rerun writes one, that
# file or None when the script writes none). Once the file is committed the section moves to SECTIONS.
UNBACKED: dict[str, tuple[str, Path | None]] = {
    "## Weight sync": (".venv/bin/python benchmarks/weight_sync.py --write-docs", weight_sync.RESULTS),
    "## Beyond the toy (cpu_scale)": (".venv/bin/python benchmarks/scale.py --write-docs", scale.RESULTS),
    learner_profile.TITLE: (learner_profile.COMMAND, learner_profile.RESULTS),
}
for _title, _script in (("## Weight sync", weight_sync), ("## Beyond the toy (cpu_scale)", scale),
                        (learner_profile.TITLE, learner_profile)):
    if _script.RESULTS.exists():  # rendered by the script from its result file once one is committed
        SECTIONS[f"{_title[3:]} <- {_script.RESULTS.relative_to(ROOT)}"] = (
            BENCHMARKS, _benchmarks_section(_title), lambda script=_script: script.section(_json(script.RESULTS)))
        del UNBACKED[_title]


def section_mismatch(name: str, doc: str) -> bool:
    _, part, rendered = SECTIONS[name]
    return part(doc).strip("\n") != rendered().strip("\n")


# --- figures quoted in prose -------------------------------------------------------------------------

def _seeds(k: int) -> list[dict]:
    return [r for r in learning.recorded() if r["max_staleness"] == k]


def _run(seed: int, k: int) -> dict:
    return next(r for r in _seeds(k) if r["seed"] == seed)


def _mean_sd(values: list[float]) -> str:
    return f"{statistics.mean(values):.1f} ± {statistics.stdev(values):.1f}"


def _method(name: str) -> dict:
    return next(r for r in _json(DOCS / "compare" / "results.json")["results"] if r["method"] == name)


def _methods() -> list[dict]:
    return _json(DOCS / "compare" / "results.json")["results"]


def _one(values: set[str]) -> str:
    """The single value all of them print as (a quoted 'all three ...' figure)."""
    return values.pop() if len(values) == 1 else f"differ: {sorted(values)}"


def _sweep(prompts: int | None = None, ranks: int | None = None) -> list[dict]:
    from cluster.sweep import read_table

    return [r for r in read_table(DOCS / "sweep" / "sweep.csv")
            if prompts in (None, r["train.prompts_per_step"]) and ranks in (None, r["learner.num_ranks"])]


def _sweep_step_gains() -> list[float]:
    return [_sweep(p, 1)[0]["step_s"] / _sweep(p, 2)[0]["step_s"] for p in sorted({r["train.prompts_per_step"]
                                                                                      for r in _sweep()})]


def _main_run_rows(key: str) -> list[float]:
    return [r[key] for r in load()[1] if key in r]


def _memory(config: str, *overrides: str) -> dict[str, object]:
    """cluster.planning.memory_model's prediction for configs/<config>.yaml: role name -> RoleMemory (a computation, no run)."""
    from cluster.config import load_config
    from cluster.planning.memory_model import predict

    return {role.role.split(" (")[0]: role for role in predict(load_config(str(ROOT / "configs" / f"{config}.yaml"),
                                                                            list(overrides)))}


def _gib(config: str, role: str, term: str | None = None, *overrides: str) -> float:
    """A role's predicted total (or one term of it, or with term 'margin' the budget left) in GiB."""
    memory = _memory(config, *overrides)[role]
    if term == "margin":
        return (memory.budget - memory.total) / 2**30
    return (memory.total if term is None else next(t.bytes for t in memory.terms if t.name == term)) / 2**30


V0, ZOO = "simplerl_zero_v0_ppo_qwen7b", "simplerl_zoo_grpo_qwen7b"
LEARNER, SHARED, NO_CKPT = "learner rank", "GPU shared by a learner rank and an engine", "learner.gradient_checkpointing=false"


def _span(values: list[float], fmt: str) -> str:
    return f"{format(min(values), fmt)}-{format(max(values), fmt)}"


def _micro(key: str, variant: str, fmt: str = ".2f") -> str:
    """A figure of docs/micro_batching/results.json: a per-variant ratio or layout value."""
    result = _json(micro_batching.RESULTS)
    if key == "ratio":
        return format(statistics.median(micro_batching.ratios(result, next(iter(result["variants"])), variant)), fmt)
    return format(result["layout"][variant][key] if variant else result[key], fmt)


# (doc, regex whose one group is the figure, the figure as the result file gives it)
FIGURES: list[tuple[Path, str, Callable[[], str]]] = [
    # README: the learner's step with `auto` micro-batching and dtype (docs/micro_batching/results.json)
    (README, r"learner's step ran (\S+)x as fast with it", lambda: _micro("ratio", "auto tokens, fp32")),
    (README, r"\(padded tokens ([\d,]+) instead of", lambda: _micro("padded_tokens", "auto tokens, fp32", ",")),
    (README, r"instead of ([\d,]+) for\s", lambda: _micro("padded_tokens", "64 samples, fp32", ",")),
    (README, r"for\s+([\d,]+) real ones\)", lambda: _micro("tokens", "", ",")),
    (README, r"real ones\), (\S+)x in bf16", lambda: _micro("ratio", "64 samples, auto dtype")),
    (README, r"in bf16 and (\S+)x with both", lambda: _micro("ratio", "auto tokens, auto dtype")),
    # README, "What the main command does": learning over seeds (docs/learning/runs.jsonl)
    (README, r"synchronous: accuracy gain (\S+ ± \S+) points", lambda: _mean_sd([100 * r["gain"] for r in _seeds(0)])),
    (README, r"seed 2 reaches (\d\.\d+),", lambda: f"{_run(2, 0)['eval_accuracy_end']:.3f}"),
    (README, r"seeds 0 and 1 (\d\.\d+-\d\.\d+)\)",
     lambda: _span([_run(s, 0)["eval_accuracy_end"] for s in (0, 1)], ".3f")),
    (README, r"response length (\S+ ±\s\S+)x", lambda: _mean_sd([r["length_ratio"] for r in _seeds(0)])),
    (README, r"worked share (\d+% -> \d+%)", lambda: " -> ".join(
        f"{statistics.mean(100 * r[k] for r in _seeds(0)):.0f}%" for k in ("eval_worked_frac_start", "eval_worked_frac_end"))),
    (README, r"`train.max_staleness=1` gain (\S+ ± \S+) points", lambda: _mean_sd([100 * r["gain"] for r in _seeds(1)])),
    (README, r"at most (\S+)% of any training batch was cut", lambda: format(
        100 * max(cut for r in learning.recorded() for _, cut in r["truncated_by_step"]), ".1f")),
    # README: dynamic sampling over 3 seeds (docs/learning/runs.jsonl)
    (README, r"it ends at (\d\.\d+) held-out against the default's", lambda: _dynamic("end", 1)),
    (README, r"against the default's (\d\.\d+), for", lambda: _dynamic("end", 0)),
    (README, r", for (\S+)x the generated tokens; at", lambda: _dynamic("tokens", 0)),
    (README, r"token total it stands at (\d\.\d+),", lambda: _dynamic("budget", 0)),
    # README: idle cores, synchronous and overlapped (docs/pipeline/timing-shared-cores.json)
    (README, r"synchronous default leaves (\d+)% of the cores idle", lambda: f"{100 * _pipe(0)['idle_share']:.0f}"),
    (README, r"overlaps\s+the roles: (\d+)% idle", lambda: f"{100 * _pipe(1)['idle_share']:.0f}"),
    (README, r"% idle and a (\S+)x faster step", lambda: f"{_pipe(0)['step_s'] / _pipe(1)['step_s']:.2f}"),
    # README: RL vs SFT vs RFT (docs/compare/results.json)
    (README, r"(\d+)\s+optimizer steps each through the same learner", lambda: _one({str(r["steps"]) for r in _methods()})),
    (README, r"wins on this task, (\d\.\d+) held-out", lambda: f"{_method('sft')['accuracy_end']:.3f}"),
    (README, r"held-out \(greedy (\d\.\d+)\) against RL's", lambda: f"{_method('sft')['greedy_accuracy_end']:.3f}"),
    (README, r"against RL's (\d\.\d+) \(", lambda: f"{_method('rl')['accuracy_end']:.3f}"),
    (README, r"against RL's \d\.\d+ \((\d\.\d+)\)", lambda: f"{_method('rl')['greedy_accuracy_end']:.3f}"),
    (README, r"training seconds \((\d+) s against", lambda: f"{_method('sft')['train_seconds']:.0f}"),
    (README, r"against (\d+) s: it generates nothing", lambda: f"{_method('rl')['train_seconds']:.0f}"),
    (README, r"fewest tokens\s+\(([\d,]+) against", lambda: f"{_method('rft')['train_tokens']:,.0f}"),
    (README, r"against RL's ([\d,]+): only its own", lambda: f"{_method('rl')['train_tokens']:,.0f}"),
    (README, r"but ends at (\d\.\d+) \(greedy", lambda: f"{_method('rft')['accuracy_end']:.3f}"),
    (README, r"but ends at \d\.\d+ \(greedy (\d\.\d+)\)", lambda: f"{_method('rft')['greedy_accuracy_end']:.3f}"),
    (README, r"working every sum out \((\d+) tokens", lambda: _one({f"{r['response_len_end']:.0f}" for r in _methods()})),
    (README, r"RL (\d\.\d+), SFT \d", lambda: f"{_method('rl')['rephrased_accuracy_end']:.3f}"),
    (README, r"SFT (\d\.\d+), RFT", lambda: f"{_method('sft')['rephrased_accuracy_end']:.3f}"),
    (README, r"RFT (\d\.\d+)\), far below", lambda: f"{_method('rft')['rephrased_accuracy_end']:.3f}"),
    (README, r"every method carries its gain over in part \((\d\.\d+ -> \d\.\d+-\d\.\d+);", lambda: _one(
        {f"{r['rephrased_accuracy_start']:.3f}" for r in _methods()})
     + " -> " + _span([r["rephrased_accuracy_end"] for r in _methods()], ".3f")),
    (README, r"far below the (\d\.\d+-\d\.\d+) of the trained wording",
     lambda: _span([r["accuracy_end"] for r in _methods()], ".2f")),
    # README: the parity check's cost and gaps in the main run (docs/main_run/metrics.jsonl)
    (README, r"cost: (\S+) s per step in the main run above", lambda: _span(_main_run_rows("time/parity_s"), ".2f")),
    (README, r"whose gaps stayed within (\S+) nats", lambda: f"{max(_main_run_rows('sync/parity_max_abs')):.1e}"),
    # README and docs/cluster.md: what `python -m cluster.memory --config <file>` predicts for the 7B presets
    (README, r"`configs/simplerl_zero_v0_ppo_qwen7b.yaml` predicts (\S+) GiB per learner rank",
     lambda: f"{_gib(V0, LEARNER):.1f}"),
    (README, r"per learner rank \(a (\S+) GiB margin: the", lambda: f"{_gib(V0, LEARNER, 'margin'):.1f}"),
    (README, r"fp32 gradient sum (\S+) GiB", lambda: f"{_gib(V0, LEARNER, 'gradients'):.1f}"),
    (README, r"reference model's 1/8 (\S+) GiB", lambda: f"{_gib(V0, LEARNER, 'reference model'):.1f}"),
    (README, r"AdamW temporary, (\S+) GiB each", lambda: _one(
        {f"{_gib(V0, LEARNER, t):.1f}" for t in ("fp32 gradient copy", "AdamW temporaries")})),
    (README, r"backward's activations (\S+) GiB", lambda: f"{_gib(V0, LEARNER, 'activations'):.1f}"),
    (README, r"logits chunk (\S+) GiB\)", lambda: f"{_gib(V0, LEARNER, 'logits chunk'):.1f}"),
    (README, r"(\S+) GiB per critic rank", lambda: f"{_gib(V0, 'critic rank'):.1f}"),
    (README, r"KV cache holds (\d+)\s+sequences", lambda: re.search(r"holds (\d+) sequences", next(
        t.note for t in _memory(V0)["rollout engine"].terms if t.name == "KV cache")).group(1)),
    (README, r"qwen7b.yaml`\s+(\S+) GiB per learner rank", lambda: f"{_gib(ZOO, LEARNER):.1f}"),
    (README, r"per learner rank \(a (\S+) GiB margin; 2 x", lambda: f"{_gib(ZOO, LEARNER, 'margin'):.1f}"),
    (README, r"tokens of activations (\S+) GiB\)", lambda: f"{_gib(ZOO, LEARNER, 'activations'):.1f}"),
    (README, r"Zoo learner would need (\S+) GiB", lambda: f"{_gib(ZOO, LEARNER, None, NO_CKPT):.0f}"),
    (README, r"GiB \(activations (\S+) GiB\) and is refused", lambda: f"{_gib(ZOO, LEARNER, 'activations', NO_CKPT):.0f}"),
    (README, r"presets: Zoo (\S+) GiB per shared GPU", lambda: f"{_gib(ZOO + '_1node', SHARED):.1f}"),
    (README, r"per shared GPU \((\S+) GiB margin\)", lambda: f"{_gib(ZOO + '_1node', SHARED, 'margin'):.1f}"),
    (README, r"v0 (\S+) GiB \(\S+ GiB margin\)", lambda: f"{_gib(V0 + '_1node', SHARED):.1f}"),
    (README, r"v0 \S+ GiB \((\S+) GiB margin\)", lambda: f"{_gib(V0 + '_1node', SHARED, 'margin'):.1f}"),
    (CLUSTER, r"0.5: (\S+) of 80 GiB per GPU predicted", lambda: f"{_gib(ZOO + '_1node', SHARED):.1f}"),
    (CLUSTER, r"the published 0.75 would need (\S+)\)",
     lambda: f"{_gib(ZOO + '_1node', SHARED, None, 'rollout.gpu_memory_utilization=0.75'):.1f}"),
    (CLUSTER, r"0.28: (\S+) GiB\)", lambda: f"{_gib(V0 + '_1node', SHARED):.1f}"),
    (CLUSTER, r"\((\S+) GiB per rank at 7B over 8 ranks", lambda: f"{_gib(ZOO, LEARNER, 'gradients'):.1f}"),
    (CLUSTER, r"over 8 ranks instead of (\S+)\)",
     lambda: f"{_gib(ZOO, LEARNER, 'gradients', 'learner.grad_accum_dtype=model'):.1f}"),
    (DOCS / "reliability.md", r"learner.gradient_checkpointing=false`: `predicted memory of a learner rank \(ZeRO-3, 8 "
     r"ranks\): (\S+) GiB >", lambda: f"{_gib(ZOO, LEARNER, None, NO_CKPT):.1f}"),
    # docs/cluster.md, "Sweeps": the scaling of the quiet-machine sweep (docs/sweep/sweep.csv)
    (CLUSTER, r"(\d+-\d+) samples/s;", lambda: _span([r["samples_per_s"] for r in _sweep()], ".0f")),
    (CLUSTER, r"speeds training up ~(\S+)x", lambda: f"{_sweep(32, 1)[0]['train_s'] / _sweep(32, 2)[0]['train_s']:.1f}"),
    (CLUSTER, r"\(train (\S+ s -> \S+) s at 32 prompts\)",
     lambda: f"{_sweep(32, 1)[0]['train_s']:.2f} s -> {_sweep(32, 2)[0]['train_s']:.2f}"),
    (CLUSTER, r"generation stays ~(\S+) s there",
     lambda: f"{statistics.mean(r['wait_rollout_s'] for r in _sweep(32)):.1f}"),
    (CLUSTER, r"the step gains (\S+)x for", lambda: _span(_sweep_step_gains(), ".2f")),
    (CLUSTER, r"for (\S+)x the resource units",
     lambda: _one({f"{_sweep(p, 2)[0]['resource_units'] / _sweep(p, 1)[0]['resource_units']:.1f}"
                   for p in (8, 16, 32)})),
    (CLUSTER, r"\(efficiency (\S+)\)", lambda: _span([r["efficiency"] for r in _sweep(ranks=2)], ".2f")),
]


def figure_mismatch(row: int, doc: str) -> str | None:
    """None when the figure of FIGURES[row] in `doc` equals its result file, else what differs."""
    _, pattern, expected = FIGURES[row]
    found = re.findall(pattern, re.sub(r"\s+", " ", doc))  # a figure may wrap across lines
    if len(found) != 1:
        return f"{pattern!r} matches {len(found)} places, not one"
    quoted, want = re.sub(r"\s+", " ", found[0]), expected()
    return None if quoted == want else f"{pattern!r}: the doc says {quoted!r}, the result file {want!r}"


def _figure_id(row: int) -> str:
    doc, pattern, _ = FIGURES[row]
    return f"{doc.name}:{pattern[:40]}"


@pytest.mark.parametrize("name", list(SECTIONS))
def test_a_rendered_section_is_what_its_result_files_render(name):
    doc = SECTIONS[name][0].read_text()
    assert not section_mismatch(name, doc), f"{name}: rerun its renderer or fix the doc"


@pytest.mark.parametrize("row", range(len(FIGURES)), ids=_figure_id)
def test_a_quoted_figure_equals_its_result_file(row):
    assert figure_mismatch(row, FIGURES[row][0].read_text()) is None


def sections_out_of_place(doc: str) -> list[str]:
    """benchmarks.md sections neither rendered from result files (SECTIONS) nor listed in UNBACKED, and
    UNBACKED titles the doc no longer has."""
    titles = {line for line in doc.splitlines() if line.startswith("## ")}
    rendered = {t for t in titles if any(path == BENCHMARKS and part(doc) == section_of(doc, t)
                                         for path, part, _ in SECTIONS.values())}
    return sorted((titles - rendered) ^ set(UNBACKED))


def test_every_benchmarks_section_is_rendered_from_a_result_file_or_listed_as_unbacked():
    assert sections_out_of_place(BENCHMARKS.read_text()) == []


def test_a_new_section_without_a_result_file_is_reported():
    doc = BENCHMARKS.read_text() + "\n## A new benchmark\n\n| step s | 1.23 |\n"
    assert sections_out_of_place(doc) == ["## A new benchmark"]


def _bump_digit(text: str, at: int) -> str:
    """`text` with the digit at index `at` changed (9 -> 8, any other d -> d+1)."""
    digit = int(text[at])
    return text[:at] + str(digit - 1 if digit == 9 else digit + 1) + text[at + 1:]


@pytest.mark.parametrize("name", list(SECTIONS))
def test_a_section_figure_edited_by_hand_is_reported(name):
    doc_path, part, _ = SECTIONS[name]
    doc = doc_path.read_text()
    section = part(doc)
    start = doc.index(section)
    figure = re.search(r"^\|.*?(\d+\.\d+)", section, re.MULTILINE)  # the first decimal figure of a table
    assert figure is not None, f"{name}: no figure to perturb"
    perturbed = _bump_digit(doc, start + figure.end(1) - 1)
    assert section_mismatch(name, perturbed), f"{name}: a changed figure {figure.group(1)} went unnoticed"


@pytest.mark.parametrize("row", range(len(FIGURES)), ids=_figure_id)
def test_a_prose_figure_edited_by_hand_is_reported(row):
    doc_path, pattern, _ = FIGURES[row]
    doc = re.sub(r"\s+", " ", doc_path.read_text())  # as figure_mismatch reads it: a figure may wrap
    match = re.search(pattern, doc)
    assert match is not None
    last_digit = max(i for i in range(match.start(1), match.end(1)) if doc[i].isdigit())
    assert figure_mismatch(row, _bump_digit(doc, last_digit)) is not None


def test_the_rendered_block_carries_the_result_files_figures():
    summary, rows, meta = load()
    block = render(summary, rows, meta)
    assert f"| held-out accuracy (sampled, T=1) | {summary['eval_accuracy_start']:.3f} | " \
           f"{summary['eval_accuracy_end']:.3f} |" in block
    assert f"after {summary['steps']} RL steps" in block and f"{meta['eval_size']} problems" in block
