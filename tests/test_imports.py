"""The import rule of the architecture, checked on the source (AST of every module, imports inside
functions included): cluster -> rollout, learner, reward, tasks -> protocol. protocol/ imports none of the
other packages; rollout/, learner/ and reward/ never import each other or cluster/; tasks/ (the embedded
task) is imported by cluster/ only; nothing in the product imports benchmarks/ or tests/."""
from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OURS = ("cluster", "rollout", "learner", "reward", "protocol", "tasks", "benchmarks", "tests")
# package -> the packages of ours it may import (itself always allowed)
ALLOWED = {
    "protocol": set(),
    "rollout": {"protocol"},
    "learner": {"protocol"},
    "reward": {"protocol"},
    "tasks": {"protocol"},
    "cluster": {"rollout", "learner", "reward", "tasks", "protocol"},
}


def imported_packages(source: str) -> set[str]:
    """Top-level names of every module a source file imports (relative imports are our own package)."""
    names = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


def violations(root: Path) -> list[str]:
    """'file imports pkg' for every import of one of our packages that ALLOWED forbids."""
    found = []
    for package, allowed in ALLOWED.items():
        for path in sorted((root / package).rglob("*.py")):
            for name in sorted(imported_packages(path.read_text()) & set(OURS)):
                if name != package and name not in allowed:
                    found.append(f"{path.relative_to(root)} imports {name}")
    return found


def test_the_product_follows_the_import_rule():
    assert (ROOT / "cluster" / "trainer.py").is_file()  # the walk below really sees the product
    assert violations(ROOT) == []


def test_the_checker_catches_a_forbidden_import(tmp_path: Path):
    """The rule check itself: a protocol module importing learner, and a reward module importing a
    benchmark inside a function, are both reported; an allowed import is not."""
    for package, body in {"protocol": "import learner.worker\n",
                          "reward": "def f():\n    from benchmarks import reward as r\n    return r\n",
                          "cluster": "from rollout.worker import RolloutWorker\n"}.items():
        (tmp_path / package).mkdir()
        (tmp_path / package / "mod.py").write_text(body)
    assert violations(tmp_path) == ["protocol/mod.py imports learner", "reward/mod.py imports benchmarks"]
