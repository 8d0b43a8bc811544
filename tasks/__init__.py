"""Embedded tasks: problems the project generates itself (nothing can be downloaded here), with the
supervised warm-up text that makes the tiny base model. `data.kind` names one (cluster/loop/data.py); the
tiny base model is always warmed up on one (cluster/toy/base_model.py). Imported by cluster/ only.

A task module provides: `VERSION` (part of the base-model cache key), `sample_problems(n, seed,
held_out)` -> problems with `.prompt`, `.answer`, `.rephrased` (the same question worded differently)
and `.worked()` (the teacher's worked solution), `warmup_pairs(n, seed, *,
worked_fraction, self_check_fraction, recheck_fraction, rephrased_fraction)`, `tokenizer_corpus()` and `is_worked(response)`.
"""
from __future__ import annotations

from types import ModuleType

from tasks import column_addition

TASKS: dict[str, ModuleType] = {"column_addition": column_addition}
DEFAULT = "column_addition"


def task_for(kind: str) -> ModuleType:
    """The embedded task of a `data.kind`; for file data (`jsonl`) the default one, which still makes
    the tiny base model when `model.path` is not set."""
    return TASKS.get(kind, TASKS[DEFAULT])
