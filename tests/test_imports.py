"""The import rule of the architecture, checked on the source (AST of every module, imports inside
functions included): cluster -> rollout, learner, reward, tasks -> protocol. protocol/ imports none of the
other packages; rollout/, learner/ and reward/ never import each other or cluster/; tasks/ (the embedded
task) is imported by cluster/ only; nothing in the product imports benchmarks/ or tests/. Within cluster/,
the training loop's modules reach no command module (a CLI with `main()`), directly or through others."""
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
    assert (ROOT / "cluster" / "loop" / "trainer.py").is_file()  # the walk below really sees the product
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


# The wings of cluster/ (sub-packages) hold the library; the commands (`python -m cluster.X`) sit at the top.
WINGS = ("loop", "handles", "infra", "planning", "toy")
# The training loop's own modules: none may import a command module, directly or through another module.
LOOP_MODULES = ("loop.trainer", "loop.update", "loop.pipeline", "loop.generation", "loop.sync", "loop.specs",
                "handles.groups", "handles.actor_group", "handles.rollout_group")


def is_command(source: str) -> bool:
    """A module with a CLI: a top-level `main()` or an `if __name__ == "__main__":` block."""
    for node in ast.parse(source).body:
        if isinstance(node, ast.FunctionDef) and node.name == "main":
            return True
        if isinstance(node, ast.If) and "__main__" in ast.unparse(node.test) and "__name__" in ast.unparse(node.test):
            return True
    return False


def cluster_modules(cluster_dir: Path) -> dict[str, str]:
    """Every module under cluster_dir by its dotted name below `cluster` ("train", "loop.trainer"), with its
    source; a package's `__init__` is the package's name."""
    found = {}
    for path in cluster_dir.rglob("*.py"):
        parts = path.relative_to(cluster_dir).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        if name:
            found[name] = path.read_text()
    return found


def cluster_imports(source: str) -> set[str]:
    """The cluster modules a source file imports, as dotted names below `cluster` (`from cluster import x`,
    `from cluster.loop import sync` gives "loop" and "loop.sync", `from cluster.loop.sync import y`,
    `import cluster.x`), imports inside functions included."""
    names = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names.update(a.name.split(".", 1)[1] for a in node.names if a.name.startswith("cluster."))
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module == "cluster":
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").startswith("cluster."):
            module = node.module.split(".", 1)[1]
            names.add(module)
            names.update(f"{module}.{a.name}" for a in node.names)
    return names


def loop_command_imports(cluster_dir: Path, loop: tuple[str, ...] = LOOP_MODULES) -> list[str]:
    """'a -> b -> cmd' for each command module that a loop module reaches through its cluster imports."""
    sources = cluster_modules(cluster_dir)
    found = []
    for start in loop:
        paths, seen = [[start]], {start}
        while paths:
            path = paths.pop(0)
            for name in sorted(cluster_imports(sources[path[-1]]) & set(sources) - seen):
                seen.add(name)
                if is_command(sources[name]):
                    found.append(" -> ".join(path + [name]))
                else:
                    paths.append(path + [name])
    return found


def test_the_loop_imports_no_command_module():
    """The loop's modules (and every cluster module they import, transitively) import no CLI module: the
    library parts the loop needs live in library modules (e.g. cluster/planning/memory_model.py for the
    `python -m cluster.memory` planner)."""
    modules = cluster_modules(ROOT / "cluster")
    assert all(m in modules for m in LOOP_MODULES)
    assert is_command(modules["train"])  # the detector sees a real CLI
    assert loop_command_imports(ROOT / "cluster") == []


def test_the_wings_hold_library_code_and_the_top_level_holds_the_commands():
    """cluster/'s folder listing is its map: every command sits at the top (so `python -m cluster.X`
    stays), every module in a wing (loop, handles, infra, planning, toy) is library code that reaches no
    command, and the top level holds nothing else but the config schema and the package docstring."""
    modules = cluster_modules(ROOT / "cluster")
    assert set(WINGS) <= set(modules) and all(m.split(".")[0] in WINGS for m in modules if "." in m)
    in_wings = tuple(m for m in modules if "." in m)
    assert len(in_wings) >= 25
    assert [m for m in in_wings if is_command(modules[m])] == []
    assert loop_command_imports(ROOT / "cluster", in_wings) == []
    top = {m for m in modules if "." not in m and m not in WINGS}
    assert {m for m in top if not is_command(modules[m])} == {"config", "config_sections"}


def test_the_loop_check_catches_a_command_import(tmp_path: Path):
    """Planted: a loop module importing a library that imports a CLI (found through the chain), one
    importing a CLI inside a function (through a wing's `from cluster.wing import module`), and one
    importing only a library: the first two are reported."""
    (tmp_path / "wing").mkdir()
    files = {"trainer.py": "from cluster import lib\n",
             "lib.py": "def f():\n    from cluster.tool import helper\n    return helper\n",
             "tool.py": "import sys\ndef helper():\n    return 1\nif __name__ == '__main__':\n    sys.exit(helper())\n",
             "wing/__init__.py": "",
             "wing/sync.py": "def g():\n    from cluster.wing import cli\n",
             "wing/cli.py": "def main():\n    return 0\n",
             "update.py": "from cluster.clean import X\n",
             "clean.py": "X = 1\n"}
    for name, body in files.items():
        (tmp_path / name).write_text(body)
    assert loop_command_imports(tmp_path, ("trainer", "wing.sync", "update")) == [
        "trainer -> lib -> tool", "wing.sync -> wing.cli"]
