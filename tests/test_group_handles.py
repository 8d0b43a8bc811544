"""Group handles own their calls (checked on the source, AST of every cluster/ module): outside the group
modules no code reaches a group's actor handles (`.actors`) or calls a group's generic method-name call
(`._call`, `._each`, `._scoring_call`); and no module, the group modules included, formats an actor's name
by hand (`f"rollout[{i}]"`, `"learner[0]"`, `f"{role}[{i}]"`, a `f"{role}["` prefix): each remote call is a
named method of its group's class and every name comes from the one formatter, `actor_name` in
cluster/handles/actor_group.py (the only code exempt). Docstrings may still speak of `rollout[i]`."""
from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
GROUP_MODULES = {"actor_group.py", "groups.py", "rollout_group.py"}
FORMATTER = ("actor_group.py", "actor_name")  # the one function that may write `role[i]`: module, function
PRIVATE_TO_GROUPS = {"actors", "_call", "_each", "_scoring_call"}
ROLES = "learner|critic|rollout|reward"
# In a string, or an f-string whose placeholders read `{}`: `rollout[{}]`, `learner[0]`, `{}[{}]`, or a
# part ending in `rollout[` or `{}[` (a prefix test, or an f-string's text before the index).
HAND_NAME = re.compile(rf"(?:\b(?:{ROLES})|\{{\}})\[(?:\{{\}}|\d+)\]|(?:\b(?:{ROLES})|\{{\}})\[$")


def _template(node: ast.JoinedStr) -> str:
    return "".join(v.value if isinstance(v, ast.Constant) else "{}" for v in node.values)


def violations_in(source: str, name: str) -> list[str]:
    """'name:line what' for each use of a group's actors or generic call (outside the group modules), and
    each hand-made actor name (anywhere but the formatter)."""
    tree = ast.parse(source)
    docstrings = {id(node.value) for node in ast.walk(tree) if isinstance(node, ast.Expr)}
    inside_fstring = {id(v) for node in ast.walk(tree) if isinstance(node, ast.JoinedStr) for v in node.values}
    formatter = {id(inner) for node in ast.walk(tree) if (name, getattr(node, "name", None)) == FORMATTER
                 and isinstance(node, ast.FunctionDef) for inner in ast.walk(node)}
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if name not in GROUP_MODULES and isinstance(node, ast.Attribute) and node.attr in PRIVATE_TO_GROUPS:
            found.append((node.lineno, f"{name}:{node.lineno} uses .{node.attr}"))
        text = None
        if isinstance(node, ast.JoinedStr):
            text = _template(node)
        elif (isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings
              and id(node) not in inside_fstring):
            text = node.value
        if text is not None and id(node) not in formatter and HAND_NAME.search(text):
            found.append((node.lineno, f"{name}:{node.lineno} formats an actor name: {text!r}"))
    return [what for _, what in sorted(found)]


def violations(cluster_dir: Path) -> list[str]:
    return [v for path in sorted(cluster_dir.rglob("*.py")) for v in violations_in(path.read_text(), path.name)]


def test_only_the_group_modules_touch_actors_and_only_the_formatter_formats_their_names():
    assert (ROOT / "cluster" / "loop" / "sync.py").is_file() and (ROOT / "cluster" / "loop" / "generation.py").is_file()
    assert all((ROOT / "cluster" / "handles" / module).is_file() for module in GROUP_MODULES)
    assert violations(ROOT / "cluster") == []


def test_the_scan_catches_each_kind_of_violation(tmp_path: Path):
    """Planted modules: every forbidden form is reported on its line; docstrings and a plain f-string with
    brackets (a list in a message) are not; a group module may use `.actors` but not write a name by hand,
    and in actor_group.py only `actor_name` may."""
    planted = '''"""Talks of rollout[i] and learner[0] in its docstring: allowed."""
def f(group, i, role, error, items):
    """rollout[0] here too."""
    group.actors[i].load.remote()
    group._call("save_hf", "/tmp")
    a = f"rollout[{i}] failed"
    b = "learner[0]"
    c = f"{role}[{i}] bundle"
    d = error.worker.startswith("rollout[")
    e = f"items [{len(items)}] of {items}"
    g = error.worker.startswith(f"{role}[")
    return a, b, c, d, e, g
'''
    formatter = '''def actor_name(role, index):
    return f"{role}[{index}]"


def other(role, index):
    return f"{role}[{index}]"
'''
    (tmp_path / "sync.py").write_text(planted)
    (tmp_path / "groups.py").write_text(planted)  # a group module: its `.actors` and `._call` are allowed
    (tmp_path / "actor_group.py").write_text(formatter)
    found = violations(tmp_path)
    assert [v.split(" ")[0] for v in found] == [
        "actor_group.py:6", "groups.py:6", "groups.py:7", "groups.py:8", "groups.py:9", "groups.py:11",
        "sync.py:4", "sync.py:5", "sync.py:6", "sync.py:7", "sync.py:8", "sync.py:9", "sync.py:11"], found
    assert "uses .actors" in found[6] and "uses ._call" in found[7]
