"""The README's main-run figures are what their committed result files render (docs/main_run/, written by
benchmarks/main_run.py from a run of the README's main command): a figure edited by hand, or a result
file replaced without rewriting the README, fails here."""
from __future__ import annotations

from benchmarks.main_run import README, load, readme_block, render


def test_the_readme_main_run_block_is_rendered_from_its_result_files():
    assert readme_block(README.read_text()) == render(*load())


def test_the_rendered_block_carries_the_result_files_figures():
    summary, rows, meta = load()
    block = render(summary, rows, meta)
    assert f"| held-out accuracy (sampled, T=1) | {summary['eval_accuracy_start']:.3f} | " \
           f"{summary['eval_accuracy_end']:.3f} |" in block
    assert f"after {summary['steps']} RL steps" in block and f"{meta['eval_size']} problems" in block
